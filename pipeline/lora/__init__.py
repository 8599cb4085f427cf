"""A request's LoRAs by URL: fetched safely into a cache (``download``), checked to be safetensors
from the header (``safe_file``), and applied to the loaded model for that request only (``adapters``)."""

from __future__ import annotations

import logging
import shutil
from typing import Sequence

import settings
from pipeline.lora.adapters import Lora, LoraRejected, applied
from pipeline.lora.download import FetchError, LoraFile, TooLarge, UnsafeURL, fetch
from pipeline.lora.safe_file import NotSafetensors, read_header, safetensors_in
from request.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["Lora", "LoraRejected", "applied", "fetch_loras"]


def fetch_loras(inputs: Sequence[tuple[str, str, float]]) -> list[Lora]:
    """The request's LoRAs (field, URL, scale), each fetched (or found in the cache) and checked.

    Any failure is an ``InputError`` naming the field; a cached file that fails its check is removed.
    """
    loras = []
    max_bytes = int(settings.get("LORA_MAX_MB") * 1024 * 1024)
    for field, url, scale in inputs:
        try:
            found = fetch(url)
            path = safetensors_in(found.path, found.path.parent / "unpacked", max_bytes)
            read_header(path)
        except (UnsafeURL, TooLarge, FetchError) as error:
            raise InputError(field, url, str(error)) from None
        except NotSafetensors as error:
            for stale in (found.path, found.path.with_suffix(".json")):
                stale.unlink(missing_ok=True)
            shutil.rmtree(found.path.parent / "unpacked", ignore_errors=True)
            raise InputError(field, url, f"not a usable .safetensors LoRA: {error}") from None
        log.info("LoRA %s: %s %s in %.2f s (%s)", field, "cache hit" if found.cached else "downloaded", url,
                 found.seconds, path.name)
        loras.append(Lora(field, LoraFile(url, path, found.sha256, found.cached, found.seconds), scale))
    return loras
