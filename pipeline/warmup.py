"""One short generation before READY, so the first caller's image costs what every later one does.

The first image of a process pays once for what no later one repeats: cuBLAS and cuDNN choosing
their kernels for each shape, CUDA loading the kernels it uses (lazily, on first launch), the
denoiser's CUDA graph being captured for that size, the VAE's first decode, the safety checker's load
and first run. Run here, at the default model's default size and preset, with the request path's
own code, that cost moves from the first caller's wait into setup.
"""

from __future__ import annotations

import logging
import time

import settings
from pipeline.generate import Batch, generate
from pipeline.models import LoadedModel
from pipeline.safety_checker import checker_for
from presets import resolve
from request.generation import parse_request

log = logging.getLogger(__name__)

STEPS = 2  # the first step captures the CUDA graph, the second replays and checks it
PROMPT = "warm-up"


def warmup_enabled(device: str) -> bool:
    chosen = settings.get("WARMUP")
    return device == "cuda" if chosen is None else bool(chosen)


def warm_up(model: LoadedModel) -> float:
    """Generate once at the default size (the first aspect ratio, 1 megapixel) and run the safety
    checker on it; the seconds it took. The images are thrown away."""
    started = time.perf_counter()
    request = parse_request({"prompt": PROMPT, "model": model.spec.name})
    effective = resolve(model.spec.name, "balanced", num_inference_steps=STEPS)
    with model.lock:
        result = generate(model, Batch([PROMPT], 1, 0, label="warm-up"), request, effective)
    checker = checker_for(model.pipe.device.type, model.pipe.dtype)
    if checker is not None:
        checker.verdicts(result.images)
    seconds = time.perf_counter() - started
    log.info("warm-up: %dx%d, %d steps%s in %.2f s", request.width, request.height, STEPS,
             " and the safety checker" if checker is not None else "", seconds)
    return seconds
