"""Components two resident models share on disk are loaded once and used by both.

Flux-dev and Flux-schnell ship the same T5-XXL (9.5 GB in bf16), CLIP and VAE. An operator who keeps
one copy on disk (the same files reached through a symlink or hardlink) gets one copy in memory:
when a model loads, any shareable component whose files are the very same files as a resident
model's is passed in instead of being read again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from pipeline.loading.cache import MODEL_CACHE
from pipeline.models import LoadedModel, WeightsSource
from request.catalog import MODELS

log = logging.getLogger(__name__)

SHAREABLE = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae")


def file_identity(folder: Path) -> Optional[frozenset[tuple[int, int]]]:
    """The (device, inode) pairs of a component's files: equal only for the same files on disk."""
    if not folder.is_dir():
        return None
    files = [path for path in folder.rglob("*") if path.is_file()]
    return frozenset((stat.st_dev, stat.st_ino) for stat in (path.stat() for path in files)) or None


def shared_components(source: WeightsSource) -> dict[str, Any]:
    """Resident modules of ``source``'s family that it would otherwise load a second copy of."""
    found: dict[str, Any] = {}
    family = MODELS[source.model].family
    residents = [m for _, m in MODEL_CACHE.entries() if isinstance(m, LoadedModel) and m.spec.family == family]
    for name in SHAREABLE:
        identity = file_identity(source.path / name)
        for other in residents:
            if identity is not None and identity == file_identity(other.source.path / name):
                found[name] = getattr(other.pipe, name)
                log.info("%s: %s shared with resident %s (same files)", source.model, name, other.source.model)
                break
    return found
