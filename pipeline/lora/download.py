"""Fetch a caller's LoRA URL safely into the on-disk LoRA cache.

The URL comes from a request, so the fetch is fenced: http and https only, and not to loopback,
private, link-local or reserved addresses (``LORA_ALLOW_PRIVATE_URLS=1`` lifts that, for tests and
private deployments); every redirect is checked the same way, and one to another scheme is refused.
The size is capped (``LORA_MAX_MB``) from the announced length and again while reading. Time-outs,
retries and resuming a broken download with a Range request are the weight fetcher's
(``pipeline.loading.fetch``), which start-up uses for weight URLs.

The cache (``LORA_CACHE``) keeps one file per URL with its content hash beside it, and evicts the
least recently used files beyond ``LORA_CACHE_MB``. The content hash names the adapter, so the same
file under two URLs is loaded once.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import socket
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import settings
from pipeline.loading.fetch import FetchError, TooLarge, fetch_to, sha256_file

log = logging.getLogger(__name__)


class UnsafeURL(ValueError):
    """The URL may not be fetched; the message says why."""


@dataclass(frozen=True)
class LoraFile:
    url: str
    path: Path  # a .safetensors file (a tar's member already taken out)
    sha256: str
    cached: bool  # found in the cache, not downloaded
    seconds: float


def check_url(url: str) -> None:
    """Refuse anything but http(s) to a public address (unless private addresses are allowed)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UnsafeURL(f"only http and https URLs are fetched, not {parsed.scheme or 'this'}")
    if settings.get("LORA_ALLOW_PRIVATE_URLS"):
        return
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(parsed.hostname, parsed.port or 443)}
    except socket.gaierror as error:
        raise UnsafeURL(f"host {parsed.hostname} not found ({error.strerror})") from None
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast or ip.is_unspecified:
            raise UnsafeURL(f"{parsed.hostname} is a private address ({ip}); set LORA_ALLOW_PRIVATE_URLS=1 to allow")


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Every redirect target passes ``check_url`` too (a public URL must not bounce to a private one)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_CheckedRedirects)


def _entry(url: str) -> Path:
    return Path(settings.get("LORA_CACHE")) / hashlib.sha256(url.encode()).hexdigest()[:24]


def fetch(url: str) -> LoraFile:
    """The cached file for ``url``, downloading it on a miss. Raises UnsafeURL, TooLarge or FetchError."""
    started = time.perf_counter()
    check_url(url)
    entry = _entry(url)
    data, meta = entry.with_suffix(".bin"), entry.with_suffix(".json")
    if data.exists() and meta.exists():
        record = json.loads(meta.read_text())
        data.touch()  # least recently used goes first
        return LoraFile(url, data, record["sha256"], True, time.perf_counter() - started)
    data.parent.mkdir(parents=True, exist_ok=True)
    max_bytes = int(settings.get("LORA_MAX_MB") * 1024 * 1024)
    fetch_to(url, data, timeout=float(settings.get("LORA_TIMEOUT_S")), max_bytes=max_bytes, opener=opener())
    sha = sha256_file(data)
    meta.write_text(json.dumps({"url": url, "sha256": sha, "bytes": data.stat().st_size}))
    evict_beyond(int(settings.get("LORA_CACHE_MB") * 1024 * 1024), keep=data)
    return LoraFile(url, data, sha, False, time.perf_counter() - started)


def evict_beyond(limit: int, keep: Path) -> list[Path]:
    """Delete the least recently used cached files until the cache holds at most ``limit`` bytes."""
    folder = keep.parent
    files = sorted(folder.glob("*.bin"), key=lambda p: p.stat().st_mtime)
    total = sum(p.stat().st_size for p in files)
    evicted = []
    for path in files:
        if total <= limit:
            break
        if path == keep:
            continue
        total -= path.stat().st_size
        path.unlink()
        path.with_suffix(".json").unlink(missing_ok=True)
        evicted.append(path)
        log.info("LoRA cache: evicted %s (least recently used) to stay within LORA_CACHE_MB", path.name)
    return evicted


__all__ = ["FetchError", "LoraFile", "TooLarge", "UnsafeURL", "check_url", "evict_beyond", "fetch"]
