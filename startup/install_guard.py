"""Make sure nothing installs Python packages while the service runs.

The system this replaces reinstalled bitsandbytes at start-up, costing minutes and sometimes
breaking the CUDA build. Libraries still try (ultralytics auto-installs missing requirements).
Python's audit hooks are the interpreter's own extension point for vetoing process launches, so
the guard uses one instead of patching ``subprocess``: any ``pip install``-like command started by
this process raises ``InstallBlockedError`` and is logged.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import shlex
import sys
from typing import Any, Mapping, Optional, Sequence

log = logging.getLogger(__name__)

WATCHED_PACKAGES: tuple[str, ...] = ("bitsandbytes", "xformers")

# Environment that tells libraries with an auto-install feature not to use it, and makes any pip
# that still runs fail fast instead of reaching for an index.
NO_INSTALL_ENV: Mapping[str, str] = {
    "YOLO_AUTOINSTALL": "false",
    "YOLO_OFFLINE": "true",
    "PIP_NO_INDEX": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
}

_INSTALL_VERBS = frozenset({"install", "add", "sync", "download"})
_INSTALLERS = frozenset({"pip", "pip3", "uv", "conda", "mamba", "micromamba", "easy_install", "poetry"})


class InstallBlockedError(RuntimeError):
    """Raised in place of starting a package installer."""


def _words(command: Any) -> list[str]:
    if isinstance(command, (bytes, bytearray)):
        command = command.decode(errors="replace")
    if isinstance(command, str):
        try:
            return shlex.split(command)
        except ValueError:
            return command.split()
    if isinstance(command, (list, tuple)):
        return [os.fsdecode(part) if isinstance(part, (bytes, os.PathLike)) else str(part) for part in command]
    return []


def is_install_command(command: Any) -> bool:
    """True for ``pip install x``, ``python -m pip install x``, ``uv pip install x``, ``sh -c 'pip install x'`` and kin."""
    words = _words(command)
    for index, word in enumerate(words):
        base = os.path.basename(word)
        if base.startswith("pip") and base.rstrip("0123456789.") == "pip":
            base = "pip"
        if base in _INSTALLERS and any(w in _INSTALL_VERBS for w in words[index + 1 :]):
            return True
        if base in ("sh", "bash", "dash", "zsh") and "-c" in words[index + 1 :]:
            script = words[words.index("-c", index) + 1 :]
            if script and is_install_command(script[0]):
                return True
    return False


def _audit_hook(event: str, args: tuple) -> None:
    command: Optional[Any] = None
    if event == "subprocess.Popen":
        command = args[1]
    elif event == "os.system":
        command = args[0]
    elif event in ("os.exec", "os.posix_spawn", "os.spawn"):
        command = args[1]
    if command is not None and is_install_command(command):
        text = " ".join(_words(command))
        log.error("install guard: blocked a package install at run time: %s", text)
        raise InstallBlockedError(f"package installs are disabled in this service: {text}")


@functools.lru_cache(maxsize=1)
def install_guard() -> None:
    """Install the audit hook and the no-install environment once per process."""
    for key, value in NO_INSTALL_ENV.items():
        os.environ.setdefault(key, value)
    sys.addaudithook(_audit_hook)


def package_report(packages: Sequence[str] = WATCHED_PACKAGES) -> dict[str, Optional[str]]:
    """Installed version of each watched package (None if absent), read from metadata without importing."""
    report: dict[str, Optional[str]] = {}
    for name in packages:
        try:
            report[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            report[name] = None
    return report
