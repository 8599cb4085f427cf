"""Identity lock through the predictor: tiny SDXL plus tiny IP-Adapter in h94's real key layout."""

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from request.errors import InputError
from tests.conftest import predict_inputs


@pytest.fixture
def adapter_env(ip_adapter_weights: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IP_ADAPTER_WEIGHTS", str(ip_adapter_weights))
    return ip_adapter_weights


@pytest.fixture(scope="module")
def face(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from skimage import data

    path = tmp_path_factory.mktemp("faces") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def pixels(outputs: list) -> np.ndarray:
    return np.asarray(Image.open(outputs[0]))


def test_reference_face_changes_the_image_and_absence_changes_nothing(predictor, adapter_env, face, caplog) -> None:
    baseline = pixels(predictor.predict_sync(**predict_inputs(seed=40, output_format="png")))
    with caplog.at_level(logging.INFO):
        with_face = pixels(predictor.predict_sync(**predict_inputs(seed=40, output_format="png", face_image=Path(face))))
    assert not np.array_equal(baseline, with_face)
    assert "IP-Adapter plus-face: identity from face_image at scale 0.65" in caplog.text
    # the adapter is now loaded; a request without face_image is pixel-identical to before it was
    after = pixels(predictor.predict_sync(**predict_inputs(seed=40, output_format="png")))
    assert np.array_equal(baseline, after)


def test_scale_zero_equals_no_adapter(predictor, adapter_env, face) -> None:
    baseline = pixels(predictor.predict_sync(**predict_inputs(seed=41, output_format="png")))
    zero = pixels(predictor.predict_sync(**predict_inputs(seed=41, output_format="png", face_image=Path(face), ip_adapter_scale=0.0)))
    assert np.array_equal(baseline, zero)


def test_preset_scale_and_override(predictor, adapter_env, face, caplog) -> None:
    with caplog.at_level(logging.INFO):
        predictor.predict_sync(**predict_inputs(preset="quality", num_inference_steps=2, face_image=Path(face)))
        predictor.predict_sync(**predict_inputs(face_image=Path(face), ip_adapter_scale=1.2))
    assert "at scale 0.8" in caplog.text and "at scale 1.2" in caplog.text


def test_embedding_is_computed_once_per_distinct_image(predictor, adapter_env, tmp_path, caplog) -> None:
    """The first request (which embeds the face) and the second (cache hit) make the same image."""
    from skimage import data

    fresh = tmp_path / "coffee.png"  # a picture no other test embedded
    Image.fromarray(data.coffee()).save(fresh)
    copy = tmp_path / "same-coffee.webp"
    Image.open(fresh).save(copy, lossless=True)  # same pixels, another file and format
    with caplog.at_level(logging.INFO):
        first = pixels(predictor.predict_sync(**predict_inputs(seed=43, output_format="png", face_image=Path(fresh))))
        second = pixels(predictor.predict_sync(**predict_inputs(seed=43, output_format="png", face_image=Path(copy))))
    assert caplog.text.count("reference image embedded in") == 1
    assert "reference image embedding cache hit" in caplog.text
    assert np.array_equal(first, second)


def test_bad_face_image_is_refused_and_service_keeps_working(predictor, adapter_env, tmp_path) -> None:
    junk = tmp_path / "face.jpg"
    junk.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(InputError) as caught:
        predictor.predict_sync(**predict_inputs(face_image=Path(junk)))
    assert caught.value.field == "face_image"
    assert predictor.predict_sync(**predict_inputs())


def test_plain_variant(predictor, ip_adapter_weights, face, monkeypatch, caplog) -> None:
    monkeypatch.setenv("IP_ADAPTER_WEIGHTS", str(ip_adapter_weights))
    monkeypatch.setenv("IP_ADAPTER_VARIANT", "plain")
    baseline = pixels(predictor.predict_sync(**predict_inputs(seed=42, output_format="png")))
    with caplog.at_level(logging.INFO):
        plain = pixels(predictor.predict_sync(**predict_inputs(seed=42, output_format="png", face_image=Path(face))))
    assert "IP-Adapter plain" in caplog.text and not np.array_equal(baseline, plain)
    assert np.array_equal(baseline, pixels(predictor.predict_sync(**predict_inputs(seed=42, output_format="png"))))


def test_missing_adapter_weights_say_where_they_were_expected(predictor, face, tmp_path, monkeypatch) -> None:
    from pipeline.ip_adapter import IPAdapterUnavailable

    monkeypatch.setenv("IP_ADAPTER_WEIGHTS", str(tmp_path / "nothing-here"))
    with pytest.raises(IPAdapterUnavailable, match="nothing-here.*ip-adapter-plus-face_sdxl_vit-h.safetensors"):
        predictor.predict_sync(**predict_inputs(face_image=Path(face)))
    assert predictor.predict_sync(**predict_inputs())


def test_storyboard_with_one_identity(predictor, adapter_env, face, caplog) -> None:
    with caplog.at_level(logging.INFO):
        outputs = predictor.predict_sync(**predict_inputs(
            prompt="", scenes="waking up\ncooking breakfast", character="a woman with short hair",
            face_image=Path(face), output_format="png",
        ))
    assert [Path(p).name for p in outputs] == ["scene-01.png", "scene-02.png", "contact-sheet.png"]
    assert caplog.text.count("IP-Adapter plus-face: identity from face_image") == 1


def test_a_preload_waits_for_a_request_denoising_on_the_same_pipeline(predictor, adapter_env, monkeypatch) -> None:
    """``PRELOAD_OPTIONAL=ip_adapter`` loads the adapter on a thread after READY, which swaps the
    denoiser's attention processors: it must not do that under a request that is denoising."""
    import threading
    import time

    import pipeline.progress as progress
    from pipeline.families.sdxl import SDXL
    from pipeline.loading.cache import MODEL_CACHE
    from startup.optional_parts import start_preload

    model_id = predictor.service.default_source.model_id
    inputs = predict_inputs(seed=9, num_inference_steps=4, output_format="png")
    MODEL_CACHE.evict(model_id)  # a fresh pipeline without the adapter (it goes with the model)
    alone = pixels(predictor.predict_sync(**inputs))
    MODEL_CACHE.evict(model_id)

    in_pipeline = threading.Event()
    family = type(SDXL)
    real_load = family.load_ip_adapter

    def slow_load(*args: object, **kwargs: object) -> None:
        real_load(*args, **kwargs)
        in_pipeline.set()
        time.sleep(1.0)  # the adapter's processors stay in the pipeline for a while

    preloads: list = []
    real_step = progress.StepProgress.__call__

    def step(self, pipe, index, timestep, callback_kwargs):  # type: ignore[no-untyped-def]
        if index == 0 and not preloads:
            preloads.append(start_preload(predictor.service.model, ["ip_adapter"]))
            in_pipeline.wait(2.0)  # unguarded, the preload is now inside the pipeline we denoise with
        return real_step(self, pipe, index, timestep, callback_kwargs)

    monkeypatch.setattr(family, "load_ip_adapter", slow_load)
    monkeypatch.setattr(progress.StepProgress, "__call__", step)
    raced = pixels(predictor.predict_sync(**inputs))
    preloads[0].join(60)
    assert np.array_equal(alone, raced)
