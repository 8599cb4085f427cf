"""Hardware profiles: chosen from the device and free memory, overridable, and applied for real."""

import logging
from pathlib import Path

import numpy as np
import pytest

from hardware.profiles import choose_profile


@pytest.mark.parametrize(
    "free_gb, name, flux",
    [(135.0, "h200-h100", "none"), (75.0, "h200-h100", "none"), (23.0, "24gb", "int8"), (15.5, "16gb", "nf4"),
     (11.5, "12gb", "nf4"), (7.0, "8gb", "nf4")],
)
def test_cuda_profile_follows_free_memory(free_gb: float, name: str, flux: str) -> None:
    profile = choose_profile("cuda", free_gb, bitsandbytes_usable=True, fp8_capable=True, env={})
    assert (profile.name, profile.flux_quantization) == (name, flux)
    assert f"cuda with {free_gb:.1f} GB free" in profile.reason


def test_small_cards_offload_and_slice() -> None:
    eight = choose_profile("cuda", 7.0, True, True, env={})
    assert eight.offload == "sequential" and eight.vae_tiling and eight.attention_slicing and eight.cleanup_after_image
    big = choose_profile("cuda", 80.0, True, True, env={})
    assert big.offload == "none" and not big.vae_slicing


def test_unusable_bitsandbytes_and_missing_fp8_fall_back_with_a_reason(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="hardware"):
        profile = choose_profile("cuda", 15.5, bitsandbytes_usable=False, fp8_capable=False, env={"HW_FLUX_QUANTIZATION": "fp8"})
    assert profile.flux_quantization == "none" and profile.t5_quantization == "none"
    assert "flux_quantization fp8 -> none: needs a GPU with fp8" in profile.reason
    assert "t5_quantization nf4 -> none: bitsandbytes is not usable here" in profile.reason
    assert "hardware profile 16gb" in caplog.text


def test_overrides_and_forced_profile() -> None:
    profile = choose_profile("cuda", 80.0, True, True, env={"HW_FLUX_QUANTIZATION": "nf4", "HW_VAE_TILING": "true"})
    assert profile.name == "h200-h100" and profile.flux_quantization == "nf4" and profile.vae_tiling
    assert "flux_quantization=nf4 from HW_FLUX_QUANTIZATION" in profile.reason
    forced = choose_profile("cuda", 80.0, True, True, env={"HW_PROFILE": "8gb"})
    assert forced.name == "8gb" and "forced by HW_PROFILE" in forced.reason
    for env, words in (({"HW_PROFILE": "4gb"}, "allowed"), ({"HW_OFFLOAD": "disk"}, "allowed none, model, sequential"),
                       ({"HW_T5_QUANTIZATION": "fp8"}, "allowed none, int8, nf4"),
                       ({"HW_VAE_SLICING": "maybe"}, "allowed 1/true/yes/on or 0/false/no/off")):
        with pytest.raises(ValueError, match=words):
            choose_profile("cuda", 80.0, True, True, env=env)


def test_mps_and_cpu_profiles() -> None:
    mps = choose_profile("mps", None, False, False, env={})
    assert mps.name == "mps" and mps.attention_slicing and mps.cleanup_after_image
    cpu = choose_profile("cpu", None, False, False, env={"HW_OFFLOAD": "model"})
    assert cpu.name == "cpu" and cpu.offload == "none" and "needs CUDA" in cpu.reason


def test_bitsandbytes_quantization_config_per_component() -> None:
    from pipeline.families.flux import FLUX
    from pipeline.loading.placement import quantization_config

    assert quantization_config(choose_profile("cuda", 80.0, True, True, env={}), FLUX.quantized) is None
    config = quantization_config(choose_profile("cuda", 15.5, True, True, env={"HW_T5_QUANTIZATION": "int8"}), FLUX.quantized)
    transformer, t5 = config.quant_mapping["transformer"], config.quant_mapping["text_encoder_2"]
    assert type(transformer).__module__.startswith("diffusers") and transformer.load_in_4bit
    assert transformer.bnb_4bit_quant_type == "nf4"
    assert type(t5).__module__.startswith("transformers") and t5.load_in_8bit


def test_fp8_storage_runs_flux_and_stays_close(flux_weights: dict) -> None:
    """fp8 weight storage on the real (tiny) Flux transformer: it generates, and the deviation from
    full precision is small. Lossy by design; the GPU benchmark reports it at full size."""
    import torch
    from diffusers import FluxPipeline

    from pipeline.loading.placement import apply_fp8_storage

    pipe = FluxPipeline.from_pretrained(str(flux_weights["flux-dev"]), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    run = lambda: np.asarray(pipe("a cat", width=64, height=64, num_inference_steps=2,  # noqa: E731
                                  generator=torch.Generator("cpu").manual_seed(0)).images[0]).astype(int)
    exact = run()
    assert apply_fp8_storage(pipe, choose_profile("cuda", 80.0, True, True, env={"HW_FLUX_QUANTIZATION": "fp8"}))
    assert pipe.transformer.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    lossy = run()
    assert 0 < np.abs(exact - lossy).max() <= 32


def test_memory_switches_are_applied(tiny_weights: Path, monkeypatch) -> None:
    import torch
    from diffusers import StableDiffusionXLPipeline

    from pipeline.loading.placement import place_pipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_weights), dtype=torch.float32)
    offloaded = []
    monkeypatch.setattr(pipe, "enable_sequential_cpu_offload", lambda: offloaded.append("sequential"))
    place_pipeline(pipe, choose_profile("cuda", 7.0, True, True, env={}), "cuda", already_placed=False)
    assert pipe.vae.use_slicing and pipe.vae.use_tiling and offloaded == ["sequential"]
