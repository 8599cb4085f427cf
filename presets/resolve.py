"""Merge a named preset with the caller's overrides.

This is the only place where preset values and overrides meet, so the values logged here are
exactly the values the pipeline uses.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Optional

log = logging.getLogger(__name__)

PRESETS_FILE = Path(__file__).with_name("presets.json")
# the preset names, in order, as the table's first model lists them (every model must list them all)
PRESET_NAMES: tuple[str, ...] = tuple(next(presets for family, presets in json.loads(PRESETS_FILE.read_text()).items()
                                           if not family.startswith("_")))


@dataclass(frozen=True)
class EffectiveSettings:
    """What one request will actually run with, after the preset and overrides are merged."""

    preset: str
    num_inference_steps: int
    guidance_scale: float
    ip_adapter_scale: float
    overridden: tuple[str, ...] = ()

    def describe(self) -> str:
        text = (
            f"preset {self.preset}: {self.num_inference_steps} steps, "
            f"guidance {self.guidance_scale}, ip-adapter scale {self.ip_adapter_scale}"
        )
        if self.overridden:
            text += f" (overridden: {', '.join(self.overridden)})"
        return text


@lru_cache(maxsize=1)
def load_presets() -> Mapping[str, Mapping[str, Mapping[str, float]]]:
    """Read the preset table once; it is immutable data shipped with the code."""
    table = json.loads(PRESETS_FILE.read_text())
    table.pop("_comment", None)
    for family, presets in table.items():
        missing = set(PRESET_NAMES) - set(presets)
        if missing:
            raise ValueError(f"{PRESETS_FILE}: family {family!r} lacks presets {sorted(missing)}")
    return table


def resolve(
    family: str,
    preset: str,
    num_inference_steps: Optional[int] = None,
    guidance_scale: Optional[float] = None,
    ip_adapter_scale: Optional[float] = None,
) -> EffectiveSettings:
    """Return the preset's values with every non-None override applied, and log the result."""
    table = load_presets()
    if family not in table:
        raise KeyError(f"no presets for model family {family!r}; known: {sorted(table)}")
    if preset not in table[family]:
        raise KeyError(f"unknown preset {preset!r}; known: {list(PRESET_NAMES)}")
    base = table[family][preset]
    overrides = {
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "ip_adapter_scale": ip_adapter_scale,
    }
    merged = {key: (value if value is not None else base[key]) for key, value in overrides.items()}
    settings = EffectiveSettings(
        preset=preset,
        num_inference_steps=int(merged["num_inference_steps"]),
        guidance_scale=float(merged["guidance_scale"]),
        ip_adapter_scale=float(merged["ip_adapter_scale"]),
        overridden=tuple(key for key, value in overrides.items() if value is not None),
    )
    log.info(settings.describe())
    return settings
