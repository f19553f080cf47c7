#!/bin/bash
# Build environment for candle's `cuda` / `cudnn` features on a machine with no CUDA toolkit and
# no GPU: CUDA 13.0 compilers, headers and link-time libraries from PyPI wheels, plus a libcuda.so
# link stub. Idempotent. Usage (from the project root, it runs `cargo fetch` itself):
#   bash scripts/cuda-toolchain.sh           # installs into ${MOVQ_CUDA_HOME:-$HOME/.cache/movq-cuda}
#   source ${MOVQ_CUDA_HOME:-$HOME/.cache/movq-cuda}/env.sh
#   cargo build --release --features cudnn     (or cuda, without cuDNN)
#   MOVQ_NCCL=1 bash scripts/cuda-toolchain.sh   also installs NCCL, for --features nccl
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fetch --quiet   # the libcuda stub is generated from cudarc's sources
ROOT=${MOVQ_CUDA_HOME:-$HOME/.cache/movq-cuda}
mkdir -p "$ROOT"
[ -x "$ROOT/venv/bin/pip" ] || python3 -m venv "$ROOT/venv"
# Pinned to the 13.0 line: PTX from a newer nvcc may not load on a CUDA 13.0 driver.
"$ROOT/venv/bin/pip" install -q --no-deps \
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 \
  nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88 \
  nvidia-cudnn-cu13==9.21.1.3
# NCCL (the `nccl` feature, multi-GPU training) only when asked: a 300 MB wheel
if [ "${MOVQ_NCCL:-0}" = 1 ]; then
  "$ROOT/venv/bin/pip" install -q --no-deps nvidia-nccl-cu13==2.32.3
fi
NV=$("$ROOT/venv/bin/python" -c 'import os,nvidia;print(os.path.dirname(nvidia.__path__[0]))')/nvidia
mkdir -p "$ROOT/lib"
# libcuda.so link stub: every cu* symbol that cudarc declares, SONAME libcuda.so.1 (the real driver
# library is found at run time on the GPU machine).
SYS=$(ls -d ~/.cargo/registry/src/*/cudarc-*/src/driver/sys/mod.rs 2>/dev/null | sort -V | tail -1)
[ -n "$SYS" ] || { echo "setup.sh: no cudarc source in ~/.cargo/registry: run 'cargo fetch' in the project first" >&2; exit 1; }
grep -oE 'pub unsafe fn cu[A-Za-z0-9_]+' "$SYS" | awk '{print $4}' | sort -u | awk '{print "void "$1"(void){}"}' > "$ROOT/lib/libcuda_stub.c"
gcc -shared -fPIC -o "$ROOT/lib/libcuda.so" -Wl,-soname,libcuda.so.1 "$ROOT/lib/libcuda_stub.c"
# Wheels ship only versioned names; the linker wants libX.so.
for x in cublas:cu13/lib/libcublas.so.13 cublasLt:cu13/lib/libcublasLt.so.13 curand:cu13/lib/libcurand.so.10 \
         nvrtc:cu13/lib/libnvrtc.so.13 cudart:cu13/lib/libcudart.so.13 cudnn:cudnn/lib/libcudnn.so.9; do
  ln -sf "$NV/${x#*:}" "$ROOT/lib/lib${x%%:*}.so"
done
[ -e "$NV/nccl/lib/libnccl.so.2" ] && ln -sf "$NV/nccl/lib/libnccl.so.2" "$ROOT/lib/libnccl.so"
# To start a CUDA build here in CPU mode (it still needs the CUDA libraries to load).
mkdir -p "$ROOT/cpu-run-libs"; ln -sf ../lib/libcuda.so "$ROOT/cpu-run-libs/libcuda.so.1"
cat > "$ROOT/env.sh" <<ENV
export PATH=$NV/cu13/bin:\$PATH          # cudarc's build script runs 'nvcc --version' from PATH
export NVCC=$NV/cu13/bin/nvcc            # candle-kernels' build helper looks here first
export CUDA_COMPUTE_CAP=90               # H100/H200 (sm_90); no nvidia-smi needed at build time
export CUDA_ROOT=$ROOT                   # cudarc links against \$CUDA_ROOT/lib
export CUDARC_CUDA_VERSION=13000
# Run a CUDA build on this CPU-only machine:
#   LD_LIBRARY_PATH=$ROOT/cpu-run-libs:$NV/cu13/lib:$NV/cudnn/lib:$NV/nccl/lib target/release/movq ... --device cpu
ENV
"$NV/cu13/bin/nvcc" --version | tail -1
echo "ok: source $ROOT/env.sh"
