"""Libraries kept out of sight while diffusers and transformers are first imported, so that they skip
integrations no request of this service uses.

Both libraries look each optional library up once, when they are first imported, and import its
integration whenever it is installed. Three of those cost most of a second each on the CPU and serve
nothing here: bitsandbytes (diffusers' quantizers import it, and it imports torch's inductor
compiler) when the hardware profile quantizes nothing, scipy (for samplers the catalog does not
offer), and torchao (transformers' quantizer for torchao checkpoints; go_fast imports it itself).
During the imports stage each is hidden: ``sys.modules[name] = None`` makes
``importlib.util.find_spec`` answer None and ``import`` fail, which both libraries read as "not
installed". Right after, each is shown again, so anything that imports one later (ADetailer's
detectors, a test, an operator's code) gets it as usual; only the two libraries' own verdicts stay.
Nothing moves into the first request: a plain request uses none of them.

transformers also asks once whether ``torch.distributed`` is available and, when it is, imports
torch's distributed tensors, FSDP and distributed checkpointing (about half a second) for
tensor-parallel and sharded loading. A one-GPU service never shards, so transformers is told "not
available": its cached verdict is filled while ``torch.distributed.is_available`` answers False, which
is put back at once. torch itself keeps its own answer.

torch's compiler front end (``torch._dynamo``, about a second) is deferred differently, because both
libraries bind names from it at import: stand-ins answer those names until something compiles
(``startup.deferred_modules``, which also defers torch's symbolic shapes with sympy, and PEFT). A
plain request compiles nothing; the CUDA speed-ups that compile import it then, during the load
stage, as they did before.

diffusers maps every installed package to its distribution when it is imported
(``importlib.metadata.packages_distributions()``, which reads every installed package's file list:
0.14 s on the CPU), for two look-ups that no request here makes (a distribution name for a package whose
name differs, and custom pipelines from a downloaded repository). During the stage that function
returns a mapping that is built on its first look-up (:class:`LazyPackageMap`).

transformers' map of its models is read from a file rather than rebuilt from every model file
(``startup.import_structure_cache``).

Python's cyclic garbage collector is paused from the start of ``setup()`` to the end of the
imports stage: importing creates hundreds of thousands of long-lived objects, and each full
collection while they pile up scans all of them again (about 0.5 s of the imports and load stages
on the CPU). After the imports they are frozen (``gc.freeze``), so later collections never scan
them, and the collector runs again. Without the freeze they would all sit in the youngest
generation, and the first collections of the load stage and the first request would scan them
(measured on Python 3.12: 0.14 s more in the load stage, 0.2 s more on the first image). The few
cycles that imports leave as garbage (about 10,000 small objects, measured) stay frozen with them;
the load stage, where weights are handled, runs with the collector on. Only a start-up that imports
diffusers and transformers for the first time in its process freezes: a process that starts the
service again (the tests) would otherwise freeze whatever garbage its earlier work left.

``LAZY_IMPORTS=0`` imports everything as usual, for diagnosis.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import gc
import importlib.metadata
import logging
import sys
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import settings
from hardware.profiles import Profile
from startup import deferred_modules
from startup.diet_notice import skipped
from startup.import_structure_cache import cached_import_structure

log = logging.getLogger(__name__)

# library -> why no request of this service needs diffusers' or transformers' integration of it
DEFERRED: Mapping[str, str] = {
    "bitsandbytes": "only the bitsandbytes-quantizing hardware profiles use it, and they keep it",
    "scipy": "only samplers the catalog does not offer (LMS, beta sigmas) use it",
    "torchao": "only go_fast's fp8 uses it, and imports it itself on its background thread, after READY",
}


def deferred_for(profile: Profile) -> list[str]:
    """The libraries to hide for ``profile`` (none with ``LAZY_IMPORTS=0``)."""
    if not settings.get("LAZY_IMPORTS"):
        return []
    if any(library in sys.modules for library in ("diffusers", "transformers")):
        # their verdicts are made already (an operator's code or a script imported them first): hiding
        # a library they saw would only make their later imports of it fail
        return []
    return [name for name in DEFERRED if not (name == "bitsandbytes" and profile.uses_bitsandbytes)]


class _Guarded(contextlib.AbstractContextManager):
    """One part of the diet: entered and left so that its own failure only skips it.

    The diet hooks library internals; a library upgrade may change them. Whatever one part raises
    while it is entered or left is logged once (``import diet: ...``) and start-up goes on with that
    part's imports as usual. An error of the imports themselves passes through untouched.
    """

    def __init__(self, name: str, manager: contextlib.AbstractContextManager) -> None:
        self.name, self.manager, self.entered = name, manager, False

    def __enter__(self) -> "_Guarded":
        try:
            self.manager.__enter__()
            self.entered = True
        except Exception as error:  # noqa: BLE001 - any failure of the hook itself only skips it
            skipped(self.name, f"{type(error).__name__}: {error}")
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> bool:
        if not self.entered:
            return False
        try:
            return bool(self.manager.__exit__(kind, value, traceback))
        except Exception as error:  # noqa: BLE001
            if error is value:
                raise
            skipped(self.name, f"leaving it failed: {type(error).__name__}: {error}")
            return False


@contextlib.contextmanager
def diet(profile: Profile) -> Iterator[None]:
    """The imports stage's diet for ``profile`` (nothing with ``LAZY_IMPORTS=0``): the libraries hidden,
    transformers without distributed, torch's compiler deferred. Each part guards itself (``_Guarded``)."""
    if not settings.get("LAZY_IMPORTS"):
        yield
        return
    parts: list[tuple[str, Callable[[], contextlib.AbstractContextManager]]] = [
        ("hiding bitsandbytes and scipy", lambda: hidden(deferred_for(profile))),
        ("deferred modules", deferred_modules.deferred),
        ("diffusers' lazy package map", lazy_package_map),
        ("transformers' model map from a file", cached_import_structure),
    ]
    with contextlib.ExitStack() as stack:
        for name, make in parts:
            try:
                manager = make()
            except Exception as error:  # noqa: BLE001
                skipped(name, f"{type(error).__name__}: {error}")
                continue
            stack.enter_context(_Guarded(name, manager))
        try:
            transformers_without_distributed()
        except Exception as error:  # noqa: BLE001
            skipped("transformers' distributed verdict", f"{type(error).__name__}: {error}")
        yield


