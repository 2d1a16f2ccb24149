# make test   - set up .venv if needed, then lint, run every test and the paper pipeline's smoke twin (what CI runs)
# make lint   - ruff check (lines <= 120, syntax) and ruff format --check (see README, "Development: the house rules")
# make repro  - set up .venv if needed, then reproduce the toy pipeline (dvc repro; RL runs two at a time)
# make demo   - set up .venv if needed, then train a small base and a short MaskFocus run in demo/ (minutes)
# make docs   - set up .venv if needed, then build the documentation site from the notebooks into _docs/
# make lab    - open the notebooks in JupyterLab
SHELL := /bin/bash
VENV  := .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup lint test repro demo docs lab clean-venv

setup: $(STAMP)

# torch/torchvision are pinned by constraints.txt for every install (see README, "Why a constraints file").
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

test: $(STAMP) lint
	# each part is timed (bash `time`): the CI log shows the share of each
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/check_nbdev_clean.sh
	# two notebooks run at once on two cores: one torch thread each avoids oversubscription
	time OMP_NUM_THREADS=1 PATH="$(CURDIR)/$(BIN):$$PATH" nbdev-test --n-workers 2
	time PATH="$(CURDIR)/$(BIN):$$PATH" python -m pytest tests/ -q
	# the paper pipeline's CPU smoke twin, every stage from scratch: tiny random models in the real layouts
	rm -rf paper/smoke/dvc.lock paper/smoke/models paper/smoke/work paper/smoke/results
	time OMP_NUM_THREADS=1 PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro paper/smoke/dvc.yaml

lint: $(STAMP)
	$(BIN)/ruff check maskfocus tests scripts benchmarks nbs
	$(BIN)/ruff format --check nbs tests scripts benchmarks
	$(BIN)/python scripts/dvc_deps.py --check

# The RL runs and the base model's evaluations are independent and fastest with one torch thread each:
# scripts/repro_parallel.py runs them two at a time, longest first (Mask-GRPO and MaskGRPO train every step; the base
# is evaluated at 5 settings), and records them in dvc.lock as `dvc repro` would; plain `dvc repro` gives the same
# results, one at a time. The figure and table stages come last: each starts once its RL runs are recorded, so they
# fill the core the last runs leave idle.
POOL := 'rl@mask_grpo-*' 'rl_variant@clip-mask_grpo' 'rl@maskgrpo-*' 'rl_variant@clip-maskgrpo' eval_base \
        'rl@*' 'rl_udm@*' 'rl_variant@*' eval_base_train eval_base_clip fig2a fig2b fig2c \
        counting_diagnosis fig6 paper_plan table1_geneval table2_clip_reward table3_ablation reward_recipe \
        fig5_variants compute_table training_curves report
repro: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro prompts judge_groundtruth train_clip pretrain
	PATH="$(CURDIR)/$(BIN):$$PATH" python scripts/repro_parallel.py --jobs 2 $(POOL)
	# --allow-missing: a stage whose only change is a DVC-cached output absent from a clone (no DVC remote) is not re-run
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro --allow-missing

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" python scripts/demo.py

docs: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/docs.sh

lab: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" jupyter lab nbs $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

clean-venv:
	rm -rf $(VENV)
