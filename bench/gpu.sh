#!/usr/bin/env bash
# Every figure that needs a GPU, in one run of at most ~8 minutes on one GPU:
#   1. the stage-one step vs TextBrewer at seq 128 and 512 (fp32, and bf16 at 512), 12L-768 teacher -> 4L-312 student
#      (tokens/s the GPU consumes = batch x seq / step time, printed by general_step.py);
#   2. the data path's delivered tokens/s on this machine's CPUs (prepared and streamed), to set beside 1;
#   3. batched MLM augmentation vs the TinyBERT-style one-forward-per-word loop;
#   4. student vs teacher latency (task_step.py).
# `bash bench/gpu.sh quality` instead runs the quality benchmark's `gpu` budget (bench/quality.py: a 12L-256
# teacher pretrained for 20k MLM steps, 3 seeds of every row, the K = 3 teacher ensemble; hours, not minutes,
# and not yet timed), its table in runs/quality_gpu.log.
# Usage: bash bench/gpu.sh [quality]  (from the repo root, with the project and its bench extra installed).
# On a machine without a CUDA GPU it prints one line and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "bench/gpu.sh: no CUDA GPU here; nothing measured (the CPU figures come from the other bench/ scripts)"
  exit 0
fi
"$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}")'
if [ "${1:-}" = "quality" ]; then
  mkdir -p runs
  "$PY" bench/quality.py --budget gpu 2>&1 | tee runs/quality_gpu.log | grep -E '^\||: 95% test noise|teacher - direct|row 4|wall time'
  exit "${PIPESTATUS[0]}"
fi
part() {  # part SECONDS TITLE COMMAND...
  local limit=$1 title=$2; shift 2
  echo; echo "## $title"
  timeout "$limit" "$@" 2>&1 | grep -vE 'Warning|warn\(|^\s*$' | tail -n 40 || echo "($title: failed or over ${limit}s)"
}
part 150 "stage one, seq 128, batch 64, teacher 12L-768" "$PY" bench/general_step.py --teacher-hidden 768 --batch 64 --seq 128 --repeats 10
part 150 "stage one, seq 512, batch 16, teacher 12L-768" "$PY" bench/general_step.py --teacher-hidden 768 --batch 16 --seq 512 --repeats 10
part 150 "stage one, seq 512, batch 16, teacher 12L-768, bf16 (target >= 1.5x TextBrewer)" "$PY" bench/general_step.py --teacher-hidden 768 --batch 16 --seq 512 --repeats 10 --precision bf16
part 90 "data path delivered per process (CPU)" "$PY" bench/data_pipeline.py --repeat 10 --batches 200
part 60 "MLM augmentation: batched vs TinyBERT-style loop" "$PY" bench/augment.py --examples 2000 --mlm-sentences 200
part 60 "student vs teacher latency" "$PY" bench/task_step.py --skip-step2 --latency-seconds 5
