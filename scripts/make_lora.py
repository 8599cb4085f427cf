"""Write a random LoRA for an SDXL or Flux model folder, in the key layout of a real format.

- ``peft``: diffusers' own layout (``unet.<module>.lora_A.weight`` / ``lora_B.weight``, or
  ``transformer.`` for Flux), what ``save_lora_weights`` writes and PEFT trainers publish.
- ``kohya``: the layout A1111, Forge and Civitai files use (``lora_down`` / ``lora_up`` / ``alpha``):
  for SDXL with the original UNet's block names (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``),
  for Flux with BFL's (``lora_unet_double_blocks_0_img_attn_qkv``, Q, K and V in one fused projection).

The shapes come from the model's own configs (built on the meta device: no memory), so the LoRA
fits the model the folder holds, tiny or full size. Random values, scaled so that the LoRA changes
the image visibly without overflowing.

    python scripts/make_lora.py --weights weights/sdxl-tiny --format kohya --rank 4 --out lora.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


def _denoiser(weights: Path) -> tuple[str, Any]:
    """("sdxl" or "flux", the denoiser built on meta from its config)."""
    import diffusers
    import torch

    index = json.loads((weights / "model_index.json").read_text())
    name = "unet" if "unet" in index else "transformer"
    cls = getattr(diffusers, index[name][1])
    with torch.device("meta"):
        model = cls.from_config(cls.load_config(weights / name))
    return ("sdxl" if name == "unet" else "flux"), model


def _sgm_name(path: str, layers_per_block: int) -> str:
    """A diffusers UNet attention path in the original SDXL UNet's naming (kohya's SDXL layout)."""
    parts = path.split(".")
    if parts[0] == "down_blocks":
        block, layer = int(parts[1]), int(parts[3])
        head = f"input_blocks.{1 + block * (layers_per_block + 1) + layer}.1"
        rest = parts[4:]
    elif parts[0] == "up_blocks":
        block, layer = int(parts[1]), int(parts[3])
        head = f"output_blocks.{block * (layers_per_block + 1) + layer}.1"
        rest = parts[4:]
    else:  # mid_block.attentions.0
        head, rest = "middle_block.1", parts[3:]
    return (head + "." + ".".join(rest)).replace(".", "_")


def make_lora(weights: Path, layout: str, rank: int, seed: int = 0, scale: float = 0.5) -> dict[str, Any]:
    import torch

    family, model = _denoiser(weights)
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * scale).to(torch.float16).contiguous()

    tensors: dict[str, torch.Tensor] = {}
    if family == "sdxl":
        lpb = model.config.layers_per_block
        for name, module in model.named_modules():
            if "attentions" not in name or not name.endswith(ATTENTION) or not isinstance(module, torch.nn.Linear):
                continue
            if layout == "peft":
                tensors[f"unet.{name}.lora_A.weight"] = rand(rank, module.in_features)
                tensors[f"unet.{name}.lora_B.weight"] = rand(module.out_features, rank)
            else:
                key = "lora_unet_" + _sgm_name(name, lpb)
                tensors[f"{key}.lora_down.weight"] = rand(rank, module.in_features)
                tensors[f"{key}.lora_up.weight"] = rand(module.out_features, rank)
                tensors[f"{key}.alpha"] = torch.tensor(float(rank), dtype=torch.float16)
        return tensors
    dim = model.config.num_attention_heads * model.config.attention_head_dim
    for i in range(model.config.num_layers):
        if layout == "peft":
            for part in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj"):
                tensors[f"transformer.transformer_blocks.{i}.attn.{part}.lora_A.weight"] = rand(rank, dim)
                tensors[f"transformer.transformer_blocks.{i}.attn.{part}.lora_B.weight"] = rand(dim, rank)
        else:
            for part, out in (("img_attn_qkv", 3 * dim), ("txt_attn_qkv", 3 * dim), ("img_attn_proj", dim)):
                key = f"lora_unet_double_blocks_{i}_{part}"
                tensors[f"{key}.lora_down.weight"] = rand(rank, dim)
                tensors[f"{key}.lora_up.weight"] = rand(out, rank)
                tensors[f"{key}.alpha"] = torch.tensor(float(rank), dtype=torch.float16)
    return tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="an SDXL or Flux diffusers folder")
    parser.add_argument("--format", choices=["peft", "kohya"], default="peft")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from safetensors.torch import save_file

    tensors = make_lora(args.weights, args.format, args.rank, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata={"format": "pt"})
    print(f"wrote {len(tensors)} tensors ({args.format}, rank {args.rank}) to {args.out}")


if __name__ == "__main__":
    main()
