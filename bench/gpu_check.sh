#!/usr/bin/env bash
# One device command per PART: every CUDA path and speed target, checked on a bare H100/H200.
#
#   bench/gpu_check.sh sdxl|flux|fast|extras|features|throughput  on the device (after bench/gpu_wheels.sh here)
#   GPU_CHECK_REHEARSAL=1 bench/gpu_check.sh P  the same sequence on the CPU with tiny weights
#   bench/gpu_check.sh --rehearsal-venv DIR     make a Python 3.12 venv with the device's versions
#
# The device reaches no package index and keeps nothing between machines, so a part installs the
# carried wheels (.whl/), builds the full-size random weights it needs on the local disk (the GPU
# draws the random values), then runs its checks in order of value. After each step it rewrites
# $OUT/PART.json and $OUT/PART.md (bench/gpu_check_report.py) and $OUT/PART.log holds the whole
# log, so a run cut off by its limit still returns every finished step. Each step has its own time
# limit, and no step starts past the part's deadline ($GPU_CHECK_DEADLINE_S, default 450 s).
#
# Device call (the `run` tool): carry [".whl"], timeout_s 480, command:
#   bash bench/gpu_check.sh sdxl
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [ "${1:-}" = "--rehearsal-venv" ]; then
  # The device image's pinned versions (the GPU issue; shared ENVIRONMENT.md) and the packages the
  # image already has that the checks import (requests; matplotlib, attrs, absl-py, flatbuffers and
  # OpenCV for mediapipe). The carried wheels are not here: each part installs them itself, as on
  # the device. pyenv's 3.12 on the CPU machine.
  DIR="${2:?usage: gpu_check.sh --rehearsal-venv DIR}"
  set -e
  PYENV_VERSION=3.12.1 python3.12 -m venv "$DIR"
  "$DIR/bin/pip" install --quiet --disable-pip-version-check torch==2.11.0 torchvision==0.26.0 transformers==5.17.0 \
    huggingface_hub==1.33.0 numpy==2.4.6 tokenizers==0.23.2 accelerate==1.15.0 safetensors==0.8.0 \
    pillow pytest scikit-image requests matplotlib attrs absl-py flatbuffers opencv-python-headless
  "$DIR/bin/pip" check
  echo "rehearsal venv ready: GPU_CHECK_PYTHON=$DIR/bin/python GPU_CHECK_REHEARSAL=1 bash bench/gpu_check.sh sdxl"
  exit 0
fi

PART="${1:?usage: gpu_check.sh sdxl|flux|fast|extras|features|throughput}"
case "$PART" in sdxl|flux|fast|extras|features|throughput) ;; *) echo "unknown part $PART: sdxl, flux, fast, extras, features or throughput" >&2; exit 2 ;; esac
REHEARSAL="${GPU_CHECK_REHEARSAL:-0}"
WORK="${GPU_CHECK_WORK:-/tmp/gpu-check}"
OUT="${OUT:-$WORK/out}"
PYTHON="$(command -v "${GPU_CHECK_PYTHON:-python3}")"
DEADLINE=$(( $(date +%s) + ${GPU_CHECK_DEADLINE_S:-450} ))
mkdir -p "$WORK" "$OUT"
rm -f "$OUT/$PART.json" "$OUT/$PART.md"
exec > >(tee "$OUT/$PART.log") 2>&1
export PYTHONUNBUFFERED=1

if [ "$REHEARSAL" = 1 ]; then
  DEVICE=cpu; SDXL_SIZE=tiny; FLUX_DEV=tiny; FLUX_SCHNELL=tiny-schnell; ADAPTER_SIZE=tiny
  SDXL_CASES=64x64x2,128x128x2; SDXL_CASE=64x64x2; FLUX_CASE=64x64x2; SCHNELL_CASE=64x64x4; RUNS=1; ABLATE_RUNS=1; IMAGE_SIZE=128
  LORA_RANKS=4; SAFETY_FLAGS=--tiny; SVD_SIZE=tiny; VIDEO_FLAGS="--scenes 2 --preset ultra_fast"
  GO_FAST_RECIPE=compile  # no fp8 tensor cores on a CPU: the compile alone, through inductor as on the GPU
  THROUGHPUT_SDXL="--size 64 --steps 4"; THROUGHPUT_SCHNELL="--size 64 --steps 4"
  export CUDA_VISIBLE_DEVICES=""  # a rehearsal never touches a GPU, even on a machine with one
