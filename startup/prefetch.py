"""Read the weight files into the page cache while the interpreter is busy importing libraries.

Importing torch and diffusers takes seconds of CPU; reading gigabytes of weights takes seconds of
disk. A thread that reads the files while the imports run overlaps the two (file reads release the
GIL), so the loader later finds the bytes in memory. Nothing here depends on the read finishing:
the loader reads the files itself either way, only faster.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pipeline.loading.component_build import weight_files

log = logging.getLogger(__name__)

CHUNK = 16 * 1024 * 1024


@dataclass
class Prefetch:
    """A background read of ``files``; ``join`` waits for it and reports what it did."""

    files: list[Path]
    bytes_read: int = 0
    seconds: float = 0.0
    error: Optional[str] = None
    _thread: threading.Thread = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name="weight-prefetch", daemon=True)

    def start(self) -> "Prefetch":
        self._thread.start()
        return self

    def _run(self) -> None:
        started = time.perf_counter()
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        try:
            for path in self.files:
                with path.open("rb", buffering=0) as handle:
                    while count := handle.readinto(view):
                        self.bytes_read += count
        except OSError as error:  # the loader will report missing or unreadable files properly
            self.error = f"{type(error).__name__}: {error}"
        self.seconds = time.perf_counter() - started

    def join(self, timeout: Optional[float] = None) -> None:
        self._thread.join(timeout)
        state = "still running" if self._thread.is_alive() else f"done in {self.seconds:.2f} s"
        log.info("weight prefetch: %.1f MB from %d files, %s%s", self.bytes_read / 1e6, len(self.files), state,
                 f" ({self.error})" if self.error else "")


def start_prefetch(setting: str) -> Optional[Prefetch]:
    """Start reading a local weights path now; URLs are fetched by the weights stage instead."""
    if setting.startswith(("http://", "https://")):
        return None
    files = weight_files(Path(setting).expanduser())
    return Prefetch(files).start() if files else None
