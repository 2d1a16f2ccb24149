"""Resume that checks what it resumes (issue 19, items 2 and 4).

- A corrupt or partial latest checkpoint (corruption injected at each of its files) is skipped with a one-line
  warning naming what is wrong; the run resumes from the newest intact one and ends bit-identical (weights and
  optimizer state) to an uninterrupted run: a small loop over `maskfocus.runs` for every case, and the RL trainer
  for the three cases of the issue.
- A resume against another base (or another CLIP folder of a clip reward) is refused in one line naming both; a copy
  of the same base elsewhere is accepted; a checkpoint written before identities were recorded resumes with a note.
- Checkpoint writes fsync the files and the folder before the rename; a rotation renames a checkpoint away before
  deleting it; `final/` appears complete or not at all.
- `train_summary.json` is the same whether or not the run was interrupted, including a call with nothing left to
  train (its last metrics come from the checkpoint)."""

import json, os, random, shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from _launch_train import Redness, run
from maskfocus.core import InputError
from maskfocus.rl.config import make_config
from maskfocus.runs import checkpoint_problem, clean_stale, list_checkpoints, load_checkpoint, resume_from
from maskfocus.runs import save_checkpoint
from maskfocus.toy.pipeline import toy_pipeline
import maskfocus.runs as runs
import maskfocus.rl.command as command
import maskfocus.rl.state as state

ROOT = Path(__file__).resolve().parents[1]
TINY = {"prompts_per_iter": 2, "group_size": 2, "steps": 4, "K": 2, "lr": 1e-3, "log_images_every": 0}
CFG = {**TINY, "iterations": 4, "checkpoint_every": 1}
WEIGHTS = Path("final") / "transformer" / "diffusion_pytorch_model.safetensors"


def _truncate(n):  # keep the first n bytes (n < 0: drop the last -n)
    return lambda p: p.write_bytes(p.read_bytes()[:n])


# (file, how it is damaged, the words the warning must hold)
DAMAGE = {
    "state_truncated": ("state.json", _truncate(-20), "state.json is not valid JSON"),
    "state_missing": ("state.json", Path.unlink, "state.json is missing"),
    "state_empty": ("state.json", lambda p: p.write_text(""), "state.json is not valid JSON"),
    "state_not_a_mapping": ("state.json", lambda p: p.write_text("[1, 2]"), "state.json lacks step"),
    "state_other_step": ("state.json", lambda p: p.write_text(p.read_text().replace('"step": 3', '"step": 9')), "step"),
    "weights_truncated": ("weights.safetensors", _truncate(-7), "weights.safetensors is truncated"),
    "weights_header_cut": ("weights.safetensors", _truncate(20), "weights.safetensors is truncated"),
    "weights_missing": ("weights.safetensors", Path.unlink, "weights.safetensors is missing"),
    "weights_garbage": (
        "weights.safetensors",
        lambda p: p.write_bytes(b"\x10" + b"\0" * 7 + b"{{not json}}!!!!"),
        "malformed",
    ),
    "weights_too_long": ("weights.safetensors", lambda p: p.write_bytes(p.read_bytes() + b"\0" * 4), "too long"),
    "optimizer_truncated": ("optimizer.safetensors", _truncate(-100), "optimizer.safetensors is truncated"),
    "optimizer_missing": ("optimizer.safetensors", Path.unlink, "optimizer.safetensors is missing"),
    "optimizer_empty": ("optimizer.safetensors", lambda p: p.write_bytes(b""), "optimizer.safetensors is truncated"),
}


# --- maskfocus.runs: every corruption case on a small loop ---------------------------------------------------------


def make():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    sch = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s))
    return net, opt, sch, np.random.default_rng(5)


