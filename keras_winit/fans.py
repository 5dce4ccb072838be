"""Fan computation: how many inputs and outputs a weight tensor connects.

Variance-scaling initializers pick their scale from the number of incoming
connections of a unit (`fan_in`) and of outgoing connections (`fan_out`).
An initializer only sees the shape of the tensor, so the fans follow a
convention about the kernel's layout. The default convention is Keras' own
(`keras.initializers.VarianceScaling`):

| rank | layout assumed            | fan_in           | fan_out           |
|------|---------------------------|------------------|-------------------|
| 0    | scalar                    | 1                | 1                 |
| 1    | vector                    | `n`              | `n`               |
| 2    | `(in, out)` (Dense)       | `shape[0]`       | `shape[1]`        |
| ≥3   | `(*spatial, in, out)`     | `in · prod(sp)`  | `out · prod(sp)`  |

With explicit `input_axes` and `output_axes` (as `EinsumDense` passes them)
the fans are the products of the sizes along those axes.
"""

import math
from collections.abc import Sequence

from keras_winit import _checks

#: Modes understood by `fan_for_mode`, in the order they are documented.
MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")


def compute_fans(
    shape: Sequence[int],
    input_axes: Sequence[int] | None = None,
    output_axes: Sequence[int] | None = None,
) -> tuple[int, int]:
    """Returns `(fan_in, fan_out)` for a weight of the given shape.

    Same result as Keras' `compute_fans` for every shape, so keras_winit
    initializers draw with the variance users expect from Keras.

    Args:
        shape: Sequence of non-negative ints, the weight's shape (a
            `ValueError` names it otherwise).
        input_axes: Optional sequence of ints, the axes that index input
            units. Must be given together with `output_axes`.
        output_axes: Optional sequence of ints, the axes that index output
            units.

    Returns:
        A tuple of two ints `(fan_in, fan_out)`.

    Examples:

    >>> keras_winit.fans.compute_fans((64, 32))
    (64, 32)
    >>> keras_winit.fans.compute_fans((3, 3, 16, 32))
    (144, 288)
    >>> keras_winit.fans.compute_fans(
    ...     (16, 4, 8), input_axes=[0], output_axes=[1, 2])
    (16, 32)
    """
    shape = _checks.shape(shape)
    if (input_axes is None) != (output_axes is None):
        raise ValueError(
            "`input_axes` and `output_axes` must be given together. "
            f"Received: input_axes={_checks._short(input_axes)}, "
            f"output_axes={_checks._short(output_axes)}"
        )
    if input_axes is not None:
        input_axes = _checks.axes("input_axes", input_axes)
        output_axes = _checks.axes("output_axes", output_axes)
        return (
            _product_over(shape, input_axes, "input_axes"),
            _product_over(shape, output_axes, "output_axes"),
        )
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive_field = math.prod(shape[:-2])
    return shape[-2] * receptive_field, shape[-1] * receptive_field


def fan_for_mode(mode: str, fan_in: float, fan_out: float) -> float:
    """Returns the fan that `mode` divides the scale by.

    Args:
        mode: One of `"fan_in"`, `"fan_out"`, `"fan_avg"` (arithmetic mean)
            or `"fan_geo_avg"` (geometric mean, `sqrt(fan_in * fan_out)`).
        fan_in: Number of input units.
        fan_out: Number of output units.

    Returns:
        A float, never below 1 (as in Keras, so zero-size shapes work).
    """
    if mode not in MODES:
        raise ValueError(
            f"Invalid `mode` argument: {_checks._short(mode)}. "
            f"Expected one of {MODES}."
        )
    try:
        if mode == "fan_in":
            fan = fan_in
        elif mode == "fan_out":
            fan = fan_out
        elif mode == "fan_avg":
            fan = (fan_in + fan_out) / 2.0
        else:
            fan = math.sqrt(fan_in * fan_out)
        return max(1.0, float(fan))
    except OverflowError:
        raise ValueError(
            f"The {mode} of fan_in={fan_in}, fan_out={fan_out} is too large "
            "for a float."
        ) from None


def _product_over(shape, axes, name):
    rank = len(shape)
    product = 1
    for axis in axes:
        if not -rank <= int(axis) < rank:
            raise ValueError(
                f"Axis {axis} in `{name}` is out of range for a weight of "
                f"rank {rank}. Received: {name}={list(axes)}, shape={shape}"
            )
        product *= shape[int(axis)]
    return int(product)
