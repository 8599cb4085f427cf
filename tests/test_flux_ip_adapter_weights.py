"""Random FLUX IP-Adapter files in XLabs-AI/flux-ip-adapter's original layout load through
diffusers' real ``FluxPipeline.load_ip_adapter`` into the tiny Flux, every tensor lands where it
should, the adapter changes the image, and the service's processor swap is exact; the full-size
layout is checked on the meta device only."""

from __future__ import annotations

import re
import resource
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from tests.fixtures.make_flux_ip_adapter import (
    ENCODER_DIR,
    WEIGHT_NAME,
    adapter_shapes,
    build_flux_ip_adapter,
    diffusers_num_tokens,
    double_stream_blocks,
)
from tests.fixtures.make_ip_adapter import ENCODER_CONFIGS, encoder_shapes, read_json

PROJ = "encoder_hid_proj.image_projection_layers.0."
BLOCK = re.compile(r"double_blocks\.(\d+)\.processor\.ip_adapter_double_stream_([kv])_proj\.(weight|bias)")
PROMPT = "a red bicycle"


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fixtures.make_flux import build_flux

    return build_flux("tiny", tmp_path_factory.mktemp("flux") / "flux-tiny", "float32")


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_flux_ip_adapter(tmp_path_factory.mktemp("flux-ip-adapter") / "flux-ip-adapter", "tiny")


@pytest.fixture(scope="module")
def pipe(flux_dir: Path):
    from diffusers import FluxPipeline

    pipeline = FluxPipeline.from_pretrained(str(flux_dir), dtype=torch.float32, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def reference_image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8))


def generate(pipe, **extra) -> np.ndarray:
    """One 64x64, 2-step image with a fixed seed, so runs are comparable pixel for pixel."""
    return pipe(PROMPT, num_inference_steps=2, width=64, height=64, generator=torch.Generator().manual_seed(3),
                output_type="np", **extra).images[0]


@pytest.fixture(scope="module")
def never_loaded(pipe) -> np.ndarray:
    """The image of a pipeline that has never seen an adapter (requested before any load)."""
    return generate(pipe)


def load(pipe, adapter_dir: Path) -> None:
    """The service's load call. ``local_files_only`` reaches both the adapter file lookup and the
    encoder's from_pretrained; the encoder defaults to fp16, so ask for the pipeline's dtype."""
    pipe.load_ip_adapter(str(adapter_dir), weight_name=WEIGHT_NAME,
                         image_encoder_pretrained_model_name_or_path=str(adapter_dir / ENCODER_DIR),
                         image_encoder_dtype=torch.float32, local_files_only=True)


