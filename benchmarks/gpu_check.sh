#!/usr/bin/env bash
# The GPU checks of the training and cGAN issues, as one script for a CUDA machine (see README "Performance").
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (needs the project's Python packages importable)
set -uo pipefail
out=${1:-.}
run() { echo "\$ $*"; "$@"; echo; }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__)"
  # engine vs plain loop, fp32 vs bf16, in-memory batches (the step alone)
  run python3 benchmarks/train.py --device cuda --precision both --size 192 160 --batch 128 --steps 60 --workers 6
  run python3 benchmarks/train.py --device cuda --precision both --size 192 160 --batch 128 --steps 60 --workers 6 \
    --task ae
  # the real data path: phantom through demo_data + preprocess code, MONAI augmentation in loader workers
  run python3 benchmarks/train.py --device cuda --precision both --size 192 160 --batch 128 --steps 40 \
    --data phantom --cases 24 --repeat 8 --workers 14
  # issue 4: train_cgan mask2image at 256x256, fp32 vs bf16 (goal: >= 100 img/s in bf16)
  run python3 benchmarks/cgan.py --device cuda --precision both --size 256 256 --batch 32 --steps 200
  run python3 -m pytest -q -p no:cacheprovider -m gpu tests/unit/training tests/unit/runtime
} 2>&1 | tee "$out/gpu_check.log"
