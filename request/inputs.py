"""Every input a prediction takes: the fields of the two request models, each declared once there."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel

from request.adetailer import ADetailerArgs
from request.fields import Declared, declared
from request.generation import GenerationRequest

INPUT_MODELS: tuple[type[BaseModel], ...] = (GenerationRequest, ADetailerArgs)
INPUTS: Mapping[str, Declared] = {name: declared(model, name) for model in INPUT_MODELS for name in model.model_fields}
FILE_INPUTS: tuple[str, ...] = tuple(name for name, field in INPUTS.items() if field.kind is Path)


def split_inputs(raw: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``raw`` as (generation inputs, ADetailer inputs); a name neither declares stays with the
    generation inputs, whose model refuses it by name."""
    adetailer = {name: value for name, value in raw.items() if name in ADetailerArgs.model_fields}
    return {name: value for name, value in raw.items() if name not in adetailer}, adetailer
