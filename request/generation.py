"""A generation request: every input declared once, as a field of ``GenerationRequest``.

Cog's HTTP server only enforces ``Input(ge=, le=, choices=)`` when the image carries the schema
written by ``cog build``; run any other way it passes raw JSON through. So the service validates
everything itself, from the same declarations ``predict.py`` builds its inputs from, and checks a
request against its model's spec (``check_model_options``) before anything loads.
"""

from __future__ import annotations

import urllib.parse
from typing import Any, Literal, Mapping, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from presets import PRESET_NAMES
from presets.video import MOTION_NAMES
from request.catalog import DEFAULT_SCHEDULER, MODEL_NAMES, MODELS, OUTPUT_FORMATS, SCHEDULER_NAMES, ModelSpec
from request.errors import InputError
from request.fields import File, Flag, Int, Number, Text, parse
from request.reference_image import short
from request.scenes import MAX_SCENES, parse_scenes

# Replicate's usual aspect ratios, mapped to SDXL's trained ~1 megapixel buckets (multiples of 64).
ASPECT_RATIOS: Mapping[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "16:9": (1344, 768),
    "21:9": (1536, 640),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "4:5": (896, 1088),
    "5:4": (1088, 896),
    "3:4": (896, 1152),
    "4:3": (1152, 896),
    "9:16": (768, 1344),
    "9:21": (640, 1536),
}
CUSTOM_ASPECT = "custom"
MIN_SIDE, MAX_SIDE = 64, 2048  # the bounds of width and height
MEGAPIXELS = ("1", "0.25")  # as cog-flux: strings, scaling the aspect-ratio buckets and image-derived sizes
DEFAULT_PROMPT_STRENGTH = 0.8  # replicate/cog-sdxl's and cog-flux's
DEFAULT_LORA_SCALE = 1.0  # cog-flux's lora_scale and extra_lora_scale: -1 to 3
LORA_FIELDS = (("lora_weights", "lora_scale"), ("extra_lora", "extra_lora_scale"))


