"""The request schema: every field's bounds as data, and the one validator that enforces them.

Cog's HTTP server only enforces ``Input(ge=, le=, choices=)`` when the image carries the schema
written by ``cog build``; run any other way it passes raw JSON through. So the predictor validates
everything itself, from the same table ``predict.py`` uses to declare its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from pipeline.fields import FieldSpec, InputError, validate_fields
from pipeline.schedulers import SCHEDULER_NAMES
from presets import PRESET_NAMES

__all__ = ["ASPECT_RATIOS", "FIELDS", "GenerationRequest", "InputError", "parse_request"]

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
    "prompt": FieldSpec(str, max_length=10_000, description="What to generate."),
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
}


@dataclass(frozen=True)
class GenerationRequest:
    """A fully validated request: every field has a legal value of the right type."""

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
    if not values["prompt"].strip():
        raise InputError("prompt", values["prompt"], "must not be empty")
    width, height = _size(values.pop("aspect_ratio"), values.pop("width"), values.pop("height"))
    return GenerationRequest(width=width, height=height, **values)