else
  DEVICE=cuda; SDXL_SIZE=full; FLUX_DEV=dev; FLUX_SCHNELL=schnell; ADAPTER_SIZE=full
  SDXL_CASES=1024x1024x20,768x768x15; SDXL_CASE=1024x1024x20; FLUX_CASE=1024x1024x28; SCHNELL_CASE=1024x1024x4
  RUNS=5; ABLATE_RUNS=3; IMAGE_SIZE=1024; LORA_RANKS=16,64; SAFETY_FLAGS=; SVD_SIZE=full; VIDEO_FLAGS=
  GO_FAST_RECIPE=auto
  THROUGHPUT_SDXL="--size 1024 --steps 20"; THROUGHPUT_SCHNELL="--size 1024 --steps 4"
fi
W="$WORK/weights"
SDXL_W="$W/sdxl-$SDXL_SIZE"; FLUX_W="$W/flux-$FLUX_DEV"; SCHNELL_W="$W/flux-$FLUX_SCHNELL"; ADAPTER_W="$W/ip-adapter-$ADAPTER_SIZE"

echo "gpu_check $PART: rehearsal=$REHEARSAL python=$PYTHON work=$WORK out=$OUT $(date -u +%FT%TZ)"

# 1. The carried wheels, into a private folder on the path (the image's own packages stay as they are).
if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl; then
  echo "FAILED: installing the carried wheels (run bench/gpu_wheels.sh here and carry .whl)"; exit 1
fi
# --no-compile above keeps the install quick; compile the bytecode now, so no step (start-up
# above all) pays for compiling a module on its first import.
"$PYTHON" -m compileall -q -j 0 "$WORK/site" >/dev/null || echo "compileall reported errors (see above)"
export PYTHONPATH="$WORK/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# coglet starts its worker with `python` from PATH: make that this interpreter (a wrapper, not a
# link, so a venv interpreter keeps its venv).
mkdir -p "$WORK/bin"
printf '#!/bin/sh\nexec "%s" "$@"\n' "$PYTHON" > "$WORK/bin/python"
chmod +x "$WORK/bin/python"
export PATH="$WORK/bin:$PATH"
export PYTHON ROOT WORK

step() {  # step NAME LIMIT_S FUNCTION: run it with its own limit and result folder, then report
  local name="$1" limit="$2" fn="$3" left=$(( DEADLINE - $(date +%s) ))
  if [ "$left" -lt 20 ]; then
    echo "=== skip $name: the part's deadline is ${left}s away"
    "$PYTHON" bench/gpu_check_report.py "$OUT" "$PART" "$name" 124 0
    return
  fi
  [ "$limit" -gt "$left" ] && limit="$left"
  export STEP_DIR="$WORK/results/$PART/$name"
  rm -rf "$STEP_DIR"; mkdir -p "$STEP_DIR"
  echo "=== step $name (limit ${limit}s) $(date -u +%T)"
  local started; started=$(date +%s%N)
  timeout --kill-after=5 "$limit" bash -c "set -o pipefail; $fn"
  local status=$?
  local ms=$(( ($(date +%s%N) - started) / 1000000 ))
  local seconds; seconds=$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))
  pkill -9 -f "$ROOT/scripts/serve.py" 2>/dev/null || true  # servers a killed benchmark left behind
  echo "=== step $name: exit $status after ${seconds}s"
  "$PYTHON" bench/gpu_check_report.py "$OUT" "$PART" "$name" "$status" "$seconds" "$STEP_DIR"
}

