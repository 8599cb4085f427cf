"""The field types every request model is declared with, and pydantic's errors as ``InputError``.

Each input is declared once, as a field of a pydantic model (type, bounds, default, description),
the way ADetailer declares ``ADetailerArgs``. Pydantic validates; ``parse`` turns its first error
into an ``InputError`` that names the field, the value and what is allowed, in words built from
that same declaration, and Cog's ``Input()`` in ``predict.py`` is built from it too (``declared``).

The rules JSON imposes are kept: an integral float is an integer (JSON has no int type), a bool is
never a number, NaN and infinities are refused, and ``None`` for a field that is not optional means
"use the default", as Cog sends it.
"""

from __future__ import annotations

import math
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional, TypeVar, Union

import annotated_types
from pydantic import BaseModel, BeforeValidator, StrictBool, StrictStr, ValidationError

from request.errors import InputError

Model = TypeVar("Model", bound=BaseModel)


def _integral(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("not an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("not an integer")
        return int(value)
    return value


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("not a finite number")
    return float(value)


def _file(value: Any) -> Any:
    # Over HTTP a file input arrives as the caller's string: an http(s) or data: URL, fetched later
    # through the fenced fetcher (``request.reference_image``). A bare string is never taken as a
    # server-side path. In-process callers (tests, scripts/predict_local.py) pass pathlib.Path objects.
    if isinstance(value, os.PathLike):
        return Path(value)
    if isinstance(value, str) and value.startswith(("http://", "https://", "data:")):
        return value
    raise ValueError("not an http(s) or data: URL (a path on the server is not read)")


Int = Annotated[int, BeforeValidator(_integral)]
Number = Annotated[float, BeforeValidator(_number)]
Text = StrictStr
Flag = StrictBool
FILE_VALUE = Union[Path, str]  # a local path (in-process callers) or a URL string (HTTP callers)
File = Annotated[FILE_VALUE, BeforeValidator(_file)]


@dataclass(frozen=True)
class Declared:
    """One field's declaration, read back from its model: what ``Input()`` and the errors use."""

    kind: type  # int, float, str, bool or Path
    default: Any
    description: str
    optional: bool  # None (empty) is a legal value
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    multiple_of: Optional[int] = None
    max_length: Optional[int] = None
    choices: Optional[tuple[str, ...]] = None


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The bare type under ``Optional`` and ``Annotated``, and whether it was optional."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        annotation, optional = args[0], len(args) < len(typing.get_args(annotation))
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation, optional


def declared(model: type[BaseModel], name: str) -> Declared:
    info = model.model_fields[name]
    annotation, optional = _unwrap(info.annotation)
    choices = tuple(typing.get_args(annotation)) if typing.get_origin(annotation) is Literal else None
    kind = str if choices else Path if annotation == FILE_VALUE else annotation
    bounds: dict[str, Any] = {}
    for item in info.metadata:
        if isinstance(item, annotated_types.Ge):
            bounds["minimum"] = item.ge
        elif isinstance(item, annotated_types.Le):
            bounds["maximum"] = item.le
        elif isinstance(item, annotated_types.MultipleOf):
            bounds["multiple_of"] = item.multiple_of
        elif isinstance(item, annotated_types.MaxLen):
            bounds["max_length"] = item.max_length
    return Declared(kind=kind, default=info.default, description=info.description or "", optional=optional,
                    choices=choices, **bounds)


def rule(field: Declared) -> str:
    """The allowed values in words, used in every error for the field."""
    if field.choices is not None:
        return "allowed: " + ", ".join(field.choices) + (", or empty" if field.optional else "")
    if field.kind is bool:
        return "allowed: true or false"
    if field.kind is Path:
        return ("allowed: an http(s) or data: URL of an image (a path on the server is not read)"
                + (", or empty" if field.optional else ""))
    if field.kind is str:
        parts = [f"a string of at most {field.max_length} characters"]
    elif field.kind is int:
        parts = [f"an integer from {field.minimum} to {field.maximum}"]
    else:
        parts = [f"a number from {field.minimum:g} to {field.maximum:g}"]
    if field.multiple_of:
        parts.append(f"a multiple of {field.multiple_of}")
    if field.optional:
        parts.append("or empty")
    return "allowed: " + ", ".join(parts)


def _input_error(model: type[BaseModel], error: ValidationError) -> InputError:
    first = error.errors()[0]
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, InputError):  # a model's own rule (which inputs go together) said it in its words
        return cause
    name, value = str(first["loc"][0]), first.get("input")
    if first["type"] == "extra_forbidden":
        return InputError(name, value, "unknown input; known: " + ", ".join(model.model_fields))
    field = declared(model, name)
    if first["type"] == "string_too_long":
        return InputError(name, f"<{len(value)} characters>", rule(field))
    if first["type"] == "string_type":
        return InputError(name, value, "expected a string; " + rule(field))
    return InputError(name, value, rule(field))


def parse(model: type[Model], raw: Mapping[str, Any]) -> Model:
    """Validate ``raw`` (as Cog or a JSON caller passes it) into ``model``, or raise ``InputError``."""
    values = {name: value for name, value in raw.items()
              if value is not None or name not in model.model_fields or declared(model, name).optional}
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise _input_error(model, error) from None
