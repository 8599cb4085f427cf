"""Write a diffusers SDXL folder as one original-layout (Stability "LDM"/sgm) ``.safetensors`` checkpoint.

Most SDXL fine-tunes are shared as a single file in the layout of Stability's
``sd_xl_base_1.0.safetensors`` (the Civitai format), and the service loads those with
``StableDiffusionXLPipeline.from_single_file``. To test that path offline we need such a file, and the only
SDXL weights we can make offline are diffusers folders (``scripts/make_weights.py``). This module is the
inverse of diffusers' single-file conversion (``diffusers/loaders/single_file_utils.py``), so that
``folder -> file -> from_single_file`` is an exact round trip:

* UNet under ``model.diffusion_model.`` (``input_blocks`` / ``middle_block`` / ``output_blocks``),
* VAE under ``first_stage_model.`` (``encoder.down.N`` / ``decoder.up.N``, 1x1-conv attention weights),
* CLIP-L under ``conditioner.embedders.0.transformer.`` (Hugging Face layout, ``text_model.`` prefix),
* OpenCLIP bigG under ``conditioner.embedders.1.model.`` (open_clip layout: merged ``in_proj`` q/k/v,
  ``text_projection`` stored as ``[width, embed_dim]``).

Block counts come from the model configs, never from constants, so the same code serves the tiny test
model and full-size SDXL.

Usage: python scripts/ldm_checkpoint.py FOLDER OUT.safetensors
"""

# Adapted from huggingface/diffusers scripts/convert_diffusers_to_original_sdxl.py (Apache-2.0).

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Mapping

import torch
from safetensors.torch import load_file, save_file

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

StateDict = dict[str, torch.Tensor]
# (diffusers prefix, LDM prefix, renames applied to the start of the rest of the key)
PrefixRule = tuple[str, str, Mapping[str, str]]

NO_RENAMES: Mapping[str, str] = {}
# Inside a UNet ResBlock the LDM names are positions in nn.Sequential containers.
UNET_RESNET_RENAMES: Mapping[str, str] = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "time_emb_proj.": "emb_layers.1.",
    "conv_shortcut.": "skip_connection.",
}
VAE_RESNET_RENAMES: Mapping[str, str] = {"conv_shortcut.": "nin_shortcut."}
VAE_ATTENTION_RENAMES: Mapping[str, str] = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}


def _read_weights(component_dir: Path, file_name: str) -> StateDict:
    """Load a component's safetensors weights, following a shard index when the file was split on save."""
    single = component_dir / file_name
    if single.is_file():
        return load_file(str(single))
    index = component_dir / f"{file_name}.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: StateDict = {}
        for shard in shards:
            state.update(load_file(str(component_dir / shard)))
        return state
    raise FileNotFoundError(f"no {file_name} (or its .index.json) in {component_dir}")


def _read_config(component_dir: Path) -> dict:
    return json.loads((component_dir / "config.json").read_text())


def _layers_per_block(config: Mapping) -> int:
    """diffusers allows a per-block list, but the LDM numbering (and diffusers' reader) assumes one count."""
    value = config["layers_per_block"]
    if not isinstance(value, int):
        raise ValueError(f"layers_per_block must be one int for the LDM layout, got {value!r}")
    return value


def _apply_rules(state: StateDict, rules: list[PrefixRule], what: str) -> StateDict:
    """Rename every key by its longest matching prefix rule; fail loudly on any key no rule covers.

    Failing (instead of copying unknown keys through) matters: diffusers' reader silently ignores keys it
    does not expect, so a silently wrong name would only show up as untrained weights at load time.
    """
    ordered = sorted(rules, key=lambda rule: len(rule[0]), reverse=True)
    out: StateDict = {}
    for key, tensor in state.items():
        for hf_prefix, ldm_prefix, renames in ordered:
            if key.startswith(hf_prefix):
                rest = key[len(hf_prefix) :]
                for old, new in renames.items():
                    if rest.startswith(old):
                        rest = new + rest[len(old) :]
                        break
                new_key = ldm_prefix + rest
                break
        else:
            raise KeyError(f"{what}: no LDM name for diffusers key {key!r}")
        if new_key in out:
            raise KeyError(f"{what}: two diffusers keys map to {new_key!r}")
        out[new_key] = tensor
    return out


