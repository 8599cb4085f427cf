"""A request's LoRAs on the loaded model, for that request only.

Each LoRA is loaded with diffusers' ``load_lora_weights`` under an adapter name made from its
content hash (diffusers converts the kohya layout of A1111, Forge and Civitai files itself), and the
request's set is switched on with ``set_adapters`` and its scales. After the request the adapters
are switched off (``disable_lora``): every LoRA layer then computes its base layer alone, so the
model is exactly the base model again (a test compares pixels before and after). The last few
adapters stay loaded, switched off (``LORA_MEMORY_SLOTS``), so a caller who sends the same LoRA again
pays neither the download nor the load; beyond that the least recently used is deleted.

Keeping adapters loaded but off was chosen over fusing and unfusing per request: fusing rewrites
every targeted weight twice per request, and unfusing in reduced precision does not restore the
base weights bit for bit. Which is faster on the GPU is not measured yet (no device in that session).

Before anything is loaded, the file's keys are checked against the model: a LoRA for the other
model family, or a file with no LoRA keys, is refused naming the field, and the model is untouched.
A load that fails half-way deletes what it added.

Speed switches: a LoRA request runs the denoiser eagerly (the CUDA graphs were captured without its
layers and are never replayed with them); a model whose Q/K/V projections were fused for speed is
unfused before its first LoRA (the LoRA layers attach to the separate projections) and stays so.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import warnings
from dataclasses import dataclass
from typing import Iterator, Sequence

import settings
from pipeline.families import FAMILIES, family_for
from pipeline.lora.download import LoraFile
from pipeline.models import LoadedModel

log = logging.getLogger(__name__)

_SUFFIX = re.compile(r"\.(lora_[AB]|lora\.(down|up)|lora_(down|up))\.weight$|\.lora_magnitude_vector$|\.lora_B\.bias$")
# the attention-processor layout diffusers' kohya converter still produces for SDXL
_PROCESSOR = re.compile(r"\.processor\.(to_[qkv]|to_out)_lora\.(down|up)\.weight$")


def _target(key: str) -> "str | None":
    """The module a LoRA key adapts (``unet.down_blocks.1...to_q``), or None for a key that is not a LoRA layer."""
    processor = _PROCESSOR.search(key)
    if processor:
        name = processor.group(1)
        return key[:processor.start()] + "." + ("to_out.0" if name == "to_out" else name)
    return _SUFFIX.sub("", key) if _SUFFIX.search(key) else None


class LoraRejected(ValueError):
    """``lora`` cannot go on this model; the message says why."""

    def __init__(self, lora: "Lora", message: str) -> None:
        super().__init__(message)
        self.lora = lora


@dataclass(frozen=True)
class Lora:
    field: str  # the request input it came from: lora_weights or extra_lora
    file: LoraFile
    scale: float

    @property
    def adapter(self) -> str:
        return f"lora_{self.file.sha256[:16]}"


def check_keys(model: LoadedModel, lora: Lora) -> int:
    """How many of the file's LoRA layers target modules of ``model``; LoraRejected if none or some do not fit."""
    family = family_for(model.spec)
    other = " or ".join(name for name in FAMILIES if FAMILIES[name] is not family)
    try:
        converted = model.pipe.lora_state_dict(str(lora.file.path), **family.lora_options(model.pipe))
    except Exception as error:  # diffusers' converters raise many kinds on a foreign layout
        raise LoraRejected(lora, f"not a LoRA diffusers can read for {model.spec.name}; is it a LoRA for {other}? "
                                 f"({type(error).__name__}: {error})"[:400]) from None
    state = converted[0] if isinstance(converted, tuple) else converted
    prefixes = family.lora_components
    targets = {target for target in map(_target, state) if target}
    if not targets:
        raise LoraRejected(lora, "the file holds no LoRA layers")
    missing = []
    for target in sorted(targets):
        component, _, path = target.partition(".")
        module = getattr(model.pipe, component, None) if component in prefixes else None
        try:
            if module is None:
                raise AttributeError(component)
            module.get_submodule(path)
        except AttributeError:
            missing.append(target)
    if missing:
        raise LoraRejected(lora, f"{len(missing)} of its {len(targets)} layers are not in {model.spec.name} "
                                 f"(e.g. {missing[0]}); is it a LoRA for {other}?")
    return len(targets)