class GenerationRequest(BaseModel):
    """The generation inputs. After ``parse_request``, ``width`` and ``height`` hold the resolved size."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    prompt: Text = Field("", max_length=10_000,
                         description="What to generate. With scenes: a style added to every scene (may be empty).")
    model: Optional[Literal[MODEL_NAMES]] = Field(  # type: ignore[valid-type]
        None, description="Which model: sdxl, flux-dev or flux-schnell (those the operator has weights for). "
                          "Empty: the operator's default.")
    negative_prompt: Text = Field("", max_length=10_000, description="What to steer away from.")
    preset: Literal[PRESET_NAMES] = Field(  # type: ignore[valid-type]
        "balanced", description="Quality preset: sets steps, guidance and IP-Adapter scale.")
    go_fast: Optional[Flag] = Field(
        None, description="Faster and lossy, as replicate/cog-flux's go_fast: fp8 matmuls (on GPUs with fp8 tensor cores) "
                          "and compiled blocks. A size not compiled yet, or a request with a LoRA or face_image, runs "
                          "the exact path. Empty: on for Flux, off for SDXL.")
    num_inference_steps: Optional[Int] = Field(None, ge=1, le=100, description="Denoising steps. Empty: from the preset.")
    guidance_scale: Optional[Number] = Field(None, ge=0.0, le=20.0, description="Classifier-free guidance. Empty: from the preset.")
    aspect_ratio: Literal[(*ASPECT_RATIOS, CUSTOM_ASPECT)] = Field(  # type: ignore[valid-type]
        "1:1", description="Image shape at about one megapixel. 'custom' uses width and height.")
    width: Optional[Int] = Field(None, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8,
                                 description="Image width; give it with height. Overrides aspect_ratio.")
    height: Optional[Int] = Field(None, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8,
                                  description="Image height; give it with width. Overrides aspect_ratio.")
    megapixels: Literal[MEGAPIXELS] = Field(  # type: ignore[valid-type]
        "1", description="Output size: about 1 megapixel, or 0.25 for a quarter (aspect_ratio and image-derived sizes).")
    num_outputs: Int = Field(1, ge=1, le=4, description="Images to make.")
    seed: Optional[Int] = Field(None, ge=0, le=2**32 - 1,
                                description="Random seed. Empty: random; the seed used is logged and recorded.")
    scheduler: Literal[SCHEDULER_NAMES] = Field(DEFAULT_SCHEDULER, description="Sampler.")  # type: ignore[valid-type]
    output_format: Literal[tuple(OUTPUT_FORMATS)] = Field("webp", description="Image file format.")  # type: ignore[valid-type]
    output_quality: Int = Field(80, ge=1, le=100, description="Quality for webp and jpg (1-100). Ignored for png.")
    face_image: Optional[File] = Field(
        None, description="Reference face: keeps this identity in every image (IP-Adapter). Empty: none.")
    ip_adapter_scale: Optional[Number] = Field(
        None, ge=0.0, le=1.5, description="How strongly face_image steers the image. Empty: from the preset.")
    image: Optional[File] = Field(
        None, description="Start from this image (img2img; with mask, inpainting). Without width and height the "
                          "output keeps its aspect ratio at about 1 megapixel (or megapixels).")
    prompt_strength: Number = Field(
        DEFAULT_PROMPT_STRENGTH, ge=0.0, le=1.0,
        description="With image: how much to change it. 1 ignores its content (only its size is used); "
                    "0 returns it unchanged.")
    mask: Optional[File] = Field(
        None, description="With image: what to repaint. White is repainted, black is kept (as cog-sdxl); "
                          "resized to the image when its size differs.")
    mask_keep_outside: Flag = Field(
        True, description="With mask: paste the pixels outside the mask back exactly as given. "
                          "false: keep the model's re-encoding of them.")
    lora_weights: Text = Field(
        "", max_length=2_000, description="A LoRA to apply: an http(s) URL of a .safetensors file, or of a tar holding one "
                                          "(diffusers/PEFT or kohya layout; SDXL or Flux, matching model). Empty: none.")
    lora_scale: Number = Field(DEFAULT_LORA_SCALE, ge=-1.0, le=3.0, description="How strongly lora_weights applies.")
    extra_lora: Text = Field("", max_length=2_000, description="A second LoRA, stacked on lora_weights: an http(s) URL.")
    extra_lora_scale: Number = Field(DEFAULT_LORA_SCALE, ge=-1.0, le=3.0, description="How strongly extra_lora applies.")
    disable_safety_checker: Flag = Field(
        False, description="Skip the safety checker (when the operator has one); images it flags are otherwise withheld.")
    animate: Flag = Field(False, description="Set the image in motion (Stable Video Diffusion): the output is an MP4. "
                                              "With scenes, every scene, and the clips joined in storyboard.mp4.")
    motion: Literal[MOTION_NAMES] = Field(  # type: ignore[valid-type]
        "medium", description="With animate: how much moves (sets motion_bucket_id, noise_aug_strength and fps).")
    motion_bucket_id: Optional[Int] = Field(None, ge=1, le=255, description="With animate: SVD's motion amount. Empty: from motion.")
    noise_aug_strength: Optional[Number] = Field(
        None, ge=0.0, le=1.0, description="With animate: noise added to the image (freer motion). Empty: from motion.")
    video_fps: Optional[Int] = Field(None, ge=6, le=30, description="With animate: frames per second. Empty: from motion.")
    video_frames: Optional[Int] = Field(
        None, ge=14, le=25, description="With animate: 14 or 25 frames, as the checkpoint allows. Empty: the checkpoint's.")
    scenes: Text = Field("", max_length=12_000, description=f"Storyboard: one scene per line, up to {MAX_SCENES}. "
                                                            "Returns one image per scene and a contact sheet.")
    character: Text = Field("", max_length=2_000,
                            description="Storyboard: the character description, put first in every scene's prompt.")

    @property
    def scene_list(self) -> tuple[str, ...]:
        """The storyboard's scenes, one per non-empty line (empty: not a storyboard)."""
        return tuple(parse_scenes(self.scenes))

    @model_validator(mode="after")
    def _inputs_go_together(self) -> "GenerationRequest":
        scenes = self.scene_list  # refuses more than MAX_SCENES
        if not self.prompt.strip() and not scenes:
            raise InputError("prompt", self.prompt, "must not be empty (or give scenes)")
        if self.character.strip() and not scenes:
            raise InputError("character", self.character, "only applies with scenes")
        if self.ip_adapter_scale is not None and self.face_image is None:
            raise InputError("ip_adapter_scale", self.ip_adapter_scale, "only applies with face_image")
        if scenes and self.num_outputs != 1:
            raise InputError("num_outputs", self.num_outputs, "must be 1 with scenes (one image per scene)")
        if self.mask is not None and self.image is None:
            raise InputError("mask", short(str(self.mask)), "needs image: the picture whose white areas are repainted")
        if self.image is None and self.prompt_strength != DEFAULT_PROMPT_STRENGTH:
            raise InputError("prompt_strength", self.prompt_strength, "only applies with image")
        if not self.mask_keep_outside and self.mask is None:
            raise InputError("mask_keep_outside", False, "only applies with mask")
        if self.image is not None and scenes:
            raise InputError("image", short(str(self.image)), "not with scenes: a storyboard is made from text "
                                                          "(use face_image to keep a character)")
        _check_loras(self)
        _check_video(self)
        return self