def expected_transformer_tensors(file_tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Where each XLabs tensor must end up among the transformer's parameters, written out
    independently of diffusers' own string-replace chain so a mis-rename there is caught.
    ``double_blocks.{i}`` is the i-th double-stream block, ``transformer_blocks.{i}``."""
    expected: dict[str, torch.Tensor] = {}
    for key, value in file_tensors.items():
        if key.startswith("ip_adapter_proj_model."):
            layer, leaf = key.removeprefix("ip_adapter_proj_model.").split(".")
            expected[PROJ + {"proj": "image_embeds", "norm": "norm"}[layer] + "." + leaf] = value
        else:
            index, kv, leaf = BLOCK.fullmatch(key).groups()
            expected[f"transformer_blocks.{index}.attn.processor.to_{kv}_ip.0.{leaf}"] = value
    return expected


def test_file_uses_the_xlabs_key_names(adapter_dir: Path) -> None:
    with safe_open(str(adapter_dir / WEIGHT_NAME), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}
        keys = set(handle.keys())
    # tiny Flux has one double-stream block; XLabs has no keys for the single-stream blocks.
    blocks = {f"double_blocks.0.processor.ip_adapter_double_stream_{kv}_proj.{leaf}"
              for kv in "kv" for leaf in ("weight", "bias")}
    proj = {f"ip_adapter_proj_model.{layer}.{leaf}" for layer in ("proj", "norm") for leaf in ("weight", "bias")}
    assert keys == blocks | proj
    assert sorted(p.name for p in (adapter_dir / ENCODER_DIR).iterdir()) == ["config.json", "model.safetensors"]
    assert load_file(adapter_dir / WEIGHT_NAME)["ip_adapter_proj_model.proj.weight"].dtype == torch.float32


def test_loads_exactly_changes_the_image_and_unloads(pipe, adapter_dir: Path, reference_image: Image.Image,
                                                     never_loaded: np.ndarray) -> None:
    transformer = pipe.transformer
    before = {name: type(p).__name__ for name, p in transformer.attn_processors.items()}
    assert before == {"transformer_blocks.0.attn.processor": "FluxAttnProcessor",
                      "single_transformer_blocks.0.attn.processor": "FluxAttnProcessor"}
    load(pipe, adapter_dir)
    try:
        # Same processor count; only the double-stream blocks get the IP-Adapter processor.
        after = {name: type(p).__name__ for name, p in transformer.attn_processors.items()}
        assert after == {"transformer_blocks.0.attn.processor": "FluxIPAdapterAttnProcessor",
                         "single_transformer_blocks.0.attn.processor": "FluxAttnProcessor"}
        assert type(transformer.encoder_hid_proj.image_projection_layers[0]).__name__ == "ImageProjection"

        expected = expected_transformer_tensors(load_file(adapter_dir / WEIGHT_NAME))
        loaded = {n: p for n, p in transformer.named_parameters() if ".processor." in n or n.startswith(PROJ)}
        assert sorted(loaded) == sorted(expected)  # nothing dropped, nothing left at its init value
        for name, value in expected.items():
            assert torch.equal(loaded[name], value), name
        for model in (transformer, pipe.image_encoder):
            assert not [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
        encoder_file = load_file(adapter_dir / ENCODER_DIR / "model.safetensors")
        encoder_state = pipe.image_encoder.state_dict()
        assert sorted(encoder_state) == sorted(encoder_file)
        assert all(torch.equal(encoder_state[k], v) for k, v in encoder_file.items())
        assert pipe.image_encoder.dtype == torch.float32 and pipe.feature_extractor.crop_size["height"] == 32

        images = {}
        for scale in (1.0, 0.0):
            pipe.set_ip_adapter_scale(scale)
            images[scale] = generate(pipe, ip_adapter_image=reference_image)
        assert images[1.0].shape == (64, 64, 3) and np.isfinite(images[1.0]).all()
        assert np.abs(images[1.0] - images[0.0]).max() > 1e-3
        # Scale 0 is pixel-identical to never loading, on CPU in fp32: the IP branch returns
        # 0 * attention == exact zeros (finite values), h + 0 == h, and the adapter processor's main
        # path is FluxAttnProcessor's operations; the black negative image diffusers encodes is
        # unused at true_cfg_scale 1 and draws no random numbers. The IP attention still runs (it
        # is wasted work), so the service swaps processors out rather than setting scale 0.
        assert np.array_equal(images[0.0], never_loaded)
    finally:
        pipe.unload_ip_adapter()
    assert transformer.encoder_hid_proj is None and pipe.image_encoder is None and pipe.feature_extractor is None
    assert {n: type(p).__name__ for n, p in transformer.attn_processors.items()} == before
    assert np.array_equal(generate(pipe), never_loaded)


def test_processor_swap_and_precomputed_embeddings(pipe, adapter_dir: Path, reference_image: Image.Image,
                                                   never_loaded: np.ndarray) -> None:
    """The service keeps both processor sets and swaps them, as unload_ip_adapter does but
    without dropping the adapter; and it caches image embeddings per reference image."""
    transformer = pipe.transformer
    plain = dict(transformer.attn_processors)
    load(pipe, adapter_dir)
    encoder = pipe.image_encoder
    try:
        adapter, projection = dict(transformer.attn_processors), transformer.encoder_hid_proj
        pipe.set_ip_adapter_scale(1.0)
        with_image = generate(pipe, ip_adapter_image=reference_image)

        handed = dict(plain)
        transformer.set_attn_processor(handed)
        assert handed == {}  # set_attn_processor pops from the dict it is given: always pass a copy
        transformer.encoder_hid_proj = None
        transformer.config.encoder_hid_dim_type = None  # Flux never reads it; cleared as unload does
        assert np.array_equal(generate(pipe), never_loaded)

        transformer.encoder_hid_proj = projection
        transformer.config.encoder_hid_dim_type = "ip_image_proj"
        transformer.set_attn_processor(dict(adapter))
        assert all(transformer.attn_processors[n] is p for n, p in adapter.items())  # scales kept too

        embeds = pipe.prepare_ip_adapter_image_embeds(ip_adapter_image=reference_image, ip_adapter_image_embeds=None,
                                                      device=pipe.device, num_images_per_prompt=1)
        assert isinstance(embeds, list) and len(embeds) == 1  # one tensor per loaded adapter
        assert embeds[0].shape == (1, 1, 32)  # (batch, images, encoder projection_dim); 768 at full size
        assert np.array_equal(generate(pipe, ip_adapter_image_embeds=embeds), with_image)

        # Even with embeddings and true_cfg_scale 1 the pipeline encodes a black negative image
        # (never used); passing negative embeddings skips the encoder, so it can be left unloaded.
        pipe.image_encoder = None
        with pytest.raises(AttributeError):
            generate(pipe, ip_adapter_image_embeds=embeds)
        negative = [torch.zeros_like(embeds[0])]
        assert np.array_equal(generate(pipe, ip_adapter_image_embeds=embeds, negative_ip_adapter_image_embeds=negative),
                              with_image)
    finally:
        pipe.image_encoder = encoder
        pipe.unload_ip_adapter()
    assert np.array_equal(generate(pipe), never_loaded)


def test_full_size_layout_on_meta_only() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    shapes = adapter_shapes("full")
    vit_l = encoder_shapes(ENCODER_CONFIGS / "vit-l.json")
    dev = read_json(Path(__file__).resolve().parent.parent / "pipeline/configs/flux-dev/transformer/config.json")
    blocks = double_stream_blocks(dev)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 1024  # a materialized FLUX.1 transformer would be 24+ GB

    assert blocks == (19, 3072)
    assert shapes["ip_adapter_proj_model.proj.weight"] == (4 * 4096, 768)  # ViT-L image_embeds -> 4 T5-width tokens
    assert shapes["ip_adapter_proj_model.proj.bias"] == (16384,)
    assert shapes["ip_adapter_proj_model.norm.weight"] == (4096,)
    assert shapes["double_blocks.0.processor.ip_adapter_double_stream_k_proj.weight"] == (3072, 4096)
    assert shapes["double_blocks.18.processor.ip_adapter_double_stream_v_proj.bias"] == (3072,)
    assert "double_blocks.19.processor.ip_adapter_double_stream_k_proj.weight" not in shapes
    assert len(shapes) == 4 + 19 * 4
    assert diffusers_num_tokens(16384) == 4  # diffusers reads 16384 rows as 4 tokens of 4096
    assert sum(np.prod(s) for s in shapes.values()) == 490_874_880  # 981.7 MB in bf16

    assert vit_l["visual_projection.weight"] == (768, 1024)
    assert vit_l["vision_model.embeddings.position_embedding.weight"] == (257, 1024)  # (224 / 14)^2 + CLS
    assert vit_l["vision_model.embeddings.patch_embedding.weight"] == (1024, 3, 14, 14)
    layers = {int(k.split(".")[3]) for k in vit_l if k.startswith("vision_model.encoder.layers.")}
    assert layers == set(range(24))
    assert vit_l["vision_model.encoder.layers.0.mlp.fc1.weight"] == (4096, 1024)
    assert sum(np.prod(s) for s in vit_l.values()) == 303_966_208  # CLIP ViT-L/14 vision tower + projection
