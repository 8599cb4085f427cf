"""End to end through Cog's own HTTP server (coglet), as Replicate and `cog predict` call it."""

import base64
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from startup.chain import STAGES as CHAIN_STAGES
from tests.conftest import http_json

STAGES = CHAIN_STAGES + ("total",)


def decode(data_url: str) -> Image.Image:
    header, payload = data_url.split(",", 1)
    assert header.startswith("data:image/")
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def test_ready_with_every_stage_timed(cog_server) -> None:
    health = http_json(f"{cog_server.url}/health-check")
    assert health["status"] == "READY"
    logs = health["setup"]["logs"]
    server_log = cog_server.log_path.read_text()
    for stage in STAGES:
        assert f"[Timer: {stage}]: " in server_log, stage
    # coglet 0.23 forwards the worker's stderr asynchronously from its setup-done message: a line
    # printed just before setup() returns can arrive after it and be filed as a general log line
    # (it is in the server log above either way). Every earlier stage is always in the setup log.
    for stage in STAGES[:-2]:
        assert f"[Timer: {stage}]: " in logs, stage
    assert "removed server flags from sys.argv" not in logs or "--await-explicit-shutdown" in logs
    record = json.loads(cog_server.timings_path.read_text())
    assert record["completed"] and [s["name"] for s in record["stages"]] == list(STAGES[:-1])


def test_prediction_returns_an_image_of_the_requested_size_and_format(cog_server, tmp_path: Path) -> None:
    response = cog_server.predict(prompt="a lighthouse", width=96, height=64, num_inference_steps=3,
                                  seed=5, output_format="jpg", output_quality=90)
    assert response["status"] == "succeeded", response
    assert len(response["output"]) == 1
    image = decode(response["output"][0])
    assert image.format == "JPEG" and image.size == (96, 64)
    saved = tmp_path / "out.jpg"
    image.save(saved)
    assert saved.stat().st_size > 0
    assert "step 3/3" in response["logs"] and "generated in" in response["logs"]
    assert "Using seed: 5" in response["logs"]
    metrics = response["metrics"]
    assert metrics["seed"] == 5 and metrics["steps"] == 3
    assert metrics["steps_per_second"] > 0 and metrics["predict_time"] > 0
    # go_fast's default for SDXL is off; on the CPU it has no recipe, so asking for it runs the exact path
    assert metrics["go_fast"] is False and metrics["fast_path"] == "exact" and metrics["fp8_layers"] == 0
    asked = cog_server.predict(prompt="a lighthouse", width=96, height=64, num_inference_steps=3, seed=5,
                               output_format="jpg", output_quality=90, go_fast=True)
    assert asked["metrics"]["go_fast"] is True and asked["metrics"]["fast_path"] == "exact"
    assert np.array_equal(np.asarray(decode(asked["output"][0])), np.asarray(image))


def refused_field(response: dict) -> str:
    """The input a 422 names (coglet's validator against .cog/openapi_schema.json)."""
    assert response["status"] == "refused", response
    return response["detail"][0]["loc"][-1]


def test_bad_requests_are_refused_and_the_server_keeps_serving(cog_server) -> None:
    # bounds in the schema: refused at the server's edge, by name, as a built image does
    too_wide = cog_server.predict(prompt="x", width=100000, height=64)
    assert refused_field(too_wide) == "width" and "2048" in too_wide["detail"][0]["msg"]
    assert refused_field(cog_server.predict(prompt="x", num_outputs=99)) == "num_outputs"
    # rules the schema cannot express: refused by the predictor, by name
    odd = cog_server.predict(prompt="x", width=100, height=64)
    assert odd["status"] == "failed" and "width=100" in odd["error"] and "multiple of 8" in odd["error"]
    good = cog_server.predict(prompt="x", width=64, height=64, num_inference_steps=2, num_outputs=2, output_format="png")
    assert good["status"] == "succeeded", good
    assert [decode(url).size for url in good["output"]] == [(64, 64), (64, 64)]


def test_same_seed_over_http_is_reproducible(cog_server) -> None:
    inputs = dict(prompt="a fox", width=64, height=64, num_inference_steps=3, seed=11, output_format="png")
    first = np.asarray(decode(cog_server.predict(**inputs)["output"][0]))
    second = np.asarray(decode(cog_server.predict(**inputs)["output"][0]))
    third = np.asarray(decode(cog_server.predict(**{**inputs, "seed": 12})["output"][0]))
    assert np.array_equal(first, second) and not np.array_equal(first, third)


