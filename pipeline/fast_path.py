"""go_fast: a faster denoiser beside the exact one, built and compiled in the background.

The exact model is never changed, so ``go_fast=false`` stays the same image bit for bit. The fast
denoiser is a copy of its module tree that shares every tensor (``pipeline.speed.fp8.shared_copy``);
only the Linear layers torchao quantises to fp8 take new memory. Its repeated blocks are compiled
one static graph per size, on this module's own thread, after READY.

A request takes the fast denoiser only at a size already compiled, and only while nothing is being
compiled; it then runs under the compiler stance ``eager_on_recompile``, so a guard that fails runs
that block uncompiled instead of compiling. At any other size the request runs the exact path and
queues its size: no caller ever waits for a compiler. A warm-up waits for the fast requests in
flight to finish, and they for it, so compiled code never runs while the compiler works.

Warm-up calls go through ``pipeline.generate`` itself (on pipelines of their own, with their own
schedulers) so that they compile exactly the graphs a request runs; they print no progress lines.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import settings
from pipeline.families import family_for
from pipeline.generate import Batch, generate
from pipeline.loading.cache import MODEL_CACHE
from pipeline.models import LoadedModel
from pipeline.variants import on_same_modules, variant_class
from presets import resolve
from request.generation import ASPECT_RATIOS, MEGAPIXELS, parse_request

log = logging.getLogger(__name__)

WARM_PROMPT = "warm-up"
WARM_STEPS = 2
MAX_IMAGES = 4  # num_outputs' bound: the batch sizes a block may be compiled for
IDLE_WAIT_S = 10.0  # how long a compile waits for the request running now to finish


@dataclass(frozen=True)
class Shape:
    """What a compiled block is specific to: the image size, the images per call, and whether
    classifier-free guidance doubles the denoiser's batch (the family says when it does)."""

    width: int
    height: int
    images: int
    guided: bool

    def __str__(self) -> str:
        return f"{self.width}x{self.height}, {self.images} image(s){', guided' if self.guided else ''}"


def warm_sizes() -> list[tuple[int, int]]:
    """``GO_FAST_SIZES`` (``WxH,...``), or Replicate's aspect-ratio buckets at each megapixel choice."""
    raw = settings.get("GO_FAST_SIZES")
    if raw:
        sizes = []
        for item in raw.split(","):
            try:
                width, height = (int(side) for side in item.strip().lower().split("x"))
            except ValueError:
                raise settings.SettingError(f"$GO_FAST_SIZES={raw!r}: expected WIDTHxHEIGHT,... (e.g. 1024x1024,768x1344)") from None
            sizes.append((width, height))
        return sizes
    sizes = []
    for megapixels in MEGAPIXELS:
        for ratio in ASPECT_RATIOS:
            request = parse_request({"prompt": WARM_PROMPT, "aspect_ratio": ratio, "megapixels": megapixels})
            sizes.append((request.width, request.height))
    return list(dict.fromkeys(sizes))


