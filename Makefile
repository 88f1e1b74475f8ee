# lungclam: the two commands are `make demo` and `make test`; both set themselves up.
# The Python that creates the venv; empty: python3 when lungclam supports its version, else
# the newest supported python3.X on the PATH (tools/pick_python.sh). `make setup
# PYTHON=python3.12 VENV=/tmp/venv312` builds another venv.
PYTHON ?=
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lungclam-installed
CORES ?= all

.PHONY: setup demo test test-second-python test-all lint format dryrun slurm-profile clean

setup: $(STAMP)

# Reuses .venv when it exists; reinstalls only when pyproject.toml changed.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { python=$$(tools/pick_python.sh $(PYTHON)) && \
		echo "creating $(VENV) with $$python" && "$$python" -m venv $(VENV); }
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[test]'
	@touch $(STAMP)

demo: setup
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --report results/report.html
	@echo ""
	@echo "lungclam demo finished: outputs are in $(CURDIR)/results/"
	@echo "  registered scans:   results/registered/   model inputs: results/downsampled/"
	@echo "  study template:     results/template/     logs: results/logs/"
	@echo "  clusters:           results/clusters.tsv  K selection: results/figures/k_selection.png"
	@echo "  CLAM maps:          results/clam/         (overlay on results/template/grid_template.nii.gz)"
	@echo "  statistics:         results/stats/        figures: results/figures/   QC: results/qc/"
	@echo "  report:             $(CURDIR)/results/report.html"

# The suite runs in TEST_WORKERS pytest-xdist processes: three on two cores, because the
# Slurm test mostly waits for its jobs. The slow tests start first, longest first, and the
# few that run snakemake in the shared demo run's folder stay on one worker (tests/conftest.py,
# tests/snakemake_runs.py). TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 3
test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup
	@$(MAKE) --no-print-directory test-second-python

# The unit tests (not slow) again under a second supported Python, in its own venv, so that
# CI covers two versions. Without a second Python, or without the disk space to install
# one, it says so and passes: it is an extra. Only Python 3.11 finds a CPU build of torch
# on these machines' disk; another Python downloads PyPI's CUDA build, which took 7.4 GiB
# at its peak and 5.8 GiB once installed (measured 2026-11-28), so the install skips pip's
# cache and first checks that SECOND_VENV_MIN_FREE_GIB are free where the venv goes.
SECOND_VENV ?= .venv-second
SECOND_VENV_MIN_FREE_GIB ?= 8
test-second-python: setup
	@python=$$(tools/pick_python.sh --other-than $(BIN)/python) || \
		{ echo "test-second-python: SKIPPED, unit tests ran under one Python only"; exit 0; }; \
	if [ ! -f $(SECOND_VENV)/.lungclam-installed ]; then \
		free_gib=$$(df -Pk . | awk 'NR == 2 { print int($$4 / 1048576) }'); \
		if [ "$$free_gib" -lt $(SECOND_VENV_MIN_FREE_GIB) ]; then \
			echo "test-second-python: SKIPPED, only $$free_gib GiB free in $(CURDIR) and a venv for $$python needs $(SECOND_VENV_MIN_FREE_GIB) GiB (torch's CUDA build); unit tests ran under one Python only"; \
			exit 0; fi; fi; \
	echo "test-second-python: unit tests under $$python in $(SECOND_VENV)"; \
	PIP_NO_CACHE_DIR=1 $(MAKE) --no-print-directory setup VENV=$(SECOND_VENV) PYTHON=$$python && \
	$(SECOND_VENV)/bin/python -m pytest tests/unit -m 'not slow' -n $(TEST_WORKERS) --dist loadgroup

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint

# Rewrites the tree in the house style (ruff's fixes and format, snakefmt); `make lint` checks it.
format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/snakefmt Snakefile workflow/rules

dryrun: setup
	$(BIN)/snakemake -n

# Installs the cluster profile where Snakemake finds it by name, so that
# `snakemake --profile slurm` works as typed; edit partition/account in the copy.
PROFILE_DIR ?= $(or $(XDG_CONFIG_HOME),$(HOME)/.config)/snakemake/slurm
slurm-profile:
	@if [ -e "$(PROFILE_DIR)/config.yaml" ] && ! cmp -s profiles/slurm/config.yaml "$(PROFILE_DIR)/config.yaml" && [ -z "$(FORCE)" ]; then \
		echo "$(PROFILE_DIR)/config.yaml exists and differs from profiles/slurm/config.yaml; keep it, or run 'make slurm-profile FORCE=1' to replace it"; exit 1; fi
	@mkdir -p "$(PROFILE_DIR)"
	cp profiles/slurm/config.yaml "$(PROFILE_DIR)/config.yaml"
	@echo "installed: snakemake --profile slurm now uses $(PROFILE_DIR)/config.yaml (set slurm_partition and slurm_account there)"

clean:
	rm -rf results .snakemake
