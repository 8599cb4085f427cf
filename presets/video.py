"""Image-to-video settings: a motion preset and the quality preset's steps, merged with the request's
overrides, and the hardware profile's decode chunk (all as data in ``presets/video.json``)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional

log = logging.getLogger(__name__)

VIDEO_FILE = Path(__file__).with_name("video.json")
MOTION_NAMES: tuple[str, ...] = ("subtle", "medium", "dynamic")


@lru_cache(maxsize=1)
def video_data() -> Mapping[str, Any]:
    data = json.loads(VIDEO_FILE.read_text())
    if tuple(data["motion"]) != MOTION_NAMES:
        raise ValueError(f"{VIDEO_FILE}: motion presets must be {MOTION_NAMES}")
    return data


@dataclass(frozen=True)
class VideoSettings:
    motion: str
    motion_bucket_id: int
    noise_aug_strength: float
    fps: int
    steps: int
    decode_chunk_size: int

    def describe(self) -> str:
        return (f"motion {self.motion}: bucket {self.motion_bucket_id}, noise {self.noise_aug_strength}, "
                f"{self.fps} fps, {self.steps} steps, decode chunk {self.decode_chunk_size}")


def resolve_video(motion: str, preset: str, profile: str, motion_bucket_id: Optional[int] = None,
                  noise_aug_strength: Optional[float] = None, fps: Optional[int] = None) -> VideoSettings:
    data = video_data()
    chosen = data["motion"][motion]
    settings = VideoSettings(
        motion=motion,
        motion_bucket_id=chosen["motion_bucket_id"] if motion_bucket_id is None else motion_bucket_id,
        noise_aug_strength=chosen["noise_aug_strength"] if noise_aug_strength is None else noise_aug_strength,
        fps=chosen["fps"] if fps is None else fps,
        steps=data["steps"][preset],
        decode_chunk_size=data["decode_chunk_size"].get(profile, 2),
    )
    log.info("video: %s", settings.describe())
    return settings
