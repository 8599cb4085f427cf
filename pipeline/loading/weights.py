"""Turn the operator's weights setting (a path or a URL) into a checked local source.

Everything that can be wrong with weights is found here, before any model class is built, and
reported with the path and what was expected: a missing folder, a folder that is not a diffusers
model, a truncated or corrupt ``.safetensors`` file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import settings
from netfetch import FetchError
from pipeline.models import WeightsSource
from request.catalog import MODELS

log = logging.getLogger(__name__)



def default_model_name() -> str:
    """The operator's ``$DEFAULT_MODEL`` (loaded at start-up)."""
    name = settings.get("DEFAULT_MODEL")
    if name not in MODELS:
        raise settings.SettingError(f"$DEFAULT_MODEL={name!r}: allowed {', '.join(MODELS)}")
    return name


def weights_setting(name: str, explicit: Optional[str] = None) -> str:
    """The weights path or URL for model ``name``: an explicit value, else its setting (``$SDXL_WEIGHTS``...)."""
    return str(explicit or settings.get(MODELS[name].weights_env))


def available_models(explicit_default: Optional[str] = None, default_model: Optional[str] = None) -> list[str]:
    """Models whose weights are configured and present (a URL counts as present: it is fetched on load).

    ``explicit_default`` is Cog's ``COG_WEIGHTS`` and belongs to the default model.
    """
    default = default_model or default_model_name()
    found = []
    for name in MODELS:
        setting = weights_setting(name, explicit_default if name == default else None)
        if setting.startswith(("http://", "https://")) or Path(setting).expanduser().exists():
            found.append(name)
    return found


def expected(model: str) -> str:
    """What a weights setting for ``model`` may be, in words, for error messages."""
    if MODELS[model].single_file:
        return (
            f"a diffusers {model} folder (with model_index.json), a single-file {model} .safetensors "
            "checkpoint, or an http(s) URL to either (a folder as .tar)"
        )
    return f"a diffusers {model} folder (with model_index.json), or an http(s) URL to one as .tar"


class WeightsError(RuntimeError):
    """The configured weights are missing, malformed or corrupt."""


def configured_weights(explicit: Optional[str] = None, model: str = "sdxl") -> str:
    """The weights setting in force: setup's argument, else the model's env var (``$SDXL_WEIGHTS``...),
    else its default folder."""
    return weights_setting(model, explicit)


def check_safetensors(path: Path) -> None:
    """Read the header and check the file is as long as the header says; no tensor data is read."""
    from pipeline.loading.stream import safetensors_header

    try:
        size = path.stat().st_size
        header, data_start = safetensors_header(path)
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise WeightsError(f"{path}: not a readable .safetensors file ({error})") from error
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    needed = data_start + max(ends, default=0)
    if size < needed:
        raise WeightsError(f"{path}: truncated .safetensors file ({size} bytes, header needs {needed})")


def _check_diffusers_folder(folder: Path, model: str) -> None:
    index = folder / "model_index.json"
    if not index.is_file():
        raise WeightsError(f"{folder}: no model_index.json; expected {expected(model)}")
    try:
        components = json.loads(index.read_text())
    except ValueError as error:
        raise WeightsError(f"{index}: not valid JSON ({error})") from error
    for name, value in components.items():
        if name.startswith("_") or not isinstance(value, list) or value[0] is None:
            continue
        if not (folder / name).is_dir():
            raise WeightsError(f"{folder}: model_index.json lists {name!r} but {folder / name} is missing")
    for tensors in sorted(folder.glob("*/*.safetensors")):
        check_safetensors(tensors)


def resolve_weights(setting: str, model: str = "sdxl", fetched: Optional[Path] = None) -> WeightsSource:
    """Fetch if it is a URL (or take ``fetched``, where start-up already did), then check the local
    path; raise ``WeightsError`` on any problem."""
    from pipeline.loading.remote import fetch_weights, is_url

    origin = setting
    if fetched is not None:
        path = fetched
    elif is_url(setting):
        try:
            path = fetch_weights(setting, MODELS[model].weights_env).path
        except FetchError as error:
            raise WeightsError(str(error)) from error
    else:
        path = Path(setting).expanduser()
    if not path.exists():
        raise WeightsError(f"weights not found at {path}: expected {expected(model)} (set ${MODELS[model].weights_env})")
    if path.is_dir():
        _check_diffusers_folder(path, model)
        layout = "diffusers"
    elif path.suffix == ".safetensors" and MODELS[model].single_file:
        check_safetensors(path)
        layout = "single_file"
    else:
        raise WeightsError(f"{path}: unsupported weights file; expected {expected(model)}")
    log.info("weights: %s %s (%s)", model, path, layout)
    return WeightsSource(path=path, layout=layout, origin=origin, model=model)
