"""Per-step progress through diffusers' ``callback_on_step_end`` hook.

The callback only reads the host clock and logs; it never touches a tensor, so it adds no
host-device synchronisation to the denoising loop.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)


class StepProgress:
    """Logs ``step i/N`` with the time since the previous step."""

    def __init__(self, total_steps: int, label: str = "") -> None:
        self.total_steps = total_steps
        self.label = f"{label} " if label else ""
        self.started = time.perf_counter()
        self._last = self.started

    def __call__(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        now = time.perf_counter()
        log.info("%sstep %d/%d (%.3f s)", self.label, step + 1, self.total_steps, now - self._last)
        self._last = now
        return callback_kwargs
