"""Argument checks shared by the public functions and classes.

Each raises a `ValueError` that names the argument and the value received,
in Keras' style (Keras' own wording first where Keras has one, our detail
after it).
"""

import math
import numbers

# No tensor has more elements than an int64 counts; a fan above it is a
# typo, and Python ints beyond float range would overflow in the formulas.
MAX_FAN = 2**63 - 1


def _real(value):
    """`value` as a float, or None unless it is a real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except (OverflowError, ValueError, TypeError):
        return math.inf  # an int too large for a float: not finite


def positive_float(name, value):
    """Returns `value` as a float; raises unless it is finite and > 0."""
    number = _real(value)
    if number is None or not math.isfinite(number) or number <= 0:
        raise ValueError(
            f"Argument `{name}` must be positive float. "
            f"Received: {name}={_short(value)}. Expected a finite number > 0."
        )
    return number


def finite_float(name, value):
    """Returns `value` as a float; raises unless it is a finite number."""
    number = _real(value)
    if number is None or not math.isfinite(number):
        raise ValueError(
            f"Argument `{name}` must be a finite number. "
            f"Received: {name}={_short(value)}"
        )
    return number


def positive_int(name, value, limit=MAX_FAN):
    """Returns `value` as an int; raises unless `0 < value <= limit`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or not 0 < int(value) <= limit
    ):
        raise ValueError(
            f"Argument `{name}` must be a positive integer no larger than "
            f"{limit}. Received: {name}={_short(value)}"
        )
    return int(value)


def choice(name, value, choices):
    """Returns `value` lower-cased; raises unless it is one of `choices`."""
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(
            f"Invalid `{name}` argument: {_short(value)}. "
            f"Expected one of {choices}."
        )
    return value.lower()


def axes(name, value):
    """Returns `value` (an int or a list/tuple of ints) as a list of ints."""
    items = [value] if isinstance(value, numbers.Integral) else value
    if (
        not isinstance(items, (list, tuple))
        or not all(
            isinstance(a, numbers.Integral)
            and not isinstance(a, bool)
            and -MAX_FAN <= int(a) <= MAX_FAN
            for a in items
        )
        or isinstance(value, bool)
    ):
        raise ValueError(
            f"Argument `{name}` must be a list of ints. "
            f"Received: {name}={_short(value)}"
        )
    return [int(a) for a in items]


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
    if (
        dims is None
        or isinstance(value, (str, bytes))
        or not all(
            isinstance(d, numbers.Integral)
            and not isinstance(d, bool)
            and smallest <= int(d) <= MAX_FAN
            for d in dims
        )
    ):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(
            f"Argument `shape` must be a sequence of {kind} integers, every "
            f"dimension known. Received: shape={_short(value)}"
        )
    return tuple(int(d) for d in dims)


def run_name(value):
    """Raises unless `value` names one subdirectory (a TensorBoard run).

    No path separators, and not `.` or `..`, which would escape `log_dir`.
    """
    if (
        not isinstance(value, str)
        or value in ("", ".", "..")
        or "/" in value
        or "\\" in value
    ):
        raise ValueError(
            "Argument `run_name` must be a non-empty name without path "
            "separators, and not '.' or '..' (the run must be a "
            f"subdirectory of `log_dir`). Received: run_name={value!r}"
        )
    return value


def boolean(name, value):
    """Raises unless `value` is `True` or `False` (not 0/1, not "yes")."""
    if not isinstance(value, bool):
        raise ValueError(
            f"Argument `{name}` must be a bool (True or False). "
            f"Received: {name}={value!r}"
        )
    return value


def _short(value, limit=200):
    """`repr(value)`, cut to `limit` characters (huge ints, long lists)."""
    try:
        text = repr(value)
    except Exception:  # e.g. an int beyond Python's str conversion limit
        bits = getattr(value, "bit_length", None)
        size = f" of {bits()} bits" if callable(bits) else ""
        text = f"<{type(value).__name__}{size}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
