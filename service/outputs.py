"""Write generated images to disk in the requested format, one folder per prediction."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import settings
from request.catalog import OUTPUT_FORMATS


def save_images(
    images: Sequence[Any], out_dir: Path, output_format: str, quality: int, names: Optional[Sequence[str]] = None
) -> list[Path]:
    """Save each image as ``<name>.<format>`` (default ``out-<i>``); quality applies to webp and jpg only."""
    suffix, pil_format = OUTPUT_FORMATS[output_format]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        path = out_dir / f"{names[index] if names else f'out-{index}'}{suffix}"
        options = {} if output_format == "png" else {"quality": quality}
        image.convert("RGB").save(path, format=pil_format, **options)
        paths.append(path)
    return paths


class OutputFolders:
    """One folder per prediction, under ``root``, removed once it can no longer be in use.

    Cog reads a prediction's files after ``predict`` returns (to upload them or inline them), while
    up to ``COG_MAX_CONCURRENCY`` predictions run. So a folder is kept until ``4 x`` that many later
    predictions have finished and it finished ``min_age_s`` ago (a slow upload of a large file); a
    failed prediction's folder goes at once.
    """

    def __init__(self, root: Path, min_age_s: float = 600.0) -> None:
        self.root = root
        self.min_age_s = min_age_s
        self._count = 0
        self._finished: deque[tuple[Path, float]] = deque()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def fresh(self) -> Iterator[Path]:
        with self._lock:
            folder = self.root / str(self._count)
            self._count += 1
        try:
            yield folder
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        keep = 4 * max(1, settings.get("COG_MAX_CONCURRENCY"))
        now = time.monotonic()
        stale = []
        with self._lock:
            self._finished.append((folder, now))
            while len(self._finished) > keep and now - self._finished[0][1] >= self.min_age_s:
                stale.append(self._finished.popleft()[0])
        for old in stale:
            shutil.rmtree(old, ignore_errors=True)
