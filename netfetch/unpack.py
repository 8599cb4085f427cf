"""Consumers of a download's bytes, fed in order: each proves at ``finish`` that what arrived is whole.

- ``TarStream`` unpacks a tar as it arrives (members checked by ``tarfile.data_filter``), so a
  member is complete the moment its last byte is in; the archive must end with its end-of-archive
  blocks. ``.safetensors`` members land in a shared memory mapping of their file, which the weight
  stream reads the tensors from, and every one's header must account for its exact size.
- ``Gunzip`` decompresses in bounded steps in front of it, with the unpacked size capped.
- ``FileSink`` writes one file; ``MemorySink`` keeps small bodies (images) in memory.
- ``AutoSink`` looks at the first bytes and picks: gzip, tar, or one file. A pickle is refused at
  once, before the rest is fetched.

The tar headers are parsed with ``tarfile.TarInfo.frombuf`` and checked with ``tarfile.data_filter``;
the stream itself is walked here, so each arriving chunk is written straight to its member
(``tarfile``'s stream mode reads from a file object through its own buffers: measured slower,
docs/fetching.md).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Callable, Optional

from netfetch.errors import FetchError, Incomplete, TooLarge

BLOCK = 512
GZIP_STEP = 16 * 1024 * 1024
OnFile = Callable[[str, Optional[mmap.mmap]], None]  # (path relative to the root, its mapping or None)


def safetensors_extent(head: bytes | memoryview | mmap.mmap) -> Optional[int]:
    """The exact size a safetensors file must have, from its header; None if ``head`` is not one."""
    if len(head) < 8:
        return None
    (length,) = struct.unpack("<Q", head[:8])
    if length > 100 * 1024 * 1024 or len(head) < 8 + length:
        return None
    try:
        header = json.loads(bytes(head[8:8 + length]))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (ValueError, TypeError, KeyError, AttributeError, IndexError):
        return None
    return 8 + length + max(ends, default=0)


def check_safetensors_bytes(name: str, head: bytes | memoryview | mmap.mmap, size: int, field: str) -> None:
    needed = safetensors_extent(head)
    if needed is None:
        raise Incomplete(f"{field}: {name} is not a readable .safetensors file")
    if needed != size:
        raise Incomplete(f"{field}: {name} has {size} bytes but its header accounts for {needed}")


def _pax_records(data: bytes, field: str) -> dict[str, str]:
    """A pax extended header's ``"%d %s=%s\n"`` records; a malformed one is refused naming ``field``."""
    records, position = {}, 0
    try:
        while position < len(data) and data[position:position + 1] != b"\0":
            space = data.index(b" ", position)
            length = int(data[position:space])
            if not space - position < length <= len(data) - position or data[position + length - 1:position + length] != b"\n":
                raise ValueError(f"record length {length} at byte {position}")
            key, _, value = data[space + 1:position + length - 1].partition(b"=")
            records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
            position += length
    except ValueError as error:
        raise FetchError(f"{field}: a malformed tar extended header ({error})") from None
    return records


class _Member:
    """One regular file being written; ``.safetensors`` into a shared mapping of the file."""

    def __init__(self, path: Path, size: int, mapped: bool) -> None:
        self.path, self.size, self.written = path, size, 0
        # a new file, never one already there or behind a link: no member can rewrite another
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        self.map: Optional[mmap.mmap] = None
        if mapped and size > 0:
            os.ftruncate(self.fd, size)
            self.map = mmap.mmap(self.fd, size)

    def write(self, data: memoryview) -> None:
        if self.map is not None:
            self.map[self.written:self.written + len(data)] = data
        else:
            view = data
            while view:
                view = view[os.write(self.fd, view):]
        self.written += len(data)

    def close(self) -> None:
        os.close(self.fd)


