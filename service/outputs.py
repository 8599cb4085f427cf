"""Write generated images to disk in the requested format."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from request.catalog import OUTPUT_FORMATS


def save_images(
    images: Sequence[Any], out_dir: Path, output_format: str, quality: int, names: Optional[Sequence[str]] = None
) -> list[Path]:
    """Save each image as ``<name>.<format>`` (default ``out-<i>``); quality applies to webp and jpg only."""
    suffix, pil_format = OUTPUT_FORMATS[output_format]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        path = out_dir / f"{names[index] if names else f'out-{index}'}{suffix}"
        options = {} if output_format == "png" else {"quality": quality}
        image.convert("RGB").save(path, format=pil_format, **options)
        paths.append(path)
    return paths
