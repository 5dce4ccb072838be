"""Kernel layouts: the true fans of a weight, given what the layer does with it.

An initializer only sees a shape, so `keras_winit.fans.compute_fans` (like
Keras) assumes `(*spatial, in, out)` for every weight of rank ≥ 3. Several
Keras layers store their kernels differently, and then the fans, and so the
std, come out wrong: `DepthwiseConv2D(3, depth_multiplier=2)` on 16 channels
has a `(3, 3, 16, 2)` kernel and gets `fan_in = 144` instead of 9 (a std 4×
too small); `Conv2DTranspose` kernels are `(h, w, out, in)`, so fan-in and
fan-out are swapped; an `LSTM` kernel `(in, 4 · units)` counts all four
gates as fan-out. A *layout* names how a kernel is laid out, so that
`compute_layout_fans` can count the connections of one unit correctly.

`fan_in` is the number of inputs that one output unit adds up (what the
forward pass sums); `fan_out` is the number of outputs one input unit feeds
(what the backward pass sums). Shapes are Keras' own (checked against the
`build` methods of Keras 3.15); `k` is the product of the spatial (kernel
window) sizes, 1 for a 1×…×1 kernel:

| layout           | kernel shape (Keras)          | fan_in   | fan_out       |
|------------------|-------------------------------|----------|---------------|
| `"dense"`        | `(in, out)`                   | `in`     | `out`         |
| `"conv"`         | `(*window, in/groups, out)`   | `in/g·k` | `out/g·k`     |
| `"pointwise"`    | `(1, …, 1, in, out)`          | `in`     | `out`         |
| `"conv_transpose"` | `(*window, out, in)`        | `in·k`   | `out·k`       |
| `"depthwise"`    | `(*window, in, multiplier)`   | `k`      | `k·multiplier`|
| `"recurrent"`    | `(in, gates · units)`         | `in`     | `units`       |
| `"conv_recurrent"` | `(*window, in, gates · f)`  | `in·k`   | `f·k`         |
| `"einsum"`       | from the equation             | `∏ in`   | `∏ out`       |
| `"embedding"`    | `(vocab, dim)`                | `1`      | `dim`         |
| `"default"`      | any (Keras' convention)       | see `keras_winit.fans` |  |

Why:

- `"conv"` (`Conv1D/2D/3D`): an output unit sums a window of `k` positions
  over the `in/groups` channels of its group; an input unit feeds `k`
  positions of the `out/groups` channels of its group. Without groups this
  is Keras' convention; with `groups > 1` Keras (and PyTorch) count all
  `out` filters as fan-out.
- `"pointwise"`: the 1×1 second half of `SeparableConv1D/2D` — a dense
  layer over channels.
- `"conv_transpose"` (`Conv1DTranspose/2DTranspose/3DTranspose`): Keras
  stores the kernel as `(*window, out, in)` (the kernel of the convolution
  it transposes), so the last axis is the input. Like every framework, the
  count ignores strides (as the fan-out of a convolution does).
- `"depthwise"` (`DepthwiseConv1D/2D` and the first half of
  `SeparableConv1D/2D`): output channel `(c, m)` sees input channel `c`
  only, so it sums `k` values; input channel `c` feeds its `multiplier`
  output channels at `k` positions each.
- `"recurrent"` (`SimpleRNN`, `LSTM`, `GRU` kernels `(in, G·units)` and
  recurrent kernels `(units, G·units)`): the `G` gates are fused along the
  last axis; each gate is its own `(in, units)` matrix, so a gate's unit
  sums `in` values and an input unit feeds `units` units of each gate.
- `"conv_recurrent"` (`ConvLSTM1D/2D/3D` kernels `(*window, in, 4·f)` and
  recurrent kernels `(*window, f, 4·f)`, `f = filters`): the gates are
  fused along the last axis as for `"recurrent"`, and each gate is its own
  convolution `(*window, in, f)`, so its fans are those of `"conv"` with
  `f` filters: a gate's unit sums `k` positions of `in` channels, an input
  unit feeds `k` positions of the `f` filters of each gate. Keras' count
  on the fused kernel makes the fan-out 4× too large.
- `"einsum"` (`EinsumDense`, and so `MultiHeadAttention`): kernel axes
  whose letter appears in the layer's input but not in its output are
  summed over (fan-in); letters in the output but not the input are output
  axes (fan-out); a letter in both is a batch-like axis (as the channel of
  a depthwise kernel) and counts in neither. Keras counts such shared
  letters as output axes.
- `"embedding"`: the input is a one-hot token, so an output unit receives
  exactly one non-zero input (`fan_in = 1`, which makes LeCun normal equal
  PyTorch's `N(0, 1)` default); a token feeds `dim` units.

Explicit `fan_in`/`fan_out` arguments always win over what the layout
implies.
"""