class TarStream:
    def __init__(self, root: Path, field: str, max_unpacked: Optional[int] = None, on_file: Optional[OnFile] = None,
                 map_safetensors: bool = True) -> None:
        self.root = root
        self.field = field
        self.max_unpacked = max_unpacked
        self.on_file = on_file
        self.map_safetensors = map_safetensors
        self.unpacked = 0
        self.files: dict[str, int] = {}  # relative path -> size, regular files only
        self._folders: set[str] = set()
        self.maps: dict[str, mmap.mmap] = {}
        self._pending: bytearray = bytearray()  # a header block or a pax / long-name body being collected
        self._need = BLOCK
        self._collecting: Optional[str] = None  # "x", "g", "L", "K" while collecting that body
        self._overrides: dict[str, str] = {}
        self._member: Optional[_Member] = None
        self._remaining = 0
        self._skip = 0
        self._zeros = 0
        self.ended = False
        root.mkdir(parents=True, exist_ok=True)

    def feed(self, data: memoryview) -> None:
        position = 0
        while position < len(data):
            if self._member is not None:
                take = min(self._remaining, len(data) - position)
                self._member.write(data[position:position + take])
                position += take
                self._remaining -= take
                if self._remaining == 0:
                    self._close_member()
            elif self._skip:
                take = min(self._skip, len(data) - position)
                position += take
                self._skip -= take
            elif self.ended:
                return  # the zero padding after the end-of-archive blocks
            else:
                take = min(self._need - len(self._pending), len(data) - position)
                self._pending += data[position:position + take]
                position += take
                if len(self._pending) == self._need:
                    pending, self._pending = bytes(self._pending), bytearray()
                    if self._collecting is None:
                        self._header(pending)
                    else:
                        self._collected(pending)

    def _header(self, block: bytes) -> None:
        if block == bytes(BLOCK):
            self._zeros += 1
            self.ended = self._zeros == 2
            return
        self._zeros = 0
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as error:
            raise FetchError(f"{self.field}: not a valid tar archive ({error})") from None
        if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                         tarfile.GNUTYPE_LONGLINK):
            if info.size > 1024 * 1024:
                raise FetchError(f"{self.field}: a tar extended header of {info.size} bytes")
            self._collecting = info.type.decode()
            self._need = -(-info.size // BLOCK) * BLOCK or BLOCK
            self._collect_size = info.size
            if info.size == 0:
                self._collecting, self._need = None, BLOCK
            return
        self._member_header(info)

    def _collected(self, data: bytes) -> None:
        body = data[:self._collect_size]
        kind, self._collecting, self._need = self._collecting, None, BLOCK
        if kind in ("x", "X"):
            self._overrides.update(_pax_records(body, self.field))
        elif kind == "L":
            self._overrides["path"] = body.rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif kind == "K":
            self._overrides["linkpath"] = body.rstrip(b"\0").decode("utf-8", "surrogateescape")
        # "g" (global pax headers) carries nothing a weights folder needs

    def _member_header(self, info: tarfile.TarInfo) -> None:
        overrides, self._overrides = self._overrides, {}
        if "path" in overrides:
            info.name = overrides["path"]
        if "linkpath" in overrides:
            info.linkname = overrides["linkpath"]
        if "size" in overrides:
            info.size = int(overrides["size"])
        if info.type == tarfile.GNUTYPE_SPARSE or "GNU.sparse.size" in overrides:
            raise FetchError(f"{self.field}: tar member {info.name!r} is a sparse file, which is not unpacked")
        try:
            info = tarfile.data_filter(info, str(self.root))
        except tarfile.FilterError as error:
            raise FetchError(f"{self.field}: tar member refused: {error}") from None
        name = os.path.normpath(info.name)
        target = self.root / name
        if info.issym() or info.islnk():
            # Weights and LoRAs need no links, and links are how a tar reaches outside its folder or
            # rewrites a member already checked (CVE-2025-4517 in data_filter before Python 3.11.13).
            raise FetchError(f"{self.field}: tar member {info.name!r} is a link; archive the files themselves "
                             "(tar -h follows links)")
        if name in self.files or (info.isreg() and name in self._folders):
            raise FetchError(f"{self.field}: tar member {info.name!r} appears twice")
        if not info.isreg():
            self._skip = -(-info.size // BLOCK) * BLOCK  # a folder carries no data, as a rule
        if info.isdir():
            self._folders.add(name)
            target.mkdir(parents=True, exist_ok=True)
        elif info.isreg():
            self.unpacked += info.size
            if self.max_unpacked is not None and self.unpacked > self.max_unpacked:
                raise TooLarge(f"{self.field}: unpacks to more than {self.max_unpacked} bytes")
            target.parent.mkdir(parents=True, exist_ok=True)
            self._member = _Member(target, info.size, self.map_safetensors and name.endswith(".safetensors"))
            self._member_name = name
            self._remaining = info.size
            self._padding = (-info.size) % BLOCK
            if info.size == 0:
                self._close_member()
        else:
            raise FetchError(f"{self.field}: tar member {info.name!r} is not a file or folder")

    def _close_member(self) -> None:
        member, self._member = self._member, None
        assert member is not None
        name = self._member_name
        if member.map is not None:
            check_safetensors_bytes(name, member.map, member.size, self.field)
            self.maps[name] = member.map
        member.close()
        self.files[name] = member.size
        self._skip = self._padding
        if self.on_file is not None:
            self.on_file(name, member.map)

    def close(self) -> None:
        """Let go of the file being written (a download that failed part-way)."""
        if self._member is not None:
            self._member.close()
            self._member = None

    def finish(self) -> None:
        if self._member is not None or not self.ended:
            raise Incomplete(f"{self.field}: the tar ends before its end-of-archive blocks (truncated)")
        for name in self.files:
            if name.endswith(".safetensors") and name not in self.maps:
                path = self.root / name
                with path.open("rb") as handle:
                    check_safetensors_bytes(name, handle.read(8 + min(100 * 1024 * 1024, path.stat().st_size)),
                                            path.stat().st_size, self.field)


class Gunzip:
    """gzip in front of another consumer, the unpacked size capped (a bomb is refused by name)."""

    def __init__(self, inner, field: str, max_unpacked: Optional[int]) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.field, self.max_unpacked = inner, field, max_unpacked
        self._z = zlib.decompressobj(wbits=31)
        self.unpacked = 0

    def feed(self, data: memoryview) -> None:
        pending = bytes(data)
        while pending:
            try:
                out = self._z.decompress(pending, GZIP_STEP)
            except zlib.error as error:
                raise FetchError(f"{self.field}: not valid gzip data ({error})") from None
            self._emit(out)
            pending = self._z.unconsumed_tail
            if self._z.eof and self._z.unused_data:  # a second gzip member follows
                pending = self._z.unused_data
                self._z = zlib.decompressobj(wbits=31)

    def _emit(self, out: bytes) -> None:
        if out:
            self.unpacked += len(out)
            if self.max_unpacked is not None and self.unpacked > self.max_unpacked:
                raise TooLarge(f"{self.field}: decompresses to more than {self.max_unpacked} bytes")
            self.inner.feed(memoryview(out))

    def finish(self) -> None:
        if not self._z.eof:
            raise Incomplete(f"{self.field}: the gzip stream ends early (truncated)")
        self.inner.finish()


class FileSink:
    """One file. A safetensors file must be exactly the size its header accounts for; anything
    else is accepted only when the server announced its length (the downloader checks that)."""

    def __init__(self, path: Path, field: str, max_bytes: Optional[int] = None) -> None:
        self.path, self.field, self.max_bytes = path, field, max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("wb")
        self._head = b""
        self.size = 0
        self.length_known = True  # a ranged download knows its size; one stream may not (announced())

    def announced(self, length: Optional[int]) -> None:
        self.length_known = length is not None

    def feed(self, data: memoryview) -> None:
        self.size += len(data)
        if self.max_bytes is not None and self.size > self.max_bytes:
            raise TooLarge(f"{self.field}: more than {self.max_bytes} bytes")
        if len(self._head) < 9:
            self._head += bytes(data[:9 - len(self._head)])
        self._handle.write(data)

    def finish(self) -> None:
        self._handle.close()
        if len(self._head) < 9 or self._head[8:9] != b"{":  # not a safetensors file: its length is its only proof
            if not self.length_known:
                raise Incomplete(f"{self.field}: {self.path.name}: the server announced no length and the file is not "
                                 "one whose end can be checked (safetensors or tar)")
            return
        (length,) = struct.unpack("<Q", self._head[:8])
        with self.path.open("rb") as handle:  # just written: the header is in the page cache
            head = handle.read(8 + min(length, 100 * 1024 * 1024))
        check_safetensors_bytes(self.path.name, head, self.size, self.field)

    def close(self) -> None:
        self._handle.close()


class MemorySink:
    """A small body kept in memory (an image input), capped."""

    def __init__(self, field: str, max_bytes: int) -> None:
        self.field, self.max_bytes = field, max_bytes
        self.data = bytearray()

    def feed(self, data: memoryview) -> None:
        if len(self.data) + len(data) > self.max_bytes:
            raise TooLarge(f"{self.field}: larger than {self.max_bytes} bytes")
        self.data += data

    def finish(self) -> None:
        pass


PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")


class AutoSink:
    """Decide from the first bytes: gzip -> gunzip + tar; tar -> unpack into ``root``; otherwise one
    file at ``file_path``. ``kind`` says which, once known."""

    def __init__(self, root: Path, file_path: Path, field: str, max_unpacked: Optional[int] = None,
                 on_file: Optional[OnFile] = None, refuse_pickles: bool = True) -> None:
        self.root, self.file_path, self.field = root, file_path, field
        self.max_unpacked, self.on_file, self.refuse_pickles = max_unpacked, on_file, refuse_pickles
        self._head = bytearray()
        self.inner = None
        self.tar: Optional[TarStream] = None
        self.kind: Optional[str] = None
        self.sha256 = hashlib.sha256()
        self.hashing = True
        self._announced: Optional[int] = None
        self._length_known = True

    def announced(self, length: Optional[int]) -> None:
        self._announced, self._length_known = length, length is not None

    def _choose(self) -> None:
        head = bytes(self._head)
        # safetensors starts with its header's length (any first byte, 0x80 included) and then "{"
        if self.refuse_pickles and head.startswith(PICKLE_MAGIC) and head[8:9] != b"{":
            raise FetchError(f"{self.field}: a pickle (a PyTorch .pt/.ckpt file), which is never loaded: "
                             "only .safetensors")
        if head[:2] == b"\x1f\x8b":
            self.tar = TarStream(self.root, self.field, self.max_unpacked, self.on_file)
            self.inner, self.kind = Gunzip(self.tar, self.field, self.max_unpacked), "tar"
        elif head[257:262] == b"ustar":
            self.tar = TarStream(self.root, self.field, self.max_unpacked, self.on_file)
            self.inner, self.kind = self.tar, "tar"
        else:
            self.inner, self.kind = FileSink(self.file_path, self.field, self.max_unpacked), "file"
            self.inner.length_known = self._length_known

    def feed(self, data: memoryview) -> None:
        if self.hashing:
            self.sha256.update(data)
        if self.inner is None:
            self._head += data
            if len(self._head) < BLOCK:
                return
            self._choose()
            head, self._head = self._head, bytearray()
            self.inner.feed(memoryview(head))  # type: ignore[union-attr]
            return
        self.inner.feed(data)

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
        if isinstance(self.inner, FileSink):
            self.inner.close()

    def finish(self) -> None:
        if self.inner is None:
            if not self._head:
                raise Incomplete(f"{self.field}: the download is empty")
            self._choose()
            self.inner.feed(memoryview(bytes(self._head)))  # type: ignore[union-attr]
        self.inner.finish()  # type: ignore[union-attr]
