"""Kumar (2017): a deep sigmoid network needs `Var(w) ≈ 12.8 / N`.

For an activation `g` differentiable at 0, Kumar derives
`Var(w) = 1 / (N g'(0)² (1 + g(0)²))`; for the sigmoid (`g(0) = 1/2`,
`g'(0) = 1/4`) that is `12.8 / N`, std ≈ 3.6/√N
(`keras_winit.ActivationScaling("sigmoid", method="kumar")`). LeCun's
`1 / N` (`keras_winit.LecunNormal`) multiplies the back-propagated
gradient's variance by `N Var(w) g'(0)² = 1/16` per layer, so a 10-layer
sigmoid MLP barely moves; Kumar's init trains.

Run: `python tutorials/06_kumar_sigmoid.py [--fast] [--out DIR]`.

Reference:
    Kumar, 2017, "On weight initialization in deep neural networks",
    https://arxiv.org/abs/1704.08863
"""

import sys

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

DEPTH = 10


def inits():
    return {
        "LeCun": keras_winit.LecunNormal(seed=0),
        "Kumar 3.6/√N": keras_winit.ActivationScaling(
            "sigmoid", method="kumar", seed=0
        ),
    }


def main(fast=False, out=None):
    out = output_dir(out)
    data = digits()
    x, y = data[0], data[1]
    width = 64 if fast else 256
    epochs = 3 if fast else 20
    numbers, curves, grads = {}, {}, {}
    rows = []
    for name, init in inits().items():
        key = name.split()[0].lower()
        model = model_for(init, DEPTH, width, "sigmoid")
        stats = layer_statistics(model, x, y)
        grads[name] = stats["preactivation_grad_std"]
        history = train(
            model, data, epochs, learning_rate=0.05, validation=not fast
        )
        curves[name] = history
        g = stats["preactivation_grad_std"]
        numbers[f"{key}_grad_ratio_layer1_to_{DEPTH}"] = float(
            g[0] / g[DEPTH - 1]
        )
        numbers[f"{key}_final_loss"] = history["loss"][-1]
        numbers[f"{key}_train_accuracy"] = history["accuracy"][-1]
        if not fast:
            numbers[f"{key}_val_accuracy"] = history["val_accuracy"][-1]
        rows.append(
            [
                name,
                init.target_stddev((width, width)) * width**0.5,
                numbers[f"{key}_grad_ratio_layer1_to_{DEPTH}"],
                history["loss"][-1],
                history["accuracy"][-1],
                history["val_accuracy"][-1] if not fast else "—",
            ]
        )
    print(
        format_table(
            [
                "init",
                "std·√N",
                f"grad std layer 1 / {DEPTH}",
                "final loss",
                "train acc",
                "val acc",
            ],
            rows,
        )
    )

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    plot_curves(
        axes[0],
        curves,
        "loss",
        f"{DEPTH} sigmoid layers, width {width}",
        "training loss",
        hline=LN10,
    )
    for name, g in grads.items():
        axes[1].semilogy(range(1, len(g) + 1), g, "o-", ms=3, label=name)
    axes[1].set(
        xlabel="layer",
        ylabel="std of ∂C/∂s",
        title="Back-propagated gradients at init",
    )
    axes[1].legend(fontsize=7)
    numbers["figure"] = save_figure(fig, out, "06_kumar_sigmoid.png")
    return numbers


if __name__ == "__main__":
    sys.exit(run_script(main, __doc__))
