"""What torch's symbolic-shape helpers answer for plain sizes, so building a model never imports sympy.

While transformers builds a text encoder on the meta device, torch's meta kernels (``torch._refs``,
``torch._prims_common``) ask ``torch.fx.experimental.symbolic_shapes`` questions about sizes:
``guard_or_false(n == 1)``, ``is_nested_int(n)``, ``sym_and(a, b)``. That module imports sympy
(about 0.3 s on the CPU), and every size it is asked about here is a plain ``int`` or ``bool``: for
those, each helper returns its argument or a constant without touching sympy.

Each function below is the plain branch of the torch function of the same name, copied from torch
2.11 and 2.14 (the device image and CI). It answers only for arguments of the exact plain types that
branch handles, and returns :data:`NOT_PLAIN` for anything else (a ``torch.SymInt``, a wrong type), so
that the caller asks the real function, which keeps every symbolic and every error path torch's own.
``tests/test_deferred_modules.py`` checks each answer against the installed torch's function.
"""

from __future__ import annotations

import functools
import operator
from typing import Any, Callable

NOT_PLAIN: Any = object()  # "ask torch": the arguments are not ones whose answer is copied here

_SCALARS = (bool, int, float)


def expect_true(a: Any, skip: int = 0) -> Any:
    return a if type(a) is bool else NOT_PLAIN


def guard_or_false(a: Any) -> Any:
    return a if type(a) is bool else NOT_PLAIN


def guard_or_true(a: Any) -> Any:
    return a if type(a) is bool else NOT_PLAIN


def guard_size_oblivious(expr: Any) -> Any:
    return expr if type(expr) is bool else NOT_PLAIN


def is_nested_int(s: Any) -> Any:
    return False if type(s) in _SCALARS else NOT_PLAIN


def has_hint(a: Any) -> Any:  # torch 2.11
    return True if type(a) in _SCALARS else NOT_PLAIN


def has_guarding_hint(a: Any) -> Any:  # torch 2.14
    return True if type(a) in _SCALARS else NOT_PLAIN


def size_hint(a: Any, fallback: Any = None) -> Any:  # torch 2.11
    return a if type(a) is int else NOT_PLAIN


def guarding_hint_or_throw(a: Any) -> Any:  # torch 2.14
    return a if type(a) in (bool, int) else NOT_PLAIN


def sym_and(x: Any, *others: Any) -> Any:
    if all(type(v) is bool for v in (x, *others)):
        return functools.reduce(operator.and_, others, x)
    return NOT_PLAIN


def sym_or(x: Any, *others: Any) -> Any:
    if all(type(v) is bool for v in (x, *others)):
        return functools.reduce(operator.or_, others, x)
    return NOT_PLAIN


def sym_eq(x: Any, y: Any) -> Any:
    if isinstance(x, (tuple, list)) and isinstance(y, (tuple, list)):
        if len(x) != len(y):
            return False
        results = [sym_eq(a, b) for a, b in zip(x, y, strict=True)]
        if any(result is NOT_PLAIN for result in results):
            return NOT_PLAIN
        return functools.reduce(operator.and_, results, True)
    if type(x) in (bool, int) and type(y) in (bool, int):
        return x == y
    return NOT_PLAIN


# the helpers torch's meta kernels were seen asking while a pipeline is built (torch 2.11 and 2.14)
PLAIN_ANSWERS: dict[str, Callable[..., Any]] = {
    fn.__name__: fn
    for fn in (expect_true, guard_or_false, guard_or_true, guard_size_oblivious, is_nested_int, has_hint,
               has_guarding_hint, size_hint, guarding_hint_or_throw, sym_and, sym_or, sym_eq)
}