class LazyPackageMap(collections.abc.Mapping):
    """``importlib.metadata.packages_distributions()``, built on its first look-up."""

    def __init__(self, build: Callable[[], Mapping[str, list[str]]]) -> None:
        self._build = build
        self._built: Optional[Mapping[str, list[str]]] = None

    @property
    def built(self) -> bool:
        return self._built is not None

    def _mapping(self) -> Mapping[str, list[str]]:
        if self._built is None:
            self._built = self._build()
        return self._built

    def __getitem__(self, package: str) -> list[str]:
        return self._mapping()[package]

    def __iter__(self) -> Iterator[str]:
        return iter(self._mapping())

    def __len__(self) -> int:
        return len(self._mapping())


@contextlib.contextmanager
def lazy_package_map() -> Iterator[None]:
    """Within the block, ``importlib.metadata.packages_distributions()`` answers a :class:`LazyPackageMap`."""
    real = importlib.metadata.packages_distributions
    importlib.metadata.packages_distributions = lambda: LazyPackageMap(real)
    try:
        yield
    finally:
        importlib.metadata.packages_distributions = real


def transformers_without_distributed() -> bool:
    """Fill transformers' cached "is torch.distributed available?" with False; True if this call did.

    Every import of torch's distributed packages in transformers is behind that verdict (tensor
    parallelism, FSDP, distributed checkpoints, ``is_dtensor``). Already filled: left as it is.
    """
    import torch.distributed
    from transformers.utils import import_utils

    verdict_fn = import_utils.is_torch_distributed_available
    if not callable(getattr(verdict_fn, "cache_info", None)):  # tested with transformers 5.17-5.24: an lru_cache
        skipped("transformers' distributed verdict", "is_torch_distributed_available is no longer a cached function")
        return False
    real = torch.distributed.is_available
    torch.distributed.is_available = lambda: False
    try:
        cached = verdict_fn.cache_info().currsize
        verdict = verdict_fn()
    finally:
        torch.distributed.is_available = real
    if cached == 0 and not verdict:
        log.info("imports: transformers told torch.distributed is not available (one GPU never shards)")
    return cached == 0 and not verdict


@dataclasses.dataclass(frozen=True)
class CollectorPause:
    """The collector paused by :func:`pause_collector`; ``freeze``: the imports ahead are this process's first."""

    freeze: bool


def pause_collector() -> Optional[CollectorPause]:
    """Pause the cyclic garbage collector for the imports (not with ``LAZY_IMPORTS=0``); None if this did not.

    Whether to freeze afterwards is decided now, by whether diffusers and transformers are still to be
    imported: ``gc.get_freeze_count()`` cannot tell, since Python 3.12 starts with objects frozen.
    """
    if not settings.get("LAZY_IMPORTS") or not gc.isenabled():
        return None
    gc.disable()
    return CollectorPause(freeze=not any(library in sys.modules for library in ("diffusers", "transformers")))


def resume_collector(pause: Optional[CollectorPause]) -> None:
    """Freeze what the imports made (when they were this process's first) and let the collector run again."""
    if pause is None:
        return
    if pause.freeze:
        gc.freeze()
    gc.enable()


@contextlib.contextmanager
def hidden(names: Sequence[str]) -> Iterator[list[str]]:
    """Within the block, ``names`` (those not imported yet) look uninstalled; after it, they are back."""
    hide = [name for name in names if name not in sys.modules]
    for name in hide:
        sys.modules[name] = None  # type: ignore[assignment]
    if hide:
        log.info("imports: %s kept out of sight of diffusers and transformers (LAZY_IMPORTS=0 turns this off)",
                 ", ".join(hide))
    try:
        yield hide
    finally:
        for name in hide:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
