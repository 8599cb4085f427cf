"""Which SDPA kernel attention tries first, per call (the ``attention`` speed switch)."""

from __future__ import annotations

import contextlib
from typing import Iterator

from pipeline.speed.settings import SpeedSettings

ATTENTION_ORDER = {
    "cudnn": ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"),
    "flash": ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH"),
    "efficient": ("EFFICIENT_ATTENTION", "FLASH_ATTENTION", "CUDNN_ATTENTION", "MATH"),
}


@contextlib.contextmanager
def attention_kernels(settings: SpeedSettings) -> Iterator[None]:
    """Within the block, SDPA tries the chosen kernel first (both SDXL's processors and Flux's
    attention dispatcher call SDPA); 'auto' leaves PyTorch's order alone."""
    if settings.attention == "auto":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [getattr(SDPBackend, name) for name in ATTENTION_ORDER[settings.attention]]
    with sdpa_kernel(order, set_priority=True):
        yield
