"""Stream safetensors files onto the device: reads and host-to-device copies overlapped, no mmap,
no random initialisation, no second host copy.

Why not ``safetensors.load_file(device="cuda")``: it copies tensor by tensor from pageable mmap'd
memory, so every copy waits for its page faults and goes through the driver's bounce buffer. Here a
few worker threads each ``pread`` a large chunk of the file into their own pinned buffer (file reads
release the GIL, so the workers read in parallel and alongside the imports) and copy it to the
destination tensors on their own CUDA stream, so one worker's disk read overlaps another's DMA
transfer. Destination tensors are allocated once, in the file's dtype; the model loader casts them
(the libraries' own dtype rules, e.g. T5's fp32 ``wo`` layers, then still apply).

On the CPU the same plan runs without the staging buffer: each worker reads straight into the
destination tensors' memory. It is off there by default (see ``pipeline.loading.component_build``): on the
CPU, safetensors' mmap needs no copy at all and is faster. Tests run both paths on the CPU.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import settings

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024 * 1024

# safetensors dtype tags -> torch dtype names
DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}


class StreamError(RuntimeError):
    """A file could not be streamed; the loader falls back to the library's own loading."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # torch dtype name
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


def _header(read: Callable[[int, int], bytes], size: int) -> tuple[dict[str, Any], int]:
    """The JSON header and data offset of a safetensors file of ``size`` bytes, read through
    ``read(offset, count)`` (format: u64 header length, JSON, data). ValueError when the file cannot
    hold what it claims."""
    raw = read(0, 8)
    if len(raw) != 8:
        raise ValueError(f"too short for a safetensors header ({size} bytes)")
    (length,) = struct.unpack("<Q", raw)
    if length > size - 8:
        raise ValueError(f"header length {length} exceeds file size {size}")
    return json.loads(read(8, length)), 8 + length


def safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's JSON header and the offset its tensor data starts at."""
    with path.open("rb") as handle:
        return _header(lambda offset, count: os.pread(handle.fileno(), count, offset), os.fstat(handle.fileno()).st_size)


def buffer_header(buffer: Any) -> tuple[dict[str, Any], int]:
    """``safetensors_header`` for a file's bytes in memory (a mapping the fetcher filled)."""
    return _header(lambda offset, count: bytes(buffer[offset:offset + count]), len(buffer))


def read_header(path: Path, buffer: Optional[Any] = None) -> list[TensorEntry]:
    """The tensors in a safetensors file (or its bytes in ``buffer``), in file order, with absolute
    byte offsets."""
    try:
        header, data_start = safetensors_header(path) if buffer is None else buffer_header(buffer)
    except (ValueError, UnicodeDecodeError) as error:
        raise StreamError(f"{path}: {error}") from error
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in DTYPES:
            raise StreamError(f"{path}: tensor {name} has dtype {info['dtype']}, not streamable")
        begin, end = info["data_offsets"]
        entries.append(TensorEntry(name, DTYPES[info["dtype"]], tuple(info["shape"]), data_start + begin, data_start + end))
    entries.sort(key=lambda entry: entry.start)
    size = path.stat().st_size if buffer is None else len(buffer)
    if entries and entries[-1].end > size:
        raise StreamError(f"{path}: truncated (header says {entries[-1].end} bytes, file has {size})")
    return entries


@dataclass(frozen=True)
class Piece:
    """Bytes [start, end) of the file, which land at ``offset`` in ``tensor``'s bytes."""

    tensor: Any
    offset: int
    start: int
    end: int


def plan_chunks(entries: Iterable[TensorEntry], tensors: dict[str, Any], chunk_bytes: int) -> list[list[Piece]]:
    """Cut the file's data into chunks of about ``chunk_bytes``; a tensor may span chunks."""
    chunks: list[list[Piece]] = []
    current: list[Piece] = []
    used = 0
    for entry in entries:
        position = entry.start
        while position < entry.end:
            take = min(entry.end - position, chunk_bytes - used)
            current.append(Piece(tensors[entry.name], position - entry.start, position, position + take))
            position += take
            used += take
            if used >= chunk_bytes:
                chunks.append(current)
                current, used = [], 0
    if current:
        chunks.append(current)
    return chunks


