"""`keras-winit demo`: Glorot vs He initialization on a deep ReLU network.

Trains the same deep ReLU multilayer perceptron on scikit-learn's digits
data (1797 real 8×8 images, shipped with scikit-learn, nothing is
downloaded) once per initializer — by default `keras_winit.GlorotNormal`
and `keras_winit.HeNormal` — and compares them:

- a compact per-epoch progress line for every run;
- per-layer gradient statistics logged to TensorBoard during `fit` by
  `keras_winit.callbacks.GradientVarianceLogger`, one run per initializer
  (`<output-dir>/logs/<initializer>/gradients`), beside Keras' own loss
  curves (`.../train`, `.../validation`);
- a side-by-side table: gradient variance of the first and last layer's
  kernel and activation std of the last hidden layer at initialization,
  final loss and accuracy on the training and validation data;
- a PNG figure (loss curves, per-layer gradient variance and activation
  std at initialization), when matplotlib is installed;
- the `tensorboard --logdir ...` command that shows the runs.

With Glorot's `Var(w) = 2 / (fan_in + fan_out)` every ReLU layer halves
the variance of the signal (He et al., 2015, eq. 10), so after 30 layers the
output is about `2**-15` of its input in std and the loss stays at
`ln 10 ≈ 2.303`; with He's `Var(w) = 2 / fan_in` the variance is preserved
and the network trains.

It runs on the TensorFlow, JAX and PyTorch backends (`KERAS_BACKEND`). The
data, the network and the per-layer statistics at initialization come from
`keras_winit.experiments`, which the tutorials use too.

Reference:
    - [He et al., 2015](https://arxiv.org/abs/1502.01852): Delving Deep into
      Rectifiers (Fig. 3: a 30-layer network stalls with Xavier init and
      converges with theirs).
    - [Glorot & Bengio, 2010](
      https://proceedings.mlr.press/v9/glorot10a.html): Understanding the
      difficulty of training deep feedforward neural networks.
"""

import argparse
import importlib.util
import json
import math
import os
import sys
import time
import warnings
from typing import Any

import keras
import numpy as np

import keras_winit
from keras_winit import _signal
from keras_winit.callbacks import GradientVarianceLogger
from keras_winit.callbacks import GradientVarianceWarning
from keras_winit.experiments import build_mlp
from keras_winit.experiments import layer_statistics
from keras_winit.experiments import load_digits_split

#: Initializers the demo can compare (command-line name -> class name in
#: `keras_winit`).
INITIALIZERS = {
    "glorot_normal": "GlorotNormal",
    "glorot_uniform": "GlorotUniform",
    "he_normal": "HeNormal",
    "he_uniform": "HeUniform",
    "lecun_normal": "LecunNormal",
    "lecun_uniform": "LecunUniform",
}

