"""Load Flux (dev or schnell) from a diffusers folder onto the chosen device.

Flux is trained in bfloat16; fp16 overflows in its deep transformer, so CUDA loads use bf16 while
the CPU keeps the backend's fp32.
"""

from __future__ import annotations

from pipeline.loading import LoadedModel
from startup.backend import Backend
from startup.weights import WeightsError, WeightsSource


def flux_dtype_name(backend: Backend) -> str:
    return "bfloat16" if backend.device == "cuda" else backend.dtype_name


def load_flux(source: WeightsSource, backend: Backend) -> LoadedModel:
    import torch
    from diffusers import FluxPipeline

    device_map = backend.device if backend.device == "cuda" else None
    try:
        pipe = FluxPipeline.from_pretrained(
            str(source.path), dtype=getattr(torch, flux_dtype_name(backend)), use_safetensors=True,
            local_files_only=True, device_map=device_map,
        )
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise WeightsError(f"could not load {source.model} from {source.path}: {error}") from error
    if device_map is None:
        pipe.to(backend.device)
    pipe.set_progress_bar_config(disable=True)  # per-step progress is logged by the generator
    return LoadedModel(family=source.model, pipe=pipe, base_scheduler_config=dict(pipe.scheduler.config), source=source)
