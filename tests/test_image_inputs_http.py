"""Image inputs, progress and the schema through Cog's real HTTP server (coglet), as Replicate calls it."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from tests.test_http_server import decode, refused_field

# replicate-python's own progress parser: replicate/prediction.py, Prediction.Progress._pattern
# (github.com/replicate/replicate-python). It reads the last log line that matches, from its start.
REPLICATE_PROGRESS = re.compile(r"^\s*(?P<percentage>\d+)%\s*\|.+?\|\s*(?P<current>\d+)\/(?P<total>\d+)")


def parse_progress(line: str) -> tuple[int, int, int] | None:
    """As ``Prediction.Progress.parse`` reads one stripped line: (percentage, current, total)."""
    line = line.strip()
    if not REPLICATE_PROGRESS.match(line):
        return None
    matches = REPLICATE_PROGRESS.findall(line)
    return tuple(map(int, matches[0])) if len(matches) == 1 else None


def png_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def bytes_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    return Image.fromarray((np.random.RandomState(3).rand(64, 64, 3) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (24, 24, 40, 40))
    return mask


def test_a_twenty_step_prediction_reports_progress_replicate_reads(cog_server) -> None:
    response = cog_server.predict(prompt="a kite", width=64, height=64, num_inference_steps=20, seed=4)
    assert response["status"] == "succeeded", response
    found = [parsed for parsed in map(parse_progress, response["logs"].split("\n")) if parsed]
    assert [percentage for percentage, _, _ in found] == list(range(5, 101, 5))
    assert [(current, total) for _, current, total in found] == [(i, 20) for i in range(1, 21)]
    assert "step 20/20" in response["logs"]  # the human-readable part is still there


@pytest.mark.parametrize("model, multiple", [("sdxl", 8), ("flux-schnell", 16)])
def test_img2img_and_inpainting_over_http(cog_server, picture, mask, model: str, multiple: int) -> None:
    common = dict(prompt="a harbour", model=model, seed=6, output_format="png", num_inference_steps=4)
    img2img = cog_server.predict(**common, image=png_url(picture.resize((80, 48))), prompt_strength=0.5, megapixels="0.25")
    assert img2img["status"] == "succeeded", img2img
    size = decode(img2img["output"][0]).size
    assert size[0] % multiple == 0 and size[1] % multiple == 0 and abs(size[0] / size[1] - 80 / 48) < 0.05
    assert img2img["metrics"]["steps"] == 2 and "img2img:" in img2img["logs"]
    inpaint = cog_server.predict(**common, image=png_url(picture), mask=png_url(mask), width=64, height=64)
    assert inpaint["status"] == "succeeded", inpaint
    out = np.asarray(decode(inpaint["output"][0]).convert("RGB"))
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], np.asarray(picture)[outside])
    assert not np.array_equal(out[~outside], np.asarray(picture)[~outside])


def test_bad_image_inputs_are_refused_by_name_and_the_server_keeps_serving(cog_server, picture, mask) -> None:
    common = dict(prompt="x", width=64, height=64, num_inference_steps=2)
    image = png_url(picture)
    no_image = cog_server.predict(**common, mask=png_url(mask))
    assert no_image["status"] == "failed" and "invalid input mask=" in no_image["error"] and "needs image" in no_image["error"]
    png = io.BytesIO()
    picture.save(png, "PNG")
    bomb = io.BytesIO()
    Image.new("L", (9000, 9000)).save(bomb, "PNG")  # 81 megapixels of zeros: a few kilobytes
    for field in ("image", "mask"):
        for data, words in ((b"not an image at all", "not a supported image"),
                            (png.getvalue()[: len(png.getvalue()) // 2], "could not be decoded"),
                            (bomb.getvalue(), "pixels; at most")):
            inputs = dict(common, image=image, mask=png_url(mask))
            inputs[field] = bytes_url(data)
            response = cog_server.predict(**inputs)
            assert response["status"] == "failed", (field, words, response)
            assert f"invalid input {field}=" in response["error"] and words in response["error"], response["error"]
    black = cog_server.predict(**common, image=image, mask=png_url(Image.new("L", (64, 64))), output_format="png")
    assert black["status"] == "succeeded" and "nothing to repaint" in black["logs"]
    assert np.array_equal(np.asarray(decode(black["output"][0]).convert("RGB")), np.asarray(picture))
    assert refused_field(cog_server.predict(**common, image=image, prompt_strength=1.5)) == "prompt_strength"
    assert cog_server.predict(**common)["status"] == "succeeded"


def test_the_server_enforces_the_schema_written_from_predict_py(cog_server) -> None:
    log = cog_server.log_path.read_text()
    assert "Loaded OpenAPI schema from .cog/openapi_schema.json" in log and "Running without schema" not in log
    assert refused_field(cog_server.predict(prompt="x", num_inference_steps=300)) == "num_inference_steps"
    assert refused_field(cog_server.predict(prompt="x", megapixels="2")) == "megapixels"
    # coglet drops an input the schema does not name, and says which in its log; predict() never sees it
    misspelt = cog_server.predict(prompt="x", width=64, height=64, num_inference_steps=2, num_inference_stepz=3)
    assert misspelt["status"] == "succeeded" and misspelt["metrics"]["steps"] == 2
    assert "Stripped unknown input fields" in cog_server.log_path.read_text() and "num_inference_stepz" in cog_server.log_path.read_text()


def test_progress_parser_reads_only_tqdm_lines() -> None:
    assert parse_progress(" 25%|██▌       | 5/20 [00:01<00:03,  4.00it/s, step 5/20 0.250 s]") == (25, 5, 20)
    assert parse_progress("step 5/20 (0.250 s)") is None  # the old line: the progress bar stayed empty
