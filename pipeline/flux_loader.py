"""Load Flux (dev or schnell) from a diffusers folder onto the chosen device.

Flux is trained in bfloat16; fp16 overflows in its deep transformer, so CUDA loads use bf16 while
the CPU keeps the backend's fp32.
"""

from __future__ import annotations

import logging

from pipeline.loading import LoadedModel
from pipeline.memory import apply_fp8_storage, flux_quantization_config, place_pipeline
from pipeline.shared_components import shared_components
from startup.backend import Backend
from startup.weights import WeightsError, WeightsSource

log = logging.getLogger(__name__)


def flux_dtype_name(backend: Backend) -> str:
    return "bfloat16" if backend.device == "cuda" else backend.dtype_name


def load_flux(source: WeightsSource, backend: Backend) -> LoadedModel:
    """Load under the backend's hardware profile: bitsandbytes int8/nf4 while loading, fp8 weight
    storage after it, then the profile's slicing/offload switches."""
    import torch
    from diffusers import FluxPipeline

    profile = backend.settings
    quantization = flux_quantization_config(profile)
    direct = backend.device == "cuda" and profile.offload == "none" and quantization is None
    device_map = backend.device if direct else None
    shared = shared_components(source, "FluxPipeline")
    try:
        pipe = FluxPipeline.from_pretrained(
            str(source.path), dtype=getattr(torch, flux_dtype_name(backend)), use_safetensors=True,
            local_files_only=True, device_map=device_map, quantization_config=quantization, **shared,
        )
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise WeightsError(f"could not load {source.model} from {source.path}: {error}") from error
    place_pipeline(pipe, profile, backend.device, already_placed=device_map is not None)
    if apply_fp8_storage(pipe, profile):
        log.info("%s transformer weights stored in fp8 (lossy), computed in %s", source.model, flux_dtype_name(backend))
    pipe.set_progress_bar_config(disable=True)  # per-step progress is logged by the generator
    return LoadedModel(
        family=source.model, pipe=pipe, base_scheduler_config=dict(pipe.scheduler.config), source=source,
        profile=profile,
    )
