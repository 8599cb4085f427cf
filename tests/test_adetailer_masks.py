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
    merge_invert,
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
    assert a.ad_mask_k == 0 and a.ad_mask_filter_method == "Area" and a.ad_mask_k_largest is None
    assert (a.ad_use_steps, a.ad_steps, a.ad_use_cfg_scale, a.ad_cfg_scale) == (False, 28, False, 7.0)
    assert (a.ad_x_offset, a.ad_y_offset, a.ad_mask_merge_invert, a.ad_inpaint_only_masked) == (0, 0, "None", True)
    assert (a.ad_use_inpaint_width_height, a.ad_inpaint_width, a.ad_inpaint_height) == (False, 512, 512)
    assert (a.ad_use_sampler, a.ad_sampler, a.ad_model, a.ad_hand_model) == (False, "DPM++ 2M Karras", "auto", "auto")


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
     ("ad_denoising_strength", 2, "from 0 to 1"), ("ad_steps", 0, "from 1 to 150"), ("ad_mask_k", 2.5, "an integer"),
     ("ad_mask_filter_method", "Size", "allowed: Area, Confidence"),
     ("ad_mask_merge_invert", "Invert", "allowed: None, Merge, Merge and Invert"), ("ad_sampler", "LMS", "allowed: Euler")],
)
def test_bad_options_name_the_field(field: str, value: object, words: str) -> None:
    with pytest.raises(InputError) as caught:
        args(**{field: value})
    assert caught.value.field == field and words in str(caught.value)


def test_unknown_and_inconsistent_options_are_refused() -> None:
    with pytest.raises(InputError, match="ad_tab_enable.*unknown input"):
        args(ad_tab_enable=True)
    with pytest.raises(InputError, match="ad_mask_k_largest.*send only ad_mask_k"):
        args(ad_mask_k_largest=2, ad_mask_k=3)
    with pytest.raises(InputError, match="ad_mask_min_ratio.*must not exceed ad_mask_max_ratio"):
        args(ad_mask_min_ratio=0.5, ad_mask_max_ratio=0.2)
    assert set(ADetailerArgs.model_fields) >= {"ad_confidence", "ad_mask_k", "ad_inpaint_only_masked_padding"}


def test_the_old_top_k_name_still_works_and_says_it_is_deprecated(caplog) -> None:
    with caplog.at_level("WARNING"):
        assert args(ad_mask_k_largest=2).ad_mask_k == 2
    assert "ad_mask_k_largest is deprecated" in caplog.text


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
    (merged,) = merge_invert([mask, box_mask((0, 0, 10, 10), (100, 100))], "Merge")
    assert bounding_box(merged) == (0, 0, 60, 60) and area_ratio(merged) == pytest.approx(0.05)
    assert bounding_box(Image.new("L", (5, 5))) is None


def test_crop_region_and_processing_size() -> None:
    assert crop_region((10, 10, 50, 50), 32, (100, 60)) == (0, 0, 82, 60)
    width, height = processing_size(200, 100, 1024)
    assert width % 8 == 0 and height % 8 == 0 and abs(width / height - 2) < 0.05
    assert abs(width * height - 1024 * 1024) / (1024 * 1024) < 0.02


# ADetailer's mask steps, each alone on small arrays, then composed (adetailer.mask.mask_preprocess)

def square(x1: int, y1: int, x2: int, y2: int, size: int = 10) -> Image.Image:
    return box_mask((x1, y1, x2, y2), (size, size))


def test_offset_moves_right_and_up_and_drops_what_leaves() -> None:
    from adetailer.mask import offset

    moved = np.asarray(offset(square(2, 2, 4, 4), 3, 1))
    assert moved[1:3, 5:7].all() and moved.sum() == 4 * 255  # x 3 right, y 1 up
    assert np.asarray(offset(square(8, 8, 10, 10), 5, 0)).sum() == 0  # off the image: gone, not wrapped


def test_merge_and_invert() -> None:
    from adetailer.mask import merge_invert

    a, b = square(0, 0, 2, 2), square(5, 5, 7, 7)
    assert len(merge_invert([a, b], "None")) == 2
    (merged,) = merge_invert([a, b], "Merge")
    assert np.asarray(merged).sum() == 8 * 255
    (inverted,) = merge_invert([a, b], "Merge and Invert")
    assert np.asarray(inverted).sum() == (100 - 8) * 255


def test_filter_by_confidence_keeps_the_most_confident() -> None:
    from adetailer.mask import filter_k

    found = Detections(boxes=[(0, 0, 5, 5), (0, 0, 2, 2)], masks=[square(0, 0, 5, 5), square(0, 0, 2, 2)],
                       scores=[0.4, 0.9], backend="t")
    assert filter_k(found, 1, "Confidence").scores == [0.9]
    assert filter_k(found, 1, "Area").scores == [0.4]


def test_mask_preprocess_is_offset_then_dilate_then_merge() -> None:
    from adetailer.mask import mask_preprocess

    (mask,) = mask_preprocess([square(2, 2, 4, 4), square(6, 6, 8, 8)], x_offset=1, y_offset=0, dilate=3, mode="Merge")
    array = np.asarray(mask) > 0
    # each 2x2 square moved one right, then grown by a 3x3 kernel to 4x4, then merged
    assert array.sum() == 2 * 16 and array[1:5, 2:6].all() and array[5:9, 6:10].all()
    assert mask_preprocess([square(0, 0, 2, 2)], x_offset=20) == []  # emptied masks are dropped


def test_prompt_syntax_sep_prompt_and_skip() -> None:
    from adetailer.prompts import detection_negatives, detection_prompts

    assert detection_prompts("", "main", 2) == ["main", "main"]
    assert detection_prompts("a smile [SEP] [SKIP] [SEP] [PROMPT], freckles", "main", 4) == [
        "a smile", None, "main, freckles", "main, freckles"]
    assert detection_prompts("[SEP]blue eyes", "main", 2) == ["main", "blue eyes"]
    assert detection_negatives("blur [SEP] [PROMPT]", "ugly", 3) == ["blur", "ugly", "ugly"]
