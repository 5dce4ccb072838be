"""Argument checks shared by the public functions and classes.

Each raises a `ValueError` that names the argument and the value received,
in Keras' style.
"""

import math
import numbers


def positive_float(name, value):
    """Returns `value` as a float; raises unless it is finite and > 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(
            f"Argument `{name}` must be a positive finite float. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def shape(value, allow_zero=True):
    """Returns `value` as a tuple of ints; every dimension must be known.

    Args:
        value: The shape to check.
        allow_zero: Whether zero-size dimensions are accepted (an
            initializer draws an empty tensor for them; a kernel layout has
            no fans for them).
    """
    try:
        dims = tuple(value)
    except TypeError:
        dims = None
    smallest = 0 if allow_zero else 1
    if dims is None or not all(
        isinstance(d, numbers.Integral)
        and not isinstance(d, bool)
        and d >= smallest
        for d in dims
    ):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(
            f"Argument `shape` must be a sequence of {kind} integers, every "
            f"dimension known. Received: shape={value!r}"
        )
    return tuple(int(d) for d in dims)


def run_name(value):
    """Raises unless `value` names one directory (a TensorBoard run)."""
    if not isinstance(value, str) or not value or "/" in value or "\\" in value:
        raise ValueError(
            "Argument `run_name` must be a non-empty name without path "
            f"separators. Received: run_name={value!r}"
        )
    return value
