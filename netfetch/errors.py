"""What can go wrong with a fetch, one type each, so callers can name the input and the cause."""

from __future__ import annotations


class FetchError(RuntimeError):
    """The URL could not be fetched completely; the message says why and names the URL."""


class BadURL(FetchError):
    """The URL itself is unusable: a scheme, host, port or header the fetcher does not accept."""


class UnsafeURL(FetchError):
    """The URL leads (directly, by DNS or by a redirect) to an address callers may not reach."""


class TooLarge(FetchError):
    """More bytes than allowed, announced or received (on the wire or unpacked)."""


class TooSlow(FetchError):
    """The whole download did not finish within its deadline."""


class Incomplete(FetchError):
    """What arrived cannot be proven complete: short of its length, a tar without its end, a
    safetensors file whose header promises more bytes, or a checksum that does not match."""
