"""Is a downloaded file a safetensors file? Decided from its header, before any tensor is read.

A LoRA comes from a caller's URL, so it is untrusted: a pickle (``.pt``, ``.ckpt``, or one renamed
``.safetensors``) can run code when loaded, and is never opened. safetensors' layout is an 8-byte
little-endian header length, that many bytes of JSON naming each tensor's dtype, shape and byte
range, then the data. Every range must lie inside the file, or the file is truncated or forged.
A tar (Replicate's trainers ship ``lora.safetensors`` in one) is opened only to take out its one
``.safetensors`` member, by name, never by extracting paths.
"""

from __future__ import annotations

import tarfile
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
            count = 1
            for dim in info["shape"]:
                count *= int(dim)
            width = DTYPE_BYTES[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise NotSafetensors(f"tensor {name!r} has a malformed entry") from None
        if not 0 <= begin <= end <= data_size or end - begin != count * width:
            raise NotSafetensors(f"tensor {name!r} lies outside the file's {data_size} data bytes: the file is truncated")
    return tensors


def safetensors_in(path: Path, work: Path, max_bytes: int) -> Path:
    """``path`` itself, or the one ``.safetensors`` file inside the tar at ``path`` (copied to ``work``)."""
    if not tarfile.is_tarfile(path):
        return path
    out = work / (path.name + ".safetensors")
    if out.exists() and out.stat().st_mtime >= path.stat().st_mtime:  # taken out on an earlier request
        return out
    with tarfile.open(path) as archive:
        members = [m for m in archive.getmembers() if m.isfile() and m.name.endswith(".safetensors")]
        if len(members) != 1:
            raise NotSafetensors(f"a tar with {len(members)} .safetensors files; it must hold exactly one")
        member = members[0]
        if member.size > max_bytes:
            raise NotSafetensors(f"its .safetensors member is {member.size} bytes; at most {max_bytes} allowed")
        work.mkdir(parents=True, exist_ok=True)
        source = archive.extractfile(member)
        assert source is not None
        with source, out.open("wb") as target:
            while block := source.read(8 * 1024 * 1024):
                target.write(block)
    return out
