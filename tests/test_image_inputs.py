"""The caller's own pictures: img2img (``image``, ``prompt_strength``), inpainting (``mask``,
``mask_keep_outside``), ``megapixels``, and their combinations, on the real pipelines with tiny
random weights. Random weights draw nothing recognisable, so "keeps the layout" is measured against
what this very VAE makes of the input (its round trip), and "keeps the outside" byte for byte."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from request.errors import InputError
from request.generation import parse_request
from request.image_inputs import derived_size, fit
from tests.conftest import predict_inputs


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.RandomState(7)
    coarse = np.zeros((64, 64, 3), np.uint8)
    coarse[:, 32:] = 230  # dark left half, light right half
    coarse[16:48, 8:24] = (200, 40, 40)
    paths = {"coarse": folder / "coarse.png", "noise": folder / "noise.png", "mask": folder / "mask.png",
             "black": folder / "black.png", "small_mask": folder / "small_mask.png", "wide": folder / "wide.png"}
    Image.fromarray(coarse).save(paths["coarse"])
    Image.fromarray((rng.rand(64, 64, 3) * 255).astype(np.uint8)).save(paths["noise"])
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (24, 24, 40, 40))
    mask.save(paths["mask"])
    Image.new("L", (64, 64), 0).save(paths["black"])
    mask.resize((32, 32), Image.NEAREST).save(paths["small_mask"])
    Image.fromarray((rng.rand(48, 80, 3) * 255).astype(np.uint8)).save(paths["wide"])
    return paths


def run(predictor, **overrides: object) -> Path:
    inputs = predict_inputs(**{"output_format": "png", "num_inference_steps": 4, **overrides})
    return predictor.predict_sync(**inputs)[0]


@pytest.fixture
def exact_vae(predictor):
    """The tiny random VAE is unlike a trained one in two ways that drown any picture: its encoder's
    log-variance is near 0 (sampling adds noise of about 1) and its latent means are about 0.08
    (0.01 once scaled by the SDXL scaling factor), where a trained VAE's scaled latents are about 1.
    For the tests that compare with what the VAE makes of the input, the encoder's output layer is
    set to a sharp posterior with means of a trained VAE's size (the pipelines still encode, sample
    and decode, for real), and put back after."""
    import torch

    conv = predictor.service.model.pipe.vae.quant_conv
    half = conv.bias.shape[0] // 2
    bias, weight = conv.bias.detach().clone(), conv.weight.detach().clone()
    try:
        with torch.no_grad():
            conv.weight[:half] *= 100
            conv.bias[:half] *= 100
            conv.weight[half:] = 0
            conv.bias[half:] = -30.0
        yield
    finally:
        with torch.no_grad():
            conv.bias.copy_(bias)
            conv.weight.copy_(weight)


def vae_round_trip(predictor, image: Image.Image) -> np.ndarray:
    """What the loaded model's own VAE makes of ``image``: the best any img2img can keep."""
    import torch

    pipe = predictor.service.model.pipe
    processor = pipe.image_processor
    with torch.inference_mode():
        tensor = processor.preprocess(image).to(pipe.vae.device, pipe.vae.dtype)
        latents = pipe.vae.encode(tensor).latent_dist.mode()
        decoded = pipe.vae.decode(latents).sample
    return np.asarray(processor.postprocess(decoded, output_type="pil")[0]).astype(np.int16)


def test_low_strength_keeps_the_input_high_strength_leaves_it(predictor, pictures, exact_vae) -> None:
    source = Image.open(pictures["coarse"]).convert("RGB")
    round_trip = vae_round_trip(predictor, source)
    low = pixels(run(predictor, image=Path(pictures["coarse"]), prompt_strength=0.1, width=64, height=64))
    high = pixels(run(predictor, image=Path(pictures["coarse"]), prompt_strength=0.9, width=64, height=64))
    text = pixels(run(predictor, width=64, height=64))
    distance = {name: np.abs(value - round_trip).mean() for name, value in (("low", low), ("high", high), ("text", text))}
    assert distance["low"] < 0.5 * distance["high"] and distance["low"] < 0.5 * distance["text"], distance
    other = pixels(run(predictor, image=Path(pictures["noise"]), prompt_strength=0.1, width=64, height=64))
    # the image, not the prompt, decides a low-strength result
    assert np.abs(other - low).mean() > 3 * distance["low"]


def test_strength_one_is_the_text_image_and_zero_the_input(predictor, pictures, caplog) -> None:
    text = pixels(run(predictor, width=64, height=64))
    with caplog.at_level(logging.INFO):
        ignored = pixels(run(predictor, image=Path(pictures["noise"]), prompt_strength=1.0, width=64, height=64))
    assert np.array_equal(ignored, text)
    assert "prompt_strength is 1: the image only sets the size" in caplog.text
    unchanged = pixels(run(predictor, image=Path(pictures["noise"]), prompt_strength=0.0, width=64, height=64))
    assert np.array_equal(unchanged, pixels(pictures["noise"]))


def test_steps_run_are_steps_times_strength_never_zero(predictor, pictures, caplog) -> None:
    with caplog.at_level(logging.INFO):
        run(predictor, image=Path(pictures["noise"]), prompt_strength=0.5, width=64, height=64, num_inference_steps=4)
    assert "step 2/2" in caplog.text and "step 3/" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run(predictor, image=Path(pictures["noise"]), prompt_strength=0.05, width=64, height=64, num_inference_steps=4)
    assert "20 steps asked for so that one runs" in caplog.text and "step 1/1" in caplog.text


