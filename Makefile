# make demo    -- install into .venv and run the main job offline
# make test    -- install the pinned environment (constraints.txt) into .venv, and FlagEmbedding 1.2
#                 into .venv-fe12, and run the whole test suite; a missing library fails the run
# make lock    -- re-resolve the newest releases the extras admit and rewrite constraints.txt
# make matrix  -- measure the supported library lines in throwaway environments (not run by CI)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.modelguard-installed

.PHONY: venv demo test bench lock matrix clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first and pinned: anything looser pulls several GB of CUDA packages
	$(PIP) install --quiet torch==2.13.0
	# the build backend from the lock too, so the editable build is reproducible as well
	$(PIP) install --quiet -c constraints.txt setuptools
	$(PIP) install --quiet --no-build-isolation -c constraints.txt -e '.[all]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) tools/demo.py

# MODELGUARD_TEST_STRICT: a library the suite needs that cannot be imported fails the run.
test: venv
	MODELGUARD_TEST_STRICT=1 $(PY) -m pytest
	# FlagEmbedding 1.2.x (the BGEM3FlagModel line with its own pooler loading) in its own env
	bash tools/setup_fe12_env.sh
	MODELGUARD_TEST_STRICT=1 .venv-fe12/bin/python -m pytest tests/fe12

bench: venv
	$(PY) tools/bench.py

lock:
	bash tools/lock.sh
	bash tools/setup_fe12_env.sh --lock

matrix:
	$(PYTHON) tools/matrix.py

clean:
	rm -rf $(VENV) .venv-fe12 .venv-lock .venv-matrix build *.egg-info .pytest_cache
