"""Stable Diffusion XL: a UNet, two CLIP text encoders, h94's IP-Adapter, kohya's SDXL LoRA names."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from hardware.backend import Backend
from pipeline.families.base import Family
from pipeline.models import LoadedModel, WeightsSource


class SDXLFamily(Family):
    def load(self, source: WeightsSource, backend: Backend, stream: Optional[Any] = None) -> LoadedModel:
        from pipeline.loading.sdxl import load_sdxl

        return load_sdxl(source, backend, stream=stream)

    def lora_options(self, pipe: Any) -> dict[str, Any]:
        return {"unet_config": pipe.unet.config}  # maps kohya's SDXL block names through the UNet's config

    def load_ip_adapter(self, pipe: Any, folder: Path, weight_file: Path, image_encoder: str) -> None:
        pipe.load_ip_adapter(str(folder), subfolder=str(weight_file.parent.relative_to(folder)),
                             weight_name=weight_file.name, image_encoder_folder=image_encoder, local_files_only=True)

    def embed_reference(self, pipe: Any, image: Any) -> Any:
        (both,) = pipe.prepare_ip_adapter_image_embeds(image, None, pipe.device, 1, True)
        return both.chunk(2)  # (negative, positive)

    def ip_adapter_kwargs(self, embeds: Any, batch: int, guidance: bool) -> dict[str, Any]:
        import torch

        negative, positive = embeds
        parts = [negative] * batch + [positive] * batch if guidance else [positive] * batch
        return {"ip_adapter_image_embeds": [torch.cat(parts)]}


# Activation memory of one SDXL image at 1024x1024 with guidance, fp16: plain diffusers' measured
# 12.4 GB peak for one image (bench_results/gpu/2026-11-26-h200/sdxl.md, H200) less the 6.9 GB of
# weights; the higher of the two peaks measured there, to stay on the safe side. Scales with pixels.
SDXL_ACTIVATION_BYTES_1MP = int((12.4 - 6.9) * 1e9)

SDXL = SDXLFamily(name="sdxl", denoiser_name="unet", lora_components=("unet", "text_encoder", "text_encoder_2"),
                  ip_adapter_setting="IP_ADAPTER_WEIGHTS", quantized={},
                  # the attention and feed-forward layers of every transformer block (the UNet's convolutions stay bf16)
                  fp8_scope=r"\.transformer_blocks\.\d+\.(attn1|attn2|ff)\.", cfg_batch=True,
                  activation_bytes_1mp=SDXL_ACTIVATION_BYTES_1MP)
