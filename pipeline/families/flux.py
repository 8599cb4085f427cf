"""FLUX.1 (dev and schnell): a transformer, CLIP and T5, XLabs' IP-Adapter, bitsandbytes on small GPUs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from hardware.backend import Backend
from pipeline.families.base import Family
from pipeline.models import LoadedModel, WeightsSource


class FluxFamily(Family):
    def load(self, source: WeightsSource, backend: Backend, stream: Optional[Any] = None) -> LoadedModel:
        from pipeline.loading.flux import load_flux

        return load_flux(source, backend, self, stream=stream)

    def load_ip_adapter(self, pipe: Any, folder: Path, weight_file: Path, image_encoder: str) -> None:
        pipe.load_ip_adapter(str(weight_file.parent), weight_name=weight_file.name,
                             image_encoder_pretrained_model_name_or_path=image_encoder,
                             image_encoder_dtype=pipe.transformer.dtype, local_files_only=True)

    def embed_reference(self, pipe: Any, image: Any) -> Any:
        (positive,) = pipe.prepare_ip_adapter_image_embeds(image, None, pipe.device, 1)
        return positive

    def ip_adapter_kwargs(self, embeds: Any, batch: int, guidance: bool) -> dict[str, Any]:
        import torch

        # Flux repeats the embedding per image itself. Without an explicit negative it would encode a
        # black image on every call, although the negative only counts with true CFG.
        return {"ip_adapter_image_embeds": [embeds], "negative_ip_adapter_image_embeds": [torch.zeros_like(embeds)]}


FLUX = FluxFamily(name="flux", denoiser_name="transformer", lora_components=("transformer", "text_encoder"),
                  ip_adapter_setting="FLUX_IP_ADAPTER_WEIGHTS",
                  quantized={"transformer": "flux_quantization", "text_encoder_2": "t5_quantization"},
                  # every Linear layer of the double and single blocks, where nearly all FLOPs are; the
                  # embedders and the output projection stay bf16
                  fp8_scope=r"^(transformer_blocks|single_transformer_blocks)\.\d+\.", cfg_batch=False,
                  # plain diffusers' 26.6 GB peak for one 1024x1024 image without T5 on an H100
                  # (../shared/ENVIRONMENT.md), less the transformer's 23.8 GB and the VAE's 0.2 GB
                  activation_bytes_1mp=int((26.6 - 23.8 - 0.2) * 1e9))
