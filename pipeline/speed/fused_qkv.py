"""Fused Q/K/V projections that cost no memory: the unfused layers become views of the fused rows."""

from __future__ import annotations

from typing import Any

# fused projection -> the projections it concatenates, in row order (diffusers' fuse_projections)
FUSED_PARTS = {
    "to_qkv": ("to_q", "to_k", "to_v"),
    "to_kv": ("to_k", "to_v"),
    "to_added_qkv": ("add_q_proj", "add_k_proj", "add_v_proj"),
}


def share_fused_weights(model: Any) -> int:
    """Point each unfused projection's weight and bias at its rows of the fused copy; bytes saved.

    diffusers' ``fuse_qkv_projections`` concatenates Q, K and V into a new layer and keeps the
    originals, which the IP-Adapter's processors still use: every Q, K and V projection would be
    held twice (the load log prints how many bytes that is). As views of the fused rows, both paths read the same memory.
    """
    import torch

    saved = 0
    for module in model.modules():
        if not getattr(module, "fused_projections", False):
            continue
        for fused_name, part_names in FUSED_PARTS.items():
            fused = getattr(module, fused_name, None)
            parts = [getattr(module, name, None) for name in part_names]
            if fused is None or any(part is None for part in parts):
                continue
            start = 0
            for part in parts:
                rows = part.weight.shape[0]
                saved += part.weight.numel() * part.weight.element_size()
                part.weight = torch.nn.Parameter(fused.weight.data[start:start + rows], requires_grad=False)
                if part.bias is not None and fused.bias is not None:
                    part.bias = torch.nn.Parameter(fused.bias.data[start:start + rows], requires_grad=False)
                start += rows
    return saved