class FastPath:
    """The go_fast denoiser of one loaded model, and which sizes it is compiled for."""

    def __init__(self, model: LoadedModel, recipe: str, compiler: str) -> None:
        self.model = model
        self.family = family_for(model.spec)
        self.recipe = recipe  # "fp8" (quantised and compiled) or "compile" (bf16, compiled)
        self.compiler = compiler
        self.state = "idle"  # idle -> building -> ready, or failed
        self.error = ""
        self.fp8_layers = 0
        self.graphs: Optional[Any] = None  # its own CUDA-graph runner (the exact one's graphs are of other kernels)
        self.warm_seconds: dict[Shape, float] = {}
        self._pipes: dict[str, Any] = {}
        self._warm_pipe: Optional[Any] = None
        self._ready: set[Shape] = set()
        self._failures: collections.Counter[Shape] = collections.Counter()
        self._failed: set[Shape] = set()  # sizes whose compile failed twice: they keep the exact path
        self._queue: collections.deque[Shape] = collections.deque()
        self._cond = threading.Condition()
        self._users = 0  # requests running on the fast denoiser now
        self._compiling = False
        self._warming = threading.local()
        self._thread: Optional[threading.Thread] = None

    @property
    def name(self) -> str:
        return "fp8+compile" if self.recipe == "fp8" else "compile"

    def shape(self, width: int, height: int, images: int, guidance_scale: float) -> Shape:
        return Shape(width, height, images, self.family.doubles_batch(guidance_scale))

    # -- the request side --------------------------------------------------------------------------

    def warming(self) -> bool:
        """Whether this thread is the fast path's own, compiling."""
        return getattr(self._warming, "shape", None) is not None

    @contextlib.contextmanager
    def use(self, kind: str, shape: Shape) -> Iterator[Optional[tuple[Any, Optional[Any]]]]:
        """Within the block: (pipeline, CUDA-graph runner) on the fast denoiser for ``kind`` at
        ``shape``, or None when it is not compiled for that shape yet (the shape is then queued)."""
        if getattr(self._warming, "shape", None) == shape:  # the warm-up's own call
            yield self._warm_pipe, None
            return
        if self._thread is None:
            self.start([shape, *self.default_shapes()])
        with self._cond:
            usable = self.state == "ready" and shape in self._ready and not self._compiling
            if usable:
                self._users += 1
            elif self.state in ("idle", "building", "ready"):
                self._enqueue(shape)
        if not usable:
            yield None
            return
        import torch

        try:
            with torch.compiler.set_stance("eager_on_recompile"):
                yield self._pipe_for(kind), self.graphs
        finally:
            with self._cond:
                self._users -= 1
                self._cond.notify_all()

    def _enqueue(self, shape: Shape) -> None:
        if shape not in self._ready and shape not in self._failed and shape not in self._queue:
            self._queue.append(shape)
            self._cond.notify_all()

    def _pipe_for(self, kind: str) -> Any:
        """The fast text pipeline, or its img2img/inpaint variant (built once, on the same modules)."""
        if kind not in self._pipes:
            with self.model.lock:
                self._pipes[kind] = on_same_modules(variant_class(self.model, kind), self._pipes["text"])
        return self._pipes[kind]

    # -- the background side -----------------------------------------------------------------------

    def start(self, shapes: Sequence[Shape] = ()) -> "FastPath":
        """Begin building (once) and queue ``shapes`` to compile, in order."""
        with self._cond:
            for shape in shapes:
                self._enqueue(shape)
            if self._thread is None:
                self.state = "building"
                self._thread = threading.Thread(target=self._run, name=f"go_fast-{self.model.source.model}", daemon=True)
                self._thread.start()
        return self

    def default_shapes(self) -> list[Shape]:
        guidance = resolve(self.model.spec.name, "balanced").guidance_scale
        return [self.shape(width, height, 1, guidance) for width, height in warm_sizes()]

    def wait(self, shapes: Sequence[Shape], timeout: float) -> bool:
        """Until every shape is compiled (benchmarks and tests); False on timeout or failure."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (self.state == "ready" and all(shape in self._ready for shape in shapes)):
                left = deadline - time.monotonic()
                if self.state == "failed" or left <= 0 or any(shape in self._failed for shape in shapes):
                    return False
                self._cond.wait(min(left, 1.0))
        return True

    def denoiser(self) -> Optional[Any]:
        """The fast denoiser module, once built (benchmarks compare it with the exact one)."""
        text = self._pipes.get("text")
        return None if text is None else self.family.denoiser(text)

    def is_ready(self, shape: Shape) -> bool:
        with self._cond:
            return self.state == "ready" and shape in self._ready

    def gave_up(self, shape: Shape) -> bool:
        """Whether ``shape`` will never run fast: the build failed, or its compile failed twice."""
        with self._cond:
            return self.state == "failed" or shape in self._failed

    def _run(self) -> None:
        with self._own_stream() as finish:
            self._serve(finish)

    @contextlib.contextmanager
    def _own_stream(self) -> Iterator[Any]:
        """On CUDA, this thread's work goes on a stream of its own (never the legacy default stream,
        which would order itself against a request's kernels and graph capture); ``finish()`` waits
        for it, so that what is marked ready is complete."""
        import torch

        if self.model.pipe.device.type != "cuda":
            yield lambda: None
            return
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            yield stream.synchronize

    def _wait_for_idle(self) -> None:
        """Let a running request finish first (it holds the model's lock), up to ``IDLE_WAIT_S``: the
        compiler then takes the gaps between requests and leaves the first images after READY their
        full speed. On a server that is never idle it starts anyway, beside the requests."""
        deadline = time.monotonic() + IDLE_WAIT_S
        lock = self.model.lock
        while time.monotonic() < deadline:
            if lock.acquire(blocking=False):
                lock.release()
                return
            time.sleep(0.05)

    def _serve(self, finish: Any) -> None:
        try:
            self._wait_for_idle()
            self._build()
            finish()
        except Exception as error:  # noqa: BLE001 - go_fast then runs the exact path; the service keeps serving
            self._fail("building", error)
            return
        with self._cond:
            self.state = "ready"
            self._cond.notify_all()
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait(timeout=5.0)
                    if not self._alive():
                        break
                if not self._queue or not self._alive():
                    self._close()
                    return
            self._wait_for_idle()
            with self._cond:
                shape = self._queue[0]
                while self._users:  # compiled code never runs while the compiler works
                    self._cond.wait()
                self._compiling = True
            try:
                started = time.perf_counter()
                self._warm(shape)
                finish()
                seconds: Optional[float] = time.perf_counter() - started
            except Exception as error:  # noqa: BLE001 - that size keeps running the exact path
                log.warning("go_fast: compiling %s failed (%s: %s); that size runs the exact path",
                            shape, type(error).__name__, str(error).splitlines()[0] if str(error) else "")
                seconds = None
            with self._cond:
                self._queue.popleft()
                self._compiling = False
                if seconds is not None:
                    self._ready.add(shape)
                    self.warm_seconds[shape] = seconds
                else:
                    self._failures[shape] += 1
                    if self._failures[shape] >= 2:
                        self._failed.add(shape)
                self._cond.notify_all()
            if seconds is not None:
                log.info("go_fast: %s ready at %s (%.2f s)", self.model.source.model, shape, seconds)

    def _build(self) -> None:
        """The fast denoiser: a tensor-sharing copy, fp8 where the recipe says, its blocks marked for
        compilation, the compile artifacts restored; and the pipelines that use it."""
        import copy

        import torch

        from pipeline.speed.compile_cache import artifact_bytes, compile_blocks, restore
        from pipeline.speed.fp8 import quantize_fp8, shared_copy

        started = time.perf_counter()
        for name in ("set_stance", "load_cache_artifacts"):  # what a request and the artifacts rely on
            if not hasattr(torch.compiler, name):
                raise RuntimeError(f"this torch has no torch.compiler.{name}: go_fast needs torch 2.6 or newer")
        pipe = self.model.pipe
        exact = self.family.denoiser(pipe)
        if any(hasattr(module, "_hf_hook") for module in exact.modules()):
            raise RuntimeError("the denoiser carries accelerate hooks (offloading): go_fast needs plain modules")
        fast = shared_copy(exact)
        if self.recipe == "fp8":
            self.fp8_layers = quantize_fp8(fast, self.family.fp8_scope)
        sizes = len(warm_sizes())
        compile_blocks(fast, self.compiler, graphs_per_block=sizes * MAX_IMAGES * 2 + 8)
        data, origin = artifact_bytes(self.model.source.model, pipe.device.type)
        if data is None:
            log.info("go_fast: no compile artifacts at %s; compiling from nothing in the background", origin)
        else:
            restore(data, origin)
        # each pipeline its own scheduler: a scheduler keeps the state of the loop it is stepping
        denoiser = {self.family.denoiser_name: fast}
        self._pipes["text"] = on_same_modules(type(pipe), pipe, **denoiser, scheduler=copy.deepcopy(pipe.scheduler))
        self._warm_pipe = on_same_modules(type(pipe), pipe, **denoiser, scheduler=copy.deepcopy(pipe.scheduler))
        if self.model.graphs is not None:
            from pipeline.speed.cuda_graphs import graph_runner

            self.graphs = graph_runner(self._pipes["text"])
        log.info("go_fast: %s fast denoiser built in %.2f s (%s%s)", self.model.source.model, time.perf_counter() - started,
                 self.name, f", {self.fp8_layers} Linear layers in fp8" if self.recipe == "fp8" else "")

    def _warm(self, shape: Shape) -> None:
        """Compile ``shape`` by one short generation through the request path."""
        guidance = resolve(self.model.spec.name, "balanced").guidance_scale
        if not shape.guided and self.family.doubles_batch(guidance):
            guidance = 1.0  # the unguided batch (a request's guidance_scale <= 1)
        request = parse_request({"prompt": WARM_PROMPT, "width": shape.width, "height": shape.height,
                                 "model": self.model.spec.name})
        effective = resolve(self.model.spec.name, "balanced", num_inference_steps=WARM_STEPS, guidance_scale=guidance)
        self._warming.shape = shape
        try:
            generate(self.model, Batch([WARM_PROMPT], shape.images, 0), request, effective, go_fast=True, warm_up=True)
        finally:
            self._warming.shape = None

    def _alive(self) -> bool:
        """Whether the model is still the cache's: an evicted model's fast path lets its memory go."""
        return dict(MODEL_CACHE.entries()).get(self.model.source.model_id) is self.model

    def _fail(self, what: str, error: BaseException) -> None:
        with self._cond:
            self.state = "failed"
            self.error = f"{type(error).__name__}: {error}"
            self._queue.clear()
            self._cond.notify_all()
        log.warning("go_fast: %s the fast denoiser failed (%s); go_fast requests run the exact path",
                    what, self.error.splitlines()[0])

    def _close(self) -> None:
        log.info("go_fast: %s is no longer loaded; its fast path is dropped", self.model.source.model)
        with self._cond:
            self.state = "failed"
            self.error = "evicted"
            self._pipes.clear()
            self._warm_pipe = None
            self.graphs = None
            self._queue.clear()
            self._cond.notify_all()
        self.model = None  # type: ignore[assignment]


def fast_path_for(model: LoadedModel) -> Optional[FastPath]:
    """The model's fast path when its speed settings give go_fast a recipe; None where go_fast runs
    the exact path (``pipeline.speed.settings.speed_for_model`` logged why)."""
    if model.speed.go_fast == "off":
        return None
    return FastPath(model, model.speed.go_fast, model.speed.go_fast_compiler)


def start_if_default_on(model: LoadedModel) -> None:
    """Start compiling right away (after READY) for a model whose go_fast defaults to on; others
    start on their first go_fast request."""
    if model.fast is not None and model.spec.go_fast_default:
        model.fast.start(model.fast.default_shapes())