def steps(net, opt, sch, rng, a, b, run=None):
    "Steps a..b-1, a checkpoint after each when `run` is given."
    for s in range(a, b):
        x = torch.from_numpy(rng.normal(size=(16, 4))).float() + torch.randn(16, 4) * 0.1
        loss = net(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sch.step()
        if run is not None:
            save_checkpoint(run, s + 1, {"net": net}, opt, sch, {"data": rng}, extra={"config": {"lr": 1e-2}})


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_corrupt_latest_checkpoint_small_loop(case, tmp_path, capsys):
    "Checkpoints 2 and 3 of 4 steps, checkpoint 3 damaged: resume from 2, end bit-identical to a straight run."
    name, damage, words = DAMAGE[case]
    straight = make()
    steps(*straight, 0, 4, tmp_path / "a")
    run = tmp_path / "b"
    steps(*make(), 0, 3, run)
    damage(run / "checkpoints" / "step_0000003" / name)
    capsys.readouterr()
    torch.manual_seed(123)
    random.seed(9)  # a new process would start from other global states
    ck = resume_from(run, {"lr": 1e-2})
    err = capsys.readouterr().err.strip().splitlines()
    assert ck.name == "step_0000002", "the newest intact checkpoint"
    assert len(err) == 1 and err[0].startswith("warning: train: checkpoint ") and words in err[0], err
    assert "step_0000003" in err[0] and not (run / "checkpoints" / "step_0000003").exists()
    net, opt, sch, rng = make()
    assert load_checkpoint(ck, {"net": net}, opt, sch, {"data": rng})["step"] == 2
    steps(net, opt, sch, rng, 2, 4, run)
    assert all(torch.equal(a, b) for a, b in zip(straight[0].parameters(), net.parameters())), "weights"
    oa, ob = (load_file(r / "checkpoints" / "step_0000004" / "optimizer.safetensors") for r in (tmp_path / "a", run))
    assert oa.keys() == ob.keys() and all(torch.equal(oa[k], ob[k]) for k in oa), "optimizer moments and RNGs"


@pytest.mark.parametrize("case", ["state_truncated", "weights_truncated", "optimizer_missing"])
def test_load_of_a_corrupt_checkpoint_is_one_line(case, tmp_path):
    "Loading a damaged checkpoint by its folder: an InputError naming the folder and the file, no traceback."
    name, damage, words = DAMAGE[case]
    steps(*make(), 0, 1, tmp_path)
    ck = list_checkpoints(tmp_path)[-1]
    damage(ck / name)
    with pytest.raises(InputError) as e:
        load_checkpoint(ck, {"net": make()[0]})
    assert str(ck) in str(e.value) and words in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError, match="no intact checkpoint"):
        load_checkpoint(tmp_path, {"net": make()[0]})  # a run folder: its newest intact one, here none


def test_all_checkpoints_corrupt_starts_over(tmp_path, capsys):
    "Nothing intact to resume: each damaged checkpoint is named, then the run starts from the beginning."
    steps(*make(), 0, 2, tmp_path)
    for ck in list_checkpoints(tmp_path):
        (ck / "optimizer.safetensors").unlink()
    assert resume_from(tmp_path, {"lr": 1e-2}) is None
    assert capsys.readouterr().err.count("warning: train: checkpoint ") == 2
    assert not list_checkpoints(tmp_path)


