"""Pick memory and precision settings for the machine, from a table of profiles (``profiles.json``).

The same service runs on an H200 with everything resident in bf16 and on an 8 GB card with 4-bit
Flux and offloading; which one is decided here once, at start-up, logged with the reason, and
overridable setting by setting.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional

import settings
from hardware.memory import free_gpu_bytes

log = logging.getLogger(__name__)

PROFILES_FILE = Path(__file__).with_name("profiles.json")
QUANTIZATIONS = ("none", "fp8", "int8", "nf4")
T5_QUANTIZATIONS = ("none", "int8", "nf4")  # fp8 storage breaks the Flux pipeline's T5 input cast
BITSANDBYTES_KINDS = ("int8", "nf4")  # the quantizations bitsandbytes does
OFFLOADS = ("none", "model", "sequential")
ENV_PREFIX = "HW_"  # settings family: HW_<FIELD> overrides a profile's field
NOT_OVERRIDABLE = ("name", "device", "min_free_gb", "reason")


@dataclass(frozen=True)
class Profile:
    name: str
    device: str
    min_free_gb: float
    flux_quantization: str
    t5_quantization: str
    vae_slicing: bool
    vae_tiling: bool
    attention_slicing: bool
    offload: str
    cleanup_after_image: bool
    max_batch_images: int = 1  # the most images one batch of concurrent requests may hold (pipeline.coalesce)
    reason: str = ""

    @property
    def uses_bitsandbytes(self) -> bool:
        return self.flux_quantization in BITSANDBYTES_KINDS or self.t5_quantization in BITSANDBYTES_KINDS


@lru_cache(maxsize=1)
def load_profiles() -> tuple[Profile, ...]:
    rows = json.loads(PROFILES_FILE.read_text())["profiles"]
    return tuple(Profile(**row) for row in rows)


def _parse(name: str, text: str, current: Any) -> Any:
    variable = f"{ENV_PREFIX}{name.upper()}"
    if isinstance(current, bool):
        return settings.parse_bool(variable, text)
    if isinstance(current, int):
        if not text.isdigit() or int(text) < 1:
            raise settings.SettingError(f"${variable}={text!r}: allowed a whole number of at least 1")
        return int(text)
    allowed = {"flux_quantization": QUANTIZATIONS, "t5_quantization": T5_QUANTIZATIONS, "offload": OFFLOADS}.get(name)
    if allowed and text not in allowed:
        raise settings.SettingError(f"${variable}={text!r}: allowed {', '.join(allowed)}")
    return text


def choose_profile(
    device: str,
    free_gb: Optional[float],
    bitsandbytes_usable: bool,
    fp8_capable: bool,
    env: Optional[Mapping[str, str]] = None,
) -> Profile:
    """The first profile for ``device`` whose memory floor ``free_gb`` meets, then the operator's
    ``HW_*`` overrides, then fallbacks for what this machine cannot do, each with its reason."""
    candidates = [p for p in load_profiles() if p.device == device]
    forced = settings.get("HW_PROFILE", env)
    if forced:
        matches = [p for p in load_profiles() if p.name == forced]
        if not matches:
            raise settings.SettingError(f"$HW_PROFILE={forced!r}: allowed {', '.join(p.name for p in load_profiles())}")
        profile, reason = matches[0], "forced by HW_PROFILE"
    else:
        profile = next(p for p in candidates if free_gb is None or free_gb >= p.min_free_gb)
        reason = f"{device}" + (f" with {free_gb:.1f} GB free" if free_gb is not None else "")
    notes = [reason]
    for item in fields(Profile):
        raw = settings.member(ENV_PREFIX, item.name, env) if item.name not in NOT_OVERRIDABLE else None
        if raw is not None:
            profile = replace(profile, **{item.name: _parse(item.name, raw, getattr(profile, item.name))})
            notes.append(f"{item.name}={getattr(profile, item.name)} from {ENV_PREFIX}{item.name.upper()}")
    for name in ("flux_quantization", "t5_quantization"):
        wanted = getattr(profile, name)
        if wanted in BITSANDBYTES_KINDS and not bitsandbytes_usable:
            profile = replace(profile, **{name: "none"})
            notes.append(f"{name} {wanted} -> none: bitsandbytes is not usable here")
        if wanted == "fp8" and not fp8_capable:
            profile = replace(profile, **{name: "none"})
            notes.append(f"{name} fp8 -> none: needs a GPU with fp8 (Ada or Hopper)")
    if profile.offload != "none" and device != "cuda":
        notes.append(f"offload {profile.offload} -> none: needs CUDA")
        profile = replace(profile, offload="none")
    profile = replace(profile, reason="; ".join(notes))
    log.info(
        "hardware profile %s (%s): flux %s, t5 %s, offload %s, vae slicing %s, tiling %s, attention slicing %s",
        profile.name, profile.reason, profile.flux_quantization, profile.t5_quantization, profile.offload,
        profile.vae_slicing, profile.vae_tiling, profile.attention_slicing,
    )
    return profile


def detect_profile(device: str, bitsandbytes_usable: bool) -> Profile:
    """Measure this machine (free GPU memory, fp8 support) and choose."""
    free_gb, fp8 = None, False
    free = free_gpu_bytes(device)
    if free is not None:
        import torch

        free_gb = free / 1e9
        fp8 = torch.cuda.get_device_capability() >= (8, 9)
    return choose_profile(device, free_gb, bitsandbytes_usable, fp8)
