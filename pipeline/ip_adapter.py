"""Identity conditioning with IP-Adapter (SDXL: h94's adapters; Flux: XLabs'), loaded on first use
and switched on per request.

diffusers' ``load_ip_adapter`` replaces the denoiser's attention processors and adds an image
projection; a denoiser left that way needs an image on every call (or spends time on a zero one).
So after loading, both processor sets are kept and swapped (``activate``/``deactivate``): a request
without a reference image runs the untouched model, with the same pixels and speed as a service
that never loaded an adapter.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import settings
from pipeline.families import Family, family_for
from pipeline.loading.cache import MODEL_CACHE
from pipeline.models import LoadedModel
from request.reference_image import ReferenceImage

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Variant:
    """Where one published adapter and its image encoder live, relative to the adapter folder."""

    family: str
    weight_file: str
    image_encoder: str


# Per family in preference order: the face-specific adapter keeps identity best.
VARIANTS: Mapping[str, Variant] = {
    "plus-face": Variant("sdxl", "sdxl_models/ip-adapter-plus-face_sdxl_vit-h.safetensors", "models/image_encoder"),
    "plain": Variant("sdxl", "sdxl_models/ip-adapter_sdxl.safetensors", "sdxl_models/image_encoder"),
    "xlabs": Variant("flux", "ip_adapter.safetensors", "image_encoder"),
}
EMBEDS_CACHE_SIZE = 32


class IPAdapterUnavailable(RuntimeError):
    """No adapter weights where the operator said they would be."""


def adapter_folder(family: Family) -> Path:
    return settings.get(family.ip_adapter_setting)


def choose_variant(folder: Path, family: Family) -> str:
    """The operator's ``$IP_ADAPTER_VARIANT`` (if it is this family's), else the first present."""
    names = [name for name, variant in VARIANTS.items() if variant.family == family.name]
    wanted = settings.get("IP_ADAPTER_VARIANT")
    if wanted in names:
        names = [wanted]
    for name in names:
        if (folder / VARIANTS[name].weight_file).is_file():
            return name
    expected = ", ".join(VARIANTS[name].weight_file for name in names)
    raise IPAdapterUnavailable(f"no IP-Adapter weights in {folder}: expected {expected} (set ${family.ip_adapter_setting})")


@dataclass
class IPAdapter:
    """A loaded adapter bound to one pipeline, and the embeddings of reference images seen so far."""

    pipe: Any
    family: Family
    variant: str
    adapter_processors: dict
    plain_processors: dict
    projection: Any
    embeds: "OrderedDict[str, Any]" = field(default_factory=OrderedDict)

    @property
    def denoiser(self) -> Any:
        return self.family.denoiser(self.pipe)

    # The projection is attached before its processors are set and detached before they are
    # restored: a Resampler's own attention layers count among the UNet's attention processors.
    # set_attn_processor empties the dict it is given, hence the copies.
    def activate(self, scale: float) -> None:
        denoiser = self.denoiser
        denoiser.encoder_hid_proj = self.projection
        denoiser.config.encoder_hid_dim_type = "ip_image_proj"
        denoiser.set_attn_processor(dict(self.adapter_processors))
        self.pipe.set_ip_adapter_scale(scale)

    def deactivate(self) -> None:
        denoiser = self.denoiser
        denoiser.encoder_hid_proj = None
        denoiser.config.encoder_hid_dim_type = None
        denoiser.set_attn_processor(dict(self.plain_processors))

    def _embed(self, reference: ReferenceImage) -> Any:
        """The image encoder's output for one picture, in the family's form."""
        import torch

        with torch.inference_mode():
            return self.family.embed_reference(self.pipe, reference.image)

    def pipeline_kwargs(self, reference: ReferenceImage, batch: int, guidance: bool) -> dict[str, Any]:
        """What the pipeline call needs for ``batch`` images; the encoder runs once per distinct picture.

        Call while active: diffusers reads the attached projection to choose which encoder output
        (pooled embedding or hidden states) the adapter takes.
        """

        cached = self.embeds.get(reference.content_hash)
        if cached is None:
            started = time.perf_counter()
            cached = self._embed(reference)
            self.embeds[reference.content_hash] = cached
            if len(self.embeds) > EMBEDS_CACHE_SIZE:
                self.embeds.popitem(last=False)
            log.info("IP-Adapter: reference image embedded in %.3f s", time.perf_counter() - started)
        else:
            self.embeds.move_to_end(reference.content_hash)
            log.info("IP-Adapter: reference image embedding cache hit (%s)", reference.content_hash[:12])
        return self.family.ip_adapter_kwargs(cached, batch, guidance)


def load_adapter(model: LoadedModel, folder: Path | None = None) -> IPAdapter:
    """Load the adapter and image encoder onto ``model`` once; later calls return the cached one."""
    family = family_for(model.spec)
    folder = folder or adapter_folder(family)
    variant_name = choose_variant(folder, family)
    key = f"ip-adapter:{variant_name}:{folder.resolve()}:{model.source.model_id}"

    def build() -> IPAdapter:
        pipe = model.pipe
        denoiser = family.denoiser(pipe)
        plain = dict(denoiser.attn_processors)
        variant = VARIANTS[variant_name]
        family.load_ip_adapter(pipe, folder, folder / variant.weight_file, str(folder / variant.image_encoder))
        pipe.image_encoder.to(device=pipe.device, dtype=denoiser.dtype)
        adapter = IPAdapter(
            pipe=pipe,
            family=family,
            variant=variant_name,
            adapter_processors=dict(denoiser.attn_processors),
            plain_processors=plain,
            projection=denoiser.encoder_hid_proj,
        )
        adapter.deactivate()
        log.info("IP-Adapter %s loaded from %s", variant_name, folder)
        return adapter

    with model.lock:  # it swaps the denoiser's processors: never under a running request
        return MODEL_CACHE.get_or_load(key, build)


@dataclass(frozen=True)
class Identity:
    """The identity a request asked for: an adapter and a reference picture, or none at all."""

    adapter: Optional[IPAdapter] = None
    reference: Optional[ReferenceImage] = None
    guidance: bool = False  # classifier-free guidance on: SDXL's adapter then takes a negative embedding too

    @contextlib.contextmanager
    def active(self, scale: float) -> Iterator["Identity"]:
        """The adapter's processors swapped in for the block (nothing happens without an adapter),
        the model's own ones back after it, whatever happens inside."""
        if self.adapter is None:
            yield self
            return
        self.adapter.activate(scale)
        try:
            yield self
        finally:
            self.adapter.deactivate()

    def pipeline_kwargs(self, batch: int) -> dict[str, Any]:
        """What a pipeline call for ``batch`` images needs; call inside ``active``."""
        if self.adapter is None or self.reference is None:
            return {}
        return self.adapter.pipeline_kwargs(self.reference, batch, self.guidance)


NO_IDENTITY = Identity()


def identity_for(model: LoadedModel, reference: Optional[ReferenceImage], scale: float, guidance: bool) -> Identity:
    """The identity for a request: the model's adapter (loaded on first use) and the reference, or
    none when there is no reference or its scale is 0."""
    if reference is None:
        return NO_IDENTITY
    if scale <= 0:
        log.info("ip_adapter_scale is 0: face_image not used")
        return NO_IDENTITY
    adapter = load_adapter(model)
    log.info("IP-Adapter %s: identity from face_image at scale %s", adapter.variant, scale)
    return Identity(adapter, reference, guidance)
