#!/usr/bin/env bash
# What was run on the GPU machine (one H200), from the repo root there, with gpu/ carried:
#   gpu/movq.xz         release binary built with --features cuda (see scripts/cuda-toolchain.sh)
#   gpu/integration.xz  the integration-test binary of the same build (cargo test --no-run)
#   gpu/torch_reference.py and gpu/wheels/ (the PyTorch reference benchmark and diffusers)
# Results go to $OUT.  Usage: bash scripts/gpu-run.sh STEP... (the steps are below)
set -uo pipefail
OUT=${OUT:-/tmp/movq-gpu}
mkdir -p "$OUT"
[ -x /tmp/movq ] || { xz -dc gpu/movq.xz > /tmp/movq && chmod +x /tmp/movq; }
for step in "$@"; do
  case "$step" in
    tests)
      # every device_test's CUDA variant and the CUDA-vs-CPU / bf16-vs-f32 tests
      xz -dc gpu/integration.xz > /tmp/integration && chmod +x /tmp/integration
      # shellcheck disable=SC2086
      /tmp/integration --test-threads 1 ${TEST_FILTER:-::cuda cuda_against_cpu} --nocapture 2>&1 | tee "$OUT/cuda-tests.log"
      ;;
    bench)
      # shellcheck disable=SC2086
      /tmp/movq bench --device cuda --out "$OUT/movq.jsonl" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/movq-bench.log"
      ;;
    profile)
      MOVQ_PROFILE=1 /tmp/movq bench --device cuda --precisions bf16 --min-iters 1 --target-seconds 0 \
        2>&1 | tee "$OUT/movq-profile.log"
      ;;
    e2e)
      # stage 1 (paper preset, reduced steps) → stage 2 (micro-batches of 8) → samples, in bf16,
      # on the built-in dataset at 256 px; GPU memory sampled by nvidia-smi meanwhile
      R=/tmp/e2e
      python3 -c "import json; c = json.load(open('configs/ffhq-256.json')); c['transformer']['micro_batch'] = 8; c['loss']['perceptual_weight'] = 0.0; c['train']['log_every'] = 5; c['train']['val_images'] = 16; c['transformer']['train']['log_every'] = 5; c['transformer']['train']['val_images'] = 16; json.dump(c, open('/tmp/ffhq-e2e.json', 'w'), indent=2)"
      nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 > "$OUT/e2e-mem.csv" &
      SMI=$!
      t0=$(date +%s)
      /tmp/movq train-vq --config /tmp/ffhq-e2e.json --data builtin:shapes:512 --out $R/vq \
        --steps ${E2E_VQ_STEPS:-60} --precision bf16 --device cuda 2>&1 | tr '\r' '\n' | grep -v '^\s*$' | tail -n 6 | tee "$OUT/e2e.log"
      t1=$(date +%s)
      /tmp/movq train-transformer --config /tmp/ffhq-e2e.json --vq $R/vq --data builtin:shapes:512 --out $R/tr \
        --steps ${E2E_TR_STEPS:-60} --batch-size 32 --precision bf16 --device cuda 2>&1 | tr '\r' '\n' | grep -v '^\s*$' | tail -n 6 | tee -a "$OUT/e2e.log"
      t2=$(date +%s)
      /tmp/movq sample --model $R/tr --out $R/samples --num 16 --steps 12 --precision bf16 \
        --device cuda 2>&1 | tail -n 3 | tee -a "$OUT/e2e.log"
      t3=$(date +%s)
      kill $SMI
      echo "wall seconds: train-vq $((t1-t0)), train-transformer $((t2-t1)), sample $((t3-t2))" | tee -a "$OUT/e2e.log"
      echo "peak GPU memory used (MiB): $(sort -n "$OUT/e2e-mem.csv" | tail -n 1)" | tee -a "$OUT/e2e.log"
      cp $R/samples/grid.png "$OUT/e2e-grid.png" 2>/dev/null
      tail -n 2 $R/vq/metrics.jsonl $R/tr/metrics.jsonl >> "$OUT/e2e.log"
      ;;
    torch)
      python3 -m pip install -q --no-index --no-deps --target /tmp/site gpu/wheels/*.whl
      export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
      # the reference's core jobs on exactly movq bench's workloads: every bf16 job, then the
      # strict-fp32 transformer jobs; strict-fp32 stage-1 jobs (25-160 s of cuDNN autotuning
      # each) only with TORCH_FP32_VQ=1, else bench_table.py quotes the reference's anchor run
      VQ='^(a1|a2) (infer \S+ 64|train)|^b grid16x16x4 decode \S+ 64$'
      TR='^b grid16x16x4 (train|sample \S+ 64$)|^b grid16x16 (train|sample \S+ 256$)'
      # TORCH_SCOPE=vq / tr: the stage-1 / transformer jobs alone (bf16)
      if [ "${TORCH_SCOPE:-all}" = vq ]; then TR='^$never'; fi
      if [ "${TORCH_SCOPE:-all}" = tr ]; then VQ='^$never'; fi
      python3 gpu/torch_reference.py --sections ceil,a1,a2,b --max-prio 0 --vq-infer-batches 64 \
        --job-filter "(?=.*bf16)($VQ|$TR)" --out "$OUT/torch" --deadline "${TORCH_BF16_DEADLINE:-270}" 2>&1 | grep -E "OK|OOM|ERR|SKIP|matmul"
      # TORCH_FP32_TR=0: no strict-fp32 transformer jobs (the bf16 comparison alone)
      if [ "${TORCH_SCOPE:-all}" != vq ] && [ "${TORCH_FP32_TR:-1}" = 1 ]; then
        python3 gpu/torch_reference.py --sections b --max-prio 0 \
          --job-filter "(?=.*fp32)($TR)" --out "$OUT/torch" --deadline "${TORCH_FP32_DEADLINE:-200}" 2>&1 | grep -E "OK|OOM|ERR|SKIP"
      fi
      if [ "${TORCH_FP32_VQ:-0}" = 1 ]; then
        python3 gpu/torch_reference.py --sections a1,a2,b --max-prio 0 --vq-infer-batches 64 \
          --job-filter "(?=.*fp32)($VQ)" --out "$OUT/torch" --deadline "${TORCH_FP32_DEADLINE:-200}" 2>&1 | grep -E "OK|OOM|ERR|SKIP"
      fi
      python3 gpu/torch_reference.py --sections table --out "$OUT/torch" | tail -n 30
      ;;
    diffusers)
      # diffusers parity on the GPU: the committed reduced fixture, and the full Kandinsky 2.2
      # shape generated here with torch and diffusers
      python3 -m pip install -q --no-index --no-deps --target /tmp/site gpu/wheels/*.whl
      export PYTHONPATH=/tmp/site
      python3 scripts/diffusers_fixture.py /tmp/kandinsky-fixture kandinsky 2>&1 | tail -n 1
      xz -dc gpu/integration.xz > /tmp/integration && chmod +x /tmp/integration
      MOVQ_DIFFUSERS_FIXTURE=/tmp/kandinsky-fixture /tmp/integration --test-threads 1 \
        diffusers_parity_on_cuda full_kandinsky_shape --nocapture 2>&1 | tee "$OUT/diffusers.log"
      ;;
    stash)
      # Pretrained weights larger than one call's carry limit arrive in pieces over calls made
      # back to back (the warm machine keeps /tmp): $STASH/NAME.partNN (scripts/stash_split.py) are
      # appended to /tmp/movq-cache/NAME; NAME.sha256 there checks the whole once complete.
      mkdir -p /tmp/movq-cache
      STASH=${STASH:-gpu/stash1}
      for part in "$STASH"/*.part*; do
        [ -e "$part" ] || continue
        name=$(basename "${part%.part*}")
        cat "$part" >> "/tmp/movq-cache/$name"
      done
      (cd /tmp/movq-cache && for sum in "$OLDPWD/$STASH"/*.sha256; do
        [ -e "$sum" ] && sha256sum -c "$sum" && touch "$(basename "${sum%.sha256}").ok"
      done; ls -l)
      ;;
    fashion)
      # Issue 5's real run: stage 1 and a class-conditional stage 2 on Fashion-MNIST, then the
      # report on the 10,000 test images and FID of 1,000 samples per class (12 steps).
      # DATA: a folder with the four Fashion-MNIST files; MOVQ_CACHE: the LPIPS/FID weights
      # (waited for: the stash step marks each complete file NAME.ok); results go to $W.
      DATA=${FASHION_DATA:-gpu/fashion-mnist}
      R=${FASHION_RUN:-/tmp/fashion}
      N=${FASHION_SAMPLES:-1000}
      W=${FASHION_OUT:-$OUT}
      mkdir -p "$W" $R
      export MOVQ_CACHE=${MOVQ_CACHE:-/tmp/movq-cache}
      weights() {
        until [ -e "$MOVQ_CACHE/fid-inception.safetensors.ok" ] && [ -e "$MOVQ_CACHE/lpips-alex.safetensors.ok" ]; do sleep 2; done
      }
      # the test set's Inception statistics, once the weights are there (beside the training)
      (weights && /tmp/movq fid "idx:$DATA:test" --save-stats $R/test-stats.safetensors --batch-size 250 \
        --device cuda > "$W/fashion-test-stats.log" 2>&1) &
      STATS=$!
      # each training stage is also bounded in time: SIGINT makes it save a checkpoint and stop
      timeout -s INT "${FASHION_VQ_SECONDS:-240}" /tmp/movq train-vq --config fashion-32 --data "idx:$DATA" \
        --out $R/vq ${FASHION_VQ_ARGS:-} --precision bf16 --device cuda 2>&1 | tr '\r' '\n' | grep -v '^\s*$' | tail -n 3
      timeout -s INT "${FASHION_TR_SECONDS:-150}" /tmp/movq train-transformer --vq $R/vq --data "idx:$DATA" \
        --out $R/tr ${FASHION_TR_ARGS:-} --precision bf16 --device cuda 2>&1 | tr '\r' '\n' | grep -v '^\s*$' | tail -n 3
      tail -n 2 $R/vq/metrics.jsonl $R/tr/metrics.jsonl > "$W/fashion-train.log"
      # sampling needs no pretrained weights: it runs beside the evaluation
      (for c in t-shirt trouser pullover dress coat sandal shirt sneaker bag ankle-boot; do
        /tmp/movq sample --model $R/tr --class $c --num "$N" --batch-size 250 --steps 12 \
          --out "$R/samples/$c" --device cuda > /dev/null || echo "sampling $c failed"
        rm -f "$R/samples/$c/grid.png"
      done) &
      SAMPLES=$!
      wait $STATS
      /tmp/movq eval --model $R/vq --data "idx:$DATA:test" --lpips alex --fid-ref $R/test-stats.safetensors \
        --json --batch-size 250 --device cuda ${FASHION_EVAL_ARGS:-} | tee "$W/fashion-eval.json"
      wait $SAMPLES
      # the first 64 samples of each class come back for the README's grids
      (cd $R/samples && tar -cf "$W/fashion-samples.tar" $(for c in *; do ls $c/*.png | sort | head -n 64; done))
      /tmp/movq fid "$R/samples" $R/test-stats.safetensors --batch-size 250 --device cuda | tee "$W/fashion-fid.json"
      touch "$W/done"
      ;;
    fashion-start)
      # the Fashion-MNIST run in the background (it outlives this call while the machine is
      # warm), so that the weights can arrive in later calls meanwhile; fashion-wait collects it
      mkdir -p /tmp/fashion-out /tmp/fashion-data
      cp "${FASHION_DATA:-gpu/fashion-mnist}"/* /tmp/fashion-data/
      FASHION_DATA=/tmp/fashion-data FASHION_OUT=/tmp/fashion-out setsid nohup bash "$0" fashion \
        > /tmp/fashion-out/fashion.log 2>&1 < /dev/null &
      echo "fashion run started"
      ;;
    fashion-wait)
      end=$(( $(date +%s) + ${FASHION_WAIT:-300} ))
      while [ ! -e /tmp/fashion-out/done ] && [ "$(date +%s)" -lt $end ]; do
        cp -r /tmp/fashion-out/. "$OUT/" 2>/dev/null; sleep 5
      done
      cp -r /tmp/fashion-out/. "$OUT/"; cat /tmp/fashion-out/fashion.log
      ;;
    commands)
      # every subcommand once with --device cuda (f32, then bf16 where a model runs), on the tiny
      # preset and built-in images: train-vq, train-transformer, sample, reconstruct (plain and
      # masked), eval, encode, decode, compare, import diffusers → reconstruct, bench --smoke
      R=/tmp/cmds
      rm -rf $R
      set -e
      for p in f32 bf16; do
        D="--device cuda --precision $p"
        /tmp/movq train-vq --config tiny --data builtin:shapes:64 --out $R/$p/vq --steps 20 $D 2>&1 | tail -n 1
        /tmp/movq train-transformer --vq $R/$p/vq --data builtin:shapes:64 --out $R/$p/tr --steps 20 $D 2>&1 | tail -n 1
        /tmp/movq sample --model $R/$p/tr --num 4 --steps 4 --out $R/$p/samples $D 2>&1 | tail -n 1
        /tmp/movq reconstruct --model $R/$p/vq --input builtin:shapes:4 --out $R/$p/rec $D 2>&1 | tail -n 1
        /tmp/movq reconstruct --model $R/$p/tr --input builtin:shapes:2 --mask-ratio 0.5 --samples 2 \
          --out $R/$p/masked $D 2>&1 | tail -n 1
        /tmp/movq eval --model $R/$p/vq --data builtin:shapes:16 --json $D | tr -d '\n '; echo
        /tmp/movq encode --model $R/$p/vq --input builtin:shapes:4 --out $R/$p/codes.safetensors $D 2>&1 | tail -n 1
        /tmp/movq decode --model $R/$p/vq --latents $R/$p/codes.safetensors --out $R/$p/decoded $D 2>&1 | tail -n 1
      done
      /tmp/movq compare $R/f32/samples/sample-0000.png $R/bf16/samples/sample-0000.png --device cuda
      /tmp/movq import diffusers --weights tests/data/diffusers-mini/diffusion_pytorch_model.safetensors \
        --config tests/data/diffusers-mini/config.json --out $R/imported
      /tmp/movq reconstruct --model $R/imported --input builtin:shapes:2 --out $R/imported-rec --device cuda 2>&1 | tail -n 1
      /tmp/movq bench --smoke --device cuda --min-iters 1 --target-seconds 0 2>&1 | tail -n 12
      set +e
      echo "every command ran on CUDA"
      ;;
    kernels)
      # the GPU kernels (src/gpu/): their tests against candle's composed ops and every block
      # against the CPU, then the stage-1 workloads in bf16 with the kernels off (BEFORE_ENV,
      # default MOVQ_KERNELS=off: the state before them) and on, in the same call; PyTorch's
      # figures come from the torch step with TORCH_SCOPE=vq
      xz -dc gpu/integration.xz > /tmp/integration && chmod +x /tmp/integration
      /tmp/integration --test-threads 1 ${TEST_FILTER:-gpu_kernels cuda_against_cpu} --nocapture \
        > "$OUT/kernel-tests.log" 2>&1
      grep -E "^test |panicked|test result|matches" "$OUT/kernel-tests.log"
      # shellcheck disable=SC2086
      env ${BEFORE_ENV:-MOVQ_KERNELS=off} /tmp/movq bench --device cuda --only vq- --precisions bf16 \
        --out "$OUT/movq-before.jsonl" ${BENCH_ARGS:-} 2>&1 | tail -n 7
      # shellcheck disable=SC2086
      /tmp/movq bench --device cuda --only vq- --precisions bf16 --out "$OUT/movq.jsonl" \
        ${BENCH_ARGS:-} 2>&1 | tail -n 7
      ;;
    ranks)
      # Several GPUs (an nvidia-h200-x2/x4 lease, binaries built with --features nccl,cudnn): the
      # 2-GPU equality test, then the scaling table: images/s and tokens/s of the paper presets
      # in bf16 on 1, 2, 4 GPUs (16 images / 64 sequences per GPU; the last logging window of
      # each run, after the warm-up)
      xz -dc gpu/integration.xz > /tmp/integration && chmod +x /tmp/integration
      /tmp/integration --test-threads 1 two_gpus_take_the_whole_batch_step --nocapture 2>&1 \
        | tee "$OUT/ranks-tests.log" | grep -E "^test |two_gpus|panicked|test result"
      GPUS=$(nvidia-smi -L | wc -l)
      python3 -c "import json; c = json.load(open('configs/ffhq-256.json')); c['loss']['perceptual_weight'] = 0.0; c['loss']['discriminator']['start'] = 10**6; t = c['train']; t.update(log_every=5, val_every=0, val_images=8, checkpoint_every=0); tt = c['transformer']['train']; tt.update(log_every=5, val_every=0, val_images=8, checkpoint_every=0); c['transformer']['micro_batch'] = 8; json.dump(c, open('/tmp/ffhq-scale.json', 'w'), indent=2)"
      for n in 1 2 4; do
        [ "$n" -le "$GPUS" ] || continue
        R=/tmp/scale/$n
        /tmp/movq train-vq --config /tmp/ffhq-scale.json --data builtin:shapes:1024 --out $R/vq \
          --steps "${SCALE_STEPS:-20}" --batch-size $((16 * n)) --ranks $n --precision bf16 --device cuda \
          2>&1 | tr '\r' '\n' | grep -v '^\s*$' | tail -n 2
        /tmp/movq train-transformer --vq $R/vq --data builtin:shapes:1024 --out $R/tr \
          --steps "${SCALE_STEPS:-20}" --batch-size $((64 * n)) --ranks $n --precision bf16 --device cuda \
          2>&1 | tr '\r' '\n' | grep -v '^\s*$' | tail -n 2
      done
      python3 - "$OUT/scaling.md" <<'PY'
import json, os, sys
rows = ["| GPUs | stage 1 train (img/s) | stage 2 train 1024+1 (tok/s) |", "| --- | --- | --- |"]
for n in (1, 2, 4):
    def last(run, key):
        path = f"/tmp/scale/{n}/{run}/metrics.jsonl"
        if not os.path.exists(path):
            return None
        recs = [json.loads(l) for l in open(path) if '"train"' in l]
        return recs[-1][key] if recs else None
    vq, tr = last("vq", "steps_per_s"), last("tr", "steps_per_s")
    if vq is None:
        continue
    tok = f"{tr * 64 * n * 1025:,.0f}" if tr else "—"
    rows.append(f"| {n} | {vq * 16 * n:.1f} | {tok} |")
open(sys.argv[1], "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
PY
      ;;
    kernel-profile)
      # every kernel of `movq bench` timed by Nsight Compute (one metric, one replay per kernel;
      # the train steps by default, a warm-up step and a timed one each); summarise it here with
      # python3 scripts/ncu_summary.py kernels.csv.xz
      # shellcheck disable=SC2086
      ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
        /tmp/movq bench --device cuda --precisions bf16 --min-iters 1 --target-seconds 0 \
        ${BENCH_ARGS:---only tr-train} > "$OUT/kernels.csv" 2> "$OUT/kernels.err"
      xz -T0 -f "$OUT/kernels.csv"
      ;;
    table)
      python3 scripts/bench_table.py "$OUT/movq.jsonl" "$OUT/torch/results.jsonl" | tee "$OUT/table.md"
      ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
