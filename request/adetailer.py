"""ADetailer's request options, named as in the A1111/Forge extension, validated in one table.

The system this replaces ran its face fixer whenever its options were an empty dict. Here the only
switch is ``adetailer`` (default false); ``need_skip`` says in one line when nothing runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from request.errors import InputError
from request.fields import FieldSpec, validate_fields

AD_FIELDS: Mapping[str, FieldSpec] = {
    "adetailer": FieldSpec(bool, default=False, description="Fix faces/hands after generation (ADetailer). Off unless true."),
    "adetailer_face": FieldSpec(bool, default=True, description="With adetailer: run the face pass."),
    "adetailer_hands": FieldSpec(bool, default=False, description="With adetailer: run the hands pass (after faces)."),
    "ad_confidence": FieldSpec(float, default=0.3, minimum=0.0, maximum=1.0, description="Detection confidence threshold."),
    "ad_mask_k_largest": FieldSpec(int, default=0, minimum=0, maximum=20, description="Keep the k largest detections (0 = all)."),
    "ad_mask_min_ratio": FieldSpec(float, default=0.0, minimum=0.0, maximum=1.0, description="Drop detections smaller than this share of the image."),
    "ad_mask_max_ratio": FieldSpec(float, default=1.0, minimum=0.0, maximum=1.0, description="Drop detections larger than this share of the image."),
    "ad_dilate_erode": FieldSpec(int, default=4, minimum=-128, maximum=128, description="Grow (>0) or shrink (<0) each mask, pixels."),
    "ad_mask_blur": FieldSpec(int, default=4, minimum=0, maximum=64, description="Feather the pasted mask edge, pixels."),
    "ad_denoising_strength": FieldSpec(float, default=0.4, minimum=0.0, maximum=1.0, description="How much the inpaint may change the region."),
    "ad_inpaint_only_masked_padding": FieldSpec(int, default=32, minimum=0, maximum=256, description="Context around each mask for the inpaint crop, pixels."),
    "ad_prompt": FieldSpec(str, default="", max_length=10_000, description="Prompt for the inpaint. Empty: the main prompt."),
    "ad_negative_prompt": FieldSpec(str, default="", max_length=10_000, description="Negative prompt for the inpaint. Empty: the main one."),
    "ad_steps": FieldSpec(int, minimum=1, maximum=100, optional=True, description="Inpaint steps before strength. Empty: the preset's."),
    "ad_cfg_scale": FieldSpec(float, minimum=0.0, maximum=20.0, optional=True, description="Inpaint guidance. Empty: the preset's."),
}


@dataclass(frozen=True)
class ADetailerArgs:
    adetailer: bool
    adetailer_face: bool
    adetailer_hands: bool
    ad_confidence: float
    ad_mask_k_largest: int
    ad_mask_min_ratio: float
    ad_mask_max_ratio: float
    ad_dilate_erode: int
    ad_mask_blur: int
    ad_denoising_strength: float
    ad_inpaint_only_masked_padding: int
    ad_prompt: str
    ad_negative_prompt: str
    ad_steps: Optional[int]
    ad_cfg_scale: Optional[float]

    def passes(self) -> tuple[str, ...]:
        """The passes to run, in order: faces first, then hands."""
        if not self.adetailer:
            return ()
        return tuple(name for name, on in (("face", self.adetailer_face), ("hands", self.adetailer_hands)) if on)

    def need_skip(self) -> bool:
        return not self.passes()


def parse_adetailer_args(raw: Mapping[str, Any]) -> ADetailerArgs:
    args = ADetailerArgs(**validate_fields(raw, AD_FIELDS))
    if args.ad_mask_min_ratio > args.ad_mask_max_ratio:
        raise InputError(
            "ad_mask_min_ratio", args.ad_mask_min_ratio, f"must not exceed ad_mask_max_ratio ({args.ad_mask_max_ratio})"
        )
    return args
