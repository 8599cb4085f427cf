"""Apply the speed settings to a freshly loaded model: the module changes made once at load (fused
QKV, channels-last, the step cache) and the CUDA-graph runner. go_fast's denoiser is built beside
the model later, in the background (``pipeline.fast_path``)."""

from __future__ import annotations

import logging
from typing import Any, Optional

from pipeline.speed.fused_qkv import share_fused_weights
from pipeline.speed.settings import SpeedSettings

log = logging.getLogger(__name__)


def apply_speedups(pipe: Any, settings: SpeedSettings) -> Optional[Any]:
    """Apply ``settings`` to a freshly loaded pipeline; the denoiser's CUDA-graph runner when graphs
    are on (``pipeline.speed.cuda_graphs``), else None."""
    apply_at_load(pipe, settings)
    if settings.cuda_graphs:
        from pipeline.speed.cuda_graphs import graph_runner

        return graph_runner(pipe)
    return None


def apply_at_load(pipe: Any, settings: SpeedSettings) -> None:
    """Change the loaded model's modules as the settings ask (before any adapter is attached, so
    an IP-Adapter's saved 'plain' processors are the fused ones)."""
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
    if settings.step_cache == "first_block" and transformer is not None:
        from diffusers.hooks import FirstBlockCacheConfig

        from pipeline.speed.settings import speed_table  # looked up now: the data file is read per load

        threshold = speed_table()["step_cache"]["first_block_threshold"]
        transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
