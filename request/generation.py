"""The request schema: every field's bounds as data, and the one validator that enforces them.

Cog's HTTP server only enforces ``Input(ge=, le=, choices=)`` when the image carries the schema
written by ``cog build``; run any other way it passes raw JSON through. So the predictor validates
everything itself, from the same table ``predict.py`` uses to declare its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from presets import PRESET_NAMES
from request.catalog import MODEL_NAMES, SCHEDULER_NAMES, ModelSpec
from request.errors import InputError
from request.fields import FieldSpec, validate_fields
from request.scenes import MAX_SCENES, parse_scenes

__all__ = ["ASPECT_RATIOS", "FIELDS", "GenerationRequest", "InputError", "check_model_options", "parse_request"]

# Replicate's usual aspect ratios, mapped to SDXL's trained ~1 megapixel buckets (multiples of 64).
ASPECT_RATIOS: Mapping[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "16:9": (1344, 768),
    "21:9": (1536, 640),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "4:5": (896, 1088),
    "5:4": (1088, 896),
    "3:4": (896, 1152),
    "4:3": (1152, 896),
    "9:16": (768, 1344),
    "9:21": (640, 1536),
}
CUSTOM_ASPECT = "custom"
OUTPUT_FORMATS: tuple[str, ...] = ("webp", "jpg", "png")


FIELDS: Mapping[str, FieldSpec] = {
    "model": FieldSpec(
        str, optional=True, choices=MODEL_NAMES,
        description="Which model: sdxl, flux-dev or flux-schnell (those the operator has weights for). Empty: the operator's default.",
    ),
    "prompt": FieldSpec(
        str, default="", max_length=10_000,
        description="What to generate. With scenes: a style added to every scene (may be empty).",
    ),
    "negative_prompt": FieldSpec(
        str, default="", max_length=10_000, description="What to steer away from."
    ),
    "preset": FieldSpec(
        str,
        default="balanced",
        choices=PRESET_NAMES,
        description="Quality preset: sets steps, guidance and IP-Adapter scale.",
    ),
    "num_inference_steps": FieldSpec(
        int, minimum=1, maximum=100, optional=True,
        description="Denoising steps. Empty: from the preset.",
    ),
    "guidance_scale": FieldSpec(
        float, minimum=0.0, maximum=20.0, optional=True,
        description="Classifier-free guidance. Empty: from the preset.",
    ),
    "aspect_ratio": FieldSpec(
        str,
        default="1:1",
        choices=tuple(ASPECT_RATIOS) + (CUSTOM_ASPECT,),
        description="Image shape at about one megapixel. 'custom' uses width and height.",
    ),
    "width": FieldSpec(
        int, minimum=64, maximum=2048, multiple_of=8, optional=True,
        description="Image width; give it with height. Overrides aspect_ratio.",
    ),
    "height": FieldSpec(
        int, minimum=64, maximum=2048, multiple_of=8, optional=True,
        description="Image height; give it with width. Overrides aspect_ratio.",
    ),
    "num_outputs": FieldSpec(int, default=1, minimum=1, maximum=4, description="Images to make."),
    "seed": FieldSpec(
        int, minimum=0, maximum=2**32 - 1, optional=True,
        description="Random seed. Empty: random; the seed used is logged and recorded.",
    ),
    "scheduler": FieldSpec(
        str, default="K_EULER", choices=SCHEDULER_NAMES, description="Sampler."
    ),
    "output_format": FieldSpec(
        str, default="webp", choices=OUTPUT_FORMATS, description="Image file format."
    ),
    "output_quality": FieldSpec(
        int, default=80, minimum=1, maximum=100,
        description="Quality for webp and jpg (1-100). Ignored for png.",
    ),
    "face_image": FieldSpec(
        Path, optional=True,
        description="Reference face: keeps this identity in every image (IP-Adapter). Empty: none.",
    ),
    "ip_adapter_scale": FieldSpec(
        float, minimum=0.0, maximum=1.5, optional=True,
        description="How strongly face_image steers the image. Empty: from the preset.",
    ),
    "scenes": FieldSpec(
        str, default="", max_length=12_000,
        description=f"Storyboard: one scene per line, up to {MAX_SCENES}. Returns one image per scene and a contact sheet.",
    ),
    "character": FieldSpec(
        str, default="", max_length=2_000,
        description="Storyboard: the character description, put first in every scene's prompt.",
    ),
}


@dataclass(frozen=True)
class GenerationRequest:
    """A fully validated request: every field has a legal value of the right type."""

    model: Optional[str]
    prompt: str
    negative_prompt: str
    preset: str
    num_inference_steps: Optional[int]
    guidance_scale: Optional[float]
    width: int
    height: int
    num_outputs: int
    seed: Optional[int]
    scheduler: str
    output_format: str
    output_quality: int
    face_image: Optional[Path]
    ip_adapter_scale: Optional[float]
    scenes: tuple[str, ...]
    character: str


def _size(aspect_ratio: str, width: Optional[int], height: Optional[int]) -> tuple[int, int]:
    """Explicit width and height win; otherwise the aspect ratio picks a trained bucket."""
    if (width is None) != (height is None):
        missing = "height" if height is None else "width"
        given = "width" if missing == "height" else "height"
        raise InputError(missing, None, f"required when {given} is given")
    if width is not None and height is not None:
        return width, height
    if aspect_ratio == CUSTOM_ASPECT:
        raise InputError("aspect_ratio", aspect_ratio, "'custom' needs width and height")
    return ASPECT_RATIOS[aspect_ratio]


def parse_request(raw: Mapping[str, Any]) -> GenerationRequest:
    """Validate a raw input mapping (as Cog passes it) into a ``GenerationRequest``.

    Unknown keys are refused rather than ignored: a misspelt option silently doing nothing is the
    kind of bug this service exists to avoid.
    """
    values = validate_fields(raw, FIELDS)
    values["scenes"] = tuple(parse_scenes(values["scenes"]))
    if not values["prompt"].strip() and not values["scenes"]:
        raise InputError("prompt", values["prompt"], "must not be empty (or give scenes)")
    if values["character"].strip() and not values["scenes"]:
        raise InputError("character", values["character"], "only applies with scenes")
    if values["ip_adapter_scale"] is not None and values["face_image"] is None:
        raise InputError("ip_adapter_scale", values["ip_adapter_scale"], "only applies with face_image")
    if values["scenes"] and values["num_outputs"] != 1:
        raise InputError("num_outputs", values["num_outputs"], "must be 1 with scenes (one image per scene)")
    width, height = _size(values.pop("aspect_ratio"), values.pop("width"), values.pop("height"))
    return GenerationRequest(width=width, height=height, **values)


def check_model_options(request: GenerationRequest, spec: ModelSpec, ad_negative_prompt: str = "") -> None:
    """Refuse options the chosen model cannot honour, rather than half-apply them silently."""
    for name, value in (("negative_prompt", request.negative_prompt), ("ad_negative_prompt", ad_negative_prompt)):
        if value and not spec.negative_prompt:
            raise InputError(name, value, f"not supported by {spec.name}; leave it empty")
    if request.scheduler != FIELDS["scheduler"].default and not spec.schedulers:
        raise InputError(
            "scheduler", request.scheduler,
            f"{spec.name} has one sampler (flow-matching Euler); leave scheduler at {FIELDS['scheduler'].default}",
        )
    if request.face_image is not None and not spec.ip_adapter:
        raise InputError("face_image", str(request.face_image), f"not supported with {spec.name} yet; use sdxl")
    for name, value in (("width", request.width), ("height", request.height)):
        if value % spec.size_multiple:
            raise InputError(name, value, f"a multiple of {spec.size_multiple} for {spec.name}")