def test_fsync_before_rename_and_rotation_renames_away(tmp_path, monkeypatch):
    "Every file of a checkpoint and its folder are fsynced before the rename; old ones are renamed, then deleted."
    net, opt, sch, rng = make()
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(a, b):
        events.append(("replace", str(a), str(b)))
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(tmp_path, 1, {"net": net}, opt, sch, {"data": rng})
    rename = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2].endswith("step_0000001"))
    synced = [Path(e[1]).name for e in events[:rename] if e[0] == "fsync"]
    tmp = Path(events[rename][1]).name
    assert {"weights.safetensors", "optimizer.safetensors", "state.json", tmp} <= set(synced), synced
    assert any(e[0] == "fsync" and e[1] == str(tmp_path / "checkpoints") for e in events[rename:]), "the parent too"
    # a kill between the rename and the deletion of a rotated checkpoint: a hidden folder, never listed, then removed
    save_checkpoint(tmp_path, 2, {"net": net}, opt, sch, {"data": rng})
    monkeypatch.undo()

    class Killed(BaseException):
        pass

    def rmtree(*a, **k):
        raise Killed()

    monkeypatch.setattr(runs.shutil, "rmtree", rmtree)
    with pytest.raises(Killed):
        save_checkpoint(tmp_path, 3, {"net": net}, opt, sch, {"data": rng})
    monkeypatch.undo()
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert left[0].startswith(".step_0000001.del.") and left[1:] == ["step_0000002", "step_0000003"], left
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000002", "step_0000003"]
    assert all(checkpoint_problem(p) is None for p in list_checkpoints(tmp_path))
    clean_stale(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000002", "step_0000003"]


# --- the RL trainer ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def straight(base, metas, tmp_path_factory):
    "An uninterrupted run of 4 iterations, a checkpoint after each."
    out = tmp_path_factory.mktemp("straight")
    run(make_config("maskfocus", CFG), base, out, metas)
    return out


@pytest.fixture(scope="module")
def stopped(base, metas, tmp_path_factory):
    "The same run stopped after 3 iterations (checkpoints 2 and 3 kept)."
    out = tmp_path_factory.mktemp("stopped")
    run(make_config("maskfocus", CFG), base, out, metas, max_iterations=3)
    assert [p.name for p in list_checkpoints(out / "run")] == ["step_0000002", "step_0000003"]
    return out


def same_end(a: Path, b: Path):
    "Same final weights, same last checkpoint (weights, optimizer moments, RNG states), same train_summary.json."
    wa, wb = load_file(a / WEIGHTS), load_file(b / WEIGHTS)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), "final weights"
    ca, cb = list_checkpoints(a / "run")[-1], list_checkpoints(b / "run")[-1]
    assert ca.name == cb.name == "step_0000004"
    for f in ("weights.safetensors", "optimizer.safetensors"):
        ta, tb = load_file(ca / f), load_file(cb / f)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), f
    assert (a / "train_summary.json").read_bytes() == (b / "train_summary.json").read_bytes(), "the summary"


@pytest.mark.parametrize("case", ["state_truncated", "weights_truncated", "optimizer_missing"])
def test_rl_resume_skips_a_corrupt_checkpoint(case, base, metas, straight, stopped, tmp_path, capsys):
    "The issue's three cases: checkpoint 3 damaged; the run resumes from 2 and ends as the uninterrupted run."
    name, damage, words = DAMAGE[case]
    out = tmp_path / "o"
    shutil.copytree(stopped, out)
    damage(out / "run" / "checkpoints" / "step_0000003" / name)
    capsys.readouterr()
    r = run(make_config("maskfocus", CFG), base, out, metas)
    warn = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and words in warn[0] and "step_0000003" in warn[0], warn
    assert r["start"] == 2 and r["end"] == 4
    same_end(straight, out)


def test_summary_same_when_interrupted(base, metas, straight, stopped, tmp_path):
    """train_summary.json: uninterrupted == stopped at 3 and resumed == every iteration done but the process killed
    before the summary (the next call has nothing to train) == the same with a checkpoint of an older version."""
    s = json.loads((straight / "train_summary.json").read_text())
    assert s["last"]["iteration"] == 4 and not any(k.startswith("time/") for k in s["last"])
    out = tmp_path / "resumed"
    shutil.copytree(stopped, out)
    assert run(make_config("maskfocus", CFG), base, out, metas)["start"] == 3
    same_end(straight, out)
    done = tmp_path / "done"
    shutil.copytree(straight, done)
    shutil.rmtree(done / "final")
    (done / "train_summary.json").unlink()
    r = run(make_config("maskfocus", CFG), base, done, metas)
    assert r["start"] == r["end"] == 4 and r["history"] == []
    same_end(straight, done)
    # a checkpoint written before `last` was recorded: the previous summary (same config) gives the last metrics
    st = done / "run" / "checkpoints" / "step_0000004" / "state.json"
    js = json.loads(st.read_text())
    del js["extra"]["last"]
    st.write_text(json.dumps(js))
    summ = json.loads((done / "train_summary.json").read_text())
    summ["last"]["time/iteration"] = 1.25  # as older versions wrote it
    (done / "train_summary.json").write_text(json.dumps(summ))
    run(make_config("maskfocus", CFG), base, done, metas)
    same_end(straight, done)


