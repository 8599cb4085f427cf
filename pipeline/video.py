"""Image-to-video with Stable Video Diffusion: the storyboard's scenes (or one image) set in motion and
encoded as H.264 MP4.

The video model loads on first use, from ``SVD_WEIGHTS`` (a folder, or a URL fetched once like other
weights), through the one model cache: it is sized before it loads and the least recently used
models are evicted when memory is short, as for SDXL and Flux (on the H200 profile all three fit).

Each frame is the model's native size: SVD's 1024x576 in the image's orientation (576x1024 for a
portrait), from the checkpoint's own config (``sample_size x the VAE's factor``, 768 for SVD, times
4/3 and 3/4). The image is letterboxed into it: scaled to fit whole, with black bars on the sides
that do not match, never cropped or stretched.

Encoding is PyAV's: its wheel ships ffmpeg's libraries (libx264 included), so no system ffmpeg is
needed, and it writes frames from memory without a subprocess. H.264, yuv420p, ``+faststart`` (the
index first, so a browser plays while it downloads).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageOps

import settings
from hardware.backend import Backend
from pipeline.generate import generators_for
from pipeline.loading.cache import MODEL_CACHE
from pipeline.loading.component_build import weight_files
from pipeline.models import Holders
from pipeline.progress import StepProgress
from pipeline.select import free_bytes
from presets.video import VideoSettings

log = logging.getLogger(__name__)


class NoVideoModel(ValueError):
    """No video weights are configured."""


@dataclass
class VideoModel:
    pipe: Any
    path: Path
    num_frames: int  # what the checkpoint was trained for: 14 (SVD) or 25 (SVD-XT)
    base: int  # sample_size x the VAE's factor: 768 for SVD
    holders: Holders = field(default_factory=Holders, repr=False, compare=False)  # requests animating with it

    def frame_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The native frame, 4:3 of ``base`` long and 3:4 short (1024x576 for SVD), in the image's orientation."""
        long, short = (8 * round(self.base * 4 / 3 / 8), 8 * round(self.base * 3 / 4 / 8))
        return (long, short) if image_size[0] >= image_size[1] else (short, long)


def configured() -> Path | None:
    """The video weights' folder, fetched once when given as a URL; None when there are none."""
    value = str(settings.get("SVD_WEIGHTS"))
    if value.startswith(("http://", "https://")):
        from pipeline.loading.remote import fetch_weights

        return fetch_weights(value, "SVD_WEIGHTS").path
    folder = Path(value)
    return folder if (folder / "model_index.json").is_file() else None


def video_model(backend: Backend) -> VideoModel:
    """The loaded video model (loading it on first use, evicting others if memory is short)."""
    folder = configured()
    if folder is None:
        raise NoVideoModel(f"no video weights at {settings.get('SVD_WEIGHTS')} (SVD_WEIGHTS)")

    def load() -> VideoModel:
        import torch
        from diffusers import StableVideoDiffusionPipeline

        started = time.perf_counter()
        dtype = torch.float16 if backend.device == "cuda" else torch.float32
        pipe = StableVideoDiffusionPipeline.from_pretrained(folder, dtype=dtype, local_files_only=True)
        pipe = pipe.to(backend.device)
        pipe.set_progress_bar_config(disable=True)
        model = VideoModel(pipe, folder, pipe.unet.config.num_frames, pipe.unet.config.sample_size * pipe.vae_scale_factor)
        log.info("video model %s loaded in %.2f s (%d frames)", folder, time.perf_counter() - started, model.num_frames)
        return model

    def size() -> int:  # the image models' sizing: the component files model_index.json lists
        return sum(path.stat().st_size for path in weight_files(folder))

    return MODEL_CACHE.get_or_load(f"svd:{folder.resolve()}", load, size_bytes=size, free=free_bytes(backend))


def letterbox(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` scaled to fit inside ``size`` whole, centred on black."""
    return ImageOps.pad(image.convert("RGB"), size, Image.LANCZOS, color=(0, 0, 0))


def animate(model: VideoModel, image: Image.Image, frames: int, video: VideoSettings, seed: int, label: str) -> list[Image.Image]:
    """``frames`` frames of ``image`` in motion."""
    import torch

    size = model.frame_size(image.size)
    steps = video.steps
    with torch.inference_mode():
        output = model.pipe(
            letterbox(image, size), width=size[0], height=size[1], num_frames=frames,
            num_inference_steps=steps, fps=video.fps, motion_bucket_id=video.motion_bucket_id,
            noise_aug_strength=video.noise_aug_strength, decode_chunk_size=video.decode_chunk_size,
            generator=generators_for(seed, 1)[0], callback_on_step_end=StepProgress(steps, label),
        )
    return list(output.frames[0])


def encode_mp4(frames: Sequence[Image.Image], fps: int, path: Path) -> Path:
    """H.264 in MP4, yuv420p, index first; sides rounded down to even (yuv420p needs it)."""
    import av

    width, height = (2 * (side // 2) for side in frames[0].size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            picture = frame.convert("RGB").crop((0, 0, width, height))
            for packet in stream.encode(av.VideoFrame.from_image(picture)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
