"""How one fetch may behave: who gave the URL, how long and how large it may be, how parallel.

Weights default to 16 connections of 16 MB chunks (``WEIGHTS_FETCH_CONCURRENCY``, ``WEIGHTS_FETCH_CHUNK_MB``):
with 32, ``bench/bench_fetch.py`` downloaded faster but the service reached READY later on the 2-core
machine (docs/fetching.md). Callers' LoRAs and images use 4. A caller's URL (a LoRA, an image) is
fenced; the operator's weight URL is trusted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

MB = 1024 * 1024


@dataclass(frozen=True)
class FetchPolicy:
    field: str  # the input or setting the URL came from, named in every error
    trusted: bool = False  # the operator's own URL: any address; a caller's: global addresses only
    deadline_s: float = 60.0  # the whole download, every retry included
    max_bytes: Optional[int] = None  # on the wire
    max_unpacked: Optional[int] = None  # after gunzip and untar
    concurrency: int = 16  # the setting supplies the weights' default
    chunk_bytes: int = 16 * MB
    read_timeout_s: float = 30.0  # one silent connection is dropped and its chunk resumed after this
    attempts: int = 5  # per chunk
    max_redirects: int = 5

    def with_(self, **changes: object) -> "FetchPolicy":
        return replace(self, **changes)  # type: ignore[arg-type]