def test_final_appears_complete_or_not_at_all(base, metas, straight, tmp_path, monkeypatch):
    "A crash while the trained pipeline is written leaves no final/ and no temporary folder."
    out = tmp_path / "o"
    shutil.copytree(straight, out)
    shutil.rmtree(out / "final")

    def save(self, folder):  # the transformer is written, then the disk fills up
        (Path(folder) / "transformer").mkdir(parents=True)
        (Path(folder) / "transformer" / "config.json").write_text("{}")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state.MaskedPipeline, "save", save)
    with pytest.raises(OSError):
        run(make_config("maskfocus", CFG), base, out, metas)
    assert not (out / "final").exists() and not [p.name for p in out.iterdir() if p.name.startswith(".final")]


def other_base(base: Path, dest: Path) -> Path:
    "The same architecture with other weights."
    shutil.copytree(base, dest)
    toy_pipeline(dim=32, heads=2, layers=1, single_layers=1, text_dim=32, text_layers=1, seed=1).save(dest)
    return dest


def test_resume_against_another_base(base, metas, stopped, tmp_path, monkeypatch, capsys):
    """Another base: refused in one line naming both folders and hashes (the CLI: exit 2, one `error:` line); the same
    files in another folder: accepted; "auto": starts over; a checkpoint without identity: resumed with a note."""
    cfg = make_config("maskfocus", CFG)
    out = tmp_path / "o"
    shutil.copytree(stopped, out)
    b2 = other_base(base, tmp_path / "base2")
    with pytest.raises(InputError) as e:
        state.resume_run(state.setup(cfg, b2, out, prompts=metas, reward_fn=Redness()))
    msg = str(e.value)
    print(msg)
    assert e.value.field == "base" and str(base) in msg and str(b2) in msg and "\n" not in msg
    old, new = (runs.folder_identity(p)["sha256"][:12] for p in (base, b2))
    assert old in msg and new in msg and msg.index(old) < msg.index(new)
    # the CLI: one error line, exit status 2
    monkeypatch.setattr(state, "make_reward", lambda spec, **kw: Redness())
    import yaml

    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"t": {"preset": "maskfocus", **CFG}}))
    capsys.readouterr()
    argv = ["--base", str(b2), "--out", str(out), "--params", str(p), "--section", "t", "--no-progress"]
    assert command.train_main(argv) == 2
    err = [
        ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "Loading weights" not in ln
    ]  # (progress bars)
    assert len(err) == 1 and err[0].startswith("error: ") and "another base" in err[0], err
    # a copy of the same base in another folder: accepted
    same = tmp_path / "copy"
    shutil.copytree(base, same)
    assert state.resume_run(state.setup(cfg, same, out, prompts=metas, reward_fn=Redness())) == 3
    # an older checkpoint (no identity recorded): resumed, with a note
    st = out / "run" / "checkpoints" / "step_0000003" / "state.json"
    js = json.loads(st.read_text())
    del js["extra"]["identity"]
    st.write_text(json.dumps(js))
    capsys.readouterr()
    assert state.resume_run(state.setup(cfg, b2, out, prompts=metas, reward_fn=Redness())) == 3
    assert "records no identity of its base" in capsys.readouterr().out
    # "auto" (the DVC stages' --restart-on-change): another base starts over
    shutil.rmtree(out)
    shutil.copytree(stopped, out)
    assert state.resume_run(state.setup(cfg, b2, out, prompts=metas, reward_fn=Redness()), "auto") == 0
    assert "another base" in capsys.readouterr().out and not list_checkpoints(out / "run")


def test_identity_of_the_clip_reward_model(base, tmp_path):
    "A clip reward records the identity of its CLIP folder; name-only rewards record the base alone."
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "open_clip_config.json").write_text("{}")
    cfg = make_config("maskfocus", {**CFG, "reward": {"clip": 1.0}, "clip_model": str(clip)})
    ids = state.run_identity(cfg, base)
    assert set(ids) == {"base", "clip_model"} and ids["clip_model"]["folder"] == str(clip)
    assert set(state.run_identity(make_config("maskfocus", CFG), base)) == {"base"}
    assert set(state.run_identity(cfg, base, reward_fn=Redness())) == {"base"}, "a given reward: its models unknown"
