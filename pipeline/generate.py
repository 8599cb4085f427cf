"""Text-to-image generation: one request in, PIL images and timings out."""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from pipeline.progress import StepProgress
from pipeline.request import GenerationRequest
from pipeline.schedulers import make_scheduler
from pipeline.sdxl_loader import LoadedModel
from presets import EffectiveSettings

log = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class GenerationResult:
    images: list[Any]
    seed: int
    seconds: float
    steps: int

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(self.steps, 1)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0


def pick_seed(requested: int | None) -> int:
    return requested if requested is not None else secrets.randbelow(MAX_SEED + 1)


def generators_for(seed: int, count: int) -> list[Any]:
    """One CPU generator per image, seeded ``seed + i``: image i is reproducible on its own, and
    CPU-drawn noise gives the same starting latents on every device."""
    import torch

    return [torch.Generator("cpu").manual_seed((seed + index) % (MAX_SEED + 1)) for index in range(count)]


def generate(model: LoadedModel, request: GenerationRequest, settings: EffectiveSettings) -> GenerationResult:
    """Run the denoising loop for ``request`` with the merged preset ``settings``."""
    import torch

    seed = pick_seed(request.seed)
    log.info("Using seed: %d", seed)
    pipe = model.pipe
    pipe.scheduler = make_scheduler(request.scheduler, model.base_scheduler_config)
    steps = settings.num_inference_steps
    log.info(
        "generating %d image(s) %dx%d with %s, %s",
        request.num_outputs, request.width, request.height, request.scheduler, settings.describe(),
    )
    started = time.perf_counter()
    with torch.inference_mode():
        output = pipe(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt or None,
            width=request.width,
            height=request.height,
            num_inference_steps=steps,
            guidance_scale=settings.guidance_scale,
            num_images_per_prompt=request.num_outputs,
            generator=generators_for(seed, request.num_outputs),
            callback_on_step_end=StepProgress(steps),
        )
    seconds = time.perf_counter() - started
    result = GenerationResult(images=list(output.images), seed=seed, seconds=seconds, steps=steps)
    log.info("generated in %.2f s (%.3f s/step)", seconds, result.seconds_per_step)
    return result
