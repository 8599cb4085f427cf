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
from pipeline.progress import Listener, StepProgress
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
    """Prompts denoised together. Image ``i`` of the batch (prompt-major) uses ``first_seed + i``,
    or ``seeds[i]`` when given (a batch coalesced from several callers, ``pipeline.coalesce``), and
    prompt ``j`` the request's negative prompt, or ``negative_prompts[j]`` when given."""

    prompts: Sequence[str]
    images_per_prompt: int
    first_seed: int
    label: str = ""
    seeds: Optional[Sequence[int]] = None
    negative_prompts: Optional[Sequence[str]] = None

    @property
    def size(self) -> int:
        return len(self.prompts) * self.images_per_prompt

    def image_seeds(self) -> list[int]:
        if self.seeds is not None:
            return list(self.seeds)
        return [(self.first_seed + index) % (MAX_SEED + 1) for index in range(self.size)]


@dataclass(frozen=True)
class GenerationResult:
    images: list[Any]
    seconds: float
    steps: int
    fast_path: str = "exact"  # what denoised: "exact", or the go_fast recipe that ran ("fp8+compile", "compile")

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(self.steps, 1)


def pick_seed(requested: Optional[int]) -> int:
    return requested if requested is not None else secrets.randbelow(MAX_SEED + 1)


def generators_for(seed: int, count: int) -> list[Any]:
    """One CPU generator per image, seeded ``seed + i``: image i is reproducible on its own, and
    CPU-drawn noise gives the same starting latents on every device."""
    return seeded_generators([(seed + index) % (MAX_SEED + 1) for index in range(count)])


def seeded_generators(seeds: Sequence[int]) -> list[Any]:
    import torch

    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


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
    go_fast: bool = False,
    warm_up: bool = False,
    listeners: Optional[Sequence[Listener]] = None,
) -> GenerationResult:
    """Run the denoising loop for ``batch`` with the request's size and sampler and the merged preset,
    from text, or from ``start`` (the caller's image, and mask) when given. ``go_fast``: on the
    model's fast denoiser where it is compiled for this size (``pipeline.fast_path``), else exactly
    as without it. ``warm_up``: the fast path's own compiling call: no progress lines, no decode.
    ``listeners``: the callers following this run (default: the current one, with the batch's label)."""
    kind = "text" if start is None else start.kind
    plain_text = not ip_adapter and kind == "text" and not model.active_loras
    exact_runner = model.graphs if plain_text else None  # graphs are of the plain text model's kernels
    fast = model.fast if go_fast else None
    if fast is not None and not warm_up and (ip_adapter or model.active_loras):
        # a request's LoRA layers and IP-Adapter processors sit on the exact denoiser: those run there
        log.info("go_fast: a request with a LoRA or face_image runs the exact weights")
        fast = None
    if fast is None:
        return _generate(model, pipeline_for(model, kind), kind, batch, request, settings, ip_adapter, start, warm_up,
                         exact_runner, "exact", listeners)
    with fast.use(kind, fast.shape(request.width, request.height, batch.size, settings.guidance_scale)) as taken:
        if taken is None:
            log.info("go_fast: not compiled for %dx%d yet (compiling in the background): the exact path this time",
                     request.width, request.height)
            return _generate(model, pipeline_for(model, kind), kind, batch, request, settings, ip_adapter, start,
                             warm_up, exact_runner, "exact", listeners)
        pipe, graphs = taken
        return _generate(model, pipe, kind, batch, request, settings, ip_adapter, start, warm_up,
                         graphs if kind == "text" else None, fast.name, listeners)


def _generate(model: LoadedModel, pipe: Any, kind: str, batch: Batch, request: GenerationRequest,
              settings: EffectiveSettings, ip_adapter: Optional[dict[str, Any]], start: Optional[ImageInputs],
              warm_up: bool, runner: Optional[Any], fast_path: str,
              listeners: Optional[Sequence[Listener]]) -> GenerationResult:
    import torch

    level = logging.DEBUG if warm_up else logging.INFO
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
    log.log(
        level, "%s%s %d image(s) %dx%d with %s (%s), %s%s",
        f"{batch.label}: " if batch.label else "", {"text": "generating", "img2img": "img2img:", "inpaint": "inpainting"}[kind],
        batch.size, request.width, request.height, model.spec.name,
        request.scheduler if model.spec.schedulers else "flow-matching Euler", settings.describe(),
        "" if fast_path == "exact" else f", go_fast ({fast_path})",
    )
    if "width" in inspect.signature(pipe.__call__).parameters:  # SDXL img2img takes its size from the image
        options.update(width=request.width, height=request.height)
    if batch.negative_prompts is not None:
        options["negative_prompt"] = list(batch.negative_prompts)
    elif request.negative_prompt:  # only models that take one get here (request.generation checks)
        options["negative_prompt"] = [request.negative_prompt] * len(batch.prompts)
    options.update(ip_adapter or {})  # precomputed reference-image embeddings, when identity is on
    speed = model.speed
    # Our own bf16 decode replaces diffusers' fp32 one (SDXL only: pipeline.speed.settings's data says so).
    own_decode = speed.vae_decode == "bfloat16"
    progress = StepProgress(steps, batch.label, quiet=warm_up, listeners=listeners)
    started = time.perf_counter()
    with torch.inference_mode(), attention_kernels(speed), graphed(pipe, runner):
        output = pipe(
            prompt=list(batch.prompts),
            num_inference_steps=steps,
            guidance_scale=settings.guidance_scale,
            num_images_per_prompt=batch.images_per_prompt,
            generator=seeded_generators(batch.image_seeds()),
            callback_on_step_end=progress,
            output_type="latent" if own_decode or warm_up else "pil",
            **options,
        )
        images = [] if warm_up else decode_bf16(pipe, output.images) if own_decode else list(output.images)
    if kind == "inpaint" and start.keep_outside and not warm_up:
        # outside the mask, the caller's own pixels, byte for byte (the model's are a VAE round-trip)
        images = [Image.composite(image, start.image, start.mask) for image in images]
    seconds = time.perf_counter() - started
    if model.profile is not None:
        cleanup_after_image(model.profile, pipe.device.type)
    result = GenerationResult(images=images, seconds=seconds, steps=progress.steps_done, fast_path=fast_path)
    log.log(level, "%sgenerated in %.2f s (%.3f s/step)", f"{batch.label}: " if batch.label else "", seconds,
            result.seconds_per_step)
    return result
