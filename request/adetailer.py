"""ADetailer's request options, named as in the A1111/Forge extension and declared once, as the
fields of ``ADetailerArgs`` (a pydantic model, like the extension's own ``ADetailerArgs``).

The system this replaces ran its face fixer whenever its options were an empty dict. Here the only
switch is ``adetailer`` (default false); ``need_skip`` says in one line when nothing runs.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from request.catalog import SCHEDULER_NAMES
from request.errors import InputError
from request.fields import Flag, Int, Number, Text, parse

log = logging.getLogger(__name__)


# A1111/Forge sampler names (ADetailer's ad_sampler) -> this service's (request.catalog.SCHEDULERS)
AD_SAMPLERS: Mapping[str, str] = {
    "Euler": "K_EULER", "Euler a": "K_EULER_ANCESTRAL", "DPM++ 2M": "DPMSolverMultistep",
    "DPM++ 2M Karras": "KarrasDPM", "DDIM": "DDIM", "Heun": "HeunDiscrete", "PLMS": "PNDM",
}
MERGE_INVERT = ("None", "Merge", "Merge and Invert")
AUTO_MODEL = "auto"  # the operator's YOLO weights when present, else mediapipe


class ADetailerArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="after")
    def _ratios_in_order(self) -> "ADetailerArgs":
        if self.ad_mask_min_ratio > self.ad_mask_max_ratio:
            raise InputError("ad_mask_min_ratio", self.ad_mask_min_ratio,
                             f"must not exceed ad_mask_max_ratio ({self.ad_mask_max_ratio})")
        return self

    adetailer: Flag = Field(False, description="Fix faces/hands after generation (ADetailer). Off unless true.")
    adetailer_face: Flag = Field(True, description="With adetailer: run the face pass.")
    adetailer_hands: Flag = Field(False, description="With adetailer: run the hands pass (after faces).")
    adetailer_person: Flag = Field(
        False, description="With adetailer: first run a person pass on the operator's person segmentation model "
                           "(person_yolov8n-seg.pt in ADETAILER_MODELS); its masks are the segments.")
    ad_model: Text = Field(
        AUTO_MODEL, max_length=200,
        description="The face pass's detector: a YOLO file in the operator's ADETAILER_MODELS (face_yolov8n.pt...), "
                    "mediapipe_face_full or mediapipe_face_short. auto: YOLO when present, else mediapipe.")
    ad_hand_model: Text = Field(
        AUTO_MODEL, max_length=200,
        description="The hands pass's detector: a YOLO file in ADETAILER_MODELS (hand_yolov8n.pt...) or mediapipe_hands. "
                    "auto: YOLO when present, else mediapipe.")
    ad_confidence: Number = Field(0.3, ge=0.0, le=1.0, description="Detection confidence threshold.")
    ad_mask_filter_method: Literal["Area", "Confidence"] = Field(
        "Area", description="How ad_mask_k picks its detections: the largest, or the most confident.")
    ad_mask_k: Int = Field(0, ge=0, le=20, description="Keep only the top k detections (0 = all).")
    ad_mask_k_largest: Optional[Int] = Field(
        None, ge=0, le=20, description="Deprecated: ad_mask_k with ad_mask_filter_method Area. Empty: unused.")
    ad_mask_min_ratio: Number = Field(0.0, ge=0.0, le=1.0, description="Drop detections smaller than this share of the image.")
    ad_mask_max_ratio: Number = Field(1.0, ge=0.0, le=1.0, description="Drop detections larger than this share of the image.")
    ad_x_offset: Int = Field(0, ge=-512, le=512, description="Move each mask right (>0) or left, pixels.")
    ad_y_offset: Int = Field(0, ge=-512, le=512, description="Move each mask up (>0) or down, pixels (ADetailer's sign).")
    ad_dilate_erode: Int = Field(4, ge=-128, le=128, description="Grow (>0) or shrink (<0) each mask, pixels.")
    ad_mask_merge_invert: Literal[MERGE_INVERT] = Field(  # type: ignore[valid-type]
        "None", description="None: one inpaint per detection. Merge: one for all. Merge and Invert: everything but them.")
    ad_mask_blur: Int = Field(4, ge=0, le=64, description="Feather the pasted mask edge, pixels.")
    ad_denoising_strength: Number = Field(0.4, ge=0.0, le=1.0, description="How much the inpaint may change the region.")
    ad_inpaint_only_masked: Flag = Field(True, description="Inpaint a crop around each mask (true) or the whole image (false).")
    ad_inpaint_only_masked_padding: Int = Field(32, ge=0, le=256, description="Context around each mask for the inpaint crop, pixels.")
    ad_use_inpaint_width_height: Flag = Field(
        False, description="Inpaint at ad_inpaint_width x ad_inpaint_height instead of the model's native area.")
    ad_inpaint_width: Int = Field(512, ge=64, le=2048, description="With ad_use_inpaint_width_height: the inpaint width.")
    ad_inpaint_height: Int = Field(512, ge=64, le=2048, description="With ad_use_inpaint_width_height: the inpaint height.")
    ad_prompt: Text = Field("", max_length=10_000,
                            description="Prompt for the inpaint; [SEP] gives each detection its own, [PROMPT] inserts the "
                                        "main prompt, [SKIP] skips a detection. Empty: the main prompt.")
    ad_negative_prompt: Text = Field("", max_length=10_000,
                                     description="Negative prompt for the inpaint, with [SEP] and [PROMPT]. Empty: the main one.")
    ad_use_steps: Flag = Field(False, description="Use ad_steps for the inpaint instead of the main steps.")
    ad_steps: Int = Field(28, ge=1, le=150, description="With ad_use_steps: inpaint steps before strength.")
    ad_use_cfg_scale: Flag = Field(False, description="Use ad_cfg_scale for the inpaint instead of the main guidance.")
    ad_cfg_scale: Number = Field(7.0, ge=0.0, le=30.0, description="With ad_use_cfg_scale: inpaint guidance.")
    ad_use_sampler: Flag = Field(False, description="Use ad_sampler for the inpaint instead of the main scheduler.")
    ad_sampler: Literal[tuple(AD_SAMPLERS) + tuple(SCHEDULER_NAMES)] = Field(  # type: ignore[valid-type]
        "DPM++ 2M Karras", description="With ad_use_sampler: the inpaint's sampler (A1111 or this service's names).")

    def passes(self) -> tuple[str, ...]:
        """The passes to run, in order, coarse to fine: people, then faces, then hands."""
        if not self.adetailer:
            return ()
        wanted = (("person", self.adetailer_person), ("face", self.adetailer_face), ("hands", self.adetailer_hands))
        return tuple(name for name, on in wanted if on)

    def need_skip(self) -> bool:
        return not self.passes()

    def detector(self, pass_name: str) -> str:
        """The detector the request names for ``pass_name`` (``auto`` for the operator's default)."""
        return {"face": self.ad_model, "hands": self.ad_hand_model}.get(pass_name, AUTO_MODEL)

    def sampler(self, main: str) -> str:
        """The inpaint's scheduler, in this service's names: ``ad_sampler`` when ``ad_use_sampler``, else ``main``."""
        return AD_SAMPLERS.get(self.ad_sampler, self.ad_sampler) if self.ad_use_sampler else main


def parse_adetailer_args(raw: Mapping[str, Any]) -> ADetailerArgs:
    args = parse(ADetailerArgs, raw)
    if args.ad_mask_k_largest is not None:
        if args.ad_mask_k or args.ad_mask_filter_method != "Area":
            raise InputError("ad_mask_k_largest", args.ad_mask_k_largest,
                             "deprecated alias of ad_mask_k with ad_mask_filter_method Area; send only ad_mask_k")
        log.warning("ad_mask_k_largest is deprecated (ADetailer renamed it): use ad_mask_k with ad_mask_filter_method Area")
        args = args.model_copy(update={"ad_mask_k": args.ad_mask_k_largest, "ad_mask_k_largest": None})
    if args.adetailer:
        for switch, name in (("ad_use_steps", "ad_steps"), ("ad_use_cfg_scale", "ad_cfg_scale"),
                             ("ad_use_inpaint_width_height", "ad_inpaint_width"),
                             ("ad_use_inpaint_width_height", "ad_inpaint_height"), ("ad_use_sampler", "ad_sampler")):
            if not getattr(args, switch) and getattr(args, name) != ADetailerArgs.model_fields[name].default:
                log.info("ADetailer: %s=%r is not used: %s is false (as in the extension)", name, getattr(args, name), switch)
    return args
