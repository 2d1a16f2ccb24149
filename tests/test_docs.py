"""The documentation site (`make docs`, scripts/docs.sh): a small build of three pages checks the whole machinery.

The full site executes every library notebook (minutes); this test builds three pages into a temporary folder with
the same script: an API page (rl/07_grpo, executed), a library page with a plot (report/02_plots, executed) and an
experiment page taken from its executed copy in results/ (Table 1). It runs in about a minute.
"""

import os
import re
import shutil
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["rl/07_grpo.ipynb", "report/02_plots.ipynb", "experiments/table1_geneval.ipynb"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("docs") / "site"
    work = ROOT / "_proc" / f"docs-test-{os.getpid()}"  # inside the repository, as the notebooks need
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    try:
        r = subprocess.run(
            ["bash", "scripts/docs.sh", "--out", str(out), "--work", str(work), *PAGES],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r.stdout


def _text(page):
    return unescape(re.sub(r"<[^>]+>", "", page))


def test_pages_and_links(site):
    out, log = site
    pages = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.html"))
    expected = ["experiments/table1_geneval.html", "report/plots.html", "rl/grpo.html"]
    if (ROOT / "results" / "REPORT.md").exists():
        expected.append("report.html")
    assert pages == sorted(expected), pages
    assert (out / "styles.css").exists() and (out / "notebook.css").stat().st_size > 10_000
    grpo = (out / "rl" / "grpo.html").read_text()
    # every page links every other one, relative to itself, so the site works from file:// and from any host;
    # relative links resolve inside the site (nbdev's symbol links to pages not built here stay /page.html)
    for link in ("../report/plots.html", "../experiments/table1_geneval.html"):
        assert f'href="{link}"' in grpo
    assert "<style" not in grpo.split("</head>")[0], "nbconvert's CSS belongs in the shared notebook.css"
    for page in set(out.rglob("*.html")) - {out / "report.html"}:  # (the report's links are its generator's)
        for url in re.findall(r'\b(?:href|src)="([^"#]+)', page.read_text()):
            if not re.match(r"^([a-z]+:|data:|/)", url):
                assert (page.parent / url).exists(), (page.relative_to(out), url)
    assert "pages written" in log and "Success." in log


def test_api_page_lists_grpo_functions(site):
    out, _ = site
    html = (out / "rl" / "grpo.html").read_text()
    assert "<h1" in html and "GRPO loss" in html
    for fn in ("grpo_loss", "group_advantages", "k3_kl"):  # nbdev's show_doc: a heading and the signature
        assert re.search(rf'<h3 id="{fn}"', html), fn
        assert f"def {fn}(" in _text(html), fn
    assert "#| export" not in html and "nbdev_export" not in html  # directives and the export cell are gone
    assert "/blob/" not in html  # no source links to a repository URL that is not set


def test_library_page_has_its_plot(site):
    out, _ = site
    html = (out / "report" / "plots.html").read_text()
    assert re.search(r'<img[^>]+src="data:image/png;base64,', html), "the notebook's figure, executed and embedded"
    assert "Traceback" not in html


def test_experiment_page_shows_the_committed_table(site):
    out, _ = site
    html = (out / "experiments" / "table1_geneval.html").read_text()
    assert "Table 1: GenEval per tag" in html and "<table" in html
    assert "results/table1_geneval" in html  # the executed copy of the DVC stage, not a smoke run
    assert re.search(r"<td>maskfocus \(toy\)</td>", html), "the table has a MaskFocus row"


def test_report_page(site):
    out, _ = site
    report = ROOT / "results" / "REPORT.md"
    if not report.exists():
        pytest.skip("results/REPORT.md not generated")
    html = (out / "report.html").read_text()
    first = report.read_text().splitlines()[0].lstrip("# ").strip()
    assert first in html
    for src in re.findall(r'<img[^>]+src="([^"]+)"', html):  # the figures it shows are copied next to it
        assert src.startswith("data:") or (out / src).exists() or not (report.parent / src).exists(), src
