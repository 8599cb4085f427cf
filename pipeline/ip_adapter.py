"""Identity conditioning with IP-Adapter, loaded on first use and switched on per request.

diffusers' ``load_ip_adapter`` replaces the UNet's attention processors and adds an image
projection; a UNet left that way needs an image on every call. So after loading, both processor
sets are kept and swapped (``activate``/``deactivate``): a request without a reference image runs the
untouched UNet, with the same pixels and speed as a service that never loaded an adapter.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pipeline.model_cache import MODEL_CACHE
from pipeline.reference_image import ReferenceImage
from pipeline.loading import LoadedModel

log = logging.getLogger(__name__)

FOLDER_ENV = "IP_ADAPTER_WEIGHTS"
DEFAULT_FOLDER = "weights/ip-adapter"
VARIANT_ENV = "IP_ADAPTER_VARIANT"


@dataclass(frozen=True)
class Variant:
    """Where one published adapter lives in an h94/IP-Adapter style folder."""

    subfolder: str
    weight_name: str
    image_encoder_folder: str  # relative to the folder root when it has a "/", else to subfolder


# Preference order: the face-specific adapter keeps identity best; the plain one is the fallback.
VARIANTS: Mapping[str, Variant] = {
    "plus-face": Variant("sdxl_models", "ip-adapter-plus-face_sdxl_vit-h.safetensors", "models/image_encoder"),
    "plain": Variant("sdxl_models", "ip-adapter_sdxl.safetensors", "image_encoder"),
}
EMBEDS_CACHE_SIZE = 32


class IPAdapterUnavailable(RuntimeError):
    """No adapter weights where the operator said they would be."""


def adapter_folder() -> Path:
    return Path(os.environ.get(FOLDER_ENV, DEFAULT_FOLDER))


def choose_variant(folder: Path) -> str:
    """The operator's ``$IP_ADAPTER_VARIANT``, else the first variant whose file is present."""
    wanted = os.environ.get(VARIANT_ENV)
    names = [wanted] if wanted else list(VARIANTS)
    for name in names:
        variant = VARIANTS.get(name)
        if variant and (folder / variant.subfolder / variant.weight_name).is_file():
            return name
    expected = ", ".join(f"{v.subfolder}/{v.weight_name}" for k, v in VARIANTS.items() if k in names)
    raise IPAdapterUnavailable(f"no IP-Adapter weights in {folder}: expected {expected} (set ${FOLDER_ENV})")


@dataclass
class IPAdapter:
    """A loaded adapter bound to one pipeline, and the embeddings of reference images seen so far."""

    pipe: Any
    variant: str
    adapter_processors: dict
    plain_processors: dict
    projection: Any
    embeds: "OrderedDict[str, Any]" = field(default_factory=OrderedDict)

    # The projection is attached before its processors are set and detached before they are
    # restored: a Resampler's own attention layers count among the UNet's attention processors.
    def activate(self, scale: float) -> None:
        unet = self.pipe.unet
        unet.encoder_hid_proj = self.projection
        unet.config.encoder_hid_dim_type = "ip_image_proj"
        unet.set_attn_processor(dict(self.adapter_processors))
        self.pipe.set_ip_adapter_scale(scale)

    def deactivate(self) -> None:
        unet = self.pipe.unet
        unet.encoder_hid_proj = None
        unet.config.encoder_hid_dim_type = None
        unet.set_attn_processor(dict(self.plain_processors))

    def image_embeds(self, reference: ReferenceImage, batch: int, guidance: bool) -> list[Any]:
        """Embeddings for ``batch`` images; the image encoder runs once per distinct picture.

        Call while active: diffusers reads the attached projection to choose which encoder output
        (pooled embedding or hidden states) the adapter takes.
        """
        import torch

        cached = self.embeds.get(reference.content_hash)
        if cached is None:
            started = time.perf_counter()
            with torch.inference_mode():
                (both,) = self.pipe.prepare_ip_adapter_image_embeds(
                    reference.image, None, self.pipe.device, 1, True
                )
            cached = both.chunk(2)  # (negative, positive), one image each
            self.embeds[reference.content_hash] = cached
            if len(self.embeds) > EMBEDS_CACHE_SIZE:
                self.embeds.popitem(last=False)
            log.info("IP-Adapter: reference image embedded in %.3f s", time.perf_counter() - started)
        else:
            self.embeds.move_to_end(reference.content_hash)
            log.info("IP-Adapter: reference image embedding cache hit (%s)", reference.content_hash[:12])
        negative, positive = cached
        parts = [negative] * batch + [positive] * batch if guidance else [positive] * batch
        return [torch.cat(parts)]


def load_adapter(model: LoadedModel, folder: Path | None = None) -> IPAdapter:
    """Load the adapter and image encoder onto ``model`` once; later calls return the cached one."""
    folder = folder or adapter_folder()
    variant_name = choose_variant(folder)
    key = f"ip-adapter:{variant_name}:{folder.resolve()}:{model.source.model_id}"

    def build() -> IPAdapter:
        pipe = model.pipe
        unet = pipe.unet
        plain = dict(unet.attn_processors)
        variant = VARIANTS[variant_name]
        pipe.load_ip_adapter(
            str(folder),
            subfolder=variant.subfolder,
            weight_name=variant.weight_name,
            image_encoder_folder=variant.image_encoder_folder,
            local_files_only=True,
        )
        pipe.image_encoder.to(device=pipe.device, dtype=pipe.unet.dtype)
        adapter = IPAdapter(
            pipe=pipe,
            variant=variant_name,
            adapter_processors=dict(unet.attn_processors),
            plain_processors=plain,
            projection=unet.encoder_hid_proj,
        )
        adapter.deactivate()
        log.info("IP-Adapter %s loaded from %s", variant_name, folder)
        return adapter

    return MODEL_CACHE.get_or_load(key, build)