import math
import numbers
import re
from collections.abc import Sequence
from typing import cast

from keras_winit import _checks

#: Layout names understood by `compute_layout_fans`.
LAYOUTS = (
    "dense",
    "conv",
    "pointwise",
    "conv_transpose",
    "depthwise",
    "recurrent",
    "conv_recurrent",
    "einsum",
    "embedding",
    "default",
)

_EQUATION = re.compile(
    r"^\s*([a-zA-Z.]*)\s*,\s*([a-zA-Z]+)\s*->\s*([a-zA-Z.]*)"
)


def compute_layout_fans(
    shape: Sequence[int],
    layout: str,
    *,
    groups: int = 1,
    gates: int = 1,
    equation: str | None = None,
    fan_in: int | None = None,
    fan_out: int | None = None,
) -> tuple[int, int]:
    """Returns the true `(fan_in, fan_out)` of a kernel with a known layout.

    See the module docstring for the table of layouts and why each counts
    its fans as it does. For `"recurrent"` and `"conv_recurrent"` the fans
    are those of one gate.

    Examples:

    >>> # DepthwiseConv2D(3, depth_multiplier=2) on 16 channels:
    >>> keras_winit.layouts.compute_layout_fans((3, 3, 16, 2), "depthwise")
    (9, 18)
    >>> keras_winit.fans.compute_fans((3, 3, 16, 2))  # Keras' count
    (144, 18)
    >>> # Conv2DTranspose(32) on 8 channels: kernel (3, 3, out=32, in=8).
    >>> keras_winit.layouts.compute_layout_fans((3, 3, 32, 8), "conv_transpose")
    (72, 288)
    >>> # LSTM(64) on 10 features: kernel (10, 4 * 64), per gate:
    >>> keras_winit.layouts.compute_layout_fans((10, 256), "recurrent", gates=4)
    (10, 64)
    >>> # ConvLSTM2D(8, 3) on 5 channels: kernel (3, 3, 5, 4 * 8), per gate:
    >>> keras_winit.layouts.compute_layout_fans(
    ...     (3, 3, 5, 32), "conv_recurrent", gates=4)
    (45, 72)
    >>> # MultiHeadAttention output projection (heads, head_dim, dim):
    >>> keras_winit.layouts.compute_layout_fans(
    ...     (4, 16, 64), "einsum", equation="abcd,cde->abe")
    (64, 64)

    Args:
        shape: Sequence of positive ints, the kernel's shape.
        layout: One of `LAYOUTS`.
        groups: Positive int, the `groups` of a `"conv"` kernel.
        gates: Positive int, the number of gates fused in a `"recurrent"`
            or `"conv_recurrent"` kernel (SimpleRNN 1, GRU 3, LSTM and
            ConvLSTM 4).
        equation: The einsum equation of an `"einsum"` kernel, e.g.
            `"abc,cde->abde"` (the `equation` of `EinsumDense`).
        fan_in: Optional positive int; wins over the layout's fan-in.
        fan_out: Optional positive int; wins over the layout's fan-out.

    Returns:
        A tuple of two ints `(fan_in, fan_out)`.

    Reference:
        - [Glorot & Bengio, 2010](
          https://proceedings.mlr.press/v9/glorot10a.html)
        - [He et al., 2015](https://arxiv.org/abs/1502.01852)
    """
    shape = _checks.shape(shape, allow_zero=False)
    if layout not in LAYOUTS:
        raise ValueError(
            f"Invalid `layout` argument: {layout!r}. Expected one of {LAYOUTS}."
        )
    groups = _check_count("groups", groups)
    gates = _check_count("gates", gates)
    fan_in = _check_optional_count("fan_in", fan_in)
    fan_out = _check_optional_count("fan_out", fan_out)
    rank = len(shape)
    if layout == "default":
        from keras_winit.fans import compute_fans

        fi, fo = compute_fans(shape)
    elif layout in ("dense", "embedding"):
        _check_rank(shape, layout, rank == 2, "2")
        fi, fo = (1, shape[1]) if layout == "embedding" else shape
    elif layout in ("conv", "pointwise", "conv_transpose", "depthwise"):
        _check_rank(shape, layout, rank >= 3 or layout == "pointwise", "≥ 3")
        window = math.prod(shape[:-2])
        a, b = shape[-2], shape[-1]
        if layout == "conv":
            if b % groups:
                raise ValueError(
                    f"Argument `groups` must divide the kernel's output "
                    f"channels ({b}). Received: groups={groups}, "
                    f"shape={shape}"
                )
            fi, fo = a * window, (b // groups) * window
        elif layout == "pointwise":
            if rank < 2 or window != 1:
                raise ValueError(
                    "A `'pointwise'` kernel must have shape (1, ..., 1, in, "
                    f"out). Received: shape={shape}"
                )
            fi, fo = a, b
        elif layout == "conv_transpose":
            fi, fo = b * window, a * window
        else:  # depthwise: (*window, in, multiplier)
            fi, fo = window, window * b
    elif layout in ("recurrent", "conv_recurrent"):
        if layout == "recurrent":
            _check_rank(shape, layout, rank == 2, "2")
        else:
            _check_rank(shape, layout, rank >= 3, "≥ 3")
        if shape[-1] % gates:
            raise ValueError(
                f"Argument `gates` must divide the kernel's last dimension "
                f"({shape[-1]}). Received: gates={gates}, shape={shape}"
            )
        window = math.prod(shape[:-2])
        fi, fo = shape[-2] * window, (shape[-1] // gates) * window
    else:  # einsum
        # `einsum_axes` rejects a missing or malformed equation.
        in_axes, out_axes = einsum_axes(cast(str, equation), rank)
        fi = math.prod(shape[i] for i in in_axes)
        fo = math.prod(shape[i] for i in out_axes)
    if fan_in is not None:
        fi = fan_in
    if fan_out is not None:
        fo = fan_out
    return int(fi), int(fo)


def einsum_axes(
    equation: str, rank: int | None = None
) -> tuple[list[int], list[int]]:
    """Returns the kernel's `(input_axes, output_axes)` for an einsum.

    The equation is `EinsumDense`'s: `"<input>,<kernel>-><output>"`, with
    an optional `...` in the input and output. A kernel letter found in the
    input but not in the output is summed over (an input axis); a letter in
    the output but not in the input is an output axis; a letter in both is
    neither (a batch-like axis, as the channel of a depthwise kernel).

    Examples:

    >>> keras_winit.layouts.einsum_axes("abc,cde->abde")
    ([0], [1, 2])
    >>> keras_winit.layouts.einsum_axes("...b,bc->...c")
    ([0], [1])

    Args:
        equation: The einsum equation string.
        rank: Optional int, the kernel's rank, checked against the
            equation's kernel spec.

    Returns:
        A tuple of two lists of ints.
    """
    match = _EQUATION.match(equation) if isinstance(equation, str) else None
    if match is None or equation.count("->") != 1:
        raise ValueError(
            "Argument `equation` must be an einsum equation of the form "
            "'<input>,<kernel>-><output>', e.g. 'abc,cd->abd'. "
            f"Received: equation={equation!r}"
        )
    inputs, kernel, outputs = (g.replace(".", "") for g in match.groups())
    if rank is not None and len(kernel) != rank:
        raise ValueError(
            f"The kernel spec {kernel!r} of `equation` has {len(kernel)} "
            f"axes but the kernel has rank {rank}. "
            f"Received: equation={equation!r}"
        )
    in_axes = [
        i for i, c in enumerate(kernel) if c in inputs and c not in outputs
    ]
    out_axes = [
        i for i, c in enumerate(kernel) if c in outputs and c not in inputs
    ]
    return in_axes, out_axes


def _check_rank(shape, layout, ok, expected):
    if not ok:
        raise ValueError(
            f"A {layout!r} kernel must have rank {expected}. "
            f"Received: shape={shape}"
        )


def _check_count(name, value):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < 1
    ):
        raise ValueError(
            f"Argument `{name}` must be a positive integer. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def _check_optional_count(name, value):
    return None if value is None else _check_count(name, value)
