"""PyTorch's default `U(±1/√fan_in)` vs Xavier vs He on the same network.

`torch.nn.Linear` draws its kernel *and* its bias from
`U(-1/√n, 1/√n)`, n = fan_in (`kaiming_uniform_(a=√5)`): `Var(w) = 1/(3n)`,
a third of LeCun's and a sixth of what a ReLU layer needs. Here a 10×128
ReLU MLP is trained on the digits data with that default (kernel:
`keras_winit.VarianceScaling(1/3, "fan_in", "uniform")`, bias: a per-layer
`U(±1/√fan_in)`), with `keras_winit.XavierUniform()` and with
`keras_winit.KaimingUniform()` (He, gain √2), same data, batches and SGD.

Run: `python tutorials/03_torch_default.py [--fast] [--out DIR]`.

References:
    - PyTorch `torch.nn.Linear.reset_parameters`,
      https://github.com/pytorch/pytorch/blob/main/torch/nn/modules/linear.py
    - Glorot & Bengio, 2010, https://proceedings.mlr.press/v9/glorot10a.html
    - He et al., 2015, https://arxiv.org/abs/1502.01852
"""

import sys

import keras
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

DEPTH, WIDTH = 10, 128


def torch_bias(fan_in):
    """PyTorch's default bias: U(±1/√fan_in), fan_in of the kernel."""
    bound = 1.0 / fan_in**0.5
    return keras.initializers.RandomUniform(
        -bound, bound, seed=keras.random.SeedGenerator(fan_in)
    )


def setups():
    """name -> (kernel initializer, bias initializer)."""
    return {
        "PyTorch default": (
            keras_winit.VarianceScaling(1.0 / 3.0, "fan_in", "uniform", seed=0),
            torch_bias,
        ),
        "Xavier": (keras_winit.XavierUniform(seed=0), "zeros"),
        "He (Kaiming)": (keras_winit.KaimingUniform(seed=0), "zeros"),
    }


def main(fast=False, out=None):
    out = output_dir(out)
    data = digits()
    x, y = data[0], data[1]
    epochs = 3 if fast else 20
    numbers, curves, rows = {}, {}, []
    for name, (kernel, bias) in setups().items():
        key = name.split()[0].lower()
        model = model_for(kernel, DEPTH, WIDTH, "relu", bias_initializer=bias)
        stats = layer_statistics(model, x, y)
        ratio = per_layer_ratio(stats["activation_std"][:DEPTH])
        history = train(model, data, epochs, learning_rate=0.01)
        curves[name] = history
        numbers[f"{key}_std_ratio_per_layer"] = ratio
        numbers[f"{key}_val_accuracy"] = history["val_accuracy"]
        numbers[f"{key}_final_loss"] = history["loss"][-1]
        rows.append(
            [
                name,
                ratio,
                history["loss"][-1],
                history["val_accuracy"][0],
                history["val_accuracy"][-1],
            ]
        )
    print(
        format_table(
            [
                "init",
                "act. std ×/layer",
                "final loss",
                "val acc, epoch 1",
                f"val acc, epoch {epochs}",
            ],
            rows,
        )
    )

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    plot_curves(
        axes[0],
        curves,
        "val_accuracy",
        f"{DEPTH}×{WIDTH} ReLU on digits",
        "validation accuracy",
    )
    plot_curves(axes[1], curves, "loss", "Training loss", "loss")
    numbers["figure"] = save_figure(fig, out, "03_torch_default.png")
    return numbers


if __name__ == "__main__":
    sys.exit(run_script(main, __doc__))
