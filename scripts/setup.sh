#!/usr/bin/env bash
# Make .venv and install ten with what it needs. Sourced by the other scripts; safe to re-run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# triton (the fused GPU kernel, tested here through its interpreter) has Linux wheels only.
# -I: the installed package, not this folder (which would import from here without being installed).
if ! .venv/bin/python -I -c "import sys, temporal_eigenstate_networks, pytest, ruff, tokenizers, transformers, lm_eval
import accelerate, parameterized, tensorboard, wandb, trackio; sys.platform != 'linux' or __import__('triton')" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch first and pinned: 2.13.0 is the build this project is tested with.
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
    # An earlier checkout installed this project as `ten`, the name of an unrelated package on the index:
    # remove it so that `ten` here can only be ours.
    .venv/bin/python -m pip uninstall --quiet --yes ten 2>/dev/null || true
    .venv/bin/python -m pip install --quiet -e ".[dev]"
fi
# transformers' common test mixins for the installed version (tests/test_hf_common.py): from its source
# distribution, once per version, while set-up has network; the tests are skipped, saying why, without them.
.venv/bin/python scripts/transformers_tests.py
# The other end of the supported transformers and lm-eval range, for test.sh's second pass of the hf tests.
.venv/bin/python scripts/other_end.py
