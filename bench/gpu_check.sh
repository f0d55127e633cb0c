#!/usr/bin/env bash
# One prepared check for a GPU machine (see bench/gpu_check.py): doctor's view of the ensemble,
# then every backend's frames/s (random weights, with and without fp16 and flip TTA) and a
# 2,500-frame synthetic scene end to end with models=ensemble; all figures in one JSON.
#
#   bash bench/gpu_check.sh [out.json] [gpu_check.py options]     e.g. --e2e-frames 500 --models eomt_ade20k
#   bash bench/gpu_check.sh /tmp/gc.json --tiny                    CPU dry run (tiny models, a few frames)
#
# Needs the package installed with its GPU extras (README "GPU nodes": CUDA torch 2.13.0, then
# pip install -e ".[gpu,sam,hf,mmseg]"); full mmcv is optional (else the pure-PyTorch deformable
# attention opt-in runs). PYTHON picks the interpreter (default .venv/bin/python, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check.json}"
shift || true
py="${PYTHON:-.venv/bin/python}"
[ -x "$py" ] || py=python3
echo "[gpu_check] $(date -u +%FT%TZ) $(hostname)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" -c "import torch; print('[gpu_check] torch', torch.__version__, 'CUDA', torch.cuda.is_available())"
# doctor without checkpoints: which pieces and paths would run (exit 5 for the missing weights is expected)
"$py" -m labelmaker doctor models=ensemble checkpoints.dir=/nonexistent | grep -v "checkpoint " || true
exec "$py" bench/gpu_check.py --out "$out" "$@"
