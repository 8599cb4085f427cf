"""Per-step progress through diffusers' ``callback_on_step_end`` hook, in the form Replicate reads.

Replicate's prediction page and its clients find progress in the logs only in tqdm's own line
format, ``NN%|bar| i/N [elapsed<remaining, rate]`` (replicate-python's ``Prediction.Progress``
pattern, at the start of a line). So each step writes one line made by ``tqdm.format_meter``,
with the human-readable part (which image, the step's own time) after the rate, where the parser
does not look. One line per step, never a carriage return: Cog's logs are split into lines.

The callback only reads the host clock and logs; it never touches a tensor, so it adds no
host-device synchronisation to the denoising loop.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)


class StepProgress:
    """Logs a tqdm-format progress line per step, with the time since the previous step.

    The total is the pipeline's own count of the steps it runs (img2img and inpainting run only
    ``steps x strength`` of them), read when the first step ends; ``total_steps`` is the fallback.
    """

    def __init__(self, total_steps: int, label: str = "", quiet: bool = False) -> None:
        self.total_steps = total_steps
        self.quiet = quiet  # count steps without a line (a background warm-up must not move a caller's bar)
        self.label = f"{label} " if label else ""
        self.started = time.perf_counter()
        self._last = self.started
        self.steps_done = 0

    def __call__(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        now = time.perf_counter()
        total = getattr(pipe, "_num_timesteps", None) or self.total_steps
        self.steps_done = step + 1
        if not self.quiet:
            line = tqdm.format_meter(self.steps_done, total, now - self.started,
                                     postfix=f"{self.label}step {self.steps_done}/{total} {now - self._last:.3f} s")
            log.info("%s", line)
        self._last = now
        return callback_kwargs
