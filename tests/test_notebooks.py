"""Notebook hygiene: papermill `parameters` cells survive nbdev-clean; experiment notebooks have exactly one, and
papermill reads every parameter in it."""

import json, re, shutil, subprocess, sys
from pathlib import Path

import papermill
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "nbs" / "experiments").glob("*.ipynb")) if (ROOT / "nbs" / "experiments").is_dir() else []


def parameters_cells(nb_path) -> int:
    "Number of cells tagged `parameters` in a notebook."
    nb = json.loads(Path(nb_path).read_text())
    return sum("parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"])


@pytest.mark.parametrize("nb", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_experiment_notebook_has_one_parameters_cell(nb):
    assert parameters_cells(nb) == 1, f"{nb.relative_to(ROOT)}: expected exactly one cell tagged `parameters`"


def assignments(nb_path) -> list[str]:
    "Names assigned at the start of a line of the notebook's parameters cell."
    nb = json.loads(Path(nb_path).read_text())
    src = next("".join(c["source"]) for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    return re.findall(r"^(\w+)\s*=", src, re.M)


@pytest.mark.parametrize("nb", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_papermill_reads_every_parameter(nb):
    """papermill parses each line of the parameters cell; a line it cannot parse (an `=` inside the line's value or
    comment) makes it warn `Passed unknown parameter` when the pipeline passes that name (the value is still set, but
    the warning hides real typos)."""
    seen = set(papermill.inspect_notebook(str(nb)))
    assert seen == set(assignments(nb)), (
        f"{nb.relative_to(ROOT)}: papermill cannot parse {sorted(set(assignments(nb)) - seen)}"
    )


def test_papermill_parameter_check_sees_an_equals_sign(tmp_path):
    nb = _notebook(["parameters"])
    nb["cells"][0]["source"] = ["steps = 2\n", 'setting = "N=4,cfg=3"  # label\n']
    p = tmp_path / "eq.ipynb"
    p.write_text(json.dumps(nb))
    assert assignments(p) == ["steps", "setting"] and set(papermill.inspect_notebook(str(p))) == {"steps"}


def _notebook(tags):
    return {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": 3,
                "id": "x",
                "metadata": {"tags": tags, "scrolled": True},
                "outputs": [],
                "source": ["steps = 2"],
            }
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "python3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def test_parameters_tag_survives_nbdev_clean(tmp_path):
    "Run the real nbdev-clean with this project's pyproject.toml on a notebook with a parameters cell."
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "nbs").mkdir()
    nb = tmp_path / "nbs" / "exp.ipynb"
    nb.write_text(json.dumps(_notebook(["parameters"])))
    exe = Path(sys.executable).parent / "nbdev-clean"
    subprocess.run([str(exe)], cwd=tmp_path, check=True, capture_output=True)
    cell = json.loads(nb.read_text())["cells"][0]
    assert cell["metadata"] == {"tags": ["parameters"]}, "nbdev-clean must keep `tags` and drop other cell metadata"
    assert parameters_cells(nb) == 1


def test_counter_sees_missing_and_duplicate_tags(tmp_path):
    for tags, n in (([], 0), (["parameters"], 1)):
        p = tmp_path / f"n{n}.ipynb"
        p.write_text(json.dumps(_notebook(tags)))
        assert parameters_cells(p) == n
    nb = _notebook(["parameters"])
    nb["cells"] *= 2
    p = tmp_path / "dup.ipynb"
    p.write_text(json.dumps(nb))
    assert parameters_cells(p) == 2
