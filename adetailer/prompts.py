"""ADetailer's prompt syntax: one prompt per detection.

``[SEP]`` splits ``ad_prompt`` into prompts for the first, second, ... detection of a pass (the last
one serves every detection after it); ``[PROMPT]`` stands for the main prompt; an empty part means
the main prompt; a part that is ``[SKIP]`` leaves that detection as it is. The negative prompt takes
``[SEP]`` and ``[PROMPT]`` the same way. This is the extension's reading, so prompts written for
A1111 or Forge mean the same here.
"""

from __future__ import annotations

from typing import Optional

SEP, PROMPT, SKIP = "[SEP]", "[PROMPT]", "[SKIP]"


def _parts(text: str, main: str) -> list[str]:
    return [part.strip().replace(PROMPT, main) or main for part in text.split(SEP)]


def detection_prompts(ad_prompt: str, main: str, count: int) -> list[Optional[str]]:
    """The prompt for each of ``count`` detections, in order; None for one to skip."""
    parts = _parts(ad_prompt, main)
    chosen = [parts[min(i, len(parts) - 1)] for i in range(count)]
    return [None if prompt == SKIP else prompt for prompt in chosen]


def detection_negatives(ad_negative: str, main: str, count: int) -> list[str]:
    parts = _parts(ad_negative, main)
    return [parts[min(i, len(parts) - 1)] for i in range(count)]
