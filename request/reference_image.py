"""Open a caller's reference image safely: any bad file becomes an ``InputError`` naming the field.

A URL (http, https or data:) is fetched through the fenced fetcher (``netfetch``): global addresses
only unless ``IMAGE_ALLOW_PRIVATE_URLS=1``, capped at ``MAX_FILE_BYTES`` while it downloads, within
``IMAGE_FETCH_TIMEOUT_S``. A local path is read only when an in-process caller passes a
``pathlib.Path`` (the request models never turn a caller's string into one).

Checked before any pixel is decoded: the file size and the declared dimensions (a small PNG can
declare 100k x 100k pixels and exhaust memory when decoded). Then decoded, turned upright from its
EXIF orientation, and flattened to RGB (CMYK, 16-bit, palette, alpha on white).
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Union

from PIL import Image, ImageOps, UnidentifiedImageError

import settings
from netfetch import FetchError, FetchPolicy
from netfetch.inputs import fetch_bytes
from request.errors import InputError

MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_PIXELS = 40_000_000  # e.g. 8000 x 5000; far beyond what a face reference needs
MIN_SIDE = 16


@dataclass(frozen=True)
class ReferenceImage:
    image: Image.Image  # RGB, upright
    content_hash: str  # of the decoded pixels: the same picture re-encoded hits the same cache entry


def _flatten(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits rather than clip
        return image.point(lambda value: value / 256).convert("L").convert("RGB")
    return image.convert("RGB")


def short(value: str) -> str:
    """A URL as messages show it: without its query, a data: URI by its type and length."""
    if value.startswith("data:"):
        return f"{value.partition(',')[0]},<{len(value)} characters>"
    return value.split("?")[0][:300]


def _open(source: Union[os.PathLike, str], field: str) -> tuple[IO[bytes], str]:
    """The file behind ``source`` and its name for messages, or ``InputError`` for ``field``."""
    if isinstance(source, str):
        policy = FetchPolicy(field=field, trusted=bool(settings.get("IMAGE_ALLOW_PRIVATE_URLS")),
                             deadline_s=float(settings.get("IMAGE_FETCH_TIMEOUT_S")), max_bytes=MAX_FILE_BYTES,
                             concurrency=4)
        try:
            return io.BytesIO(fetch_bytes(source, policy)), short(source)
        except FetchError as error:
            raise InputError(field, short(source), str(error).removeprefix(f"{field}: ")) from None
    path = Path(source)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise InputError(field, str(path), f"file not readable ({error.strerror})") from None
    if size > MAX_FILE_BYTES:
        raise InputError(field, path.name, f"file of {size} bytes; at most {MAX_FILE_BYTES} allowed")
    return path.open("rb"), path.name


def load_reference_image(source: Union[os.PathLike, str], field: str = "face_image") -> ReferenceImage:
    """Decode ``source`` (a URL string, or an in-process caller's path) into an upright RGB image,
    or raise ``InputError`` for ``field``."""
    handle, name = _open(source, field)
    with handle:
        return _decode(handle, name, field)


def _decode(handle: IO[bytes], name: str, field: str) -> ReferenceImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(handle) as opened:
                width, height = opened.size
                if width * height > MAX_PIXELS:
                    raise InputError(field, name, f"{width}x{height} pixels; at most {MAX_PIXELS} pixels allowed")
                if min(width, height) < MIN_SIDE:
                    raise InputError(field, name, f"{width}x{height} pixels; each side must be at least {MIN_SIDE}")
                opened.load()
                upright = ImageOps.exif_transpose(opened)
                image = _flatten(upright)
    except InputError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning, ImportError) as error:
        # ImportError: once ultralytics is loaded (ADetailer's YOLO backend) it patches Image.open to
        # import a HEIF plugin on any unidentified file; with installs blocked that import fails.
        raise InputError(field, name, f"not a supported image ({type(error).__name__})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise InputError(field, name, f"image could not be decoded: {error}") from None
    digest = hashlib.sha256(image.tobytes()).hexdigest()[:32]
    return ReferenceImage(image=image, content_hash=f"{digest}-{image.width}x{image.height}")
