"""The README is a landing page whose numbers are generated: its blocks match the committed results, no result is
typed outside them, it stays short, and its library example runs."""

import os, re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
sys.path.insert(0, str(ROOT / "scripts"))
import readme_blocks  # noqa: E402


def test_generated_blocks_match_the_results():
    _, changed = readme_blocks.render(README, ROOT / "results")
    assert not changed, f"stale README blocks {changed}: run python scripts/readme_blocks.py"


def test_a_stale_block_is_caught(tmp_path):
    stale = readme_blocks.MARK.sub(lambda m: m.group(1) + "| 0.999 |\n" + m.group(4), README, count=1)
    (tmp_path / "README.md").write_text(stale)
    args = ["--check", "--readme", str(tmp_path / "README.md"), "--results", str(ROOT / "results")]
    assert readme_blocks.main(args) == 1
    assert readme_blocks.main(args[1:]) == 0 and readme_blocks.main(args) == 0, "rewriting fixes it"


def prose(text: str) -> str:
    "The README without its generated blocks, code blocks and link targets: what a person typed."
    text = readme_blocks.MARK.sub("", text)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"\]\([^)]*\)", "]", text)


def test_no_result_is_typed_by_hand():
    "A decimal number outside the generated blocks would be a hand-typed result (the arXiv id and licence aside)."
    typed = [m for m in re.findall(r"\d+\.\d+", prose(README)) if m not in {"2512.18766", "2.0"}]
    assert not typed, f"numbers typed into the README (generate them in scripts/readme_blocks.py): {typed}"
    assert prose("x <!-- generated:results (python scripts/readme_blocks.py) -->\n0.5\n<!-- end:results -->") == "x "


def test_the_readme_is_a_landing_page():
    lines = README.splitlines()
    assert len(lines) <= 150, f"README has {len(lines)} lines; move detail to the report or the docs"
    for section in (
        "## Set up",
        "## A trained model in minutes",
        "## Results at toy scale",
        "## Read the notebooks",
        "## Use the library on your own model",
        "## Reproduce",
        "## Paper scale",
        "## Licence",
    ):
        assert section in lines, section
    assert "shared/" not in README
    for link in re.findall(r"\]\(((?!https?://)[^)#]+)\)", README):
        assert (ROOT / link).exists(), f"README links a missing file: {link}"


def test_the_library_example_runs(tmp_path):
    code = re.search(r"## Use the library on your own model.*?```python\n(.*?)```", README, re.S)[1]
    (tmp_path / "example.py").write_text(code)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    reward = float(out.stdout.strip().splitlines()[-1])
    assert 0.0 <= reward <= 1.0
    assert (tmp_path / "tiny" / "run" / "final" / "model_index.json").is_file()
