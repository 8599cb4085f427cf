"""Build random-weight IP-Adapter files for SDXL in the original h94/IP-Adapter layout.

The real weights cannot be downloaded where the tests and benchmarks run, but the service loads
them through diffusers' own converter (``pipe.load_ip_adapter``), which infers the architecture
from the *original* key names and tensor shapes. So this writes exactly what h94/IP-Adapter
publishes -- ``image_proj.*`` / ``ip_adapter.{i}.to_{k,v}_ip.weight`` safetensors plus the CLIP
vision encoders -- with random values, and the same converter code runs as in production:

    OUT/sdxl_models/ip-adapter_sdxl.safetensors                  plain ImageProjModel (ViT-bigG embeds)
    OUT/sdxl_models/image_encoder/{config.json,model.safetensors} CLIPVisionModelWithProjection (bigG)
    OUT/sdxl_models/ip-adapter-plus-face_sdxl_vit-h.safetensors  Resampler (ViT-H penultimate states)
    OUT/models/image_encoder/{config.json,model.safetensors}      CLIPVisionModelWithProjection (ViT-H)

``--size tiny`` (fp32, under 1 MB) is for CPU tests; ``--size full`` has the real shapes (fp16,
6.5 GB, each file the size of the published one) for GPU benchmarks, where speed and memory do
not depend on the values. Every shape is derived from the UNet config and the encoder configs in
pipeline/configs/ip-adapter/; the UNet is only ever instantiated on the meta device, to read which
cross-attention layers exist.

Usage: python scripts/make_ip_adapter.py --size tiny --out weights/ip-adapter-tiny
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "pipeline" / "configs"
ENCODER_CONFIGS = CONFIGS / "ip-adapter"

PLAIN_WEIGHT_NAME = "ip-adapter_sdxl.safetensors"
PLUS_FACE_WEIGHT_NAME = "ip-adapter-plus-face_sdxl_vit-h.safetensors"
PLAIN_SUBFOLDER = "sdxl_models"
PLAIN_ENCODER_DIR = Path("sdxl_models") / "image_encoder"
PLUS_FACE_ENCODER_DIR = Path("models") / "image_encoder"

# diffusers hard-codes 4 image tokens for the plain ImageProjModel (it reads only proj.weight's
# shape[0] // 4), as the original IPAdapterXL does; anything else would be mis-split.
PLAIN_NUM_TOKENS = 4
# Random weights at full scale blow up fp16 activations in the 48-layer bigG encoder; half the
# usual 1/sqrt(fan_in) keeps every activation finite while still giving a visible effect.
WEIGHT_SCALE = 0.5
# Biases and LayerNorm affine terms get small noise rather than 0/1 so that a transposed, swapped
# or dropped tensor changes values and is caught by exact-equality load checks.
AFFINE_NOISE = 0.02


@dataclass(frozen=True)
class ResamplerSpec:
    """Hyper-parameters of the original ``Resampler`` (tencent-ailab/IP-Adapter ip_adapter/resampler.py).

    ``embedding_dim`` (encoder hidden size) and ``output_dim`` (UNet cross_attention_dim) are not
    here: they come from the configs. diffusers' converter rebuilds ``IPAdapterPlusImageProjection``
    from the state dict but infers only num_queries, dim, embedding/output dims and
    ``heads = to_q.rows // 64``; it always uses dim_head=64, depth=4 and ffn_ratio=4. A file with
    other values would not load as written, so ``check_diffusers_compatible`` refuses them.
    """

    dim: int
    depth: int
    dim_head: int
    heads: int
    num_queries: int
    ff_mult: int

    def check_diffusers_compatible(self) -> None:
        """Raise if diffusers would rebuild a different Resampler than this file describes."""
        if self.dim_head != 64 or self.depth != 4 or self.ff_mult != 4:
            raise ValueError(
                f"{self}: diffusers' IP-Adapter Plus converter assumes dim_head=64, depth=4, ff_mult=4 "
                "(it derives heads as to_q rows // 64 and never reads depth or ff_mult)"
            )


@dataclass(frozen=True)
class SizeSpec:
    """Which architecture configs one build size uses."""

    plain_encoder: Path  # sdxl_models/image_encoder: its projection_dim feeds ImageProjModel
    plus_face_encoder: Path  # models/image_encoder: its hidden_size feeds the Resampler
    unet: Path
    resampler: ResamplerSpec
    dtype: str


SIZES: dict[str, SizeSpec] = {
    # Real SDXL plus-face: IPAdapterPlusXL(dim=1280, depth=4, dim_head=64, heads=20, num_tokens=16).
    "full": SizeSpec(
        plain_encoder=ENCODER_CONFIGS / "vit-bigg.json",
        plus_face_encoder=ENCODER_CONFIGS / "vit-h.json",
        unet=CONFIGS / "sdxl" / "unet" / "config.json",
        resampler=ResamplerSpec(dim=1280, depth=4, dim_head=64, heads=20, num_queries=16, ff_mult=4),
        dtype="float16",
    ),
    # Scaled down only where diffusers infers the value from shapes (dim, heads, num_queries).
    "tiny": SizeSpec(
        plain_encoder=ENCODER_CONFIGS / "tiny.json",
        plus_face_encoder=ENCODER_CONFIGS / "tiny.json",
        unet=CONFIGS / "sdxl-tiny" / "unet" / "config.json",
        resampler=ResamplerSpec(dim=32, depth=4, dim_head=64, heads=2, num_queries=4, ff_mult=4),
        dtype="float32",
    ),
}

Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class CrossAttentionLayer:
    """One UNet cross-attention layer that gets ``to_k_ip`` / ``to_v_ip``."""

    key_id: int  # index in unet.attn_processors, the original checkpoint's ``ip_adapter.{i}``
    name: str  # attn processor name, e.g. down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor
    hidden_size: int
    cross_attention_dim: int


def read_json(path: Path) -> dict:
    """Configs are data files, so every size is described the same way."""
    return json.loads(Path(path).read_text())


def cross_attention_layers(unet_config: dict) -> list[CrossAttentionLayer]:
    """The UNet's cross-attention layers in ``attn_processors`` order, from a meta-device UNet.

    The original checkpoint numbers ``ip_adapter.{i}`` by position in
    ``ModuleList(unet.attn_processors.values())`` (self-attention processors have no weights, so
    only odd i appear in SDXL); diffusers instead counts 1, 3, 5, ... over cross-attention layers
    and sizes them from ``block_out_channels``. Both are checked here so a UNet where the two
    disagree fails loudly instead of producing a file diffusers loads into the wrong layers.
    """
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
    channels = list(unet_config["block_out_channels"])
    layers = []
    for key_id, name in enumerate(unet.attn_processors):
        if name.endswith("attn1.processor"):
            continue
        attention = unet.get_submodule(name.removesuffix(".processor"))
        if name.startswith("mid_block"):
            expected_hidden = channels[-1]
        elif name.startswith("up_blocks"):
            expected_hidden = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            expected_hidden = channels[int(name[len("down_blocks.")])]
        layer = CrossAttentionLayer(key_id, name, attention.to_k.out_features, attention.to_k.in_features)
        diffusers_key_id = 2 * len(layers) + 1
        if (
            layer.hidden_size != expected_hidden
            or layer.cross_attention_dim != unet_config["cross_attention_dim"]
            or key_id != diffusers_key_id
        ):
            raise ValueError(f"{name}: diffusers would size/number this IP-Adapter layer differently ({layer})")
        layers.append(layer)
    if not layers:
        raise ValueError("UNet has no cross-attention layers to attach an IP-Adapter to")
    return layers


def ip_adapter_shapes(layers: list[CrossAttentionLayer]) -> Shapes:
    """``ip_adapter.{i}.to_k_ip/to_v_ip.weight``: Linear(cross_attention_dim -> hidden_size, no bias)."""
    shapes: Shapes = {}
    for layer in layers:
        for name in ("to_k_ip", "to_v_ip"):
            shapes[f"ip_adapter.{layer.key_id}.{name}.weight"] = (layer.hidden_size, layer.cross_attention_dim)
    return shapes


def plain_image_proj_shapes(cross_attention_dim: int, encoder_config: dict) -> Shapes:
    """Original ``ImageProjModel``: Linear(projection_dim -> 4 * cross_dim) then LayerNorm(cross_dim)."""
    tokens_dim = PLAIN_NUM_TOKENS * cross_attention_dim
    return {
        "image_proj.proj.weight": (tokens_dim, encoder_config["projection_dim"]),
        "image_proj.proj.bias": (tokens_dim,),
        "image_proj.norm.weight": (cross_attention_dim,),
        "image_proj.norm.bias": (cross_attention_dim,),
    }


def resampler_shapes(spec: ResamplerSpec, embedding_dim: int, output_dim: int) -> Shapes:
    """Original ``Resampler`` state dict: layers.{i}.0 is PerceiverAttention, layers.{i}.1 FeedForward."""
    inner, dim = spec.dim_head * spec.heads, spec.dim
    shapes: Shapes = {
        "image_proj.latents": (1, spec.num_queries, dim),
        "image_proj.proj_in.weight": (dim, embedding_dim),
        "image_proj.proj_in.bias": (dim,),
        "image_proj.proj_out.weight": (output_dim, dim),
        "image_proj.proj_out.bias": (output_dim,),
        "image_proj.norm_out.weight": (output_dim,),
        "image_proj.norm_out.bias": (output_dim,),
    }
    for i in range(spec.depth):
        attn, ff = f"image_proj.layers.{i}.0", f"image_proj.layers.{i}.1"
        shapes.update({
            f"{attn}.norm1.weight": (dim,),
            f"{attn}.norm1.bias": (dim,),
            f"{attn}.norm2.weight": (dim,),
            f"{attn}.norm2.bias": (dim,),
            f"{attn}.to_q.weight": (inner, dim),
            f"{attn}.to_kv.weight": (2 * inner, dim),
            f"{attn}.to_out.weight": (dim, inner),
            f"{ff}.0.weight": (dim,),  # LayerNorm
            f"{ff}.0.bias": (dim,),
            f"{ff}.1.weight": (dim * spec.ff_mult, dim),  # Linear, no bias
            f"{ff}.3.weight": (dim, dim * spec.ff_mult),  # Linear, no bias (2 is GELU)
        })
    return shapes


def adapter_shapes(size: str = "tiny", unet_config: Path | None = None) -> dict[str, Shapes]:
    """Key -> shape of both adapter files, computed without allocating any weights.

    Kept separate from writing so the full-size layout can be checked on a CPU-only machine.
    """
    spec = SIZES[size]
    unet_cfg = read_json(unet_config or spec.unet)
    cross_dim = unet_cfg["cross_attention_dim"]
    attn = ip_adapter_shapes(cross_attention_layers(unet_cfg))
    spec.resampler.check_diffusers_compatible()
    plus_encoder = read_json(spec.plus_face_encoder)
    return {
        PLAIN_WEIGHT_NAME: {**plain_image_proj_shapes(cross_dim, read_json(spec.plain_encoder)), **attn},
        # plus-face reads hidden_states[-2] of ViT-H, so its input width is hidden_size.
        PLUS_FACE_WEIGHT_NAME: {**resampler_shapes(spec.resampler, plus_encoder["hidden_size"], cross_dim), **attn},
    }


def encoder_shapes(encoder_config: Path) -> Shapes:
    """State-dict shapes of ``CLIPVisionModelWithProjection`` for a config, built on the meta device."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(CLIPVisionConfig.from_json_file(str(encoder_config)))
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def random_tensors(shapes: Shapes, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Seeded random values, one tensor at a time so a full-size file never exists in fp32.

    Matrices get N(0, WEIGHT_SCALE / sqrt(fan_in)); 1-D ``*.weight`` are LayerNorm scales (1 + noise);
    biases get small noise; the Resampler's latents follow the original randn / sqrt(dim).
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in shapes.items():
        values = torch.randn(shape, generator=generator, dtype=torch.float32)
        if name.endswith("bias"):
            values.mul_(AFFINE_NOISE)
        elif name.endswith("weight") and len(shape) == 1:
            values.mul_(AFFINE_NOISE).add_(1.0)
        elif name.endswith("latents"):
            values.div_(math.sqrt(shape[-1]))
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
            values.mul_(WEIGHT_SCALE / math.sqrt(fan_in))
        tensors[name] = values.to(dtype).contiguous()
    return tensors


def write_encoder(encoder_config: Path, out_dir: Path, seed: int, dtype: torch.dtype) -> None:
    """Save a random CLIP vision encoder as transformers does (config.json + model.safetensors)."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig

    config = CLIPVisionConfig.from_json_file(str(encoder_config))
    config.architectures = ["CLIPVisionModelWithProjection"]
    config.dtype = dtype
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out_dir))
    tensors = random_tensors(encoder_shapes(encoder_config), seed, dtype)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})


def build_ip_adapter(out: Path, size: str = "tiny", unet_config: Path | None = None, seed: int = 0) -> Path:
    """Write both SDXL IP-Adapter variants and both image encoders under ``out`` and return it.

    ``unet_config`` overrides the size's UNet config (the adapter must match the UNet it is
    loaded into); ``seed`` makes the files reproducible.
    """
    import torch
    from safetensors.torch import save_file

    spec = SIZES[size]
    dtype = getattr(torch, spec.dtype)
    out = Path(out)
    shapes = adapter_shapes(size, unet_config)
    for offset, (weight_name, file_shapes) in enumerate(shapes.items()):
        (out / PLAIN_SUBFOLDER).mkdir(parents=True, exist_ok=True)
        tensors = random_tensors(file_shapes, seed + offset, dtype)
        save_file(tensors, str(out / PLAIN_SUBFOLDER / weight_name), metadata={"format": "pt"})
    write_encoder(spec.plain_encoder, out / PLAIN_ENCODER_DIR, seed + 10, dtype)
    write_encoder(spec.plus_face_encoder, out / PLUS_FACE_ENCODER_DIR, seed + 11, dtype)
    return out


def main() -> None:
    """CLI wrapper around ``build_ip_adapter``; prints one summary line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--unet-config", type=Path, default=None, help="UNet config.json to size the adapter for")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    out = build_ip_adapter(args.out, args.size, args.unet_config, args.seed)
    spec = SIZES[args.size]
    size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
    print(
        f"wrote {args.size} random-weight SDXL IP-Adapter (plain + plus-face; {spec.plain_encoder.stem} and "
        f"{spec.plus_face_encoder.stem} encoders) to {out} ({size_mb:.1f} MB) in {time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
