"""Build random-weight FLUX.1 (dev or schnell) from the project's architecture configs as a diffusers folder.

``--variant tiny`` / ``tiny-schnell`` (a few MB, seconds on a CPU) stand in for real weights in the
tests; ``dev`` / ``schnell`` have the exact published architecture (transformer 11.9 B parameters,
T5-XXL encoder 4.8 B; about 34 GB in bf16) for GPU benchmarks, where speed and memory do not depend
on the weight values. The folder has the layout of the published weights (model_index.json, one
sub-folder per component, sharded safetensors) and loads with ``FluxPipeline.from_pretrained``.

The models are never materialized: each is built on the meta device for its parameter names and
shapes, and the random tensors are generated and written one safetensors shard at a time. Peak
memory is about one shard (``MAX_SHARD_BYTES``, 5 GB) plus the largest tensor in fp32, so the full
34 GB build fits a 24 GB machine (it needs 34 GB of disk).

Usage: python scripts/make_flux.py --variant tiny --out weights/flux-tiny [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts.make_weights import byte_level_tokenizer  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "pipeline" / "configs"
# FLUX.1-schnell differs from dev only in these settings: no guidance embedder (it is
# guidance-distilled away) and a fixed, unshifted sigma schedule. The tiny schnell is the tiny dev
# with the same changes, so there is one tiny config to keep right.
SCHNELL_OVERRIDES: dict[str, dict[str, object]] = {
    "transformer": {"guidance_embeds": False},
    "scheduler": {"shift": 1.0, "use_dynamic_shifting": False},
}
VARIANTS: dict[str, tuple[Path, dict[str, dict[str, object]]]] = {
    "tiny": (CONFIGS / "flux-tiny", {}),
    "tiny-schnell": (CONFIGS / "flux-tiny", SCHNELL_OVERRIDES),
    "dev": (CONFIGS / "flux-dev", {}),
    "schnell": (CONFIGS / "flux-schnell", {}),
}
MODELS = ("transformer", "vae", "text_encoder", "text_encoder_2")
# Weights are N(0, (INIT_GAIN / sqrt(fan_in))^2): each layer about halves its input's scale instead
# of growing it, so 57 transformer blocks and the 24-layer T5 stay finite in bf16 and fp16.
INIT_GAIN = 0.5
# One shard is the largest thing held in memory; 5 GB keeps a full build far below 24 GB of RAM.
MAX_SHARD_BYTES = 5 * 10**9
T5_MAX_LENGTH = 512  # what FluxPipeline asks of tokenizer_2 for FLUX.1-dev


def component_config(variant: str, name: str) -> dict:
    """The config of component ``name`` for ``variant``, read from the data files."""
    config_dir, overrides = VARIANTS[variant]
    path = config_dir / name / ("scheduler_config.json" if name == "scheduler" else "config.json")
    return {**json.loads(path.read_text()), **overrides.get(name, {})}


def empty_model(variant: str, name: str) -> torch.nn.Module:
    """Component ``name`` on the meta device: its exact parameter names and shapes, no storage.

    ``torch.device("meta")`` (unlike accelerate's ``init_empty_weights``) keeps tied parameters
    tied, so T5's shared/embed_tokens embedding is counted and written once, as save_pretrained does.
    """
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    config = component_config(variant, name)
    with torch.device("meta"):
        if name == "transformer":
            return FluxTransformer2DModel.from_config(config)
        if name == "vae":
            return AutoencoderKL.from_config(config)
        if name == "text_encoder":
            return CLIPTextModel(CLIPTextConfig.from_dict(config))
        if name == "text_encoder_2":
            return T5EncoderModel(T5Config.from_dict(config))
    raise ValueError(f"unknown model component {name!r}")


def parameter_count(model: torch.nn.Module) -> int:
    """Distinct parameters (tied ones once), as the published model cards count them."""
    return sum(p.numel() for p in model.parameters())


def _random_tensor(name: str, shape: torch.Size, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """Random weights with unit-ish activations: every 1-D parameter in these models is a norm
    scale (``*.weight``: ones) or a bias (zeros); matrices, convolutions and embeddings get
    N(0, INIT_GAIN / sqrt(fan_in)). Drawn on the generator's device, returned in host memory."""
    import torch

    if len(shape) == 1:
        return torch.full(tuple(shape), 1.0 if name.endswith("weight") else 0.0, dtype=dtype)
    fan_in = math.prod(shape[1:])
    values = torch.randn(tuple(shape), generator=generator, device=generator.device).mul_(INIT_GAIN / math.sqrt(fan_in))
    return values.to(dtype).cpu()


def _shards(sizes: dict[str, int], limit: int) -> list[list[str]]:
    """Split tensor names, in state-dict order, into groups of at most ``limit`` bytes each."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes.items():
        if shards[-1] and used + size > limit:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def write_random_weights(model: torch.nn.Module, folder: Path, dtype: torch.dtype, seed: int,
                         max_shard_bytes: int | None = None, device: str = "cpu") -> Path:
    """Write ``model`` (on the meta device) to ``folder`` as its library's save_pretrained would:
    config plus safetensors, sharded with an index above ``max_shard_bytes`` (default
    ``MAX_SHARD_BYTES``), but generating each shard's random tensors just before writing it, so
    only one shard is ever in memory. ``seed`` fixes the values: same seed and ``device``, same
    weights (a GPU's generator draws other values than the CPU's, and far faster)."""
    import torch
    from diffusers import ModelMixin
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(model, ModelMixin):
        from diffusers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME

        weights_name, index_name = SAFETENSORS_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME
        model.save_config(str(folder))
    else:
        from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

        weights_name, index_name = SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME
        model.config.architectures = [type(model).__name__]
        model.config.dtype = dtype
        model.config.save_pretrained(str(folder))

    parameters = {id(p) for p in model.parameters()}
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in parameters:
            raise ValueError(f"{name}: a persistent buffer has no random stand-in; give it one here")
        if id(tensor) not in seen:  # a tied parameter is stored once, under its first name
            seen.add(id(tensor))
            tensors[name] = tensor
    element_size = torch.empty((), dtype=dtype).element_size()
    sizes = {name: t.numel() * element_size for name, t in tensors.items()}
    groups = _shards(sizes, max_shard_bytes or MAX_SHARD_BYTES)

    generator = torch.Generator(device).manual_seed(seed)
    weight_map: dict[str, str] = {}
    for number, group in enumerate(groups, start=1):
        file_name = weights_name
        if len(groups) > 1:
            file_name = weights_name.replace(".safetensors", f"-{number:05d}-of-{len(groups):05d}.safetensors")
        shard = {name: _random_tensor(name, tensors[name].shape, dtype, generator) for name in group}
        save_file(shard, str(folder / file_name), metadata={"format": "pt"})
        del shard
        weight_map.update(dict.fromkeys(group, file_name))
    if len(groups) > 1:
        index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
        (folder / index_name).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return folder


def t5_tokenizer(out_dir: Path) -> None:
    """A T5 tokenizer over single characters: offline (no spiece.model, no hub), tiny, and the real
    tokenizers-backed T5 class, saved as tokenizer.json so ``T5TokenizerFast.from_pretrained`` loads it.

    T5's layout is kept: ``<pad>``=0, ``</s>``=1, ``<unk>``=2, then the pieces (the word-start
    marker ``▁`` and printable ASCII and Latin-1 characters; anything else is ``<unk>``), then the
    100 ``<extra_id_*>`` sentinels. 293 ids in all, within T5's 32128 embeddings.
    """
    from transformers import T5TokenizerFast

    characters = [chr(c) for c in range(0x21, 0x7F)] + [chr(c) for c in range(0xA1, 0x100)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)] + [(c, -5.0) for c in characters]
    tokenizer = T5TokenizerFast(vocab=vocab, extra_ids=100, model_max_length=T5_MAX_LENGTH)
    tokenizer.save_pretrained(str(out_dir))


def _check_vocabularies(variant: str, out: Path) -> None:
    """Fail at build time, not at the first prompt, if a tokenizer emits ids past its encoder's embeddings."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    for tokenizer_name, encoder_name, cls in (("tokenizer", "text_encoder", CLIPTokenizer),
                                              ("tokenizer_2", "text_encoder_2", T5TokenizerFast)):
        size = len(cls.from_pretrained(str(out / tokenizer_name)))
        vocab_size = component_config(variant, encoder_name)["vocab_size"]
        if vocab_size < size:
            raise ValueError(f"{encoder_name} vocab_size {vocab_size} < {tokenizer_name}'s {size} tokens")


