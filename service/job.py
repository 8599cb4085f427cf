"""One prediction, as numbered steps: the table of contents of a request. ``predict.py`` calls only
``run_request``; each step is a call into the layer that owns it."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import settings as service_settings
from hardware.backend import Backend
from hardware.memory import free_gpu_bytes
from pipeline import video
from pipeline.coalesce import Arrival, Member, arrivals, batch_capacity, coalescer_for
from pipeline.families import family_for
from pipeline.generate import Batch, generate, pick_seed
from pipeline.ip_adapter import Identity, identity_for
from pipeline.lora import Lora, LoraRejected, applied, fetch_loras
from pipeline.models import LoadedModel, WeightsSource
from pipeline.progress import CANCEL, check_cancelled
from pipeline.safety_checker import checker_for
from pipeline.select import model_in_use
from pipeline.storyboard import batches, contact_sheet, scene_prompts, storyboard_batch_size
from presets import EffectiveSettings, resolve
from presets.video import resolve_video
from request.adetailer import ADetailerArgs, parse_adetailer_args
from request.errors import InputError
from request.generation import GenerationRequest, check_model_options, lora_inputs, parse_request, requested_model
from request.image_inputs import ImageInputs, load_image_inputs
from request.inputs import split_inputs
from request.reference_image import load_reference_image
from service.outputs import save_images

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    images: list[Any]
    prompts: list[str]  # the prompt that made each image
    seed: int
    generation_seconds: float
    steps: int
    sheet: Optional[Any] = None
    timings: dict[str, float] = field(default_factory=dict)
    paths: list[Path] = field(default_factory=list)
    numbers: Optional[list[int]] = None  # each image's number in the request (1-based), once some were withheld
    counts: dict[str, int] = field(default_factory=dict)  # whole-number metrics (nsfw_dropped)
    go_fast: bool = False  # the go_fast input, its default resolved for the model
    fast_path: str = "exact"  # what denoised: "exact", or the go_fast recipe ("fp8+compile", "compile")
    fp8_layers: int = 0  # Linear layers that computed in fp8
    batch_images: int = 1  # images denoised together with this request's (its own included)
    batch_callers: int = 1  # requests in that batch (pipeline.coalesce)
    cuda_graph_captures: int = 0  # the model's CUDA graphs captured so far, one per denoiser input shape

    def outputs(self) -> tuple[list[Any], Optional[list[str]]]:
        """Images to save and their file names (None: ``out-<i>``); a storyboard ends with its sheet."""
        if self.sheet is None:
            return self.images, None
        numbers = self.numbers or list(range(1, len(self.images) + 1))
        return self.images + [self.sheet], [f"scene-{i:02d}" for i in numbers] + ["contact-sheet"]

    def metrics(self) -> dict[str, Any]:
        """Cog metrics for this prediction (Cog adds its own ``predict_time``)."""
        values: dict[str, Any] = {
            "seed": self.seed, "steps": self.steps, "generation_seconds": round(self.generation_seconds, 4),
            "go_fast": self.go_fast, "fast_path": self.fast_path, "fp8_layers": self.fp8_layers,
            "batch_images": self.batch_images, "batch_callers": self.batch_callers,
            "cuda_graph_captures": self.cuda_graph_captures,
        }
        if self.sheet is not None:
            values["seconds_per_scene"] = round(self.generation_seconds / len(self.images), 4)
        elif self.steps:
            values["steps_per_second"] = round(self.steps / self.generation_seconds, 3)
        values.update({name: round(seconds, 4) for name, seconds in self.timings.items()})
        values.update(self.counts)
        return values


def run_request(raw: Mapping[str, Any], backend: Backend, default: WeightsSource, available: Sequence[str],
                out_dir: Path, cancel: Optional[threading.Event] = None) -> JobResult:
    """``cancel``: set by the caller's cancellation; every denoising run of this request stops at its
    next step, and the request between its steps."""
    token = CANCEL.set(cancel or threading.Event())
    try:
        return _run(raw, backend, default, available, out_dir)
    finally:
        CANCEL.reset(token)


@dataclass(frozen=True)
class Prepared:
    """A request validated and ready to generate: everything steps 1-6 settled."""

    request: GenerationRequest
    ad_args: ADetailerArgs
    settings: EffectiveSettings
    loras: list[Lora]
    model: LoadedModel
    identity: Identity
    start: Optional[ImageInputs]
    seed: int
    go_fast: bool
    face_given: bool


def _prepare(raw: Mapping[str, Any], backend: Backend, default: WeightsSource, available: Sequence[str],
             hold: contextlib.ExitStack) -> Prepared:
    """Steps 1-6; the selected model is held in use until ``hold`` closes."""
    # 1. Validate everything first: nothing loads, downloads or evicts for a request that is refused.
    generation_inputs, adetailer_inputs = split_inputs(raw)
    request = parse_request(generation_inputs)
    ad_args = parse_adetailer_args(adetailer_inputs)
    if not ad_args.need_skip():
        from adetailer.runner import check_detectors  # imported only when a request asks for ADetailer

        check_detectors(ad_args)
    spec = requested_model(request.model, default.model, available)
    check_model_options(request, spec, ad_args.ad_negative_prompt)
    reference = load_reference_image(request.face_image) if request.face_image is not None else None
    if request.animate and video.configured() is None:
        raise InputError("animate", True, "no video model here (SVD_WEIGHTS); models available: " + ", ".join(available))
    start: Optional[ImageInputs] = None
    if request.image is not None:  # the caller's picture (and mask): read, sized, and the size settled
        request, start = load_image_inputs(request, spec.size_multiple)

    # 2. Resolve the preset with the request's overrides.
    settings = resolve(spec.name, request.preset, request.num_inference_steps, request.guidance_scale,
                       request.ip_adapter_scale)

    # 3. The LoRAs, fetched or from the cache: a bad one is refused before any model loads or is evicted.
    loras = fetch_loras(lora_inputs(request))

    # 4. Select the model, loading it on first use; held by this request, so it is not evicted under it.
    model = hold.enter_context(model_in_use(spec.name, default, backend))

    # 5. Identity: the IP-Adapter, loaded on first use, when a face is given.
    identity = identity_for(model, reference, settings.ip_adapter_scale, guidance=settings.guidance_scale > 1)

    # 6. The seed: the request's, or a fresh one (logged, so any image can be made again); go_fast's default.
    seed = pick_seed(request.seed)
    log.info("Using seed: %d", seed)
    go_fast = spec.go_fast_default if request.go_fast is None else request.go_fast
    return Prepared(request, ad_args, settings, loras, model, identity, start, seed, go_fast, reference is not None)


def _run(raw: Mapping[str, Any], backend: Backend, default: WeightsSource, available: Sequence[str],
         out_dir: Path) -> JobResult:
    with contextlib.ExitStack() as held:
        arrival = held.enter_context(arrivals.arrive())  # a batch forming now may wait for this request
        hold = held.enter_context(contextlib.ExitStack())  # on the image model, until its images are made
        job = _prepare(raw, backend, default, available, hold)
        return _generate_and_finish(job, backend, out_dir, arrival, hold)


def _generate_and_finish(job: Prepared, backend: Backend, out_dir: Path, arrival: Arrival,
                         hold: contextlib.ExitStack) -> JobResult:
    """Steps 7-10; ``hold`` (the request's hold on its image model) ends before the video step,
    which may need the model's memory."""
    request, settings, model, seed = job.request, job.settings, job.model, job.seed
    check_cancelled()
    timings: dict[str, float] = {}
    window_s = _batch_window_s()
    if window_s > 0 and _batchable(job):
        # 7-8. Generate, in one batch with other compatible requests arriving now, if any; then faces and hands.
        made = _generate_batched(job, backend, window_s, arrival, timings)
    else:
        arrival.leave()
        made = _generate_alone(job, backend, timings)
    if job.loras:
        timings["lora_fetch_seconds"] = sum(lora.file.seconds for lora in job.loras)
    check_cancelled()

    # 9. The safety checker, unless the request turns it off.
    images, prompts = made.images, made.prompts
    checked = _check_safety(images, prompts, model) if not request.disable_safety_checker else Checked(images, prompts)
    timings.update(checked.timings)
    result = JobResult(checked.images, checked.prompts, seed, made.seconds, made.steps, timings=timings,
                       numbers=checked.numbers, counts=checked.counts, go_fast=job.go_fast, fast_path=made.fast_path,
                       fp8_layers=model.fast.fp8_layers if made.fast_path != "exact" and model.fast is not None else 0,
                       batch_images=made.batch_images, batch_callers=made.batch_callers,
                       cuda_graph_captures=_graph_captures(model))

    # 10. The outputs: MP4 clips when animated; else the images (a storyboard's with its contact sheet).
    if request.animate:
        check_cancelled()
        hold.close()
        result.paths, clip_timings = _animate(result, request, settings.preset, backend, out_dir)
        result.timings.update(clip_timings)
        return result
    if request.scene_list:
        result.sheet = contact_sheet(result.images)
    images_out, names = result.outputs()
    result.paths = save_images(images_out, out_dir, request.output_format, request.output_quality, names)
    return result


def _batch_window_s() -> float:
    """The batching window (``BATCH_WINDOW_MS``); 0 where only one prediction runs at a time."""
    window = service_settings.get("BATCH_WINDOW_MS")
    if window is None:
        window = service_settings.BATCH_WINDOW_DEFAULT_MS if service_settings.get("COG_MAX_CONCURRENCY") > 1 else 0.0
    return max(0.0, window) / 1000


def _batchable(job: Prepared) -> bool:
    """Only plain text-to-image shares a batch: an image input, a face, a LoRA or a storyboard makes
    the pipeline call the request's own."""
    return job.start is None and not job.face_given and not job.loras and not job.request.scene_list


@dataclass(frozen=True)
class Made:
    """What steps 7 and 8 made: the images, the prompt of each, and how they were denoised."""

    images: list[Any]
    prompts: list[str]
    seconds: float  # the denoising run's (a batch's, when batched)
    steps: int
    fast_path: str
    batch_images: int  # images denoised together (a storyboard's largest chunk)
    batch_callers: int


def _generate_alone(job: Prepared, backend: Backend, timings: dict[str, float]) -> Made:
    """Steps 7 and 8 under the model's lock, with the request's LoRAs and identity on."""
    request, model = job.request, job.model
    with model.lock, _loras_on(model, job.loras) as lora_timings:  # nothing else may change the pipeline meanwhile
        # 7. Generate: one batch, or a storyboard's scenes (with the request's LoRAs on, if any).
        started = time.perf_counter()
        with job.identity.active(job.settings.ip_adapter_scale):
            images, prompts, steps, fast_path, together = _generate(model, backend.device, request, job.settings,
                                                                    job.seed, job.identity, job.start, job.go_fast)
        seconds = time.perf_counter() - started

        # 8. Fix faces and hands, only when the request asks for it (with the same LoRAs on).
        if not job.ad_args.need_skip():
            images, timings["adetailer_seconds"] = _fix_details(model, images, prompts, job.seed, job.ad_args, request,
                                                                job.settings)
    timings.update(lora_timings)
    return Made(images, prompts, seconds, steps, fast_path, together, 1)


def _generate_batched(job: Prepared, backend: Backend, window_s: float, arrival: Arrival,
                      timings: dict[str, float]) -> Made:
    """Step 7 through the model's coalescer (it takes the lock for the batch), then step 8 under
    the lock on its own: a batched request has no LoRA to keep on."""
    request, model = job.request, job.model
    profile = model.profile or backend.settings
    capacity = batch_capacity(model, request.width, request.height, job.settings.guidance_scale, job.go_fast,
                              profile.max_batch_images, lambda: free_gpu_bytes(backend.device))
    member = Member(request.prompt, request.negative_prompt, request.num_outputs, job.seed)
    result = coalescer_for(model).run(member, request, job.settings, job.go_fast, window_s, capacity,
                                      service_settings.get("COG_MAX_CONCURRENCY"), arrival)
    timings.update(batch_wait_seconds=member.waited, batch_window_seconds=member.gathered,
                   batch_refill_seconds=member.refilled)
    images, prompts = result.images, [request.prompt] * len(result.images)
    if not job.ad_args.need_skip():
        with model.lock:
            images, timings["adetailer_seconds"] = _fix_details(model, images, prompts, job.seed, job.ad_args, request,
                                                                job.settings)
    return Made(images, prompts, result.seconds, result.steps, result.fast_path, member.batch_images,
                member.batch_callers)


def _graph_captures(model: LoadedModel) -> int:
    """CUDA graphs the model's denoisers (exact and go_fast) have captured so far."""
    runners = [model.graphs, model.fast.graphs if model.fast is not None else None]
    return sum(sum(getattr(runner, "captures", {}).values()) for runner in runners)


def _animate(result: JobResult, request: GenerationRequest, preset: str, backend: Backend,
             out_dir: Path) -> tuple[list[Path], dict[str, float]]:
    """One clip per image (per scene of a storyboard, joined in order into ``storyboard.mp4``), and
    the video's timings."""
    model = video.video_model(backend)
    with model.holders.held():
        return _animate_with(model, result, request, preset, backend, out_dir)


def _animate_with(model: video.VideoModel, result: JobResult, request: GenerationRequest, preset: str,
                  backend: Backend, out_dir: Path) -> tuple[list[Path], dict[str, float]]:
    frames = request.video_frames or model.num_frames
    if frames > model.num_frames:
        raise InputError("video_frames", frames, f"this checkpoint makes at most {model.num_frames} frames")
    motion = resolve_video(request.motion, preset, backend.settings.name, request.motion_bucket_id,
                           request.noise_aug_strength, request.video_fps)
    numbers = result.numbers or list(range(1, len(result.images) + 1))
    stem = "scene" if request.scene_list else "out"
    started = time.perf_counter()
    paths, clips = [], []
    for index, (number, image) in enumerate(zip(numbers, result.images, strict=True)):
        clip_started = time.perf_counter()
        clip = video.animate(model, image, frames, motion, result.seed + number - 1,
                             f"clip {index + 1}/{len(result.images)}")
        name = f"{stem}-{number:02d}.mp4" if request.scene_list else f"{stem}-{index}.mp4"
        paths.append(video.encode_mp4(clip, motion.fps, out_dir / name))
        clips.append(clip)
        log.info("clip %d/%d: %d frames at %d fps in %.2f s", index + 1, len(result.images), len(clip), motion.fps,
                 time.perf_counter() - clip_started)
    if request.scene_list:
        paths.append(video.encode_mp4([frame for clip in clips for frame in clip], motion.fps, out_dir / "storyboard.mp4"))
    seconds = time.perf_counter() - started
    return paths, {"video_seconds": seconds, "seconds_per_clip": seconds / len(clips)}


def _generate(model: LoadedModel, device: str, request: GenerationRequest, settings: EffectiveSettings, seed: int,
              identity: Identity, start: Optional[ImageInputs], go_fast: bool) -> tuple[list[Any], list[str], int, str, int]:
    """The images, the prompt that made each, the denoising steps each ran, what denoised (the
    last batch's: a storyboard's first scenes may run exact while go_fast compiles), and the most
    images denoised together. Image ``i`` of a
    batch, and scene ``i`` of a storyboard, uses ``seed + i``, so any one can be redone alone."""
    if not request.scene_list:
        unchanged = start.nothing_to_do() if start is not None else None
        if unchanged:
            log.info("%s; returning the input image unchanged", unchanged)
            return ([start.given.copy() for _ in range(request.num_outputs)], [request.prompt] * request.num_outputs, 0,
                    "exact", 0)
        batch = Batch([request.prompt], request.num_outputs, seed)
        result = generate(model, batch, request, settings, identity.pipeline_kwargs(batch.size), start, go_fast=go_fast)
        return result.images, [request.prompt] * request.num_outputs, result.steps, result.fast_path, batch.size
    prompts = scene_prompts(request.scene_list, request.character, request.prompt)
    size = storyboard_batch_size(family_for(model.spec), device, free_gpu_bytes(device), request.width, request.height,
                                 len(prompts))
    log.info("storyboard: %d scenes in batches of %d", len(prompts), size)
    started = time.perf_counter()
    images: list[Any] = []
    steps, fast_path = 0, "exact"
    for chunk in batches(len(prompts), size):
        label = f"scene {chunk.start + 1}" if len(chunk) == 1 else f"scenes {chunk.start + 1}-{chunk.stop}"
        batch = Batch([prompts[i] for i in chunk], 1, seed + chunk.start, label)
        result = generate(model, batch, request, settings, identity.pipeline_kwargs(batch.size), go_fast=go_fast)
        images += result.images
        steps, fast_path = result.steps, result.fast_path
    log.info("storyboard: %d scenes in %.2f s", len(images), time.perf_counter() - started)
    return images, prompts, steps, fast_path, size


class AllImagesWithheld(RuntimeError):
    """The safety checker flagged every image of the prediction."""


@dataclass(frozen=True)
class Checked:
    """The images the safety checker let through, each with its prompt and its number in the request."""

    images: list[Any]
    prompts: list[str]
    numbers: Optional[list[int]] = None  # set once some were withheld
    counts: dict[str, int] = field(default_factory=dict)  # nsfw_dropped
    timings: dict[str, float] = field(default_factory=dict)


def _check_safety(images: list[Any], prompts: list[str], model: LoadedModel) -> Checked:
    """Withhold the images the checker flags (logged by number and why); fail when none is left."""
    started = time.perf_counter()
    checker = checker_for(model.pipe.device.type, model.pipe.dtype)
    if checker is None:
        log.info("safety checker: none configured; %d image(s) returned unchecked", len(images))
        return Checked(images, prompts)
    verdicts = checker.verdicts(images)
    seconds = time.perf_counter() - started
    dropped = sum(reason is not None for reason in verdicts)
    for number, reason in enumerate(verdicts, start=1):
        if reason:
            log.warning("safety checker: image %d withheld: %s", number, reason)
    if dropped == len(images):
        raise AllImagesWithheld(f"All {len(images)} image(s) were flagged as NSFW by the safety checker and withheld. "
                                "Try again with another seed or prompt.")
    kept = [number for number, reason in enumerate(verdicts, start=1) if reason is None]
    log.info("safety checker: %d of %d image(s) passed in %.3f s", len(kept), len(verdicts), seconds)
    return Checked([images[n - 1] for n in kept], [prompts[n - 1] for n in kept], kept if dropped else None,
                   {"nsfw_dropped": dropped}, {"safety_check_seconds": seconds})


@contextlib.contextmanager
def _loras_on(model: LoadedModel, loras: list) -> Iterator[dict[str, float]]:
    """The request's LoRAs on for the block; one that cannot go on this model is an error naming its field."""
    try:
        with applied(model, loras) as timings:
            yield timings
    except LoraRejected as error:
        raise InputError(error.lora.field, error.lora.file.url, str(error)) from None


def _fix_details(model: LoadedModel, images: list[Any], prompts: list[str], seed: int, ad_args: ADetailerArgs,
                 request: GenerationRequest, settings: EffectiveSettings) -> tuple[list[Any], float]:
    """The images with faces and hands fixed, and the seconds it took."""
    from adetailer.runner import run_adetailer  # imported only when a request asks for it

    started = time.perf_counter()
    fixed = run_adetailer(model, images, ad_args, prompts, request.negative_prompt, settings, seed, request.scheduler)
    return fixed, time.perf_counter() - started
