"""Load Flux (dev or schnell) from a diffusers folder onto the chosen device.

Flux is trained in bfloat16; fp16 overflows in its deep transformer, so CUDA loads use bf16 while
the CPU keeps the backend's fp32.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from hardware.backend import Backend
from pipeline.loading.component_build import streamed_components
from pipeline.loading.placement import apply_fp8_storage, place_pipeline, quantization_config
from pipeline.loading.shared import shared_components
from pipeline.loading.stream import WeightStream
from pipeline.loading.weights import WeightsError
from pipeline.models import LoadedModel, WeightsSource

log = logging.getLogger(__name__)


def flux_dtype_name(backend: Backend) -> str:
    return "bfloat16" if backend.device == "cuda" else backend.dtype_name


def load_flux(source: WeightsSource, backend: Backend, family: Any, stream: Optional[WeightStream] = None) -> LoadedModel:
    """Load under the backend's hardware profile: bitsandbytes int8/nf4 while loading, fp8 weight
    storage after it, then the profile's slicing/offload switches (``family``: Flux's, which says what
    bitsandbytes quantizes). Components that are neither
    quantized at load nor shared with a resident model are built from a weight stream (``stream``,
    started early by the start-up chain, or here): see ``pipeline.loading.component_build``."""
    import torch
    from diffusers import FluxPipeline

    profile = backend.settings
    quantization = quantization_config(profile, family.quantized)
    direct = backend.device == "cuda" and profile.offload == "none" and quantization is None
    device_map = backend.device if direct else None
    shared = shared_components(source)
    dtype = getattr(torch, flux_dtype_name(backend))
    try:
        built = {}
        if profile.offload == "none":
            skip = set(shared) | family.quantized_at_load(profile)
            built = streamed_components(source.path, dtype, backend.device, skip=skip, stream=stream)
        pipe = FluxPipeline.from_pretrained(
            str(source.path), dtype=dtype, use_safetensors=True, local_files_only=True, device_map=device_map,
            quantization_config=quantization, **shared, **built,
        )
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise WeightsError(f"could not load {source.model} from {source.path}: {error}") from error
    place_pipeline(pipe, profile, backend.device, already_placed=device_map is not None)
    if apply_fp8_storage(pipe, profile):
        log.info("%s transformer weights stored in fp8 (lossy), computed in %s", source.model, flux_dtype_name(backend))
    pipe.set_progress_bar_config(disable=True)  # per-step progress is logged by the generator
    return LoadedModel(pipe=pipe, base_scheduler_config=dict(pipe.scheduler.config), source=source, profile=profile)
