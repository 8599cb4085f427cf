"""From image to video (pipeline/video.py): Stable Video Diffusion on tiny random weights
(tests/fixtures/make_svd.py), clips encoded as H.264 MP4 by PyAV, read back with PyAV."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from pipeline.video import letterbox
from presets.video import resolve_video
from request.errors import InputError
from tests.conftest import predict_inputs


def probe(path: Path) -> dict:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_image() for frame in container.decode(video=0)]
        return {"codec": stream.codec_context.name, "pix_fmt": stream.codec_context.pix_fmt,
                "fps": float(stream.average_rate), "size": (stream.codec_context.width, stream.codec_context.height),
                "frames": frames}


@pytest.fixture
def video_env(svd_weights: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SVD_WEIGHTS", str(svd_weights))
    return svd_weights


def animate(predictor, **overrides: object) -> list[Path]:
    return predictor.predict_sync(**predict_inputs(**{"animate": True, "preset": "ultra_fast", **overrides}))


def test_one_image_becomes_an_h264_clip(predictor, video_env, caplog) -> None:
    with caplog.at_level(logging.INFO):
        (clip,) = animate(predictor)
    info = probe(clip)
    assert clip.suffix == ".mp4" and (info["codec"], info["pix_fmt"]) == ("h264", "yuv420p")
    assert len(info["frames"]) == 14 and info["fps"] == 10 and info["size"] == (64, 32)  # motion medium: 10 fps
    assert "video: motion medium: bucket 127" in caplog.text and "clip 1/1: 14 frames at 10 fps" in caplog.text
    assert "10%|" in caplog.text  # progress Replicate reads, per clip and step (ultra_fast: 10 steps)


class Recording:
    """The video pipeline, recording each call's arguments (and running it)."""

    def __init__(self, pipe) -> None:
        self.pipe, self.calls = pipe, []

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs)
        return self.pipe(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.pipe, name)


def test_motion_presets_and_overrides_reach_the_pipeline(predictor, video_env, monkeypatch) -> None:
    from pipeline.video import video_model

    model = video_model(predictor.service.backend)
    recording = Recording(model.pipe)
    monkeypatch.setattr(model, "pipe", recording)
    animate(predictor, motion="subtle")
    (clip,) = animate(predictor, motion="dynamic", video_fps=24, motion_bucket_id=9, noise_aug_strength=0.3)
    subtle, dynamic = recording.calls
    assert (subtle["motion_bucket_id"], subtle["noise_aug_strength"], subtle["fps"]) == (40, 0.02, 8)
    assert (dynamic["motion_bucket_id"], dynamic["noise_aug_strength"], dynamic["fps"]) == (9, 0.3, 24)
    assert subtle["num_inference_steps"] == 10 and subtle["decode_chunk_size"] == 4  # ultra_fast; the cpu profile
    assert probe(clip)["fps"] == 24
    assert resolve_video("subtle", "quality", "24gb").steps == 40 and resolve_video("subtle", "quality", "24gb").decode_chunk_size == 8


def test_a_storyboard_becomes_clips_and_one_joined_film(predictor, video_env) -> None:
    outputs = animate(predictor, prompt="", scenes="a harbour\na market\na ship")
    assert [path.name for path in outputs] == ["scene-01.mp4", "scene-02.mp4", "scene-03.mp4", "storyboard.mp4"]
    first, second, third, joined = (probe(path) for path in outputs)
    assert len(joined["frames"]) == sum(len(clip["frames"]) for clip in (first, second, third)) == 42  # the durations add up
    decoded = np.asarray(joined["frames"][14]).astype(int)
    assert np.abs(decoded - np.asarray(second["frames"][0]).astype(int)).mean() < 8  # scene 2 follows scene 1


def test_frames_are_letterboxed_into_the_native_orientation() -> None:
    tall = Image.new("RGB", (30, 90), (250, 250, 250))
    boxed = np.asarray(letterbox(tall, (64, 32)))
    assert boxed.shape == (32, 64, 3)
    assert boxed[:, :10].max() == 0 and boxed[:, 27:37].min() > 200  # black bars beside the centred picture


@pytest.mark.parametrize("overrides, field, words", [
    (dict(motion="dynamic"), "motion", "only applies with animate"),
    (dict(video_fps=12), "video_fps", "only applies with animate"),
    (dict(animate=True, video_frames=20), "video_frames", "14 or 25"),
    (dict(animate=True, num_outputs=2), "num_outputs", "must be 1 with animate"),
])
def test_bad_video_options_are_refused_by_name(overrides: dict, field: str, words: str) -> None:
    from request.generation import parse_request

    with pytest.raises(InputError) as error:
        parse_request(dict(prompt="x", **overrides))
    assert error.value.field == field and words in str(error.value)


def test_more_frames_than_the_checkpoint_and_no_weights_are_refused(predictor, video_env, monkeypatch, tmp_path) -> None:
    with pytest.raises(InputError, match="at most 14 frames"):
        animate(predictor, video_frames=25)
    monkeypatch.setenv("SVD_WEIGHTS", str(tmp_path / "none"))
    with pytest.raises(InputError, match="no video model here.*models available: sdxl"):
        animate(predictor)


def test_animate_over_http(cog_server, tmp_path: Path) -> None:
    response = cog_server.predict(prompt="a kite", width=64, height=64, num_inference_steps=2, seed=4, animate=True,
                                  preset="ultra_fast", motion="subtle")
    assert response["status"] == "succeeded", response
    header, payload = response["output"][0].split(",", 1)
    assert header.startswith("data:video/mp4")
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(base64.b64decode(payload))
    info = probe(clip)
    assert info["codec"] == "h264" and len(info["frames"]) == 14 and info["fps"] == 8
    assert response["metrics"]["video_seconds"] > 0
    assert "refused" == cog_server.predict(prompt="x", animate=True, video_fps=99)["status"]
