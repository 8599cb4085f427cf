#!/usr/bin/env bash
# README command 2 and CI: set up, check the code (ruff; lint-imports: the one-way layers and no
# import cycles, from .importlinter), run the cold-start benchmark's CI job (tiny weights, CPU: prints
# the stage table, writes bench_results/coldstart.json, fails if a stage is missing; never judges a
# time), the speed switches' interplay pass, then the whole test suite (tiny weights, CPU, the real
# Cog server).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
"$VENV/bin/ruff" check .
"$VENV/bin/lint-imports"
"$PYTHON" bench/bench_coldstart.py --ci 2> >(grep -v -e "Writing model shards" -e "should be kept in float32" >&2)
if [ $# -eq 0 ]; then
  # The speed switches are off on the CPU by default; run the paths they touch (server, Flux,
  # IP-Adapter, ADetailer, storyboards) once more with every switch the CPU can run turned on, and
  # with the import diet off (the main pass has it on).
  FAST_LOAD=1 SPEED_FUSE_QKV=1 SPEED_CHANNELS_LAST=1 SPEED_VAE_DECODE=bfloat16 SPEED_FP8_MATMUL=1 SPEED_ATTENTION=cudnn \
    LAZY_IMPORTS=0 \
    "$PYTHON" -m pytest -q tests/test_http_server.py tests/test_flux.py tests/test_ip_adapter.py \
    tests/test_adetailer_pass.py tests/test_storyboard.py
fi
exec "$PYTHON" -m pytest -q "$@"
