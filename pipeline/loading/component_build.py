"""Build a pipeline's models from streamed tensors: no random initialisation, no second read.

A model is created on the ``meta`` device from its ``config.json`` (no memory, no init kernels),
then given the streamed tensors as its parameters. Transformers models go through their own
``from_pretrained(None, config=..., state_dict=...)``, so their dtype rules (T5 keeps ``wo`` in fp32
under fp16) and tied weights apply as usual. Each component waits only for its own files, so the
VAE and CLIP are ready while the UNet's bytes still stream.

Anything unusual (a class with fp32-pinned modules, a key the class does not expect, a file the
stream cannot read) makes that one component fall back to the library's own loading, logged with
the reason; the images are the same either way.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import settings
from pipeline.loading.stream import StreamError, WeightStream

log = logging.getLogger(__name__)

WEIGHT_NAMES = {"diffusers": "diffusion_pytorch_model", "transformers": "model"}


@dataclass(frozen=True)
class ComponentFiles:
    name: str  # "unet", "text_encoder_2", ...
    library: str  # "diffusers" or "transformers"
    class_name: str
    folder: Path
    files: tuple[Path, ...]  # its safetensors shards, in index order


def fast_load_enabled(device: str, env: Optional[dict] = None) -> bool:
    """``$FAST_LOAD`` when set; otherwise on for CUDA only.

    Off on the CPU by default because it was measured slower there (README, Start-up): safetensors
    maps the file and the CPU tensors are the mapped pages themselves (no copy), which streaming
    cannot beat. On CUDA every byte must cross to the device anyway, and streaming it during the
    imports is the point.
    """
    value = settings.get("FAST_LOAD", env)
    return device.startswith("cuda") if value is None else value


def model_components(location: Path, skip: Iterable[str] = ()) -> list[ComponentFiles]:
    """The weight-bearing components of a diffusers folder that can be streamed, smallest first (the
    order they are streamed and built in: small ones are finished while the large one streams).

    Only the plain file set is used (``model.safetensors`` or its index of shards), the same one
    ``from_pretrained`` reads without a variant.
    """
    try:
        index = json.loads((location / "model_index.json").read_text())
    except (OSError, ValueError):
        return []
    found = []
    for name, value in index.items():
        if name.startswith("_") or name in skip or not isinstance(value, list) or value[0] not in WEIGHT_NAMES:
            continue
        folder = location / name
        stem = WEIGHT_NAMES[value[0]]
        single = folder / f"{stem}.safetensors"
        shards = folder / f"{stem}.safetensors.index.json"
        if single.is_file():
            files: tuple[Path, ...] = (single,)
        elif shards.is_file():
            weight_map = json.loads(shards.read_text()).get("weight_map", {})
            files = tuple(folder / f for f in dict.fromkeys(weight_map.values()))
        else:
            continue
        found.append(ComponentFiles(name, value[0], value[1], folder, files))
    return sorted(found, key=lambda c: sum(f.stat().st_size for f in c.files))


def weight_files(location: Path) -> list[Path]:
    """The tensor files a load will read, largest first so the slowest reads start earliest.

    For a diffusers folder: the ``.safetensors`` files of the components ``model_index.json`` lists
    (shards from their index), without variant copies (``*.fp16.safetensors``) the loader does not
    ask for, so a folder that carries several precisions is not read several times.
    """
    if location.is_file():
        return [location]
    files = stream_files(model_components(location))
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def stream_files(components: Iterable[ComponentFiles]) -> list[Path]:
    return [path for component in components for path in component.files]


def _state_dict(component: ComponentFiles, stream: WeightStream) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in component.files:
        merged.update(stream.state_dict(path))
    return merged


def _meta_model(component: ComponentFiles) -> Any:
    """The diffusers model with every parameter and buffer on ``meta``: no memory, no init kernels."""
    import diffusers
    import torch

    cls = getattr(diffusers, component.class_name)
    if getattr(cls, "_keep_in_fp32_modules", None):
        raise StreamError(f"{component.class_name} pins modules to fp32; its own loader applies that")
    with torch.device("meta"):  # a per-thread mode, unlike accelerate's global patching
        return cls.from_config(cls.load_config(component.folder))


def _finish_diffusers(component: ComponentFiles, model: Any, state: dict[str, Any], dtype: Any, device: str) -> Any:
    for key, value in state.items():  # in place: each original is freed as its cast replaces it
        if value.is_floating_point() and value.dtype != dtype:
            state[key] = value.to(dtype)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    left = [name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if tensor.is_meta]
    if missing or unexpected or left:
        raise StreamError(f"{component.class_name}: tensors differ from the class (missing "
                          f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}, not loaded {left[:3]})")
    model.register_to_config(_name_or_path=str(component.folder.parent))
    return model.eval()


def _build_transformers(component: ComponentFiles, state: dict[str, Any], dtype: Any, device: str) -> Any:
    import transformers

    cls = getattr(transformers, component.class_name)
    config = cls.config_class.from_pretrained(component.folder, local_files_only=True)
    model = cls.from_pretrained(None, config=config, state_dict=state, dtype=dtype, device_map=device)
    return model.eval()


def build_component(component: ComponentFiles, stream: WeightStream, dtype: Any, device: str,
                    meta_model: Optional[Any] = None) -> Optional[Any]:
    """The component's model, or None (with the reason logged) when it must load the usual way."""
    started = time.perf_counter()
    try:
        state = _state_dict(component, stream)
        waited = time.perf_counter() - started
        if component.library == "diffusers":
            model = _finish_diffusers(component, meta_model or _meta_model(component), state, dtype, device)
        else:
            model = _build_transformers(component, state, dtype, device)
    except (StreamError, OSError, ValueError, KeyError, RuntimeError, AttributeError, TypeError) as error:
        log.warning("fast load: %s falls back to from_pretrained (%s)", component.name, error)
        return None
    log.info("fast load: %s (%s) ready in %.2f s, %.2f s of it waiting for its bytes",
             component.name, component.class_name, time.perf_counter() - started, waited)
    return model


