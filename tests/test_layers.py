"""The house rules, checked: layering of the import graph, DVC code deps derived from it, function and module sizes,
and `ruff check`."""

import ast, importlib.util, shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "maskfocus"
BIN = Path(sys.executable).parent


def _script(name):
    "A module of scripts/, imported by path (scripts/ is not a package)."
    spec = importlib.util.spec_from_file_location(f"_scripts_{name}", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


dvc_deps, code_metrics = _script("dvc_deps"), _script("code_metrics")


# ---- layering: models/, rl/ and scoring/ never import toy/ or report/; no library module imports the cli ----

CORE_PACKAGES = ("maskfocus.models", "maskfocus.rl", "maskfocus.scoring")
FORBIDDEN_FOR_CORE = ("maskfocus.toy", "maskfocus.report")


def _import_statements(tree: ast.AST, module: str, is_package: bool = False) -> set[str]:
    "The modules import statements anywhere in the tree name, relative ones resolved (plugin strings are no imports)."
    names = set()
    for node in ast.walk(tree):  # `from pkg import mod` names pkg and pkg.mod: both are checked
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= dvc_deps.imports_of(ast.Module(body=[node], type_ignores=[]), module, is_package)
    return names


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_violations(source: str, module: str, is_package: bool = False) -> list[str]:
    "The forbidden imports of one module's source: `module -> imported` for each."
    imported = _import_statements(ast.parse(source), module, is_package)
    bad = set()
    if any(_within(module, p) for p in CORE_PACKAGES):
        bad |= {m for m in imported if any(_within(m, f) for f in FORBIDDEN_FOR_CORE)}
    if module != "maskfocus.cli":
        bad |= {m for m in imported if _within(m, "maskfocus.cli")}
    return sorted(f"{module} -> {m}" for m in bad)


def test_layering_of_the_package():
    files = dvc_deps.module_files(ROOT)
    bad = [v for name, p in files.items() for v in layer_violations(p.read_text(), name, p.name == "__init__.py")]
    assert not bad, (
        "forbidden imports (models/, rl/ and scoring/ reach toy/ only through plugin strings):\n" + "\n".join(bad)
    )


def test_layering_check_fails_on_an_offending_module():
    lazy_toy = "def f():\n    from ..toy import world\n    return world\n"
    assert "maskfocus.rl.fake -> maskfocus.toy" in layer_violations(lazy_toy, "maskfocus.rl.fake")
    assert layer_violations("from .. import toy\n", "maskfocus.rl.fake") == ["maskfocus.rl.fake -> maskfocus.toy"]
    assert layer_violations("import maskfocus.report.tables as t\n", "maskfocus.models.fake")
    assert "maskfocus.toy.fake -> maskfocus.cli" in layer_violations(
        "from maskfocus.cli import main\n", "maskfocus.toy.fake"
    )
    plugin = 'REGISTRY = {"Patch": "maskfocus.toy.tokenizer:PatchTokenizer"}\nfrom ..core import resolve\n'
    assert layer_violations(plugin, "maskfocus.models.fake") == [], "plugin strings are allowed"
    assert layer_violations("from ..toy import world\n", "maskfocus.report.fake") == [], "report may use toy"
    assert layer_violations("from ..report import tables\n", "maskfocus.scoring.fake"), "scoring is a core package"


# ---- DVC: each stage's maskfocus/*.py deps are the import-graph closure of what it runs ----


def test_dvc_deps_match_the_import_graph():
    problems = dvc_deps.check(ROOT)
    assert not problems, "\n".join(problems) + "\nfix: python scripts/dvc_deps.py --write"


def test_import_graph_sees_lazy_relative_and_plugin_edges():
    g = dvc_deps.graph(ROOT)
    assert "maskfocus.toy.tokenizer" in g["maskfocus.models.tokenizer"], "the TOKENIZERS plugin string is an edge"
    assert "maskfocus.core" in g["maskfocus.geneval"], "relative import"
    cmds = dvc_deps.cli_commands(ROOT)
    assert "maskfocus.rl.command" in cmds["train"] and "maskfocus.toy.pretrain" in cmds["pretrain"]
    assert "maskfocus.models.pipeline" in cmds["evaluate"], "through the cli helper _load_pipeline"


def _copy_project(tmp_path: Path) -> Path:
    shutil.copytree(PACKAGE, tmp_path / "maskfocus", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "nbs" / "experiments", tmp_path / "nbs" / "experiments")
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    return tmp_path


def test_dvc_deps_check_fails_on_a_removed_dep(tmp_path):
    root = _copy_project(tmp_path)
    assert dvc_deps.main(["--write", "--root", str(root)]) == 0 and dvc_deps.check(root) == []
    text = (root / "dvc.yaml").read_text()  # the generated deps (whatever the repository's dvc.yaml says)
    line = "      - maskfocus/models/sampler.py\n"
    assert line in text
    (root / "dvc.yaml").write_text(text.replace(line, "", 1))
    problems = dvc_deps.check(root)
    assert problems and "missing ['maskfocus/models/sampler.py']" in problems[0], problems
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "dvc_deps.py"), "--check", "--root", str(root)])
    assert r.returncode == 1
    assert dvc_deps.main(["--write", "--root", str(root)]) == 0 and dvc_deps.check(root) == []
    assert (root / "dvc.yaml").read_text() == text, "--write restores the generated deps, the rest unchanged"


