"""Random-weight FLUX.1 folders: the tiny ones generate through the real FluxPipeline, and the full
configs have the published architecture (counted on the meta device, never materialized)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures.make_flux import (
    CONFIGS,
    SCHNELL_OVERRIDES,
    build_flux,
    build_flux_sharing,
    component_config,
    empty_model,
    parameter_count,
    write_random_weights,
)

FLUX_DEV_TRANSFORMER_PARAMETERS = 11_901_408_320
GUIDANCE_EMBEDDER_PARAMETERS = 10_229_760  # 256 -> 3072 -> 3072 MLP, absent from schnell
TINY = {"tiny": 3.5, "tiny-schnell": 0.0}  # variant -> guidance_scale


@pytest.fixture(scope="module")
def flux_pipes(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from diffusers import FluxPipeline

    pipes = {}
    for variant in TINY:
        out = build_flux(variant, tmp_path_factory.mktemp("flux") / variant)
        pipes[variant] = FluxPipeline.from_pretrained(out, dtype=torch.float32, local_files_only=True)
    return pipes


def generate(pipe, guidance_scale: float, seed: int) -> np.ndarray:
    image = pipe(
        "a red bicycle", height=64, width=64, num_inference_steps=2, guidance_scale=guidance_scale,
        max_sequence_length=64, generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    assert image.size == (64, 64)
    return np.asarray(image)


@pytest.mark.parametrize("variant", list(TINY))
def test_tiny_flux_generates_deterministically(flux_pipes: dict, variant: str) -> None:
    pipe = flux_pipes[variant]
    assert pipe.transformer.config.guidance_embeds is (variant == "tiny")
    assert pipe.scheduler.config.use_dynamic_shifting is (variant == "tiny")
    first = generate(pipe, TINY[variant], seed=1)
    assert np.isfinite(first).all() and first.std() > 1.0
    assert np.array_equal(first, generate(pipe, TINY[variant], seed=1))
    assert not np.array_equal(first, generate(pipe, TINY[variant], seed=2))


def test_t5_tokenizer_loads_offline_and_pads_to_512(flux_pipes: dict) -> None:
    pipe = flux_pipes["tiny"]
    tokenizer = pipe.tokenizer_2
    assert tokenizer.model_max_length == 512
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer("ab").input_ids[-1] == 1  # T5 appends </s>
    embeds = pipe._get_t5_prompt_embeds("a red bicycle, über café", max_sequence_length=512)
    assert embeds.shape == (1, 512, pipe.text_encoder_2.config.d_model)
    assert torch.isfinite(embeds).all()


def test_sharded_weights_load_like_a_single_file(tmp_path: Path) -> None:
    """Full-size builds are sharded; the tiny ones fit one file, so force shards here."""
    from diffusers import FluxTransformer2DModel

    model = empty_model("tiny", "transformer")
    single = write_random_weights(model, tmp_path / "single", torch.bfloat16, seed=3)
    sharded = write_random_weights(model, tmp_path / "sharded", torch.bfloat16, seed=3, max_shard_bytes=20_000)
    assert len(list(sharded.glob("*.safetensors"))) > 1
    assert (sharded / "diffusion_pytorch_model.safetensors.index.json").is_file()
    one = FluxTransformer2DModel.from_pretrained(single).state_dict()
    many = FluxTransformer2DModel.from_pretrained(sharded).state_dict()
    assert one.keys() == many.keys() and all(torch.equal(one[k], many[k]) for k in one)


def test_schnell_beside_dev_shares_its_encoders_and_vae(tmp_path: Path) -> None:
    """The GPU check builds full schnell beside full dev (both whole do not fit its 64 GB disk):
    only the transformer and scheduler are drawn; the rest are links that load as the same files."""
    from diffusers import FluxPipeline

    dev = build_flux("tiny", tmp_path / "dev")
    schnell = build_flux_sharing(dev, tmp_path / "schnell", "tiny-schnell", dtype_name="float32")
    for name in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
        assert (schnell / name).is_symlink() and (schnell / name).resolve() == (dev / name).resolve()
    assert not (schnell / "transformer").is_symlink()
    pipe = FluxPipeline.from_pretrained(schnell, dtype=torch.float32, local_files_only=True)
    assert pipe.transformer.config.guidance_embeds is False
    assert pipe.scheduler.config.use_dynamic_shifting is False
    generate(pipe, guidance_scale=0.0, seed=1)


def test_random_values_are_drawn_on_the_generators_device_and_written_from_the_host() -> None:
    from tests.fixtures.make_flux import _random_tensor

    generator = torch.Generator("cpu").manual_seed(0)
    tensor = _random_tensor("blocks.0.weight", torch.Size([8, 16]), torch.bfloat16, generator)
    assert tensor.device.type == "cpu" and tensor.dtype == torch.bfloat16
    assert 0 < tensor.float().std().item() < 0.5 / 16**0.5 * 1.5


def test_full_transformer_parameter_counts() -> None:
    dev = empty_model("dev", "transformer")
    schnell = empty_model("schnell", "transformer")
    assert parameter_count(dev) == FLUX_DEV_TRANSFORMER_PARAMETERS
    assert abs(parameter_count(dev) - 11.9e9) < 0.01 * 11.9e9
    dev_shapes = {k: v.shape for k, v in dev.state_dict().items()}
    schnell_shapes = {k: v.shape for k, v in schnell.state_dict().items()}
    extra = set(dev_shapes) - set(schnell_shapes)
    assert set(schnell_shapes) <= set(dev_shapes)
    assert extra and all(k.startswith("time_text_embed.guidance_embedder.") for k in extra)
    assert all(dev_shapes[k] == shape for k, shape in schnell_shapes.items())
    assert parameter_count(dev) - parameter_count(schnell) == GUIDANCE_EMBEDDER_PARAMETERS


def test_schnell_configs_differ_from_dev_only_by_the_overrides() -> None:
    for path in (CONFIGS / "flux-dev").rglob("*.json"):
        relative = path.relative_to(CONFIGS / "flux-dev")
        dev, schnell = json.loads(path.read_text()), json.loads((CONFIGS / "flux-schnell" / relative).read_text())
        assert {**dev, **SCHNELL_OVERRIDES.get(relative.parts[0], {})} == schnell, relative


@pytest.mark.parametrize("variant", ["tiny", "dev", "schnell"])
def test_component_configs_fit_together(variant: str) -> None:
    transformer = component_config(variant, "transformer")
    vae = component_config(variant, "vae")
    assert transformer["in_channels"] == 4 * vae["latent_channels"]  # 2x2 latent patches are packed
    assert len(vae["block_out_channels"]) == 4  # vae_scale_factor 8, as FluxPipeline's sizes assume
    assert sum(transformer["axes_dims_rope"]) == transformer["attention_head_dim"]
    assert transformer["joint_attention_dim"] == component_config(variant, "text_encoder_2")["d_model"]
    assert transformer["pooled_projection_dim"] == component_config(variant, "text_encoder")["hidden_size"]
