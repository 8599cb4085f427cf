#!/usr/bin/env bash
# README command 2 and CI: set up, run the cold-start benchmark's CI job (tiny weights, CPU: prints
# the stage table, writes bench_results/coldstart.json, fails if a stage is missing; never judges a
# time), then the whole test suite (tiny weights, CPU, the real Cog server).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
"$PYTHON" scripts/bench_coldstart.py --ci 2> >(grep -v -e "Writing model shards" -e "should be kept in float32" >&2)
exec "$PYTHON" -m pytest -q "$@"