_DEFAULTS: dict[str, Any] = dict(
    depth=30,
    width=128,
    epochs=20,
    batch_size=64,
    learning_rate=0.003,
    momentum=0.9,
    seed=0,
    output_dir="winit_demo",
    initializers=("glorot_normal", "he_normal"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the demo's options to an `argparse` parser."""
    d = _DEFAULTS
    parser.add_argument(
        "--depth",
        type=_positive_int("depth"),
        default=d["depth"],
        help=f"hidden ReLU layers (default {d['depth']})",
    )
    parser.add_argument(
        "--width",
        type=_positive_int("width"),
        default=d["width"],
        help=f"units per hidden layer (default {d['width']})",
    )
    parser.add_argument(
        "--epochs",
        type=_positive_int("epochs"),
        default=d["epochs"],
        help=f"training epochs per initializer (default {d['epochs']})",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int("batch-size"),
        default=d["batch_size"],
        help=f"batch size (default {d['batch_size']})",
    )
    parser.add_argument(
        "--learning-rate",
        type=_positive_float("learning-rate"),
        default=d["learning_rate"],
        help=f"SGD learning rate, momentum 0.9 (default {d['learning_rate']})",
    )
    parser.add_argument(
        "--output-dir",
        default=d["output_dir"],
        help="where the logs, table and figure go "
        f"(default ./{d['output_dir']})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=d["seed"],
        help=f"seed of the split, the weights and the batches "
        f"(default {d['seed']})",
    )
    parser.add_argument(
        "--initializers",
        nargs="+",
        choices=sorted(INITIALIZERS),
        default=list(d["initializers"]),
        metavar="NAME",
        help="initializers to compare, among "
        f"{', '.join(sorted(INITIALIZERS))} (default: "
        f"{' '.join(d['initializers'])})",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no per-epoch progress lines",
    )


def run(args: argparse.Namespace) -> int:
    """Runs the demo for parsed `args`; returns the exit status."""
    try:
        data = load_digits_split(seed=args.seed)
    except ImportError as e:
        print(f"keras-winit demo: {e}", file=sys.stderr)
        return 1
    backend = keras.backend.backend()
    if backend not in _signal.GRADIENT_BACKENDS:
        print(
            "keras-winit demo: needs a backend with gradients. Received: "
            f"backend={backend!r}. Run it with KERAS_BACKEND set to one of "
            f"{', '.join(_signal.GRADIENT_BACKENDS)}.",
            file=sys.stderr,
        )
        return 1
    out = os.path.abspath(args.output_dir)
    os.makedirs(out, exist_ok=True)
    log_dir = os.path.join(out, "logs")
    names = list(dict.fromkeys(args.initializers))
    x, y, x_val, y_val = data
    print(
        f"keras-winit demo: {args.depth} x Dense({args.width}, relu) + "
        f"softmax on digits ({len(x)} train / {len(x_val)} validation), "
        f"SGD(lr={args.learning_rate}, momentum={_DEFAULTS['momentum']}), "
        f"batch {args.batch_size}, {args.epochs} epochs, seed {args.seed}, "
        f"{backend} backend",
        flush=True,
    )
    start = time.perf_counter()
    results = {}
    for name in names:
        results[name] = train_one(name, data, args, log_dir)
    wall = time.perf_counter() - start
    table = format_table(results, args)
    print()
    print(table)
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(
            {
                "config": _config(args),
                "backend": backend,
                "wall_seconds": wall,
                "results": {
                    k: {m: _jsonable(v) for m, v in r.items()}
                    for k, r in results.items()
                },
            },
            f,
            indent=1,
        )
    png = os.path.join(out, "demo.png")
    try:
        plot(results, png, args)
        print(f"\nFigure: {png}")
    except ImportError:
        print(
            "\nFigure skipped: matplotlib is not installed "
            "(pip install 'keras-winit[tutorials]')."
        )
    print(f"Table: {os.path.join(out, 'summary.txt')}")
    print(f"Training took {wall:.0f} s. Look at the gradient logs with:")
    print(f"  tensorboard --logdir {_shell_path(log_dir)}")
    return 0


def train_one(
    name: str,
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    args: argparse.Namespace,
    log_dir: str,
) -> dict[str, Any]:
    """Trains one initializer's network; returns its curves and stats."""
    x, y, x_val, y_val = data
    keras.utils.set_random_seed(args.seed)
    initializer = getattr(keras_winit, INITIALIZERS[name])(seed=args.seed)
    model = build_mlp(args.depth, args.width, initializer, name=name)
    model.compile(
        optimizer=keras.optimizers.SGD(
            args.learning_rate, momentum=_DEFAULTS["momentum"]
        ),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    at_init = layer_statistics(model, x, y)
    run_dir = os.path.join(log_dir, name)
    callbacks = [
        GradientVarianceLogger(run_dir, update_freq=5, run_name="gradients"),
    ]
    if _has_tensorflow():
        # Keras' loss curves are written with `tf.summary`; the gradient
        # logs need only the `tensorboard` package.
        callbacks.append(
            keras.callbacks.TensorBoard(run_dir, write_graph=False)
        )
    if not args.quiet:
        callbacks.append(EpochLine(name, args.epochs))
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(
            x,
            y,
            batch_size=args.batch_size,
            epochs=args.epochs,
            validation_data=(x_val, y_val),
            callbacks=callbacks,
            verbose=0,
        )
    seconds = time.perf_counter() - t0
    notes = []
    for w in caught:
        if issubclass(w.category, GradientVarianceWarning):
            notes.append(str(w.message))
            if not args.quiet:
                print(f"  [{name}] GradientVarianceLogger: {w.message}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    h = history.history
    return {
        "loss": h["loss"],
        "accuracy": h["accuracy"],
        "val_loss": h["val_loss"],
        "val_accuracy": h["val_accuracy"],
        "init_kernel_grad_variance": at_init["kernel_grad_variance"],
        "init_activation_std": at_init["activation_std"],
        "init_loss": at_init["loss"],
        "seconds": seconds,
        "warnings": notes,
    }


def format_table(
    results: dict[str, dict[str, Any]], args: argparse.Namespace
) -> str:
    """The side-by-side comparison table, as text."""
    names = list(results)
    depth = args.depth
    rows = [
        (
            "grad variance, layer 1 kernel (init)",
            [r["init_kernel_grad_variance"][0] for r in results.values()],
            "{:.2e}",
        ),
        (
            f"grad variance, layer {depth} kernel (init)",
            [
                r["init_kernel_grad_variance"][depth - 1]
                for r in results.values()
            ],
            "{:.2e}",
        ),
        (
            f"activation std, layer {depth} (init)",
            [r["init_activation_std"][depth - 1] for r in results.values()],
            "{:.2e}",
        ),
        ("loss at init", [r["init_loss"] for r in results.values()], "{:.4f}"),
        (
            "final train loss",
            [r["loss"][-1] for r in results.values()],
            "{:.4f}",
        ),
        (
            "final train accuracy",
            [r["accuracy"][-1] for r in results.values()],
            "{:.3f}",
        ),
        (
            "final validation loss",
            [r["val_loss"][-1] for r in results.values()],
            "{:.4f}",
        ),
        (
            "final validation accuracy",
            [r["val_accuracy"][-1] for r in results.values()],
            "{:.3f}",
        ),
        (
            "training time (s)",
            [r["seconds"] for r in results.values()],
            "{:.1f}",
        ),
    ]
    first = max(len(r[0]) for r in rows)
    col = max(14, *(len(n) for n in names))
    lines = [
        f"{'':<{first}}  " + "  ".join(f"{n:>{col}}" for n in names),
    ]
    for label, values, fmt in rows:
        lines.append(
            f"{label:<{first}}  "
            + "  ".join(f"{fmt.format(v):>{col}}" for v in values)
        )
    lines.append(
        f"(ln 10 = {math.log(10):.4f} is the loss of a uniform guess over "
        "the 10 classes)"
    )
    return "\n".join(lines)


def plot(
    results: dict[str, dict[str, Any]], path: str, args: argparse.Namespace
) -> None:
    """Writes the demo's figure; raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for i, (name, r) in enumerate(results.items()):
        color = f"C{i}"
        epochs = range(1, len(r["loss"]) + 1)
        axes[0].plot(epochs, r["loss"], color=color, label=f"{name} train")
        axes[0].plot(
            epochs,
            r["val_loss"],
            color=color,
            linestyle="--",
            label=f"{name} validation",
        )
        layers = range(1, len(r["init_kernel_grad_variance"]) + 1)
        axes[1].semilogy(
            layers,
            r["init_kernel_grad_variance"],
            "o-",
            ms=3,
            color=color,
            label=name,
        )
        hidden = range(1, len(r["init_activation_std"]))
        axes[2].semilogy(
            hidden,
            r["init_activation_std"][:-1],
            "o-",
            ms=3,
            color=color,
            label=name,
        )
    axes[0].axhline(math.log(10), color="gray", lw=0.8, ls=":")
    axes[0].set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    axes[1].set(
        xlabel="layer",
        ylabel="Var(dC/dW)",
        title="Kernel gradient variance at init",
    )
    axes[2].set(
        xlabel="hidden layer",
        ylabel="std of ReLU outputs",
        title="Activation std at init",
    )
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle(
        f"{args.depth} x Dense({args.width}, relu) on digits", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _has_tensorflow():
    return importlib.util.find_spec("tensorflow") is not None


def _config(args):
    return {
        k: getattr(args, k)
        for k in (
            "depth",
            "width",
            "epochs",
            "batch_size",
            "learning_rate",
            "seed",
            "initializers",
        )
    }


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _shell_path(path):
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else path


def _positive_int(name):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < 1:
            raise argparse.ArgumentTypeError(
                f"--{name} must be a positive integer. Received: {text!r}"
            )
        return value

    return parse


def _positive_float(name):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(
                f"--{name} must be a positive number. Received: {text!r}"
            )
        return value

    return parse


class EpochLine(keras.callbacks.Callback):
    """Prints one compact line per epoch: losses, accuracies, seconds.

    Args:
        name: Label printed in front of every line.
        epochs: Total number of epochs (for the `3/20` counter).
    """

    def __init__(self, name, epochs):
        super().__init__()
        self.name = name
        self.epochs = epochs
        self._t = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        nan = float("nan")
        width = len(str(self.epochs))
        print(
            f"  [{self.name}] epoch {epoch + 1:>{width}}/{self.epochs}  "
            f"loss {logs.get('loss', nan):.4f}  "
            f"acc {logs.get('accuracy', nan):.3f}  "
            f"val_loss {logs.get('val_loss', nan):.4f}  "
            f"val_acc {logs.get('val_accuracy', nan):.3f}  "
            f"({time.perf_counter() - self._t:.1f} s)",
            flush=True,
        )
