"""Build a random-weight FLUX.1 IP-Adapter in XLabs-AI/flux-ip-adapter's original file layout.

The published adapter cannot be downloaded where the tests and benchmarks run, but the service
loads it through diffusers' own code (``FluxPipeline.load_ip_adapter``), which renames the
*original* XLabs keys and infers the architecture from tensor shapes. So this writes exactly the
keys XLabs publishes, with random values, and the same loader code runs as in production:

    OUT/ip_adapter.safetensors                      XLabs keys (below)
    OUT/image_encoder/{config.json,model.safetensors}  CLIPVisionModelWithProjection (ViT-L/14)

    ip_adapter_proj_model.proj.{weight,bias}        Linear(projection_dim -> 4 * joint_attention_dim)
    ip_adapter_proj_model.norm.{weight,bias}        LayerNorm(joint_attention_dim)
    double_blocks.{i}.processor.ip_adapter_double_stream_{k,v}_proj.{weight,bias}
                                                    Linear(joint_attention_dim -> inner_dim), i < num_layers

``--size tiny`` (fp32, a few hundred KB) matches pipeline/configs/flux-tiny for CPU tests;
``--size full`` (bf16, 982 MB adapter + 608 MB encoder, the published shapes) matches
pipeline/configs/flux-dev for GPU benchmarks, where speed and memory do not depend on the values.
Every shape is derived from the transformer config (read on the meta device, never allocated) and
the encoder config in pipeline/configs/ip-adapter/.

Usage: python scripts/make_flux_ip_adapter.py --size tiny --out weights/flux-ip-adapter-tiny
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The SDXL builder's helpers are layout-agnostic: seeded per-tensor random values with small
# noise on biases/LayerNorm (so a swapped or dropped tensor fails exact-equality checks), and a
# CLIP vision encoder written as transformers' save_pretrained would.
from scripts.make_ip_adapter import ENCODER_CONFIGS, Shapes, random_tensors, read_json, write_encoder  # noqa: E402

CONFIGS = ROOT / "pipeline" / "configs"
WEIGHT_NAME = "ip_adapter.safetensors"  # XLabs-AI/flux-ip-adapter's file name
ENCODER_DIR = "image_encoder"
PROJ_PREFIX = "ip_adapter_proj_model."
BLOCK_KEY = "double_blocks.{index}.processor.ip_adapter_double_stream_{kv}_proj.{leaf}"
# XLabs' ImageProjModel emits 4 image tokens. diffusers never reads the token count from the file:
# it assumes 4 unless proj.weight has exactly 65536 rows (16 tokens of 4096, the v2 adapter), and
# derives the projection's output width as rows // tokens. ``diffusers_num_tokens`` mirrors that.
NUM_TOKENS = 4


@dataclass(frozen=True)
class SizeSpec:
    """Which architecture configs and storage dtype one build size uses."""

    transformer: Path
    encoder: Path
    dtype: str


SIZES: dict[str, SizeSpec] = {
    # XLabs publishes bf16 weights; openai/clip-vit-large-patch14 is the encoder they were trained with.
    "full": SizeSpec(CONFIGS / "flux-dev" / "transformer" / "config.json", ENCODER_CONFIGS / "vit-l.json", "bfloat16"),
    "tiny": SizeSpec(CONFIGS / "flux-tiny" / "transformer" / "config.json", ENCODER_CONFIGS / "tiny.json", "float32"),
}


def diffusers_num_tokens(proj_rows: int) -> int:
    """The image-token count diffusers' Flux loader infers from ``proj.weight.shape[0]``."""
    return 16 if proj_rows == 65536 else 4


def double_stream_blocks(transformer_config: dict) -> tuple[int, int]:
    """(number of double-stream blocks, their attention width) from a meta-device transformer.

    diffusers numbers the file's ``double_blocks.{i}`` by counting the non-single entries of
    ``transformer.attn_processors`` in order and sizes every ``to_{k,v}_ip`` as
    Linear(joint_attention_dim -> inner_dim). Both are checked against the real module tree so a
    config where they disagree fails here instead of loading into the wrong layers.
    """
    import torch
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        transformer = FluxTransformer2DModel.from_config(transformer_config)
    double = [name for name in transformer.attn_processors if not name.startswith("single_transformer_blocks")]
    num_layers = transformer_config["num_layers"]
    if double != [f"transformer_blocks.{i}.attn.processor" for i in range(num_layers)]:
        raise ValueError(f"diffusers would map double_blocks.* onto these processors in another order: {double}")
    inner_dim = transformer_config["num_attention_heads"] * transformer_config["attention_head_dim"]
    attention = transformer.transformer_blocks[0].attn
    if transformer.inner_dim != inner_dim or attention.to_q.out_features != inner_dim:
        raise ValueError(f"transformer attention width {attention.to_q.out_features} != heads * head_dim {inner_dim}")
    return num_layers, inner_dim


def adapter_shapes(size: str = "tiny") -> Shapes:
    """Key -> shape of ``ip_adapter.safetensors`` for ``size``, without allocating any weights.

    Kept apart from writing so the full-size layout can be checked on a CPU-only machine.
    """
    spec = SIZES[size]
    transformer_config = read_json(spec.transformer)
    num_layers, inner_dim = double_stream_blocks(transformer_config)
    context_dim = transformer_config["joint_attention_dim"]  # the IP tokens live in T5's space
    clip_dim = read_json(spec.encoder)["projection_dim"]  # the adapter reads CLIP image_embeds
    rows = NUM_TOKENS * context_dim
    if diffusers_num_tokens(rows) != NUM_TOKENS:
        raise ValueError(f"diffusers would split {rows} projection rows into other than {NUM_TOKENS} tokens")
    shapes: Shapes = {
        PROJ_PREFIX + "norm.bias": (context_dim,),
        PROJ_PREFIX + "norm.weight": (context_dim,),
        PROJ_PREFIX + "proj.bias": (rows,),
        PROJ_PREFIX + "proj.weight": (rows, clip_dim),
    }
    for index in range(num_layers):
        for kv in "kv":
            shapes[BLOCK_KEY.format(index=index, kv=kv, leaf="bias")] = (inner_dim,)
            shapes[BLOCK_KEY.format(index=index, kv=kv, leaf="weight")] = (inner_dim, context_dim)
    return shapes


def build_flux_ip_adapter(out: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write ``OUT/ip_adapter.safetensors`` and ``OUT/image_encoder/`` for ``size``; return ``out``.

    ``seed`` makes the files reproducible; the encoder uses ``seed + 1`` so its values never
    coincide with the adapter's.
    """
    import torch
    from safetensors.torch import save_file

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
    spec = SIZES[size]
    dtype = getattr(torch, spec.dtype)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = random_tensors(adapter_shapes(size), seed, dtype)
    save_file(tensors, str(out / WEIGHT_NAME), metadata={"format": "pt"})
    del tensors
    write_encoder(spec.encoder, out / ENCODER_DIR, seed + 1, dtype)
    return out


def main() -> None:
    """CLI wrapper around ``build_flux_ip_adapter``; prints one summary line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    out = build_flux_ip_adapter(args.out, args.size, args.seed)
    size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
    print(
        f"wrote {args.size} random-weight FLUX.1 IP-Adapter (XLabs layout, {SIZES[args.size].encoder.stem} encoder) "
        f"to {out} ({size_mb:.1f} MB) in {time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
