import os, shutil, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture
def run_cli():
    "Run the installed `maskfocus` command; return the CompletedProcess."
    import subprocess

    exe = shutil.which("maskfocus", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert exe, "the `maskfocus` entry point is not installed (pip install -e .)"

    def run(*args, cwd=None):
        return subprocess.run(
            [exe, *map(str, args)], capture_output=True, text=True, cwd=cwd or ROOT, stdin=subprocess.DEVNULL
        )

    return run


@pytest.fixture(autouse=True)
def one_thread():
    "Tests use tiny tensors: extra intra-op threads only contend on a shared CPU. Restored afterwards."
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    "A tiny random toy base pipeline saved to a folder (the trainer and resume tests)."
    from maskfocus.toy.pipeline import toy_pipeline

    d = tmp_path_factory.mktemp("base")
    toy_pipeline(dim=32, heads=2, layers=1, single_layers=1, text_dim=32, text_layers=1).save(d)
    return d


@pytest.fixture(scope="module")
def metas():
    "The toy world's training prompts."
    from maskfocus import geneval

    return geneval.read_metadata(ROOT / "data" / "prompts" / "train_metadata.jsonl")
