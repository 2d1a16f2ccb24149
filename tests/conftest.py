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
        return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, cwd=cwd or ROOT, stdin=subprocess.DEVNULL)
    return run
