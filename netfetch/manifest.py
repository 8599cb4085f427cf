"""pget's multifile form: one ``URL relative/path`` per line, fetched into one folder.

Replicate's per-file weight layouts (Flux's, for one) are a list of files rather than one tar.
Each line's path must stay inside the folder; ``#sha256=HEX`` on a line's URL is checked. Blank
lines and lines starting with ``#`` are skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import PurePosixPath

from netfetch.errors import BadURL


@dataclass(frozen=True)
class ManifestLine:
    url: str
    path: str  # relative, normalised


def parse_manifest(text: str, field: str) -> list[ManifestLine]:
    lines = []
    seen = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise BadURL(f"{field}: manifest line {number} is not 'URL relative/path'")
        url, path = parts
        pure = PurePosixPath(path)
        normal = os.path.normpath(path)
        if pure.is_absolute() or normal.startswith("..") or normal in (".", "") or "\\" in path:
            raise BadURL(f"{field}: manifest line {number}: {path!r} is not a path inside the folder")
        if normal in seen:
            raise BadURL(f"{field}: manifest line {number}: {path!r} is listed twice")
        seen.add(normal)
        lines.append(ManifestLine(url, normal))
    if not lines:
        raise BadURL(f"{field}: the manifest lists no files")
    return lines
