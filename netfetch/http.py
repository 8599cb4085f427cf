"""HTTP requests to the address that was checked, redirects checked the same way.

The standard library's ``http.client`` is used because it lets a connection go to an address
chosen beforehand while the request still names the host (``Host`` header, TLS SNI and
certificate check against the host name): the fence's answer cannot be swapped by a second DNS
look-up (rebinding). urllib and httpx resolve the name again when they connect.
"""

from __future__ import annotations

import email.utils
import http.client
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Mapping, Optional

from netfetch.errors import BadURL, FetchError, UnsafeURL
from netfetch.fence import resolve
from netfetch.policy import FetchPolicy

USER_AGENT = "fast-image-service-fetch/1"
REDIRECTS = (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent

    @property
    def label(self) -> str:
        """The URL without its query (which may carry a signature or token), for messages."""
        return f"{self.scheme}://{self.host}:{self.port}{self.path.split('?')[0]}"


def parse_url(url: str, field: str) -> Target:
    """Split an http(s) URL, or raise ``BadURL`` naming ``field`` (a bad port, no host, a scheme)."""
    if not isinstance(url, str) or any(ord(c) <= 32 or ord(c) == 127 for c in url):
        raise BadURL(f"{field}: not a URL (control characters or spaces)")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL(f"{field}: only http and https URLs are fetched, not {parts.scheme or 'a bare path'!r}")
    try:
        port = parts.port
    except ValueError as error:  # "Port out of range 0-65535", "Port could not be cast to integer value"
        raise BadURL(f"{field}: bad port in {url.split('?')[0][:200]!r} ({error})") from None
    if not parts.hostname:
        raise BadURL(f"{field}: no host in {url.split('?')[0][:200]!r}")
    if parts.username or parts.password:
        raise BadURL(f"{field}: credentials in the URL are not accepted")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(url, parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path)


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, target: Target, address: str, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_CONTEXT: list[ssl.SSLContext] = []  # one TLS context for every connection: loading the CAs costs milliseconds


def _tls_context() -> ssl.SSLContext:
    if not _CONTEXT:
        _CONTEXT.append(ssl.create_default_context())
    return _CONTEXT[0]


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, target: Target, address: str, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=_tls_context())
        self._address = address

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)  # type: ignore[attr-defined]


@dataclass
class Endpoint:
    """A target and the checked address its connections go to."""

    target: Target
    address: str

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        kind = _PinnedHTTPS if self.target.scheme == "https" else _PinnedHTTP
        return kind(self.target, self.address, timeout)


def endpoint(url: str, policy: FetchPolicy) -> Endpoint:
    target = parse_url(url, policy.field)
    return Endpoint(target, resolve(target.host, target.port, policy.trusted, policy.field)[0])


def retry_after(response: http.client.HTTPResponse, default: float) -> float:
    """Seconds a 429/503 asks to wait (``Retry-After``: seconds or an HTTP date)."""
    value = response.getheader("Retry-After")
    if not value:
        return default
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    return max(0.0, when.timestamp() - time.time())


def open_following(url: str, policy: FetchPolicy, headers: Mapping[str, str], timeout: float,
                   on_connection: Optional[object] = None) -> tuple[Endpoint, http.client.HTTPConnection, http.client.HTTPResponse]:
    """GET ``url``, following redirects (each target resolved and fenced anew); the final endpoint,
    its open connection and the response (status not judged here)."""
    current = url
    for _ in range(policy.max_redirects + 1):
        point = endpoint(current, policy)
        connection = point.connect(timeout)
        if callable(on_connection):
            on_connection(connection)
        try:
            connection.request("GET", point.target.path, headers={"User-Agent": USER_AGENT, **headers})
            response = connection.getresponse()
        except (http.client.InvalidURL, ValueError) as error:
            connection.close()
            raise BadURL(f"{policy.field}: {point.target.label} is not a URL http.client can send "
                         f"({type(error).__name__})") from None
        except BaseException:
            connection.close()
            raise
        if response.status not in REDIRECTS:
            return point, connection, response
        location = response.getheader("Location")
        connection.close()  # the body of a redirect is not read: it may be any size
        if not location:
            raise FetchError(f"{policy.field}: HTTP {response.status} without a Location from {point.target.label}")
        current = urllib.parse.urljoin(current, location)
    raise FetchError(f"{policy.field}: more than {policy.max_redirects} redirects from {url.split('?')[0][:200]}")
