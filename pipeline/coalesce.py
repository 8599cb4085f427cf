"""Compatible text-to-image requests that arrive together, denoised as one batch.

With several predictions in flight (Cog's ``concurrency.max``), one model's requests would
otherwise take its lock one after another, each running the denoiser on a batch of one or two.
Requests that share everything the denoising loop sees but the prompt and the seed (``Key``) join
one ``Group`` instead.

- Its first member (the leader) waits up to the batching window for companions, but only while
  other predictions are on their way (``arrivals``), so a lone caller never waits.
- It then takes the model's lock; until it has it, later compatible requests still join, so while
  the GPU is busy the next batch forms at no cost to anyone.
- If the lock was busy, the leader waits once more, as long again, unless every one of Cog's slots
  has its request in the group: the batch that just ended freed slots, and the predictions that
  fill them have not started yet.

The group runs as one ``Batch`` in which each member keeps its own prompt, negative prompt and
seeds (one CPU generator per image, as alone); each member's progress lines are written into its
own prediction's log (``pipeline.progress``).

A group never holds more images than the profile's ``max_batch_images`` and, on CUDA, than free
memory allows at the family's activation size per image. A request with more images than that
runs alone, as it always did. If a batch of several runs out of memory, each member runs alone.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from pipeline.families import family_for
from pipeline.generate import Batch, GenerationResult, generate
from pipeline.models import LoadedModel
from pipeline.progress import Canceled, Listener
from presets import EffectiveSettings
from request.generation import GenerationRequest

log = logging.getLogger(__name__)

MEMORY_HEADROOM = 0.8  # of free CUDA memory a batch's activations may take


@dataclass(frozen=True)
class Key:
    """What must be equal for two requests to share a denoising batch: everything the pipeline call
    sees except the prompts and the seeds."""

    width: int
    height: int
    steps: int
    guidance: float
    scheduler: str
    go_fast: bool
    negative: bool  # with a negative prompt or without (without, SDXL's negative embeddings are zeros)


@dataclass
class Member:
    """One request's part of a batch."""

    prompt: str
    negative_prompt: str
    images: int
    seed: int
    listener: Listener = field(default_factory=Listener)
    arrived: float = field(default_factory=time.perf_counter)
    done: threading.Event = field(default_factory=threading.Event)
    result: Optional[GenerationResult] = None
    error: Optional[BaseException] = None
    batch_images: int = 0  # images the denoiser ran together with this request's
    batch_callers: int = 0  # requests in that batch
    waited: float = 0.0  # seconds from arrival to the batch starting (the window and the lock)
    gathered: float = 0.0  # a leader's seconds waiting in the window for companions
    refilled: float = 0.0  # a leader's seconds waiting, after a busy lock, for the freed slots' requests

    def seeds(self) -> list[int]:
        """Image ``i`` uses ``seed + i``, as the request alone does (``Batch.image_seeds``)."""
        return Batch([self.prompt], self.images, self.seed).image_seeds()


@dataclass
class Group:
    key: Key
    capacity: int  # images
    members: list[Member] = field(default_factory=list)
    closed: bool = False

    @property
    def images(self) -> int:
        return sum(member.images for member in self.members)