def unet_to_ldm(state: StateDict, config: Mapping) -> StateDict:
    """UNet2DConditionModel keys -> sgm ``UNetModel`` keys (without the ``model.diffusion_model.`` prefix).

    LDM numbers blocks flatly: ``input_blocks.0`` is conv_in, then each level has ``layers_per_block``
    (resnet [+ transformer]) entries followed by a downsampler entry (except the last level); each up level
    has ``layers_per_block + 1`` entries, the last of which also holds the upsampler, at position 1 or 2
    depending on whether that entry has a transformer.
    """
    per_block = _layers_per_block(config)
    stride = per_block + 1
    rules: list[PrefixRule] = [
        ("time_embedding.linear_1.", "time_embed.0.", NO_RENAMES),
        ("time_embedding.linear_2.", "time_embed.2.", NO_RENAMES),
        ("add_embedding.linear_1.", "label_emb.0.0.", NO_RENAMES),
        ("add_embedding.linear_2.", "label_emb.0.2.", NO_RENAMES),
        ("conv_in.", "input_blocks.0.0.", NO_RENAMES),
        ("conv_norm_out.", "out.0.", NO_RENAMES),
        ("conv_out.", "out.2.", NO_RENAMES),
        ("mid_block.resnets.0.", "middle_block.0.", UNET_RESNET_RENAMES),
        ("mid_block.attentions.0.", "middle_block.1.", NO_RENAMES),
        ("mid_block.resnets.1.", "middle_block.2.", UNET_RESNET_RENAMES),
    ]
    for level in range(len(config["block_out_channels"])):
        for layer in range(per_block):
            index = 1 + level * stride + layer
            rules.append((f"down_blocks.{level}.resnets.{layer}.", f"input_blocks.{index}.0.", UNET_RESNET_RENAMES))
            rules.append((f"down_blocks.{level}.attentions.{layer}.", f"input_blocks.{index}.1.", NO_RENAMES))
        rules.append(
            (f"down_blocks.{level}.downsamplers.0.conv.", f"input_blocks.{(level + 1) * stride}.0.op.", NO_RENAMES)
        )
        for layer in range(stride):
            index = level * stride + layer
            rules.append((f"up_blocks.{level}.resnets.{layer}.", f"output_blocks.{index}.0.", UNET_RESNET_RENAMES))
            rules.append((f"up_blocks.{level}.attentions.{layer}.", f"output_blocks.{index}.1.", NO_RENAMES))
        has_attention = any(key.startswith(f"up_blocks.{level}.attentions.") for key in state)
        upsampler_slot = 2 if has_attention else 1
        rules.append(
            (
                f"up_blocks.{level}.upsamplers.0.conv.",
                f"output_blocks.{level * stride + per_block}.{upsampler_slot}.conv.",
                NO_RENAMES,
            )
        )
    return _apply_rules(state, rules, "unet")


