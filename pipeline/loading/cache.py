"""The one place loaded models live. A model asked for again is returned, never loaded twice.

Models stay resident together while memory allows; when a new model needs room, the least
recently used ones are evicted (with everything built on them, such as their inpaint pipeline),
and the log says so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Optional, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


EVICT_WAIT_S = 600.0  # longest wait for a running request before its model is evicted under it


class ModelCache:
    """Loaded objects keyed by id (a model is ``family:path``; things built on it embed that id)."""

    def __init__(self) -> None:
        self._models: "OrderedDict[str, Any]" = OrderedDict()  # least recently used first
        self._sizes: dict[str, int] = {}
        self._lock = threading.RLock()  # guards the tables above, never held during a load
        self._loading: dict[str, threading.Lock] = {}  # one per id: a load blocks only its own id
        self._reserved = 0  # bytes of sized loads in progress (two loads at once must not both fit the same room)

    def get_or_load(self, model_id: str, load: Callable[[], T], size_bytes: int | Callable[[], int] = 0,
                    free: Optional[Callable[[], int]] = None) -> T:
        """Return the cached object for ``model_id``, calling ``load`` only the first time.

        Check, sizing, making room (when ``free`` is given: least recently used entries are evicted
        until ``size_bytes`` fit) and loading happen under the id's own lock, so concurrent callers
        for the same id size, evict and load once between them; callers for other ids do not wait
        (a background warm-up of an optional part never holds up the request path). ``size_bytes``
        may be a function: it is called only when the object must load.
        """
        with self._lock:
            if model_id in self._models:
                self._models.move_to_end(model_id)
                log.info("model %s already loaded; reusing it", model_id)
                return self._models[model_id]
            loading = self._loading.setdefault(model_id, threading.Lock())
        with loading:
            with self._lock:
                if model_id in self._models:  # loaded by whoever held the lock before us
                    self._models.move_to_end(model_id)
                    return self._models[model_id]
            size = size_bytes() if callable(size_bytes) else size_bytes
            reserved = 0
            if free is not None:
                self._make_room(size, free, keep=model_id, reserve=True)
                reserved = size
            started = time.perf_counter()
            try:
                model = load()
            finally:
                with self._lock:
                    self._reserved -= reserved
            with self._lock:
                self._models[model_id] = model
                self._sizes[model_id] = size
                self._loading.pop(model_id, None)
            log.info("model %s loaded in %.2f s", model_id, time.perf_counter() - started)
            return model

    def __contains__(self, model_id: str) -> bool:
        with self._lock:
            return model_id in self._models

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def entries(self) -> list[tuple[str, Any]]:
        with self._lock:
            return list(self._models.items())

    def resident_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    def evict(self, model_id: str) -> list[str]:
        """Drop ``model_id`` and every entry built on it; return what was dropped."""
        with self._lock:
            dropped = [key for key in self._models if key == model_id or key.endswith(f":{model_id}")]
            for key in dropped:
                del self._models[key]
                self._sizes.pop(key, None)
            return dropped

    def make_room(self, needed: int, free: Callable[[], int], keep: str) -> None:
        """Evict least recently used models until ``needed`` bytes fit in ``free()``.

        Only entries loaded with a size (whole models) are candidates; ``keep`` never is, and one no
        request holds goes before one that is held. A held one (``Holders``: predictions run
        concurrently) is dropped once no other thread holds it, since only then is its memory free;
        after ``EVICT_WAIT_S`` it is dropped anyway, logged, and its memory frees when they end.
        """
        self._make_room(needed, free, keep)

    def holds(self, model_id: str, entry: Any) -> bool:
        """Whether ``entry`` is still the cached object for ``model_id`` (not evicted meanwhile)."""
        with self._lock:
            return self._models.get(model_id) is entry

    def _make_room(self, needed: int, free: Callable[[], int], keep: str, reserve: bool = False) -> None:
        """``make_room``, counting the loads in progress as used; ``reserve``: count this one too
        until the caller's load ends (``get_or_load``)."""
        deadline: Optional[float] = None
        while True:
            with self._lock:
                fits = needed + self._reserved <= free()
                victims = [k for k in self._models if k != keep and self._sizes.get(k)]
                if fits or not victims:
                    if not fits:
                        log.warning("model %s needs %.1f GB, %.1f GB free, nothing left to evict", keep, needed / 1e9,
                                    free() / 1e9)
                    if reserve:
                        self._reserved += needed
                    return
                idle = [k for k in victims if _holders(self._models[k]) is None or _holders(self._models[k]).idle()]
                victim = (idle or victims)[0]
                holders = _holders(self._models[victim])
                late = deadline is not None and time.monotonic() >= deadline
                dropped: list[str] = []
                if holders is None or holders.idle() or late:  # checked and dropped under the cache's lock
                    if late:
                        log.warning("model %s still in use after %.0f s; evicting it anyway", victim, EVICT_WAIT_S)
                    dropped, deadline = self.evict(victim), None
                elif deadline is None:
                    deadline = time.monotonic() + EVICT_WAIT_S
            if dropped:
                log.info("evicted %s (least recently used) to make room for %s", ", ".join(dropped), keep)
                release_memory()
            elif holders is not None and deadline is not None:
                holders.wait_idle(deadline - time.monotonic())


def _holders(entry: Any) -> Optional[Any]:
    return getattr(entry, "holders", None)


def release_memory() -> None:
    """Return freed tensors' memory to the device now, so the next load sees it as free."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


MODEL_CACHE = ModelCache()
