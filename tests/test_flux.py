"""Flux dev and schnell through the predictor, beside SDXL, with tiny random weights."""

import logging
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from request.errors import InputError
from tests.conftest import predict_inputs


@pytest.fixture(scope="module")
def multi(tiny_weights: Path, flux_weights: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A predictor whose operator configured SDXL (default) and both Flux models."""
    saved = dict(os.environ)
    os.environ["FLUX_DEV_WEIGHTS"] = str(flux_weights["flux-dev"])
    os.environ["FLUX_SCHNELL_WEIGHTS"] = str(flux_weights["flux-schnell"])
    os.environ["STARTUP_TIMINGS_PATH"] = str(tmp_path_factory.mktemp("t") / "t.json")
    try:
        from predict import Predictor

        predictor = Predictor()
        predictor.setup(str(tiny_weights))
        yield predictor
    finally:
        os.environ.clear()
        os.environ.update(saved)


def pixels(outputs: list) -> np.ndarray:
    return np.asarray(Image.open(outputs[0]))


def test_available_models_are_listed_at_setup(multi) -> None:
    assert multi.service.available == ("sdxl", "flux-dev", "flux-schnell")


def test_flux_dev_generates_with_its_presets(multi, caplog) -> None:
    with caplog.at_level(logging.INFO):
        first = pixels(multi.predict_sync(**predict_inputs(model="flux-dev", num_inference_steps=None, preset="ultra_fast", seed=5,
                                                      output_format="png")))
    again = pixels(multi.predict_sync(**predict_inputs(model="flux-dev", num_inference_steps=None, preset="ultra_fast", seed=5,
                                                  output_format="png")))
    other = pixels(multi.predict_sync(**predict_inputs(model="flux-dev", num_inference_steps=2, seed=6, output_format="png")))
    assert first.shape == (64, 64, 3) and np.array_equal(first, again) and not np.array_equal(first, other)
    assert "preset ultra_fast: 12 steps, guidance 3.5" in caplog.text
    assert "with flux-dev (flow-matching Euler)" in caplog.text and "step 12/12" in caplog.text


def test_flux_schnell_defaults_to_four_steps_without_guidance(multi, caplog) -> None:
    with caplog.at_level(logging.INFO):
        out = multi.predict_sync(**predict_inputs(model="flux-schnell", num_inference_steps=None, width=128, height=96))
    assert Image.open(out[0]).size == (128, 96)
    assert "preset balanced: 4 steps, guidance 0.0" in caplog.text


def test_switching_models_loads_each_once(multi, caplog) -> None:
    multi.predict_sync(**predict_inputs(model="flux-schnell"))
    with caplog.at_level(logging.INFO):
        multi.predict_sync(**predict_inputs(model="sdxl"))
        multi.predict_sync(**predict_inputs(model="flux-schnell"))
        multi.predict_sync(**predict_inputs())
    assert " loaded in " not in caplog.text
    assert caplog.text.count("already loaded; reusing it") >= 3


@pytest.mark.parametrize(
    "overrides, field, words",
    [
        ({"negative_prompt": "blurry"}, "negative_prompt", "not supported by flux-dev"),
        ({"scheduler": "DDIM"}, "scheduler", "one sampler"),
        ({"width": 72, "height": 64}, "width", "a multiple of 16 for flux-dev"),
        ({"adetailer": True, "ad_negative_prompt": "ugly"}, "ad_negative_prompt", "not supported by flux-dev"),
    ],
)
def test_options_flux_cannot_honour_are_refused(multi, overrides: dict, field: str, words: str) -> None:
    with pytest.raises(InputError) as caught:
        multi.predict_sync(**predict_inputs(model="flux-dev", **overrides))
    assert caught.value.field == field and words in str(caught.value)


def test_an_unavailable_model_is_refused_with_the_available_ones(multi) -> None:
    from request.generation import requested_model

    with pytest.raises(InputError, match="model='flux-dev'.*available here: sdxl"):
        requested_model("flux-dev", "sdxl", ("sdxl",))


def test_least_recently_used_model_is_evicted_when_memory_is_short(multi, monkeypatch, caplog) -> None:
    from pipeline.loading.cache import MODEL_CACHE

    for key in [k for k in MODEL_CACHE.ids() if k.startswith("flux-dev:")]:
        MODEL_CACHE.evict(key)
    multi.predict_sync(**predict_inputs(model="flux-schnell"))
    multi.predict_sync(**predict_inputs(model="sdxl"))  # flux-schnell is now the least recently used
    monkeypatch.setenv("MODEL_MEMORY_BUDGET_GB", str(MODEL_CACHE.resident_bytes() / 1e9))  # no room for more
    with caplog.at_level(logging.INFO):
        multi.predict_sync(**predict_inputs(model="flux-dev"))
    assert "(least recently used) to make room for flux-dev:" in caplog.text
    assert not any(key.startswith("flux-schnell:") for key in MODEL_CACHE.ids())
    monkeypatch.delenv("MODEL_MEMORY_BUDGET_GB")
    with caplog.at_level(logging.INFO):
        multi.predict_sync(**predict_inputs(model="flux-schnell"))  # loads again
    assert "model flux-schnell:" in caplog.text and " loaded in " in caplog.text


def test_adetailer_with_flux_uses_flux_inpaint_on_the_same_weights(multi, caplog) -> None:
    from skimage import data

    from adetailer.mask import blur, dilate_erode
    from adetailer.runner import detector_for, inpaint_pipeline, run_adetailer
    from pipeline.select import select_model
    from presets import resolve
    from request.adetailer import parse_adetailer_args

    service = multi.service
    model = select_model("flux-dev", service.default_source, service.backend)
    inpaint = inpaint_pipeline(model)
    assert type(inpaint).__name__ == "FluxInpaintPipeline" and inpaint.transformer is model.pipe.transformer
    photo = Image.fromarray(data.astronaut())
    args = parse_adetailer_args({"adetailer": True, "ad_use_steps": True, "ad_steps": 3})
    with caplog.at_level(logging.INFO):
        (fixed,) = run_adetailer(model, [photo], args, ["an astronaut"], "", resolve("flux-dev", "fast"), seed=1)
    mask = detector_for("face").detect(photo, args.ad_confidence).masks[0]
    allowed = np.asarray(blur(dilate_erode(mask, args.ad_dilate_erode), args.ad_mask_blur)) > 0
    changed = np.any(np.asarray(photo) != np.asarray(fixed), axis=2)
    assert changed.any() and not changed[~allowed].any()
    assert "ADetailer face: 1 detected" in caplog.text


def test_adetailer_flag_over_flux_request(multi) -> None:
    out = multi.predict_sync(**predict_inputs(model="flux-schnell", adetailer=True, adetailer_hands=True))
    assert Image.open(out[0]).size == (64, 64)


def test_flux_identity_with_the_xlabs_adapter(multi, tmp_path, monkeypatch, caplog) -> None:
    from skimage import data

    from tests.fixtures.make_flux_ip_adapter import build_flux_ip_adapter

    monkeypatch.setenv("FLUX_IP_ADAPTER_WEIGHTS", str(build_flux_ip_adapter(tmp_path / "flux-ip", "tiny")))
    face = tmp_path / "face.png"
    Image.fromarray(data.astronaut()).save(face)
    plain = pixels(multi.predict_sync(**predict_inputs(model="flux-dev", seed=8, output_format="png")))
    with caplog.at_level(logging.INFO):
        first = pixels(multi.predict_sync(**predict_inputs(model="flux-dev", seed=8, output_format="png", face_image=Path(face))))
        again = pixels(multi.predict_sync(**predict_inputs(model="flux-dev", seed=8, output_format="png", face_image=Path(face))))
    after = pixels(multi.predict_sync(**predict_inputs(model="flux-dev", seed=8, output_format="png")))
    assert "IP-Adapter xlabs: identity from face_image at scale 0.65" in caplog.text
    assert "embedding cache hit" in caplog.text
    assert not np.array_equal(plain, first) and np.array_equal(first, again)
    assert np.array_equal(plain, after)  # without a face, the adapter is switched out entirely


def test_components_shared_on_disk_are_loaded_once(multi, flux_weights, tmp_path, caplog) -> None:
    """A schnell folder whose T5, CLIP and VAE are the dev folder's files (symlinks) reuses dev's modules."""
    from pipeline.loading.cache import MODEL_CACHE
    from pipeline.select import load_model, select_model

    service = multi.service
    dev = select_model("flux-dev", service.default_source, service.backend)
    schnell_dir = tmp_path / "flux-schnell-shared"
    schnell_dir.mkdir()
    for entry in flux_weights["flux-schnell"].iterdir():
        shared = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae")
        target = flux_weights["flux-dev"] / entry.name if entry.name in shared else entry
        (schnell_dir / entry.name).symlink_to(target)
    os.environ["FLUX_SCHNELL_WEIGHTS"] = str(schnell_dir)
    try:
        with caplog.at_level(logging.INFO):
            schnell = load_model("flux-schnell", service.backend)
    finally:
        os.environ["FLUX_SCHNELL_WEIGHTS"] = str(flux_weights["flux-schnell"])
        MODEL_CACHE.evict(schnell.source.model_id)
    assert schnell.pipe.text_encoder_2 is dev.pipe.text_encoder_2 and schnell.pipe.vae is dev.pipe.vae
    assert schnell.pipe.transformer is not dev.pipe.transformer
    assert "flux-schnell: text_encoder_2 shared with resident flux-dev (same files)" in caplog.text


@pytest.mark.parametrize("overrides", [{"negative_prompt": "blurry"}, {"adetailer": True, "ad_negative_prompt": "blurry"},
                                       {"scheduler": "DDIM"}, {"width": 72, "height": 64}])
def test_a_refused_request_loads_downloads_and_evicts_nothing(multi, overrides: dict) -> None:
    """Every check that needs only the model's spec runs before any load: a Flux request with an
    option Flux cannot take must not load Flux (or evict another model to make room for it)."""
    from pipeline.loading.cache import MODEL_CACHE

    for key in [k for k in MODEL_CACHE.ids() if k.startswith("flux-dev:")]:
        MODEL_CACHE.evict(key)
    before = MODEL_CACHE.ids()
    with pytest.raises(InputError):
        multi.predict_sync(**predict_inputs(model="flux-dev", **overrides))
    assert MODEL_CACHE.ids() == before


def test_flux_dev_img2img_and_inpainting_share_the_loaded_weights(multi, tmp_path: Path) -> None:
    """Flux-dev through FluxImg2ImgPipeline and FluxInpaintPipeline, built with from_pipe on its own modules."""
    import numpy as np
    from PIL import Image

    from pipeline.variants import pipeline_for
    from tests.conftest import predict_inputs

    source = Image.fromarray((np.random.RandomState(5).rand(64, 96, 3) * 255).astype(np.uint8))
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (32, 16, 64, 48))
    source.save(tmp_path / "image.png")
    mask.save(tmp_path / "mask.png")
    common = dict(model="flux-dev", output_format="png", num_inference_steps=4, width=96, height=64)
    img2img = multi.predict_sync(**predict_inputs(**common, image=Path(tmp_path / "image.png"), prompt_strength=0.5))
    assert Image.open(img2img[0]).size == (96, 64)
    inpaint = multi.predict_sync(**predict_inputs(**common, image=Path(tmp_path / "image.png"), mask=Path(tmp_path / "mask.png")))
    out = np.asarray(Image.open(inpaint[0]).convert("RGB"))
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], np.asarray(source)[outside])
    from pipeline.select import select_model

    flux = select_model("flux-dev", multi.service.default_source, multi.service.backend)  # loaded: reused
    for kind, class_name in (("img2img", "FluxImg2ImgPipeline"), ("inpaint", "FluxInpaintPipeline")):
        variant = pipeline_for(flux, kind)
        assert type(variant).__name__ == class_name
        assert variant.transformer is flux.pipe.transformer and variant.vae is flux.pipe.vae
