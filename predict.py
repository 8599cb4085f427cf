"""Cog entry point: the adapter between Cog and the service, and nothing else.

Every input is declared once, as a field of the request models (``request.generation``,
``request.adetailer``). The parameters of ``predict()`` are rendered from those declarations by
``python service/cog_schema.py --write-predict`` as literal ``Input(...)`` calls, because ``cog build``
reads this file statically and cannot resolve anything else; a test fails when they differ. A
request then runs as the numbered steps of ``service.job.run_request``.

``predict`` is async so that Cog runs up to ``concurrency.max`` predictions at once (cog.yaml); each
runs on a worker thread, which Cog's context follows (logs and metrics stay per prediction). A
cancelled prediction sets its event, and its thread stops at the next denoising step.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
import time
import warnings
from pathlib import Path as _LocalPath
from typing import Any, Optional

from cog import BasePredictor, Input, Path

from request.inputs import FILE_INPUTS
from service.job import run_request
from service.outputs import OutputFolders
from startup.chain import ReadyService, run_startup

# predict()/BasePredictor keep this predictor working on every Cog version Replicate runs,
# including those that predate run()/BaseRunner; cog 0.23 warns about both on every start.
warnings.filterwarnings("ignore", message=r".*predict\(\) is deprecated", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=r"BasePredictor is deprecated", category=DeprecationWarning)

log = logging.getLogger("predict")


class Predictor(BasePredictor):
    def setup(self, weights: Optional[Any] = None) -> None:
        """Run the timed start-up chain; ``weights`` (Cog's COG_WEIGHTS) are the default model's, over its env var."""
        self.service: ReadyService = run_startup(str(weights) if weights else None)
        self.outputs = OutputFolders(_LocalPath(tempfile.mkdtemp(prefix="predictions-")))

    async def predict(
        self,
        # BEGIN inputs (service/cog_schema.py --write-predict)
        prompt: str = Input(default='', description='What to generate. With scenes: a style added to every scene (may be empty).', max_length=10000),
        model: Optional[str] = Input(default=None, description="Which model: sdxl, flux-dev or flux-schnell (those the operator has weights for). Empty: the operator's default.", choices=['sdxl', 'flux-dev', 'flux-schnell']),
        negative_prompt: str = Input(default='', description='What to steer away from.', max_length=10000),
        preset: str = Input(default='balanced', description='Quality preset: sets steps, guidance and IP-Adapter scale.', choices=['ultra_fast', 'fast', 'balanced', 'quality']),
        go_fast: Optional[bool] = Input(default=None, description="Faster and lossy, as replicate/cog-flux's go_fast: fp8 matmuls (on GPUs with fp8 tensor cores) and compiled blocks. A size not compiled yet, or a request with a LoRA or face_image, runs the exact path. Empty: on for Flux, off for SDXL."),
        num_inference_steps: Optional[int] = Input(default=None, description='Denoising steps. Empty: from the preset.', ge=1, le=100),
        guidance_scale: Optional[float] = Input(default=None, description='Classifier-free guidance. Empty: from the preset.', ge=0.0, le=20.0),
        aspect_ratio: str = Input(default='1:1', description="Image shape at about one megapixel. 'custom' uses width and height.", choices=['1:1', '16:9', '21:9', '3:2', '2:3', '4:5', '5:4', '3:4', '4:3', '9:16', '9:21', 'custom']),
        width: Optional[int] = Input(default=None, description='Image width; give it with height. Overrides aspect_ratio.', ge=64, le=2048),
        height: Optional[int] = Input(default=None, description='Image height; give it with width. Overrides aspect_ratio.', ge=64, le=2048),
        megapixels: str = Input(default='1', description='Output size: about 1 megapixel, or 0.25 for a quarter (aspect_ratio and image-derived sizes).', choices=['1', '0.25']),
        num_outputs: int = Input(default=1, description='Images to make.', ge=1, le=4),
        seed: Optional[int] = Input(default=None, description='Random seed. Empty: random; the seed used is logged and recorded.', ge=0, le=4294967295),
        scheduler: str = Input(default='K_EULER', description='Sampler.', choices=['K_EULER', 'K_EULER_ANCESTRAL', 'DPMSolverMultistep', 'KarrasDPM', 'DDIM', 'HeunDiscrete', 'PNDM']),
        output_format: str = Input(default='webp', description='Image file format.', choices=['webp', 'jpg', 'png']),
        output_quality: int = Input(default=80, description='Quality for webp and jpg (1-100). Ignored for png.', ge=1, le=100),
        face_image: Optional[Path] = Input(default=None, description='Reference face: keeps this identity in every image (IP-Adapter). Empty: none.'),
        ip_adapter_scale: Optional[float] = Input(default=None, description='How strongly face_image steers the image. Empty: from the preset.', ge=0.0, le=1.5),
        image: Optional[Path] = Input(default=None, description='Start from this image (img2img; with mask, inpainting). Without width and height the output keeps its aspect ratio at about 1 megapixel (or megapixels).'),
        prompt_strength: float = Input(default=0.8, description='With image: how much to change it. 1 ignores its content (only its size is used); 0 returns it unchanged.', ge=0.0, le=1.0),
        mask: Optional[Path] = Input(default=None, description='With image: what to repaint. White is repainted, black is kept (as cog-sdxl); resized to the image when its size differs.'),
        mask_keep_outside: bool = Input(default=True, description="With mask: paste the pixels outside the mask back exactly as given. false: keep the model's re-encoding of them."),
        lora_weights: str = Input(default='', description='A LoRA to apply: an http(s) URL of a .safetensors file, or of a tar holding one (diffusers/PEFT or kohya layout; SDXL or Flux, matching model). Empty: none.', max_length=2000),
        lora_scale: float = Input(default=1.0, description='How strongly lora_weights applies.', ge=-1.0, le=3.0),
        extra_lora: str = Input(default='', description='A second LoRA, stacked on lora_weights: an http(s) URL.', max_length=2000),
        extra_lora_scale: float = Input(default=1.0, description='How strongly extra_lora applies.', ge=-1.0, le=3.0),
        disable_safety_checker: bool = Input(default=False, description='Skip the safety checker (when the operator has one); images it flags are otherwise withheld.'),
        animate: bool = Input(default=False, description='Set the image in motion (Stable Video Diffusion): the output is an MP4. With scenes, every scene, and the clips joined in storyboard.mp4.'),
        motion: str = Input(default='medium', description='With animate: how much moves (sets motion_bucket_id, noise_aug_strength and fps).', choices=['subtle', 'medium', 'dynamic']),
        motion_bucket_id: Optional[int] = Input(default=None, description="With animate: SVD's motion amount. Empty: from motion.", ge=1, le=255),
        noise_aug_strength: Optional[float] = Input(default=None, description='With animate: noise added to the image (freer motion). Empty: from motion.', ge=0.0, le=1.0),
        video_fps: Optional[int] = Input(default=None, description='With animate: frames per second. Empty: from motion.', ge=6, le=30),
        video_frames: Optional[int] = Input(default=None, description="With animate: 14 or 25 frames, as the checkpoint allows. Empty: the checkpoint's.", ge=14, le=25),
        scenes: str = Input(default='', description='Storyboard: one scene per line, up to 12. Returns one image per scene and a contact sheet.', max_length=12000),
        character: str = Input(default='', description="Storyboard: the character description, put first in every scene's prompt.", max_length=2000),
        adetailer: bool = Input(default=False, description='Fix faces/hands after generation (ADetailer). Off unless true.'),
        adetailer_face: bool = Input(default=True, description='With adetailer: run the face pass.'),
        adetailer_hands: bool = Input(default=False, description='With adetailer: run the hands pass (after faces).'),
        adetailer_person: bool = Input(default=False, description="With adetailer: first run a person pass on the operator's person segmentation model (person_yolov8n-seg.pt in ADETAILER_MODELS); its masks are the segments."),
        ad_model: str = Input(default='auto', description="The face pass's detector: a YOLO file in the operator's ADETAILER_MODELS (face_yolov8n.pt...), mediapipe_face_full or mediapipe_face_short. auto: YOLO when present, else mediapipe.", max_length=200),
        ad_hand_model: str = Input(default='auto', description="The hands pass's detector: a YOLO file in ADETAILER_MODELS (hand_yolov8n.pt...) or mediapipe_hands. auto: YOLO when present, else mediapipe.", max_length=200),
        ad_confidence: float = Input(default=0.3, description='Detection confidence threshold.', ge=0.0, le=1.0),
        ad_mask_filter_method: str = Input(default='Area', description='How ad_mask_k picks its detections: the largest, or the most confident.', choices=['Area', 'Confidence']),
        ad_mask_k: int = Input(default=0, description='Keep only the top k detections (0 = all).', ge=0, le=20),
        ad_mask_k_largest: Optional[int] = Input(default=None, description='Deprecated: ad_mask_k with ad_mask_filter_method Area. Empty: unused.', ge=0, le=20),
        ad_mask_min_ratio: float = Input(default=0.0, description='Drop detections smaller than this share of the image.', ge=0.0, le=1.0),
        ad_mask_max_ratio: float = Input(default=1.0, description='Drop detections larger than this share of the image.', ge=0.0, le=1.0),
        ad_x_offset: int = Input(default=0, description='Move each mask right (>0) or left, pixels.', ge=-512, le=512),
        ad_y_offset: int = Input(default=0, description="Move each mask up (>0) or down, pixels (ADetailer's sign).", ge=-512, le=512),
        ad_dilate_erode: int = Input(default=4, description='Grow (>0) or shrink (<0) each mask, pixels.', ge=-128, le=128),
        ad_mask_merge_invert: str = Input(default='None', description='None: one inpaint per detection. Merge: one for all. Merge and Invert: everything but them.', choices=['None', 'Merge', 'Merge and Invert']),
        ad_mask_blur: int = Input(default=4, description='Feather the pasted mask edge, pixels.', ge=0, le=64),
        ad_denoising_strength: float = Input(default=0.4, description='How much the inpaint may change the region.', ge=0.0, le=1.0),
        ad_inpaint_only_masked: bool = Input(default=True, description='Inpaint a crop around each mask (true) or the whole image (false).'),
        ad_inpaint_only_masked_padding: int = Input(default=32, description='Context around each mask for the inpaint crop, pixels.', ge=0, le=256),
        ad_use_inpaint_width_height: bool = Input(default=False, description="Inpaint at ad_inpaint_width x ad_inpaint_height instead of the model's native area."),
        ad_inpaint_width: int = Input(default=512, description='With ad_use_inpaint_width_height: the inpaint width.', ge=64, le=2048),
        ad_inpaint_height: int = Input(default=512, description='With ad_use_inpaint_width_height: the inpaint height.', ge=64, le=2048),
        ad_prompt: str = Input(default='', description='Prompt for the inpaint; [SEP] gives each detection its own, [PROMPT] inserts the main prompt, [SKIP] skips a detection. Empty: the main prompt.', max_length=10000),
        ad_negative_prompt: str = Input(default='', description='Negative prompt for the inpaint, with [SEP] and [PROMPT]. Empty: the main one.', max_length=10000),
        ad_use_steps: bool = Input(default=False, description='Use ad_steps for the inpaint instead of the main steps.'),
        ad_steps: int = Input(default=28, description='With ad_use_steps: inpaint steps before strength.', ge=1, le=150),
        ad_use_cfg_scale: bool = Input(default=False, description='Use ad_cfg_scale for the inpaint instead of the main guidance.'),
        ad_cfg_scale: float = Input(default=7.0, description='With ad_use_cfg_scale: inpaint guidance.', ge=0.0, le=30.0),
        ad_use_sampler: bool = Input(default=False, description='Use ad_sampler for the inpaint instead of the main scheduler.'),
        ad_sampler: str = Input(default='DPM++ 2M Karras', description="With ad_use_sampler: the inpaint's sampler (A1111 or this service's names).", choices=['Euler', 'Euler a', 'DPM++ 2M', 'DPM++ 2M Karras', 'DDIM', 'Heun', 'PLMS', 'K_EULER', 'K_EULER_ANCESTRAL', 'DPMSolverMultistep', 'KarrasDPM', 'HeunDiscrete', 'PNDM']),
        # END inputs
    ) -> list[Path]:
        # locals() is exactly the inputs here: it must stay the first statement.
        raw = {name: value for name, value in locals().items() if name != "self"}
        cancel = threading.Event()
        try:
            return await asyncio.to_thread(self.predict_sync, cancel, **raw)
        except asyncio.CancelledError:
            cancel.set()  # the worker thread stops at its next denoising step
            raise

    def predict_sync(self, cancel: Optional[threading.Event] = None, **raw: Any) -> list[Path]:
        """One prediction on the calling thread (``raw``: every input by name, as ``predict`` takes them)."""
        started = time.perf_counter()
        service = self.service
        with self.outputs.fresh() as out_dir:
            result = run_request(raw, service.backend, service.default_source, service.available, out_dir, cancel)
        for name, value in result.metrics().items():
            self.record_metric(name, value)
        log.info("prediction done in %.2f s: %s", time.perf_counter() - started, ", ".join(map(str, result.paths)))
        return [Path(path) for path in result.paths]


# Cog's server (coglet 0.23) downloads every parameter annotated ``cog.Path`` before predict() runs,
# from any address, loopback included, and without a size cap; it picks them by
# ``typing.get_type_hints(predict)`` (coglet-python's input.rs), and takes a bare string as a local
# path. The schema, which ``cog build`` reads from the source above, keeps these inputs as files
# (``format: uri``: a file upload in Replicate's form); at run time they are declared plain strings,
# so the caller's URL reaches the service unfetched and goes through its fenced fetcher
# (request.reference_image). tests/test_fetch_http.py fails if coglet fetches one anyway.
for _name in FILE_INPUTS:
    Predictor.predict.__annotations__[_name] = "Optional[str]"