def byte_view(tensor: Any) -> Any:
    """The tensor's storage as flat bytes (the tensors here are freshly allocated and contiguous)."""
    import torch

    return tensor.reshape(-1).view(torch.uint8)


def pread_into(fd: int, target: memoryview, offset: int) -> None:
    done = 0
    while done < len(target):
        count = os.preadv(fd, [target[done:]], offset + done)
        if count <= 0:
            raise StreamError(f"unexpected end of file at byte {offset + done}")
        done += count


class FileStream:
    """One file's tensors, filled by the workers; ``result`` waits until all of them are in place."""

    def __init__(self, path: Path, tensors: dict[str, Any], pending: int) -> None:
        self.path = path
        self.tensors = tensors
        self.bytes = sum(t.numel() * t.element_size() for t in tensors.values())
        self._pending = pending
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._error: Optional[BaseException] = None
        if pending == 0:
            self._done.set()

    def chunk_done(self, error: Optional[BaseException] = None) -> None:
        with self._lock:
            if error is not None and self._error is None:
                self._error = error
            self._pending -= 1
            if self._pending == 0 or error is not None:
                self._done.set()

    def take(self) -> dict[str, Any]:
        """The tensors, handed over: the stream keeps no reference, so a loader that casts them
        frees each original as it goes (a file in fp32 for an fp16 model never needs both copies)."""
        self._done.wait()
        if self._error is not None:
            raise StreamError(f"{self.path}: {self._error}") from self._error
        tensors, self.tensors = self.tensors, {}
        return tensors


def _finished_ok(future: Future) -> bool:
    """Done without error (a cancelled future's ``exception()`` would raise)."""
    return future.done() and not future.cancelled() and future.exception() is None


