# make demo  -- install into .venv and run the main job offline
# make test  -- install into .venv (and .venv-fe12 for FlagEmbedding 1.2) and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.modelguard-installed

.PHONY: venv demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: anything looser pulls several GB of CUDA packages
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[all]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) tools/demo.py

test: venv
	$(PY) -m pytest
	# FlagEmbedding 1.2.x (the BGEM3FlagModel line with its own pooler loading) in its own env
	bash tools/setup_fe12_env.sh
	.venv-fe12/bin/python -m pytest tests/fe12

bench: venv
	$(PY) tools/bench.py

clean:
	rm -rf $(VENV) .venv-fe12 build *.egg-info .pytest_cache
