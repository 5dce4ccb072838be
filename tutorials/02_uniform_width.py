"""How wide should a uniform initialization be? `U(±a)` in a tanh network.

A 10×128 tanh MLP on the digits data, initialized from `U(-a, a)` with a
fixed `a` — too narrow (0.01), too wide (1.0) — and with `a` scaled by the
fan-in, `a = √(3/n)` (`Var(w) = 1/n`, `keras_winit.LecunUniform`):

- too narrow: `n Var(w) = n a²/3 ≪ 1`, the signal shrinks at every layer,
  and so do the back-propagated gradients (they are multiplied by the same
  small weights on the way back): the first layers get almost nothing;
- too wide: `n Var(w) ≫ 1`, the pre-activations are large and tanh
  saturates at ±1 for most units. The gradient is blocked at every
  saturated unit (`1 - tanh² ≈ 0`), but the few unsaturated ones pass it
  through large weights, so on balance the back-propagated gradient does
  not vanish here: it *grows* toward the input (the "chaotic" regime of
  Poole et al., 2016) and SGD's steps are erratic;
- `a = √(3/n)`: `n Var(w) = 1`, tanh stays in its near-linear range,
  activations and gradients keep their scale through the depth.

Run: `python tutorials/02_uniform_width.py [--fast] [--out DIR]`.

Reference:
    LeCun, Bottou, Orr & Müller, 1998, "Efficient BackProp", section 4.6,
    http://yann.lecun.com/exdb/publis/pdf/lecun-98b.pdf
"""

import sys

import keras
import numpy as np
from _common import LN10
from _common import digits
from _common import format_table
from _common import layer_statistics
from _common import model_for
from _common import output_dir
from _common import plot_curves
from _common import pyplot
from _common import run_script
from _common import save_figure
from _common import train

import keras_winit

DEPTH, WIDTH = 10, 128


def inits():
    # A SeedGenerator gives new values per call: with an int seed, Keras'
    # RandomUniform would give every layer the same kernel.
    return {
        "narrow U(±0.01)": keras.initializers.RandomUniform(
            -0.01, 0.01, seed=keras.random.SeedGenerator(0)
        ),
        "wide U(±1)": keras.initializers.RandomUniform(
            -1.0, 1.0, seed=keras.random.SeedGenerator(0)
        ),
        "scaled U(±√(3/n))": keras_winit.LecunUniform(seed=0),
    }


def main(fast=False, out=None):
    out = output_dir(out)
    data = digits()
    x, y = data[0], data[1]
    epochs = 4 if fast else 20
    numbers, curves, stats = {}, {}, {}
    rows = []
    for name, init in inits().items():
        key = name.split()[0]
        model = model_for(init, DEPTH, WIDTH, "tanh")
        s = layer_statistics(model, x, y)
        stats[name] = s
        hidden = s["activations"][:DEPTH]
        saturated = float(np.mean(np.abs(hidden[-1]) > 0.99))
        grad = s["preactivation_grad_std"][:DEPTH]
        history = train(
            model, data, epochs, learning_rate=0.01, validation=not fast
        )
        curves[name] = history
        numbers[f"{key}_activation_std_layer{DEPTH}"] = float(hidden[-1].std())
        numbers[f"{key}_saturated_fraction_layer{DEPTH}"] = saturated
        numbers[f"{key}_grad_std_layer1"] = float(grad[0])
        numbers[f"{key}_grad_ratio_layer1_to_{DEPTH}"] = float(
            grad[0] / grad[-1]
        )
        numbers[f"{key}_final_loss"] = history["loss"][-1]
        numbers[f"{key}_train_accuracy"] = history["accuracy"][-1]
        if not fast:
            numbers[f"{key}_val_accuracy"] = history["val_accuracy"][-1]
        rows.append(
            [
                name,
                float(hidden[-1].std()),
                saturated,
                float(grad[0]),
                float(grad[0] / grad[-1]),
                history["loss"][-1],
                history["accuracy"][-1],
            ]
        )
    print(
        format_table(
            [
                "init",
                f"act. std, layer {DEPTH}",
                "saturated (abs > 0.99)",
                "grad std, layer 1",
                f"grad layer 1 / {DEPTH}",
                "final loss",
                "train acc",
            ],
            rows,
        )
    )

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for name, s in stats.items():
        layers = range(1, DEPTH + 1)
        axes[0].semilogy(
            layers, s["activation_std"][:DEPTH], "o-", ms=3, label=name
        )
        axes[1].semilogy(
            layers, s["preactivation_grad_std"][:DEPTH], "o-", ms=3, label=name
        )
    axes[0].set(xlabel="layer", ylabel="std of tanh output", title="At init")
    axes[1].set(
        xlabel="layer",
        ylabel="std of ∂C/∂s",
        title="Back-propagated gradients at init",
    )
    for ax in axes[:2]:
        ax.legend(fontsize=7)
    plot_curves(
        axes[2],
        curves,
        "loss",
        f"Training, {DEPTH}×{WIDTH} tanh",
        "training loss",
        hline=LN10,
    )
    numbers["figure"] = save_figure(fig, out, "02_uniform_width.png")
    return numbers


if __name__ == "__main__":
    sys.exit(run_script(main, __doc__))
