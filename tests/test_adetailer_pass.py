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
    return parse_adetailer_args({"adetailer": True, "ad_use_steps": True, "ad_steps": 4, **options})


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
            p.predict_sync(**predict_inputs(**options))
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
    plain = predictor.predict_sync(**predict_inputs(seed=4, output_format="png"))
    plain_pixels = np.asarray(Image.open(plain[0]))
    off = np.asarray(Image.open(predictor.predict_sync(**predict_inputs(seed=4, output_format="png", adetailer=False))[0]))
    assert np.array_equal(plain_pixels, off)
    on = predictor.predict_sync(**predict_inputs(seed=4, output_format="png", adetailer=True, adetailer_hands=True))
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

    monkeypatch.setattr(adetailer.runner, "detector_for", lambda pass_name, folder=None, name="auto": CentreDetector())
    inpaint_key = "inpaint:" + predictor.service.default_source.model_id
    request = predict_inputs(seed=5, scheduler="K_EULER", adetailer=True, ad_use_steps=True, ad_steps=4, output_format="png")

    MODEL_CACHE.evict(inpaint_key)
    predictor.predict_sync(**predict_inputs(seed=5, scheduler="DDIM", adetailer=True, ad_use_steps=True, ad_steps=4))
    after_ddim = np.asarray(Image.open(predictor.predict_sync(**request)[0]))
    MODEL_CACHE.evict(inpaint_key)
    alone = np.asarray(Image.open(predictor.predict_sync(**request)[0]))
    assert np.array_equal(after_ddim, alone)


def test_the_extensions_switches_and_prompt_syntax_take_effect(predictor, astronaut, caplog) -> None:
    """Each option by its effect on the astronaut's one face (mediapipe finds it at 0.9)."""
    model, preset = predictor.service.model, resolve("sdxl", "balanced")

    def run(**options: object) -> tuple[Image.Image, str]:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            (fixed,) = run_adetailer(model, [astronaut], ad(ad_confidence=0.5, **options), ["an astronaut"], "", preset, seed=1)
        return fixed, caplog.text

    skipped, text = run(ad_prompt="[SKIP]")
    assert np.array_equal(np.asarray(skipped), np.asarray(astronaut)) and "ADetailer face 1/1: [SKIP]" in text
    _, text = run(ad_inpaint_only_masked=False)
    assert "512x512 region inpainted" in text  # the whole picture, not a crop around the face
    _, text = run(ad_use_inpaint_width_height=True, ad_inpaint_width=256, ad_inpaint_height=192)
    assert "inpainted at 256x192" in text
    _, text = run(ad_use_steps=False)  # the main request's steps: balanced's 15
    assert "15 steps x strength 0.40" in text
    _, text = run(ad_steps=10)
    assert "10 steps x strength 0.40" in text
    _, text = run(ad_mask_merge_invert="Merge and Invert")
    assert "merge/invert Merge and Invert" in text
    _, text = run(ad_use_cfg_scale=True, ad_cfg_scale=3.5, ad_use_sampler=True, ad_sampler="Euler a")
    assert "guidance 3.5, EulerAncestralDiscreteScheduler" in text
    _, text = run(ad_cfg_scale=3.5, ad_sampler="Euler a")  # switches off: the main request's
    assert "guidance 7, EulerDiscreteScheduler" in text


def test_a_detector_is_chosen_by_name_and_an_unknown_one_is_refused(predictor, astronaut, tmp_path) -> None:
    from adetailer.runner import available_detectors, check_detectors
    from request.errors import InputError

    short = detector_for("face", name="mediapipe_face_short")
    assert short is not detector_for("face", name="mediapipe_face_full")
    assert len(short.detect(astronaut, 0.5)) == 1
    assert available_detectors("face", tmp_path) == ["auto", "mediapipe_face_full", "mediapipe_face_short",
                                                     "mediapipe_face_mesh", "mediapipe_face_mesh_eyes_only"]
    with pytest.raises(InputError) as error:
        check_detectors(ad(ad_model="face_yolov8s.pt"), tmp_path)
    assert error.value.field == "ad_model" and "available here: auto, mediapipe_face_full, mediapipe_face_short" in str(error.value)
    assert ": [SKIP]" not in str(error.value)
    with pytest.raises(InputError, match="ad_hand_model"):
        check_detectors(ad(adetailer_hands=True, ad_hand_model="mediapipe_face_full"), tmp_path)


def test_face_mesh_masks_are_the_landmarks_hulls(astronaut) -> None:
    mesh = detector_for("face", name="mediapipe_face_mesh").detect(astronaut, 0.3)
    eyes = detector_for("face", name="mediapipe_face_mesh_eyes_only").detect(astronaut, 0.3)
    assert len(mesh) == len(eyes) == 1
    face, eye = np.asarray(mesh.masks[0]) > 0, np.asarray(eyes.masks[0]) > 0
    x1, y1, x2, y2 = mesh.boxes[0]
    assert 0.6 < face.sum() / ((x2 - x1) * (y2 - y1)) < 0.95  # a hull, not its box
    assert eye.sum() < 0.05 * face.sum() and not (eye & ~face).any()  # the eyes, inside the face


def test_top_k_by_area_or_confidence_on_a_photo_with_several_faces() -> None:
    """ultralytics' bus.jpg: mediapipe's full-range model finds two faces, the larger one less sure."""
    from adetailer.mask import filter_k
    from tests.test_detectors import ultralytics_asset

    found = detector_for("face", name="mediapipe_face_full").detect(ultralytics_asset("bus.jpg").convert("RGB"), 0.3)
    assert len(found) == 2
    areas = [int((np.asarray(mask) > 0).sum()) for mask in found.masks]
    by_area, by_confidence = filter_k(found, 1, "Area"), filter_k(found, 1, "Confidence")
    assert int((np.asarray(by_area.masks[0]) > 0).sum()) == max(areas)
    assert by_confidence.scores == [max(found.scores)] and by_area.scores != by_confidence.scores


def test_the_person_pass_inpaints_segments_and_needs_a_segmentation_model(predictor, tmp_path, monkeypatch, caplog) -> None:
    import torch
    from ultralytics import YOLO

    from request.errors import InputError
    from tests.test_detectors import ultralytics_asset

    bus = ultralytics_asset("bus.jpg").convert("RGB").resize((160, 216))
    options = ad(adetailer_person=True, adetailer_face=False, ad_confidence=0.0001, ad_mask_k=1)
    monkeypatch.setenv("ADETAILER_MODELS", str(tmp_path))
    with pytest.raises(InputError, match="adetailer_person.*person_yolov8n-seg.pt"):
        run_adetailer(predictor.service.model, [bus], options, ["people"], "", resolve("sdxl", "fast"), seed=1)
    torch.manual_seed(0)
    YOLO("yolov8n-seg.yaml").save(tmp_path / "person_yolov8n-seg.pt")
    with caplog.at_level(logging.INFO):
        (fixed,) = run_adetailer(predictor.service.model, [bus], options, ["people"], "", resolve("sdxl", "fast"), seed=1)
    assert "ADetailer person: " in caplog.text and "detected" in caplog.text
    assert fixed.size == bus.size
