"""Random IP-Adapter files in the original h94/IP-Adapter layout load through diffusers' real
``load_ip_adapter`` converter into the tiny SDXL, every tensor lands where it should, and the
adapter changes the image; the full-size layout is checked on the meta device only."""

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

from tests.fixtures.make_ip_adapter import (
    ENCODER_CONFIGS,
    PLAIN_ENCODER_DIR,
    PLAIN_WEIGHT_NAME,
    PLUS_FACE_ENCODER_DIR,
    PLUS_FACE_WEIGHT_NAME,
    adapter_shapes,
    build_ip_adapter,
    encoder_shapes,
)

PROJ = "encoder_hid_proj.image_projection_layers.0."


@pytest.fixture(scope="module")
def ip_adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_ip_adapter(tmp_path_factory.mktemp("ip-adapter") / "IP-Adapter", "tiny")


@pytest.fixture(scope="module")
def pipe(tiny_weights: Path):
    from diffusers import StableDiffusionXLPipeline

    pipeline = StableDiffusionXLPipeline.from_pretrained(str(tiny_weights), dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def resampler_targets(key: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    """Original Resampler key -> diffusers IPAdapterPlusImageProjection parameter(s), written out
    independently of diffusers' own string-replace chain so a mis-rename there is caught."""
    match = re.fullmatch(r"layers\.(\d+)\.([01])\.(.+)", key)
    if match is None:  # latents, proj_in.*, proj_out.*, norm_out.*
        return {key: value}
    layer, part, leaf = f"layers.{match[1]}.", match[2], match[3]
    if part == "1":  # FeedForward: 0 LayerNorm, 1 Linear, 2 GELU, 3 Linear
        ff = {"0.weight": "ff.0.weight", "0.bias": "ff.0.bias",
              "1.weight": "ff.1.net.0.proj.weight", "3.weight": "ff.1.net.2.weight"}
        return {layer + ff[leaf]: value}
    if leaf == "to_kv.weight":
        to_k, to_v = value.chunk(2, dim=0)
        return {layer + "attn.to_k.weight": to_k, layer + "attn.to_v.weight": to_v}
    attn = {"norm1.weight": "ln0.weight", "norm1.bias": "ln0.bias", "norm2.weight": "ln1.weight",
            "norm2.bias": "ln1.bias", "to_q.weight": "attn.to_q.weight", "to_out.weight": "attn.to_out.0.weight"}
    return {layer + attn[leaf]: value}


def expected_unet_tensors(unet, file_tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Where each file tensor must end up among the UNet's parameters. ``ip_adapter.{i}`` is the
    i-th entry of ``unet.attn_processors``, as in the original IP-Adapter's ModuleList."""
    processors = list(unet.attn_processors)
    expected: dict[str, torch.Tensor] = {}
    plain = "image_proj.proj.weight" in file_tensors
    for key, value in file_tensors.items():
        prefix, _, rest = key.partition(".")
        if prefix == "ip_adapter":
            index, name, leaf = rest.split(".")
            expected[f"{processors[int(index)]}.{name}.0.{leaf}"] = value
        elif plain:
            expected[PROJ + rest.replace("proj.", "image_embeds.")] = value
        else:
            expected.update({PROJ + k: v for k, v in resampler_targets(rest, value).items()})
    return expected


VARIANTS = [
    # (weight file, image_encoder_folder argument, folder the encoder must come from, diffusers class)
    (PLAIN_WEIGHT_NAME, lambda out: "image_encoder", PLAIN_ENCODER_DIR, "ImageProjection"),
    (PLUS_FACE_WEIGHT_NAME, lambda out: str(out / "models" / "image_encoder"), PLUS_FACE_ENCODER_DIR,
     "IPAdapterPlusImageProjection"),
]


@pytest.mark.parametrize("weight_name, encoder_arg, encoder_dir, projection_class", VARIANTS,
                         ids=["plain", "plus-face"])
def test_variant_loads_exactly_and_changes_the_image(
    pipe, ip_adapter_dir: Path, weight_name: str, encoder_arg, encoder_dir: Path, projection_class: str
) -> None:
    pipe.load_ip_adapter(str(ip_adapter_dir), subfolder="sdxl_models", weight_name=weight_name,
                         image_encoder_folder=encoder_arg(ip_adapter_dir), local_files_only=True)
    try:
        unet = pipe.unet
        assert type(unet.encoder_hid_proj.image_projection_layers[0]).__name__ == projection_class
        expected = expected_unet_tensors(unet, load_file(ip_adapter_dir / "sdxl_models" / weight_name))
        loaded = {n: p for n, p in unet.named_parameters() if ".processor." in n or n.startswith(PROJ)}
        assert sorted(loaded) == sorted(expected)  # nothing dropped, nothing left at its init value
        for name, value in expected.items():
            assert torch.equal(loaded[name], value), name
        for model in (unet, pipe.image_encoder):
            assert not [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]

        # The encoder came from the folder that was asked for (the two tiny encoders differ).
        encoder_file = load_file(ip_adapter_dir / encoder_dir / "model.safetensors")
        other_dir = PLUS_FACE_ENCODER_DIR if encoder_dir == PLAIN_ENCODER_DIR else PLAIN_ENCODER_DIR
        other_file = load_file(ip_adapter_dir / other_dir / "model.safetensors")
        encoder_state = pipe.image_encoder.state_dict()
        assert sorted(encoder_state) == sorted(encoder_file)
        assert all(torch.equal(encoder_state[k], v) for k, v in encoder_file.items())
        assert not torch.equal(encoder_state["visual_projection.weight"], other_file["visual_projection.weight"])

        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8))
        images = []
        for scale in (0.8, 0.0):
            pipe.set_ip_adapter_scale(scale)
            images.append(pipe("a red bicycle", ip_adapter_image=image, num_inference_steps=2, width=64, height=64,
                               generator=torch.Generator().manual_seed(3), output_type="np").images[0])
        assert images[0].shape == (64, 64, 3) and np.isfinite(images[0]).all() and np.isfinite(images[1]).all()
        assert np.abs(images[0] - images[1]).max() > 1e-3
    finally:
        pipe.unload_ip_adapter()
    assert pipe.unet.encoder_hid_proj is None and pipe.image_encoder is None
    assert not [n for n in pipe.unet.attn_processors.values() if "IPAdapter" in type(n).__name__]


def test_files_use_the_original_key_names(ip_adapter_dir: Path) -> None:
    def keys(name: str) -> set[str]:
        with safe_open(str(ip_adapter_dir / "sdxl_models" / name), framework="pt") as handle:
            assert handle.metadata() == {"format": "pt"}
            return set(handle.keys())

    # tiny UNet: 4 cross-attention layers (down_blocks.1, up_blocks.0 x2, mid_block), each listed after
    # its self-attention in attn_processors, hence the odd ids 1..7 as in the real files.
    ip_keys = {f"ip_adapter.{i}.to_{kv}_ip.weight" for i in (1, 3, 5, 7) for kv in "kv"}
    plain = {"image_proj.proj.weight", "image_proj.proj.bias", "image_proj.norm.weight", "image_proj.norm.bias"}
    assert keys(PLAIN_WEIGHT_NAME) == plain | ip_keys

    resampler = {"image_proj.latents", "image_proj.proj_in.weight", "image_proj.proj_in.bias",
                 "image_proj.proj_out.weight", "image_proj.proj_out.bias",
                 "image_proj.norm_out.weight", "image_proj.norm_out.bias"}
    for i in range(4):
        resampler |= {f"image_proj.layers.{i}.0.{leaf}" for leaf in (
            "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "to_q.weight", "to_kv.weight", "to_out.weight")}
        resampler |= {f"image_proj.layers.{i}.1.{leaf}" for leaf in ("0.weight", "0.bias", "1.weight", "3.weight")}
    assert keys(PLUS_FACE_WEIGHT_NAME) == resampler | ip_keys
    for folder in (PLAIN_ENCODER_DIR, PLUS_FACE_ENCODER_DIR):
        assert sorted(p.name for p in (ip_adapter_dir / folder).iterdir()) == ["config.json", "model.safetensors"]
    plain_file = load_file(ip_adapter_dir / "sdxl_models" / PLAIN_WEIGHT_NAME)
    assert plain_file["image_proj.proj.weight"].dtype == torch.float32  # tiny is fp32, full fp16


def test_full_size_layout_on_meta_only() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    shapes = adapter_shapes("full")
    vit_h = encoder_shapes(ENCODER_CONFIGS / "vit-h.json")
    vit_bigg = encoder_shapes(ENCODER_CONFIGS / "vit-bigg.json")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 1024  # a real SDXL UNet or either encoder would be several GB

    plain, face = shapes[PLAIN_WEIGHT_NAME], shapes[PLUS_FACE_WEIGHT_NAME]
    assert plain["image_proj.proj.weight"] == (4 * 2048, 1280) and plain["image_proj.norm.weight"] == (2048,)
    assert plain["ip_adapter.1.to_k_ip.weight"] == (640, 2048)  # down_blocks.1, first cross-attention
    assert plain["ip_adapter.139.to_v_ip.weight"] == (1280, 2048)  # mid_block, last one
    ids = {int(k.split(".")[1]) for k in plain if k.startswith("ip_adapter.")}
    assert ids == set(range(1, 140, 2))  # SDXL's 70 cross-attention layers
    widths = [plain[f"ip_adapter.{i}.to_k_ip.weight"][0] for i in sorted(ids)]
    assert widths.count(640) == 10 and widths.count(1280) == 60
    assert face["image_proj.latents"] == (1, 16, 1280)
    assert face["image_proj.proj_in.weight"] == (1280, 1280)  # ViT-H hidden_size -> Resampler dim
    assert face["image_proj.proj_out.weight"] == (2048, 1280)
    assert face["image_proj.layers.3.0.to_kv.weight"] == (2 * 20 * 64, 1280)
    assert face["image_proj.layers.0.1.1.weight"] == (4 * 1280, 1280)
    assert "image_proj.layers.4.0.to_q.weight" not in face
    assert {k: v for k, v in face.items() if k.startswith("ip_adapter.")} == \
        {k: v for k, v in plain.items() if k.startswith("ip_adapter.")}
    # Parameter counts; in fp16 these are the published 703 MB and 848 MB files.
    assert sum(np.prod(s) for s in plain.values()) == 351_285_248
    assert sum(np.prod(s) for s in face.values()) == 423_748_864

    assert vit_bigg["visual_projection.weight"] == (1280, 1664)  # plain adapter reads bigG image_embeds
    assert vit_h["visual_projection.weight"] == (1024, 1280)
    assert sum(np.prod(s) for s in vit_h.values()) == 632_076_800  # h94 README: 632.08M
    assert sum(np.prod(s) for s in vit_bigg.values()) == 1_844_907_264  # h94 README: 1844.9M
