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
from adetailer.mask import filter_by_ratio, filter_k, mask_preprocess
from adetailer.prompts import detection_negatives, detection_prompts
from pipeline.generate import generators_for
from pipeline.loading.cache import MODEL_CACHE
from pipeline.models import LoadedModel
from pipeline.schedulers import fresh_scheduler
from pipeline.variants import inpaint_pipeline
from presets import EffectiveSettings
from request.adetailer import AUTO_MODEL, ADetailerArgs
from request.catalog import DEFAULT_SCHEDULER
from request.errors import InputError

log = logging.getLogger(__name__)

# pass name -> prefix of the operator's YOLO weights (ADetailer's face_yolov8n.pt, hand_yolov8n.pt)
YOLO_KIND = {"face": "face", "hands": "hand", "person": "person"}


def models_folder() -> Path:
    """Only the operator's folder is searched for ``.pt`` files: they are pickles."""
    return settings.get("ADETAILER_MODELS")


MEDIAPIPE = {"mediapipe_face_full": ("face", 1), "mediapipe_face_short": ("face", 0), "mediapipe_face_mesh": ("face", None),
             "mediapipe_face_mesh_eyes_only": ("face", None), "mediapipe_hands": ("hands", None)}


def available_detectors(pass_name: str, folder: Path) -> list[str]:
    """What ``ad_model`` (face) or ``ad_hand_model`` (hands) may name here."""
    yolo = sorted(p.name for p in folder.glob("*.pt")) if folder.is_dir() else []
    return ["auto", *[name for name, (kind, _) in MEDIAPIPE.items() if kind == pass_name], *yolo]


def _named_detector(pass_name: str, name: str, folder: Path) -> tuple[str, Callable[[], Detector]]:
    if name in MEDIAPIPE and MEDIAPIPE[name][0] == pass_name:
        from adetailer.mediapipe_detector import MediapipeFaceDetector, MediapipeFaceMeshDetector, MediapipeHandDetector

        selection = MEDIAPIPE[name][1]
        if name.startswith("mediapipe_face_mesh"):
            return f"detector:{name}", lambda: MediapipeFaceMeshDetector(eyes_only=name.endswith("eyes_only"))
        if pass_name == "face":
            return f"detector:{name}", lambda: MediapipeFaceDetector(model_selection=selection)
        return "detector:mediapipe_hands", MediapipeHandDetector
    weights = folder / name
    if name.endswith(".pt") and "/" not in name and weights.is_file():
        from adetailer.yolo_detector import YoloDetector

        return f"detector:yolo:{weights.resolve()}", lambda: YoloDetector(weights)
    field = "ad_model" if pass_name == "face" else "ad_hand_model"
    raise InputError(field, name, "available here: " + ", ".join(available_detectors(pass_name, folder)))


def _build_detector(pass_name: str, folder: Path, name: str = AUTO_MODEL) -> tuple[str, Callable[[], Detector]]:
    from adetailer.yolo_detector import find_yolo_weights

    if name != AUTO_MODEL:
        return _named_detector(pass_name, name, folder)
    weights = find_yolo_weights(folder, YOLO_KIND[pass_name])
    if pass_name == "person":  # segments, and no mediapipe stand-in: the operator's model or nothing
        if weights is None or "-seg" not in weights.stem:
            raise InputError("adetailer_person", True, f"no person segmentation model in {folder} "
                                                       "(ADETAILER_MODELS): put person_yolov8n-seg.pt there")
        from adetailer.yolo_detector import YoloDetector

        return f"detector:yolo:{weights.resolve()}", lambda: YoloDetector(weights)
    if weights is not None:
        from adetailer.yolo_detector import YoloDetector

        return f"detector:yolo:{weights.resolve()}", lambda: YoloDetector(weights)
    log.info("ADetailer %s: no YOLO weights in %s; using mediapipe", pass_name, folder)
    from adetailer.mediapipe_detector import MediapipeFaceDetector, MediapipeHandDetector

    if pass_name == "face":
        return "detector:mediapipe_face_full", lambda: MediapipeFaceDetector(model_selection=1)
    return "detector:mediapipe_hands", MediapipeHandDetector


