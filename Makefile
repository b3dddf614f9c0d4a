# One-command set-up: `make demo` builds .venv from requirements.lock and runs the pipeline
# on the offline synthetic data; `make test` runs the test suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(abspath $(VENV)/bin)
STAMP := $(VENV)/.installed-from-lock
CORES ?= 2
# Rules call the `distmis` console script, so the venv's bin comes first on PATH.
RUN := PATH=$(BIN):$$PATH

.PHONY: venv demo report test test-fast lint bench clean

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "DistMIS needs Python 3.11, got " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(RUN) $(BIN)/snakemake --cores $(CORES)
	$(RUN) $(BIN)/snakemake --cores $(CORES) --report results/report.html

# Redraw the table and figures from the existing timings; retrains nothing.
report: venv
	$(RUN) $(BIN)/snakemake --cores $(CORES) --forcerun scaling plot_scaling
	$(RUN) $(BIN)/snakemake --cores $(CORES) --report results/report.html

test: venv
	$(RUN) $(BIN)/pytest

test-fast: venv
	$(RUN) $(BIN)/pytest -m "not slow"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@# snakemake --lint flags the PYTHONPATH that rules/common.smk sets on purpose (the comment
	@# there says why); that one known note passes, anything else fails.
	@out=$$($(RUN) $(BIN)/snakemake --lint 2>&1); status=$$?; \
	if [ $$status -eq 0 ]; then echo "snakemake --lint: clean"; \
	elif [ "$$(printf '%s\n' "$$out" | grep -c '^ *\* ')" = 1 ] && \
	     printf '%s\n' "$$out" | grep -q 'PYTHONPATH used but not asserted'; then \
	  echo "snakemake --lint: only the known PYTHONPATH note (see rules/common.smk)"; \
	else printf '%s\n' "$$out"; exit $$status; fi
	$(BIN)/snakefmt --check Snakefile rules/

bench: venv
	$(RUN) $(BIN)/python benchmarks/convert.py
	$(RUN) $(BIN)/python benchmarks/train.py --backend tensorflow
	$(RUN) $(BIN)/python benchmarks/train.py --backend torch
	$(RUN) $(BIN)/python benchmarks/train.py --backend torch --precision bf16 --channels-last
	$(RUN) $(BIN)/python benchmarks/epoch_report.py

clean:
	rm -rf results/data results/tfrecords logs .snakemake
