"""The start-up chain ``Predictor.setup()`` runs: named stages in order, each timed.

Order matters: server flags are stripped before any library can parse ``sys.argv``; the install
guard is armed before anything heavy is imported (imports are where auto-installers fire); the
weight files start streaming into the page cache before torch is imported; torch is imported by
the backend stage (which also starts CUDA in the background); the weights stage checks the files
and starts streaming them onto the device (``pipeline.loading.stream``) before the imports stage
imports diffusers (on the diet of ``startup.import_diet``), which the stream overlaps; the load stage builds the models from the streamed
tensors; the warm-up stage (CUDA, ``WARMUP``) generates once so that the first caller's image pays no
first-use costs. Each cost is visible as its own stage. Optional parts (ADetailer, IP-Adapter) are
not loaded here at all: they load on the first request that asks for them. After the last stage,
go_fast's denoiser starts compiling in the background for a model whose go_fast is on by default.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hardware.backend import Backend, configure_backend, start_device_init
from netfetch import FetchError
from pipeline.fast_path import start_if_default_on
from pipeline.loading.remote import RemoteWeights, is_url
from pipeline.loading.weights import WeightsError, available_models, configured_weights, default_model_name, resolve_weights
from pipeline.models import LoadedModel, WeightsSource
from pipeline.safety_checker import report_configuration as report_safety_checker
from pipeline.select import feed_remote_stream, load_source, start_weight_stream
from pipeline.warmup import warm_up, warmup_enabled
from request.catalog import MODELS
from startup.cmdargs import filter_sys_argv
from startup.deferred_modules import still_deferred
from startup.import_diet import diet, pause_collector, resume_collector
from startup.install_guard import install_guard, package_report
from startup.logs import configure_logging
from startup.optional_parts import requested_parts, start_preload
from startup.prefetch import start_prefetch
from startup.timers import StageTimer

log = logging.getLogger(__name__)

# The stages run_startup times, in order; the cold-start benchmark checks every one reported.
STAGES: tuple[str, ...] = ("argv_filter", "install_guard", "prefetch", "backend", "weights", "imports", "load")
OPTIONAL_STAGES: tuple[str, ...] = ("warmup",)  # run where enabled (pipeline.warmup)


@dataclass(frozen=True)
class ReadyService:
    """What setup leaves behind for ``predict()``: the default model loaded, the others on demand.

    It keeps the default model's source, not the model: the model cache alone holds models, so an
    evicted model's memory is really freed (and a later request loads it again).
    """

    backend: Backend
    default_source: WeightsSource
    timings: dict
    available: tuple[str, ...]  # models whose weights are configured; the default first
    preload: Optional[threading.Thread] = None  # the optional parts' background warm-up, if asked for

    @property
    def model(self) -> LoadedModel:
        """The default model (from the cache; loaded again if it was evicted)."""
        return load_source(self.default_source, self.backend)


def import_pipeline_classes(model: str) -> None:
    """Import the default model's pipeline code now, so its cost shows as its own stage, and silence
    the loaders' progress bars: in Cog's logs they are noise, and per-step progress is logged apart."""
    import importlib

    importlib.import_module(MODELS[model].pipeline_module)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def weights_field(explicit: Optional[str], model: str) -> str:
    """The setting a weights URL came from, named in its errors."""
    return "COG_WEIGHTS" if explicit else MODELS[model].weights_env


def _fetched_source(remote: RemoteWeights, setting: str, model: str) -> WeightsSource:
    """The URL's download, once proven complete and committed, checked as a local folder is."""
    try:
        entry = remote.wait()
    except FetchError as error:
        raise WeightsError(str(error)) from error
    except OSError as error:  # the cache folder: not writable, or the disk full
        raise WeightsError(f"{remote.field}: could not keep the download in $WEIGHTS_CACHE ({error})") from error
    return resolve_weights(setting, model=model, fetched=entry.path)


def run_startup(weights: Optional[str] = None, timings_path: Optional[Path] = None) -> ReadyService:
    """Run every stage; on failure the JSON still records the stages that finished."""
    configure_logging()
    timer = StageTimer(timings_path)
    collector_paused = pause_collector()  # until the imports are done (startup.import_diet)
    try:
        with timer.stage("argv_filter"):
            removed = filter_sys_argv()
            if removed:
                log.info("removed server flags from sys.argv: %s", " ".join(removed))
        with timer.stage("install_guard"):
            install_guard()
            packages = package_report()
            log.info(
                "install guard: run-time package installs blocked; %s",
                ", ".join(f"{name} {version or 'not installed'}" for name, version in packages.items()),
            )
        default_model = default_model_name()
        optional = requested_parts()
        setting = configured_weights(weights, default_model)
        with timer.stage("prefetch"):  # a local folder into the page cache, or a URL's download begun
            remote = RemoteWeights(setting, weights_field(weights, default_model)).start() if is_url(setting) else None
            prefetch = start_prefetch(setting) if remote is None else None
        with timer.stage("backend"):
            backend = configure_backend(packages)
            device_ready = start_device_init(backend)
        with timer.stage("weights"):
            report_safety_checker()  # a stat; REQUIRE_SAFETY_CHECKER=1 without weights stops here
            if remote is None:
                source = resolve_weights(setting, model=default_model)
                stream = start_weight_stream(source, backend, ready=device_ready)
            else:  # the download goes on through the imports; its files stream as they arrive
                stream = feed_remote_stream(remote, default_model, backend, ready=device_ready)
        with timer.stage("imports"), diet(backend.settings):
            import_pipeline_classes(default_model)
        resume_collector(collector_paused)
        collector_paused = None
        with timer.stage("load"):
            if remote is not None:
                source = _fetched_source(remote, setting, default_model)
            device_ready.join()
            if prefetch is not None:  # the stream's loader waits per file; without one, wait here
                prefetch.join(timeout=0 if stream is not None else None)
            model = load_source(source, backend, stream=stream)
        if warmup_enabled(backend.device):
            with timer.stage("warmup"):
                warm_up(model)
    except BaseException:
        resume_collector(collector_paused)
        timer.finish(completed=False)
        raise
    timings = timer.finish(device=backend.device, dtype=backend.dtype_name, weights=str(source.path), model=default_model)
    available = tuple(name for name in available_models(weights, default_model) if name != default_model)
    log.info("models: %s loaded (default)%s", default_model, "; on demand: " + ", ".join(available) if available else "")
    waiting = still_deferred()
    if waiting:
        log.info("import diet: still deferred until first use: %s", ", ".join(waiting))
    model = load_source(source, backend)
    preload = start_preload(model, optional)
    start_if_default_on(model)
    return ReadyService(backend, source, timings, (default_model, *available), preload)
