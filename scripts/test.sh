#!/usr/bin/env bash
# The test command: set up, lint, run the test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/ruff check temporal_eigenstate_networks tests benchmarks scripts
.venv/bin/python -m pytest -q "$@"
# The whole suite ran at one end of the supported transformers and lm-eval range: the hf tests again at the other
# (scripts/other_end.py set it up; none where the range is one minor or set-up had no network).
if [ $# -eq 0 ] && [ -x .venv/other-end/bin/python ]; then
    echo "the hf tests with transformers, lm-eval $(.venv/other-end/bin/python -c \
        "import importlib.metadata as m; print(m.version('transformers'), m.version('lm_eval'))"):"
    .venv/other-end/bin/python -m pytest -q tests/test_hf*.py
fi
