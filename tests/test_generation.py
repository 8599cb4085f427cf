"""In-process generation with tiny random SDXL: real diffusers, real files, real pixels."""

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from request.catalog import SCHEDULER_NAMES
from request.errors import InputError
from tests.conftest import predict_inputs


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize("fmt, pil_format", [("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP")])
def test_images_have_the_requested_size_and_format(predictor, fmt: str, pil_format: str) -> None:
    outputs = predictor.predict_sync(**predict_inputs(width=96, height=64, output_format=fmt))
    assert len(outputs) == 1 and Path(outputs[0]).suffix == f".{fmt}"
    with Image.open(outputs[0]) as image:
        assert image.format == pil_format and image.size == (96, 64)


def test_same_seed_same_pixels_different_seed_different(predictor) -> None:
    first = pixels(predictor.predict_sync(**predict_inputs(seed=7, output_format="png"))[0])
    again = pixels(predictor.predict_sync(**predict_inputs(seed=7, output_format="png"))[0])
    other = pixels(predictor.predict_sync(**predict_inputs(seed=8, output_format="png"))[0])
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.std() > 0  # an image, not a blank


def test_batch_image_i_is_seed_plus_i(predictor) -> None:
    batch = [pixels(p) for p in predictor.predict_sync(**predict_inputs(seed=20, num_outputs=2, output_format="png"))]
    alone = pixels(predictor.predict_sync(**predict_inputs(seed=21, output_format="png"))[0])
    assert len(batch) == 2 and not np.array_equal(batch[0], batch[1])
    assert np.abs(batch[1].astype(int) - alone.astype(int)).max() <= 2  # batched vs single: float noise only


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_every_scheduler_generates(predictor, scheduler: str) -> None:
    outputs = predictor.predict_sync(**predict_inputs(scheduler=scheduler, output_format="png"))
    assert pixels(outputs[0]).shape == (64, 64, 3)


def test_scheduler_choice_does_not_leak_into_the_next_request(predictor) -> None:
    before = pixels(predictor.predict_sync(**predict_inputs(scheduler="K_EULER", output_format="png"))[0])
    predictor.predict_sync(**predict_inputs(scheduler="KarrasDPM", output_format="png"))
    after = pixels(predictor.predict_sync(**predict_inputs(scheduler="K_EULER", output_format="png"))[0])
    assert np.array_equal(before, after)


def test_progress_and_timing_are_logged(predictor, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        predictor.predict_sync(**predict_inputs(preset="fast", num_inference_steps=None, seed=3))
    text = caplog.text
    assert "preset fast: 12 steps, guidance 6.5" in text
    assert "Using seed: 3" in text
    assert "step 1/12" in text and "step 12/12" in text
    assert "generated in " in text and " s/step)" in text


def test_random_seed_is_logged(predictor, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        predictor.predict_sync(**predict_inputs(seed=None))
    assert "Using seed: " in caplog.text


def test_bad_input_raises_and_the_predictor_keeps_working(predictor) -> None:
    with pytest.raises(InputError, match="width"):
        predictor.predict_sync(**predict_inputs(width=100000, height=64))
    assert predictor.predict_sync(**predict_inputs())


def test_previous_outputs_are_cleaned_up(predictor, monkeypatch) -> None:
    """Kept while Cog may still read them (4 x COG_MAX_CONCURRENCY later predictions, and ten
    minutes, here none), then removed."""
    monkeypatch.setattr(predictor.outputs, "min_age_s", 0)
    first = Path(predictor.predict_sync(**predict_inputs())[0])
    later = [Path(predictor.predict_sync(**predict_inputs())[0]) for _ in range(3)]
    assert first.exists()
    last = Path(predictor.predict_sync(**predict_inputs())[0])  # the 4th later one
    assert last.exists() and all(path.exists() for path in later) and not first.exists()


def test_setup_does_not_load_a_loaded_model_twice(predictor, tiny_weights: Path, caplog: pytest.LogCaptureFixture) -> None:
    from predict import Predictor

    with caplog.at_level(logging.INFO):
        other = Predictor()
        other.setup(str(tiny_weights))
    assert other.service.model is predictor.service.model
    assert "already loaded; reusing it" in caplog.text