def build_flux(variant: str, out: Path, dtype_name: str = "bfloat16", seed: int = 0, device: str = "cpu") -> Path:
    """Write a random-weight FLUX.1 diffusers folder for ``variant`` to ``out`` and return it.

    Not ``FluxPipeline(...).save_pretrained``: that needs every component in memory at once (34 GB
    in bf16 at full size). The files are those save_pretrained writes, and loading them goes
    through ``FluxPipeline.from_pretrained`` like real weights.
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    dtype = getattr(torch, dtype_name)
    config_dir, _ = VARIANTS[variant]
    out.mkdir(parents=True, exist_ok=True)
    for name in (*MODELS, "scheduler", "tokenizer", "tokenizer_2"):
        # Shards left by an earlier build (another dtype, another variant) would be loaded as ours.
        shutil.rmtree(out / name, ignore_errors=True)

    byte_level_tokenizer(out / "tokenizer", "<|endoftext|>")
    t5_tokenizer(out / "tokenizer_2")
    _check_vocabularies(variant, out)
    for index, name in enumerate(MODELS):
        # One component at a time: nothing of the previous one is alive while the next is written.
        write_random_weights(empty_model(variant, name), out / name, dtype, seed=seed * len(MODELS) + index, device=device)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(component_config(variant, "scheduler"))
    scheduler.save_pretrained(str(out / "scheduler"))
    # The published model_index.json, verbatim. It names T5TokenizerFast, which transformers 4 and 5
    # both load from tokenizer.json; transformers 5's FluxPipeline.save_pretrained would record the
    # class's new name, T5Tokenizer, which transformers 4 reads as the sentencepiece-only tokenizer.
    shutil.copyfile(config_dir / "model_index.json", out / "model_index.json")
    return out


def build_flux_sharing(base: Path, out: Path, variant: str, dtype_name: str = "bfloat16", seed: int = 0,
                       device: str = "cpu") -> Path:
    """Write ``variant`` beside the built folder ``base``, linking base's VAE, text encoders and
    tokenizers and drawing only its own transformer and scheduler.

    FLUX.1 dev and schnell differ only there (``SCHNELL_OVERRIDES``), and both full-size folders
    (34 GB each) do not fit a 64 GB benchmark disk; linked, the second costs 23 GB.
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    config_dir, _ = VARIANTS[variant]
    out.mkdir(parents=True, exist_ok=True)
    for name in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
        link = out / name
        if link.is_symlink() or link.is_file():
            link.unlink()
        shutil.rmtree(link, ignore_errors=True)
        link.symlink_to((base / name).resolve(), target_is_directory=True)
    shutil.rmtree(out / "transformer", ignore_errors=True)
    write_random_weights(empty_model(variant, "transformer"), out / "transformer", getattr(torch, dtype_name),
                         seed=seed * len(MODELS), device=device)
    shutil.rmtree(out / "scheduler", ignore_errors=True)
    FlowMatchEulerDiscreteScheduler.from_config(component_config(variant, "scheduler")).save_pretrained(str(out / "scheduler"))
    shutil.copyfile(config_dir / "model_index.json", out / "model_index.json")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=list(VARIANTS), default="tiny")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where the random values are drawn (cuda: seconds for full size)")
    args = parser.parse_args()
    started = time.perf_counter()
    out = build_flux(args.variant, args.out, args.dtype, args.seed, args.device)
    size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
    seconds = time.perf_counter() - started
    print(f"wrote {args.variant} random-weight FLUX.1 to {out} ({size_mb:.1f} MB) in {seconds:.1f} s")


if __name__ == "__main__":
    main()
