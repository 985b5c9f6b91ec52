#!/usr/bin/env bash
# The GPU figures, side by side in one run on one CUDA machine. Writes $OUT (default runs/gpu):
#   check.json       benchmarks/gpu_check.py: the CUDA paths against their references
#   core.md/.json    the scan alone (triton vs chunked vs sequential, fwd and fwd+bwd, B=8, K=64,
#                    T = 2k..64k, GB/s against the card's copy bandwidth), a 2-layer training step,
#                    generation after 1k/8k/32k tokens
#   compile.md       the compiled training step against eager (graph breaks, ms), d=1024, 12 layers, T=2048, bf16
#   bench/           TEN vs the SDPA transformer and Mamba-2, d=1024, 12 layers, bf16, T = 512..32k (ten bench)
#   train-large/     ten train --config large --use_hten --batch_size auto, 90 s; train-large-mfu.txt: tokens/s,
#                    MFU, peak memory, $ per million tokens (benchmarks/train_mfu.py)
#   train-medium/    the same for --config medium
# Usage: bash benchmarks/gpu.sh          (PYTHON=... another environment, HOURLY_RATE=... $/hour, OUT=... folder,
#        PARTS="core compile" ... some of: core compile bench presets, e.g. to split the run over two calls
#        of a machine that limits one command's time; the correctness check runs first whatever PARTS says)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/gpu}
RATE=${HOURLY_RATE:-1.57}  # the original training script's one-GPU price
PARTS=" ${PARTS:-core compile bench presets} "
wanted() { [[ $PARTS == *" $1 "* ]]; }
mkdir -p "$OUT"
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'benchmarks/gpu.sh: no CUDA GPU here')"
"$PYTHON" -c "import triton" 2>/dev/null || echo "note: triton is not installed (pip install -e '.[gpu]'): no fused-kernel column"

"$PYTHON" benchmarks/gpu_check.py --json "$OUT/check.json"  # correctness first: stops here if a check fails
! wanted core || "$PYTHON" benchmarks/bench_core.py --device cuda --size gpu --json "$OUT/core.json" --markdown "$OUT/core.md"
! wanted compile || "$PYTHON" benchmarks/compile_step.py --device cuda --dtype bf16 --d_model 1024 --n_layers 12 --seq_len 2048 --batch 4 \
    --repeats 5 | tee "$OUT/compile.md"
! wanted bench || "$PYTHON" -m temporal_eigenstate_networks bench --device cuda --dtype bf16 --d_model 1024 --n_layers 12 --num_eigenstates 128 \
    --lengths 512,2048,8192,32768 --tokens_per_batch 32768 --contexts 1024,8192,32768 --decode_batches 1,16 \
    --output_dir "$OUT/bench"
# The presets as a user runs them: the micro-batch that fits the card, accumulation to the preset's tokens per step;
# 90 s of training each (the step is the same at any length of run), then the run's MFU and cost per token.
wanted presets && for preset in "large --use_hten" medium; do
    name=train-${preset%% *}
    # shellcheck disable=SC2086  # the preset's flags split on purpose
    "$PYTHON" -m temporal_eigenstate_networks train --config $preset --batch_size auto --time_budget 1.5 \
        --mixed_precision --hourly_rate "$RATE" --eval_steps 100000 --save_steps 100000 --sample_tokens 0 \
        --output_dir "$OUT/$name" --overwrite | tee "$OUT/$name.log"
    "$PYTHON" benchmarks/train_mfu.py "$OUT/$name" --hourly_rate "$RATE" | tee "$OUT/$name-mfu.txt"
done
echo "written: $OUT/core.md, $OUT/compile.md, $OUT/bench/bench.md, $OUT/train-{large,medium}{.log,-mfu.txt}"