def detector_for(pass_name: str, folder: Optional[Path] = None, name: str = AUTO_MODEL) -> Detector:
    """The pass's detector: the one ``name`` gives, or (``auto``) the operator's YOLO weights, else mediapipe."""
    key, build = _build_detector(pass_name, folder or models_folder(), name)
    return MODEL_CACHE.get_or_load(key, build)


def check_detectors(args: ADetailerArgs, folder: Optional[Path] = None) -> None:
    """Refuse a detector name that is not available here, before anything runs (InputError names the field)."""
    for pass_name in args.passes():
        _build_detector(pass_name, folder or models_folder(), args.detector(pass_name))


def inpaint_settings(
    args: ADetailerArgs, prompt: str, negative_prompt: str, preset: EffectiveSettings, native: int, multiple: int = 8
) -> InpaintSettings:
    """The extension's rules: each ``ad_use_*`` switch takes its ``ad_*`` value, otherwise the main request's."""
    steps = args.ad_steps if args.ad_use_steps else preset.num_inference_steps
    # img2img runs int(steps * strength) steps; never let that round down to zero.
    steps = max(steps, math.ceil(1 / args.ad_denoising_strength))
    return InpaintSettings(
        prompt=prompt,
        negative_prompt=negative_prompt or None,
        strength=args.ad_denoising_strength,
        steps=steps,
        guidance_scale=args.ad_cfg_scale if args.ad_use_cfg_scale else preset.guidance_scale,
        padding=args.ad_inpaint_only_masked_padding,
        mask_blur=args.ad_mask_blur,
        native_size=native,
        size_multiple=multiple,
        only_masked=args.ad_inpaint_only_masked,
        size=(args.ad_inpaint_width, args.ad_inpaint_height) if args.ad_use_inpaint_width_height else None,
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
    sampler = args.sampler(scheduler)
    pipe.scheduler = fresh_scheduler(model.spec.schedulers, sampler, model.base_scheduler_config, model.pipe.scheduler)
    native = model.pipe.default_sample_size * model.pipe.vae_scale_factor  # 1024 for SDXL and Flux
    fixed = []
    for index, image in enumerate(images):
        for pass_name in args.passes():
            image = _run_pass(pass_name, pipe, image, args, prompts[index], negative_prompt, preset, native,
                              model.spec.size_multiple, seed + index)
        fixed.append(image)
    return fixed


def _run_pass(pass_name: str, pipe: Any, image: Any, args: ADetailerArgs, prompt: str, negative_prompt: str,
              preset: EffectiveSettings, native: int, multiple: int, seed: int) -> Any:
    detector = detector_for(pass_name, name=args.detector(pass_name))
    started = time.perf_counter()
    found = detector.detect(image, args.ad_confidence)
    found = filter_k(filter_by_ratio(found, args.ad_mask_min_ratio, args.ad_mask_max_ratio), args.ad_mask_k,
                     args.ad_mask_filter_method)
    masks = mask_preprocess(found.masks, args.ad_x_offset, args.ad_y_offset, args.ad_dilate_erode, args.ad_mask_merge_invert)
    detect_ms = (time.perf_counter() - started) * 1000
    if not masks:
        log.info("ADetailer %s: nothing detected in %.1f ms (%s); image unchanged", pass_name, detect_ms, detector.name)
        return image
    started = time.perf_counter()
    prompts = detection_prompts(args.ad_prompt, prompt, len(masks))
    negatives = detection_negatives(args.ad_negative_prompt, negative_prompt, len(masks))
    for number, (mask, detection_prompt, negative) in enumerate(zip(masks, prompts, negatives, strict=True), start=1):
        label = f"ADetailer {pass_name} {number}/{len(masks)}"
        if detection_prompt is None:
            log.info("%s: [SKIP]", label)
            continue
        settings = inpaint_settings(args, detection_prompt, negative, preset, native, multiple)
        image = inpaint_region(pipe, image, mask, settings, generators_for(seed, 1)[0], label)
    scores = ", ".join(f"{score:.2f}" for score in found.scores)
    log.info(
        "ADetailer %s: %d detected (%s) in %.1f ms, inpaint %.2f s (%d mask(s), merge/invert %s)",
        pass_name, len(found), scores, detect_ms, time.perf_counter() - started, len(masks), args.ad_mask_merge_invert,
    )
    return image
