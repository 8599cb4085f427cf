"""A model as the pipeline holds it: where its checked weights are (``WeightsSource``) and, once
loaded, the diffusers pipeline with what a request needs to reset it between calls and the lock
whatever runs or changes it holds (``LoadedModel``). ``request.catalog`` has the models as data
(names, classes, capabilities)."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from hardware.profiles import Profile
from pipeline.speed.settings import SpeedSettings
from request.catalog import MODELS, ModelSpec


class Holders:
    """The threads of the requests holding something the model cache may evict (a model, from its
    selection to the request's end). With predictions concurrent, evicting it under them would free
    no memory until they end, so the cache waits until no thread but its own holds it."""

    def __init__(self) -> None:
        self._threads: Counter[int] = Counter()
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._changed:
            self._threads[me] += 1
        try:
            yield
        finally:
            with self._changed:
                self._threads[me] -= 1
                if not self._threads[me]:
                    del self._threads[me]
                self._changed.notify_all()

    def idle(self) -> bool:
        """No thread but the calling one holds it."""
        with self._changed:
            return not set(self._threads) - {threading.get_ident()}

    def wait_idle(self, timeout: float) -> bool:
        """Until ``idle``; False after ``timeout`` seconds."""
        me = threading.get_ident()
        with self._changed:
            return self._changed.wait_for(lambda: not set(self._threads) - {me}, max(0.0, timeout))


@dataclass(frozen=True)
class WeightsSource:
    """A local, checked weights location and its layout."""

    path: Path
    layout: str  # "diffusers" or "single_file"
    origin: str  # what the operator configured
    model: str = "sdxl"  # a name in request.catalog.MODELS

    @property
    def model_id(self) -> str:
        return f"{self.model}:{self.path.resolve()}"


@dataclass
class LoadedModel:
    """A pipeline ready to generate, plus what a request needs to reset it between calls."""

    pipe: Any
    base_scheduler_config: Mapping[str, Any]
    source: WeightsSource
    profile: Optional[Profile] = None  # the hardware profile it was loaded under
    speed: SpeedSettings = SpeedSettings()  # generation speed switches in force (pipeline.speed.settings)
    graphs: Optional[Any] = None  # the denoiser's CUDA graphs (pipeline.speed.cuda_graphs), when in use
    fast: Optional[Any] = None  # the go_fast denoiser beside the exact one (pipeline.fast_path.FastPath), if any
    coalescer: Optional[Any] = None  # its forming batches of concurrent requests (pipeline.coalesce), once used
    # LoRA adapters loaded on the pipeline, least recently used first (name -> URL), and those switched on
    # for the request running now (pipeline.lora.adapters); none is on between requests
    loras: "OrderedDict[str, str]" = field(default_factory=OrderedDict, repr=False, compare=False)
    active_loras: tuple[str, ...] = ()
    # Held by whatever runs or changes the pipeline (a request, an adapter or inpaint pipeline being
    # built on it, a background preload), so none of them sees another's half-swapped modules.
    # Taken before the cache's own per-entry locks, never after, so the order is always the same.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    holders: "Holders" = field(default_factory=lambda: Holders(), repr=False, compare=False)

    @contextlib.contextmanager
    def in_use(self) -> Iterator["LoadedModel"]:
        """A request's hold on the model, from selecting it to the request's end."""
        with self.holders.held():
            yield self

    @property
    def spec(self) -> ModelSpec:
        return MODELS[self.source.model]
