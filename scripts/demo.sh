#!/usr/bin/env bash
# The main job: set up, fetch the built-in corpus, build a model, score real text, generate.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/ten demo "$@"
