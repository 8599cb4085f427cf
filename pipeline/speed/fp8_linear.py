"""Flux's transformer-block matmuls in float8 (opt-in, lossy): weights stored as e4m3 with one scale
per output row, activations quantised per token on the fly, multiplied by ``torch._scaled_mm`` (fp8
tensor cores on Hopper, fp32 accumulation, bf16 out).

Only the Linear layers inside the double and single blocks are converted, where nearly all of the
FLOPs are; the embedders and the output projection stay in bf16, as is usual for fp8 inference of
Flux. It halves those weights' memory too. The deviation from bf16 is reported by
``bench/bench_generation.py --ablate``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from pipeline.speed.fused_qkv import FUSED_PARTS

log = logging.getLogger(__name__)

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")


def fp8_matmul_supported(device: str) -> bool:
    """Row-wise scaled fp8 matmuls need compute capability 8.9 (Ada, Hopper) on CUDA; the CPU has a
    reference implementation (used by the tests)."""
    if device == "cuda":
        return torch.cuda.get_device_capability() >= (8, 9)
    return device == "cpu"


class Fp8Linear(torch.nn.Module):
    """A Linear layer computing in fp8 with row-wise scales."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # Weights and scales are kept as integer bits: ``module.to(dtype)`` (which pipelines call,
        # e.g. from_pipe) casts floating-point buffers, and would widen the fp8 weights and round
        # the fp32 scales they were quantised with.
        self.register_buffer("weight_bits", weight.view(torch.uint8))  # [out, in], row-major
        self.register_buffer("scale_bits", scale.float().view(torch.int32))  # [out]
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)

    @property
    def weight_fp8(self) -> torch.Tensor:
        return self.weight_bits.view(FP8)

    @property
    def weight_scale(self) -> torch.Tensor:
        return self.scale_bits.view(torch.float32)

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> "Fp8Linear":
        weight = linear.weight.detach()
        scale = (weight.abs().amax(dim=1).float() / FP8_MAX).clamp(min=1e-12)
        quantised = (weight.float() / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(quantised, scale, bias)

    def rows(self, start: int, stop: int) -> "Fp8Linear":
        """A layer computing output rows [start, stop) of this one, sharing its memory (for the
        unfused projections of a fused QKV layer)."""
        bias = None if self.bias is None else self.bias.data[start:stop]
        return Fp8Linear(self.weight_fp8[start:stop], self.weight_scale[start:stop], bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, self.in_features)
        # Per-token scales in the input's own precision, so quantising needs no fp32 copy of the
        # activations; the same (rounded) scale goes to the matmul, so the two agree exactly.
        scale = (flat.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
        quantised = (flat / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
        out = torch._scaled_mm(quantised, self.weight_fp8.t(), scale_a=scale.float(),
                               scale_b=self.weight_scale.view(1, -1), out_dtype=torch.bfloat16)
        if self.bias is not None:
            out = out + self.bias
        return out.to(x.dtype).reshape(*shape[:-1], self.out_features)


def _convertible(linear: torch.nn.Module) -> bool:
    return type(linear) is torch.nn.Linear and linear.in_features % 16 == 0 and linear.out_features % 16 == 0


def convert_blocks(transformer: Any) -> int:
    """Replace the Linear layers of Flux's blocks with ``Fp8Linear``; the number converted. A fused
    QKV layer is converted once and its unfused projections become row views of it."""
    converted = 0
    for list_name in BLOCK_LISTS:
        for block in getattr(transformer, list_name, []):
            for module in list(block.modules()):
                if getattr(module, "fused_projections", False):
                    for fused_name, part_names in FUSED_PARTS.items():
                        fused = getattr(module, fused_name, None)
                        if fused is None or not _convertible(fused):
                            continue
                        fp8 = Fp8Linear.from_linear(fused)
                        setattr(module, fused_name, fp8)
                        start = 0
                        for part_name in part_names:
                            rows = getattr(module, part_name).out_features
                            setattr(module, part_name, fp8.rows(start, start + rows))
                            start += rows
                        converted += 1
            for name, child in list(block.named_modules()):
                if not _convertible(child):
                    continue
                parent_name, _, attribute = name.rpartition(".")
                parent = block.get_submodule(parent_name) if parent_name else block
                setattr(parent, attribute, Fp8Linear.from_linear(child))
                converted += 1
    return converted
