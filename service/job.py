"""One request from validated inputs to finished images: identity, generation (single or
storyboard), then the ADetailer pass. ``predict.py`` calls only this."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from pipeline.generate import Batch, generate, pick_seed
from pipeline.models import LoadedModel
from pipeline.storyboard import batches, contact_sheet, scene_prompts, storyboard_batch_size
from presets import EffectiveSettings
from request.adetailer import ADetailerArgs
from request.generation import GenerationRequest

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    images: list[Any]
    prompts: list[str]  # the prompt that made each image
    seed: int
    generation_seconds: float
    steps: int
    sheet: Optional[Any] = None
    timings: dict[str, float] = field(default_factory=dict)

    def outputs(self) -> tuple[list[Any], Optional[list[str]]]:
        """Images to save and their file names (None: ``out-<i>``); a storyboard ends with its sheet."""
        if self.sheet is None:
            return self.images, None
        names = [f"scene-{i:02d}" for i in range(1, len(self.images) + 1)] + ["contact-sheet"]
        return self.images + [self.sheet], names

    def metrics(self) -> dict[str, Any]:
        """Cog metrics for this prediction (Cog adds its own ``predict_time``)."""
        values: dict[str, Any] = {
            "seed": self.seed, "steps": self.steps, "generation_seconds": round(self.generation_seconds, 4),
        }
        if self.sheet is not None:
            values["seconds_per_scene"] = round(self.generation_seconds / len(self.images), 4)
        else:
            values["steps_per_second"] = round(self.steps / self.generation_seconds, 3)
        values.update({name: round(seconds, 4) for name, seconds in self.timings.items()})
        return values


def _free_gpu_bytes(device: str) -> Optional[int]:
    if device != "cuda":
        return None
    import torch

    return torch.cuda.mem_get_info()[0]


def run_job(
    model: LoadedModel, device: str, request: GenerationRequest, settings: EffectiveSettings, ad_args: ADetailerArgs
) -> JobResult:
    seed = pick_seed(request.seed)
    log.info("Using seed: %d", seed)
    adapter = None
    adapter_kwargs = lambda size: {}  # noqa: E731
    if request.face_image is not None and settings.ip_adapter_scale > 0:
        from pipeline.ip_adapter import load_adapter
        from request.reference_image import load_reference_image

        reference = load_reference_image(request.face_image)
        adapter = load_adapter(model)
        guidance = settings.guidance_scale > 1
        adapter_kwargs = lambda size: adapter.pipeline_kwargs(reference, size, guidance)  # noqa: E731
        log.info("IP-Adapter %s: identity from face_image at scale %s", adapter.variant, settings.ip_adapter_scale)
    elif request.face_image is not None:
        log.info("ip_adapter_scale is 0: face_image not used")

    with model.lock:  # nothing else may change this pipeline while the request runs on it
        started = time.perf_counter()
        try:
            if adapter is not None:
                adapter.activate(settings.ip_adapter_scale)
            if request.scenes:
                prompts = scene_prompts(request.scenes, request.character, request.prompt)
                images = _storyboard(model, device, request, settings, prompts, seed, adapter_kwargs)
            else:
                prompts = [request.prompt] * request.num_outputs
                batch = Batch([request.prompt], request.num_outputs, seed)
                images = generate(model, batch, request, settings, adapter_kwargs(batch.size)).images
        finally:
            if adapter is not None:
                adapter.deactivate()
        generation_seconds = time.perf_counter() - started
        result = JobResult(images, prompts, seed, generation_seconds, settings.num_inference_steps)

        if not ad_args.need_skip():
            from adetailer.runner import run_adetailer  # imported only when asked for

            ad_started = time.perf_counter()
            result.images = run_adetailer(model, result.images, ad_args, prompts, request.negative_prompt, settings, seed,
                                          request.scheduler)
            result.timings["adetailer_seconds"] = time.perf_counter() - ad_started
    if request.scenes:
        result.sheet = contact_sheet(result.images)
    return result


def _storyboard(
    model: LoadedModel, device: str, request: GenerationRequest, settings: EffectiveSettings,
    prompts: list[str], seed: int, adapter_kwargs: Any,
) -> list[Any]:
    """Scene ``i`` uses ``seed + i`` (as image ``i`` of any batch does), so a scene can be redone alone."""
    size = storyboard_batch_size(device, _free_gpu_bytes(device), request.width, request.height, len(prompts))
    log.info("storyboard: %d scenes in batches of %d", len(prompts), size)
    started = time.perf_counter()
    images: list[Any] = []
    for chunk in batches(len(prompts), size):
        label = f"scene {chunk.start + 1}" if len(chunk) == 1 else f"scenes {chunk.start + 1}-{chunk.stop}"
        batch = Batch([prompts[i] for i in chunk], 1, seed + chunk.start, label)
        images += generate(model, batch, request, settings, adapter_kwargs(batch.size)).images
    log.info("storyboard: %d scenes in %.2f s", len(images), time.perf_counter() - started)
    return images
