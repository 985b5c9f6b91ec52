#!/usr/bin/env bash
# The test command: set up, lint, run the test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/ruff check temporal_eigenstate_networks tests benchmarks
.venv/bin/python -m pytest -q "$@"
