#!/usr/bin/env bash
# Measure nanolab's GPU paths in one go (bf16, torch.compile, flash attention, fused AdamW, the
# chunked head, MFU, nccl, the quick start): see scripts/gpu_check.py.
#   bash scripts/gpu_check.sh <out folder>              # on a CUDA machine, about 9 minutes on one H100
#   bash scripts/gpu_check.sh --dry-run <out folder>    # the same sequence, tiny, on CPU (CI runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" scripts/gpu_check.py "$@"   # PYTHON: another interpreter (a venv's) than the one on PATH
