# circuittrack: `make test` and `make book` are the two commands a new user needs (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PROFILE ?= toy
export WANDB_MODE := disabled
export TOKENIZERS_PARALLELISM := false
# pip's "Location ... is ignored" lines come from this machine's extra local indexes; they are harmless.
PIPQUIET := grep -v -e 'is ignored: it is neither' || true

.PHONY: venv toy toy-families test test-fast book notebooks bench clean-book lab

## venv: create .venv (if missing) and install the pinned dependencies plus this package (editable)
venv: $(STAMP)
$(STAMP): requirements.txt pyproject.toml
	@echo "==> creating $(VENV) and installing pinned dependencies (about a minute)"
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q -U pip 2>&1 | $(PIPQUIET)
	@$(PY) -m pip install -q -r requirements.txt 2>&1 | $(PIPQUIET)
	@$(PY) -m pip install -q --no-deps -e . 2>&1 | $(PIPQUIET)
	@$(PY) -m pip check
	@touch $(STAMP)
	@echo "==> environment ready"

## toy: train the offline toy suite if it is not trained yet (cached; `circuittrack train-toy --force` redoes it);
##      PROFILE=seeds also trains the seed variants (5 extra seeds of toy-s and toy-m, about 25 min on 2 cores)
toy: venv
	@echo "==> toy suite$(if $(filter seeds,$(PROFILE)), and its seed variants,)"
	@$(VENV)/bin/circuittrack train-toy $(if $(filter seeds,$(PROFILE)),--seeds,)

## toy-families: toy-m and its Llama twin toy-llama-m (PROFILE=families; toy-llama-m trains in about 10 minutes)
toy-families: venv
	@echo "==> toy-m and toy-llama-m"
	@$(VENV)/bin/circuittrack train-toy --models toy-m toy-llama-m

## test: the whole test suite, offline (trains the toy suite first if needed, and toy-s-seed1, which the seeds
##       chapter's smoke run reads)
test: venv
	@echo "==> toy suite (and toy-s-seed1)"
	@$(VENV)/bin/circuittrack train-toy --models toy-s toy-m toy-l toy-s-seed1
	@echo "==> tests"
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

## test-fast: tests that need no trained toy suite
test-fast: venv
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow"

## notebooks: execute every notebook with papermill into book/executed/ (PROFILE=toy|seeds|smoke|pythia-quick|paper|
##            polypythias|families, JOBS=2); each notebook computes what it shows through the sweep (results in data/results/), then
##            draws it; PROFILE=seeds adds chapter 6 (seed variants), PROFILE=families chapter 8 (toy-m and its
##            Llama twin toy-llama-m, the claims side by side)
JOBS ?= 2
notebooks: venv $(if $(filter toy smoke seeds,$(PROFILE)),toy,) $(if $(filter families,$(PROFILE)),toy-families,)
	@echo "==> notebooks (profile $(PROFILE), $(JOBS) jobs)"
	$(VENV)/bin/circuittrack notebooks --profile $(PROFILE) --jobs $(JOBS)

## book: everything, then build the Jupyter Book into _build/html (warnings are errors) and, where Chromium is
##       installed, open every page offline and screenshot it into _build/screenshots/
book: notebooks
	@echo "==> building the book"
	@$(VENV)/bin/jupyter-book build . --path-output . -W -q \
	  --toc "$$($(PY) -c 'from circuittrack.book.notebooks import book_toc; print(book_toc("$(PROFILE)"))')"
	@$(PY) -m circuittrack.book.check _build/html _build/screenshots
	@echo "==> open _build/html/index.html"

## lab: JupyterLab on notebooks/ with this environment registered as the kernel "circuittrack", offline (no news
##      feed, no update check, no extension index); LAB_ARGS adds options, e.g. LAB_ARGS="--no-browser --port 8899"
LAB_ARGS ?=
lab: venv
	@$(PY) -m ipykernel install --sys-prefix --name circuittrack --display-name "circuittrack (.venv)" >/dev/null
	@echo "==> JupyterLab on notebooks/ (kernel: circuittrack); stop it with Ctrl-C"
	HF_HUB_OFFLINE=1 $(VENV)/bin/jupyter-lab --notebook-dir=notebooks --LabApp.news_url=None \
	  --LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate \
	  --LabApp.extension_manager=readonly $(if $(filter 0,$(shell id -u)),--allow-root,) $(LAB_ARGS)

## bench: toy training speed (edition 2's step against edition 3's, tokens per second, where the time goes),
##        EAP-IG speed and memory (toy-l on random tokens and on its IOI prompts, a random Pythia-160m shape; each
##        beside the kernel that runs every position) and circuit discovery at Pythia-2.8b graph
##        size (scores, greedy order over 1.6M edges, size search to 1600 edges); DEVICE=cuda on a GPU; the circuit
##        viewer at that size in headless Chromium (1,600 edges x 150 checkpoints: page load, slider move); EAP-IG
##        and circuit discovery on random models with OLMo-2 1B's graph and a grouped-query Llama 1B's
DEVICE ?= cpu
bench: toy
	@mkdir -p benchmarks/out
	$(PY) benchmarks/bench_training.py --out benchmarks/out/training-cpu.json
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_attribution.py --device $(DEVICE) \
	  --model-path "$$($(PY) -c 'from circuittrack.models.checkpoints import toy_checkpoint_dir as d; print(d("toy-l", "final"))')" --batch-size 32 --seq-len 24 --n-examples 64 \
	  --out benchmarks/out/attribution-toy-l-$(DEVICE).json
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_attribution.py --device $(DEVICE) --task ioi --backends torch \
	  --model-path "$$($(PY) -c 'from circuittrack.models.checkpoints import toy_checkpoint_dir as d; print(d("toy-l", "final"))')" --batch-size 32 --n-examples 64 \
	  --out benchmarks/out/attribution-toy-l-ioi-$(DEVICE).json
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_attribution.py --device $(DEVICE) \
	  --out benchmarks/out/attribution-pythia160m-$(DEVICE).json
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_circuits.py --device $(DEVICE) \
	  --out benchmarks/out/circuits-pythia2.8b-graph-$(DEVICE).json
	$(PY) benchmarks/bench_viewer.py --out benchmarks/out/viewer-pythia2.8b-size.json
	for shape in olmo2-1b llama-gqa-1b; do \
	  HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_attribution.py --device $(DEVICE) --shape $$shape --backends torch \
	    --batch-size 32 --seq-len 20 --n-examples 32 --out benchmarks/out/attribution-$$shape-$(DEVICE).json; \
	  HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_circuits.py --device $(DEVICE) --shape $$shape \
	    --out benchmarks/out/circuits-$$shape-graph-$(DEVICE).json; \
	done

clean-book:
	rm -rf _build book/executed
