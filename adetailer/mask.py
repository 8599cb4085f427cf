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


def filter_k(detections: Detections, k: int, method: str = "Area") -> Detections:
    """The top ``k`` detections (all when ``k`` is 0): the largest (``Area``) or the most confident."""
    if method == "Area":
        return filter_k_largest(detections, k)
    ordered = _select(detections, sorted(range(len(detections)), key=lambda i: -detections.scores[i]))
    return ordered if k <= 0 else _select(ordered, list(range(min(k, len(ordered)))))


def offset(mask: Image.Image, x: int, y: int) -> Image.Image:
    """The mask moved ``x`` pixels right and ``y`` pixels up (ADetailer's signs); what leaves the image is gone."""
    if x == 0 and y == 0:
        return mask
    array = np.asarray(mask)
    moved = np.zeros_like(array)
    height, width = array.shape
    dy = -y  # rows grow downwards
    source = array[max(0, -dy):height - max(0, dy), max(0, -x):width - max(0, x)]
    moved[max(0, dy):max(0, dy) + source.shape[0], max(0, x):max(0, x) + source.shape[1]] = source
    return Image.fromarray(moved, mode="L")


def merge_invert(masks: Sequence[Image.Image], mode: str) -> list[Image.Image]:
    """``None``: the masks as they are; ``Merge``: their union, as one; ``Merge and Invert``: all but the union."""
    if mode == "None" or not masks:
        return list(masks)
    union = np.maximum.reduce([np.asarray(mask) for mask in masks])
    if mode == "Merge and Invert":
        union = 255 - union
    return [Image.fromarray(union.astype(np.uint8), mode="L")]


def mask_preprocess(masks: Sequence[Image.Image], x_offset: int = 0, y_offset: int = 0, dilate: int = 0,
                    mode: str = "None") -> list[Image.Image]:
    """ADetailer's order: each mask moved, then grown or shrunk, then merged or inverted; empty ones dropped."""
    prepared = [dilate_erode(offset(mask, x_offset, y_offset), dilate) for mask in masks]
    return [mask for mask in merge_invert(prepared, mode) if bounding_box(mask) is not None]
