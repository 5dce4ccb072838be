"""Which initializer for which activation: gains of every Keras activation.

`keras_winit.gain(activation, method=...)` for every elementwise activation
of `keras.activations`, with the three rules side by side:

- `"torch"`: PyTorch's `calculate_gain` table (only its names; "—"
  elsewhere);
- `"kumar"`: Kumar (2017), `1 / (|g'(0)| √(1 + g(0)²))`, or
  `√(2 / (a² + b²))` for a kink at 0 ("—" when `g'(0) = 0`);
- `"moment"`: `1 / √E[g(z)²]`, z ~ N(0, 1), the rule behind He et al.'s
  √2: it keeps the pre-activation variance from layer to layer.

Use the gain with a fan-scaled initializer:
`keras_winit.ActivationScaling(name, method=...)`, i.e. `Var(w) = gain² /
fan_in` (so `VarianceScaling(scale=gain**2)`). Activations that are not
elementwise (`softmax`, `log_softmax`, `sparsemax`, `glu`) or need
arguments (`threshold`) are listed as skipped.

Run: `python tutorials/08_gain_table.py [--fast] [--out DIR]`.

References:
    - PyTorch `torch.nn.init.calculate_gain`.
    - Kumar, 2017, https://arxiv.org/abs/1704.08863
    - He et al., 2015, https://arxiv.org/abs/1502.01852
"""

import sys
import warnings

import keras
import numpy as np
from _common import format_table
from _common import output_dir
from _common import pyplot
from _common import run_script
from _common import save_figure

import keras_winit

METHODS = ("torch", "kumar", "moment")
_NOT_ACTIVATIONS = ("get", "serialize", "deserialize")


def keras_activations():
    """`(elementwise names, {skipped name: reason})` of keras.activations."""
    names, skipped = [], {}
    probe = np.linspace(-3, 3, 7, dtype="float32")
    for name in sorted(dir(keras.activations)):
        if name.startswith("_") or name in _NOT_ACTIVATIONS:
            continue
        fn = getattr(keras.activations, name)
        if not callable(fn):
            continue
        try:
            with warnings.catch_warnings():
                # softmax over an axis of size 1 warns: that is the test.
                warnings.simplefilter("ignore")
                column = keras.ops.convert_to_numpy(fn(probe.reshape(-1, 1)))
                row = keras.ops.convert_to_numpy(fn(probe.reshape(1, -1)))
        except TypeError:
            skipped[name] = "needs arguments"
            continue
        # glu halves its axis: ValueError (TF), RuntimeError (torch),
        # AssertionError (JAX).
        except (ValueError, RuntimeError, AssertionError):
            skipped[name] = "not elementwise"
            continue
        if column.shape != (7, 1) or row.shape != (1, 7):
            skipped[name] = "changes the shape"
        elif not np.allclose(column.ravel(), row.ravel(), atol=1e-6):
            skipped[name] = "not elementwise"
        else:
            names.append(name)
    return names, skipped


#: Above this, Kumar's gain means `g'(0)` is zero up to rounding (e.g.
#: `tanh_shrink(x) = x - tanh(x) ≈ x³/3`): the rule does not apply.
_KUMAR_MAX = 1e3


def gain_or_none(name, method):
    """The gain, or None where the rule does not define one."""
    try:
        value = float(keras_winit.gain(name, method=method))
    except ValueError:
        return None
    if method == "kumar" and value > _KUMAR_MAX:
        return None
    return value


def main(fast=False, out=None):
    out = output_dir(out)
    names, skipped = keras_activations()
    table = {n: {m: gain_or_none(n, m) for m in METHODS} for n in names}
    rows = [
        [n]
        + [
            "—" if table[n][m] is None else f"{table[n][m]:.4f}"
            for m in METHODS
        ]
        + [
            "—"
            if table[n]["moment"] is None
            else f"{table[n]['moment'] ** 2:.3f}"
        ]
        for n in names
    ]
    print(
        format_table(
            ["activation", "torch", "kumar", "moment", "scale (moment²)"],
            rows,
        )
    )
    print("Skipped: " + ", ".join(f"{k} ({v})" for k, v in skipped.items()))

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(names) + 1.2))
    pos = np.arange(len(names))
    for i, method in enumerate(METHODS):
        values = [table[n][method] or 0.0 for n in names]
        ax.barh(pos + (i - 1) * 0.27, values, height=0.27, label=method)
    ax.set_yticks(pos, names, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="gain (std multiplier; 0 = not defined)")
    ax.legend(fontsize=8)
    numbers = {
        "gains": table,
        "skipped": skipped,
        "figure": save_figure(fig, out, "08_gain_table.png"),
    }
    return numbers


if __name__ == "__main__":
    sys.exit(run_script(main, __doc__))
