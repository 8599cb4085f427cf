"""Typed, bounded input fields and the one error type a caller's bad value produces.

Every request option in the service (generation, ADetailer, later IP-Adapter and Flux) is a
``FieldSpec`` in a table; ``validate_fields`` is the only place values are checked, so every error
reads the same way: the field, the value, and what is allowed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from request.errors import InputError

Number = Union[int, float]


@dataclass(frozen=True)
class FieldSpec:
    """Bounds for one input. ``None`` means no bound of that kind."""

    kind: type
    default: Any = None
    minimum: Optional[Number] = None
    maximum: Optional[Number] = None
    choices: Optional[Sequence[str]] = None
    multiple_of: Optional[int] = None
    max_length: Optional[int] = None
    optional: bool = False
    description: str = ""

    def rule(self) -> str:
        """The allowed values in words, used in every error for this field."""
        if self.choices is not None:
            return "allowed: " + ", ".join(self.choices)
        if self.kind is bool:
            return "allowed: true or false"
        if self.kind is Path:
            return "allowed: an image file or URL" + (", or empty" if self.optional else "")
        parts = []
        if self.kind is str:
            parts.append(f"a string of at most {self.max_length} characters")
        else:
            if self.kind is int:
                parts.append(f"an integer from {self.minimum} to {self.maximum}")
            else:
                parts.append(f"a number from {self.minimum:g} to {self.maximum:g}")
            if self.multiple_of:
                parts.append(f"a multiple of {self.multiple_of}")
        if self.optional:
            parts.append("or empty")
        return "allowed: " + ", ".join(parts)


def coerce_field(name: str, spec: FieldSpec, value: Any) -> Any:
    """Check one value's type and bounds; return it in its canonical type."""
    if value is None:
        if spec.optional:
            return None
        if spec.default is not None:
            return spec.default
        raise InputError(name, value, "this field is required")
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise InputError(name, value, spec.rule())
        return value
    if spec.kind is Path:
        # Cog delivers file inputs as local paths; their content is checked by whoever reads them.
        if not isinstance(value, (str, os.PathLike)):
            raise InputError(name, value, spec.rule())
        return Path(value)
    if spec.kind is str:
        if not isinstance(value, str):
            raise InputError(name, value, "expected a string; " + spec.rule())
        if spec.choices is not None and value not in spec.choices:
            raise InputError(name, value, spec.rule())
        if spec.max_length is not None and len(value) > spec.max_length:
            raise InputError(name, f"<{len(value)} characters>", spec.rule())
        return value
    # JSON has no int/float split, so an integral float is an integer; bools are never numbers.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(name, value, spec.rule())
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(name, value, spec.rule())
    if spec.kind is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise InputError(name, value, spec.rule())
            value = int(value)
    else:
        value = float(value)
    if (spec.minimum is not None and value < spec.minimum) or (
        spec.maximum is not None and value > spec.maximum
    ):
        raise InputError(name, value, spec.rule())
    if spec.multiple_of and value % spec.multiple_of:
        raise InputError(name, value, spec.rule())
    return value


def validate_fields(raw: Mapping[str, Any], specs: Mapping[str, FieldSpec]) -> dict[str, Any]:
    """Check every field of ``specs`` in ``raw`` (absent means default); refuse unknown keys.

    Unknown keys are refused rather than ignored: a misspelt option silently doing nothing is the
    kind of bug this service exists to avoid.
    """
    unknown = sorted(set(raw) - set(specs))
    if unknown:
        raise InputError(unknown[0], raw[unknown[0]], "unknown input; known: " + ", ".join(specs))
    return {name: coerce_field(name, spec, raw.get(name, spec.default)) for name, spec in specs.items()}
