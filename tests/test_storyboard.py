import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.families.sdxl import SDXL
from pipeline.storyboard import batches, contact_sheet, scene_prompts, storyboard_batch_size
from tests.conftest import predict_inputs


def test_character_goes_first_and_style_last() -> None:
    assert scene_prompts(["at the harbour", "in the market"], "a red-haired sailor", "oil painting") == [
        "a red-haired sailor, at the harbour, oil painting",
        "a red-haired sailor, in the market, oil painting",
    ]
    assert scene_prompts(["alone"], "", "") == ["alone"]


def test_batching_plan() -> None:
    assert [list(b) for b in batches(5, 2)] == [[0, 1], [2, 3], [4]]
    assert storyboard_batch_size(SDXL, "cpu", None, 1024, 1024, 6) == 1
    assert storyboard_batch_size(SDXL, "cuda", 80 * 10**9, 1024, 1024, 6) == 6
    assert storyboard_batch_size(SDXL, "cuda", 10 * 10**9, 1024, 1024, 6) == 1
    assert storyboard_batch_size(SDXL, "cuda", 30 * 10**9, 1024, 1024, 6) == 4


def test_contact_sheet_grid() -> None:
    scenes = [Image.new("RGB", (64, 32), (i * 40, 0, 0)) for i in range(5)]
    sheet = contact_sheet(scenes, cell=64)
    assert sheet.width > sheet.height  # 3 columns, 2 rows of 2:1 thumbnails
    pixels = np.asarray(sheet)
    assert (pixels == 255).all(axis=2).any()  # white gaps


def test_three_scene_storyboard(predictor, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        outputs = predictor.predict_sync(**predict_inputs(
            prompt="", scenes="at the harbour\nin the market\non a ship", character="a sailor", seed=30, output_format="png",
        ))
    names = [Path(p).name for p in outputs]
    assert names == ["scene-01.png", "scene-02.png", "scene-03.png", "contact-sheet.png"]
    scenes = [np.asarray(Image.open(p)) for p in outputs[:3]]
    assert all(s.shape == (64, 64, 3) for s in scenes)
    assert not np.array_equal(scenes[0], scenes[1])
    sheet = Image.open(outputs[3])
    assert sheet.width > 64 and sheet.height > 64
    assert "storyboard: 3 scenes in batches of 1" in caplog.text
    assert "scene 3 step 3/3" in caplog.text and "storyboard: 3 scenes in " in caplog.text
    # scene i uses seed + i: scene 2 alone, with its own prompt and seed 31, is the same picture
    alone = predictor.predict_sync(**predict_inputs(prompt="a sailor, in the market", seed=31, output_format="png"))
    assert np.abs(np.asarray(Image.open(alone[0])).astype(int) - scenes[1].astype(int)).max() <= 2
