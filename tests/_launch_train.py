"""Test harness: run `maskfocus.rl.command.train_main` in this process (also under `accelerate launch`), with two
test-only hooks set by environment variables:

- MASKFOCUS_TEST_REWARD=redness: reward the share of red-ish pixels instead of the config's reward (a random toy
  model draws no objects, so the judge's reward would be 0 everywhere and every advantage 0);
- MASKFOCUS_TEST_KILL_AT=N: SIGKILL this process right after the first file of checkpoint N has been written.

Not collected by pytest (the name does not start with `test_`)."""

import os, signal, sys

import numpy as np


class Redness:
    "Stand-in reward: the fraction of pixels whose red channel dominates."

    name = "redness"

    def __call__(self, images, prompts, metadata=None):
        a = np.asarray(images).astype(np.int32)
        s = ((a[..., 0] > a[..., 1] + 20) & (a[..., 0] > a[..., 2] + 20)).mean((1, 2)).astype(np.float32)
        return s, {"mean": float(s.mean()), "std": float(s.std())}


def run(cfg, base, out, metas, **kw):
    "Train in this process with the Redness reward, no progress bar (the trainer and resume tests)."
    from maskfocus.rl import trainer

    return trainer.train(cfg, base, out, prompts=metas, reward_fn=Redness(), progress=False, **kw)


def install_hooks():
    "Apply the hooks requested by the environment."
    import maskfocus.runs as ck
    import maskfocus.rl.state as st  # setup builds the reward there

    if os.environ.get("MASKFOCUS_TEST_REWARD") == "redness":
        st.make_reward = lambda spec, **kw: Redness()
    kill = os.environ.get("MASKFOCUS_TEST_KILL_AT")
    if kill:
        real = ck.save_file

        def save_file(tensors, path, *args, **kw):
            real(tensors, path, *args, **kw)
            if f".step_{int(kill):07d}." in str(path):
                os.kill(os.getpid(), signal.SIGKILL)

        ck.save_file = save_file


if __name__ == "__main__":
    install_hooks()
    from maskfocus.rl.command import train_main

    sys.exit(train_main())
