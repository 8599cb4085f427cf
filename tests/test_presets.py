import logging

import pytest

from presets import PRESET_NAMES, load_presets, resolve


@pytest.mark.parametrize(
    "name, steps, guidance, ip_scale",
    [("ultra_fast", 10, 6.0, 0.40), ("fast", 12, 6.5, 0.50), ("balanced", 15, 7.0, 0.65), ("quality", 20, 7.5, 0.80)],
)
def test_sdxl_presets_match_the_product_table(name: str, steps: int, guidance: float, ip_scale: float) -> None:
    settings = resolve("sdxl", name)
    assert (settings.num_inference_steps, settings.guidance_scale, settings.ip_adapter_scale) == (steps, guidance, ip_scale)
    assert settings.overridden == ()


def test_every_family_defines_every_preset() -> None:
    for family, presets in load_presets().items():
        assert set(presets) == set(PRESET_NAMES), family


def test_overrides_win_and_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="presets"):
        settings = resolve("sdxl", "balanced", num_inference_steps=30, guidance_scale=None, ip_adapter_scale=0.0)
    assert settings.num_inference_steps == 30
    assert settings.guidance_scale == 7.0  # not overridden: from the preset
    assert settings.ip_adapter_scale == 0.0  # zero is an override, not "empty"
    assert settings.overridden == ("num_inference_steps", "ip_adapter_scale")
    assert "preset balanced: 30 steps, guidance 7.0" in caplog.text


def test_plain_preset_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="presets"):
        resolve("sdxl", "balanced")
    assert "preset balanced: 15 steps, guidance 7.0" in caplog.text


def test_unknown_preset_or_family_is_refused() -> None:
    with pytest.raises(KeyError, match="unknown preset"):
        resolve("sdxl", "turbo")
    with pytest.raises(KeyError, match="model family"):
        resolve("sd15", "fast")
