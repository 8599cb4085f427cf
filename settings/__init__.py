"""Every environment variable the service reads, declared once: name, type, default and meaning.

Code reads them through ``get(NAME)`` (and ``member(PREFIX, NAME)`` for the two families), never
through ``os.environ`` (a test checks), so this table is the whole list, and the README's settings
table is checked against it. Values are read when asked for, not at import: an operator's change
between two loads, or a test's ``monkeypatch.setenv``, takes effect.

One rule for every boolean: 1/true/yes/on or 0/false/no/off, in any case; anything else is an
error naming the variable. An empty value counts as unset.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")
# BATCH_WINDOW_MS when unset and several predictions may run at once: several times the longest
# first wait for companions in bench_throughput.py's bursts on the CPU (docs/throughput.md)
BATCH_WINDOW_DEFAULT_MS = 10.0


@dataclass(frozen=True)
class Setting:
    name: str
    kind: type  # str, int, float, bool or Path
    default: Any  # None: unset, and the reader says what that means
    doc: str


@dataclass(frozen=True)
class Family:
    """Variables named ``PREFIX`` + a member's name in capitals; the members are their owner's data."""

    prefix: str
    owner: str
    doc: str


SETTINGS: Mapping[str, Setting] = {s.name: s for s in (
    Setting("DEFAULT_MODEL", str, "sdxl",
            "The model loaded at start-up and used when a request names none: sdxl, flux-dev or flux-schnell."),
    Setting("SDXL_WEIGHTS", str, "weights/sdxl",
            "SDXL weights: a diffusers folder, a single-file .safetensors checkpoint, or an http(s) URL to either (a folder "
            "as .tar, optionally with #sha256=). Cog's COG_WEIGHTS, given to setup(), wins for the default model."),
    Setting("FLUX_DEV_WEIGHTS", str, "weights/flux-dev", "FLUX.1-dev weights: a diffusers folder, or an http(s) URL to one as .tar."),
    Setting("FLUX_SCHNELL_WEIGHTS", str, "weights/flux-schnell",
            "FLUX.1-schnell weights: a diffusers folder, or an http(s) URL to one as .tar."),
    Setting("SVD_WEIGHTS", str, "weights/svd",
            "Stable Video Diffusion (SVD or SVD-XT) for animate: a diffusers folder, or an http(s) URL to one as .tar."),
    Setting("WEIGHTS_CACHE", Path, Path("weights/cache"),
            "Where weights given as a URL are kept, unpacked, once each: an entry appears only when proven complete."),
    Setting("WEIGHTS_FETCH_CONCURRENCY", int, 16, "Parallel HTTP Range connections for a weights URL (1: one stream)."),
    Setting("WEIGHTS_FETCH_CHUNK_MB", float, 16.0, "Size of each HTTP Range request for a weights URL."),
    Setting("WEIGHTS_FETCH_TIMEOUT_S", float, 3600.0,
            "Deadline for the whole download of a weights URL, every retry included; setup fails naming the setting."),
    Setting("WEIGHTS_MAX_GB", float, 200.0, "Largest weights download, and the most it may unpack to (a tar or gzip bomb is refused)."),
    Setting("MODEL_MEMORY_BUDGET_GB", float, None,
            "Memory the resident models may use; a model that does not fit evicts the least recently used. "
            "Unset: free GPU memory on CUDA, no limit elsewhere."),
    Setting("FAST_LOAD", bool, None, "The weight stream onto the device at start-up. Unset: on for CUDA, off elsewhere."),
    Setting("WEIGHT_STREAM_WORKERS", int, None, "Reader threads of the weight stream. Unset: 4 on CUDA, 2 elsewhere."),
    Setting("IMPORT_CACHE_DIR", Path, Path("~/.cache/fast-image-service/imports"),
            "transformers' map of its models, kept for the next start (cog build writes it into the image)."),
    Setting("WARMUP", bool, None,
            "One short generation of the default model at its default size before READY, so the first caller's image "
            "pays no first-use costs (kernel selection, CUDA-graph capture). Unset: on for CUDA, off elsewhere."),
    Setting("GO_FAST_SIZES", str, None,
            "Sizes go_fast compiles in the background after READY, in order (WIDTHxHEIGHT,...). Unset: the 11 "
            "aspect-ratio buckets at 1 and at 0.25 megapixels, 1024x1024 first."),
    Setting("COMPILE_CACHE", str, None,
            "go_fast's compile artifacts for this GPU and torch (bench/build_compile_cache.py): a path or an http(s) URL, "
            "the operator's only (the file is a pickle). Unset: the file for this GPU in COMPILE_CACHE_DIR, if any."),
    Setting("COMPILE_CACHE_DIR", Path, Path("weights/compile-cache"),
            "Where bench/build_compile_cache.py writes compile artifacts, one file per model, GPU model and torch version."),
    Setting("COG_MAX_CONCURRENCY", int, 1,
            "Predictions the server runs at once: Cog sets it from cog.yaml's concurrency.max (4), and scripts/serve.py "
            "does the same. One more caller gets 409 At capacity."),
    Setting("BATCH_WINDOW_MS", float, None,
            "How long the first of several concurrent, compatible text-to-image requests waits for others to join its "
            "denoising batch, and only while others are on their way (a lone caller never waits). 0: no batching. "
            f"Unset: {BATCH_WINDOW_DEFAULT_MS:g} when COG_MAX_CONCURRENCY is above 1, else 0."),
    Setting("IP_ADAPTER_WEIGHTS", Path, Path("weights/ip-adapter"), "SDXL IP-Adapter folder, in h94/IP-Adapter's layout."),
    Setting("FLUX_IP_ADAPTER_WEIGHTS", Path, Path("weights/flux-ip-adapter"), "Flux IP-Adapter folder, in XLabs' layout."),
    Setting("IP_ADAPTER_VARIANT", str, None, "plus-face or plain (SDXL), xlabs (Flux). Unset: the first one present."),
    Setting("ADETAILER_MODELS", Path, Path("weights/adetailer"),
            "Folder of ADetailer's YOLO .pt weights (face_yolov8n.pt, hand_yolov8n.pt...). Without them: mediapipe."),
    Setting("SAFETY_CHECKER_WEIGHTS", Path, Path("weights/safety-checker"),
            "The safety checker, in CompVis/stable-diffusion-safety-checker's layout. Absent: images are returned unchecked."),
    Setting("NSFW_CLASSIFIER_WEIGHTS", Path, Path("weights/nsfw-classifier"),
            "Optional second opinion on flagged images, in Falconsai/nsfw_image_detection's layout."),
    Setting("REQUIRE_SAFETY_CHECKER", bool, False, "1: setup fails when the safety checker's weights are absent."),
    Setting("LORA_CACHE", Path, Path("weights/lora-cache"), "Where LoRA files given by URL are kept, one per URL."),
    Setting("LORA_CACHE_MB", float, 20480.0, "Size of the LoRA file cache; the least recently used files go beyond it."),
    Setting("LORA_MAX_MB", float, 2048.0, "Largest LoRA file fetched; a larger one is refused naming the input."),
    Setting("LORA_TIMEOUT_S", float, 60.0,
            "Deadline for a LoRA's whole download, every retry included; a slower server is abandoned naming the input."),
    Setting("LORA_MEMORY_SLOTS", int, 4, "LoRAs kept loaded (switched off) between requests; the least recently used is deleted beyond."),
    Setting("LORA_ALLOW_PRIVATE_URLS", bool, False,
            "Allow LoRA URLs to reach non-global addresses: loopback, private, link-local, shared (tests, private deployments)."),
    Setting("IMAGE_ALLOW_PRIVATE_URLS", bool, False,
            "Allow image-input URLs (image, mask, face_image) to reach non-global addresses (tests, private deployments)."),
    Setting("IMAGE_FETCH_TIMEOUT_S", float, 30.0, "Deadline for fetching one image input (image, mask, face_image) given as a URL."),
    Setting("PRELOAD_OPTIONAL", str, "",
            "Optional parts to load on a thread right after READY: adetailer, ip_adapter, safety_checker (comma-separated)."),
    Setting("STARTUP_TIMINGS_PATH", Path, Path(tempfile.gettempdir()) / "startup_timings.json",
            "Where setup() writes its stage timings as JSON."),
    Setting("LAZY_IMPORTS", bool, True,
            "The import diet: keep bitsandbytes (unless the profile quantizes), scipy and, for transformers, "
            "torch.distributed out of sight while diffusers and transformers first import; defer torch's compiler, "
            "flex attention, symbolic shapes with sympy, PEFT and diffusers' package map until used; read "
            "transformers' model map from IMPORT_CACHE_DIR; pause the garbage collector. 0: import everything as "
            "usual, for diagnosis."),
    Setting("HW_PROFILE", str, None, "Force a hardware profile by name (hardware/profiles.json). Unset: chosen by device and free memory."),
)}

FAMILIES: Mapping[str, Family] = {f.prefix: f for f in (
    Family("SPEED_", "pipeline/configs/speed.json",
           "One per generation speed switch, e.g. SPEED_CUDA_GRAPHS=0, SPEED_ATTENTION=cudnn: 1/0 for the on/off ones, "
           "a value from the switch's choices for the others."),
    Family("HW_", "hardware/profiles.json",
           "One per hardware-profile setting, e.g. HW_FLUX_QUANTIZATION=nf4, HW_OFFLOAD=model, HW_VAE_TILING=1."),
)}


class SettingError(ValueError):
    """An environment variable holds a value its reader cannot use; the message names it."""


def parse_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in TRUE:
        return True
    if lowered in FALSE:
        return False
    raise SettingError(f"${name}={raw!r}: allowed 1/true/yes/on or 0/false/no/off")


def _parse(setting: Setting, raw: str) -> Any:
    if setting.kind is bool:
        return parse_bool(setting.name, raw)
    if setting.kind is Path:
        return Path(raw).expanduser()
    try:
        return setting.kind(raw)
    except ValueError:
        raise SettingError(f"${setting.name}={raw!r}: expected a{'n integer' if setting.kind is int else ' number'}") from None


def _raw(name: str, env: Optional[Mapping[str, str]]) -> str:
    return (os.environ if env is None else env).get(name, "").strip()


def get(name: str, env: Optional[Mapping[str, str]] = None) -> Any:
    """The value of setting ``name`` in its type, or its default when unset (``env``: for tests)."""
    setting = SETTINGS[name]
    raw = _raw(name, env)
    return _parse(setting, raw) if raw else setting.default


def member(prefix: str, name: str, env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The raw value of family member ``PREFIX + NAME`` (its owner parses it), or None when unset."""
    if prefix not in FAMILIES:
        raise KeyError(f"no settings family {prefix!r}")
    return _raw(prefix + name.upper(), env) or None
