"""Generation speed switches, from data (``pipeline/configs/speed.json``) with per-device defaults
and ``$SPEED_<NAME>`` overrides, so the benchmark can measure each one alone and an operator can
turn any off.

The switches that change a model's modules (fused QKV, channels-last layout) are applied once when
the model loads; the ones that act per call (attention kernel priority, CUDA graphs, VAE decode
precision) are read by ``pipeline.generate``. Off CUDA every switch defaults to off, which keeps the
CPU path pixel-identical to plain diffusers (``tests/test_equivalence.py``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping, Optional

import settings
from hardware.profiles import Profile

log = logging.getLogger(__name__)

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "speed.json"
ENV_PREFIX = "SPEED_"


@dataclass(frozen=True)
class SpeedSettings:
    fuse_qkv: bool = False
    channels_last: bool = False
    cuda_graphs: bool = False
    vae_decode: str = "exact"  # "exact" (diffusers' own decode) or "bfloat16"
    attention: str = "auto"  # SDPA kernel tried first: auto, cudnn, flash, efficient
    step_cache: str = "off"  # "first_block": Flux's first-block cache (lossy, opt-in)
    go_fast: str = "off"  # what the go_fast input runs: fp8, compile or off ("auto" resolves per GPU; pipeline.speed.go_fast)
    go_fast_compiler: str = "inductor"  # torch.compile's backend for it: inductor, or aot_eager (checks the mechanism)

    def describe(self) -> str:
        return ", ".join(f"{f.name} {getattr(self, f.name)}" for f in fields(self))


OFF: Mapping[str, Any] = {f.name: f.default for f in fields(SpeedSettings)}  # every switch off: the defaults above


def _parse(name: str, raw: str, spec: Mapping[str, Any]) -> Any:
    variable = f"{ENV_PREFIX}{name.upper()}"
    if isinstance(OFF[name], bool):
        return settings.parse_bool(variable, raw)
    if raw not in spec["choices"]:
        raise settings.SettingError(f"${variable}={raw!r}: allowed {', '.join(spec['choices'])}")
    return raw


def speed_table() -> dict[str, Any]:
    return json.loads(CONFIG.read_text())


def speed_settings(device: str, env: Optional[Mapping[str, str]] = None, pipeline_class: Optional[str] = None) -> SpeedSettings:
    """The settings for ``device``: its defaults from the data file, then the environment's
    overrides; a switch the data limits to other models (``models``) is off for ``pipeline_class``.
    The step cache, which decides on the host at every step, turns CUDA graphs and compilation off."""
    table = speed_table()
    values = {}
    for name, off in OFF.items():
        spec = table[name]
        value = spec["default"].get(device, off)
        raw = settings.member(ENV_PREFIX, name, env)
        values[name] = _parse(name, raw, spec) if raw else value
        if pipeline_class is not None and pipeline_class not in spec.get("models", [pipeline_class]):
            values[name] = off
    if values["step_cache"] != "off":
        values["cuda_graphs"] = False
        values["go_fast"] = "off"
    return SpeedSettings(**values)


def speed_for_model(device: str, pipeline_class: str, profile: Profile) -> SpeedSettings:
    """Every eligibility rule in one place: the device's settings for this pipeline class, less what
    the hardware profile rules out. CUDA graphs and go_fast only where the weights stay put as plain
    tensors: offloading moves them, fp8 storage re-casts them on every call and bitsandbytes' layers
    branch on the host, none of which a graph can replay or torchao can quantise again. go_fast
    'auto' is fp8 on a GPU of compute capability 8.9+ (fp8 tensor cores), else the compile alone."""
    speed = speed_settings(device, pipeline_class=pipeline_class)
    plain = profile.offload == "none" and profile.flux_quantization == "none" and profile.t5_quantization == "none"
    if speed.cuda_graphs and not (plain and device == "cuda"):
        speed = replace(speed, cuda_graphs=False)
    wanted = speed.go_fast
    if wanted == "auto":
        wanted = "fp8" if device == "cuda" and fp8_tensor_cores() else "compile" if device == "cuda" else "off"
    why = ""
    if wanted != "off" and not plain:
        wanted, why = "off", f"the {profile.name} profile does not keep plain weights (offload or quantized storage)"
    elif wanted == "fp8" and device == "cuda" and not fp8_tensor_cores():
        wanted, why = "compile", "this GPU has no fp8 tensor cores (compute capability below 8.9)"
    elif wanted == "off" and device != "cuda":
        why = f"no fp8 tensor cores or compiled path on {device}"
    if why:
        log.info("go_fast: %s; go_fast requests run %s", why, "the compiled bf16 path" if wanted == "compile" else "the exact path")
    return replace(speed, go_fast=wanted)


def fp8_tensor_cores() -> bool:
    """Row-wise scaled fp8 matmuls run on tensor cores from compute capability 8.9 (Ada, Hopper) on."""
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
