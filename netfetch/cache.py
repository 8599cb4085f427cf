"""Cache entries that exist only when complete: staged, proven whole, then renamed into place.

An entry for a URL is ``<key>-<name>`` (a folder for a tar, a file otherwise) with a record
``<key>.json`` beside it listing every file and its size. A hit needs the record and every file at
its recorded size, so an entry cut short afterwards (a full disk, a hand edit) is fetched again,
and nothing is ever unpacked twice. Entries are written under an exclusive lock per key; a start
that takes the lock removes whatever a dead process left staged (``.staging-<key>-*``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import mmap
import os
import shutil
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from netfetch.errors import Incomplete, TooSlow
from netfetch.policy import FetchPolicy
from netfetch.ranged import Transfer, download
from netfetch.unpack import AutoSink, FileSink, OnFile

log = logging.getLogger(__name__)

VERSION = "v2"


def split_checksum(url: str) -> tuple[str, Optional[str]]:
    """``https://host/w.tar#sha256=abc`` -> (``https://host/w.tar``, ``abc``)."""
    base, _, fragment = url.partition("#")
    sha = urllib.parse.parse_qs(fragment).get("sha256", [None])[0]
    return base, (sha.lower() if sha else None)


def entry_key(url: str) -> str:
    return f"{VERSION}-{hashlib.sha256(url.encode()).hexdigest()[:20]}"


@dataclass
class Entry:
    """A complete cache entry: ``path`` is a folder (from a tar) or a file."""

    path: Path
    sha256: Optional[str]
    bytes: int  # on the wire
    cached: bool  # found, not fetched now
    transfer: Optional[Transfer] = None
    maps: dict[Path, mmap.mmap] = field(default_factory=dict)  # safetensors files still mapped from the fetch


def _record_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"{key}.json"


def _files_of(root: Path) -> dict[str, int]:
    if root.is_file():
        return {"": root.stat().st_size}
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def lookup(cache_dir: Path, url: str) -> Optional[Entry]:
    """The complete entry for ``url``, or None (an entry that fails its record is removed)."""
    key = entry_key(url)
    record_path = _record_path(cache_dir, key)
    try:
        record = json.loads(record_path.read_text())
        path = cache_dir / record["name"]
        files = record["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        intact = _files_of(path) == files
    except OSError:
        intact = False
    if not intact:
        log.warning("cache entry %s does not match its record; fetching again", path)
        remove(cache_dir, key)
        return None
    os.utime(record_path)  # least recently used goes first
    return Entry(path, record.get("sha256"), record.get("bytes", 0), True)


def remove(cache_dir: Path, key: str) -> None:
    record_path = _record_path(cache_dir, key)
    try:
        name = json.loads(record_path.read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        name = None
    record_path.unlink(missing_ok=True)
    for path in [cache_dir / name] if name else []:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


@contextmanager
def locked(cache_dir: Path, key: str) -> Iterator[None]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _clear_staging(cache_dir: Path, key: str) -> None:
    for stale in cache_dir.glob(f".staging-{key}-*"):
        log.info("removing %s, left by a download that did not finish", stale.name)
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def _hit_or_clear(cache_dir: Path, url: str, key: str) -> Optional[Entry]:
    """Under the key's lock: the complete entry, or None with whatever was left for the key removed."""
    found = lookup(cache_dir, url)
    if found is None:
        remove(cache_dir, key)
        _clear_staging(cache_dir, key)
    return found


def _display_name(url: str) -> str:
    name = Path(urllib.parse.urlsplit(url).path).name or "download"
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)] or "download"
    return name


def fetch(url: str, cache_dir: Path, policy: FetchPolicy, on_file: Optional[OnFile] = None,
          refuse_pickles: bool = True, hash_content: bool = False) -> Entry:
    """The complete entry for ``url`` (``#sha256=HEX`` checked when given): from the cache, or
    downloaded, proven whole and renamed into place. The content's sha256 is computed when checked
    or when ``hash_content`` asks for it. Raises a ``FetchError`` naming ``policy.field``."""
    plain, expected = split_checksum(url)
    key = entry_key(url)
    with locked(cache_dir, key):
        found = _hit_or_clear(cache_dir, url, key)
        if found is not None:
            return found
        staging = cache_dir / f".staging-{key}-{os.getpid()}"
        sink = AutoSink(staging / "root", staging / "file", policy.field, policy.max_unpacked, on_file, refuse_pickles)
        sink.hashing = bool(expected) or hash_content
        try:
            transfer = download(plain, policy, sink)
            sha = sink.sha256.hexdigest() if sink.hashing else None
            if expected and sha != expected:
                raise Incomplete(f"{policy.field}: {plain.split('?')[0]} failed its checksum: expected sha256 {expected}, "
                                 f"got {sha}")
            content = staging / "file" if sink.kind == "file" else _content_root(staging / "root")
            maps = {}
            if sink.tar is not None:
                base = content.relative_to(staging / "root")
                maps = {Path(rel).relative_to(base): m for rel, m in sink.tar.maps.items() if Path(rel).is_relative_to(base)}
            final, maps = _commit(cache_dir, key, content, f"{key}-{_display_name(plain)}", plain, sha, transfer.bytes, maps)
        finally:
            sink.close()
            shutil.rmtree(staging, ignore_errors=True)
        log.info("%s: %.1f MB in %.2f s (%.0f MB/s, %d connections%s, %d retries) -> %s", policy.field,
                 transfer.bytes / 1e6, transfer.seconds, transfer.bytes / 1e6 / max(transfer.seconds, 1e-9),
                 transfer.connections, ", ranged" if transfer.ranged else ", one stream", transfer.retries, final)
        return Entry(final, sha, transfer.bytes, False, transfer, maps)


