#!/usr/bin/env bash
# One short run of the CUDA path on a GPU host (for the `device` tool): builds with
# `--features cuda`, points ONNX Runtime at the onnxruntime-gpu 1.31.1 library, and runs the
# engine benchmark twice, on the CPU and on `execution_provider = "cuda"` with no CPU fallback
# (a CUDA that cannot load fails the run and names what is missing): whole default windows,
# through the device-resident path on the GPU (window uploaded once, batches gathered there,
# weights never copied back between steps). Prints both tables and the speed-up; then the
# ignored GPU test of tests/shadow_model.rs (the resident path on CUDA against the host path
# on the CPU, and the device-held state read back) and one window of the MNIST detection
# check on CUDA.
#
#   ORT_GPU_DIR   folder holding libonnxruntime.so.1.31.1, libonnxruntime_providers_cuda.so and
#                 libonnxruntime_providers_shared.so (from the onnxruntime-gpu==1.31.1 wheel's
#                 onnxruntime/capi/). The wheel is ~284 MB: bring it in parts over consecutive
#                 calls on the warm machine (see ../shared/DESIGN.md §5).
#   MNIST dir     $LOSSGATE_MNIST or the setup cache.
#   LOSSGATE_BIN  a lossgate binary built here with `cargo build --release --features cuda`
#                 and carried to the GPU host (it reaches no crate registry); default: build.
#   LOSSGATE_TEST_BIN  the shadow_model test binary built the same way (`cargo test --release
#                 --features cuda --test shadow_model --no-run` prints its path); default: build.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${ORT_GPU_DIR:?set ORT_GPU_DIR to the onnxruntime-gpu capi folder}"

# CUDA 13 runtime, cuBLAS and cuDNN: use the ones PyTorch ships on the host if present.
torch_libs=$(python3 - <<'PY' 2>/dev/null || true
import os, glob, torch
root = os.path.dirname(os.path.dirname(torch.__file__))
dirs = {os.path.dirname(p) for p in glob.glob(os.path.join(root, "nvidia", "**", "lib*.so*"), recursive=True)}
dirs.add(os.path.join(os.path.dirname(torch.__file__), "lib"))
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="$ORT_GPU_DIR:${torch_libs}:${LD_LIBRARY_PATH:-}"
export ORT_DYLIB_PATH="$ORT_GPU_DIR/libonnxruntime.so.1.31.1"

cfg="$(mktemp --suffix .toml)"
cat > "$cfg" <<TOML
[shadow]
execution_provider = "cuda"
cuda_fallback_to_cpu = false
TOML
bin="${LOSSGATE_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --features cuda
  bin=./target/release/lossgate
fi
gpu_test=(cargo test --release --features cuda --test shadow_model --)
[ -n "${LOSSGATE_TEST_BIN:-}" ] && gpu_test=("$LOSSGATE_TEST_BIN")
nvidia-smi --query-gpu=name,memory.used --format=csv || true
"${gpu_test[@]}" --ignored --exact on_a_gpu_the_resident_path_trains_like_the_cpu_and_its_state_reads_back
rate() { awk '/whole windows, 1 engine worker/ {print $(NF-3)}' "$1"; }
"$bin" bench | tee /tmp/gpu-check-cpu.txt
"$bin" bench --config "$cfg" | tee /tmp/gpu-check-cuda.txt
cpu=$(rate /tmp/gpu-check-cpu.txt); gpu=$(rate /tmp/gpu-check-cuda.txt)
echo "whole windows, one engine: CPU ${cpu} samples/s, CUDA ${gpu} samples/s, speed-up $(awk -v a="$gpu" -v b="$cpu" 'BEGIN {printf "%.1fx", a / b}')"
time "$bin" eval --config "$cfg" --seeds 1 --max-samples 8192 --jobs 1
