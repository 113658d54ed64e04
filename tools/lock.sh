#!/usr/bin/env bash
# Refresh constraints.txt: resolve modelguard[all] afresh in a throwaway environment (torch
# 2.13.0 first, then the newest releases the extras' ranges admit) and pin every installed
# distribution exactly. Run it (`make lock`) when you mean to move the test environment to
# newer releases, then run `make test` and `make matrix`, and commit the file with the results.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${LOCK_VENV:-.venv-lock}"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install --quiet --upgrade pip
"${PIP[@]}" install --quiet torch==2.13.0   # first and pinned: a looser torch pulls GB of CUDA packages
"${PIP[@]}" install --quiet '.[all]'
# A lock whose libraries cannot be imported together is worth nothing: check before writing it.
"$VENV/bin/python" -c 'import FlagEmbedding, sentence_transformers, transformers, model_signing.verifying; from FlagEmbedding import BGEM3FlagModel'
bash tools/write_lock.sh "$VENV/bin/python" constraints.txt \
  "The pinned test environment: \`make test\` and CI install exactly these versions." "tools/lock.sh"
rm -rf "$VENV"
