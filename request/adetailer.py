"""ADetailer's request options, named as in the A1111/Forge extension and declared once, as the
fields of ``ADetailerArgs`` (a pydantic model, like the extension's own ``ADetailerArgs``).

The system this replaces ran its face fixer whenever its options were an empty dict. Here the only
switch is ``adetailer`` (default false); ``need_skip`` says in one line when nothing runs.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field

from request.errors import InputError
from request.fields import Flag, Int, Number, Text, parse


class ADetailerArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    adetailer: Flag = Field(False, description="Fix faces/hands after generation (ADetailer). Off unless true.")
    adetailer_face: Flag = Field(True, description="With adetailer: run the face pass.")
    adetailer_hands: Flag = Field(False, description="With adetailer: run the hands pass (after faces).")
    ad_confidence: Number = Field(0.3, ge=0.0, le=1.0, description="Detection confidence threshold.")
    ad_mask_k_largest: Int = Field(0, ge=0, le=20, description="Keep the k largest detections (0 = all).")
    ad_mask_min_ratio: Number = Field(0.0, ge=0.0, le=1.0, description="Drop detections smaller than this share of the image.")
    ad_mask_max_ratio: Number = Field(1.0, ge=0.0, le=1.0, description="Drop detections larger than this share of the image.")
    ad_dilate_erode: Int = Field(4, ge=-128, le=128, description="Grow (>0) or shrink (<0) each mask, pixels.")
    ad_mask_blur: Int = Field(4, ge=0, le=64, description="Feather the pasted mask edge, pixels.")
    ad_denoising_strength: Number = Field(0.4, ge=0.0, le=1.0, description="How much the inpaint may change the region.")
    ad_inpaint_only_masked_padding: Int = Field(32, ge=0, le=256, description="Context around each mask for the inpaint crop, pixels.")
    ad_prompt: Text = Field("", max_length=10_000, description="Prompt for the inpaint. Empty: the main prompt.")
    ad_negative_prompt: Text = Field("", max_length=10_000, description="Negative prompt for the inpaint. Empty: the main one.")
    ad_steps: Optional[Int] = Field(None, ge=1, le=100, description="Inpaint steps before strength. Empty: the preset's.")
    ad_cfg_scale: Optional[Number] = Field(None, ge=0.0, le=20.0, description="Inpaint guidance. Empty: the preset's.")

    def passes(self) -> tuple[str, ...]:
        """The passes to run, in order: faces first, then hands."""
        if not self.adetailer:
            return ()
        return tuple(name for name, on in (("face", self.adetailer_face), ("hands", self.adetailer_hands)) if on)

    def need_skip(self) -> bool:
        return not self.passes()


def parse_adetailer_args(raw: Mapping[str, Any]) -> ADetailerArgs:
    args = parse(ADetailerArgs, raw)
    if args.ad_mask_min_ratio > args.ad_mask_max_ratio:
        raise InputError(
            "ad_mask_min_ratio", args.ad_mask_min_ratio, f"must not exceed ad_mask_max_ratio ({args.ad_mask_max_ratio})"
        )
    return args