environment() {
  { date -u +%FT%TZ; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 || true
    "$PYTHON" -c "import sys, torch, diffusers, transformers, accelerate, safetensors, numpy, cog
print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| cudnn', torch.backends.cudnn.version())
print('diffusers', diffusers.__version__, '| transformers', transformers.__version__, '| accelerate', accelerate.__version__,
      '| safetensors', safetensors.__version__, '| numpy', numpy.__version__, '| cog', cog.__version__)
print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
    nproc; free -g | head -2; df -h /tmp | tail -1; } > "$STEP_DIR/environment.txt" 2>&1
  cat "$STEP_DIR/environment.txt"
  "$PYTHON" -c "import diffusers, cog, coglet, torch" || { echo "FAILED: the libraries do not import"; return 1; }
}
sdxl_weights() {
  [ -f "$SDXL_W/model_index.json" ] && return 0
  "$PYTHON" tests/fixtures/make_weights.py --size "$SDXL_SIZE" --device "$DEVICE" --out "$SDXL_W" \
    || { echo "building on $DEVICE failed; building on the CPU"; rm -rf "$SDXL_W"; "$PYTHON" tests/fixtures/make_weights.py --size "$SDXL_SIZE" --out "$SDXL_W"; }
}
flux_weights() {
  # The disk (64 GB) holds one family: full Flux dev plus schnell's own transformer is 57 GB.
  rm -rf "${W:?}"/sdxl-* "${W:?}"/ip-adapter-*
  local pair
  for pair in "$FLUX_DEV:$FLUX_W" "$FLUX_SCHNELL:$SCHNELL_W"; do
    local variant="${pair%%:*}" folder="${pair#*:}"
    [ -f "$folder/model_index.json" ] && continue
    if [ "$folder" = "$SCHNELL_W" ]; then
      # schnell shares dev's VAE and text encoders: link them, draw only its transformer (disk: 64 GB)
      "$PYTHON" - "$FLUX_W" "$folder" "$variant" "$DEVICE" <<'PY' || return 1
import sys
from pathlib import Path
from tests.fixtures.make_flux import build_flux_sharing
build_flux_sharing(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], device=sys.argv[4])
PY
    else
      "$PYTHON" tests/fixtures/make_flux.py --variant "$variant" --device "$DEVICE" --out "$folder" || return 1
    fi
  done
}
gpu_paths() {
  "$PYTHON" -m pytest -v -p no:cacheprovider --junitxml="$STEP_DIR/pytest.xml" tests/test_gpu_paths.py
}
sdxl_generation() {
  "$PYTHON" bench/bench_generation.py --model sdxl --weights "$SDXL_W" --cases "$SDXL_CASES" --runs "$RUNS" --out "$STEP_DIR"
}
sdxl_coldstart() {
  "$PYTHON" bench/bench_coldstart.py --weights "$SDXL_W" --cache warm --runs 1 --first-image "$SDXL_CASE" --out "$STEP_DIR"
}
sdxl_url_coldstart() {
  # issue #24: the same full SDXL from a loopback object store (90 MB/s per connection, 1 GB/s in all)
  # to READY, against from disk, in one run
  "$PYTHON" bench/bench_fetch.py --weights "$SDXL_W" --rate-mb 90 --ttfb-ms 150 --total-mb 1000 --runs 1 --skip-transfer \
    --json "$STEP_DIR/fetch.json"
}
sdxl_imports() {
  "$PYTHON" bench/import_profile.py --model sdxl --out "$STEP_DIR"
}
sdxl_bytecode() {
  # issue #18: plain diffusers' import with the carried wheels compiled (above) and from source
  "$PYTHON" bench/bench_bytecode.py --runs 2 --out "$STEP_DIR"
}
sdxl_ablation() {
  # compile=regional is the extras part's (its first call compiles for minutes)
  "$PYTHON" bench/bench_generation.py --model sdxl --weights "$SDXL_W" --cases "$SDXL_CASE" --runs "$ABLATE_RUNS" \
    --ablate fuse_qkv,channels_last,cuda_graphs,vae_decode,attention --out "$STEP_DIR"
}
flux_generation() {
  # plain against the defaults, the lossy opt-in row, then the exact switches (rows in this order,
  # each written as it finishes); attention kernel order is left to SDXL's rows; go_fast is the fast part's
  "$PYTHON" bench/bench_generation.py --model flux-dev --weights "$FLUX_W" --cases "$FLUX_CASE" --runs "$ABLATE_RUNS" \
    --ablate step_cache,cuda_graphs,fuse_qkv,channels_last --out "$STEP_DIR"
}
flux_schnell() {
  "$PYTHON" bench/bench_generation.py --model flux-schnell --weights "$SCHNELL_W" --cases "$SCHNELL_CASE" --runs "$RUNS" --out "$STEP_DIR"
}
flux_coldstart() {
  "$PYTHON" bench/bench_coldstart.py --model flux-dev --weights "$FLUX_W" --cache warm --runs 1 --first-image "$FLUX_CASE" --out "$STEP_DIR"
}
extras_identity() {
  "$PYTHON" tests/fixtures/make_ip_adapter.py --size "$ADAPTER_SIZE" --out "$ADAPTER_W" >/dev/null \
    && "$PYTHON" bench/bench_identity.py --weights "$SDXL_W" --ip-adapter "$ADAPTER_W" --size "$IMAGE_SIZE" --runs "$ABLATE_RUNS" \
         --json "$STEP_DIR/identity.json"
}
extras_image_modes() {
  # txt2img, img2img at strength 0.8 and inpaint, on the balanced preset, plain diffusers against the service
  "$PYTHON" bench/bench_image_modes.py --weights "$SDXL_W" --size "$IMAGE_SIZE" --runs "$ABLATE_RUNS" --out "$STEP_DIR"
}
extras_lora() {
  # LoRA by URL: cold and cached fetch and load, time per image with none, one and two, the restore
  "$PYTHON" bench/bench_lora.py --weights "$SDXL_W" --size "$IMAGE_SIZE" --ranks "$LORA_RANKS" --runs "$ABLATE_RUNS" \
    --out "$STEP_DIR"
}
extras_safety() {
  # the safety checker (CompVis's at full size, with Falconsai's second opinion) per image, against one SDXL image
  "$PYTHON" bench/bench_safety.py --weights "$SDXL_W" --size "$IMAGE_SIZE" --runs "$ABLATE_RUNS" $SAFETY_FLAGS --out "$STEP_DIR"
}
features_video() {
  # one 25-frame SVD-XT clip at 1024x576, plain diffusers against the service, and a 6-scene storyboard
  "$PYTHON" tests/fixtures/make_svd.py --size "$SVD_SIZE" --device "$DEVICE" --out "$W/svd-$SVD_SIZE" >/dev/null \
    && "$PYTHON" bench/bench_video.py --svd "$W/svd-$SVD_SIZE" --sdxl "$SDXL_W" --runs "$ABLATE_RUNS" $VIDEO_FLAGS \
         --out "$STEP_DIR"
}
extras_adetailer() {
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
    .whl/adetailer/*.whl || { echo "FAILED: installing .whl/adetailer (run bench/gpu_wheels.sh here)"; return 1; }
  "$PYTHON" bench/bench_adetailer.py --weights "$SDXL_W" --size "$IMAGE_SIZE" --runs "$ABLATE_RUNS" --json "$STEP_DIR/adetailer.json"
}
extras_compile() {
  COMPILE_CACHE_DIR="$WORK/compile-cache" "$PYTHON" bench/build_compile_cache.py --model sdxl --weights "$SDXL_W" \
    --cases "$SDXL_CASE" --out "$STEP_DIR"
}
# the fast part (issue #26): plain diffusers, go_fast=false and go_fast=true in one run per model,
# with peak memory, the denoiser's relative L2 error and the image's PSNR against go_fast=false
fast_flux_dev() {
  "$PYTHON" bench/bench_generation.py --model flux-dev --weights "$FLUX_W" --cases "$FLUX_CASE" --runs "$ABLATE_RUNS" \
    --go-fast "$GO_FAST_RECIPE" --out "$STEP_DIR"
}
fast_schnell() {
  "$PYTHON" bench/bench_generation.py --model flux-schnell --weights "$SCHNELL_W" --cases "$SCHNELL_CASE" --runs "$ABLATE_RUNS" \
    --go-fast "$GO_FAST_RECIPE" --out "$STEP_DIR"
}
fast_sdxl_weights() {
  # the disk holds one family: Flux goes before SDXL is drawn
  rm -rf "${W:?}"/flux-*
  sdxl_weights
}
fast_sdxl() {
  "$PYTHON" bench/bench_generation.py --model sdxl --weights "$SDXL_W" --cases "$SDXL_CASES" --runs "$ABLATE_RUNS" \
    --go-fast "$GO_FAST_RECIPE" --out "$STEP_DIR"
}
fast_artifact() {
  # build the compile artifact from nothing, then a fresh process restores it: compile time both ways,
  # spawn -> READY and spawn -> first go_fast image with the artifact
  COMPILE_CACHE_DIR="$WORK/compile-cache" "$PYTHON" bench/build_compile_cache.py --model sdxl --weights "$SDXL_W" \
    --cases "$SDXL_CASE" --out "$STEP_DIR"
}
# the throughput part (issue #27): the real server on 4 slots, 1 and 4 callers, without batching and
# with the default window, images/s, p50/p95 and each image against the same request alone
throughput_sdxl() {
  "$PYTHON" bench/bench_throughput.py --model sdxl --weights "$SDXL_W" $THROUGHPUT_SDXL --callers 1,4 --requests 3 \
    --windows 0,10 --out "$STEP_DIR/throughput.json"
}
throughput_schnell_weights() {
  rm -rf "${W:?}"/sdxl-*  # the disk holds one family
  flux_weights
}
throughput_schnell() {
  "$PYTHON" bench/bench_throughput.py --model flux-schnell --weights "$SCHNELL_W" $THROUGHPUT_SCHNELL --callers 1,4 \
    --requests 3 --windows 0,10 --out "$STEP_DIR/throughput.json"
}
export -f environment sdxl_weights flux_weights gpu_paths sdxl_generation sdxl_coldstart sdxl_url_coldstart sdxl_imports sdxl_bytecode sdxl_ablation \
  flux_generation flux_schnell flux_coldstart extras_identity extras_image_modes extras_lora extras_safety features_video extras_adetailer extras_compile \
  fast_flux_dev fast_schnell fast_sdxl_weights fast_sdxl fast_artifact throughput_sdxl throughput_schnell_weights throughput_schnell
export THROUGHPUT_SDXL THROUGHPUT_SCHNELL W DEVICE SDXL_SIZE SDXL_W FLUX_DEV FLUX_W FLUX_SCHNELL SCHNELL_W ADAPTER_SIZE ADAPTER_W \
  SDXL_CASES SDXL_CASE FLUX_CASE SCHNELL_CASE RUNS ABLATE_RUNS IMAGE_SIZE LORA_RANKS SAFETY_FLAGS SVD_SIZE VIDEO_FLAGS GO_FAST_RECIPE

# 2. The part's steps, most valuable first.
step environment 60 environment
case "$PART" in
  sdxl)
    step weights 240 sdxl_weights
    step gpu_paths 200 gpu_paths
    step generation 150 sdxl_generation
    step coldstart 150 sdxl_coldstart
    step url_coldstart 150 sdxl_url_coldstart
    step imports 60 sdxl_imports
    step bytecode 150 sdxl_bytecode
    step ablation 200 sdxl_ablation
    ;;
  flux)
    step weights 240 flux_weights
    step generation 220 flux_generation
    step schnell 90 flux_schnell
    step coldstart 150 flux_coldstart
    ;;
  fast)
    # go_fast, in order of value; one device command of at most 7 minutes (GPU_CHECK_DEADLINE_S=420)
    step weights 200 flux_weights
    step flux_dev 180 fast_flux_dev
    step schnell 90 fast_schnell
    step sdxl_weights 60 fast_sdxl_weights
    step sdxl 150 fast_sdxl
    step artifact 200 fast_artifact
    ;;
  extras)
    step weights 240 sdxl_weights
    step identity 150 extras_identity
    step adetailer 100 extras_adetailer
    step compile 300 extras_compile
    ;;
  features)
    # the request features' costs: image inputs, LoRA by URL, the safety checker
    step weights 240 sdxl_weights
    step image_modes 120 extras_image_modes
    step lora 150 extras_lora
    step safety 90 extras_safety
    step video 300 features_video
    ;;
  throughput)
    # concurrent callers on one GPU; one device command of at most 8 minutes (GPU_CHECK_DEADLINE_S=480)
    step weights 240 sdxl_weights
    step sdxl 200 throughput_sdxl
    step schnell_weights 200 throughput_schnell_weights
    step schnell 150 throughput_schnell
    ;;
esac
echo "gpu_check $PART done $(date -u +%FT%TZ)"
cat "$OUT/$PART.md"
