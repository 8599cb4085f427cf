"""ADetailer options and mask functions: pure, fast, no model."""

import numpy as np
import pytest
from PIL import Image

from adetailer.detection import Detections
from adetailer.inpaint import crop_region, processing_size
from adetailer.mask import (
    area_ratio,
    blur,
    bounding_box,
    box_mask,
    dilate_erode,
    filter_by_ratio,
    filter_k_largest,
    merge,
    sort_by_area,
)
from request.adetailer import ADetailerArgs, parse_adetailer_args
from request.errors import InputError


def args(**overrides: object):
    return parse_adetailer_args(overrides)


def test_defaults_match_the_extension_and_are_off() -> None:
    a = args()
    assert a.adetailer is False and a.need_skip() and a.passes() == ()
    defaults = (a.ad_confidence, a.ad_dilate_erode, a.ad_mask_blur, a.ad_denoising_strength, a.ad_inpaint_only_masked_padding)
    assert defaults == (0.3, 4, 4, 0.4, 32)
    assert a.ad_mask_k_largest == 0 and a.ad_steps is None and a.ad_cfg_scale is None


@pytest.mark.parametrize("options", [{}, {"adetailer_face": True}, {"ad_confidence": 0.9, "adetailer_hands": True},
                                     {"ad_prompt": "a face"}])
def test_only_the_explicit_flag_turns_it_on(options: dict) -> None:
    """The bug this replaces: empty or partial options ran the fixer."""
    assert args(**options).need_skip()


def test_passes_run_face_then_hands() -> None:
    assert args(adetailer=True).passes() == ("face",)
    assert args(adetailer=True, adetailer_hands=True).passes() == ("face", "hands")
    assert args(adetailer=True, adetailer_face=False, adetailer_hands=True).passes() == ("hands",)
    assert args(adetailer=True, adetailer_face=False).need_skip()


@pytest.mark.parametrize(
    "field, value, words",
    [("ad_confidence", 1.5, "from 0 to 1"), ("adetailer", "yes", "true or false"), ("ad_mask_blur", -1, "from 0 to 64"),
     ("ad_denoising_strength", 2, "from 0 to 1"), ("ad_steps", 0, "from 1 to 100"), ("ad_mask_k_largest", 2.5, "an integer")],
)
def test_bad_options_name_the_field(field: str, value: object, words: str) -> None:
    with pytest.raises(InputError) as caught:
        args(**{field: value})
    assert caught.value.field == field and words in str(caught.value)


def test_unknown_and_inconsistent_options_are_refused() -> None:
    with pytest.raises(InputError, match="ad_model.*unknown input"):
        args(ad_model="face_yolov8n.pt")
    with pytest.raises(InputError, match="ad_mask_min_ratio.*must not exceed ad_mask_max_ratio"):
        args(ad_mask_min_ratio=0.5, ad_mask_max_ratio=0.2)
    assert set(ADetailerArgs.model_fields) >= {"ad_confidence", "ad_mask_k_largest", "ad_inpaint_only_masked_padding"}


def detections(*boxes: tuple[int, int, int, int], size=(100, 100)) -> Detections:
    return Detections(boxes=list(boxes), masks=[box_mask(b, size) for b in boxes], scores=[0.9] * len(boxes), backend="t")


def test_ratio_filter_sort_and_k_largest() -> None:
    found = detections((0, 0, 10, 10), (0, 0, 50, 50), (0, 0, 30, 30))
    assert [round(area_ratio(m), 2) for m in found.masks] == [0.01, 0.25, 0.09]
    assert filter_by_ratio(found, 0.05, 0.2).boxes == [(0, 0, 30, 30)]
    assert sort_by_area(found).boxes == [(0, 0, 50, 50), (0, 0, 30, 30), (0, 0, 10, 10)]
    assert filter_k_largest(found, 2).boxes == [(0, 0, 50, 50), (0, 0, 30, 30)]
    assert len(filter_k_largest(found, 0)) == 3
    assert len(filter_by_ratio(Detections(), 0, 1)) == 0


def test_dilate_and_erode_use_the_extension_kernel() -> None:
    mask = box_mask((40, 40, 60, 60), (100, 100))
    assert bounding_box(dilate_erode(mask, 5)) == (38, 38, 62, 62)  # 5x5 kernel: 2 px each side
    assert bounding_box(dilate_erode(mask, -5)) == (42, 42, 58, 58)
    assert dilate_erode(mask, 0) is mask


def test_blur_feathers_merge_unions_box_mask_fills() -> None:
    mask = box_mask((40, 40, 60, 60), (100, 100))
    feathered = np.asarray(blur(mask, 4))
    assert feathered[50, 50] > 240 and 0 < feathered[50, 39] < 200 and feathered[50, 20] == 0
    merged = merge([mask, box_mask((0, 0, 10, 10), (100, 100))])
    assert bounding_box(merged) == (0, 0, 60, 60) and area_ratio(merged) == pytest.approx(0.05)
    assert bounding_box(Image.new("L", (5, 5))) is None


def test_crop_region_and_processing_size() -> None:
    assert crop_region((10, 10, 50, 50), 32, (100, 60)) == (0, 0, 82, 60)
    width, height = processing_size(200, 100, 1024)
    assert width % 8 == 0 and height % 8 == 0 and abs(width / height - 2) < 0.05
    assert abs(width * height - 1024 * 1024) / (1024 * 1024) < 0.02
