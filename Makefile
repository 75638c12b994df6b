# Set-up and everyday targets. `make demo` and `make test` are all a new machine needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo_out
NETTRIM := $(BIN)/nettrim

.PHONY: install test demo bench experiments experiments-lc experiments-hs experiments-hs-nets experiments-hs-alloc experiments-hs-tuned experiments-ft-recovery conv-experiments \
	finetune-recipe resume-check lint clean fashion-mnist experiments-sharpen

# torch is installed first and pinned to the CPU build that lies on this machine's disk:
# a loose `torch` requirement would pull a multi-GB CUDA build.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check nettrim_cli tests benchmarks experiments

# The paper's Figure 1: train the spiral classifier, dump, prune in cascade mode, report.
demo: install
	mkdir -p $(DEMO)
	$(BIN)/python -m nettrim_cli.demo train --out $(DEMO)
	$(NETTRIM) dump $(DEMO)/model.pt --inputs $(DEMO)/calib.npy --labels $(DEMO)/labels.npy \
		-o $(DEMO)/acts.h5 --force
	$(NETTRIM) prune $(DEMO)/model.pt --acts $(DEMO)/acts.h5 --config configs/demo.toml \
		-o $(DEMO)/pruned.pt --report $(DEMO)/report.json --force -q
	$(NETTRIM) report $(DEMO)/report.json
	$(BIN)/python -m nettrim_cli.demo compare $(DEMO)/model.pt $(DEMO)/pruned.pt \
		--calib $(DEMO)/calib.npy

# Fashion-MNIST comes from Debian's dataset-fashion-mnist (installed here when missing).
fashion-mnist:
	@test -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz || \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)

bench: install fashion-mnist
	$(BIN)/python benchmarks/bench_default.py
	$(BIN)/python benchmarks/bench_lambda.py
	$(BIN)/python benchmarks/bench.py
	$(BIN)/python benchmarks/bench_export.py

# The paper's section 6 on Fashion-MNIST (hours on 2 cores; cached, so a rerun resumes):
# writes exp_out/ and docs/results.md with the figures. NETS=NN2-10K,CNN-10K picks networks.
experiments: install fashion-mnist
	$(BIN)/python -m experiments.run

# Whole conv networks (LeNet-5, a small ResNet, the paper's CNN-10K/30K/60K), every layer pruned
# with `nettrim prune --sparsity`: docs/results.md's section "Whole conv networks" (hours on 2
# shared cores; cached in exp_out/conv, so a rerun resumes). CONV_NETS=lenet5,resnet picks networks.
conv-experiments: install fashion-mnist
	nice $(BIN)/python -m experiments.convnets

# LC and iterative magnitude pruning (HPTD) of a LeNet300-style MLP at 90% and 95% (about an
# hour on 2 shared cores; cached in exp_out/lc): a section of docs/results.md.
experiments-lc: install fashion-mnist
	nice $(BIN)/python -m experiments.lc_run

# Issue 16's comparison at 90% and 95% pruned: Net-Trim (--sparsity) with and without the default
# fine-tune, the one-shot baselines at its counts, LC and HPTD (reuses `make experiments-lc`).
experiments-hs: install fashion-mnist
	$(BIN)/python -m experiments.high_sparsity

# Issue 16's networks (NN2-10K, LeNet-5, NN3-60K, CNN-60K) at 90% and 95% pruned: Net-Trim with
# and without the default fine-tune, the one-shot baselines at its counts (docs/high-sparsity-nets.md).
experiments-hs-nets: install fashion-mnist
	nice $(BIN)/python -m experiments.hs_nets

# the same networks and levels with Net-Trim's per-layer eps (--allocation discrepancy): the
# prune, its default and 4-epoch fine-tunes, the one-shot baselines at its counts; needs
# experiments-hs-nets' networks (about an hour on 2 cores); adds to docs/high-sparsity-nets.md
experiments-hs-alloc: install fashion-mnist
	nice $(BIN)/python -m experiments.hs_alloc

# the same from the dense networks after the default fine-tune (their dense-ft.pt, which more
# training no longer improves): the allocation's prune and fine-tunes, the one-shot baselines
# without FT, LC with its 20 epochs (about two hours on 2 cores); needs experiments-hs-nets
experiments-hs-tuned: install fashion-mnist
	HSN_START=tuned HSN_TRAINED=lc HSN_FT_BASELINES= nice $(BIN)/python -m experiments.hs_alloc

# Issue 16's figure 1 at 95% on the tuned conv nets: other fine-tune recipes for the same prune
# (after experiments-hs-tuned; docs/finetune-recovery.md)
experiments-ft-recovery: install fashion-mnist
	nice $(BIN)/python -m experiments.ft_recovery

# Issue 16's support refit (--refit) and reweighted l1 (--reweight K): LeNet300 at 90% pruned in
# both modes with and without them, and the held-out digits MLP against a magnitude x input-norm
# selection with a least-squares refit; writes docs/sharpen.md (about an hour on 2 shared cores;
# cached in exp_out/sharpen, reuses `make experiments-lc`'s network when it is on disk).
experiments-sharpen: install fashion-mnist
	nice $(BIN)/python -m experiments.sharpen

# How the default of `nettrim finetune` was chosen: NN2-10K pruned to 90% (Net-Trim and
# SparseGPT-style), fine-tuned with a grid of recipes; writes docs/finetune-recipe.md (~30 min).
finetune-recipe: install fashion-mnist
	$(BIN)/python -m experiments.finetune_recipe

# A longer kill-and-resume campaign than `make test` runs; appends to docs/resume-kills.jsonl.
resume-check: install
	NETTRIM_KILL_POINTS=10 NETTRIM_KILL_LOG=$(CURDIR)/docs/resume-kills.jsonl \
		$(BIN)/pytest -q tests/test_resume.py -k killed

clean:
	rm -rf $(DEMO) .pytest_cache
