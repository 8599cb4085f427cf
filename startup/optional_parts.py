"""Warm the optional parts (ADetailer, IP-Adapter, safety checker) in the background after start-up, when asked.

Off by default: a service whose callers never send ``adetailer`` or ``face_image`` should not pay
memory for them, and with it off nothing of theirs is even imported. An operator who knows they
will be used sets ``PRELOAD_OPTIONAL=adetailer,ip_adapter``: each part then loads on a background
thread right after READY, timed as ``[Timer: optional:NAME]``, and a request that needs one waits
only for that one (the model cache locks per entry).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Mapping, Optional

import settings
from startup.timers import print_timer

log = logging.getLogger(__name__)



def _adetailer(model: Any) -> None:
    from adetailer.runner import detector_for, inpaint_pipeline

    detector_for("face")
    detector_for("hands")
    inpaint_pipeline(model)


def _ip_adapter(model: Any) -> None:
    from pipeline.ip_adapter import load_adapter

    load_adapter(model)


def _safety_checker(model: Any) -> None:
    from pipeline.safety_checker import checker_for

    checker_for(model.pipe.device.type, model.pipe.dtype)


PARTS: Mapping[str, Callable[[Any], None]] = {
    "adetailer": _adetailer, "ip_adapter": _ip_adapter, "safety_checker": _safety_checker,
}


def requested_parts(env: Optional[Mapping[str, str]] = None) -> list[str]:
    names = [name.strip() for name in settings.get("PRELOAD_OPTIONAL", env).split(",") if name.strip()]
    unknown = [name for name in names if name not in PARTS]
    if unknown:
        raise settings.SettingError(f"$PRELOAD_OPTIONAL: unknown part(s) {', '.join(unknown)}; allowed {', '.join(PARTS)}")
    return names


def start_preload(model: Any, parts: list[str]) -> Optional[threading.Thread]:
    """Load ``parts`` one after another on a daemon thread; failures are logged, never raised."""
    if not parts:
        return None

    def run() -> None:
        for name in parts:
            started = time.perf_counter()
            try:
                PARTS[name](model)
            except Exception as error:  # a missing optional part must not take the service down
                log.warning("optional part %s not preloaded: %s", name, error)
            print_timer(f"optional:{name}", time.perf_counter() - started)

    thread = threading.Thread(target=run, name="optional-preload", daemon=True)
    thread.start()
    return thread
