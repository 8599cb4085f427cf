"""A loopback HTTP server that behaves like an object store, for the fetcher's tests and benchmark.

Files are served from a folder with Range support (206 with Content-Range), a per-connection rate
cap, a time to first byte, an optional cap on the total rate, and faults to inject: a reset after
some bytes, 5xx or 429 with Retry-After on the first requests, no Content-Length, Range ignored, a
body cut short, a slow drip, redirects. Every request is logged (path, Range header) so tests can
assert what reached the server. Loopback moves well over 1 GB/s, so without a cap it hides what
parallel ranges buy: the defaults are an object store's (90 MB/s per connection, 150 ms to first
byte).

    python scripts/object_store.py --root DIR --port 8000 --rate-mb 90 --ttfb-ms 150
"""

from __future__ import annotations

import argparse
import os
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass
class Faults:
    rate: float = 90e6  # bytes/s per connection; 0: uncapped
    ttfb: float = 0.15  # seconds before the first byte of every response
    total_rate: float = 0.0  # bytes/s over all connections; 0: uncapped
    reset_after: Optional[int] = None  # close each of the first ``resets`` bodies after this many bytes
    resets: int = 0
    errors: int = 0  # the first N requests get ``error_status``
    error_status: int = 503
    retry_after: Optional[str] = None
    no_length: bool = False  # no Content-Length; the body ends by closing the connection
    ignore_range: bool = False
    truncate_at: Optional[int] = None  # the file ends here for every response (a server that breaks off)
    drip: Optional[float] = None  # seconds between single bytes (a slow-drip server)
    redirect: dict[str, str] = field(default_factory=dict)  # path -> Location


class Store(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, faults: Faults, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.root = root
        self.faults = faults
        self.lock = threading.Lock()
        self.requests: list[tuple[str, Optional[str]]] = []  # (path, Range header)
        self._bucket_time = time.monotonic()
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> "Store":
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def take_total(self, count: int) -> None:
        """Wait until the shared total-rate budget allows ``count`` more bytes."""
        if not self.faults.total_rate:
            return
        with self.lock:
            now = time.monotonic()
            self._bucket_time = max(self._bucket_time, now) + count / self.faults.total_rate
            wait = self._bucket_time - now
        if wait > 0:
            time.sleep(wait)

    def count(self, path: Optional[str] = None) -> int:
        return sum(1 for p, _ in self.requests if path is None or p == path)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Store

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        faults = self.server.faults
        with self.server.lock:
            self.server.requests.append((self.path, self.headers.get("Range")))
            number = len(self.server.requests)
            reset = faults.reset_after is not None and faults.resets > 0
            if reset:
                faults.resets -= 1
        time.sleep(faults.ttfb)
        if number <= faults.errors:
            self.send_response(faults.error_status)
            if faults.retry_after is not None:
                self.send_header("Retry-After", faults.retry_after)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path in faults.redirect:
            self.send_response(302)
            self.send_header("Location", faults.redirect[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = (self.server.root / self.path.lstrip("/").split("?")[0]).resolve()
        if not path.is_file() or self.server.root.resolve() not in path.parents:
            self.send_error(404)
            return
        size = path.stat().st_size
        start, end = 0, size  # [start, end)
        wanted = RANGE.match(self.headers.get("Range", "")) if not faults.ignore_range else None
        if wanted:
            start = int(wanted.group(1))
            end = min(size, int(wanted.group(2)) + 1) if wanted.group(2) else size
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        else:
            self.send_response(200)
            self.send_header("Accept-Ranges", "none" if faults.ignore_range else "bytes")
        if faults.no_length:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(end - start))
        self.end_headers()
        stop = end
        if faults.truncate_at is not None:
            stop = min(stop, faults.truncate_at)
            self.close_connection = True
        if reset:
            stop = min(stop, start + faults.reset_after)  # type: ignore[operator]
            self.close_connection = True
        self._send(path, start, stop)

    def _send(self, path: Path, start: int, stop: int) -> None:
        faults = self.server.faults
        piece = 1 if faults.drip else 256 * 1024
        began = time.monotonic()
        sent = 0
        with path.open("rb") as handle:
            handle.seek(start)
            try:
                while start + sent < stop:
                    data = handle.read(min(piece, stop - start - sent))
                    if not data:
                        break
                    self.server.take_total(len(data))
                    self.wfile.write(data)
                    sent += len(data)
                    if faults.drip:
                        time.sleep(faults.drip)
                    elif faults.rate:
                        ahead = began + sent / faults.rate - time.monotonic()
                        if ahead > 0:
                            time.sleep(ahead)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
                return
        if self.close_connection:
            try:
                self.wfile.flush()
                self.connection.shutdown(2)
            except OSError:
                pass


def serve(root: Path, faults: Optional[Faults] = None, port: int = 0) -> Store:
    return Store(root, faults or Faults(), port).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--rate-mb", type=float, default=90.0, help="MB/s per connection (0: uncapped)")
    parser.add_argument("--ttfb-ms", type=float, default=150.0)
    parser.add_argument("--total-mb", type=float, default=0.0, help="MB/s over all connections (0: uncapped)")
    args = parser.parse_args()
    store = Store(args.root, Faults(rate=args.rate_mb * 1e6, ttfb=args.ttfb_ms / 1000, total_rate=args.total_mb * 1e6),
                  args.port)
    print(f"serving {args.root} at {store.url} (pid {os.getpid()})", flush=True)
    store.serve_forever()


if __name__ == "__main__":
    main()