def vae_to_ldm(state: StateDict, config: Mapping) -> StateDict:
    """AutoencoderKL keys -> LDM ``AutoencoderKL`` keys (without the ``first_stage_model.`` prefix).

    The decoder's levels are numbered in reverse in LDM (``up.0`` is the highest resolution), and the mid
    attention projections are 1x1 convolutions there, so their 2-D linear weights gain two unit dims.
    """
    per_block = _layers_per_block(config)
    levels = len(config["down_block_types"])
    rules: list[PrefixRule] = [
        ("quant_conv.", "quant_conv.", NO_RENAMES),
        ("post_quant_conv.", "post_quant_conv.", NO_RENAMES),
    ]
    for part in ("encoder", "decoder"):
        rules += [
            (f"{part}.conv_in.", f"{part}.conv_in.", NO_RENAMES),
            (f"{part}.conv_out.", f"{part}.conv_out.", NO_RENAMES),
            (f"{part}.conv_norm_out.", f"{part}.norm_out.", NO_RENAMES),
            (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", VAE_ATTENTION_RENAMES),
        ]
        # LDM's mid block is always resnet, attention, resnet (block_1, attn_1, block_2).
        rules += [(f"{part}.mid_block.resnets.{i}.", f"{part}.mid.block_{i + 1}.", VAE_RESNET_RENAMES) for i in (0, 1)]
    for level in range(levels):
        for layer in range(per_block):
            encoder_block = f"encoder.down.{level}.block.{layer}."
            rules.append((f"encoder.down_blocks.{level}.resnets.{layer}.", encoder_block, VAE_RESNET_RENAMES))
        downsample = f"encoder.down.{level}.downsample.conv."
        rules.append((f"encoder.down_blocks.{level}.downsamplers.0.conv.", downsample, NO_RENAMES))
        ldm_level = levels - 1 - level
        for layer in range(per_block + 1):
            decoder_block = f"decoder.up.{ldm_level}.block.{layer}."
            rules.append((f"decoder.up_blocks.{level}.resnets.{layer}.", decoder_block, VAE_RESNET_RENAMES))
        upsample = f"decoder.up.{ldm_level}.upsample.conv."
        rules.append((f"decoder.up_blocks.{level}.upsamplers.0.conv.", upsample, NO_RENAMES))
    out = _apply_rules(state, rules, "vae")
    for key, tensor in out.items():
        if ".mid.attn_1." in key and key.endswith(".weight") and tensor.ndim == 2:
            out[key] = tensor.reshape(*tensor.shape, 1, 1).contiguous()
    return out


def _strip_text_model(state: StateDict) -> StateDict:
    """Drop the ``text_model.`` wrapper prefix: transformers >= 5.6 saves CLIPTextModel without it."""
    return {key.removeprefix("text_model."): tensor for key, tensor in state.items()}


def clip_l_to_ldm(state: StateDict) -> StateDict:
    """CLIPTextModel keys -> the HF ``CLIPTextModel`` layout that SDXL's first embedder stores.

    Real SDXL files always carry the ``text_model.`` wrapper, and diffusers detects CLIP-L by
    ``...transformer.text_model.embeddings.position_embedding.weight``, so the prefix is normalised to present.
    """
    return {
        "text_model." + key: tensor
        for key, tensor in _strip_text_model(state).items()
        if not key.endswith("position_ids")
    }


def open_clip_to_ldm(state: StateDict) -> StateDict:
    """CLIPTextModelWithProjection keys -> open_clip ``TextTransformer`` keys (SDXL's second embedder).

    open_clip uses ``nn.MultiheadAttention`` (q, k, v concatenated into ``in_proj_*``) and multiplies by
    ``text_projection`` on the right, so it is the transpose of the HF linear weight.
    """
    flat = _strip_text_model(state)
    out: StateDict = {}
    merged: dict[str, dict[str, torch.Tensor]] = {}
    simple = {
        "embeddings.token_embedding.weight": "token_embedding.weight",
        "embeddings.position_embedding.weight": "positional_embedding",
        "final_layer_norm.weight": "ln_final.weight",
        "final_layer_norm.bias": "ln_final.bias",
    }
    layer_renames = {
        "layer_norm1.": "ln_1.",
        "layer_norm2.": "ln_2.",
        "mlp.fc1.": "mlp.c_fc.",
        "mlp.fc2.": "mlp.c_proj.",
        "self_attn.out_proj.": "attn.out_proj.",
    }
    for key, tensor in flat.items():
        if key in simple:
            out[simple[key]] = tensor
        elif key == "text_projection.weight":
            out["text_projection"] = tensor.T.contiguous()
        elif key.endswith("position_ids"):
            continue
        elif key.startswith("encoder.layers."):
            layer, rest = key.removeprefix("encoder.layers.").split(".", 1)
            prefix = f"transformer.resblocks.{layer}."
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                _, proj, kind = rest.split(".")
                merged.setdefault(f"{prefix}attn.in_proj_{kind}", {})[proj[0]] = tensor
                continue
            for old, new in layer_renames.items():
                if rest.startswith(old):
                    out[prefix + new + rest[len(old) :]] = tensor
                    break
            else:
                raise KeyError(f"text_encoder_2: no open_clip name for {key!r}")
        else:
            raise KeyError(f"text_encoder_2: no open_clip name for {key!r}")
    for key, parts in merged.items():
        if set(parts) != {"q", "k", "v"}:
            raise KeyError(f"text_encoder_2: {key} is missing one of q/k/v")
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0).contiguous()
    return out


def _with_prefix(prefix: str, state: StateDict) -> StateDict:
    return {prefix + key: tensor for key, tensor in state.items()}


def diffusers_to_ldm_sdxl(folder: Path, out_file: Path) -> Path:
    """Convert the diffusers SDXL pipeline in ``folder`` to one LDM-layout safetensors file at ``out_file``.

    Only the four weight-bearing components are written (as in Stability's release); tokenizers and the
    scheduler are not part of an LDM checkpoint, so ``from_single_file`` must get them from ``config=``.
    Tensors keep their saved dtype, so the round trip through ``from_single_file`` is bit-exact.
    """
    folder = Path(folder)
    out_file = Path(out_file)
    converters: list[tuple[str, str, str, Callable[[StateDict, Path], StateDict]]] = [
        ("unet", "diffusion_pytorch_model.safetensors", UNET_PREFIX, lambda s, d: unet_to_ldm(s, _read_config(d))),
        ("vae", "diffusion_pytorch_model.safetensors", VAE_PREFIX, lambda s, d: vae_to_ldm(s, _read_config(d))),
        ("text_encoder", "model.safetensors", CLIP_L_PREFIX, lambda s, d: clip_l_to_ldm(s)),
        ("text_encoder_2", "model.safetensors", OPEN_CLIP_PREFIX, lambda s, d: open_clip_to_ldm(s)),
    ]
    checkpoint: StateDict = {}
    for name, file_name, prefix, convert in converters:
        component_dir = folder / name
        checkpoint.update(_with_prefix(prefix, convert(_read_weights(component_dir, file_name), component_dir)))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(checkpoint, str(out_file), metadata={"format": "pt"})
    return out_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="diffusers SDXL folder (unet, vae, text_encoder, text_encoder_2)")
    parser.add_argument("out", type=Path, help="output .safetensors path")
    args = parser.parse_args()
    out = diffusers_to_ldm_sdxl(args.folder, args.out)
    print(f"wrote LDM-layout SDXL checkpoint {out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
