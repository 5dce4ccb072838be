"""Residual scaling: a deep residual MLP without normalization.

A residual stream `h_{l+1} = h_l + F(h_l)` adds each branch's output to
the stream, so without normalization the stream's variance grows with
depth: with branches that keep their input's variance,
`Var(h_{l+1}) = 2 Var(h_l)`, std ×√2 per block, ×4096 after 24 blocks.
The residual rules of `keras_winit.initialize` fix the start:

- `residual="gpt2"` (Radford et al. 2019): each branch's output projection
  ×1/√L (L branches), so the stream grows by `(1 + 1/L)^L ≈ e` in all;
- `residual="fixup"` (Zhang, Dauphin & Ma 2019): each branch's last layer
  zero (the block starts as the identity), the others ×L^(−1/(2m−2))
  (m = 2 layers per branch here: ×1/√L).

The model: digits (64 features) → Dense(width) → `depth` × [h + Dense(
Dense(h, relu))] → Dense(10), no normalization, drawn with
`initialize(model, "auto", residual=rule)` ("auto": He's gain before the
ReLU, gain 1 on the branch's output projection), trained with SGD and
momentum. Only `keras.ops` and keras_winit's public API: it runs on
TensorFlow, JAX and PyTorch.

Run: `python tutorials/10_residual_scaling.py [--fast] [--out DIR]`.

References:
    Zhang, Dauphin & Ma, 2019, "Fixup Initialization: Residual Learning
    Without Normalization", https://arxiv.org/abs/1901.09321
    Radford et al., 2019, "Language Models are Unsupervised Multitask
    Learners" (GPT-2), section 2.3
"""

import math
import sys

import keras
import numpy as np
from _common import format_table
from _common import output_dir
from _common import pyplot
from _common import run_script
from _common import save_figure

import keras_winit

RULES = ("none", "gpt2", "fixup")
LN10 = math.log(10.0)


def load_digits(seed=0):
    """Standardized digits, a fixed split: `(x, y, x_val, y_val)`."""
    from sklearn.datasets import load_digits as sklearn_digits

    x, y = sklearn_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order].astype("float32"), y[order].astype("int32")
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    split = int(0.8 * len(x))
    return x[:split], y[:split], x[split:], y[split:]


def residual_mlp(depth, width):
    """`(model, probe)`: the MLP and a model returning every stream state."""
    inputs = keras.Input((64,))
    h = keras.layers.Dense(width, name="stem")(inputs)
    stream = [h]
    for i in range(depth):
        f = keras.layers.Dense(width, activation="relu", name=f"b{i}_in")(h)
        f = keras.layers.Dense(width, name=f"b{i}_out")(f)
        h = keras.layers.Add(name=f"block{i}")([h, f])
        stream.append(h)
    outputs = keras.layers.Dense(10, name="head")(h)
    return keras.Model(inputs, outputs), keras.Model(inputs, stream)


def stream_std(probe, x):
    """The std of the residual stream after the stem and after each block."""
    states = probe(keras.ops.convert_to_tensor(x))
    return [float(keras.ops.convert_to_numpy(keras.ops.std(s))) for s in states]


def cross_entropy(model, x, y):
    """Mean cross-entropy of the model's logits on `(x, y)`."""
    logits = model(keras.ops.convert_to_tensor(x))
    loss = keras.losses.sparse_categorical_crossentropy(
        keras.ops.convert_to_tensor(y), logits, from_logits=True
    )
    return float(keras.ops.convert_to_numpy(keras.ops.mean(loss)))


def accuracy(model, x, y):
    logits = keras.ops.convert_to_numpy(model(keras.ops.convert_to_tensor(x)))
    return float(np.mean(np.argmax(logits, -1) == y))


