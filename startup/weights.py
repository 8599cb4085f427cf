"""Turn the operator's weights setting (a path or a URL) into a checked local source.

Everything that can be wrong with weights is found here, before any model class is built, and
reported with the path and what was expected: a missing folder, a folder that is not a diffusers
model, a truncated or corrupt ``.safetensors`` file.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pipeline.models import MODELS, weights_setting
from startup.fetch import FetchError, download

log = logging.getLogger(__name__)

CACHE_ENV = "WEIGHTS_CACHE"
DEFAULT_CACHE = "weights/cache"


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


@dataclass(frozen=True)
class WeightsSource:
    """A local, checked weights location and its layout."""

    path: Path
    layout: str  # "diffusers" or "single_file"
    origin: str  # what the operator configured
    model: str = "sdxl"  # a name in pipeline.models.MODELS

    @property
    def model_id(self) -> str:
        return f"{self.model}:{self.path.resolve()}"


def configured_weights(explicit: Optional[str] = None, model: str = "sdxl") -> str:
    """The weights setting in force: setup's argument, else the model's env var (``$SDXL_WEIGHTS``...),
    else its default folder."""
    return weights_setting(model, explicit)


def check_safetensors(path: Path) -> None:
    """Read the header and check the file is as long as the header says; no tensor data is read."""
    from pipeline.weight_stream import safetensors_header

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


def resolve_weights(setting: str, cache_dir: Optional[Path] = None, model: str = "sdxl") -> WeightsSource:
    """Fetch if it is a URL, then check the local path; raise ``WeightsError`` on any problem."""
    origin = setting
    if setting.startswith(("http://", "https://")):
        cache = cache_dir or Path(os.environ.get(CACHE_ENV, DEFAULT_CACHE))
        try:
            path = download(setting, cache)
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
