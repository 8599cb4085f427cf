"""Load a model by name through the one model cache: the default at start-up, others on first use."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Optional, Sequence

from pipeline.fields import InputError
from pipeline.model_cache import MODEL_CACHE
from pipeline.models import MODELS, ModelSpec
from pipeline.speed import SpeedSettings, apply_at_load, speed_settings
from startup.backend import Backend
from startup.profiles import Profile
from startup.prefetch import weight_files
from startup.weights import WeightsSource, configured_weights, resolve_weights

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A pipeline ready to generate, plus what a request needs to reset it between calls."""

    family: str  # the preset family, which is the model's name
    pipe: Any
    base_scheduler_config: Mapping[str, Any]
    source: WeightsSource
    profile: Optional[Profile] = None  # the hardware profile it was loaded under
    speed: SpeedSettings = SpeedSettings()  # generation speed switches in force (pipeline.speed)
    graphs: Optional[Any] = None  # the denoiser's CUDA graphs (pipeline.cuda_graphs), when in use
    # Held by whatever runs or changes the pipeline (a request, an adapter or inpaint pipeline being
    # built on it, a background preload), so none of them sees another's half-swapped modules.
    # Taken before the cache's own per-entry locks, never after, so the order is always the same.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @property
    def spec(self) -> ModelSpec:
        return MODELS[self.source.model]


BUDGET_ENV = "MODEL_MEMORY_BUDGET_GB"


def free_bytes(backend: Backend) -> Callable[[], int]:
    """What a new model may use: free GPU memory on CUDA; elsewhere ``$MODEL_MEMORY_BUDGET_GB`` less
    what is resident (unlimited when unset: host memory is the operator's to size)."""
    budget = os.environ.get(BUDGET_ENV)
    if budget:
        return lambda: int(float(budget) * 1e9) - MODEL_CACHE.resident_bytes()
    if backend.device == "cuda":
        import torch

        return lambda: int(torch.cuda.mem_get_info()[0] * 0.9)
    return lambda: 1 << 62


def weight_bytes(source: WeightsSource) -> int:
    return sum(path.stat().st_size for path in weight_files(source.path))


def with_speedups(model: LoadedModel, backend: Backend) -> LoadedModel:
    """Apply the device's speed settings to a freshly loaded model. CUDA graphs only where the
    weights stay put as plain tensors: offloading moves them, fp8 storage re-casts them on every
    call and bitsandbytes' layers branch on the host, none of which a graph can replay."""
    settings = speed_settings(backend.device, pipeline_class=model.spec.pipeline_class)
    profile = model.profile or backend.settings
    plain = profile.offload == "none" and profile.flux_quantization == "none" and profile.t5_quantization == "none"
    if settings.cuda_graphs and not (plain and backend.device == "cuda"):
        settings = replace(settings, cuda_graphs=False)
    if settings.fp8_matmul:
        from pipeline.fp8_linear import fp8_matmul_supported

        if not (plain and fp8_matmul_supported(backend.device)):
            log.info("fp8 matmuls need a plain bf16 model on a GPU of compute capability 8.9+: off")
            settings = replace(settings, fp8_matmul=False)
    cache = None
    if settings.compile != "off":
        from pipeline.compile_cache import cache_path

        cache = cache_path(model.source.model, backend.device)
    apply_at_load(model.pipe, settings, compile_cache=cache)
    model.speed = settings
    if settings.cuda_graphs:
        from pipeline.cuda_graphs import graph_runner

        model.graphs = graph_runner(model.pipe)
    log.info("%s speed settings: %s", model.source.model, settings.describe())
    return model


def start_weight_stream(source: WeightsSource, backend: Backend, ready: Optional[Any] = None) -> Optional[Any]:
    """Start streaming ``source``'s model files onto the device now (the start-up chain does this
    before the imports, which the stream then overlaps); None where the loader will not use one."""
    from pipeline.component_build import start_stream
    from pipeline.memory import quantized_at_load

    if source.layout != "diffusers" or backend.settings.offload != "none":
        return None
    skip = quantized_at_load(backend.settings, MODELS[source.model].pipeline_class)
    return start_stream(source.path, backend.device, skip, ready)


def load_source(source: WeightsSource, backend: Backend, stream: Optional[Any] = None) -> LoadedModel:
    """Build the pipeline for a resolved source, once: a cached model is returned as it is. If memory
    is short, least recently used models are evicted first. ``stream``: this source's weight stream,
    already started (see ``start_weight_stream``); closed here if the model needed none of it.

    Sizing (a walk of its files), eviction and the load run under the cache's lock for this id, so
    concurrent requests for a model that is not loaded yet do each once between them."""

    def build() -> LoadedModel:
        if MODELS[source.model].pipeline_class == "FluxPipeline":
            from pipeline.flux_loader import load_flux

            model = load_flux(source, backend, stream=stream)
        else:
            from pipeline.sdxl_loader import load_sdxl

            model = load_sdxl(source, backend, stream=stream)
        return with_speedups(model, backend)

    model = MODEL_CACHE.get_or_load(source.model_id, build, size_bytes=lambda: weight_bytes(source), free=free_bytes(backend))
    if stream is not None:
        stream.close()  # a no-op when the build consumed it; frees it when the model was loaded already
    return model


def load_model(name: str, backend: Backend, explicit_weights: Optional[str] = None) -> LoadedModel:
    """Resolve model ``name``'s weights (fetching a URL once) and load it through the cache."""
    return load_source(resolve_weights(configured_weights(explicit_weights, name), model=name), backend)


def requested_model(requested: Optional[str], default: str, available: Sequence[str]) -> ModelSpec:
    """The spec of the request's model (the default when empty), or ``InputError`` naming the ones
    available here. Loads nothing: a request is refused before anything is loaded or evicted."""
    name = requested or default
    if name not in available:
        raise InputError("model", name, "available here: " + ", ".join(available))
    return MODELS[name]


def select_model(name: str, default: WeightsSource, backend: Backend) -> LoadedModel:
    """Model ``name`` (checked by ``requested_model``), loading it on first use."""
    if name == default.model:
        return load_source(default, backend)
    return load_model(name, backend)
