"""Run the requested ADetailer passes over generated images and log them like the extension does.

Detectors and the inpaint pipeline are built on first use and kept in the model cache, so a
service that never gets ``adetailer=true`` never pays for them, and one that does pays once.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import settings
from adetailer.detection import Detector
from adetailer.inpaint import InpaintSettings, inpaint_region
from adetailer.mask import dilate_erode, filter_by_ratio, filter_k_largest
from pipeline.generate import generators_for
from pipeline.loading.cache import MODEL_CACHE
from pipeline.models import LoadedModel
from pipeline.schedulers import fresh_scheduler
from pipeline.variants import inpaint_pipeline
from presets import EffectiveSettings
from request.adetailer import ADetailerArgs
from request.catalog import DEFAULT_SCHEDULER

log = logging.getLogger(__name__)

# pass name -> prefix of the operator's YOLO weights (ADetailer's face_yolov8n.pt, hand_yolov8n.pt)
YOLO_KIND = {"face": "face", "hands": "hand"}


def models_folder() -> Path:
    """Only the operator's folder is searched for ``.pt`` files: they are pickles."""
    return settings.get("ADETAILER_MODELS")


def _build_detector(pass_name: str, folder: Path) -> tuple[str, Callable[[], Detector]]:
    from adetailer.yolo_detector import find_yolo_weights

    weights = find_yolo_weights(folder, YOLO_KIND[pass_name])
    if weights is not None:
        from adetailer.yolo_detector import YoloDetector

        return f"detector:yolo:{weights.resolve()}", lambda: YoloDetector(weights)
    log.info("ADetailer %s: no YOLO weights in %s; using mediapipe", pass_name, folder)
    from adetailer.mediapipe_detector import MediapipeFaceDetector, MediapipeHandDetector

    if pass_name == "face":
        return "detector:mediapipe_face_full", lambda: MediapipeFaceDetector(model_selection=1)
    return "detector:mediapipe_hands", MediapipeHandDetector


def detector_for(pass_name: str, folder: Optional[Path] = None) -> Detector:
    key, build = _build_detector(pass_name, folder or models_folder())
    return MODEL_CACHE.get_or_load(key, build)


def inpaint_settings(
    args: ADetailerArgs, prompt: str, negative_prompt: str, preset: EffectiveSettings, native: int, multiple: int = 8
) -> InpaintSettings:
    """The extension's rules: empty ``ad_*`` values fall back to the main request's."""
    steps = args.ad_steps or preset.num_inference_steps
    # img2img runs int(steps * strength) steps; never let that round down to zero.
    steps = max(steps, math.ceil(1 / args.ad_denoising_strength))
    return InpaintSettings(
        prompt=args.ad_prompt or prompt,
        negative_prompt=(args.ad_negative_prompt or negative_prompt) or None,
        strength=args.ad_denoising_strength,
        steps=steps,
        guidance_scale=args.ad_cfg_scale if args.ad_cfg_scale is not None else preset.guidance_scale,
        padding=args.ad_inpaint_only_masked_padding,
        mask_blur=args.ad_mask_blur,
        native_size=native,
        size_multiple=multiple,
    )


def run_adetailer(
    model: LoadedModel,
    images: list[Any],
    args: ADetailerArgs,
    prompts: Sequence[str],
    negative_prompt: str,
    preset: EffectiveSettings,
    seed: int,
    scheduler: str = DEFAULT_SCHEDULER,
) -> list[Any]:
    """Apply each requested pass to each image (``prompts[i]`` made image ``i``); images without
    detections come back unchanged. The inpaint samples with the request's ``scheduler``, built
    fresh from the model's own config, as the main image did (``from_pipe`` would otherwise keep
    whichever scheduler object the main pipeline had when the inpaint pipeline was built)."""
    if args.need_skip():
        return images
    if args.ad_denoising_strength == 0:
        log.info("ADetailer: ad_denoising_strength is 0, nothing to redraw; images unchanged")
        return images
    pipe = inpaint_pipeline(model)
    pipe.scheduler = fresh_scheduler(model.spec.schedulers, scheduler, model.base_scheduler_config, model.pipe.scheduler)
    native = model.pipe.default_sample_size * model.pipe.vae_scale_factor  # 1024 for SDXL and Flux
    fixed = []
    for index, image in enumerate(images):
        options = inpaint_settings(args, prompts[index], negative_prompt, preset, native, model.spec.size_multiple)
        for pass_name in args.passes():
            image = _run_pass(pass_name, pipe, image, args, options, seed + index)
        fixed.append(image)
    return fixed


def _run_pass(pass_name: str, pipe: Any, image: Any, args: ADetailerArgs, settings: InpaintSettings, seed: int) -> Any:
    detector = detector_for(pass_name)
    started = time.perf_counter()
    found = detector.detect(image, args.ad_confidence)
    found = filter_k_largest(filter_by_ratio(found, args.ad_mask_min_ratio, args.ad_mask_max_ratio), args.ad_mask_k_largest)
    detect_ms = (time.perf_counter() - started) * 1000
    if not len(found):
        log.info("ADetailer %s: nothing detected in %.1f ms (%s); image unchanged", pass_name, detect_ms, detector.name)
        return image
    started = time.perf_counter()
    for number, mask in enumerate(found.masks, start=1):
        label = f"ADetailer {pass_name} {number}/{len(found)}"
        mask = dilate_erode(mask, args.ad_dilate_erode)
        image = inpaint_region(pipe, image, mask, settings, generators_for(seed, 1)[0], label)
    scores = ", ".join(f"{score:.2f}" for score in found.scores)
    log.info(
        "ADetailer %s: %d detected (%s) in %.1f ms, inpaint %.2f s",
        pass_name, len(found), scores, detect_ms, time.perf_counter() - started,
    )
    return image