def _commit(cache_dir: Path, key: str, content: Path, name: str, url: str, sha: Optional[str], size: int,
            maps: dict[Path, mmap.mmap]) -> tuple[Path, dict[Path, mmap.mmap]]:
    """Rename ``content`` into place as entry ``name``, then write its record (the hit condition)."""
    final = cache_dir / name
    files = _files_of(content)
    if final.is_dir() and not final.is_symlink():  # an earlier start died between this rename and its record
        shutil.rmtree(final)
    elif final.exists() or final.is_symlink():
        final.unlink()
    os.replace(content, final)
    record = {"url": url.split("?")[0], "name": name, "sha256": sha, "bytes": size, "files": files, "fetched": time.time()}
    tmp = _record_path(cache_dir, key).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, _record_path(cache_dir, key))
    return final, {final / rel: m for rel, m in maps.items()}


def fetch_manifest(url: str, cache_dir: Path, policy: FetchPolicy, on_file: Optional[OnFile] = None) -> Entry:
    """A folder from a pget-style manifest at ``url`` (each line ``URL relative/path``): the files
    fetched four at a time, each in parallel ranges, the entry committed only when all are whole."""
    from concurrent.futures import ThreadPoolExecutor

    from netfetch.inputs import fetch_bytes
    from netfetch.manifest import parse_manifest

    plain, expected = split_checksum(url)
    key = entry_key(url)
    with locked(cache_dir, key):
        found = _hit_or_clear(cache_dir, url, key)
        if found is not None:
            return found
        started, end = time.perf_counter(), time.monotonic() + policy.deadline_s
        text = fetch_bytes(plain, policy.with_(max_bytes=1024 * 1024))
        if expected and hashlib.sha256(text).hexdigest() != expected:
            raise Incomplete(f"{policy.field}: the manifest failed its checksum")
        lines = parse_manifest(text.decode("utf-8", "replace"), policy.field)
        staging = cache_dir / f".staging-{key}-{os.getpid()}"
        root = staging / "root"
        maps: dict[Path, mmap.mmap] = {}
        total = [0]

        def one(line) -> None:  # type: ignore[no-untyped-def]
            line_url, line_sha = split_checksum(line.url)
            target = root / line.path
            sink = FileSink(target, policy.field, policy.max_unpacked)
            digest = hashlib.sha256() if line_sha else None
            feed = sink.feed

            def hashed(data: memoryview) -> None:
                digest.update(data)  # type: ignore[union-attr]
                feed(data)

            if digest is not None:
                sink.feed = hashed  # type: ignore[method-assign]
            left = end - time.monotonic()  # one deadline for the whole manifest, every file within it
            if left <= 0:
                raise TooSlow(f"{policy.field}: {plain.split('?')[0]} not complete within its {policy.deadline_s:g} s deadline")
            try:
                moved = download(line_url, policy.with_(deadline_s=left), sink)
            finally:
                sink.close()
            if digest is not None and digest.hexdigest() != line_sha:
                raise Incomplete(f"{policy.field}: {line.path} failed its checksum")
            total[0] += moved.bytes
            mapped = None
            if line.path.endswith(".safetensors") and sink.size:
                with target.open("r+b") as handle:  # just written: the pages are in memory
                    mapped = mmap.mmap(handle.fileno(), 0)
                maps[Path(line.path)] = mapped
            if on_file is not None:
                on_file(line.path, mapped)

        try:
            root.mkdir(parents=True)
            with ThreadPoolExecutor(4, thread_name_prefix="fetch-file") as pool:
                futures = [pool.submit(one, line) for line in sorted(lines, key=lambda entry: entry.path)]
                try:
                    for future in futures:
                        future.result()
                except BaseException:
                    for future in futures:  # the first failure ends the manifest: files not begun never start
                        future.cancel()
                    raise
            final, maps = _commit(cache_dir, key, root, f"{key}-{_display_name(plain)}", plain, None, total[0], maps)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        seconds = time.perf_counter() - started
        log.info("%s: %d files, %.1f MB in %.2f s (%.0f MB/s) -> %s", policy.field, len(lines), total[0] / 1e6, seconds,
                 total[0] / 1e6 / max(seconds, 1e-9), final)
        return Entry(final, None, total[0], False, None, maps)


def _content_root(root: Path) -> Path:
    """A tar of one top-level folder (the usual ``tar cf w.tar sdxl/``) is that folder."""
    entries = list(root.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink() else root


def usage(cache_dir: Path) -> int:
    """Bytes under ``cache_dir``, staged leftovers included."""
    return sum(p.stat().st_size for p in cache_dir.rglob("*") if p.is_file() and not p.is_symlink())


def evict_beyond(cache_dir: Path, limit: int, keep: Path) -> list[Path]:
    """Remove the least recently used entries (and leftovers of dead downloads) until ``cache_dir``
    holds at most ``limit`` bytes; ``keep`` (an entry's path) stays."""
    evicted: list[Path] = []
    for stale in cache_dir.glob(".staging-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
            evicted.append(stale)
    records = sorted(cache_dir.glob(f"{VERSION}-*.json"), key=lambda p: p.stat().st_mtime)
    total = usage(cache_dir)
    for record in records:
        if total <= limit:
            break
        try:
            name = json.loads(record.read_text())["name"]
        except (OSError, ValueError, KeyError):
            continue
        path = cache_dir / name
        if path == keep:
            continue
        size = sum(_files_of(path).values()) if path.exists() else 0
        remove(cache_dir, record.stem)
        total -= size
        evicted.append(path)
        log.info("cache %s: evicted %s (least recently used)", cache_dir, name)
    return evicted


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