def build_components(components: list[ComponentFiles], stream: WeightStream, dtype: Any, device: str) -> dict[str, Any]:
    """Every component that builds from the stream, by name.

    One thread builds them: diffusers and transformers change process-wide state while they
    construct models (the default dtype, patched init functions), so concurrent construction is
    unsafe. The overlap that matters is kept: the diffusers models are created on ``meta`` before
    their bytes have arrived, and each component is finished as soon as its own files are in, in
    the order the stream delivers them (smallest first), while the rest keep streaming.
    """
    meta: dict[str, Any] = {}
    for component in components:
        if component.library == "diffusers":
            try:
                meta[component.name] = _meta_model(component)
            except (StreamError, OSError, ValueError, KeyError, AttributeError, TypeError) as error:
                log.warning("fast load: %s falls back to from_pretrained (%s)", component.name, error)
    built = {}
    for component in components:
        if component.library == "diffusers" and component.name not in meta:
            continue
        model = build_component(component, stream, dtype, device, meta.get(component.name))
        if model is not None:
            built[component.name] = model
    log.info(stream.describe())
    return built


def start_stream(location: Path, device: str, skip: Iterable[str] = (), ready: Optional[Any] = None) -> Optional[WeightStream]:
    """Start streaming a diffusers folder's model files to ``device``, or None where the fast path
    does not apply (``fast_load_enabled`` says no, a device other than CUDA or CPU, nothing to
    stream). ``skip``: components loaded another way (quantized, shared with a resident model)."""
    if device not in ("cuda", "cpu") or not fast_load_enabled(device):
        return None
    components = model_components(location, skip)
    if not components:
        return None
    return WeightStream(stream_files(components), device, ready=ready).start()


def streamed_components(location: Path, dtype: Any, device: str, skip: Iterable[str] = (),
                        stream: Optional[WeightStream] = None) -> dict[str, Any]:
    """The folder's models built from ``stream`` (started here when not given): pass them to the
    pipeline's ``from_pretrained``, which then loads only what is left (tokenizers, scheduler, and
    any component that fell back)."""
    skip = set(skip)
    stream = stream or start_stream(location, device, skip)
    if stream is None:
        return {}
    try:
        components = [c for c in model_components(location, skip) if all(Path(f).resolve() in stream.files for f in c.files)]
        return build_components(components, stream, dtype, device)
    finally:
        stream.close()
