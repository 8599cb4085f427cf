"""Generation speed switches, from data (``pipeline/configs/speed.json``) with per-device defaults
and ``$SPEED_<NAME>`` overrides, so the benchmark can measure each one alone and an operator can
turn any off.

The switches that change a model's modules (fused QKV, channels-last layout) are applied once when
the model loads; the ones that act per call (attention kernel priority, CUDA graphs, VAE decode
precision) are read by ``pipeline.generate``. Off CUDA every switch defaults to off, which keeps the
CPU path pixel-identical to plain diffusers (``tests/test_equivalence.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

log = logging.getLogger(__name__)

CONFIG = Path(__file__).resolve().parent / "configs" / "speed.json"
ENV_PREFIX = "SPEED_"
OFF = {"fuse_qkv": False, "channels_last": False, "cuda_graphs": False, "vae_decode": "exact", "attention": "auto",
       "step_cache": "off", "compile": "off", "fp8_matmul": False}


@dataclass(frozen=True)
class SpeedSettings:
    fuse_qkv: bool = False
    channels_last: bool = False
    cuda_graphs: bool = False
    vae_decode: str = "exact"  # "exact" (diffusers' own decode) or "bfloat16"
    attention: str = "auto"  # SDPA kernel tried first: auto, cudnn, flash, efficient
    step_cache: str = "off"  # "first_block": Flux's first-block cache (lossy, opt-in)
    compile: str = "off"  # "regional": torch.compile of the repeated blocks (pipeline.compile_cache)
    fp8_matmul: bool = False  # Flux's block matmuls in float8 (pipeline.fp8_linear; lossy, opt-in)

    def describe(self) -> str:
        return ", ".join(f"{f.name} {getattr(self, f.name)}" for f in fields(self))


def _parse(name: str, raw: str, spec: Mapping[str, Any]) -> Any:
    if isinstance(OFF[name], bool):
        lowered = raw.lower()
        if lowered in ("1", "true", "on", "yes"):
            return True
        if lowered in ("0", "false", "off", "no"):
            return False
        raise ValueError(f"${ENV_PREFIX}{name.upper()}={raw!r}: allowed 1 or 0")
    if raw not in spec["choices"]:
        raise ValueError(f"${ENV_PREFIX}{name.upper()}={raw!r}: allowed {', '.join(spec['choices'])}")
    return raw


def speed_table() -> dict[str, Any]:
    return json.loads(CONFIG.read_text())


def speed_settings(device: str, env: Optional[Mapping[str, str]] = None, pipeline_class: Optional[str] = None) -> SpeedSettings:
    """The settings for ``device``: its defaults from the data file, then the environment's
    overrides; a switch the data limits to other models (``models``) is off for ``pipeline_class``.
    The step cache, which decides on the host at every step, turns CUDA graphs and compilation off."""
    env = os.environ if env is None else env
    table = speed_table()
    values = {}
    for name, off in OFF.items():
        spec = table[name]
        value = spec["default"].get(device, off)
        raw = env.get(ENV_PREFIX + name.upper())
        values[name] = _parse(name, raw, spec) if raw else value
        if pipeline_class is not None and pipeline_class not in spec.get("models", [pipeline_class]):
            values[name] = off
    if values["step_cache"] != "off":
        values["cuda_graphs"] = False
        values["compile"] = "off"
    return SpeedSettings(**values)


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
        from pipeline.fp8_linear import convert_blocks

        log.info("fp8 matmuls: %d Linear layers of the transformer blocks converted (lossy)", convert_blocks(transformer))
    if settings.step_cache == "first_block" and transformer is not None:
        from diffusers.hooks import FirstBlockCacheConfig

        threshold = speed_table()["step_cache"]["first_block_threshold"]
        transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    if settings.compile == "regional":
        from pipeline.compile_cache import compile_denoiser, restore

        if compile_cache is not None:
            restore(compile_cache)
        compile_denoiser(pipe)


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
