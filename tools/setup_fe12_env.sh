#!/usr/bin/env bash
# Build .venv-fe12: FlagEmbedding 1.2.x (the BGEM3FlagModel line with its own pooler
# loading) with the transformers/sentence-transformers of its time, plus modelguard
# installed editable without dependencies. Idempotent: a stamp file that records the
# pins and constraints-fe12.txt skips the work when nothing changed.
#
#   bash tools/setup_fe12_env.sh && .venv-fe12/bin/python -m pytest tests/fe12
#   bash tools/setup_fe12_env.sh --lock     # re-resolve and rewrite constraints-fe12.txt (make lock)
#
# Everything the pins below pull in is pinned too, by constraints-fe12.txt.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
LOCK=0
[[ "${1:-}" == "--lock" ]] && LOCK=1
CONSTRAINTS=constraints-fe12.txt
VENV="${FE12_VENV:-.venv-fe12}"

# Exact pins: FlagEmbedding 1.2.11 (the last 1.2.x, Aug 2024) with the releases it was
# written against. torch is the project's one pinned torch, installed first.
TORCH="torch==2.13.0"
PINS=(
  "FlagEmbedding==1.2.11"
  "transformers==4.44.2"
  "tokenizers==0.19.1"
  "sentence-transformers==3.0.1"
  "huggingface_hub==0.24.6"
  "accelerate==0.33.0"
  "peft==0.12.0"  # imported by FlagEmbedding 1.2.11 but not in its install_requires
  "datasets==2.21.0"
  "safetensors==0.4.4"
  "numpy==1.26.4"
  "pyarrow==17.0.0"
  "pandas==2.2.2"
)
TOOLS=("pytest" "pytest-timeout")
# modelguard's own core dependencies, read from pyproject.toml (installed with the pins
# above, so a conflict with them shows up here rather than at test time).
mapfile -t CORE < <("$PYTHON" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')

STAMP="$VENV/.modelguard-fe12"
WANT="$TORCH ${PINS[*]} ${TOOLS[*]} ${CORE[*]} $(cat "$CONSTRAINTS" 2>/dev/null | sha256sum)"
if [[ $LOCK == 0 && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/python" ]]; then
  exit 0
fi
CONSTRAIN=()
[[ $LOCK == 0 ]] && CONSTRAIN=(-c "$CONSTRAINTS")
rm -rf "$VENV"

"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install --quiet --upgrade pip
# torch first and pinned: anything looser pulls several GB of CUDA packages.
"${PIP[@]}" install --quiet "$TORCH"
"${PIP[@]}" install --quiet "${CONSTRAIN[@]}" "$TORCH" "${PINS[@]}" "${TOOLS[@]}" "${CORE[@]}"
"${PIP[@]}" install --quiet --no-deps -e .
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import FlagEmbedding  # noqa: F401  (the import itself must work)
for name in ("FlagEmbedding", "torch", "transformers", "sentence-transformers"):
    print(f"{name}=={md.version(name)}")
PY
if [[ $LOCK == 1 ]]; then
  bash tools/write_lock.sh "$VENV/bin/python" "$CONSTRAINTS" \
    "The FlagEmbedding 1.2 test environment (.venv-fe12): tools/setup_fe12_env.sh installs exactly these." \
    "tools/setup_fe12_env.sh --lock"
  WANT="$TORCH ${PINS[*]} ${TOOLS[*]} ${CORE[*]} $(sha256sum < "$CONSTRAINTS")"
fi
echo "$WANT" > "$STAMP"
