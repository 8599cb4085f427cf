#!/usr/bin/env bash
# Download, on this machine, the exact wheels the lent GPU's image lacks into .whl/ (git-ignored),
# for bench/gpu_check.sh to install there (the device reaches no package index).
# The device image: Python 3.12, torch 2.11.0+cu130, transformers 5.17.0, accelerate 1.15.0,
# safetensors 0.8.0, huggingface_hub 1.33.0, numpy 2.x; no diffusers, peft, torchao, cog or coglet. pydantic (the
# request models) travels pinned as in requirements.txt, with typing_extensions new enough for it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS=(diffusers==0.42.1 peft==0.21.2 torchao==0.18.0 av==18.1.0 cog==0.23.1 coglet==0.23.1 structlog==26.1.0 importlib_metadata==10.2.0 zipp==4.1.2
        pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0)
# ADetailer's detector, for the extras part only (.whl/adetailer/). mediapipe 0.10.21 declares
# numpy<2 and protobuf<5, but its face detector ran with numpy 2.4.6 in the rehearsal venv;
# the device already has its other needs (opencv-python-headless, matplotlib, attrs, absl-py,
# flatbuffers, jax). protobuf 4.25 shadows the image's own only for that part.
ADETAILER_WHEELS=(mediapipe==0.10.21 protobuf==4.25.9 sounddevice==0.5.6)
download() {
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64 --platform any -d "$@"
}
mkdir -p "$ROOT/.whl/adetailer"
download "$ROOT/.whl" "${WHEELS[@]}"
download "$ROOT/.whl/adetailer" "${ADETAILER_WHEELS[@]}"
du -sh "$ROOT/.whl" "$ROOT/.whl/adetailer"
