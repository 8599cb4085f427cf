"""Load SDXL from a diffusers folder or a single-file checkpoint, onto the chosen device.

Single-file checkpoints (the original Stability layout most community models ship in) carry no
configs or tokenizers; the project ships SDXL's in ``pipeline/configs/sdxl`` so loading never
touches a model hub.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from hardware.backend import Backend
from pipeline.loading.component_build import streamed_components
from pipeline.loading.placement import place_pipeline
from pipeline.loading.stream import WeightStream
from pipeline.loading.weights import WeightsError
from pipeline.models import LoadedModel, WeightsSource

log = logging.getLogger(__name__)

SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "sdxl"


def load_sdxl(source: WeightsSource, backend: Backend, single_file_config: Optional[Path] = None,
              stream: Optional[WeightStream] = None) -> LoadedModel:
    """Build the SDXL pipeline from ``source`` in the backend's precision and move it to its device.

    A diffusers folder placed whole on one device has its models built from a weight stream
    (``stream``, started early by the start-up chain, or here): see ``pipeline.loading.component_build``.
    """
    from diffusers import StableDiffusionXLPipeline

    # On CUDA, device_map places each tensor on the GPU as it is read, instead of building the
    # model in host memory and copying it afterwards (single files are converted on the host first;
    # offloading profiles place components themselves).
    profile = backend.settings
    direct = backend.device == "cuda" and source.layout == "diffusers" and profile.offload == "none"
    device_map = backend.device if direct else None
    streamable = source.layout == "diffusers" and profile.offload == "none"
    try:
        if source.layout == "diffusers":
            built = streamed_components(source.path, backend.dtype, backend.device, stream=stream) if streamable else {}
            pipe = StableDiffusionXLPipeline.from_pretrained(
                str(source.path), dtype=backend.dtype, use_safetensors=True, local_files_only=True,
                device_map=device_map, **built,
            )
        else:
            pipe = StableDiffusionXLPipeline.from_single_file(
                str(source.path),
                config=str(single_file_config or SHIPPED_CONFIG),
                dtype=backend.dtype,
                local_files_only=True,
            )
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise WeightsError(
            f"could not load SDXL from {source.path} ({source.layout} layout): {error}"
        ) from error
    place_pipeline(pipe, profile, backend.device, already_placed=device_map is not None)
    pipe.set_progress_bar_config(disable=True)  # per-step progress is logged by the generator
    return LoadedModel(pipe=pipe, base_scheduler_config=dict(pipe.scheduler.config), source=source, profile=profile)
