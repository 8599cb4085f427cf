"""The service loads a single-file SDXL checkpoint in Stability's original (LDM) layout, offline.

Real fine-tunes arrive as one ``.safetensors`` file in the ``sd_xl_base_1.0`` key layout. We cannot ship
one, so the test writes one from the tiny random-weight diffusers folder, loads it through the service's
own loader, and checks every tensor came back exactly. An exact comparison is needed because diffusers
skips checkpoint keys it cannot place without an error and leaves those parameters on the meta device.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hardware.backend import Backend
from pipeline.loading.sdxl import load_sdxl
from pipeline.loading.weights import resolve_weights
from tests.fixtures.ldm_checkpoint import CLIP_L_PREFIX, OPEN_CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, diffusers_to_ldm_sdxl

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
CPU = Backend(device="cpu", dtype_name="float32", tf32=False, bitsandbytes="-")


def test_single_file_checkpoint_loads_exactly_through_the_service_loader(tiny_weights: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLPipeline
    from diffusers.loaders.single_file_utils import is_clip_sdxl_model, is_open_clip_sdxl_model
    from safetensors import safe_open

    file = diffusers_to_ldm_sdxl(tiny_weights, tmp_path / "sdxl-tiny-ldm.safetensors")
    with safe_open(str(file), "pt") as handle:
        keys = set(handle.keys())
    prefixes = (UNET_PREFIX, VAE_PREFIX, CLIP_L_PREFIX, OPEN_CLIP_PREFIX)
    assert all(key.startswith(prefixes) for key in keys)
    assert is_clip_sdxl_model(keys) and is_open_clip_sdxl_model(keys), "diffusers must see both SDXL encoders"

    source = resolve_weights(str(file))
    assert source.layout == "single_file"
    # Real checkpoints use the shipped pipeline/configs/sdxl; the tiny one needs its own configs.
    single = load_sdxl(source, CPU, single_file_config=tiny_weights).pipe
    reference = StableDiffusionXLPipeline.from_pretrained(str(tiny_weights), dtype=torch.float32)
    for name in COMPONENTS:
        got = getattr(single, name).state_dict()
        want = getattr(reference, name).state_dict()
        assert got.keys() == want.keys(), name
        for key, tensor in want.items():
            assert got[key].device.type != "meta", f"{name}.{key} was not filled from the checkpoint"
            assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor), f"{name}.{key} differs"


def test_shipped_sdxl_config_has_everything_a_single_file_load_needs() -> None:
    """from_single_file(config=...) takes configs, tokenizers and scheduler from this folder only."""
    from transformers import CLIPTokenizer

    from pipeline.loading.sdxl import SHIPPED_CONFIG

    for name in ("unet/config.json", "vae/config.json", "text_encoder/config.json",
                 "text_encoder_2/config.json", "scheduler/scheduler_config.json", "model_index.json"):
        assert (SHIPPED_CONFIG / name).is_file(), name
    ids = CLIPTokenizer.from_pretrained(str(SHIPPED_CONFIG / "tokenizer"))("a photo of an astronaut riding a horse").input_ids
    assert ids == [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 49407]  # CLIP ViT-L/14's own ids
    assert CLIPTokenizer.from_pretrained(str(SHIPPED_CONFIG / "tokenizer_2")).pad_token == "!"
