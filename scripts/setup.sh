#!/usr/bin/env bash
# Make .venv and install ten with what it needs. Sourced by the other scripts; safe to re-run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# triton (the fused GPU kernel, tested here through its interpreter) has Linux wheels only.
if ! .venv/bin/python -c "import sys, ten, pytest, ruff, tokenizers, transformers, lm_eval, accelerate; sys.platform != 'linux' or __import__('triton')" \
    2>/dev/null; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch first and pinned: 2.13.0 is the build this project is tested with.
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
    .venv/bin/python -m pip install --quiet -e ".[dev]"
fi
