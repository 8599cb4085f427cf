"""Apply a hardware profile to a pipeline: quantization at load, then slicing, tiling and offload.

Quantization happens while loading (bitsandbytes int8/nf4 through diffusers'
``PipelineQuantizationConfig``) or right after it (fp8 weight storage through diffusers' layerwise
casting hooks, computing in bf16); the rest are the pipeline's own memory switches.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

from hardware.profiles import BITSANDBYTES_KINDS, Profile

log = logging.getLogger(__name__)

def _bnb_config(kind: str, library: str) -> Any:
    import torch

    if library == "diffusers":
        from diffusers import BitsAndBytesConfig
    else:
        from transformers import BitsAndBytesConfig
    if kind == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)


def quantization_config(profile: Profile, quantized: Mapping[str, str]) -> Optional[Any]:
    """The load-time quantization under ``profile`` of a family's ``quantized`` components (component ->
    the profile setting that quantizes it; Flux: transformer and T5), or None."""
    mapping = {}
    for component, setting in quantized.items():
        kind = getattr(profile, setting)
        if kind in BITSANDBYTES_KINDS:
            mapping[component] = _bnb_config(kind, "diffusers" if component == "transformer" else "transformers")
    if not mapping:
        return None
    from diffusers import PipelineQuantizationConfig

    return PipelineQuantizationConfig(quant_mapping=mapping)


def apply_fp8_storage(pipe: Any, profile: Profile) -> bool:
    """Store the Flux transformer's weights in float8 and upcast each layer to its compute dtype as it
    runs: half the memory of bf16 (lossy; the deviation is reported by the speed benchmark).

    Only the transformer: T5 is a transformers model whose dtype the Flux pipeline reads to cast its
    inputs, which breaks under fp8 storage, so T5 uses int8/nf4 instead.
    """
    import torch

    if profile.flux_quantization != "fp8":
        return False
    pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=pipe.transformer.dtype)
    return True


def place_pipeline(pipe: Any, profile: Profile, device: str, already_placed: bool) -> None:
    """Turn on the profile's memory switches and put the pipeline on its device (or offload it)."""
    if profile.vae_slicing:
        pipe.vae.enable_slicing()
    if profile.vae_tiling:
        pipe.vae.enable_tiling()
    if profile.attention_slicing:
        pipe.enable_attention_slicing()
    if profile.offload == "model":
        pipe.enable_model_cpu_offload()
    elif profile.offload == "sequential":
        pipe.enable_sequential_cpu_offload()
    elif not already_placed:
        pipe.to(device)


def cleanup_after_image(profile: Profile, device: str) -> None:
    """Small-memory profiles return cached blocks after every image, so the next one starts clean."""
    if not profile.cleanup_after_image:
        return
    import gc

    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    elif device == "mps":
        torch.mps.empty_cache()
