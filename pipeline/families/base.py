"""What differs between model families, asked of the family and decided nowhere else.

One module per family implements ``Family`` (the way vLLM keeps one class per model behind its
registry, and diffusers one pipeline class per model): how to load it, its denoiser, which
components a LoRA may target and which bitsandbytes quantizes at load, and how its IP-Adapter is
loaded and fed. The catalog (``request.catalog``) names each model's family; its speed switches are
data in ``pipeline/configs/speed.json``, keyed by the pipeline class the catalog gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from hardware.backend import Backend
from hardware.profiles import BITSANDBYTES_KINDS, Profile
from pipeline.models import LoadedModel, WeightsSource

MEMORY_HEADROOM = 0.8  # of free CUDA memory one batch's activations may take


@dataclass(frozen=True)
class Family:
    name: str  # what the catalog's ModelSpec.family says
    denoiser_name: str  # the pipeline attribute holding the denoiser: "unet", "transformer"
    lora_components: tuple[str, ...]  # the prefixes diffusers gives each component's LoRA keys
    ip_adapter_setting: str  # the setting that holds its IP-Adapter folder
    quantized: Mapping[str, str]  # component -> the profile setting that quantizes it while loading
    fp8_scope: str  # go_fast: a regular expression over the denoiser's module names, the Linear layers computed in fp8
    cfg_batch: bool  # classifier-free guidance above 1 runs the denoiser on a doubled batch
    activation_bytes_1mp: int  # peak memory one image at 1 megapixel adds above the weights (bounds a batch)

    def doubles_batch(self, guidance_scale: float) -> bool:
        return self.cfg_batch and guidance_scale > 1

    def images_that_fit(self, free_bytes: int, width: int, height: int) -> int:
        """How many images at this size one batch may denoise in ``free_bytes`` (at least one)."""
        per_image = self.activation_bytes_1mp * (width * height) / (1024 * 1024)
        return max(1, int(free_bytes * MEMORY_HEADROOM // per_image))

    def denoiser(self, pipe: Any) -> Any:
        return getattr(pipe, self.denoiser_name)

    def quantized_at_load(self, profile: Profile) -> set[str]:
        """The components bitsandbytes quantizes while loading (they load through the library itself)."""
        return {name for name, setting in self.quantized.items() if getattr(profile, setting) in BITSANDBYTES_KINDS}

    def load(self, source: WeightsSource, backend: Backend, stream: Optional[Any] = None) -> LoadedModel:
        raise NotImplementedError

    def lora_options(self, pipe: Any) -> dict[str, Any]:
        """Extra arguments to ``lora_state_dict`` for this family's files."""
        return {}

    def load_ip_adapter(self, pipe: Any, folder: Path, weight_file: Path, image_encoder: str) -> None:
        raise NotImplementedError

    def embed_reference(self, pipe: Any, image: Any) -> Any:
        """The image encoder's output for one picture, as ``ip_adapter_kwargs`` takes it."""
        raise NotImplementedError

    def ip_adapter_kwargs(self, embeds: Any, batch: int, guidance: bool) -> dict[str, Any]:
        """What a pipeline call for ``batch`` images needs from ``embed_reference``'s output."""
        raise NotImplementedError
