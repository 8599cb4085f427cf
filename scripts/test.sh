#!/usr/bin/env bash
# README command 2 and CI: set up, then run the whole test suite (tiny weights, CPU, real Cog server).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
exec "$PYTHON" -m pytest -q "$@"
