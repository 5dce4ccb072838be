"""Shared helpers of the tutorials: data, models, training, figures.

Every tutorial `NN_name.py` defines `main(fast=False, out=None)`, which runs
its experiment, writes its figures into `out` and returns its key numbers
as a dict; `run_script(main, doc)` gives it the command line
`python tutorials/NN_name.py [--fast] [--out DIR]`.

Data and models come from `keras_winit.experiments` (scikit-learn's
digits, standardized, a fixed stratified split; Dense-only MLPs; per-layer
forward and backward statistics by `keras_winit`'s probe), so the tutorials
and `keras-winit demo` measure the same things the same way, on the
TensorFlow, JAX and PyTorch backends (`KERAS_BACKEND`).
"""

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_winit.experiments import build_mlp  # noqa: E402
from keras_winit.experiments import layer_statistics  # noqa: E402, F401
from keras_winit.experiments import load_digits_split  # noqa: E402

#: Loss of a uniform guess over the 10 digit classes.
LN10 = math.log(10.0)
#: Where the figures of a full run are kept (beside the markdown pages).
HERE = os.path.dirname(os.path.abspath(__file__))


def digits(seed=0):
    """`(x_train, y_train, x_val, y_val)`, cached per seed."""
    if seed not in _DIGITS:
        _DIGITS[seed] = load_digits_split(seed=seed)
    return _DIGITS[seed]


_DIGITS = {}


def output_dir(out):
    """The directory for figures: `out`, or the tutorials folder."""
    path = os.fspath(out) if out is not None else HERE
    os.makedirs(path, exist_ok=True)
    return path


def train(
    model,
    data,
    epochs,
    batch_size=64,
    learning_rate=0.003,
    momentum=0.9,
    seed=0,
    optimizer=None,
    validation=True,
):
    """Compiles `model` (sparse cross-entropy, accuracy) and fits it.

    The default optimizer is the demo's: SGD with momentum, which, unlike
    Adam, does not rescale a vanishing gradient back to a useful step.

    Returns:
        `history.history`: per-epoch `loss`, `accuracy` and, when
        `validation` is true, `val_loss`, `val_accuracy` (lists of floats).
        Fast modes skip validation: it is a second graph to trace.
    """
    x, y, x_val, y_val = data
    keras.utils.set_random_seed(seed)
    if optimizer is None:
        optimizer = keras.optimizers.SGD(learning_rate, momentum=momentum)
    model.compile(
        optimizer=optimizer,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history = model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=epochs,
        validation_data=(x_val, y_val) if validation else None,
        verbose=0,
    )
    return {k: [float(v) for v in vs] for k, vs in history.history.items()}


def model_for(initializer, depth, width, activation, seed=0, **kwargs):
    """`build_mlp` with every random draw fixed by `seed`."""
    keras.utils.set_random_seed(seed)
    return build_mlp(depth, width, initializer, activation=activation, **kwargs)


def per_layer_ratio(values):
    """Geometric mean of `values[i + 1] / values[i]` (the factor per layer)."""
    values = np.asarray(values, dtype=np.float64)
    return float((values[-1] / values[0]) ** (1.0 / (len(values) - 1)))


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out, filename):
    """Saves `fig` as a small PNG in `out`; returns its path."""
    path = os.path.join(out, filename)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    pyplot().close(fig)
    return path


def plot_curves(ax, curves, key, title, ylabel, hline=None):
    """One line per run: `curves` maps a label to a `train` history."""
    for label, history in curves.items():
        values = history[key]
        ax.plot(range(1, len(values) + 1), values, label=label)
    if hline is not None:
        ax.axhline(hline, color="gray", lw=0.8, ls=":")
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.legend(fontsize=7)


def format_table(headers, rows):
    """A plain-text table (also valid Markdown)."""
    cells = [[str(h) for h in headers]] + [
        [c if isinstance(c, str) else f"{c:.4g}" for c in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row):
        return (
            "| "
            + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
            + " |"
        )

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def run_script(main, doc):
    """The command line of a tutorial: `[--fast] [--out DIR]`."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument(
        "--fast",
        action="store_true",
        help="a smaller, quicker version (the one the tests run)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="directory of the figures (default: the tutorials folder)",
    )
    args = parser.parse_args()
    start = time.perf_counter()
    numbers = main(fast=args.fast, out=args.out)
    print(f"\nKey numbers ({time.perf_counter() - start:.0f} s):")
    print(json.dumps(numbers, indent=1, default=_jsonable))
    return 0


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


if __name__ == "__main__":
    sys.exit("This module holds helpers; run one of the tutorials instead.")
