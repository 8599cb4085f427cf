"""A request's LoRAs by URL: fetched safely into a cache (``download``), checked to be safetensors
from the header (``safe_file``), and applied to the loaded model for that request only (``adapters``)."""

from __future__ import annotations

import logging
from typing import Sequence

from pipeline.lora.adapters import Lora, LoraRejected, applied
from pipeline.lora.download import FetchError, fetch, forget
from pipeline.lora.safe_file import NotSafetensors, read_header
from request.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["Lora", "LoraRejected", "applied", "fetch_loras"]


def fetch_loras(inputs: Sequence[tuple[str, str, float]]) -> list[Lora]:
    """The request's LoRAs (field, URL, scale), each fetched (or found in the cache) and checked.

    Any failure is an ``InputError`` naming the field; a cached file that fails its check is removed.
    """
    loras = []
    for field, url, scale in inputs:
        try:
            found = fetch(url, field)
            read_header(found.path)
        except FetchError as error:
            raise InputError(field, url, str(error).removeprefix(f"{field}: ")) from None
        except NotSafetensors as error:
            forget(url)
            raise InputError(field, url, f"not a usable .safetensors LoRA: {error}") from None
        log.info("LoRA %s: %s %s in %.2f s (%s)", field, "cache hit" if found.cached else "downloaded", url,
                 found.seconds, found.path.name)
        loras.append(Lora(field, found, scale))
    return loras
