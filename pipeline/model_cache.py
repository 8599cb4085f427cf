"""The one place loaded models live. A model asked for again is returned, never loaded twice."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class ModelCache:
    """Loaded models keyed by model id (family plus resolved weights path)."""

    def __init__(self) -> None:
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get_or_load(self, model_id: str, load: Callable[[], T]) -> T:
        """Return the cached model for ``model_id``, calling ``load`` only the first time."""
        with self._lock:
            if model_id in self._models:
                log.info("model %s already loaded; reusing it", model_id)
                return self._models[model_id]
            started = time.perf_counter()
            model = load()
            self._models[model_id] = model
            log.info("model %s loaded in %.2f s", model_id, time.perf_counter() - started)
            return model

    def __contains__(self, model_id: str) -> bool:
        return model_id in self._models

    def ids(self) -> list[str]:
        return list(self._models)

    def evict(self, model_id: str) -> None:
        """Drop a model so its memory can be reclaimed (used by tests and, later, LRU eviction)."""
        with self._lock:
            self._models.pop(model_id, None)


MODEL_CACHE = ModelCache()
