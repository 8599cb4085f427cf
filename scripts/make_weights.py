"""Build random-weight SDXL from the project's architecture configs and save it as diffusers weights.

``--size tiny`` (a few MB, seconds on a CPU) is the embedded default for the demo and the tests;
``--size full`` has SDXL's exact architecture (6.5 GB in fp16) for GPU benchmarks, where speed and
memory do not depend on the weight values. Both are saved exactly as real weights are, and loaded
through the same code.

Usage: python scripts/make_weights.py --size tiny --out weights/sdxl-tiny
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent.parent / "pipeline" / "configs"
SIZES = {"tiny": CONFIGS / "sdxl-tiny", "full": CONFIGS / "sdxl"}
# Random weights at full scale overflow fp16 activations in deep stacks; halving keeps them finite.
WEIGHT_SCALE = 0.5


def byte_level_tokenizer(out_dir: Path, pad_token: str) -> None:
    """A CLIP tokenizer over the 256 byte symbols: tiny, offline, and exercises the real class."""
    from transformers import CLIPTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from clip_tokenizer_from_bpe import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(str(out_dir), model_max_length=77, pad_token=pad_token)
    tokenizer.save_pretrained(str(out_dir))
    for extra in ("tokenizer.json",):
        (out_dir / extra).unlink(missing_ok=True)


def build_sdxl(size: str, out: Path, dtype_name: str = "float16", seed: int = 0, device: str = "cpu") -> Path:
    """Write a random-weight SDXL diffusers folder to ``out`` and return it.

    ``device`` is where the modules are built and initialised: on a GPU the 3.5 B random values are
    drawn there (the libraries' own init, not a stand-in), which is what makes a full-size build
    fast on a bare benchmark machine (22 s on an H200). The layout and the value distribution are the
    same either way; the values are not, since each device has its own random generator.
    """
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    config_dir = SIZES[size]
    torch.manual_seed(seed)
    read = lambda name: json.loads((config_dir / name / "config.json").read_text())  # noqa: E731
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(read("unet"))
        vae = AutoencoderKL.from_config(read("vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**read("text_encoder")))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**read("text_encoder_2")))
    with torch.no_grad():
        for module in (unet, vae, text_encoder, text_encoder_2):
            for parameter in module.parameters():
                parameter.mul_(WEIGHT_SCALE)
    scheduler = EulerDiscreteScheduler.from_pretrained(str(config_dir), subfolder="scheduler")

    out.mkdir(parents=True, exist_ok=True)
    tokenizers = []
    for name, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        if (config_dir / name).is_dir():
            tokenizers.append(CLIPTokenizer.from_pretrained(str(config_dir / name)))
        else:
            byte_level_tokenizer(out / name, pad)
            tokenizers.append(CLIPTokenizer.from_pretrained(str(out / name)))
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1],
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )
    pipe.to(dtype=getattr(torch, dtype_name))
    pipe.to("cpu")  # safetensors writes from host memory
    pipe.save_pretrained(str(out), safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):
        (out / name / "tokenizer.json").unlink(missing_ok=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where the random weights are drawn (cuda: seconds for full size)")
    args = parser.parse_args()
    started = time.perf_counter()
    out = build_sdxl(args.size, args.out, args.dtype, args.seed, args.device)
    size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
    print(f"wrote {args.size} random-weight SDXL to {out} ({size_mb:.1f} MB) in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
