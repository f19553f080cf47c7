#!/usr/bin/env bash
# What was run on the GPU machine (one H200), from the repo root there, with gpu/ carried:
#   gpu/movq.xz         release binary built with --features cuda (see scripts/cuda-toolchain.sh)
#   gpu/integration.xz  the integration-test binary of the same build (cargo test --no-run)
#   gpu/torch_reference.py and gpu/wheels/ (the PyTorch reference benchmark and diffusers)
# Results go to $OUT.  Usage: bash scripts/gpu-run.sh tests|bench|e2e|torch|table ...
set -uo pipefail
OUT=${OUT:-/tmp/movq-gpu}
mkdir -p "$OUT"
[ -x /tmp/movq ] || { xz -dc gpu/movq.xz > /tmp/movq && chmod +x /tmp/movq; }
for step in "$@"; do
  case "$step" in
    tests)
      # every device_test's CUDA variant and the CUDA-vs-CPU / bf16-vs-f32 tests
      xz -dc gpu/integration.xz > /tmp/integration && chmod +x /tmp/integration
      /tmp/integration --test-threads 1 ::cuda cuda_against_cpu --nocapture 2>&1 | tee "$OUT/cuda-tests.log"
      ;;
    bench)
      /tmp/movq bench --device cuda --out "$OUT/movq.jsonl" 2>&1 | tee "$OUT/movq-bench.log"
      ;;
    profile)
      MOVQ_PROFILE=1 /tmp/movq bench --device cuda --precisions bf16 --min-iters 1 --target-seconds 0 \
        2>&1 | tee "$OUT/movq-profile.log"
      ;;
    e2e)
      # stage 1 (paper preset, reduced steps) → stage 2 → samples, in bf16
      R=/tmp/e2e
      /tmp/movq train-vq --config ffhq-256 --data builtin:shapes:512 --out $R/vq --steps 60 \
        --precision bf16 --device cuda 2>&1 | tr '\r' '\n' | tail -n 8 | tee "$OUT/e2e.log"
      /tmp/movq train-transformer --vq $R/vq --data builtin:shapes:512 --out $R/tr --steps 100 \
        --batch-size 64 --precision bf16 --device cuda 2>&1 | tr '\r' '\n' | tail -n 8 | tee -a "$OUT/e2e.log"
      /tmp/movq sample --model $R/tr --out $R/samples --num 16 --steps 12 --precision bf16 \
        --device cuda 2>&1 | tail -n 4 | tee -a "$OUT/e2e.log"
      cp $R/samples/grid.png "$OUT/e2e-grid.png" 2>/dev/null
      tail -n 3 $R/vq/metrics.jsonl $R/tr/metrics.jsonl >> "$OUT/e2e.log"
      ;;
    torch)
      python3 -m pip install -q --no-index --no-deps --target /tmp/site gpu/wheels/*.whl
      export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
      python3 gpu/torch_reference.py --sections ceil,a1,a2,b --max-prio 0 --out "$OUT/torch" \
        --deadline "${TORCH_DEADLINE:-480}" 2>&1 | tail -n 40
      ;;
    table)
      python3 scripts/bench_table.py "$OUT/movq.jsonl" "$OUT/torch/results.jsonl" | tee "$OUT/table.md"
      ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
