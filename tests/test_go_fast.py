"""go_fast: the per-device recipe, the exact path left bit for bit, no request waiting for a compile,
the fp8 quantisation's scope and error (torchao on the CPU's reference kernels), and failing safe.

On the CPU the compile runs with ``aot_eager`` (dynamo and AOTAutograd, no code generation): the
mechanism (background thread, per-size readiness, compiler stance, warm-up through the request path)
is the one a GPU runs with inductor; ``test_inductor_compiles_in_the_background`` runs inductor too.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hardware.backend import Backend
from hardware.profiles import choose_profile
from pipeline.speed import settings as speed_settings_module
from pipeline.speed.settings import speed_for_model, speed_settings

CPU = Backend(device="cpu", dtype_name="float32", tf32=False, bitsandbytes="-")
FAST_ENV = {"SPEED_GO_FAST": "compile", "SPEED_GO_FAST_COMPILER": "aot_eager", "GO_FAST_SIZES": "64x64"}


def load(monkeypatch, weights: Path, model: str = "sdxl", **env: str):
    import os

    from pipeline.loading.weights import resolve_weights
    from pipeline.select import load_source

    for name in [n for n in os.environ if n.startswith(("SPEED_", "GO_FAST_", "COMPILE_CACHE"))]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_source(resolve_weights(str(weights), model=model), CPU)


def generate_once(model, go_fast: bool, size: int = 64, seed: int = 5, images: int = 1):
    from pipeline.generate import Batch, generate
    from presets import resolve
    from request.generation import parse_request

    request = parse_request({"prompt": "a red bicycle", "width": size, "height": size, "seed": seed,
                             "model": model.source.model, "num_outputs": images})
    settings = resolve(model.source.model, "fast", num_inference_steps=3)
    return generate(model, Batch(["a red bicycle"], images, seed), request, settings, go_fast=go_fast)


def pixels(result) -> list[np.ndarray]:
    return [np.asarray(image).astype(int) for image in result.images]


def test_the_recipe_per_device_and_profile(monkeypatch, caplog) -> None:
    plain = choose_profile("cuda", 80.0, bitsandbytes_usable=True, fp8_capable=True, env={})
    assert speed_settings("cpu", env={}).go_fast == "off"
    assert speed_settings("cuda", env={}).go_fast == "auto"
    monkeypatch.setattr(speed_settings_module, "fp8_tensor_cores", lambda: True)
    assert speed_for_model("cuda", "FluxPipeline", plain).go_fast == "fp8"
    monkeypatch.setattr(speed_settings_module, "fp8_tensor_cores", lambda: False)
    with caplog.at_level(logging.INFO):
        assert speed_for_model("cuda", "FluxPipeline", plain).go_fast == "compile"
        monkeypatch.setenv("SPEED_GO_FAST", "fp8")
        assert speed_for_model("cuda", "FluxPipeline", plain).go_fast == "compile"
    assert "no fp8 tensor cores" in caplog.text
    monkeypatch.delenv("SPEED_GO_FAST")
    assert speed_for_model("cpu", "StableDiffusionXLPipeline", choose_profile("cpu", None, False, False, env={})).go_fast == "off"
    small = choose_profile("cuda", 15.5, bitsandbytes_usable=True, fp8_capable=True, env={})
    assert small.flux_quantization != "none"
    assert speed_for_model("cuda", "FluxPipeline", small).go_fast == "off"
    with pytest.raises(ValueError, match=r"\$SPEED_GO_FAST='turbo': allowed auto, fp8, compile, off"):
        speed_settings("cpu", env={"SPEED_GO_FAST": "turbo"})


def test_the_input_and_its_per_model_default() -> None:
    from request.catalog import MODELS
    from request.generation import parse_request

    assert parse_request({"prompt": "x"}).go_fast is None
    assert parse_request({"prompt": "x", "go_fast": False}).go_fast is False
    assert MODELS["flux-dev"].go_fast_default and MODELS["flux-schnell"].go_fast_default
    assert not MODELS["sdxl"].go_fast_default
    with pytest.raises(ValueError, match="go_fast.*allowed: true or false"):
        parse_request({"prompt": "x", "go_fast": "yes"})


@pytest.mark.parametrize("name", ["sdxl", "flux-dev"])
def test_go_fast_false_is_the_exact_image_and_no_request_waits_for_the_compiler(
        tiny_weights: Path, flux_weights: dict, monkeypatch, fresh_cache, name: str) -> None:
    weights = tiny_weights if name == "sdxl" else flux_weights[name]
    plain = load(monkeypatch, weights, name)
    assert plain.fast is None  # the CPU's default: go_fast runs the exact path
    base = pixels(generate_once(plain, go_fast=False))
    assert np.array_equal(pixels(generate_once(plain, go_fast=True))[0], base[0])
    from pipeline.loading.cache import MODEL_CACHE

    MODEL_CACHE.evict(plain.source.model_id)
    model = load(monkeypatch, weights, name, **FAST_ENV)
    exact_before = {key: value.clone() for key, value in model.fast.family.denoiser(model.pipe).state_dict().items()}
    first = generate_once(model, go_fast=True)  # nothing compiled yet: the exact path, and the compile begins
    assert first.fast_path == "exact" and np.array_equal(pixels(first)[0], base[0])
    shape = model.fast.shape(64, 64, 1, 6.5 if name == "sdxl" else 3.5)
    assert model.fast.wait([shape], timeout=300), model.fast.error
    fast = generate_once(model, go_fast=True)
    assert fast.fast_path == "compile"
    assert np.abs(pixels(fast)[0] - base[0]).max() <= 2  # aot_eager: the same kernels, traced
    assert np.array_equal(pixels(generate_once(model, go_fast=False))[0], base[0])  # go_fast=false: bit for bit
    after = model.fast.family.denoiser(model.pipe).state_dict()
    assert all(torch.equal(after[key], value) for key, value in exact_before.items())
    # a size not compiled: the exact path at once, and that size is compiled next
    other = generate_once(model, go_fast=True, size=80)
    assert other.fast_path == "exact"
    assert model.fast.wait([model.fast.shape(80, 80, 1, 6.5 if name == "sdxl" else 3.5)], timeout=300)
    assert generate_once(model, go_fast=True, size=80).fast_path == "compile"


def test_warm_up_prints_no_progress_and_a_lora_or_face_runs_the_exact_weights(tiny_weights: Path, monkeypatch,
                                                                              fresh_cache, caplog) -> None:
    model = load(monkeypatch, tiny_weights, "sdxl", **FAST_ENV)
    with caplog.at_level(logging.INFO):
        generate_once(model, go_fast=True)
        assert model.fast.wait(model.fast.default_shapes(), timeout=300)
    warm = [r for r in caplog.records if r.threadName.startswith("go_fast")]
    assert warm and not any(r.name == "pipeline.progress" for r in warm)
    model.active_loras = ("lora_0123",)  # as pipeline.lora.adapters sets it for a request
    try:
        with caplog.at_level(logging.INFO):
            assert generate_once(model, go_fast=True).fast_path == "exact"
        assert "a request with a LoRA or face_image runs the exact weights" in caplog.text
    finally:
        model.active_loras = ()
    assert generate_once(model, go_fast=True).fast_path == "compile"


def test_an_evicted_model_lets_its_fast_path_go(tiny_weights: Path, monkeypatch, fresh_cache) -> None:
    from pipeline.loading.cache import MODEL_CACHE

    model = load(monkeypatch, tiny_weights, "sdxl", **FAST_ENV)
    generate_once(model, go_fast=True)
    fast = model.fast
    assert fast.wait(fast.default_shapes(), timeout=300)
    MODEL_CACHE.evict(model.source.model_id)
    deadline = time.monotonic() + 30
    while fast.model is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert fast.model is None and fast.error == "evicted"


def test_a_recipe_that_cannot_build_fails_safe(tiny_weights: Path, monkeypatch, fresh_cache, caplog) -> None:
    """fp8 on a CPU: torchao refuses (no fp8 tensor cores); go_fast then runs the exact path."""
    model = load(monkeypatch, tiny_weights, "sdxl", **{**FAST_ENV, "SPEED_GO_FAST": "fp8"})
    base = pixels(generate_once(model, go_fast=False))
    with caplog.at_level(logging.WARNING):
        generate_once(model, go_fast=True)
        assert not model.fast.wait(model.fast.default_shapes(), timeout=120)
    assert model.fast.state == "failed" and "building the fast denoiser failed" in caplog.text
    again = generate_once(model, go_fast=True)
    assert again.fast_path == "exact" and np.array_equal(pixels(again)[0], base[0])


@pytest.mark.skipif(tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) < (2, 14),
                    reason="row-wise scaled _scaled_mm on the CPU needs torch 2.14 (2.11's takes per-tensor scales only)")
@pytest.mark.parametrize("name", ["sdxl", "flux-dev"])
def test_fp8_quantises_the_family_scope_only_and_stays_close(tiny_weights: Path, flux_weights: dict, monkeypatch,
                                                              name: str) -> None:
    """torchao's quantisation on the real (tiny) denoisers, run by torch's CPU reference kernel: the
    hardware check (CUDA 8.9+) is lifted for this test only."""
    import diffusers
    import torchao.quantization.quant_api as quant_api

    from pipeline.families import FAMILIES
    from pipeline.speed.fp8 import quantize_fp8, shared_copy

    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularity: None)
    family = FAMILIES["sdxl" if name == "sdxl" else "flux"]
    if name == "sdxl":
        exact = diffusers.UNet2DConditionModel.from_pretrained(tiny_weights, subfolder="unet", torch_dtype=torch.bfloat16)
    else:
        exact = diffusers.FluxTransformer2DModel.from_pretrained(flux_weights[name], subfolder="transformer",
                                                                 torch_dtype=torch.bfloat16)
    exact.fuse_qkv_projections()
    before = {key: (param.data_ptr(), param.detach().clone()) for key, param in exact.named_parameters()}
    fast = shared_copy(exact)
    count = quantize_fp8(fast, family.fp8_scope)
    quantised = [key for key, module in fast.named_modules() if type(getattr(module, "weight", None)).__name__ == "Float8Tensor"]
    assert count == len(quantised) > 0
    assert all(("transformer_blocks." in key) for key in quantised)
    # the fused layers compute K and V (and Q in self-attention): their unfused copies stay unquantised
    assert not any(key.endswith((".to_k", ".to_v")) for key in quantised)
    assert not any(key.endswith(".to_q") and key[:-4] + "to_qkv" in quantised for key in quantised)
    assert all(param.data_ptr() == before[key][0] and torch.equal(param, before[key][1])
               for key, param in exact.named_parameters())  # the exact model is untouched
    shared = {p.data_ptr() for p in exact.parameters()} & {p.data_ptr() for p in fast.parameters()
                                                           if type(p).__name__ != "Float8Tensor"}
    assert shared  # everything not quantised is the very same memory
    generator = torch.Generator().manual_seed(0)
    if name == "sdxl":
        config = exact.config
        inputs = dict(sample=torch.randn(1, 4, 8, 8, generator=generator).bfloat16(), timestep=torch.tensor(10),
                      encoder_hidden_states=torch.randn(1, 7, config.cross_attention_dim, generator=generator).bfloat16(),
                      added_cond_kwargs={"text_embeds": torch.randn(1, config.projection_class_embeddings_input_dim
                                                                     - 6 * config.addition_time_embed_dim,
                                                                     generator=generator).bfloat16(),
                                         "time_ids": torch.zeros(1, 6).bfloat16()})
    else:
        config = exact.config
        tokens = 16
        inputs = dict(hidden_states=torch.randn(1, tokens, config.in_channels, generator=generator).bfloat16(),
                      encoder_hidden_states=torch.randn(1, 8, config.joint_attention_dim, generator=generator).bfloat16(),
                      pooled_projections=torch.randn(1, config.pooled_projection_dim, generator=generator).bfloat16(),
                      timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]),
                      img_ids=torch.zeros(tokens, 3), txt_ids=torch.zeros(8, 3))
    with torch.inference_mode():
        reference = exact(**inputs, return_dict=False)[0].float()
        approx = fast(**inputs, return_dict=False)[0].float()
    error = ((approx - reference).norm() / reference.norm()).item()
    assert 0 < error < 0.15, error  # lossy, within fp8's precision (the device run reports the full-size figure)


def test_variants_keep_every_module_as_it_is(tiny_weights: Path) -> None:
    """diffusers' from_pipe would cast the shared modules to float32; on_same_modules casts nothing."""
    import diffusers

    from pipeline.variants import on_same_modules

    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(tiny_weights, local_files_only=True).to(torch.bfloat16)
    inpaint = on_same_modules(diffusers.StableDiffusionXLInpaintPipeline, pipe)
    assert inpaint.unet is pipe.unet and inpaint.vae is pipe.vae and pipe.unet.dtype == torch.bfloat16
    assert inpaint.config.force_zeros_for_empty_prompt == pipe.config.force_zeros_for_empty_prompt


def test_the_warm_up_stage_runs_before_ready_and_changes_no_image(tiny_weights: Path, monkeypatch, fresh_cache,
                                                                    tmp_path: Path) -> None:
    """WARMUP (on by default on CUDA): one generation in setup, timed as its own stage; the first
    caller's image is the one it would have been without it."""
    from pipeline.loading.cache import MODEL_CACHE
    from startup.chain import run_startup

    monkeypatch.setenv("STARTUP_TIMINGS_PATH", str(tmp_path / "timings.json"))
    monkeypatch.setenv("WARMUP", "0")
    service = run_startup(str(tiny_weights))
    assert "warmup" not in [stage["name"] for stage in service.timings["stages"]]
    cold = pixels(generate_once(service.model, go_fast=False))
    MODEL_CACHE.evict(service.default_source.model_id)
    monkeypatch.setenv("WARMUP", "1")
    service = run_startup(str(tiny_weights))
    assert "warmup" in [stage["name"] for stage in service.timings["stages"]]
    assert np.array_equal(pixels(generate_once(service.model, go_fast=False))[0], cold[0])
