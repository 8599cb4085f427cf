"""A caller's file input (an image, a mask) fetched into memory: a data: URI or a fenced http(s) URL.

Local paths are not read here: a caller of the HTTP API must not be able to read the server's
files. In-process callers (``scripts/predict_local.py``, tests) pass ``pathlib.Path`` objects,
which the request layer reads directly.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse

from netfetch.errors import BadURL, TooLarge
from netfetch.policy import FetchPolicy
from netfetch.ranged import download
from netfetch.unpack import MemorySink


def is_remote(value: str) -> bool:
    return value.startswith(("http://", "https://", "data:"))


def fetch_bytes(value: str, policy: FetchPolicy) -> bytes:
    """The bytes behind ``value``; raises a ``FetchError`` naming ``policy.field``."""
    limit = policy.max_bytes or 50 * 1024 * 1024
    if value.startswith("data:"):
        header, comma, payload = value.partition(",")
        if not comma:
            raise BadURL(f"{policy.field}: a data: URI without a comma")
        if len(payload) > limit * 4 // 3 + 4:
            raise TooLarge(f"{policy.field}: larger than {limit} bytes")
        try:
            data = base64.b64decode(payload, validate=False) if header.endswith(";base64") else \
                urllib.parse.unquote_to_bytes(payload)
        except (binascii.Error, ValueError) as error:
            raise BadURL(f"{policy.field}: a data: URI that does not decode ({error})") from None
        if len(data) > limit:
            raise TooLarge(f"{policy.field}: {len(data)} bytes; at most {limit} allowed")
        return data
    sink = MemorySink(policy.field, limit)
    download(value, policy.with_(max_bytes=limit, concurrency=min(policy.concurrency, 4)), sink)
    return bytes(sink.data)
