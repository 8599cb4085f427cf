"""Inpaint one masked region the way ADetailer's "inpaint only masked" does.

Crop around the mask with padding, scale the crop to the model's native resolution (where it
draws faces best), inpaint, scale back, and paste through the feathered mask. Compositing with the
mask as alpha leaves every pixel outside the feathered mask byte-identical to the input.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Optional

from PIL import Image

from adetailer.detection import Box
from adetailer.mask import blur, bounding_box
from pipeline.progress import StepProgress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InpaintSettings:
    prompt: str
    negative_prompt: Optional[str]
    strength: float
    steps: int
    guidance_scale: float
    padding: int
    mask_blur: int
    native_size: int  # the model's trained side length in pixels (1024 for SDXL and Flux)
    size_multiple: int = 8  # the model's side granularity (16 for Flux)
    only_masked: bool = True  # ad_inpaint_only_masked: a crop around the mask; false: the whole image
    size: Optional[tuple[int, int]] = None  # ad_inpaint_width/height when asked; else the native area


def crop_region(box: Box, padding: int, image_size: tuple[int, int]) -> Box:
    """The mask's box grown by ``padding`` on every side, clipped to the image."""
    x1, y1, x2, y2 = box
    width, height = image_size
    return max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, width), min(y2 + padding, height)


def processing_size(crop_width: int, crop_height: int, native_size: int, multiple: int = 8) -> tuple[int, int]:
    """The crop's aspect ratio at the model's native area, in multiples of ``multiple``."""
    scale = math.sqrt(native_size * native_size / (crop_width * crop_height))
    return (
        max(multiple, int(round(crop_width * scale / multiple)) * multiple),
        max(multiple, int(round(crop_height * scale / multiple)) * multiple),
    )


def inpaint_region(
    pipe: Any, image: Image.Image, mask: Image.Image, settings: InpaintSettings, generator: Any, label: str
) -> Image.Image:
    """Return ``image`` with the region under ``mask`` redrawn; unchanged if the mask is empty."""
    box = bounding_box(mask)
    if box is None:
        return image
    region = crop_region(box, settings.padding, image.size) if settings.only_masked else (0, 0, *image.size)
    crop = image.crop(region)
    if settings.size is not None:  # the caller's size, in the model's multiple
        size = tuple(max(settings.size_multiple, side // settings.size_multiple * settings.size_multiple)
                     for side in settings.size)
    else:
        size = processing_size(crop.width, crop.height, settings.native_size, settings.size_multiple)
    log.info("%s: %dx%d region inpainted at %dx%d, %d steps x strength %.2f, guidance %g, %s", label, crop.width,
             crop.height, *size, settings.steps, settings.strength, settings.guidance_scale, type(pipe.scheduler).__name__)
    options = {"negative_prompt": settings.negative_prompt} if settings.negative_prompt else {}
    redrawn = pipe(
        prompt=settings.prompt,
        image=crop.resize(size, Image.LANCZOS),
        mask_image=mask.crop(region).resize(size, Image.LANCZOS),
        width=size[0],
        height=size[1],
        strength=settings.strength,
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        generator=generator,
        callback_on_step_end=StepProgress(max(1, int(settings.steps * settings.strength)), label),
        **options,
    ).images[0]
    patched = image.copy()
    patched.paste(redrawn.resize(crop.size, Image.LANCZOS), region[:2])
    return Image.composite(patched, image, blur(mask, settings.mask_blur))
