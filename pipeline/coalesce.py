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

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from pipeline.families import family_for
from pipeline.generate import Batch, GenerationResult, generate
from pipeline.loading.cache import release_memory
from pipeline.models import LoadedModel
from pipeline.progress import Canceled, Listener
from presets import EffectiveSettings
from request.generation import GenerationRequest

log = logging.getLogger(__name__)


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
    """One request's part of a batch, and what it gets back."""

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
    waited: float = 0.0  # seconds from arrival to the batch starting (the windows and the lock)
    gathered: float = 0.0  # a leader's seconds waiting in the window for companions
    refilled: float = 0.0  # a leader's seconds waiting, after a busy lock, for the freed slots' requests

    def seeds(self) -> list[int]:
        """Image ``i`` uses ``seed + i``, as the request alone does (``Batch.image_seeds``)."""
        return Batch([self.prompt], self.images, self.seed).image_seeds()


@dataclass
class Group:
    """Requests of one key forming a batch; open to newcomers until its leader holds the lock."""

    key: Key
    capacity: int  # images
    members: list[Member] = field(default_factory=list)
    closed: bool = False

    @property
    def images(self) -> int:
        return sum(member.images for member in self.members)


class Arrival:
    """One request counted in ``arrivals`` from its start until it joins a group (or ends)."""

    def __init__(self, arrivals: "_Arrivals") -> None:
        self._arrivals = arrivals
        self._counted = True

    def leave(self) -> None:
        self._arrivals._leave(self)

    def __enter__(self) -> "Arrival":
        return self

    def __exit__(self, *exc: object) -> None:
        self.leave()


class _Arrivals:
    """How many requests are between their start and their batch: the ones a leader may wait for."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def arrive(self) -> Arrival:
        with self._lock:
            self._count += 1
        return Arrival(self)

    def _leave(self, arrival: Arrival) -> None:
        with self._lock:
            if arrival._counted:
                arrival._counted = False
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
        self._open: dict[Key, list[Group]] = {}

    def run(self, member: Member, request: GenerationRequest, settings: EffectiveSettings, go_fast: bool,
            window_s: float, capacity: int, slots: int, arrival: Optional[Arrival] = None) -> GenerationResult:
        """Generate ``member``'s images, alone or in a batch with others of the same key; the
        result holds only its images. ``capacity``: the most images one batch may hold; ``slots``:
        the most predictions that run at once (Cog's concurrency); ``arrival``: the request's
        place in ``arrivals``, given up once it has joined a group."""
        key = Key(request.width, request.height, settings.num_inference_steps, settings.guidance_scale,
                  request.scheduler, go_fast, bool(request.negative_prompt))
        with self._cond:
            groups = self._open.setdefault(key, [])
            group = next((g for g in groups if g.images + member.images <= g.capacity), None)
            leader = group is None
            if leader:
                group = Group(key, capacity)
                groups.append(group)
            group.members.append(member)
            if group.images >= group.capacity:
                self._close(group)  # full (a request as large as a batch runs alone)
            if arrival is not None:
                arrival.leave()
            self._cond.notify_all()
        if not leader:
            member.done.wait()
            return _outcome(member, own_error=False)
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
        return _outcome(member, own_error=True)

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
        groups = self._open.get(group.key, [])
        if group in groups:
            groups.remove(group)
        if not groups:
            self._open.pop(group.key, None)

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
        """Denoise the members still waiting as one batch and hand each its images or its error;
        each member runs alone if a batch of several runs out of memory."""
        started = time.perf_counter()
        live = []
        for member in members:
            member.waited = started - member.arrived
            if member.listener.cancelled.is_set():
                member.error = Canceled("cancelled before its batch started")
            else:
                live.append(member)
        try:
            retry = False
            try:
                if live:
                    self._denoise(live, request, settings, go_fast)
            except BaseException as error:  # noqa: BLE001 - handed to the members it concerns
                retry = len(live) > 1 and "out of memory" in str(error).lower()
                if not retry:
                    for member in live:
                        member.error = error
            if retry:
                # out of the except block: its traceback no longer holds the failed batch's tensors
                log.warning("batch of %d requests ran out of memory; running each alone", len(live))
                release_memory()
                for member in live:
                    self._alone(member, request, settings, go_fast)
        finally:
            for member in members:
                member.done.set()

    def _alone(self, member: Member, request: GenerationRequest, settings: EffectiveSettings, go_fast: bool) -> None:
        if member.listener.cancelled.is_set():
            member.error = Canceled("cancelled")
            return
        try:
            self._denoise([member], request, settings, go_fast)
        except BaseException as error:  # noqa: BLE001 - this member's own failure
            member.error = error

    def _denoise(self, members: list[Member], request: GenerationRequest, settings: EffectiveSettings,
                 go_fast: bool) -> None:
        prompts = [member.prompt for member in members for _ in range(member.images)]
        negatives = [member.negative_prompt for member in members for _ in range(member.images)]
        batch = Batch(prompts, 1, members[0].seed, seeds=[seed for member in members for seed in member.seeds()],
                      negative_prompts=negatives if request.negative_prompt else None)
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


def _outcome(member: Member, own_error: bool) -> GenerationResult:
    """The member's images, or its error raised on its own thread (a follower raises its own copy:
    one exception object raised in several threads would collect all their tracebacks)."""
    if member.error is not None:
        if own_error:
            raise member.error
        raise _copy_of(member.error) from member.error
    assert member.result is not None
    return member.result


def _copy_of(error: BaseException) -> BaseException:
    """The same exception (type, arguments, attributes) as a new object, without a traceback; the
    original when its type cannot be made that way."""
    try:
        fresh = type(error).__new__(type(error), *error.args)
        fresh.args = error.args
        fresh.__dict__.update(error.__dict__)
        return fresh
    except Exception:  # noqa: BLE001 - an exotic exception type: raised as it is
        return error


_CREATE_LOCK = threading.Lock()


def coalescer_for(model: LoadedModel) -> Coalescer:
    """The model's coalescer, made on first use (kept on the model, so it goes when the model is evicted)."""
    with _CREATE_LOCK:
        if model.coalescer is None:
            model.coalescer = Coalescer(model)
        return model.coalescer


def batch_capacity(model: LoadedModel, width: int, height: int, guidance_scale: float, go_fast: bool,
                   max_images: int, free_bytes: Callable[[], Optional[int]]) -> int:
    """The most images one batch of this model may hold at this size: the profile's budget; on
    CUDA, what free memory holds at the family's activation size per image; with go_fast, the
    largest batch its fast denoiser is compiled for (a batch must not move a request off it),
    unless the fast denoiser gave up on this size (those requests run exact whatever the batch)."""
    free = free_bytes()
    capacity = max(1, max_images if free is None else min(max_images, family_for(model.spec).images_that_fit(free, width, height)))
    fast = model.fast if go_fast else None
    if fast is not None and not fast.gave_up(fast.shape(width, height, 1, guidance_scale)):
        ready = [n for n in range(1, capacity + 1) if fast.is_ready(fast.shape(width, height, n, guidance_scale))]
        capacity = max(ready, default=1)
    return capacity
