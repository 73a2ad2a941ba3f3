#!/usr/bin/env bash
# One-shot GPU check (issue 18.7): on a machine with one NVIDIA GPU, in under 8 minutes,
#   - tiny and small configs under DDP, ZeRO-2, ZeRO-3 and FSDP (configs/accelerate/*.yaml), bf16,
#     a few dozen optimiser steps through sgdm's engine with the EMA on the device;
#   - the SD-scale model (865 M UNet) forward+backward at the largest batch that fits: samples/s,
#     peak memory, MFU against the GPU's dense bf16 peak;
#   - the widest UNet (x Stable Diffusion's channel widths) one step fits under DDP and ZeRO-3;
# and writes outputs/gpu_check/gpu_check.json + gpu_check.md (a markdown table).
#
#   bench/gpu_check.sh            # on the GPU machine, from the repository root
#   bench/gpu_check.sh --dry-run  # CPU: every kind of job at toy sizes, no launcher (CI runs this)
#
# Options pass through to bench/gpu_check.py (--out DIR, --steps N, --budget SECONDS).
# Exit code: 0 all jobs ok, 1 some failed or were skipped, 2 no GPU without --dry-run.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
[[ -x "$python" ]] || python=python
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$python" bench/gpu_check.py check "$@"
