"""Quality presets: data in ``presets.json``, merged with per-request overrides in one place."""

from presets.resolve import PRESET_NAMES, EffectiveSettings, load_presets, resolve

__all__ = ["PRESET_NAMES", "EffectiveSettings", "load_presets", "resolve"]
