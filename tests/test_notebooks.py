"Notebook hygiene: papermill `parameters` cells survive nbdev-clean; experiment notebooks have exactly one."
import json, shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT/"nbs"/"experiments").glob("*.ipynb")) if (ROOT/"nbs"/"experiments").is_dir() else []


def parameters_cells(nb_path) -> int:
    "Number of cells tagged `parameters` in a notebook."
    nb = json.loads(Path(nb_path).read_text())
    return sum("parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"])


@pytest.mark.parametrize("nb", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_experiment_notebook_has_one_parameters_cell(nb):
    assert parameters_cells(nb) == 1, f"{nb.relative_to(ROOT)}: expected exactly one cell tagged `parameters`"


def _notebook(tags):
    return {"cells": [{"cell_type": "code", "execution_count": 3, "id": "x", "metadata": {"tags": tags, "scrolled": True},
                       "outputs": [], "source": ["steps = 2"]}],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "python3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def test_parameters_tag_survives_nbdev_clean(tmp_path):
    "Run the real nbdev-clean with this project's pyproject.toml on a notebook with a parameters cell."
    shutil.copy(ROOT/"pyproject.toml", tmp_path/"pyproject.toml")
    (tmp_path/"nbs").mkdir()
    nb = tmp_path/"nbs"/"exp.ipynb"
    nb.write_text(json.dumps(_notebook(["parameters"])))
    exe = Path(sys.executable).parent/"nbdev-clean"
    subprocess.run([str(exe)], cwd=tmp_path, check=True, capture_output=True)
    cell = json.loads(nb.read_text())["cells"][0]
    assert cell["metadata"] == {"tags": ["parameters"]}, "nbdev-clean must keep `tags` and drop other cell metadata"
    assert parameters_cells(nb) == 1


def test_counter_sees_missing_and_duplicate_tags(tmp_path):
    for tags, n in (([], 0), (["parameters"], 1)):
        p = tmp_path/f"n{n}.ipynb"; p.write_text(json.dumps(_notebook(tags)))
        assert parameters_cells(p) == n
    nb = _notebook(["parameters"]); nb["cells"] *= 2
    p = tmp_path/"dup.ipynb"; p.write_text(json.dumps(nb))
    assert parameters_cells(p) == 2
