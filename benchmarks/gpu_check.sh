#!/usr/bin/env bash
# One-shot GPU check of the clipping kernels: correctness on CUDA first, then timings.
#
# Run once, from the repository root, on a machine with a CUDA GPU (no network needed if the
# test and gpu extras are installed already):
#
#     bash benchmarks/gpu_check.sh            # results under gpu_check/ (or $OUT/ if set)
#
# Steps, each bounded in time so the whole script fits in ~10 minutes:
#   1. environment: GPU name, torch / triton versions;
#   2. tests/test_kernels.py on CUDA (compiled Triton kernels vs the torch functions, float32
#      and float64, including the flow's real layer shapes), the DP-step tests, and a tiny
#      whole fit on CUDA (tests/test_file_holder.py::test_a_tiny_fit_runs_on_cuda);
#   3. benchmarks/clipping.py --device cuda --check: skdpflow (torch and Triton rows) vs
#      Opacus on the Adult-sized flow at batch 1024 and 4096, plus the per-layer kernel table.
# It stops at the first failure: timings of kernels that failed the check mean nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check}"
mkdir -p "$out"

python - <<'PY' 2>&1 | tee "$out/env.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0))
try:
    import triton
    print("triton", triton.__version__)
except Exception as err:  # noqa: BLE001
    print("triton missing:", err)
PY
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "no CUDA device: nothing to check" >&2; exit 1; }
# TRITON_INTERPRET must be unset: the CUDA tests need compiled kernels.
unset TRITON_INTERPRET

timeout 300 python -m pytest -q -rs tests/test_kernels.py tests/test_dpsgd.py \
    tests/test_file_holder.py::test_a_tiny_fit_runs_on_cuda 2>&1 \
    | tee "$out/tests.txt"

timeout 420 python benchmarks/clipping.py --device cuda --check --breakdown \
    --batches 1024 4096 --steps 20 --out "$out/clipping_cuda.md" 2>&1 | tee "$out/clipping.txt"
echo "done: $out/"
