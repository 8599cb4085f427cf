"""Per-step progress through diffusers' ``callback_on_step_end`` hook, in the form Replicate reads,
for each caller following the run, and the callers' cancellation checked at every step.

Replicate's prediction page and its clients find progress in the logs only in tqdm's own line
format, ``NN%|bar| i/N [elapsed<remaining, rate]`` (replicate-python's ``Prediction.Progress``
pattern, at the start of a line). So each step writes one line made by ``tqdm.format_meter``,
with the human-readable part (which image, the step's own time) after the rate, where the parser
does not look. One line per step, never a carriage return: Cog's logs are split into lines.

Cog files a log line, and a metric, under the prediction whose context is current (coglet keeps
the prediction in a context variable). A batch coalesced from several predictions runs on one
thread, so each caller's line is written inside that caller's own context (``Listener.context``).

The callback only reads the host clock and logs; it never touches a tensor, so it adds no
host-device synchronisation to the denoising loop.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from tqdm import tqdm

log = logging.getLogger(__name__)


class Canceled(Exception):
    """Every caller of a denoising run has cancelled: the run stops at the end of the current step."""


# The running prediction's cancellation, set by whoever runs it (``service.job``); every denoising
# run on its thread (generation, ADetailer's inpaints, video) stops at the next step once it is set.
CANCEL: contextvars.ContextVar[Optional[threading.Event]] = contextvars.ContextVar("cancel", default=None)


def current_cancel() -> threading.Event:
    """The running request's cancellation; outside any request (a warm-up), an event of its own."""
    return CANCEL.get() or threading.Event()


def check_cancelled() -> None:
    """Between steps of a request: stop here if its caller has cancelled."""
    event = CANCEL.get()
    if event is not None and event.is_set():
        raise Canceled("cancelled")


@dataclass
class Listener:
    """One caller following a denoising run: where its log lines go, and its cancellation."""

    label: str = ""
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    cancelled: threading.Event = field(default_factory=current_cancel)

    def say(self, line: str) -> None:
        self.context.run(log.info, "%s", line)


class StepProgress:
    """Logs a tqdm-format progress line per step for every listener that has not cancelled, with the
    time since the previous step; raises ``Canceled`` once all have.

    The total is the pipeline's own count of the steps it runs (img2img and inpainting run only
    ``steps x strength`` of them), read when the first step ends; ``total_steps`` is the fallback.
    """

    def __init__(self, total_steps: int, label: str = "", quiet: bool = False,
                 listeners: Optional[Sequence[Listener]] = None) -> None:
        self.total_steps = total_steps
        self.quiet = quiet  # count steps without a line (a background warm-up must not move a caller's bar)
        self.listeners = list(listeners) if listeners else [Listener(label)]
        self.started = time.perf_counter()
        self._last = self.started
        self.steps_done = 0

    def __call__(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        now = time.perf_counter()
        total = getattr(pipe, "_num_timesteps", None) or self.total_steps
        self.steps_done = step + 1
        following = [listener for listener in self.listeners if not listener.cancelled.is_set()]
        if not following:
            raise Canceled(f"cancelled at step {self.steps_done}/{total}")
        if not self.quiet:
            for listener in following:
                label = f"{listener.label} " if listener.label else ""
                listener.say(tqdm.format_meter(self.steps_done, total, now - self.started,
                                               postfix=f"{label}step {self.steps_done}/{total} {now - self._last:.3f} s"))
        self._last = now
        return callback_kwargs
