"""The one log line a part of the import diet writes when it steps aside (``startup.import_diet``)."""

from __future__ import annotations

import logging

log = logging.getLogger("startup.import_diet")


def skipped(part: str, why: str) -> None:
    """``part`` of the diet does nothing this start, because ``why``; its imports run as usual."""
    log.warning("import diet: %s skipped (%s); those imports run as usual", part, why)
