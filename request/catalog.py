"""What a request can name, as data: the models (with the options each supports and the classes
the pipeline builds them from), the samplers and the output formats.

It sits in the request layer so that a request is checked against its model's spec before anything
loads, downloads or evicts; the pipeline reads the loader-side columns from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class ModelSpec:
    name: str
    pipeline_class: str
    weights_env: str  # the setting that holds its weights (settings.SETTINGS)
    single_file: bool  # whether a single .safetensors checkpoint can be loaded (with shipped configs)
    negative_prompt: bool
    schedulers: bool  # whether the request's sampler choice applies
    ip_adapter: bool  # face_image (IP-Adapter identity)
    img2img_pipeline_class: str  # for a request's image, built with from_pipe
    inpaint_pipeline_class: str  # for a request's image and mask, and ADetailer's passes, built with from_pipe
    size_multiple: int  # width/height must be multiples of this
    family: str  # its family module (pipeline.families): how it loads, its denoiser, LoRA and IP-Adapter
    pipeline_module: str  # where pipeline_class lives: imported on its own in the imports stage
    go_fast_default: bool  # the go_fast input's default: replicate/cog-flux's for Flux; off for SDXL until measured faster


MODELS: Mapping[str, ModelSpec] = {
    "sdxl": ModelSpec(
        "sdxl", "StableDiffusionXLPipeline", "SDXL_WEIGHTS", single_file=True, negative_prompt=True,
        schedulers=True, ip_adapter=True, img2img_pipeline_class="StableDiffusionXLImg2ImgPipeline",
        inpaint_pipeline_class="StableDiffusionXLInpaintPipeline", size_multiple=8, family="sdxl",
        pipeline_module="diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl", go_fast_default=False,
    ),
    # Flux packs 2x2 latent patches over an 8x VAE: sides are multiples of 16. It has no
    # negative prompt and one sampler (flow-matching Euler).
    "flux-dev": ModelSpec(
        "flux-dev", "FluxPipeline", "FLUX_DEV_WEIGHTS", single_file=False, negative_prompt=False,
        schedulers=False, ip_adapter=True, img2img_pipeline_class="FluxImg2ImgPipeline",
        inpaint_pipeline_class="FluxInpaintPipeline", size_multiple=16, family="flux",
        pipeline_module="diffusers.pipelines.flux.pipeline_flux", go_fast_default=True,
    ),
    "flux-schnell": ModelSpec(
        "flux-schnell", "FluxPipeline", "FLUX_SCHNELL_WEIGHTS", single_file=False,
        negative_prompt=False, schedulers=False, ip_adapter=True, img2img_pipeline_class="FluxImg2ImgPipeline",
        inpaint_pipeline_class="FluxInpaintPipeline", size_multiple=16, family="flux",
        pipeline_module="diffusers.pipelines.flux.pipeline_flux", go_fast_default=True,
    ),
}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)

# Sampler names as Replicate's SDXL models call them -> (diffusers scheduler class name, extra config)
SCHEDULERS: Mapping[str, tuple[str, Mapping[str, Any]]] = {
    "K_EULER": ("EulerDiscreteScheduler", {}),
    "K_EULER_ANCESTRAL": ("EulerAncestralDiscreteScheduler", {}),
    "DPMSolverMultistep": ("DPMSolverMultistepScheduler", {}),
    "KarrasDPM": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),  # DPM++ 2M Karras
    "DDIM": ("DDIMScheduler", {}),
    "HeunDiscrete": ("HeunDiscreteScheduler", {}),
    "PNDM": ("PNDMScheduler", {}),
}
SCHEDULER_NAMES: tuple[str, ...] = tuple(SCHEDULERS)
DEFAULT_SCHEDULER = "K_EULER"

# format name -> (file suffix, Pillow format)
OUTPUT_FORMATS: Mapping[str, tuple[str, str]] = {"webp": (".webp", "WEBP"), "jpg": (".jpg", "JPEG"), "png": (".png", "PNG")}
