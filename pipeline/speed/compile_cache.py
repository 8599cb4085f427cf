"""Regional ``torch.compile`` of the denoiser, with compiled artifacts restored from a file.

Compilation never runs in ``setup()``: ``compile_repeated_blocks`` only marks the repeated blocks
(SDXL's transformer blocks, Flux's double and single blocks); they compile on the first call. That
first call is what the artifact file shortens: ``bench/build_compile_cache.py`` compiles once on
the target GPU and saves PyTorch's cache artifacts (``torch.compiler.save_cache_artifacts``); the
service restores them at load (a file read), so inductor's code generation and autotuning are cache
hits. Artifacts are only valid for the same GPU model and torch version, so both are in the name.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Optional

import settings

log = logging.getLogger(__name__)



def cache_path(model: str, device: str) -> Path:
    """Where ``model``'s artifacts for this GPU model and torch version live."""
    import torch

    hardware = torch.cuda.get_device_name() if device == "cuda" else device
    name = re.sub(r"[^A-Za-z0-9.]+", "-", f"{model}-{hardware}-torch{torch.__version__}").strip("-")
    return settings.get("COMPILE_CACHE_DIR") / f"{name}.bin"


def restore(path: Path) -> Optional[int]:
    """Load the artifacts at ``path`` into PyTorch's caches; the number restored, None if absent."""
    import torch

    if not path.is_file():
        log.info("compile cache: none at %s; the first call at each size compiles", path)
        return None
    info = torch.compiler.load_cache_artifacts(path.read_bytes())
    count = sum(len(keys) for keys in info.artifacts.values()) if info is not None else 0
    log.info("compile cache: %d artifacts restored from %s", count, path)
    return count


def save(path: Path) -> int:
    """Write every artifact compiled so far in this process to ``path`` (atomically); its size."""
    import torch

    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        raise RuntimeError("nothing was compiled in this process: no artifacts to save")
    data = saved[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(path)
    return len(data)


def compile_denoiser(pipe: Any) -> None:
    """Mark the denoiser's repeated blocks for compilation on first call (nothing compiles now)."""
    denoiser = pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer
    denoiser.compile_repeated_blocks(fullgraph=True)
