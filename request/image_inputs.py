"""A request's own pictures, ready for img2img and inpainting: decoded safely, sized, aligned.

The caller's ``image`` and ``mask`` go through the same safe loader as ``face_image`` (size and
pixel-count checks before decoding, EXIF orientation, RGB). Sizes follow Replicate's SDXL and Flux
models: without ``width`` and ``height`` the output keeps the image's aspect ratio at the model's
native area (about one megapixel, or a quarter with ``megapixels=0.25``), in the model's multiple;
with them, the image is scaled to cover that size and centre-cropped (never stretched). A mask of
another size is first stretched onto the image (it is meant to match it), then cropped the same way,
so the two stay aligned pixel for pixel; masks are resampled nearest-neighbour, so a hard mask stays
hard and what is outside it stays exactly the caller's.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional

from PIL import Image, ImageOps

from request.generation import MAX_SIDE, MIN_SIDE, GenerationRequest
from request.reference_image import load_reference_image

log = logging.getLogger(__name__)

NATIVE_SIDE = 1024  # SDXL's and Flux's trained resolution: 1024 x 1024, about one megapixel


@dataclass(frozen=True)
class ImageInputs:
    """What the caller gave to start from. ``image`` and ``mask`` are at the output size."""

    image: Image.Image  # RGB
    given: Image.Image  # the decoded image before sizing: what "unchanged" returns
    mask: Optional[Image.Image]  # L; white (255) is repainted, black (0) kept
    strength: float
    keep_outside: bool  # paste the pixels outside the mask back exactly

    @property
    def kind(self) -> str:
        """The pipeline this needs: ``inpaint`` with a mask; ``img2img``; or ``text`` at strength 1,
        which ignores the image's content exactly (img2img at strength 1 would still add a trace of it)."""
        if self.mask is not None:
            return "inpaint"
        return "text" if self.strength == 1 else "img2img"

    def nothing_to_do(self) -> Optional[str]:
        """Why the image comes back unchanged without running the model, or None."""
        if self.strength == 0:
            return "prompt_strength is 0: nothing may change"
        if self.mask is not None and self.mask.getbbox() is None:
            return "the mask is all black: nothing to repaint"
        return None


def derived_size(image_size: tuple[int, int], megapixels: float, multiple: int) -> tuple[int, int]:
    """The image's aspect ratio at the model's native area times ``megapixels``, in ``multiple``s."""
    width, height = image_size
    scale = math.sqrt(NATIVE_SIDE * NATIVE_SIDE * megapixels / (width * height))

    def side(value: int) -> int:
        rounded = int(round(value * scale / multiple)) * multiple
        return min(max(rounded, multiple * math.ceil(MIN_SIDE / multiple)), multiple * (MAX_SIDE // multiple))

    return side(width), side(height)


def fit(image: Image.Image, size: tuple[int, int], resample: int = Image.LANCZOS) -> Image.Image:
    """``image`` scaled to cover ``size`` and centre-cropped to it (a copy when already that size)."""
    if image.size == size:
        return image.copy()
    return ImageOps.fit(image, size, resample)


def load_image_inputs(request: GenerationRequest, multiple: int) -> tuple[GenerationRequest, ImageInputs]:
    """Decode ``image`` (and ``mask``), settle the output size, and return the request with it.

    Raises ``InputError`` naming ``image`` or ``mask`` for a file that is not a usable picture.
    """
    assert request.image is not None
    given = load_reference_image(request.image, field="image").image
    if request.width is not None and request.height is not None:
        size = (request.width, request.height)
        if given.size != size:
            log.info("image: %dx%d scaled and centre-cropped to the requested %dx%d", *given.size, *size)
    else:
        size = derived_size(given.size, float(request.megapixels), multiple)
        log.info("image: %dx%d, output %dx%d (its aspect ratio at %s megapixel)", *given.size, *size, request.megapixels)
    mask = None
    if request.mask is not None:
        mask = load_reference_image(request.mask, field="mask").image.convert("L")
        if mask.size != given.size:
            log.info("mask: %dx%d resized to the image's %dx%d", *mask.size, *given.size)
            mask = mask.resize(given.size, Image.NEAREST)
        mask = fit(mask, size, Image.NEAREST)  # nearest: a hard mask stays hard, so "outside" stays exact
    if request.prompt_strength == 1 and mask is None:
        log.info("prompt_strength is 1: the image only sets the size; generating from the prompt alone")
    inputs = ImageInputs(fit(given, size), given, mask, request.prompt_strength, request.mask_keep_outside)
    return request.model_copy(update={"width": size[0], "height": size[1]}), inputs