def _size(aspect_ratio: str, width: Optional[int], height: Optional[int], megapixels: str,
          has_image: bool) -> tuple[Optional[int], Optional[int]]:
    """Explicit width and height win; then the image's own shape (settled when it is read, so None
    here); then the aspect ratio's trained bucket, scaled by ``megapixels``."""
    if (width is None) != (height is None):
        missing = "height" if height is None else "width"
        given = "width" if missing == "height" else "height"
        raise InputError(missing, None, f"required when {given} is given")
    if width is not None and height is not None:
        if megapixels != "1":
            raise InputError("megapixels", megapixels, "sizes aspect_ratio and image-derived outputs; leave it at 1 "
                                                       "with width and height")
        return width, height
    if has_image:
        if aspect_ratio not in ("1:1", CUSTOM_ASPECT):
            raise InputError("aspect_ratio", aspect_ratio, "with image the output keeps the image's aspect ratio; "
                                                           "give width and height to change it")
        return None, None
    if aspect_ratio == CUSTOM_ASPECT:
        raise InputError("aspect_ratio", aspect_ratio, "'custom' needs width and height")
    bucket_width, bucket_height = ASPECT_RATIOS[aspect_ratio]
    if megapixels == "1":
        return bucket_width, bucket_height
    scale = float(megapixels) ** 0.5  # the buckets are multiples of 64: halved, multiples of 32
    return int(bucket_width * scale), int(bucket_height * scale)


def _check_loras(request: GenerationRequest) -> None:
    """URLs are http(s) (where they may point is checked when fetched); a scale needs its LoRA."""
    urls = []
    for field, scale_field in LORA_FIELDS:
        url, scale = getattr(request, field).strip(), getattr(request, scale_field)
        if not url:
            if scale != DEFAULT_LORA_SCALE:
                raise InputError(scale_field, scale, f"only applies with {field}")
            continue
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InputError(field, url, "an http or https URL of a .safetensors file (or a tar holding one)")
        if url in urls:
            raise InputError(field, url, "the same LoRA as lora_weights; raise lora_scale instead")
        urls.append(url)


def _check_video(request: GenerationRequest) -> None:
    video_options = {"motion": request.motion != "medium", "motion_bucket_id": request.motion_bucket_id is not None,
                     "noise_aug_strength": request.noise_aug_strength is not None, "video_fps": request.video_fps is not None,
                     "video_frames": request.video_frames is not None}
    if not request.animate:
        for name, given in video_options.items():
            if given:
                raise InputError(name, getattr(request, name), "only applies with animate")
        return
    if request.video_frames not in (None, 14, 25):
        raise InputError("video_frames", request.video_frames, "14 or 25, as the checkpoint allows, or empty")
    if request.num_outputs != 1:
        raise InputError("num_outputs", request.num_outputs, "must be 1 with animate (one clip per image)")


def lora_inputs(request: GenerationRequest) -> list[tuple[str, str, float]]:
    """(field, URL, scale) of each LoRA the request names, in order."""
    return [(field, getattr(request, field).strip(), getattr(request, scale_field))
            for field, scale_field in LORA_FIELDS if getattr(request, field).strip()]


def parse_request(raw: Mapping[str, Any]) -> GenerationRequest:
    """Validate a raw input mapping (as Cog passes it) into a ``GenerationRequest`` with its size
    resolved (left empty when it follows ``image``, until the image is read), or raise ``InputError``.
    Unknown keys are refused rather than ignored: a misspelt option silently doing nothing is the
    kind of bug this service exists to avoid. Which inputs go together is the model's own rule
    (``GenerationRequest._inputs_go_together``), so a request built directly is checked too."""
    request = parse(GenerationRequest, raw)
    width, height = _size(request.aspect_ratio, request.width, request.height, request.megapixels,
                          request.image is not None)
    return request.model_copy(update={"width": width, "height": height})


def requested_model(requested: Optional[str], default: str, available: Sequence[str]) -> ModelSpec:
    """The spec of the request's model (the default when empty), or ``InputError`` naming the ones
    available here (those the operator configured weights for)."""
    name = requested or default
    if name not in available:
        raise InputError("model", name, "available here: " + ", ".join(available))
    return MODELS[name]


def check_model_options(request: GenerationRequest, spec: ModelSpec, ad_negative_prompt: str = "") -> None:
    """Refuse options the chosen model cannot honour, rather than half-apply them silently."""
    for name, value in (("negative_prompt", request.negative_prompt), ("ad_negative_prompt", ad_negative_prompt)):
        if value and not spec.negative_prompt:
            raise InputError(name, value, f"not supported by {spec.name}; leave it empty")
    if request.scheduler != DEFAULT_SCHEDULER and not spec.schedulers:
        raise InputError(
            "scheduler", request.scheduler, f"{spec.name} has one sampler (flow-matching Euler); leave scheduler at {DEFAULT_SCHEDULER}",
        )
    if request.face_image is not None and not spec.ip_adapter:
        raise InputError("face_image", str(request.face_image), f"not supported with {spec.name} yet; use sdxl")
    for name, value in (("width", request.width), ("height", request.height)):
        if value is not None and value % spec.size_multiple:
            raise InputError(name, value, f"a multiple of {spec.size_multiple} for {spec.name}")
