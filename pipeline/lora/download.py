"""Fetch a caller's LoRA URL into the on-disk LoRA cache, through the one fenced fetcher.

The URL comes from a request, so ``netfetch`` fences it: http and https only, every address it
resolves to (and every redirect's) must be global, and the connection goes to the address that
was checked (``LORA_ALLOW_PRIVATE_URLS=1`` lifts the address rule, for tests and private
deployments). ``LORA_TIMEOUT_S`` is the whole download's deadline, ``LORA_MAX_MB`` caps it on the
wire and unpacked. A pickle is refused from its first bytes; a tar (Replicate's trainers ship
``lora.safetensors`` in one) is unpacked as it arrives and must hold exactly one ``.safetensors``.

The cache (``LORA_CACHE``) keeps one complete entry per URL with its content hash, and evicts the
least recently used beyond ``LORA_CACHE_MB``, leftovers of dead downloads included. The content
hash names the adapter, so the same file under two URLs is loaded once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import settings
from netfetch import FetchError, FetchPolicy, cache
from netfetch.policy import MB

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraFile:
    url: str
    path: Path  # a .safetensors file (a tar's member already taken out)
    sha256: str
    cached: bool  # found in the cache, not downloaded
    seconds: float


class NotOneSafetensors(FetchError):
    """A tar that does not hold exactly one ``.safetensors`` file."""


def policy(field: str) -> FetchPolicy:
    limit = int(settings.get("LORA_MAX_MB") * MB)
    return FetchPolicy(field=field, trusted=bool(settings.get("LORA_ALLOW_PRIVATE_URLS")),
                       deadline_s=float(settings.get("LORA_TIMEOUT_S")), max_bytes=limit, max_unpacked=limit,
                       concurrency=4)


def fetch(url: str, field: str = "lora_weights") -> LoraFile:
    """The cached file for ``url``, downloading it on a miss. Raises a ``FetchError`` naming ``field``."""
    started = time.perf_counter()
    folder = Path(settings.get("LORA_CACHE"))
    entry = cache.fetch(url, folder, policy(field), hash_content=True)
    path = entry.path
    if path.is_dir():
        members = sorted(path.rglob("*.safetensors"))
        if len(members) != 1:
            cache.remove(folder, cache.entry_key(url))
            raise NotOneSafetensors(f"{field}: a tar with {len(members)} .safetensors files; it must hold exactly one")
        path = members[0]
    cache.evict_beyond(folder, int(settings.get("LORA_CACHE_MB") * MB), keep=entry.path)
    return LoraFile(url, path, entry.sha256 or "", entry.cached, time.perf_counter() - started)


def forget(url: str) -> None:
    """Drop ``url``'s cache entry (a file that failed its check after the download)."""
    cache.remove(Path(settings.get("LORA_CACHE")), cache.entry_key(url))


__all__ = ["FetchError", "LoraFile", "fetch", "forget"]
