"""Glorot & Bengio (2010), figures 6 and 7: activations and gradients at init.

A 5×1000 tanh MLP (plus a softmax layer) on a fixed set of 300 digits, at
initialization, with their "standard" init `U[-1/√n, 1/√n]`
(`Var(w) = 1/(3n)`, n = fan_in) and their "normalized" init
`U[±√6/√(n_in + n_out)]` (`keras_winit.GlorotUniform`). With the standard
init `n Var(w) = 1/3`, so in tanh's linear regime the activation std
shrinks ×√(1/3) ≈ 0.58 per layer, and the back-propagated gradients
`∂C/∂s` shrink toward the input; the normalized init keeps both nearly
flat.

Run: `python tutorials/04_glorot_bengio.py [--fast] [--out DIR]`.

Reference:
    Glorot & Bengio, 2010, "Understanding the difficulty of training deep
    feedforward neural networks", AISTATS,
    https://proceedings.mlr.press/v9/glorot10a.html
"""

import sys

import numpy as np
from _common import digits
from _common import format_table
from _common import layer_statistics
from _common import model_for
from _common import output_dir
from _common import per_layer_ratio
from _common import pyplot
from _common import run_script
from _common import save_figure

import keras_winit

INITS = {
    # U[-1/sqrt(n), 1/sqrt(n)]: Var = 1/(3 n), n = fan_in.
    "standard": keras_winit.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform", seed=0
    ),
    "normalized (Glorot)": keras_winit.GlorotUniform(seed=0),
}
NUM_EXAMPLES = 300


def main(fast=False, out=None):
    out = output_dir(out)
    x, y, _, _ = digits()
    x, y = x[:NUM_EXAMPLES], y[:NUM_EXAMPLES]
    # Cheap enough (no training) to be the paper's size in fast mode too.
    depth, width = 5, 1000
    numbers, stats = {}, {}
    rows = []
    for name, init in INITS.items():
        model = model_for(init, depth, width, "tanh")
        s = layer_statistics(model, x, y)
        stats[name] = s
        act_std = s["activation_std"][:depth]
        grad_std = s["preactivation_grad_std"][:depth]
        key = name.split()[0]
        numbers[f"{key}_activation_std"] = [float(v) for v in act_std]
        numbers[f"{key}_activation_ratio_per_layer"] = per_layer_ratio(act_std)
        numbers[f"{key}_grad_std"] = [float(v) for v in grad_std]
        numbers[f"{key}_grad_ratio_layer1_to_5"] = float(
            grad_std[0] / grad_std[-1]
        )
        rows.append(
            [
                name,
                " ".join(f"{v:.3f}" for v in act_std),
                numbers[f"{key}_activation_ratio_per_layer"],
                " ".join(f"{v:.2e}" for v in grad_std),
                numbers[f"{key}_grad_ratio_layer1_to_5"],
            ]
        )
    print(
        format_table(
            [
                "init",
                "activation std, layers 1-5",
                "×/layer",
                "std of ∂C/∂s, layers 1-5",
                "layer 1 / layer 5",
            ],
            rows,
        )
    )

    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 6))
    for col, (name, s) in enumerate(stats.items()):
        for row, (key, bins, label) in enumerate(
            (
                ("activations", np.linspace(-1, 1, 81), "activation value"),
                ("preactivation_grads", None, "back-propagated gradient"),
            )
        ):
            ax = axes[row, col]
            values = s[key][:depth]
            if bins is None:
                lim = max(
                    np.abs(v).max()
                    for v in stats["normalized (Glorot)"][key][:depth]
                )
                bins = np.linspace(-lim, lim, 81)
            for i, v in enumerate(values):
                hist, edges = np.histogram(v.ravel(), bins=bins)
                centers = (edges[:-1] + edges[1:]) / 2
                ax.plot(centers, hist / hist.sum(), label=f"layer {i + 1}")
            ax.set(title=f"{name} init", xlabel=label, ylabel="fraction")
            ax.legend(fontsize=7)
    numbers["figure"] = save_figure(fig, out, "04_glorot_bengio.png")
    return numbers


if __name__ == "__main__":
    sys.exit(run_script(main, __doc__))
