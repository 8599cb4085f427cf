"""The one error a caller's bad input produces: it names the field, the value and what is allowed."""

from __future__ import annotations

from typing import Any


class InputError(ValueError):
    """A value the caller sent is not allowed. The message names the field, the value and the rule."""

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid input {field}={value!r}: {allowed}")
