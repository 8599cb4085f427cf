"""Regional ``torch.compile`` of the go_fast denoiser, and the compiled-artifact file that makes it
quick.

Only the repeated blocks are compiled (diffusers' ``compile_repeated_blocks``: SDXL's transformer
blocks, Flux's double and single blocks), one static graph per input size (``dynamic=False``:
static kernels are the faster ones, and a size compiled later never changes the kernels of one
compiled before). Compiling happens on the go_fast path's background thread, never in a request
(``pipeline.fast_path``).

The artifact file holds PyTorch's compiler caches (``torch.compiler.save_cache_artifacts``), built
once per GPU model, torch version and model by ``bench/build_compile_cache.py`` on that GPU. Restored
at start, inductor's code generation and autotuning become cache hits. It is a pickle, so it is read
only from the operator's ``COMPILE_CACHE`` (a path or URL, like the weights) or ``COMPILE_CACHE_DIR``,
never from a request.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Optional

import settings

log = logging.getLogger(__name__)

MAX_ARTIFACT_BYTES = 4 << 30


def cache_name(model: str, device: str) -> str:
    """The artifact's file name: artifacts are valid only for one GPU model and torch version."""
    import torch

    hardware = torch.cuda.get_device_name() if device == "cuda" else device
    return re.sub(r"[^A-Za-z0-9.]+", "-", f"{model}-{hardware}-torch{torch.__version__}").strip("-") + ".bin"


def cache_path(model: str, device: str) -> Path:
    """Where ``bench/build_compile_cache.py`` writes ``model``'s artifacts, and the service looks when
    ``COMPILE_CACHE`` is unset."""
    return settings.get("COMPILE_CACHE_DIR") / cache_name(model, device)


def artifact_bytes(model: str, device: str) -> tuple[Optional[bytes], str]:
    """The artifact file's bytes (None when there is none) and where they came from: ``COMPILE_CACHE``
    (a path, or a URL fetched through ``netfetch`` into the weights cache), else this GPU's file in
    ``COMPILE_CACHE_DIR``."""
    given = settings.get("COMPILE_CACHE")
    if given and given.startswith(("http://", "https://")):
        from netfetch import FetchPolicy, cache

        policy = FetchPolicy(field="COMPILE_CACHE", trusted=True, deadline_s=float(settings.get("WEIGHTS_FETCH_TIMEOUT_S")),
                             max_bytes=MAX_ARTIFACT_BYTES, max_unpacked=MAX_ARTIFACT_BYTES)
        entry = cache.fetch(given, Path(settings.get("WEIGHTS_CACHE")), policy, refuse_pickles=False)
        return entry.path.read_bytes(), given
    path = Path(given).expanduser() if given else cache_path(model, device)
    if not path.is_file():
        if given:
            raise FileNotFoundError(f"COMPILE_CACHE={given}: no such file")
        return None, str(path)
    return path.read_bytes(), str(path)


def restore(data: bytes, origin: str) -> int:
    """Load artifacts into PyTorch's caches; how many were restored."""
    import torch

    info = torch.compiler.load_cache_artifacts(data)
    count = sum(len(keys) for keys in info.artifacts.values()) if info is not None else 0
    log.info("compile cache: %d artifacts restored from %s", count, origin)
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


def compile_blocks(denoiser: Any, backend: str, graphs_per_block: int) -> None:
    """Mark ``denoiser``'s repeated blocks for compilation (each compiles on its first call at a new
    size) and let each block keep ``graphs_per_block`` static graphs. Dynamo's recompile limit is a
    documented setting; where this torch has none by that name, more sizes run uncompiled (logged)."""
    import torch._dynamo.config as dynamo_config

    if hasattr(dynamo_config, "recompile_limit"):
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, graphs_per_block)
    else:
        log.warning("go_fast: torch._dynamo.config has no recompile_limit; blocks compile at most the default sizes")
    denoiser.compile_repeated_blocks(fullgraph=True, dynamic=False, backend=backend)
