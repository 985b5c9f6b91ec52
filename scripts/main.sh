#!/usr/bin/env bash
# The main job: set up, fetch the built-in Shakespeare corpus, train a CPU-sized TEN for about
# 5 minutes, report validation loss, and sample from the trained checkpoint.
# Extra flags go to `ten train` (e.g. --time_budget 1, --use_hten, --device cuda).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
RUN=runs/main-$(date +%Y%m%d-%H%M%S)
.venv/bin/ten train --config nano --d_model 256 --n_layers 4 --num_eigenstates 64 --max_seq_len 256 \
    --batch_size 16 --learning_rate 2e-3 --mixed_precision auto --time_budget 5 --eval_steps 200 \
    --output_dir "$RUN" "$@"
echo
echo "ten generate --checkpoint $RUN --prompt 'ROMEO:'"
.venv/bin/ten generate --checkpoint "$RUN" --prompt "ROMEO:" --max_new_tokens 300 --temperature 0.8 --top_k 50 --seed 0
