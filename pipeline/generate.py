"""Generation: one batch of prompts in, PIL images and timings out; from text, or from the caller's
image (img2img) and mask (inpainting) on the same loaded weights."""

from __future__ import annotations

import inspect
import logging
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from PIL import Image

from pipeline.loading.placement import cleanup_after_image
from pipeline.models import LoadedModel
from pipeline.progress import StepProgress
from pipeline.schedulers import make_scheduler
from pipeline.speed.attention import attention_kernels
from pipeline.speed.cuda_graphs import graphed
from pipeline.speed.decode import decode_bf16
from pipeline.variants import pipeline_for
from presets import EffectiveSettings
from request.generation import GenerationRequest
from request.image_inputs import ImageInputs

log = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Batch:
    """Prompts denoised together. Image ``i`` of the batch (prompt-major) uses ``first_seed + i``."""

    prompts: Sequence[str]
    images_per_prompt: int
    first_seed: int
    label: str = ""

    @property
    def size(self) -> int:
        return len(self.prompts) * self.images_per_prompt


@dataclass(frozen=True)
class GenerationResult:
    images: list[Any]
    seconds: float
    steps: int

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(self.steps, 1)


def pick_seed(requested: Optional[int]) -> int:
    return requested if requested is not None else secrets.randbelow(MAX_SEED + 1)


def generators_for(seed: int, count: int) -> list[Any]:
    """One CPU generator per image, seeded ``seed + i``: image i is reproducible on its own, and
    CPU-drawn noise gives the same starting latents on every device."""
    import torch

    return [torch.Generator("cpu").manual_seed((seed + index) % (MAX_SEED + 1)) for index in range(count)]


def steps_for_strength(steps: int, strength: float) -> int:
    """Steps to ask for so that img2img's ``int(steps x strength)`` runs at least one."""
    return max(steps, math.ceil(1 / strength))


def generate(
    model: LoadedModel,
    batch: Batch,
    request: GenerationRequest,
    settings: EffectiveSettings,
    ip_adapter: Optional[dict[str, Any]] = None,
    start: Optional[ImageInputs] = None,
) -> GenerationResult:
    """Run the denoising loop for ``batch`` with the request's size and sampler and the merged preset,
    from text, or from ``start`` (the caller's image, and mask) when given."""
    import torch

    kind = "text" if start is None else start.kind
    pipe = pipeline_for(model, kind)
    if model.spec.schedulers:
        pipe.scheduler = make_scheduler(request.scheduler, model.base_scheduler_config)
    steps = settings.num_inference_steps
    options: dict[str, Any] = {}
    if start is not None and kind != "text":
        asked = steps_for_strength(steps, start.strength)
        if asked != steps:
            log.info("prompt_strength %.2f runs int(steps x strength) steps: %d steps asked for so that one runs",
                     start.strength, asked)
        steps = asked
        options.update(image=start.image, strength=start.strength)
        if start.mask is not None:
            options["mask_image"] = start.mask
    log.info(
        "%s%s %d image(s) %dx%d with %s (%s), %s",
        f"{batch.label}: " if batch.label else "", {"text": "generating", "img2img": "img2img:", "inpaint": "inpainting"}[kind],
        batch.size, request.width, request.height, model.spec.name,
        request.scheduler if model.spec.schedulers else "flow-matching Euler", settings.describe(),
    )
    if "width" in inspect.signature(pipe.__call__).parameters:  # SDXL img2img takes its size from the image
        options.update(width=request.width, height=request.height)
    if request.negative_prompt:  # only models that take one get here (request.generation checks)
        options["negative_prompt"] = [request.negative_prompt] * len(batch.prompts)
    options.update(ip_adapter or {})  # precomputed reference-image embeddings, when identity is on
    speed = model.speed
    # Our own bf16 decode replaces diffusers' fp32 one (SDXL only: pipeline.speed.settings's data says so).
    own_decode = speed.vae_decode == "bfloat16"
    # The adapter's processors and a request's LoRA layers are per request: graphs were captured without
    # them and are kept for the plain text model only (pipeline.lora.adapters).
    runner = model.graphs if not ip_adapter and kind == "text" and not model.active_loras else None
    progress = StepProgress(steps, batch.label)
    started = time.perf_counter()
    with torch.inference_mode(), attention_kernels(speed), graphed(pipe, runner):
        output = pipe(
            prompt=list(batch.prompts),
            num_inference_steps=steps,
            guidance_scale=settings.guidance_scale,
            num_images_per_prompt=batch.images_per_prompt,
            generator=generators_for(batch.first_seed, batch.size),
            callback_on_step_end=progress,
            output_type="latent" if own_decode else "pil",
            **options,
        )
        images = decode_bf16(pipe, output.images) if own_decode else list(output.images)
    if kind == "inpaint" and start.keep_outside:
        # outside the mask, the caller's own pixels, byte for byte (the model's are a VAE round-trip)
        images = [Image.composite(image, start.image, start.mask) for image in images]
    seconds = time.perf_counter() - started
    if model.profile is not None:
        cleanup_after_image(model.profile, pipe.device.type)
    result = GenerationResult(images=images, seconds=seconds, steps=progress.steps_done)
    log.info("%sgenerated in %.2f s (%.3f s/step)", f"{batch.label}: " if batch.label else "", seconds, result.seconds_per_step)
    return result
