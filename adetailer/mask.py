"""Mask work as small pure functions on PIL ``"L"`` masks and ``Detections``, each testable alone."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageFilter

from adetailer.detection import Box, Detections


def area_ratio(mask: Image.Image) -> float:
    """Share of the image the mask covers."""
    array = np.asarray(mask)
    return float((array > 0).mean())


def _select(detections: Detections, order: Sequence[int]) -> Detections:
    return replace(
        detections,
        boxes=[detections.boxes[i] for i in order],
        masks=[detections.masks[i] for i in order],
        scores=[detections.scores[i] for i in order],
    )


def filter_by_ratio(detections: Detections, low: float, high: float) -> Detections:
    """Keep detections whose mask covers between ``low`` and ``high`` of the image."""
    return _select(detections, [i for i, m in enumerate(detections.masks) if low <= area_ratio(m) <= high])


def sort_by_area(detections: Detections) -> Detections:
    """Largest first; ties keep detector order."""
    areas = [area_ratio(m) for m in detections.masks]
    return _select(detections, sorted(range(len(areas)), key=lambda i: -areas[i]))


def filter_k_largest(detections: Detections, k: int) -> Detections:
    """The ``k`` largest detections (all when ``k`` is 0), largest first."""
    ordered = sort_by_area(detections)
    return ordered if k <= 0 else _select(ordered, list(range(min(k, len(ordered)))))


def dilate_erode(mask: Image.Image, value: int) -> Image.Image:
    """Grow (``value`` > 0) or shrink the mask with a ``value``-wide square kernel.

    Same kernel as the ADetailer extension, so ``ad_dilate_erode`` means what its users expect.
    """
    if value == 0:
        return mask
    import cv2

    kernel = np.ones((abs(value), abs(value)), np.uint8)
    operation = cv2.dilate if value > 0 else cv2.erode
    return Image.fromarray(operation(np.asarray(mask), kernel, iterations=1), mode="L")


def blur(mask: Image.Image, radius: int) -> Image.Image:
    """Feather the edge so the inpainted region blends into the original."""
    return mask if radius <= 0 else mask.filter(ImageFilter.GaussianBlur(radius))


def merge(masks: Sequence[Image.Image], size: Optional[tuple[int, int]] = None) -> Image.Image:
    """Union of masks (pixel-wise maximum)."""
    if not masks:
        return Image.new("L", size or (1, 1), 0)
    merged = np.maximum.reduce([np.asarray(m) for m in masks])
    return Image.fromarray(merged.astype(np.uint8), mode="L")


def bounding_box(mask: Image.Image) -> Optional[Box]:
    """The mask's non-zero extent, or None for an empty mask."""
    return mask.getbbox()


def clip_box(x1: float, y1: float, x2: float, y2: float, size: tuple[int, int]) -> Optional[Box]:
    """Round outwards so the object is never cut, clip to the image, and drop boxes left empty
    (detections entirely off-image would otherwise give an all-black mask)."""
    width, height = size
    box = (
        max(0, min(width, math.floor(x1))),
        max(0, min(height, math.floor(y1))),
        max(0, min(width, math.ceil(x2))),
        max(0, min(height, math.ceil(y2))),
    )
    return box if box[2] > box[0] and box[3] > box[1] else None


def box_mask(box: Box, size: tuple[int, int]) -> Image.Image:
    """A filled rectangle mask, for detectors that only give boxes."""
    mask = Image.new("L", size, 0)
    x1, y1, x2, y2 = box
    mask.paste(255, (x1, y1, x2, y2))
    return mask
