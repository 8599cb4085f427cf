"""Load a model by name through the one model cache: the default at start-up, others on first use."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterator, Optional

import settings
from hardware.backend import Backend
from hardware.memory import free_gpu_bytes
from pipeline.families import family_for
from pipeline.fast_path import fast_path_for
from pipeline.loading.cache import MODEL_CACHE
from pipeline.loading.component_build import weight_files
from pipeline.loading.weights import configured_weights, resolve_weights
from pipeline.models import LoadedModel, WeightsSource
from pipeline.speed.apply import apply_speedups
from pipeline.speed.settings import speed_for_model
from request.catalog import MODELS

log = logging.getLogger(__name__)


def free_bytes(backend: Backend) -> Callable[[], int]:
    """What a new model may use: free GPU memory on CUDA; elsewhere ``$MODEL_MEMORY_BUDGET_GB`` less
    what is resident (unlimited when unset: host memory is the operator's to size)."""
    budget = settings.get("MODEL_MEMORY_BUDGET_GB")
    if budget is not None:
        return lambda: int(budget * 1e9) - MODEL_CACHE.resident_bytes()
    if free_gpu_bytes(backend.device) is not None:
        return lambda: int((free_gpu_bytes(backend.device) or 0) * 0.9)
    return lambda: 1 << 62


def weight_bytes(source: WeightsSource) -> int:
    return sum(path.stat().st_size for path in weight_files(source.path))


def with_speedups(model: LoadedModel, backend: Backend) -> LoadedModel:
    """Apply the speed settings this model is eligible for (``speed_for_model``) right after its load;
    its go_fast path is only declared here (it builds in the background, ``pipeline.fast_path``)."""
    speed = speed_for_model(backend.device, model.spec.pipeline_class, model.profile or backend.settings)
    model.graphs = apply_speedups(model.pipe, speed)
    model.speed = speed
    model.fast = fast_path_for(model)
    log.info("%s speed settings: %s", model.source.model, speed.describe())
    return model


def start_weight_stream(source: WeightsSource, backend: Backend, ready: Optional[Any] = None) -> Optional[Any]:
    """Start streaming ``source``'s model files onto the device now (the start-up chain does this
    before the imports, which the stream then overlaps); None where the loader will not use one."""
    from pipeline.loading.component_build import start_stream

    if source.layout != "diffusers" or backend.settings.offload != "none":
        return None
    skip = family_for(MODELS[source.model]).quantized_at_load(backend.settings)
    return start_stream(source.path, backend.device, skip, ready)


def feed_remote_stream(remote: Any, model: str, backend: Backend, ready: Optional[Any] = None) -> Optional[Any]:
    """A weight stream that takes ``remote``'s files from memory as they arrive (see
    ``pipeline.loading.remote``); None where the loader will not stream (``FAST_LOAD=0``, offload).
    On the CPU the stream is used too: the bytes are in memory already, so no file is read back."""
    from pipeline.loading.stream import WeightStream

    if settings.get("FAST_LOAD") is False or backend.settings.offload != "none" or backend.device not in ("cuda", "cpu"):
        return None
    stream = WeightStream([], backend.device, ready=ready).start()
    remote.feed(stream, frozenset(family_for(MODELS[model]).quantized_at_load(backend.settings)))
    return stream


def load_source(source: WeightsSource, backend: Backend, stream: Optional[Any] = None) -> LoadedModel:
    """Build the pipeline for a resolved source, once: a cached model is returned as it is. If memory
    is short, least recently used models are evicted first. ``stream``: this source's weight stream,
    already started (see ``start_weight_stream``); closed here if the model needed none of it.

    Sizing (a walk of its files), eviction and the load run under the cache's lock for this id, so
    concurrent requests for a model that is not loaded yet do each once between them."""

    def build() -> LoadedModel:
        return with_speedups(family_for(MODELS[source.model]).load(source, backend, stream), backend)

    model = MODEL_CACHE.get_or_load(source.model_id, build, size_bytes=lambda: weight_bytes(source), free=free_bytes(backend))
    if stream is not None:
        stream.close()  # a no-op when the build consumed it; frees it when the model was loaded already
    return model


def load_model(name: str, backend: Backend, explicit_weights: Optional[str] = None) -> LoadedModel:
    """Resolve model ``name``'s weights (fetching a URL once) and load it through the cache."""
    return load_source(resolve_weights(configured_weights(explicit_weights, name), model=name), backend)


@contextlib.contextmanager
def model_in_use(name: str, default: WeightsSource, backend: Backend) -> Iterator[LoadedModel]:
    """``select_model``, held in use for the block (``LoadedModel.in_use``). A model evicted between
    its selection and the hold is selected again, so a request never runs on an evicted model."""
    while True:
        model = select_model(name, default, backend)
        with model.in_use():
            if MODEL_CACHE.holds(model.source.model_id, model):
                yield model
                return
        log.info("model %s was evicted as it was selected; selecting it again", model.source.model_id)


def select_model(name: str, default: WeightsSource, backend: Backend) -> LoadedModel:
    """Model ``name`` (checked by ``request.generation.requested_model``), loading it on first use."""
    if name == default.model:
        return load_source(default, backend)
    return load_model(name, backend)
