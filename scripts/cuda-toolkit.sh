#!/usr/bin/env bash
# Installs the parts of the CUDA 13.0 toolkit that building bbt with `--features cuda` needs
# (nvcc, cicc/libnvvm, the runtime, crt and CCCL headers) from NVIDIA's wheels on the Python package
# index, into a cache folder, once. No GPU and no driver are needed to build.
#
#   eval "$(scripts/cuda-toolkit.sh)"     # sets CUDA_HOME, PATH and CUDA_COMPUTE_CAP
#   cargo check --workspace --features cuda
#
# BBT_CUDA_CACHE overrides the folder (default ~/.cache/bbt/cuda-13.0); CUDA_COMPUTE_CAP, when
# already set, is kept (default 90: Hopper, e.g. the H100).
set -euo pipefail

cache="${BBT_CUDA_CACHE:-$HOME/.cache/bbt/cuda-13.0}"
home="$cache/nvidia/cu13"

if [ ! -x "$home/bin/nvcc" ] || [ ! -f "$home/include/cccl/nv/target" ]; then
    echo "installing the CUDA 13.0 compiler and headers into $cache" >&2
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --only-binary=:all: \
        --target "$cache" --upgrade \
        nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 >&2
fi
"$home/bin/nvcc" --version >&2

echo "export CUDA_HOME='$home'"
echo "export PATH='$home/bin':\"\$PATH\""
echo "export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}"