class WeightStream:
    """Streams ``files`` to ``device`` in background threads; ``state_dict(path)`` waits for one file.

    ``ready`` (a thread to join, e.g. the CUDA context being created) runs first: device tensors
    cannot be allocated before it.

    Files still arriving over the network (``pipeline.loading.remote``) are not read from disk:
    ``arrive(buffer)`` hands each one's bytes in memory as soon as the fetcher has them all, and
    ``bind`` names their final paths once the download is proven complete.
    """

    def __init__(self, files: list[Path], device: str, workers: Optional[int] = None,
                 chunk_bytes: int = CHUNK_BYTES, ready: Optional[threading.Thread] = None,
                 staged: Optional[bool] = None) -> None:
        self.files = [Path(f).resolve() for f in files]
        self.device = device
        # Through a staging buffer (pinned on CUDA); on the CPU only when a test asks, to check the
        # staged path's offsets without a GPU.
        self.staged = device != "cpu" if staged is None else staged
        self.workers = workers or settings.get("WEIGHT_STREAM_WORKERS") or (4 if device == "cuda" else 2)
        self.chunk_bytes = chunk_bytes
        self._ready = ready
        self._streams: dict[Path, Future] = {}
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="weight-stream")
        self._local = threading.local()
        self._started = time.perf_counter()
        self._finished: Optional[float] = None
        self._lock = threading.Lock()
        self._outstanding = 0
        self._arrived: dict[int, Future] = {}  # id(buffer) -> its planning, for files handed in memory

    def arrive(self, buffer: Any, label: str) -> None:
        """Start copying one file's bytes (a complete safetensors file in memory) to the device."""
        with self._lock:
            self._outstanding += 1
        self._arrived[id(buffer)] = self._pool.submit(self._plan, Path(label), buffer)

    def bind(self, buffers: dict[Path, Any]) -> None:
        """The final path of each buffer handed to ``arrive``: ``state_dict(path)`` then finds it."""
        for path, buffer in buffers.items():
            future = self._arrived.get(id(buffer))
            if future is not None:
                key = Path(path).resolve()
                self._streams[key] = future
                self.files.append(key)

    def start(self) -> "WeightStream":
        # Planning (header reads, device allocation) happens on a pool thread too, so start() returns at once.
        self._outstanding = len(self.files)  # each file's planning, then each of its chunks
        for path in self.files:
            self._streams[path] = self._pool.submit(self._plan, path)
        return self

    def _plan(self, path: Path, buffer: Optional[Any] = None) -> FileStream:
        import torch

        if self._ready is not None:
            self._ready.join()
        entries = read_header(path, buffer)
        tensors = {e.name: torch.empty(e.shape, dtype=getattr(torch, e.dtype), device=self.device) for e in entries}
        chunks = plan_chunks((e for e in entries if e.end > e.start), tensors, self.chunk_bytes)
        stream = FileStream(path, tensors, len(chunks))
        with self._lock:
            self._outstanding += len(chunks)
        for pieces in chunks:
            self._pool.submit(self._copy_chunk, path, pieces, stream, buffer)
        self._task_done()
        return stream

    def _buffer(self) -> tuple[Any, Any]:
        """This worker's staging buffer (pinned) and CUDA stream (None off CUDA), made on first use."""
        import torch

        if not hasattr(self._local, "buffer"):
            cuda = self.device.startswith("cuda")
            self._local.buffer = torch.empty(self.chunk_bytes, dtype=torch.uint8, pin_memory=cuda)
            self._local.stream = torch.cuda.Stream() if cuda else None
        return self._local.buffer, self._local.stream

    def _copy_chunk(self, path: Path, pieces: list[Piece], stream: FileStream, buffer: Optional[Any] = None) -> None:
        error: Optional[BaseException] = None
        try:
            if buffer is not None:
                read = memoryview(buffer)

                def fill(target: memoryview, offset: int) -> None:
                    target[:] = read[offset:offset + len(target)]
            else:
                fd = os.open(path, os.O_RDONLY)

                def fill(target: memoryview, offset: int) -> None:
                    pread_into(fd, target, offset)
            try:
                if not self.staged:
                    for piece in pieces:  # straight into the destination memory
                        target = byte_view(piece.tensor)[piece.offset:piece.offset + piece.end - piece.start]
                        fill(memoryview(target.numpy()), piece.start)
                else:
                    self._staged_copy(fill, pieces)
            finally:
                if buffer is None:
                    os.close(fd)
        except BaseException as caught:  # reported by the file's result()
            error = caught
        stream.chunk_done(error)
        self._task_done()

    def _task_done(self) -> None:
        with self._lock:
            self._outstanding -= 1
            if self._outstanding == 0:
                self._finished = time.perf_counter()

    def _staged_copy(self, fill: Any, pieces: list[Piece]) -> None:
        import contextlib

        import torch

        buffer, copy_stream = self._buffer()
        first, last = pieces[0].start, pieces[-1].end
        fill(memoryview(buffer[: last - first].numpy()), first)
        with torch.cuda.stream(copy_stream) if copy_stream is not None else contextlib.nullcontext():
            for piece in pieces:
                target = byte_view(piece.tensor)[piece.offset:piece.offset + piece.end - piece.start]
                target.copy_(buffer[piece.start - first:piece.end - first], non_blocking=copy_stream is not None)
        if copy_stream is not None:
            copy_stream.synchronize()  # the buffer is reused for this worker's next chunk

    def state_dict(self, path: Path) -> dict[str, Any]:
        """The tensors of ``path`` (one of ``files``), once all of them are on the device; each
        file's tensors can be taken once."""
        key = Path(path).resolve()
        if key not in self._streams:
            raise StreamError(f"{path} is not part of this stream")
        try:
            return self._streams[key].result().take()
        except StreamError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise StreamError(f"{path}: {error}") from error

    def describe(self) -> str:
        done = [f.result() for f in self._streams.values() if _finished_ok(f)]
        total = sum(s.bytes for s in done)
        seconds = (self._finished or time.perf_counter()) - self._started
        return (f"weight stream: {total / 1e9:.2f} GB from {len(self.files)} files to {self.device} in {seconds:.2f} s "
                f"({total / 1e9 / max(seconds, 1e-9):.1f} GB/s, {self.workers} workers)")

    def close(self) -> None:
        """Stop the workers and drop any tensors nobody took (a component that fell back before
        taking its files), so their device memory is freed now."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        for future in self._streams.values():
            if _finished_ok(future):
                future.result().tensors = {}
