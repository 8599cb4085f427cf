"""Remove the Cog server's own command-line flags before any library parses ``sys.argv``.

Cog's server is started as ``python -m cog.server.http --await-explicit-shutdown true
--upload-url ...``. Where the predictor shares that process, libraries that call
``argparse.parse_args()`` at import or load time (training scripts turned into libraries, some
model repos) die on flags they do not know. Filtering them first makes that impossible.
"""

from __future__ import annotations

import sys
from typing import Mapping, Sequence

# flag -> how it takes a value: "value" always consumes the next token; "bool" consumes it only
# when it looks like a boolean (the server declares these with type=bool, so they take one).
SERVER_FLAGS: Mapping[str, str] = {
    "--await-explicit-shutdown": "bool",
    "--upload-url": "value",
    "--threads": "value",
    "--x-mode": "value",
    "--host": "value",
}
_BOOL_WORDS = frozenset({"true", "false", "1", "0", "yes", "no"})


def split_server_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Return ``(kept, removed)``: ``argv`` without the server's flags and their values."""
    kept: list[str] = []
    removed: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        name = token.split("=", 1)[0]
        style = SERVER_FLAGS.get(name)
        if style is None:
            kept.append(token)
            index += 1
            continue
        removed.append(token)
        index += 1
        if "=" in token or index >= len(argv):
            continue
        following = argv[index]
        if style == "value" or following.lower() in _BOOL_WORDS:
            removed.append(following)
            index += 1
    return kept, removed


def filter_sys_argv() -> list[str]:
    """Strip server flags from ``sys.argv`` in place (program name kept); return what was removed."""
    if not sys.argv:
        return []
    kept, removed = split_server_flags(sys.argv[1:])
    sys.argv[1:] = kept
    return removed