def test_adetailer_over_http(cog_server) -> None:
    """adetailer=true runs the pass; adetailer=false does exactly what leaving the field out does."""
    inputs = dict(prompt="a portrait", width=64, height=64, num_inference_steps=2, seed=9, output_format="png")
    without = cog_server.predict(**inputs)
    off = cog_server.predict(**inputs, adetailer=False, ad_confidence=0.9)
    on = cog_server.predict(**inputs, adetailer=True, adetailer_hands=True)
    for response in (without, off, on):
        assert response["status"] == "succeeded", response
    assert np.array_equal(np.asarray(decode(without["output"][0])), np.asarray(decode(off["output"][0])))
    assert "ADetailer" not in off["logs"] and "adetailer_seconds" not in off["metrics"]
    assert "ADetailer face: " in on["logs"] and "ADetailer hands: " in on["logs"]
    assert on["metrics"]["adetailer_seconds"] > 0
    assert decode(on["output"][0]).size == (64, 64)
    bad = cog_server.predict(**inputs, adetailer=True, ad_denoising_strength=3)
    assert refused_field(bad) == "ad_denoising_strength"


def data_url(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def test_storyboard_and_face_image_over_http(cog_server, tmp_path: Path) -> None:
    from skimage import data

    face = tmp_path / "face.png"
    Image.fromarray(data.astronaut()).resize((128, 128)).save(face)
    response = cog_server.predict(
        prompt="watercolour", scenes="a harbour at dawn\na busy market\na ship at sea", character="a sailor",
        face_image=data_url(face, "image/png"), width=64, height=64, num_inference_steps=2, seed=3, output_format="png",
    )
    assert response["status"] == "succeeded", response
    images = [decode(url) for url in response["output"]]
    assert [image.size for image in images[:3]] == [(64, 64)] * 3 and len(images) == 4
    assert images[3].width > 64  # the contact sheet
    assert "storyboard: 3 scenes in " in response["logs"] and "identity from face_image" in response["logs"]
    assert response["metrics"]["seconds_per_scene"] > 0

    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    bad = cog_server.predict(prompt="x", face_image=data_url(junk, "image/png"), width=64, height=64)
    assert bad["status"] == "failed" and "face_image" in bad["error"]
    assert cog_server.predict(prompt="x", width=64, height=64, num_inference_steps=2)["status"] == "succeeded"


def test_flux_schnell_over_http_and_unavailable_model(cog_server) -> None:
    response = cog_server.predict(prompt="a lighthouse", model="flux-schnell", width=96, height=64, seed=2, output_format="png")
    assert response["status"] == "succeeded", response
    assert decode(response["output"][0]).size == (96, 64)
    assert "preset balanced: 4 steps, guidance 0.0" in response["logs"]
    missing = cog_server.predict(prompt="x", model="flux-dev")
    assert missing["status"] == "failed" and "available here: sdxl, flux-schnell" in missing["error"]
    bad = cog_server.predict(prompt="x", model="flux-schnell", negative_prompt="blur")
    assert bad["status"] == "failed" and "negative_prompt" in bad["error"]


def test_adetailer_options_with_the_extensions_names_over_http(cog_server) -> None:
    inputs = dict(prompt="a portrait", width=64, height=64, num_inference_steps=2, seed=9, output_format="png",
                  adetailer=True, adetailer_hands=True, ad_model="mediapipe_face_short", ad_hand_model="mediapipe_hands",
                  ad_mask_k=2, ad_mask_filter_method="Confidence", ad_x_offset=3, ad_y_offset=-2,
                  ad_mask_merge_invert="Merge", ad_inpaint_only_masked=False, ad_use_inpaint_width_height=True,
                  ad_inpaint_width=64, ad_inpaint_height=64, ad_use_steps=True, ad_steps=3, ad_use_cfg_scale=True,
                  ad_cfg_scale=5.0, ad_use_sampler=True, ad_sampler="Euler a", ad_prompt="[PROMPT], smiling [SEP] [SKIP]")
    response = cog_server.predict(**inputs)
    assert response["status"] == "succeeded", response
    assert "ADetailer face: " in response["logs"] and "ADetailer hands: " in response["logs"]
    old = cog_server.predict(**{**inputs, "ad_mask_k": 0, "ad_mask_filter_method": "Area"}, ad_mask_k_largest=1)
    assert old["status"] == "succeeded" and "ad_mask_k_largest is deprecated" in old["logs"]
    both = cog_server.predict(**inputs, ad_mask_k_largest=1)
    assert both["status"] == "failed" and "send only ad_mask_k" in both["error"]
    unknown = cog_server.predict(**{**inputs, "ad_model": "face_yolov8s.pt"})
    assert unknown["status"] == "failed" and "invalid input ad_model='face_yolov8s.pt'" in unknown["error"]
    assert refused_field(cog_server.predict(**{**inputs, "ad_steps": 500})) == "ad_steps"
