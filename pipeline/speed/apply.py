"""Apply the speed settings to a freshly loaded model: the module changes made once at load (fused
QKV, channels-last, fp8 matmuls, the step cache, armed compilation) and the CUDA-graph runner."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from pipeline.speed.fused_qkv import share_fused_weights
from pipeline.speed.settings import SpeedSettings

log = logging.getLogger(__name__)


def apply_speedups(pipe: Any, settings: SpeedSettings, model_name: str, device: str) -> Optional[Any]:
    """Apply ``settings`` to a freshly loaded pipeline; the denoiser's CUDA-graph runner when graphs
    are on (``pipeline.speed.cuda_graphs``), else None."""
    cache = None
    if settings.compile != "off":
        from pipeline.speed.compile_cache import cache_path

        cache = cache_path(model_name, device)
    apply_at_load(pipe, settings, compile_cache=cache)
    if settings.cuda_graphs:
        from pipeline.speed.cuda_graphs import graph_runner

        return graph_runner(pipe)
    return None


def apply_at_load(pipe: Any, settings: SpeedSettings, compile_cache: Optional[Path] = None) -> None:
    """Change the loaded model's modules as the settings ask (before any adapter is attached, so
    an IP-Adapter's saved 'plain' processors are the fused ones). Compilation is only armed here,
    with ``compile_cache``'s artifacts restored; it happens on the first call."""
    import torch

    unet = getattr(pipe, "unet", None)
    transformer = getattr(pipe, "transformer", None)
    if settings.fuse_qkv:
        if unet is not None:
            pipe.fuse_qkv_projections(unet=True, vae=True)
        elif transformer is not None:
            transformer.fuse_qkv_projections()
        shared = sum(share_fused_weights(module) for module in (unet, transformer, pipe.vae) if module is not None)
        log.info("fused QKV projections; the unfused ones now view the fused weights (%.2f GB not duplicated)", shared / 1e9)
    if settings.channels_last:
        for module in (unet, pipe.vae):  # Flux's transformer has no convolutions
            if module is not None:
                module.to(memory_format=torch.channels_last)
    if settings.fp8_matmul and transformer is not None:
        from pipeline.speed.fp8_linear import convert_blocks

        log.info("fp8 matmuls: %d Linear layers of the transformer blocks converted (lossy)", convert_blocks(transformer))
    if settings.step_cache == "first_block" and transformer is not None:
        from diffusers.hooks import FirstBlockCacheConfig

        from pipeline.speed.settings import speed_table  # looked up now: the data file is read per load

        threshold = speed_table()["step_cache"]["first_block_threshold"]
        transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    if settings.compile == "regional":
        from pipeline.speed.compile_cache import compile_denoiser, restore

        if compile_cache is not None:
            restore(compile_cache)
        compile_denoiser(pipe)
