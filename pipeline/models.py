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
    # The threads of the requests using it, from selecting it to their end (a thread's own use never
    # holds up its own load of another model).
    _users: Counter = field(default_factory=Counter, repr=False, compare=False)
    _users_changed: threading.Condition = field(default_factory=threading.Condition, repr=False, compare=False)

    @contextlib.contextmanager
    def in_use(self) -> Iterator["LoadedModel"]:
        """A request's hold on the model: the cache evicts it only once no other request holds it."""
        me = threading.get_ident()
        with self._users_changed:
            self._users[me] += 1
        try:
            yield self
        finally:
            with self._users_changed:
                self._users[me] -= 1
                if not self._users[me]:
                    del self._users[me]
                self._users_changed.notify_all()

    def wait_unused(self, timeout: float) -> bool:
        """Until no thread but this one uses the model; False after ``timeout`` seconds."""
        me = threading.get_ident()
        with self._users_changed:
            return self._users_changed.wait_for(lambda: not set(self._users) - {me}, timeout)

    @property
    def spec(self) -> ModelSpec:
        return MODELS[self.source.model]
