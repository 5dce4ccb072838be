"""LSUV (Mishkin & Matas, 2015) on the deep networks of tutorials 5 and 6.

Layer-sequential unit-variance initialization needs no formula for the
activation: draw every kernel orthonormal, then, layer after layer on one
batch, divide the kernel by the std of the layer's pre-activation until
its variance is 1 ± `tol` (`keras_winit.lsuv(model, x, tol=0.02,
max_iter=20)`). Here it is compared with the analytical inits on the
30-layer ReLU MLP (Xavier stalls, He trains: tutorial 5) and on the
10-layer sigmoid MLP (LeCun stalls, Kumar trains: tutorial 6).

Run: `python tutorials/07_lsuv.py [--fast] [--out DIR]`.

Reference:
    Mishkin & Matas, 2015, "All you need is a good init",
    https://arxiv.org/abs/1511.06422
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

#: Examples of the LSUV batch (the paper uses one mini-batch).
LSUV_BATCH = 256


def networks(fast):
    """name -> (activation, depth, width, epochs, lr, {init name: init})."""
    relu = (
        "relu",
        30,
        64 if fast else 128,
        4 if fast else 20,
        0.003,
        {
            "Xavier": keras_winit.GlorotNormal(seed=0),
            "He": keras_winit.HeNormal(seed=0),
            "LSUV": keras_winit.GlorotNormal(seed=0),
        },
    )
    sigmoid = (
        "sigmoid",
        10,
        256,
        20,
        0.05,
        {
            "LeCun": keras_winit.LecunNormal(seed=0),
            "Kumar": keras_winit.ActivationScaling(
                "sigmoid", method="kumar", seed=0
            ),
            "LSUV": keras_winit.LecunNormal(seed=0),
        },
    )
    if fast:
        # Only LSUV on the ReLU network: tutorial 5 checks that Xavier
        # stalls there and He trains.
        for name in ("Xavier", "He"):
            del relu[5][name]
        return {"30-layer ReLU": relu}
    return {"30-layer ReLU": relu, "10-layer sigmoid": sigmoid}


def main(fast=False, out=None):
    out = output_dir(out)
    data = digits()
    x_batch = data[0][:LSUV_BATCH]
    numbers, curves, rows = {}, {}, []
    nets = networks(fast)
    for net, (activation, depth, width, epochs, lr, inits) in nets.items():
        curves[net] = {}
        for name, init in inits.items():
            key = f"{activation}_{name.lower()}"
            model = model_for(init, depth, width, activation)
            if name == "LSUV":
                result = keras_winit.lsuv(
                    model, x_batch, tol=0.02, max_iter=20, seed=0
                )
                variances = [layer.variance for layer in result.layers]
                numbers[f"{key}_converged"] = bool(result.converged)
                numbers[f"{key}_max_abs_variance_error"] = float(
                    max(abs(v - 1.0) for v in variances)
                )
                numbers[f"{key}_iterations"] = [
                    layer.iterations for layer in result.layers
                ]
            grads = layer_statistics(model, data[0], data[1])[
                "preactivation_grad_std"
            ]
            grad_ratio = float(grads[0] / grads[depth - 1])
            numbers[f"{key}_grad_ratio_layer1_to_{depth}"] = grad_ratio
            history = train(
                model, data, epochs, learning_rate=lr, validation=not fast
            )
            curves[net][name] = history
            numbers[f"{key}_final_loss"] = history["loss"][-1]
            numbers[f"{key}_train_accuracy"] = history["accuracy"][-1]
            if not fast:
                numbers[f"{key}_val_accuracy"] = history["val_accuracy"][-1]
            rows.append(
                [
                    net,
                    name,
                    grad_ratio,
                    history["loss"][-1],
                    history["accuracy"][-1],
                    history["val_accuracy"][-1] if not fast else "—",
                ]
            )
    print(
        format_table(
            [
                "network",
                "init",
                "grad std layer 1 / last hidden (init)",
                "final loss",
                "train acc",
                "val acc",
            ],
            rows,
        )
    )

    plt = pyplot()
    fig, axes = plt.subplots(1, len(nets), figsize=(4.6 * len(nets), 3.2))
    axes = [axes] if len(nets) == 1 else axes
    for ax, (net, runs) in zip(axes, curves.items(), strict=True):
        plot_curves(ax, runs, "loss", net, "training loss", hline=LN10)
    numbers["figure"] = save_figure(fig, out, "07_lsuv.png")
    return numbers


if __name__ == "__main__":
    sys.exit(run_script(main, __doc__))
