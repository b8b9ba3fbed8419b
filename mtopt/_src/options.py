"""Validation of method options: one mechanism, one kind of message, for every factory.

Every method factory checks its options eagerly, when it is called, with the
functions below. They all raise ``ValueError`` (``TypeError`` only where noted)
with the message ``"<method>: <name> must be <what>, got <value>."``, so the
same bad value gets the same kind of message whichever method receives it.
Python ``bool`` is never accepted as a number (``max_iter=True`` is an error),
NumPy scalars are, and float options must be finite.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np


def _fail(method: str, name: str, what: str, value: Any) -> ValueError:
    return ValueError(f"{method}: {name} must be {what}, got {value!r}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def integer(value: Any, name: str, method: str, *, minimum: int = 1) -> int:
    """An int option ``>= minimum`` (default: a positive int); returns a Python int."""
    what = "a positive int" if minimum == 1 else (
        "a non-negative int" if minimum == 0 else f"an int >= {minimum}")
    if not _is_int(value) or int(value) < minimum:
        raise _fail(method, name, what, value)
    return int(value)


def optional_integer(value: Any, name: str, method: str, *, minimum: int = 1) -> Optional[int]:
    """``None`` or an int option ``>= minimum``."""
    if value is None:
        return None
    what = "a positive int or None" if minimum == 1 else f"an int >= {minimum} or None"
    if not _is_int(value) or int(value) < minimum:
        raise _fail(method, name, what, value)
    return int(value)


def real(
    value: Any,
    name: str,
    method: str,
    *,
    positive: bool = False,
    nonnegative: bool = False,
    maximum: Optional[float] = None,
) -> float:
    """A finite float option (ints accepted), optionally ``> 0``, ``>= 0`` and ``<= maximum``."""
    if positive:
        what = "a positive finite float"
    elif nonnegative:
        what = "a non-negative finite float"
    else:
        what = "a finite float"
    if maximum is not None:
        what += f" <= {maximum:g}"
    ok = _is_real(value) and np.isfinite(float(value))
    if ok:
        v = float(value)
        ok = not ((positive and not v > 0) or (nonnegative and not v >= 0)
                  or (maximum is not None and v > maximum))
    if not ok:
        raise _fail(method, name, what, value)
    return float(value)


def probability(value: Any, name: str, method: str) -> float:
    """A float option in [0, 1]."""
    if not (_is_real(value) and 0.0 <= float(value) <= 1.0):
        raise _fail(method, name, "a float in [0, 1]", value)
    return float(value)


def choice(value: Any, name: str, method: str, choices: Sequence[Any]) -> Any:
    """One of ``choices`` (compared with ``==``; bools are not ints here)."""
    for c in choices:
        if type(value) is type(c) and value == c:
            return value
    listed = ", ".join(repr(c) for c in choices)
    raise _fail(method, name, f"one of {listed}", value)


def boolean(value: Any, name: str, method: str) -> bool:
    """A Python (or NumPy) bool option."""
    if not isinstance(value, (bool, np.bool_)):
        raise _fail(method, name, "True or False", value)
    return bool(value)
