"""Timed, named start-up stages: ``[Timer: NAME]: S seconds`` lines plus a JSON record.

The lines (on stderr, with the other logs) are for people reading ``cog predict`` or Replicate logs; the JSON is for the
cold-start benchmark, which reads it instead of scraping logs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import settings


def print_timer(name: str, seconds: float) -> None:
    """The one ``[Timer: NAME]: S seconds`` line format, on stderr with the other logs."""
    print(f"[Timer: {name}]: {seconds:.3f} seconds", file=sys.stderr, flush=True)


class StageTimer:
    """Records each stage's wall time in order; ``finish`` prints the total and writes the JSON."""

    def __init__(self, path: Optional[Path] = None) -> None:
        self.path = path or settings.get("STARTUP_TIMINGS_PATH")
        self.stages: list[tuple[str, float]] = []
        self._started = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.stages.append((name, seconds))
            print_timer(name, seconds)

    def finish(self, completed: bool = True, **context: object) -> dict:
        """Print the total and write the record; ``context`` (device, weights...) goes in as is."""
        total = time.perf_counter() - self._started
        print_timer("total", total)
        record = {
            "stages": [{"name": name, "seconds": seconds} for name, seconds in self.stages],
            "total_seconds": total,
            "completed": completed,
            "pid": os.getpid(),
            "finished_at_unix": time.time(),
            **context,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(self.path)
        return record
