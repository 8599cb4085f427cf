"""One URL fetched as parallel HTTP Range chunks and handed, in order, to one consumer.

pget's scheme (replicate/pget): probe the size with the first chunk's range request, then fetch
the remaining chunks on ``concurrency`` connections. A worker may run at most ``window`` chunks
ahead of the consumer, so memory stays bounded at about ``window × chunk_bytes``. Each chunk is
retried and resumed from its last byte on its own, with backoff; 429 and 503 honour
``Retry-After``. A server that ignores Range gets one stream, resumed (or, where it cannot resume,
re-read and skipped) after a drop. An overall deadline closes every socket when it passes, so a
slow-drip server cannot hold the caller past it.
"""

from __future__ import annotations

import http.client
import logging
import random
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Optional, Protocol

from netfetch.errors import FetchError, Incomplete, TooLarge, TooSlow
from netfetch.http import USER_AGENT, Endpoint, open_following, parse_url, retry_after
from netfetch.policy import FetchPolicy

log = logging.getLogger(__name__)

STEP = 1024 * 1024  # bytes per readinto, so progress (and the deadline) is seen often
CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class Consumer(Protocol):
    def feed(self, data: memoryview) -> None: ...

    def finish(self) -> None: ...


@dataclass(frozen=True)
class Transfer:
    """What one download did, for logs and benchmarks."""

    bytes: int
    seconds: float
    connections: int
    ranged: bool
    retries: int


