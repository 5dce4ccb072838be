"""He et al. (2015): depth 30 stalls with Xavier init, trains with He init.

A deep ReLU MLP on the digits data, trained with SGD (momentum 0.9) from
`keras_winit.GlorotNormal` (Xavier: `Var(w) = 2 / (fan_in + fan_out)`) and
from `keras_winit.HeNormal` (`Var(w) = 2 / fan_in`). Every ReLU layer
keeps half of the second moment of its input, so Xavier's variance halves
per layer (std ×0.71), He's is preserved (std ×1). At 30 layers the
Xavier network's output is ~`2**-15` of its input and its loss stays at
`ln 10` (a uniform guess over 10 classes): He et al. (2015), figure 3. A
10-layer network trains with both, He's faster (their figure 2, 22
layers).

Run: `python tutorials/05_he_depth.py [--fast] [--out DIR]`.

Reference:
    He, Zhang, Ren & Sun, 2015, "Delving Deep into Rectifiers: Surpassing
    Human-Level Performance on ImageNet Classification",
    https://arxiv.org/abs/1502.01852
"""

import sys

from _common import LN10
from _common import digits
from _common import format_table
from _common import layer_statistics
from _common import model_for
from _common import output_dir
from _common import per_layer_ratio
from _common import plot_curves
from _common import pyplot
from _common import run_script
from _common import save_figure
from _common import train

import keras_winit

INITS = {"Xavier": keras_winit.GlorotNormal, "He": keras_winit.HeNormal}


def main(fast=False, out=None):
    out = output_dir(out)
    data = digits()
    x, y = data[0], data[1]
    width = 64 if fast else 128
    epochs = {30: 4 if fast else 20, 10: 4 if fast else 10}
    # The shallower network tolerates (and needs, to train in a few
    # epochs) a larger step; He's 30-layer network diverges at 0.01.
    learning_rate = {30: 0.003, 10: 0.01}
    numbers, curves, stds = {}, {}, {}
    rows = []
    # Fast mode checks the depth-30 claim only (the tests run it).
    depths = (30,) if fast else (30, 10)
    for depth in depths:
        for name, cls in INITS.items():
            key = f"depth{depth}_{name.lower()}"
            model = model_for(cls(seed=0), depth, width, "relu")
            stats = layer_statistics(model, x, y)
            hidden_std = stats["activation_std"][:-1]
            history = train(
                model,
                data,
                epochs[depth],
                learning_rate=learning_rate[depth],
                validation=not fast,
            )
            curves[(depth, name)] = history
            stds[(depth, name)] = hidden_std
            numbers[f"{key}_std_ratio_per_layer"] = per_layer_ratio(hidden_std)
            numbers[f"{key}_final_loss"] = history["loss"][-1]
            numbers[f"{key}_train_accuracy"] = history["accuracy"][-1]
            if not fast:
                numbers[f"{key}_val_accuracy"] = history["val_accuracy"][-1]
            rows.append(
                [
                    depth,
                    name,
                    numbers[f"{key}_std_ratio_per_layer"],
                    history["loss"][-1],
                    history["accuracy"][-1],
                    history["val_accuracy"][-1] if not fast else "—",
                ]
            )
    print(
        format_table(
            [
                "depth",
                "init",
                "act. std ×/layer",
                "final loss",
                "train acc",
                "val acc",
            ],
            rows,
        )
    )
    print(f"ln 10 = {LN10:.4f}")

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    if fast:
        axes[1].set_axis_off()
    for i, depth in enumerate(depths):
        plot_curves(
            axes[i],
            {name: curves[(depth, name)] for name in INITS},
            "loss",
            f"{depth} ReLU layers, width {width}",
            "training loss",
            hline=LN10,
        )
    for name in INITS:
        s = stds[(30, name)]
        axes[2].semilogy(range(1, len(s) + 1), s, "o-", ms=3, label=name)
    axes[2].set(
        xlabel="layer",
        ylabel="std of ReLU output",
        title="Activations at init (depth 30)",
    )
    axes[2].legend(fontsize=7)
    numbers["figure"] = save_figure(fig, out, "05_he_depth.png")
    return numbers


if __name__ == "__main__":
    sys.exit(run_script(main, __doc__))