class _Arrivals:
    """How many requests are between their start and their batch: the ones a leader may wait for."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def expected(self) -> Iterator[None]:
        with self._lock:
            self._count += 1
        try:
            yield
        finally:
            with self._lock:
                self._count -= 1

    def count(self) -> int:
        with self._lock:
            return self._count


arrivals = _Arrivals()


class Coalescer:
    """One model's forming groups, by key."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self._cond = threading.Condition()
        self._open: dict[Key, Group] = {}

    def run(self, member: Member, request: GenerationRequest, settings: EffectiveSettings, go_fast: bool,
            window_s: float, capacity: int, slots: int) -> GenerationResult:
        """Generate ``member``'s images, alone or in a batch with others of the same key; the
        result holds only its images. ``capacity``: the most images one batch may hold; ``slots``:
        the most predictions that run at once (Cog's concurrency)."""
        key = Key(request.width, request.height, settings.num_inference_steps, settings.guidance_scale,
                  request.scheduler, go_fast, bool(request.negative_prompt))
        with self._cond:
            group = self._open.get(key)
            leader = group is None or group.images + member.images > group.capacity
            if leader:
                group = Group(key, capacity)
                self._open[key] = group
            group.members.append(member)
            if group.images >= group.capacity:
                self._close(group)
            self._cond.notify_all()
        if not leader:
            member.done.wait()
            if member.error is not None:
                raise member.error
            assert member.result is not None
            return member.result
        try:
            self._lead(group, member, request, settings, go_fast, window_s, slots)
        except BaseException as error:  # noqa: BLE001 - nobody may be left waiting on a batch that never ran
            with self._cond:
                self._close(group)
            for other in group.members:
                if not other.done.is_set():
                    other.error = error
                    other.done.set()
            raise
        if member.error is not None:
            raise member.error
        assert member.result is not None
        return member.result

    def _lead(self, group: Group, member: Member, request: GenerationRequest, settings: EffectiveSettings,
              go_fast: bool, window_s: float, slots: int) -> None:
        member.gathered = self._gather(group, window_s)
        lock = self.model.lock
        busy = not lock.acquire(blocking=False)
        if busy:
            lock.acquire()  # companions may still join while the lock is busy
        try:
            if busy:
                # The lock freed as a batch ended, and with it Cog's slots: the predictions that fill
                # them (a queue's next ones) have not started yet, so wait the window once more,
                # unless every slot's request is in the group already.
                member.refilled = self._gather(group, window_s, since=time.perf_counter(), slots=slots)
            with self._cond:
                self._close(group)
                members = list(group.members)
            self._run(members, request, settings, go_fast)
        finally:
            lock.release()

    def _close(self, group: Group) -> None:
        group.closed = True
        if self._open.get(group.key) is group:
            del self._open[group.key]

    def _gather(self, group: Group, window_s: float, since: Optional[float] = None, slots: int = 0) -> float:
        """Wait for companions until the group is full or the window (from ``since``, else the
        leader's arrival) has passed; the seconds waited. Without ``slots``, also until no other
        request is on its way; with it, until the group holds that many requests."""
        started = time.perf_counter()
        deadline = (group.members[0].arrived if since is None else since) + window_s
        with self._cond:
            while not group.closed and (wait := deadline - time.perf_counter()) > 0:
                if (len(group.members) >= slots) if slots else arrivals.count() == 0:
                    break
                self._cond.wait(min(wait, 0.002))
        return time.perf_counter() - started

    def _run(self, members: list[Member], request: GenerationRequest, settings: EffectiveSettings,
             go_fast: bool) -> None:
        """Denoise ``members`` as one batch and hand each its images (each alone if a batch of
        several runs out of memory); a member whose images failed gets the error instead."""
        started = time.perf_counter()
        for member in members:
            member.waited = started - member.arrived
        try:
            try:
                self._denoise(members, request, settings, go_fast)
            except Exception as error:  # noqa: BLE001 - only an out-of-memory batch is retried
                if len(members) == 1 or "out of memory" not in str(error).lower():
                    raise
                log.warning("batch of %d requests ran out of memory; running each alone", len(members))
                for member in members:
                    self._denoise([member], request, settings, go_fast)
        except BaseException as error:  # noqa: BLE001 - handed to every member still without images
            for member in members:
                if member.result is None:
                    member.error = error
        finally:
            for member in members:
                member.done.set()

    def _denoise(self, members: list[Member], request: GenerationRequest, settings: EffectiveSettings,
                 go_fast: bool) -> None:
        prompts = [member.prompt for member in members for _ in range(member.images)]
        negatives = [member.negative_prompt for member in members for _ in range(member.images)]
        batch = Batch(prompts, 1, members[0].seed, seeds=[seed for member in members for seed in member.seeds()],
                      negative_prompts=negatives if request.negative_prompt else None)
        if all(member.listener.cancelled.is_set() for member in members):
            raise Canceled("every request of the batch was cancelled before it started")
        if len(members) > 1:
            log.info("batching %d requests: %d images together", len(members), batch.size)
            for member in members[1:]:  # the leader's own log has the line above
                member.listener.say(f"denoising in one batch with {len(members) - 1} other request(s): "
                                    f"{batch.size} images together")
        result = generate(self.model, batch, request, settings, go_fast=go_fast,
                          listeners=[member.listener for member in members])
        offset = 0
        for member in members:
            member.result = GenerationResult(result.images[offset:offset + member.images], result.seconds,
                                             result.steps, result.fast_path)
            member.batch_images, member.batch_callers = batch.size, len(members)
            offset += member.images


_CREATE_LOCK = threading.Lock()


def coalescer_for(model: LoadedModel) -> Coalescer:
    """The model's coalescer, made on first use (kept on the model, so it goes when the model is evicted)."""
    with _CREATE_LOCK:
        if model.coalescer is None:
            model.coalescer = Coalescer(model)
        return model.coalescer


def batch_capacity(model: LoadedModel, width: int, height: int, max_images: int,
                   free_bytes: Callable[[], Optional[int]]) -> int:
    """The most images one batch of this model may hold at this size: the profile's budget and,
    on CUDA, what free memory takes at the family's activation size per image."""
    free = free_bytes()
    if free is None:
        return max(1, max_images)
    per_image = family_for(model.spec).activation_bytes_1mp * (width * height) / (1024 * 1024)
    return max(1, min(max_images, int(free * MEMORY_HEADROOM // per_image)))

