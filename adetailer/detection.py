"""The one result type every detector backend returns, and the interface they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels, x2/y2 exclusive


@dataclass(frozen=True)
class Detections:
    """What a detector found on one image, in matching order.

    ``masks`` are PIL images of mode ``"L"`` with the input image's size: 255 inside the object,
    0 outside (a filled box for box-only detectors, the segment for segmentation models).
    """

    boxes: list[Box] = field(default_factory=list)
    masks: list[Any] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    backend: str = ""

    def __len__(self) -> int:
        return len(self.boxes)


class Detector(Protocol):
    """A loaded detector. ``detect`` drops results scoring below ``confidence``."""

    name: str

    def detect(self, image: Any, confidence: float) -> Detections: ...