def test_dvc_deps_check_fails_on_a_new_edge(tmp_path):
    root = _copy_project(tmp_path)
    (root / "maskfocus" / "fake_extra.py").write_text('"A module the pipeline now reaches."\n')
    grpo = root / "maskfocus" / "rl" / "grpo.py"
    grpo.write_text(grpo.read_text() + "\n\ndef _fake():\n    from .. import fake_extra\n\n    return fake_extra\n")
    problems = dvc_deps.check(root)
    assert any(p.startswith("stage rl:") and "maskfocus/fake_extra.py" in p for p in problems), problems


# ---- sizes and lint ----


def test_no_function_over_60_lines():
    m = code_metrics.measure(PACKAGE)
    assert not m["functions_over_60"], f"functions over {code_metrics.MAX_FUNCTION} lines: {m['functions_over_60']}"


def test_no_module_over_20_kb():
    m = code_metrics.measure(PACKAGE)
    assert not m["modules_over_20kb"], f"modules over {code_metrics.MAX_MODULE_KB} KB: {m['modules_over_20kb']}"


def test_lines_at_most_120_characters():
    "ruff checks the notebooks; this checks what nbdev makes of them (module docstrings from the subtitles)."
    long = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in code_metrics.modules(PACKAGE)
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if len(line) > code_metrics.MAX_LINE and not line.startswith(code_metrics.GENERATED_ALL)
    ]
    assert not long, f"lines over {code_metrics.MAX_LINE} characters: {long}"


def test_no_stale_modules():
    "Every exported module names a notebook that exists (nbdev-export never deletes a module whose notebook moved)."
    stale = []
    for p in code_metrics.modules(PACKAGE):
        if p.name == "__init__.py":  # nbdev writes the subpackages' empty __init__.py itself
            continue
        head = p.read_text().split("\n", 12)
        src = next((h.split("File to edit: ")[1].rstrip(".") for h in head if "File to edit: " in h), None)
        if src is None or not (p.parent / src).resolve().is_file():
            stale.append(str(p.relative_to(ROOT)))
    assert not stale, f"modules without a notebook (delete them): {stale}"


def test_ruff_check_is_clean():
    paths = ["maskfocus", "tests", "scripts", "benchmarks", "nbs"]
    r = subprocess.run(
        [str(BIN / "ruff"), "check", "--output-format", "concise", *paths], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
