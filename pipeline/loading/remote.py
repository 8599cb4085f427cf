"""The operator's weights given as a URL: fetched through ``netfetch`` into ``$WEIGHTS_CACHE``.

At start-up the default model's download begins in the prefetch stage, before torch is imported,
and runs through the backend and imports stages. Each ``.safetensors`` member of a diffusers tar
is handed to the weight stream from memory the moment its last byte is in, so its copy to the
device overlaps the rest of the download; nothing is built from those tensors until the whole
download is proven complete (length, the tar's end, every header, the sha256 when given) and
committed to the cache. A cache hit loads from disk like any local folder.

The URL may be a tar of a diffusers folder (``.tar``, ``.tar.gz``), a single ``.safetensors``
checkpoint, or a pget-style manifest (a path ending ``.manifest``: ``URL relative/path`` per line).
"""

from __future__ import annotations

import logging
import mmap
import re
import threading
import time
from pathlib import Path
from typing import Any, Optional

import settings
from netfetch import FetchError, FetchPolicy, cache
from netfetch.policy import MB

log = logging.getLogger(__name__)

# The files a diffusers or transformers loader reads without a variant (see component_build.model_components)
LOADED_FILE = re.compile(r"^(diffusion_pytorch_model|model)(-\d+-of-\d+)?\.safetensors$")


def is_url(setting: str) -> bool:
    return setting.startswith(("http://", "https://"))


def weights_policy(field: str) -> FetchPolicy:
    """The operator's URL: trusted (any address), parallel, within ``$WEIGHTS_FETCH_TIMEOUT_S``."""
    for name in ("WEIGHTS_FETCH_CONCURRENCY", "WEIGHTS_FETCH_CHUNK_MB"):
        if settings.get(name) <= 0:
            raise settings.SettingError(f"${name}={settings.get(name)}: must be above 0")
    return FetchPolicy(
        field=field, trusted=True,
        deadline_s=float(settings.get("WEIGHTS_FETCH_TIMEOUT_S")),
        max_bytes=int(settings.get("WEIGHTS_MAX_GB") * 1e9),
        max_unpacked=int(settings.get("WEIGHTS_MAX_GB") * 1e9),
        concurrency=int(settings.get("WEIGHTS_FETCH_CONCURRENCY")),
        chunk_bytes=int(settings.get("WEIGHTS_FETCH_CHUNK_MB") * MB),
    )


def fetch_weights(url: str, field: str, on_file: Optional[Any] = None) -> cache.Entry:
    """The complete cache entry for a weights URL (fetched once); ``FetchError`` names ``field``."""
    cache_dir = Path(settings.get("WEIGHTS_CACHE"))
    policy = weights_policy(field)
    if cache.split_checksum(url)[0].endswith(".manifest"):
        return cache.fetch_manifest(url, cache_dir, policy, on_file)
    return cache.fetch(url, cache_dir, policy, on_file, refuse_pickles=False)


class RemoteWeights:
    """The default model's weights URL, fetched on a thread from the start of setup."""

    def __init__(self, url: str, field: str) -> None:
        self.url = url
        self.field = field
        self.entry: Optional[cache.Entry] = None
        self.error: Optional[BaseException] = None
        self.started = time.perf_counter()
        self._lock = threading.Lock()
        self._arrived: list[tuple[str, mmap.mmap]] = []
        self._stream: Optional[Any] = None
        self._skip: frozenset[str] = frozenset()
        self._thread = threading.Thread(target=self._run, name="weights-fetch", daemon=True)

    def start(self) -> "RemoteWeights":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.entry = fetch_weights(self.url, self.field, self._on_file)
        except BaseException as error:  # raised in the load stage, where setup reports it
            self.error = error

    def _wanted(self, name: str) -> bool:
        parts = Path(name).parts
        return LOADED_FILE.match(parts[-1]) is not None and len(parts) >= 2 and parts[-2] not in self._skip

    def _on_file(self, name: str, buffer: Optional[mmap.mmap]) -> None:
        if buffer is None:
            return
        with self._lock:
            self._arrived.append((name, buffer))
            stream = self._stream
        if stream is not None and self._wanted(name):
            stream.arrive(buffer, name)

    def feed(self, stream: Any, skip: frozenset[str]) -> None:
        """Hand ``stream`` every weight file already in, and each one that arrives from now on
        (the files of the ``skip`` components are loaded another way)."""
        with self._lock:
            self._stream, self._skip = stream, skip
            arrived = list(self._arrived)
        for name, buffer in arrived:
            if self._wanted(name):
                stream.arrive(buffer, name)

    def wait(self) -> cache.Entry:
        """The complete entry (blocks until then); the fetch's error, if it failed."""
        self._thread.join()
        if self.error is not None:
            raise self.error
        assert self.entry is not None
        if self._stream is not None:
            self._stream.bind(self.entry.maps)
        log.info("weights %s: %s %.1f MB; ready %.2f s after setup began", self.field,
                 "cache hit," if self.entry.cached else "downloaded", self.entry.bytes / 1e6,
                 time.perf_counter() - self.started)
        return self.entry


__all__ = ["FetchError", "RemoteWeights", "fetch_weights", "is_url", "weights_policy"]