def _unfuse_for_lora(model: LoadedModel) -> None:
    denoiser = getattr(model.pipe, "unet", None) or getattr(model.pipe, "transformer", None)
    if any(getattr(m, "fused_projections", False) for m in denoiser.modules()):
        model.pipe.unfuse_qkv_projections()
        log.info("LoRA: %s's fused Q/K/V projections unfused so LoRA layers can attach (kept so from now on)",
                 model.spec.name)


def load(model: LoadedModel, lora: Lora) -> float:
    """Load ``lora`` onto ``model`` unless already there; the seconds it took (0 for a hit)."""
    loaded = model.loras
    if lora.adapter in loaded:
        loaded.move_to_end(lora.adapter)
        log.info("LoRA %s: adapter %s already loaded (memory hit)", lora.field, lora.adapter)
        return 0.0
    layers = check_keys(model, lora)
    _unfuse_for_lora(model)
    started = time.perf_counter()
    try:
        # diffusers reads the file again here: given the checked state dict instead, it would drop the
        # kohya alphas that lora_state_dict returns beside it (only a memory miss pays this)
        with warnings.catch_warnings():
            # PEFT warns on every adapter after the first; several adapters side by side is the design here
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
            model.pipe.load_lora_weights(str(lora.file.path), adapter_name=lora.adapter)
    except Exception as error:
        with contextlib.suppress(Exception):
            model.pipe.delete_adapters(lora.adapter)
        raise LoraRejected(lora, f"could not be loaded on {model.spec.name} ({type(error).__name__}: {error})"[:400]) from None
    seconds = time.perf_counter() - started
    loaded[lora.adapter] = lora.file.url
    log.info("LoRA %s: %d layers loaded as %s in %.2f s (memory miss)", lora.field, layers, lora.adapter, seconds)
    return seconds


def trim(model: LoadedModel, keep: Sequence[str]) -> None:
    """Delete the least recently used adapters beyond ``LORA_MEMORY_SLOTS`` (never one in ``keep``)."""
    slots = max(int(settings.get("LORA_MEMORY_SLOTS")), len(keep))
    for name in [name for name in model.loras if name not in keep][: max(len(model.loras) - slots, 0)]:
        url = model.loras.pop(name)
        model.pipe.delete_adapters(name)
        log.info("LoRA: adapter %s (%s) deleted: more than LORA_MEMORY_SLOTS=%d loaded", name, url, slots)


@contextlib.contextmanager
def applied(model: LoadedModel, loras: Sequence[Lora]) -> Iterator[dict[str, float]]:
    """Within the block ``loras`` are on (with their scales); after it, every adapter is off again.

    Yields the timings (``lora_load_seconds``, ``lora_restore_seconds``) for the request's metrics.
    Hold ``model.lock``: the adapters change the shared pipeline.
    """
    timings: dict[str, float] = {}
    if not loras:
        yield timings
        return
    try:
        # a load switches its adapter on: whatever happens from here, the finally switches all off
        timings["lora_load_seconds"] = sum(load(model, lora) for lora in loras)
        trim(model, [lora.adapter for lora in loras])
        model.pipe.enable_lora()
        model.pipe.set_adapters([lora.adapter for lora in loras], adapter_weights=[lora.scale for lora in loras])
        model.active_loras = tuple(lora.adapter for lora in loras)
        log.info("LoRA: %s", ", ".join(f"{lora.field} {lora.adapter} at scale {lora.scale:g}" for lora in loras))
        yield timings
    finally:
        started = time.perf_counter()
        if model.loras:
            model.pipe.disable_lora()
        model.active_loras = ()
        timings["lora_restore_seconds"] = time.perf_counter() - started
        log.info("LoRA: adapters off, base model restored in %.3f s", timings["lora_restore_seconds"])
