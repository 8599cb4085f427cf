"""The ADetailer pass end to end with tiny SDXL, on real photos shipped inside packages."""

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adetailer.mask import blur, dilate_erode
from adetailer.runner import detector_for, run_adetailer
from pipeline.variants import inpaint_pipeline
from presets import resolve
from request.adetailer import parse_adetailer_args
from tests.conftest import predict_inputs

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


def ad(**options: object):
    return parse_adetailer_args({"adetailer": True, "ad_steps": 4, **options})


def test_inpaint_pipeline_shares_the_loaded_weights(predictor) -> None:
    """from_pipe: the inpaint pipeline holds the very same modules, so no second copy of weights."""
    model = predictor.service.model
    inpaint = inpaint_pipeline(model)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert getattr(inpaint, name) is getattr(model.pipe, name), name
    base = {p.data_ptr() for p in model.pipe.unet.parameters()}
    assert {p.data_ptr() for p in inpaint.unet.parameters()} == base
    assert inpaint_pipeline(model) is inpaint  # cached, built once


def test_face_pass_changes_pixels_inside_the_mask_and_none_outside(predictor, astronaut, caplog) -> None:
    model = predictor.service.model
    options = ad(ad_confidence=0.5)
    with caplog.at_level(logging.INFO):
        (fixed,) = run_adetailer(model, [astronaut], options, ["an astronaut"], "", resolve("sdxl", "balanced"), seed=1)
    assert fixed.size == astronaut.size
    found = detector_for("face").detect(astronaut, 0.5)
    assert len(found) == 1
    allowed = np.asarray(blur(dilate_erode(found.masks[0], options.ad_dilate_erode), options.ad_mask_blur)) > 0
    before, after = np.asarray(astronaut), np.asarray(fixed)
    changed = np.any(before != after, axis=2)
    assert changed.any(), "the face was not redrawn"
    assert not changed[~allowed].any(), "pixels outside the feathered mask changed"
    assert changed[allowed].mean() > 0.5
    assert "ADetailer face: 1 detected (0.9" in caplog.text and " ms, inpaint " in caplog.text


def test_no_detection_leaves_the_image_unchanged_and_says_so(predictor, caplog) -> None:
    grey = Image.new("RGB", (256, 256), (128, 128, 128))
    with caplog.at_level(logging.INFO):
        (same,) = run_adetailer(predictor.service.model, [grey], ad(adetailer_hands=True), ["x"], "", resolve("sdxl", "fast"), seed=1)
    assert np.array_equal(np.asarray(same), np.asarray(grey))
    assert "ADetailer face: nothing detected" in caplog.text and "ADetailer hands: nothing detected" in caplog.text


def test_hands_pass_runs(predictor, caplog) -> None:
    from ultralytics.utils import ASSETS

    photo = Image.open(ASSETS / "zidane.jpg").convert("RGB")
    with caplog.at_level(logging.INFO):
        (out,) = run_adetailer(predictor.service.model, [photo], ad(adetailer_face=False, adetailer_hands=True), ["two men"], "",
                               resolve("sdxl", "fast"), seed=2)
    assert out.size == photo.size
    assert "ADetailer hands: " in caplog.text


def test_yolo_weights_in_the_operator_folder_are_used(tmp_path: Path, monkeypatch) -> None:
    os.environ.setdefault("YOLO_OFFLINE", "true")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    from ultralytics import YOLO

    YOLO("yolov8n.yaml").save(str(tmp_path / "face_yolov8n.pt"))
    monkeypatch.setenv("ADETAILER_MODELS", str(tmp_path))
    detector = detector_for("face")
    assert detector.name == "face_yolov8n"
    assert detector_for("hands").name == "mediapipe_hands"  # no hand_*.pt there: mediapipe


def test_adetailer_off_imports_and_builds_nothing(tiny_weights: Path, tmp_path: Path) -> None:
    """adetailer=false, even with other ADetailer options set: no detector library, no inpaint pipeline."""
    code = f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from tests.conftest import predict_inputs
        from predict import Predictor
        from pipeline.loading.cache import MODEL_CACHE
        p = Predictor(); p.setup({str(tiny_weights)!r})
        for options in ({{}}, {{"adetailer_hands": True, "ad_confidence": 0.9}}, {{"adetailer": False, "ad_prompt": "face"}}):
            p.predict(**predict_inputs(**options))
        loaded = [m for m in ("mediapipe", "ultralytics", "adetailer.runner", "adetailer.inpaint") if m in sys.modules]
        print("LOADED", loaded, "CACHE", MODEL_CACHE.ids())
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, STARTUP_TIMINGS_PATH=str(tmp_path / "t.json")))
    assert result.returncode == 0, result.stderr
    line = [text for text in result.stdout.splitlines() if text.startswith("LOADED")][0]
    assert line.startswith("LOADED [] CACHE ['sdxl:"), line
    assert "ADetailer" not in result.stderr


def test_adetailer_flag_through_predict(predictor) -> None:
    plain = predictor.predict(**predict_inputs(seed=4, output_format="png"))
    plain_pixels = np.asarray(Image.open(plain[0]))
    off = np.asarray(Image.open(predictor.predict(**predict_inputs(seed=4, output_format="png", adetailer=False))[0]))
    assert np.array_equal(plain_pixels, off)
    on = predictor.predict(**predict_inputs(seed=4, output_format="png", adetailer=True, adetailer_hands=True))
    assert Image.open(on[0]).size == (64, 64)


class CentreDetector:
    """Finds one 'face' in the middle of any image, so the pass runs on generated noise."""

    name = "centre"

    def detect(self, image: Image.Image, confidence: float):
        from adetailer.detection import Detections
        from adetailer.mask import box_mask

        width, height = image.size
        box = (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
        return Detections(boxes=[box], masks=[box_mask(box, image.size)], scores=[0.99], backend=self.name)


def test_the_inpaint_uses_the_requests_scheduler_whatever_came_before(predictor, monkeypatch) -> None:
    """The same request gives the same pixels whether the previous request used another sampler."""
    import adetailer.runner
    from pipeline.loading.cache import MODEL_CACHE

    monkeypatch.setattr(adetailer.runner, "detector_for", lambda pass_name, folder=None: CentreDetector())
    inpaint_key = "inpaint:" + predictor.service.default_source.model_id
    request = predict_inputs(seed=5, scheduler="K_EULER", adetailer=True, ad_steps=4, output_format="png")

    MODEL_CACHE.evict(inpaint_key)
    predictor.predict(**predict_inputs(seed=5, scheduler="DDIM", adetailer=True, ad_steps=4))
    after_ddim = np.asarray(Image.open(predictor.predict(**request)[0]))
    MODEL_CACHE.evict(inpaint_key)
    alone = np.asarray(Image.open(predictor.predict(**request)[0]))
    assert np.array_equal(after_ddim, alone)
