"""Download weights once into a local cache: resumable, checksum-verified, tars unpacked.

Replicate's own SDXL and Flux predictors fetch a tar of weights at setup with ``pget``; this does
the same with the standard library so it works anywhere Python does. A download interrupted by a
restart resumes from the partial file with an HTTP Range request.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

CHUNK = 8 * 1024 * 1024
ATTEMPTS = 5
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


class FetchError(RuntimeError):
    """The weights at a URL could not be fetched or did not match their checksum."""


class TooLarge(FetchError):
    """The file at a URL is larger than the caller allows."""


def split_checksum(url: str) -> tuple[str, Optional[str]]:
    """``https://host/w.tar#sha256=abc`` -> (``https://host/w.tar``, ``abc``)."""
    base, _, fragment = url.partition("#")
    params = urllib.parse.parse_qs(fragment)
    sha = params.get("sha256", [None])[0]
    return base, (sha.lower() if sha else None)


def _cache_name(url: str) -> str:
    name = Path(urllib.parse.urlparse(url).path).name or "weights"
    return f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _copy_capped(response: Any, out: Any, written: int, max_bytes: Optional[int], url: str) -> None:
    while block := response.read(CHUNK):
        written += len(block)
        if max_bytes is not None and written > max_bytes:
            raise TooLarge(f"{url} is larger than {max_bytes} bytes")
        out.write(block)


def _download_once(url: str, part: Path, timeout: float, max_bytes: Optional[int] = None,
                   opener: Optional[urllib.request.OpenerDirector] = None) -> None:
    """Append the rest of ``url`` to ``part``; restarts from zero if the server ignores Range.
    More than ``max_bytes`` in all (announced or read) raises ``TooLarge``."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = (opener.open if opener else urllib.request.urlopen)(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing left to fetch: the part file is complete
            return
        raise
    with response:
        resumed = bool(offset) and response.status == 206
        if offset and not resumed:
            log.info("server ignored the range request; downloading %s from the start", url)
        length = response.headers.get("Content-Length")
        expected_size = (offset if resumed else 0) + int(length) if length is not None else None
        if max_bytes is not None and expected_size is not None and expected_size > max_bytes:
            raise TooLarge(f"{url} is {expected_size} bytes; at most {max_bytes} allowed")
        with part.open("ab" if resumed else "wb") as out:
            _copy_capped(response, out, offset if resumed else 0, max_bytes, url)
    # A dropped connection can look like a clean end of stream; only the byte count tells.
    if expected_size is not None and part.stat().st_size < expected_size:
        raise http.client.IncompleteRead(b"", expected_size - part.stat().st_size)


def _fetch_verified(url: str, expected: Optional[str], final: Path, timeout: float, max_bytes: Optional[int] = None,
                    opener: Optional[urllib.request.OpenerDirector] = None) -> None:
    """Download into a ``.part`` file with retries and resume, verify, then move into place."""
    part = final.with_name(final.name + ".part")
    started = time.perf_counter()
    for attempt in range(1, ATTEMPTS + 1):
        try:
            _download_once(url, part, timeout, max_bytes, opener)
            break
        except TooLarge:
            part.unlink(missing_ok=True)
            raise
        except urllib.error.HTTPError as error:
            if error.code < 500 or attempt == ATTEMPTS:  # a 404 does not get better by asking again
                part.unlink(missing_ok=True)
                raise FetchError(f"could not download {url}: HTTP {error.code} {error.reason}") from None
            log.warning("download of %s failed (HTTP %d); retrying (attempt %d)", url, error.code, attempt + 1)
            time.sleep(min(0.5 * attempt, 5.0))
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            if attempt == ATTEMPTS:
                raise FetchError(f"could not download weights from {url}: {error}") from error
            log.warning("download of %s interrupted (%s); resuming (attempt %d)", url, error, attempt + 1)
            time.sleep(min(0.5 * attempt, 5.0))
    if expected:
        actual = sha256_file(part)
        if actual != expected:
            part.unlink()
            raise FetchError(
                f"weights from {url} failed their checksum: expected sha256 {expected}, got {actual}"
            )
    size = part.stat().st_size
    part.replace(final)
    log.info("downloaded %s (%.1f MB) in %.2f s", url, size / 1e6, time.perf_counter() - started)


def fetch_to(url: str, final: Path, timeout: float, max_bytes: Optional[int] = None,
             opener: Optional[urllib.request.OpenerDirector] = None) -> None:
    """Fetch ``url`` (optionally ``#sha256=HEX``) to ``final``: resumable, retried, capped at ``max_bytes``."""
    plain_url, expected = split_checksum(url)
    _fetch_verified(plain_url, expected, final, timeout, max_bytes, opener)


def download(url: str, cache_dir: Path, timeout: float = 60.0) -> Path:
    """Fetch ``url`` (optionally ``#sha256=HEX``) into ``cache_dir`` once and return the local path.

    Tars are unpacked and the folder is returned. A finished download is never fetched again.
    """
    plain_url, expected = split_checksum(url)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / _cache_name(plain_url)
    is_tar = final.name.endswith(TAR_SUFFIXES)
    unpacked = final.with_name(final.name + ".d")
    if (unpacked if is_tar else final).exists():
        log.info("weights from %s already cached at %s", plain_url, unpacked if is_tar else final)
        return unpacked if is_tar else final

    if not final.exists():  # a verified file from an earlier run that died while unpacking is reused
        _fetch_verified(plain_url, expected, final, timeout)
    if not is_tar:
        return final
    staging = unpacked.with_name(unpacked.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(final) as archive:
        archive.extractall(staging, filter="data")
    entries = list(staging.iterdir())
    # A tar of one top-level folder (the usual `tar cf w.tar sdxl/`) unpacks to that folder.
    root = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
    root.replace(unpacked)
    shutil.rmtree(staging, ignore_errors=True)
    final.unlink()
    return unpacked
