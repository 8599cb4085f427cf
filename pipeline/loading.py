"""Load a model by name through the one model cache: the default at start-up, others on first use."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
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
    already started (see ``start_weight_stream``)."""
    size = 0
    if source.model_id in MODEL_CACHE and stream is not None:
        stream.close()  # already loaded: the streamed copy is not needed
    if source.model_id not in MODEL_CACHE:  # sized (a walk of its files) only when it must load
        size = weight_bytes(source)
        MODEL_CACHE.make_room(size, free_bytes(backend), keep=source.model_id)

    def build() -> LoadedModel:
        if MODELS[source.model].pipeline_class == "FluxPipeline":
            from pipeline.flux_loader import load_flux

            model = load_flux(source, backend, stream=stream)
        else:
            from pipeline.sdxl_loader import load_sdxl

            model = load_sdxl(source, backend, stream=stream)
        return with_speedups(model, backend)

    return MODEL_CACHE.get_or_load(source.model_id, build, size_bytes=size)


def load_model(name: str, backend: Backend, explicit_weights: Optional[str] = None) -> LoadedModel:
    """Resolve model ``name``'s weights (fetching a URL once) and load it through the cache."""
    return load_source(resolve_weights(configured_weights(explicit_weights, name), model=name), backend)


def select_model(requested: Optional[str], default: WeightsSource, available: Sequence[str], backend: Backend) -> LoadedModel:
    """The request's model (the default when empty), loading it on first use; an unavailable one is
    refused with the list of those that are."""
    name = requested or default.model
    if name == default.model:
        return load_source(default, backend)
    if name not in available:
        raise InputError("model", name, "available here: " + ", ".join(available))
    return load_model(name, backend)
