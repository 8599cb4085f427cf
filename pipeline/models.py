"""The models the service can serve, as data: which pipeline, where the operator's weights are,
which preset family, and which request options each supports."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional


@dataclass(frozen=True)
class ModelSpec:
    name: str
    pipeline_class: str
    weights_env: str
    default_weights: str
    single_file: bool  # whether a single .safetensors checkpoint can be loaded (with shipped configs)
    negative_prompt: bool
    schedulers: bool  # whether the request's sampler choice applies
    ip_adapter: bool  # face_image (IP-Adapter identity)
    inpaint_pipeline_class: str  # the ADetailer pass's pipeline, built with from_pipe
    size_multiple: int  # width/height must be multiples of this


MODELS: Mapping[str, ModelSpec] = {
    "sdxl": ModelSpec(
        "sdxl", "StableDiffusionXLPipeline", "SDXL_WEIGHTS", "weights/sdxl", single_file=True, negative_prompt=True,
        schedulers=True, ip_adapter=True, inpaint_pipeline_class="StableDiffusionXLInpaintPipeline", size_multiple=8,
    ),
    # Flux packs 2x2 latent patches over an 8x VAE: sides are multiples of 16. It has no
    # negative prompt and one sampler (flow-matching Euler).
    "flux-dev": ModelSpec(
        "flux-dev", "FluxPipeline", "FLUX_DEV_WEIGHTS", "weights/flux-dev", single_file=False, negative_prompt=False,
        schedulers=False, ip_adapter=True, inpaint_pipeline_class="FluxInpaintPipeline", size_multiple=16,
    ),
    "flux-schnell": ModelSpec(
        "flux-schnell", "FluxPipeline", "FLUX_SCHNELL_WEIGHTS", "weights/flux-schnell", single_file=False,
        negative_prompt=False, schedulers=False, ip_adapter=True, inpaint_pipeline_class="FluxInpaintPipeline",
        size_multiple=16,
    ),
}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)
DEFAULT_MODEL_ENV = "DEFAULT_MODEL"


def default_model_name() -> str:
    """The operator's ``$DEFAULT_MODEL`` (loaded at start-up), ``sdxl`` when unset."""
    name = os.environ.get(DEFAULT_MODEL_ENV) or "sdxl"
    if name not in MODELS:
        raise ValueError(f"${DEFAULT_MODEL_ENV}={name!r}: allowed {', '.join(MODELS)}")
    return name


def weights_setting(name: str, explicit: Optional[str] = None) -> str:
    """The weights path or URL for model ``name``: an explicit value, else its env var, else its default."""
    spec = MODELS[name]
    return str(explicit or os.environ.get(spec.weights_env) or spec.default_weights)


def available_models(explicit_default: Optional[str] = None, default_model: Optional[str] = None) -> list[str]:
    """Models whose weights are configured and present (a URL counts as present: it is fetched on load).

    ``explicit_default`` is Cog's ``COG_WEIGHTS`` and belongs to the default model.
    """
    default = default_model or default_model_name()
    found = []
    for name in MODELS:
        setting = weights_setting(name, explicit_default if name == default else None)
        if setting.startswith(("http://", "https://")) or Path(setting).expanduser().exists():
            found.append(name)
    return found
