"""Log formatting for what a user of ``cog predict`` or the Replicate log view reads."""

from __future__ import annotations

import logging
import sys

PROJECT_LOGGERS = ("predict", "service", "startup", "pipeline", "adetailer", "request", "hardware", "netfetch", "presets",
                   "settings")


class _ProjectHandler(logging.StreamHandler):
    """Marker type so configuring twice never adds a second handler."""


def configure_logging(level: int = logging.INFO) -> None:
    """Plain ``message`` lines for this project's loggers on stderr; libraries stay at WARNING.

    Records still propagate to the root logger, which has no handler in the Cog worker (so nothing
    prints twice) and lets test tools such as pytest's ``caplog`` see them.
    """
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not any(isinstance(handler, _ProjectHandler) for handler in logger.handlers):
            handler = _ProjectHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