def run(rule, data, depth, width, epochs, learning_rate, seed=0):
    """Initializes with `rule`, measures the stream, trains; a dict."""
    x, y, x_val, y_val = data
    keras.utils.set_random_seed(seed)
    model, probe = residual_mlp(depth, width)
    keras_winit.initialize(model, "auto", residual=rule, seed=seed)
    stds = stream_std(probe, x[:256])
    initial = cross_entropy(model, x[:512], y[:512])
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    # Training stops at the first NaN loss (Keras' TerminateOnNaN).
    history = model.fit(
        x,
        y,
        batch_size=64,
        epochs=epochs,
        verbose=0,
        shuffle=True,
        callbacks=[keras.callbacks.TerminateOnNaN()],
    ).history
    return {
        "stream_std": stds,
        "initial_loss": initial,
        "loss": [float(v) for v in history["loss"]],
        "accuracy": [float(v) for v in history["accuracy"]],
        "val_accuracy": accuracy(model, x_val, y_val),
    }


def _finite(value):
    return value if math.isfinite(value) else float("nan")


def main(fast=False, out=None):
    out = output_dir(out)
    data = load_digits()
    depth, width = (24, 32) if fast else (48, 128)
    epochs = 2 if fast else 20
    # The first learning rate is the one the fast mode (and its test) uses;
    # the full run adds a smaller one.
    learning_rates = (0.01,) if fast else (0.01, 0.003)
    results = {
        (rule, lr): run(rule, data, depth, width, epochs, lr)
        for lr in learning_rates
        for rule in RULES
    }
    model, _ = residual_mlp(depth, width)
    numbers = {
        "depth": depth,
        "width": width,
        "epochs": epochs,
        "branches": len(keras_winit.residual_branches(model)),
    }
    rows = []
    for (rule, lr), r in results.items():
        growth = r["stream_std"][-1] / r["stream_std"][0]
        key = rule if lr == learning_rates[0] else f"{rule}_lr{lr:g}"
        numbers[f"{key}_stream_std"] = r["stream_std"]
        numbers[f"{key}_stream_growth"] = growth
        numbers[f"{key}_initial_loss"] = r["initial_loss"]
        numbers[f"{key}_final_loss"] = _finite(r["loss"][-1])
        numbers[f"{key}_epochs_run"] = len(r["loss"])
        numbers[f"{key}_train_accuracy"] = r["accuracy"][-1]
        numbers[f"{key}_val_accuracy"] = r["val_accuracy"]
        rows.append(
            [
                rule,
                f"{lr:g}",
                f"{growth:.3g}",
                f"{r['initial_loss']:.4g}",
                f"{r['loss'][-1]:.4g}",
                f"{r['accuracy'][-1]:.3f}",
                f"{r['val_accuracy']:.3f}",
            ]
        )
    print(
        format_table(
            [
                "residual",
                "lr",
                "stream std last/first",
                "loss at init",
                "final train loss",
                "train acc",
                "val acc",
            ],
            rows,
        )
    )
    plt = pyplot()
    fig, axes = plt.subplots(
        1, 1 + len(learning_rates), figsize=(5 + 4 * len(learning_rates), 3.8)
    )
    for rule in RULES:
        axes[0].semilogy(results[rule, learning_rates[0]]["stream_std"])
    axes[0].legend(RULES, fontsize=8)
    axes[0].set(
        xlabel="block",
        ylabel="std of the residual stream (at init)",
        title=f"{depth} residual blocks, no normalization",
    )
    for ax, lr in zip(axes[1:], learning_rates, strict=True):
        for rule in RULES:
            loss = [
                v if math.isfinite(v) else np.nan
                for v in results[rule, lr]["loss"]
            ]
            ax.plot(range(1, len(loss) + 1), loss, marker=".", label=rule)
        ax.axhline(LN10, color="gray", lw=0.8, ls=":")
        ax.set(
            xlabel="epoch",
            ylabel="train loss",
            title=f"SGD, lr {lr:g} (NaN: stopped)",
            yscale="log",
        )
        ax.legend(fontsize=8)
    numbers["figure"] = save_figure(fig, out, "10_residual_scaling.png")
    return numbers


if __name__ == "__main__":
    sys.exit(run_script(main, __doc__))
