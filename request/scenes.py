"""Storyboard scenes as a request gives them: one per line."""

from __future__ import annotations

from request.errors import InputError

MAX_SCENES = 12


def parse_scenes(text: str) -> list[str]:
    """One scene per non-empty line, 1 to ``MAX_SCENES`` of them."""
    scenes = [line.strip() for line in text.splitlines() if line.strip()]
    if len(scenes) > MAX_SCENES:
        raise InputError("scenes", f"<{len(scenes)} scenes>", f"at most {MAX_SCENES} scenes, one per line")
    return scenes
