"""Storyboards: several scenes, one character, one call, plus a numbered contact sheet."""

from __future__ import annotations

import math
from typing import Any, Sequence

from PIL import Image, ImageDraw, ImageFont

from pipeline.families.base import Family

SHEET_CELL = 320  # longest side of each thumbnail on the contact sheet, pixels


def scene_prompts(scenes: Sequence[str], character: str, style: str) -> list[str]:
    """The character description goes first in every scene, so the model weighs it most; the main
    prompt, if any, is appended as a shared style."""
    parts = lambda scene: [p for p in (character.strip(), scene, style.strip()) if p]  # noqa: E731
    return [", ".join(parts(scene)) for scene in scenes]


def storyboard_batch_size(family: Family, device: str, free_bytes: int | None, width: int, height: int,
                          scenes: int) -> int:
    """How many scenes to denoise at once. On a GPU, as many as fit in free memory; elsewhere one,
    since batching saves nothing on a CPU and risks memory on small machines."""
    if device != "cuda" or not free_bytes:
        return 1
    return min(scenes, family.images_that_fit(free_bytes, width, height))


def batches(count: int, size: int) -> list[range]:
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


def contact_sheet(images: Sequence[Any], cell: int = SHEET_CELL) -> Image.Image:
    """All scenes in a grid, numbered in reading order, on a white background."""
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    scale = cell / max(images[0].size)
    thumb = (max(1, round(images[0].width * scale)), max(1, round(images[0].height * scale)))
    gap = max(4, cell // 40)
    sheet = Image.new("RGB", (columns * (thumb[0] + gap) + gap, rows * (thumb[1] + gap) + gap), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=max(12, cell // 12))
    for number, image in enumerate(images, start=1):
        row, column = divmod(number - 1, columns)
        x, y = gap + column * (thumb[0] + gap), gap + row * (thumb[1] + gap)
        sheet.paste(image.convert("RGB").resize(thumb, Image.LANCZOS), (x, y))
        label = str(number)
        box = draw.textbbox((0, 0), label, font=font)
        pad = max(2, cell // 80)
        draw.rectangle((x, y, x + box[2] + 2 * pad, y + box[3] + 2 * pad), fill="black")
        draw.text((x + pad, y + pad), label, fill="white", font=font)
    return sheet
