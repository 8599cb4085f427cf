"""The go_fast denoiser's module tree: a copy that shares the exact model's tensors, with the Linear
layers in the family's scope quantised to float8 by torchao.

torchao is the maintained library for this (``Float8DynamicActivationFloat8WeightConfig`` with
``PerRow``: e4m3 weights with one scale per output row, activations quantised per token on the fly,
``torch._scaled_mm`` on fp8 tensor cores). Without a compiler the quantisation runs as separate
kernels and is slower than bf16; under ``torch.compile`` inductor fuses it into its neighbours.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

from pipeline.speed.fused_qkv import FUSED_PARTS

log = logging.getLogger(__name__)


def shared_copy(module: Any) -> Any:
    """A new module tree with the same structure whose parameters and buffers are the very tensors
    of ``module``: replacing a weight in the copy (as quantisation does) leaves ``module`` as it was,
    and nothing but the replaced weights takes memory. LoRA layers a request loaded on ``module``
    (PEFT's wrappers) are left out of the copy: it is the base model."""
    memo: dict[int, Any] = {}
    for tensor in (*module.parameters(), *module.buffers()):
        memo[id(tensor)] = tensor
    duplicate = copy.deepcopy(module, memo)
    stripped = _strip_adapters(duplicate)
    if stripped:
        log.info("go_fast: the copy leaves out %d LoRA layers loaded on the exact model", stripped)
    return duplicate


def _strip_adapters(module: Any) -> int:
    """Replace every PEFT layer wrapper by the base layer it wraps; how many were replaced."""
    count = 0
    for name, child in list(module.named_modules()):
        if not name or not type(child).__module__.startswith("peft.") or not hasattr(child, "base_layer"):
            continue
        parent_name, _, attribute = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        if getattr(parent, attribute, None) is child:
            setattr(parent, attribute, child.get_base_layer())
            count += 1
    for attribute in ("peft_config", "_hf_peft_config_loaded"):
        module.__dict__.pop(attribute, None)
    return count


def unused_parts(module: Any) -> set[str]:
    """Qualified names of the unfused Q/K/V projections of fused attention: the fused layer computes
    them (``pipeline.speed.fused_qkv``), so quantising them too would only spend memory."""
    names: set[str] = set()
    for name, child in module.named_modules():
        if not getattr(child, "fused_projections", False):
            continue
        for fused_name, part_names in FUSED_PARTS.items():
            if getattr(child, fused_name, None) is not None:
                names.update(f"{name}.{part}" if name else part for part in part_names)
    return names


def quantize_fp8(module: Any, scope: str) -> int:
    """Quantise, in place, the Linear layers of ``module`` whose qualified names match ``scope`` (a
    regular expression, the family's) and whose sides are multiples of 16 (``_scaled_mm``'s rule);
    the number quantised. Each quantised weight is a new parameter: a ``shared_copy``'s original is
    untouched."""
    import torch
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    pattern = re.compile(scope)
    skip = unused_parts(module)
    chosen: set[str] = set()

    def wanted(child: Any, name: str) -> bool:
        ok = (type(child) is torch.nn.Linear and bool(pattern.search(name)) and name not in skip
              and child.in_features % 16 == 0 and child.out_features % 16 == 0)
        if ok:
            chosen.add(name)
        return ok

    quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=wanted)
    return len(chosen)
