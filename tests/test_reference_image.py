"""Bad or unusual reference images: refused with a message naming face_image, or handled right."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from request.errors import InputError
from request.reference_image import load_reference_image


def save(image: Image.Image, path: Path, **options: object) -> Path:
    image.save(path, **options)
    return path


def test_plain_rgb_loads_and_hash_depends_on_pixels(tmp_path: Path) -> None:
    image = Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3))
    a = load_reference_image(save(image, tmp_path / "a.png"))
    b = load_reference_image(save(image, tmp_path / "b.webp", lossless=True))
    c = load_reference_image(save(image.rotate(90), tmp_path / "c.png"))
    assert a.image.mode == "RGB" and a.image.size == (64, 64)
    assert a.content_hash == b.content_hash != c.content_hash


def test_not_an_image(tmp_path: Path) -> None:
    bad = tmp_path / "face.png"
    bad.write_text("this is not a picture")
    with pytest.raises(InputError) as caught:
        load_reference_image(bad)
    assert caught.value.field == "face_image" and "not a supported image" in str(caught.value)


def test_truncated_file(tmp_path: Path) -> None:
    data = io.BytesIO()
    Image.effect_noise((256, 256), 64).convert("RGB").save(data, format="JPEG")
    truncated = tmp_path / "t.jpg"
    truncated.write_bytes(data.getvalue()[: len(data.getvalue()) // 3])
    with pytest.raises(InputError, match="face_image.*could not be decoded"):
        load_reference_image(truncated)


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    """A 200 KB-ish PNG header declaring 100000 x 100000 pixels."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))
    with pytest.raises(InputError) as caught:
        load_reference_image(bomb)
    assert caught.value.field == "face_image" and ("pixels" in str(caught.value) or "DecompressionBomb" in str(caught.value))


def test_tiny_image_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="at least 16"):
        load_reference_image(save(Image.new("RGB", (8, 8)), tmp_path / "s.png"))


def test_cmyk_alpha_palette_and_16bit_become_rgb(tmp_path: Path) -> None:
    cmyk = load_reference_image(save(Image.new("CMYK", (32, 32), (0, 255, 0, 0)), tmp_path / "c.jpg"))
    assert cmyk.image.mode == "RGB" and cmyk.image.getpixel((16, 16))[1] < 60  # magenta ink: little green
    transparent = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    alpha = load_reference_image(save(transparent, tmp_path / "a.png"))
    assert alpha.image.getpixel((5, 5)) == (255, 255, 255)  # transparent composites on white
    palette = load_reference_image(save(Image.new("P", (32, 32), 3), tmp_path / "p.png"))
    assert palette.image.mode == "RGB"
    deep = load_reference_image(save(Image.new("I;16", (32, 32), 65535), tmp_path / "d.png"))
    assert deep.image.getpixel((0, 0)) == (255, 255, 255)


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 20, 20))  # white left half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    loaded = load_reference_image(save(image, tmp_path / "r.jpg", exif=exif, quality=95))
    assert loaded.image.size == (20, 40)
    assert loaded.image.getpixel((10, 5))[0] > 200 and loaded.image.getpixel((10, 35))[0] < 60


def test_missing_file_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="face_image.*not readable"):
        load_reference_image(tmp_path / "none.png")
