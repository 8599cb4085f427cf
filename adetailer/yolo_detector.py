"""Detectors on ultralytics YOLO checkpoints (ADetailer's face_yolov8n.pt, hand_yolov8n.pt,
person_yolov8n-seg.pt, ...).

A ``.pt`` file is a pickle and unpickling runs code, so checkpoints are only ever taken from the
operator's weights folder, never from a path or URL a request supplies. ultralytics (and torch) are
imported in the constructor only, to keep importing this module cheap.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from adetailer.detection import Box, Detections
from adetailer.mask import box_mask, clip_box

# Model size letters, smallest first; "c"/"e" are YOLOv9's compact/extended sizes.
SIZE_ORDER = "nsmclxe"
SIZE_PATTERN = re.compile(r"yolo(?:v)?\d+([a-z])")


def find_yolo_weights(folder: Path, kind: str) -> Optional[Path]:
    """The checkpoint to use for ``kind`` ("face", "hand"): among ``folder``'s ``.pt`` files
    named ``kind...``, the smallest model size wins, because detection only has to localise for
    inpainting and the small models are much faster; ties break by file name so the pick never
    depends on directory order. None when the folder is missing or holds no match."""
    if not kind:
        raise ValueError("kind must be non-empty, e.g. 'face' or 'hand'")
    folder = Path(folder)
    if not folder.is_dir():
        return None
    prefix = kind.lower()
    matches = [
        path
        for path in folder.iterdir()
        if path.suffix.lower() == ".pt" and path.name.lower().startswith(prefix) and path.is_file()
    ]
    return min(matches, key=lambda path: (size_rank(path.stem), path.name), default=None)


def size_rank(stem: str) -> int:
    """Position of the model size letter in ``SIZE_ORDER``; unrecognised names sort last."""
    found = SIZE_PATTERN.search(stem.lower())
    letter = found.group(1) if found else ""
    return SIZE_ORDER.index(letter) if letter and letter in SIZE_ORDER else len(SIZE_ORDER)


def offline_ultralytics() -> None:
    """ultralytics otherwise probes the network on import and pip-installs missing extras at
    runtime; a serving container must do neither. Set before the first import, which reads them."""
    os.environ["YOLO_OFFLINE"] = "true"
    os.environ["YOLO_AUTOINSTALL"] = "false"


def pick_device() -> str:
    """Use the GPU when there is one; ultralytics' own default would do the same but less
    visibly."""
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


class YoloDetector:
    """One loaded YOLO checkpoint; masks are the model's segments when it is a segmentation
    model, filled boxes otherwise."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        if path.suffix.lower() != ".pt" or not path.is_file():
            # Checked here: given a missing name, ultralytics would try to download it.
            raise FileNotFoundError(f"no YOLO checkpoint (.pt file) at {path}")
        offline_ultralytics()
        from ultralytics import YOLO

        self.name = path.stem
        self.path = path
        self.device = pick_device()
        self._model = YOLO(str(path))
        # The predictor keeps per-call state on the model; concurrent calls would clash.
        self._lock = threading.Lock()

    def detect(self, image: Image.Image, confidence: float) -> Detections:
        """Objects scoring at least ``confidence``."""
        # A PIL image, not an array: ultralytics reads arrays as BGR.
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        with self._lock:
            # retina_masks: segments come back at the input image size with the letterbox
            # padding already removed, which a plain resize of the model-size masks would get wrong.
            result = self._model.predict(
                rgb, conf=confidence, device=self.device, retina_masks=True, verbose=False
            )[0]
        return self._to_detections(result, image.size, confidence)

    def _to_detections(self, result: Any, size: tuple[int, int], confidence: float) -> Detections:
        xyxy = result.boxes.xyxy.cpu().numpy().tolist()
        scores = result.boxes.conf.cpu().numpy().tolist()
        segments = None if result.masks is None else result.masks.data.cpu().numpy()
        boxes: list[Box] = []
        masks: list[Image.Image] = []
        kept: list[float] = []
        for index, (coords, score) in enumerate(zip(xyxy, scores, strict=True)):
            box = clip_box(*coords, size)
            if box is None or score < confidence:
                continue
            boxes.append(box)
            kept.append(float(score))
            masks.append(box_mask(box, size) if segments is None else segment_mask(segments[index], size))
        return Detections(boxes=boxes, masks=masks, scores=kept, backend=self.name)


def segment_mask(segment: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """One model segment as a 0/255 "L" image of the input size; resized (nearest, so it stays
    binary) only if ultralytics returned another size."""
    mask = Image.fromarray(np.where(segment > 0.5, 255, 0).astype(np.uint8))
    return mask if mask.size == size else mask.resize(size, Image.NEAREST)