class _ConsumerFailed(Exception):
    """The consumer refused the bytes (or failed writing them): final, never a network retry."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _Retry(Exception):
    def __init__(self, why: str, wait: Optional[float] = None) -> None:
        super().__init__(why)
        self.wait = wait


class _Watch:
    """The deadline and the abort switch: either closes every registered connection's socket."""

    def __init__(self, seconds: float, label: str) -> None:
        self.end = time.monotonic() + seconds
        self.seconds = seconds
        self.label = label
        self.error: Optional[BaseException] = None
        self._aborted = threading.Event()
        self._connections: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self.abort(TooSlow(f"{self.label} not complete within its {self.seconds:g} s deadline (too slow)"))

    def abort(self, error: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = error
            connections = list(self._connections)
        self._aborted.set()  # wakes every worker waiting out a Retry-After
        for connection in connections:
            sock = connection.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def register(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._connections.add(connection)

    def unregister(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._connections.discard(connection)
        connection.close()

    def sleep(self, seconds: float) -> None:
        if seconds >= self.remaining():
            self._expire()
            self.check()
        self._aborted.wait(seconds)
        self.check()

    def cancel(self) -> None:
        self._timer.cancel()


def _backoff(attempt: int) -> float:
    return min(0.25 * 2 ** (attempt - 1), 8.0) * (0.5 + random.random() / 2)


class _Download:
    def __init__(self, url: str, policy: FetchPolicy, consumer: Consumer) -> None:
        self.url = url
        self.label = parse_url(url, policy.field).label  # a bad URL is refused before anything starts
        self.policy = policy
        self.consumer = consumer
        self.watch = _Watch(policy.deadline_s, f"{policy.field}: {self.label}")
        self.endpoint: Optional[Endpoint] = None
        self.size: Optional[int] = None
        self.retries = 0
        self.connections = 0
        self._lock = threading.Condition()
        self._ready: dict[int, bytearray] = {}
        self._fed = 0  # chunks handed to the consumer
        self._claimed = 1  # chunk 0 is the probe's
        self._local = threading.local()  # each worker's kept-alive connection
        self._validator: dict[str, str] = {}  # If-Range with the first answer's ETag (or Last-Modified)

    # -- requests --------------------------------------------------------------------------
    def _timeout(self) -> float:
        return max(0.05, min(self.policy.read_timeout_s, self.watch.remaining()))

    def _judge(self, response: http.client.HTTPResponse) -> None:
        """Raise ``_Retry`` for answers worth asking again, ``FetchError`` for final ones."""
        status = response.status
        if status in (200, 206):
            return
        label = self.endpoint.target.label if self.endpoint else self.label
        response.read(64 * 1024)
        if status in (429, 503):
            raise _Retry(f"HTTP {status}", retry_after(response, 1.0))
        if status >= 500:
            raise _Retry(f"HTTP {status}")
        raise FetchError(f"{self.policy.field}: HTTP {status} {response.reason} from {label}")

    def _open(self, headers: dict[str, str]) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """A response for ``headers``: through the redirects from the URL the first time, then
        straight to the endpoint that answered (already checked), on this thread's kept-alive
        connection when it has one (no new TCP or TLS handshake per chunk)."""
        if self.endpoint is None:
            point, connection, response = open_following(self.url, self.policy, headers, self._timeout(),
                                                         self.watch.register)
            self.endpoint = point
            self.connections += 1
            return connection, response
        kept = getattr(self._local, "connection", None)
        self._local.connection = None
        if kept is not None:
            try:
                return self._send(kept, headers)
            except (OSError, http.client.HTTPException):  # the server closed it meanwhile: a fresh one
                self.watch.unregister(kept)
                self.watch.check()
        connection = self.endpoint.connect(self._timeout())
        self.watch.register(connection)
        self.connections += 1
        try:
            return self._send(connection, headers)
        except BaseException:
            self.watch.unregister(connection)
            raise

    def _send(self, connection: http.client.HTTPConnection,
              headers: dict[str, str]) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        assert self.endpoint is not None
        connection.timeout = self._timeout()
        if connection.sock is not None:
            connection.sock.settimeout(connection.timeout)
        connection.request("GET", self.endpoint.target.path, headers={"User-Agent": USER_AGENT, **headers})
        response = connection.getresponse()
        if response.status in (301, 302, 303, 307, 308):  # a signed URL that redirects every time
            self.watch.unregister(connection)  # its body is not read: it may be any size
            _, connection, response = open_following(self.url, self.policy, headers, self._timeout(), self.watch.register)
        return connection, response

    def _drop_kept(self) -> None:
        kept = getattr(self._local, "connection", None)
        self._local.connection = None
        if kept is not None:
            self.watch.unregister(kept)

    def _release(self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse, whole: bool) -> None:
        """Keep the connection for this thread's next chunk when its response was read to the end."""
        if whole and not response.will_close and getattr(self._local, "connection", None) is None:
            self._local.connection = connection
        else:
            self.watch.unregister(connection)

    def _read_into(self, response: http.client.HTTPResponse, view: memoryview) -> int:
        """Fill ``view`` from the body; the count read (short only when the body ended early)."""
        got = 0
        while got < len(view):
            count = response.readinto(view[got:got + STEP])
            if not count:
                break
            got += count
        return got

    def _with_retries(self, what: str, attempt_fn):  # type: ignore[no-untyped-def]
        """Run ``attempt_fn(progress)`` until it returns; ``progress()`` marks bytes gained, which
        resets the count of consecutive failures."""
        failures = 0
        gained = [False]

        def progress() -> None:
            gained[0] = True

        while True:
            self.watch.check()
            gained[0] = False
            try:
                return attempt_fn(progress)
            except (_Retry, OSError, http.client.HTTPException) as error:
                self.watch.check()  # a socket closed by the deadline or an abort says so, not "reset"
                failures = 0 if gained[0] else failures + 1
                self.retries += 1
                if failures >= self.policy.attempts:
                    raise FetchError(f"{self.policy.field}: could not download {self.label}: {what} failed "
                                     f"{failures} times in a row ({error})") from None
                wait = error.wait if isinstance(error, _Retry) and error.wait is not None else _backoff(failures)
                log.warning("%s: %s interrupted (%s); retrying in %.2f s", self.policy.field, what, error, wait)
                self.watch.sleep(wait)

    # -- the chunks ------------------------------------------------------------------------
    def _bounds(self, index: int) -> tuple[int, int]:
        assert self.size is not None
        start = index * self.policy.chunk_bytes
        return start, min(self.size, start + self.policy.chunk_bytes)

    def _fetch_chunk(self, index: int, buffer: Optional[bytearray] = None, have: int = 0) -> bytearray:
        start, end = self._bounds(index)
        data = buffer if buffer is not None else bytearray(end - start)
        view = memoryview(data)
        filled = [have]

        def attempt(progress) -> bytearray:  # type: ignore[no-untyped-def]
            first = start + filled[0]
            connection, response = self._open({"Range": f"bytes={first}-{end - 1}", **self._validator})
            whole = False
            try:
                self._judge(response)
                match = CONTENT_RANGE.match(response.getheader("Content-Range") or "")
                if response.status != 206 or not match or int(match.group(1)) != first or match.group(3) != str(self.size):
                    # with If-Range a 200 means the file changed since the first request: never stitch two versions
                    raise FetchError(f"{self.policy.field}: {self.label} changed or stopped honouring range requests "
                                     f"during the download (HTTP {response.status} for bytes {first}-)")
                while filled[0] < len(data):
                    count = self._read_into(response, view[filled[0]:])
                    if count:
                        progress()
                    filled[0] += count
                    if filled[0] < len(data):
                        raise http.client.IncompleteRead(b"", len(data) - filled[0])
                whole = response.read(1) == b""  # the body is done: the connection can carry the next chunk
                return data
            finally:
                self._release(connection, response, whole)

        return self._with_retries(f"bytes {start}-{end - 1}", attempt)

    def _claim(self, window: int) -> Optional[int]:
        with self._lock:
            while (self.watch.error is None and self._claimed < self._chunks
                   and self._claimed >= self._fed + window):
                self._lock.wait(0.5)
            if self.watch.error is not None or self._claimed >= self._chunks:
                return None
            index = self._claimed
            self._claimed += 1
            return index

    def _worker(self, window: int) -> None:
        try:
            while (index := self._claim(window)) is not None:
                data = self._fetch_chunk(index)
                with self._lock:
                    self._ready[index] = data
                    self._lock.notify_all()
        except BaseException as error:  # handed to the consumer's thread, which raises it
            self.watch.abort(error)
            with self._lock:
                self._lock.notify_all()
        finally:
            self._drop_kept()

    def _take(self, index: int) -> bytearray:
        with self._lock:
            while index not in self._ready:
                self.watch.check()
                self._lock.wait(0.5)
            data = self._ready.pop(index)
            self._fed = index + 1
            self._lock.notify_all()
            return data

    # -- the whole -------------------------------------------------------------------------
    def run(self) -> Transfer:
        started = time.perf_counter()
        try:
            try:
                received = self._probe_and_run()
                self.consumer.finish()
            except _ConsumerFailed as failed:
                raise failed.error from None
        except FetchError as error:
            self.watch.abort(error)
            text = str(error)
            if self.label in text:
                raise
            prefix = f"{self.policy.field}: "
            raise type(error)(prefix + self.label + ": " + text.removeprefix(prefix)) from None
        except BaseException as error:
            self.watch.abort(error if isinstance(error, Exception) else FetchError("aborted"))
            if isinstance(error, (_Retry, OSError, http.client.HTTPException)):
                raise FetchError(f"{self.policy.field}: could not download {self.label} ({error})") from None
            raise
        finally:
            self.watch.cancel()
        return Transfer(received, time.perf_counter() - started, self.connections,
                        self.size is not None and self._chunks > 1, self.retries)

    def _feed(self, data: memoryview) -> None:
        try:
            self.consumer.feed(data)
        except BaseException as error:
            raise _ConsumerFailed(error) from error

    def _cap(self, size: Optional[int]) -> None:
        limit = self.policy.max_bytes
        if limit is not None and size is not None and size > limit:
            raise TooLarge(f"{self.policy.field}: {size} bytes; at most {limit} allowed")

    def _probe_and_run(self) -> int:
        first = bytearray(self.policy.chunk_bytes)

        def probe(progress) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:  # type: ignore[no-untyped-def]
            connection, response = self._open({"Range": f"bytes=0-{self.policy.chunk_bytes - 1}"})
            try:
                self._judge(response)
            except BaseException:
                self.watch.unregister(connection)
                raise
            return connection, response

        connection, response = self._with_retries("the first request", probe)
        match = CONTENT_RANGE.match(response.getheader("Content-Range") or "")
        if response.status == 206 and match and match.group(3) != "*" and int(match.group(1)) == 0:
            self.size = int(match.group(3))
            self._cap(self.size)
            validator = response.getheader("ETag") or response.getheader("Last-Modified")
            if validator and not validator.startswith("W/"):
                self._validator = {"If-Range": validator}
            return self._ranged(connection, response, first)
        if response.status == 206:  # a partial answer without its total: ask for the whole file instead
            self.watch.unregister(connection)
            connection, response = self._with_retries("the first request", lambda progress: self._whole())
        length = response.getheader("Content-Length")
        declared = int(length) if length and length.isdigit() else None
        self._cap(declared)
        return self._single(connection, response, declared)

    def _whole(self) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """A plain GET (no Range) on a fresh connection, judged: it must answer 200."""
        connection = (self.endpoint.connect(self._timeout()) if self.endpoint is not None else None)
        if connection is None:
            _, connection, response = open_following(self.url, self.policy, {}, self._timeout(), self.watch.register)
        else:
            self.watch.register(connection)
            connection.request("GET", self.endpoint.target.path, headers={"User-Agent": USER_AGENT})  # type: ignore[union-attr]
            response = connection.getresponse()
        try:
            self._judge(response)
            if response.status != 200:
                raise FetchError(f"{self.policy.field}: {self.label} answered HTTP {response.status} to a request "
                                 "for the whole file")
        except BaseException:
            self.watch.unregister(connection)
            raise
        return connection, response

    def _ranged(self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse,
                first: bytearray) -> int:
        assert self.size is not None
        self._chunks = max(1, -(-self.size // self.policy.chunk_bytes))
        start, end = self._bounds(0)
        del first[end - start:]
        try:
            have = self._read_into(response, memoryview(first))
        except (OSError, http.client.HTTPException):
            have = 0
            self.watch.check()
        finally:
            self.watch.unregister(connection)
        window = max(2, 2 * self.policy.concurrency)
        threads = [threading.Thread(target=self._worker, args=(window,), name=f"fetch-{i}", daemon=True)
                   for i in range(min(self.policy.concurrency, self._chunks - 1))]
        for thread in threads:
            thread.start()
        try:
            chunk0 = first if have == len(first) else self._fetch_chunk(0, first, have)
            self._feed(memoryview(chunk0))
            with self._lock:
                self._fed = 1
                self._lock.notify_all()
            del chunk0, first
            for index in range(1, self._chunks):
                self._feed(memoryview(self._take(index)))
        except BaseException as error:
            self.watch.abort(error)
            raise
        finally:
            self._drop_kept()  # this thread's, when it fetched chunk 0 again
            for thread in threads:
                thread.join()
        return self.size

    def _single(self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse,
                declared: Optional[int]) -> int:
        """The whole body on one connection; after a drop, ask again from the byte reached (skipping
        what a server that ignores Range sends again)."""
        self._chunks = 1
        received = 0
        buffer = bytearray(min(self.policy.chunk_bytes, 4 * STEP))
        view = memoryview(buffer)
        current = [connection, response]

        def drain(progress) -> None:  # type: ignore[no-untyped-def]
            nonlocal received
            try:
                if current[1] is None:
                    new_connection, new_response = self._open({"Range": f"bytes={received}-"} if received else {})
                    current[:] = [new_connection, new_response]
                    self._judge(new_response)
                    match = CONTENT_RANGE.match(new_response.getheader("Content-Range") or "")
                    if new_response.status == 206 and not (match and int(match.group(1)) <= received):
                        raise FetchError(f"{self.policy.field}: {self.label} resumed from an unexpected byte")
                    skip = received - int(match.group(1)) if new_response.status == 206 and match else received
                    while skip > 0:  # the server sent from an earlier byte (or from the start): drop that part
                        count = self._read_into(new_response, view[:min(skip, len(view))])
                        if not count:
                            raise http.client.IncompleteRead(b"")
                        skip -= count
                while count := self._read_into(current[1], view):
                    received += count
                    progress()
                    if self.policy.max_bytes is not None and received > self.policy.max_bytes:
                        raise TooLarge(f"{self.policy.field}: more than {self.policy.max_bytes} bytes")
                    self._feed(view[:count])
                if declared is not None and received < declared:
                    raise http.client.IncompleteRead(b"", declared - received)
            finally:
                if current[0] is not None:
                    self.watch.unregister(current[0])
                current[1] = None

        announce = getattr(self.consumer, "announced", None)
        if callable(announce):
            announce(declared)  # before any byte: a consumer that cannot prove its end without a length says so
        self._with_retries("the download", drain)
        if declared is not None and received != declared:
            raise Incomplete(f"{self.policy.field}: {received} bytes received, {declared} announced")
        self.size = received
        return received


def download(url: str, policy: FetchPolicy, consumer: Consumer) -> Transfer:
    """Fetch ``url`` into ``consumer`` (``feed`` in order, then ``finish``) under ``policy``."""
    return _Download(url, policy, consumer).run()
