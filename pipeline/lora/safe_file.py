"""Is a downloaded file a safetensors file? Decided from its header, before any tensor is read.

A LoRA comes from a caller's URL, so it is untrusted: a pickle (``.pt``, ``.ckpt``, or one renamed
``.safetensors``) can run code when loaded, and is never opened. safetensors' layout is an 8-byte
little-endian header length, that many bytes of JSON naming each tensor's dtype, shape and byte
range, then the data. Every range must lie inside the file, or the file is truncated or forged.
(A tar's one ``.safetensors`` member is taken out by the fetcher, ``pipeline.lora.download``.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.loading.stream import safetensors_header

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


class NotSafetensors(ValueError):
    """The file is not a complete safetensors file; the message says what is wrong."""


def read_header(path: Path) -> dict[str, Any]:
    """The tensors' header (name -> dtype, shape, offsets), after checking the whole layout."""
    with path.open("rb") as handle:
        start = handle.read(2)
    if start[:1] == b"\x80" or start[:2] == b"PK":
        raise NotSafetensors("a pickle (a PyTorch .pt/.ckpt file), which is never loaded: only .safetensors")
    try:
        header, data_start = safetensors_header(path)  # the weight stream's reader: length, then JSON
    except (ValueError, UnicodeDecodeError) as error:
        raise NotSafetensors(f"not a safetensors file, or truncated ({error})") from None
    if not isinstance(header, dict):
        raise NotSafetensors("header is not a JSON object: not a safetensors file")
    data_size = path.stat().st_size - data_start
    tensors = {name: info for name, info in header.items() if name != "__metadata__"}
    if not tensors:
        raise NotSafetensors("no tensors in the file")
    for name, info in tensors.items():
        try:
            begin, end = info["data_offsets"]
            if not all(type(v) is int for v in (begin, end, *info["shape"])):
                raise TypeError("offsets and shape must be integers")
            count = 1
            for dim in info["shape"]:
                count *= dim
            width = DTYPE_BYTES[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise NotSafetensors(f"tensor {name!r} has a malformed entry") from None
        if not 0 <= begin <= end <= data_size or end - begin != count * width:
            raise NotSafetensors(f"tensor {name!r} lies outside the file's {data_size} data bytes: the file is truncated")
    return tensors
