"""The safety checker run on a prediction's images, as Replicate's own SDXL and Flux models run it.

The first opinion is diffusers' ``StableDiffusionSafetyChecker`` (CompVis's CLIP-based concept
checker) with its CLIP image processor, from ``SAFETY_CHECKER_WEIGHTS``. Like cog-flux, an optional
second opinion, a transformers image classifier (Falconsai's ViT NSFW detector, from
``NSFW_CLASSIFIER_WEIGHTS``), is asked only about the images the first one flags, to cut false
positives: an image is withheld when both flag it (when there is no second opinion, when the first
does). All of a prediction's images go through each model as one batch, on the model's device.

Both load on first use, or on the background preload after READY (``PRELOAD_OPTIONAL=safety_checker``),
through the model cache, never before READY. Without weights the service serves unchecked images
and says so; ``REQUIRE_SAFETY_CHECKER=1`` makes that a setup failure instead.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import settings
from pipeline.loading.cache import MODEL_CACHE

log = logging.getLogger(__name__)


class NoSafetyChecker(settings.SettingError):
    """``REQUIRE_SAFETY_CHECKER=1`` and no checker weights: the service must not serve unchecked."""


def _folder(name: str) -> Optional[Path]:
    folder = Path(settings.get(name))
    return folder if (folder / "config.json").is_file() else None


def configured() -> Optional[Path]:
    """The checker's folder when its weights are there."""
    return _folder("SAFETY_CHECKER_WEIGHTS")


def report_configuration() -> Optional[Path]:
    """Say once, at start-up, whether images will be checked; refuse to start unchecked if required."""
    folder = configured()
    if folder is None:
        where = settings.get("SAFETY_CHECKER_WEIGHTS")
        if settings.get("REQUIRE_SAFETY_CHECKER"):
            raise NoSafetyChecker(f"REQUIRE_SAFETY_CHECKER=1, but no safety checker weights at {where} "
                                  "(SAFETY_CHECKER_WEIGHTS, in CompVis/stable-diffusion-safety-checker's layout)")
        log.warning("safety checker: none configured (no weights at %s): images are returned unchecked", where)
        return None
    second = _folder("NSFW_CLASSIFIER_WEIGHTS")
    log.info("safety checker: %s%s; loads on the first checked prediction (or PRELOAD_OPTIONAL=safety_checker)",
             folder, f", second opinion {second}" if second else ", no second opinion")
    return folder


@dataclass
class SafetyChecker:
    checker: Any
    processor: Any
    classifier: Optional[Any]
    classifier_processor: Optional[Any]
    device: str
    dtype: Any

    def verdicts(self, images: Sequence[Any]) -> list[Optional[str]]:
        """Per image: None when it may be returned, else why it is withheld."""
        import numpy as np
        import torch

        with torch.inference_mode():
            clip_input = self.processor(list(images), return_tensors="pt").pixel_values.to(self.device, self.dtype)
            # the checker blacks out flagged images in the array it is given; it gets a stand-in
            _, flagged = self.checker(clip_input=clip_input, images=np.zeros((len(images), 1, 1, 3)))
            reasons: list[Optional[str]] = [
                "flagged by the safety checker" if flag else None for flag in flagged]
            suspects = [i for i, flag in enumerate(flagged) if flag]
            if suspects and self.classifier is not None:
                pixels = self.classifier_processor([images[i] for i in suspects], return_tensors="pt").pixel_values
                labels = self.classifier(pixels.to(self.device, self.dtype)).logits.argmax(-1).tolist()
                for index, label in zip(suspects, labels, strict=True):
                    name = self.classifier.config.id2label[label]
                    if name.lower() == "nsfw":
                        reasons[index] = "flagged by the safety checker and the NSFW classifier"
                    else:
                        reasons[index] = None
                        log.info("safety checker: image %d flagged, overruled by the NSFW classifier (%s)", index + 1, name)
        return reasons


def checker_for(device: str, dtype: Any) -> Optional[SafetyChecker]:
    """The loaded checker (loading it on first use), or None when no weights are configured."""
    folder = configured()
    if folder is None:
        return None
    second = _folder("NSFW_CLASSIFIER_WEIGHTS")

    def load() -> SafetyChecker:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import AutoImageProcessor, AutoModelForImageClassification, CLIPImageProcessor

        started = time.perf_counter()
        checker = StableDiffusionSafetyChecker.from_pretrained(folder, local_files_only=True).to(device, dtype).eval()
        processor = CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
        classifier = classifier_processor = None
        if second is not None:
            classifier = AutoModelForImageClassification.from_pretrained(second, local_files_only=True).to(device, dtype).eval()
            classifier_processor = AutoImageProcessor.from_pretrained(second, local_files_only=True)
        log.info("safety checker loaded in %.2f s%s", time.perf_counter() - started,
                 " (with the NSFW classifier)" if second else "")
        return SafetyChecker(checker, processor, classifier, classifier_processor, device, dtype)

    return MODEL_CACHE.get_or_load(f"safety_checker:{folder.resolve()}:{second.resolve() if second else ''}", load)
