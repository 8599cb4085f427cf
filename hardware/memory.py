"""Free accelerator memory, asked in one place: profiles, the model cache's budget and storyboard
batches read it from here."""

from __future__ import annotations

from typing import Optional


def free_gpu_bytes(device: str) -> Optional[int]:
    """Free CUDA memory in bytes, or None off CUDA (host memory is the operator's to size)."""
    if device != "cuda":
        return None
    import torch

    return int(torch.cuda.mem_get_info()[0])