def test_inpainting_keeps_the_outside_exactly_or_within_the_vae_round_trip(predictor, pictures, exact_vae) -> None:
    source = pixels(pictures["noise"])
    mask = np.asarray(Image.open(pictures["mask"])) > 0
    kept = pixels(run(predictor, image=Path(pictures["noise"]), mask=Path(pictures["mask"]), width=64, height=64))
    assert np.array_equal(kept[~mask], source[~mask])  # byte-identical outside
    assert np.abs(kept[mask] - source[mask]).mean() > 5  # repainted inside
    loose = pixels(run(predictor, image=Path(pictures["noise"]), mask=Path(pictures["mask"]), width=64, height=64,
                       mask_keep_outside=False))
    round_trip = vae_round_trip(predictor, Image.open(pictures["noise"]).convert("RGB"))
    far = np.ones((64, 64), bool)
    far[8:56, 8:56] = False  # 16 px and more from the mask: latents there are the input's own
    text = pixels(run(predictor, width=64, height=64))
    near, away = np.abs(loose[far] - round_trip[far]).mean(), np.abs(text[far] - round_trip[far]).mean()
    assert not np.array_equal(loose[~mask], source[~mask])
    assert near < 0.5 * away, (near, away)
    assert np.array_equal(loose[mask], kept[mask])  # the switch changes only the outside


def test_an_all_black_mask_returns_the_input_unchanged(predictor, pictures, caplog) -> None:
    with caplog.at_level(logging.INFO):
        out = run(predictor, image=Path(pictures["noise"]), mask=Path(pictures["black"]), width=64, height=64)
    assert np.array_equal(pixels(out), pixels(pictures["noise"]))
    assert "the mask is all black: nothing to repaint; returning the input image unchanged" in caplog.text


def test_a_mask_of_another_size_is_resized_and_says_so(predictor, pictures, caplog) -> None:
    with caplog.at_level(logging.INFO):
        out = run(predictor, image=Path(pictures["noise"]), mask=Path(pictures["small_mask"]), width=64, height=64)
    assert "mask: 32x32 resized to the image's 64x64" in caplog.text
    mask = np.asarray(Image.open(pictures["mask"])) > 0
    assert np.array_equal(pixels(out)[~mask], pixels(pictures["noise"])[~mask])


def test_the_output_follows_the_images_shape_and_megapixels(predictor, pictures) -> None:
    assert derived_size((80, 48), 1.0, 8) == (1320, 792)
    assert derived_size((80, 48), 0.25, 16) == (656, 400)
    assert derived_size((48, 80), 0.25, 8) == (400, 664)
    assert derived_size((20000, 100), 1.0, 8) == (2048, 72)  # clamped to the bounds of width and height
    out = Image.open(run(predictor, image=Path(pictures["wide"]), megapixels="0.25", prompt_strength=0.1,
                         width=None, height=None, num_inference_steps=2))
    assert out.size == (664, 400)
    assert fit(Image.new("RGB", (100, 50)), (50, 50)).size == (50, 50)  # covered and cropped, not stretched
    bucket = parse_request(dict(prompt="x", aspect_ratio="16:9", megapixels="0.25"))
    assert (bucket.width, bucket.height) == (672, 384)


def test_identity_and_adetailer_on_an_input_image(predictor, pictures, ip_adapter_weights, monkeypatch, caplog) -> None:
    monkeypatch.setenv("IP_ADAPTER_WEIGHTS", str(ip_adapter_weights))
    base = dict(image=Path(pictures["noise"]), prompt_strength=0.6, width=64, height=64)
    plain = pixels(run(predictor, **base))
    with caplog.at_level(logging.INFO):
        identity = pixels(run(predictor, **base, face_image=Path(pictures["coarse"])))
    assert "identity from face_image" in caplog.text and not np.array_equal(plain, identity)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run(predictor, **base, adetailer=True)
        run(predictor, **base, mask=Path(pictures["mask"]), adetailer=True)
    assert caplog.text.count("ADetailer face: nothing detected") == 2 and "inpainting 1 image(s)" in caplog.text


@pytest.mark.parametrize("overrides, field, words", [
    (dict(mask="https://example.com/m.png"), "mask", "needs image"),
    (dict(prompt_strength=0.5), "prompt_strength", "only applies with image"),
    (dict(image="https://example.com/i.png", mask_keep_outside=False), "mask_keep_outside", "only applies with mask"),
    (dict(image="https://example.com/i.png", scenes="a\nb"), "image", "not with scenes"),
    (dict(image="https://example.com/i.png", aspect_ratio="16:9"), "aspect_ratio", "keeps the image's aspect ratio"),
    (dict(width=512, height=512, megapixels="0.25"), "megapixels", "leave it at 1 with width and height"),
    (dict(image="https://example.com/i.png", prompt_strength=1.5), "prompt_strength", "from 0 to 1"),
])
def test_refused_combinations_name_the_field(overrides: dict, field: str, words: str) -> None:
    with pytest.raises(InputError) as error:
        parse_request(dict(prompt="x", **overrides))
    assert error.value.field == field and words in str(error.value)
