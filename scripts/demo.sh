#!/usr/bin/env bash
# README command 1: set up, build the tiny embedded weights if needed, generate, print image paths.
# Extra arguments are passed on as inputs, e.g.: scripts/demo.sh -i seed=7 -i preset=fast
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
TINY="$ROOT/weights/sdxl-tiny"
[ -f "$TINY/model_index.json" ] || "$PYTHON" tests/fixtures/make_weights.py --size tiny --out "$TINY" >&2
SDXL_WEIGHTS="${SDXL_WEIGHTS:-$TINY}" exec "$PYTHON" scripts/predict_local.py \
  -i prompt="a lighthouse on a cliff at dusk, oil painting" "$@"
