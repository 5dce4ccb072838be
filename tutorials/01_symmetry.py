"""Constant or zero initialization keeps the units of a layer identical.

If every weight of a layer starts at the same value, every unit of that
layer computes the same function of the same input, receives the same
gradient and takes the same step: the units stay copies of each other
for the whole training, and a layer of 32 units is worth one. Random
initialization (here `keras_winit.GlorotUniform`) breaks the symmetry.

This tutorial trains a 2×32 tanh MLP on the digits data from zero, from
a constant 0.1 and from Glorot's random weights, then counts the distinct
units (distinct columns of each hidden kernel) after training.

Run: `python tutorials/01_symmetry.py [--fast] [--out DIR]`.

Reference:
    Goodfellow, Bengio & Courville, 2016, "Deep Learning", section 8.4
    ("the need to break symmetry"), https://www.deeplearningbook.org
"""

import sys

import keras
import numpy as np
from _common import digits
from _common import format_table
from _common import model_for
from _common import output_dir
from _common import pyplot
from _common import run_script
from _common import save_figure
from _common import train

import keras_winit

DEPTH, WIDTH = 2, 32


def inits():
    return {
        "zeros": keras.initializers.Zeros(),
        "constant 0.1": keras.initializers.Constant(0.1),
        "random (Glorot)": keras_winit.GlorotUniform(seed=0),
    }


def distinct_units(kernel, rtol=1e-2):
    """Number of distinct columns (units) of a kernel.

    Two columns are the same unit when they differ by less than `rtol`
    times the kernel's largest absolute weight: rounding in the matrix
    products can make copies differ in the last bits, and over many steps
    by ~1e-3 of the weights' scale, which is still one unit.
    """
    columns = np.asarray(kernel).T
    atol = rtol * max(float(np.abs(columns).max()), 1e-12)
    distinct = []
    for c in columns:
        if not any(np.allclose(c, d, rtol=0, atol=atol) for d in distinct):
            distinct.append(c)
    return len(distinct)


def main(fast=False, out=None):
    out = output_dir(out)
    data = digits()
    epochs = 5 if fast else 30
    numbers, kernels, rows = {}, {}, []
    for name, init in inits().items():
        key = name.split()[0]
        model = model_for(init, DEPTH, WIDTH, "tanh")
        history = train(
            model, data, epochs, learning_rate=0.05, validation=not fast
        )
        hidden = model.layers[:DEPTH]
        kernels_np = [
            keras.ops.convert_to_numpy(layer.kernel) for layer in hidden
        ]
        counts = [distinct_units(k) for k in kernels_np]
        spread = [float(np.ptp(k, axis=1).max()) for k in kernels_np]
        kernels[name] = kernels_np[0]
        numbers[f"{key}_distinct_units"] = counts
        numbers[f"{key}_max_spread_across_units"] = spread
        numbers[f"{key}_train_accuracy"] = history["accuracy"][-1]
        if not fast:
            numbers[f"{key}_val_accuracy"] = history["val_accuracy"][-1]
        rows.append(
            [
                name,
                " / ".join(str(c) for c in counts),
                " / ".join(f"{s:.2g}" for s in spread),
                history["loss"][-1],
                history["accuracy"][-1],
                history["val_accuracy"][-1] if not fast else "—",
            ]
        )
    print(
        format_table(
            [
                "init",
                f"distinct units (of {WIDTH}), layers 1 / 2",
                "max spread across units",
                "final loss",
                "train acc",
                "val acc",
            ],
            rows,
        )
    )

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    for ax, (name, k) in zip(axes, kernels.items(), strict=True):
        lim = max(np.abs(k).max(), 1e-9)
        ax.imshow(k, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        ax.set(
            title=f"{name}: {numbers[name.split()[0] + '_distinct_units'][0]}"
            " distinct units",
            xlabel="unit of layer 1",
            ylabel="input pixel",
        )
    fig.suptitle(f"Layer-1 kernel after {epochs} epochs", fontsize=10)
    numbers["figure"] = save_figure(fig, out, "01_symmetry.png")
    return numbers


if __name__ == "__main__":
    sys.exit(run_script(main, __doc__))
