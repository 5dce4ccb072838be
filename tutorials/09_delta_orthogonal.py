"""Xiao et al. (2018): delta-orthogonal kernels train deep vanilla tanh CNNs.

A plain convolutional network (no normalization, no skip connections):
`depth × Conv2D(width, 3, padding="same", activation="tanh")`, then
`Flatten` and a softmax, on the digits data as 8×8×1 images (the 'same'
padding keeps 8×8), trained with SGD (momentum 0.9, lr 0.003, batch 32)
from three kernel initializers:

- `keras_winit.GlorotNormal`: `Var(w) = 2 / (fan_in + fan_out)`, i.e.
  `σ_w² = 1` for a square conv; tanh's signal shrinks slowly and the
  Jacobian, a product of Gaussian matrices, gets ill-conditioned with
  depth.
- `keras_winit.HeNormal`: `σ_w² = 2`, the chaotic phase for tanh: the
  back-propagated gradient grows by `χ = σ_w² E[tanh'(h)²] > 1` per layer.
- `keras_winit.DeltaOrthogonal`: an orthogonal matrix at the kernel's
  centre tap, zeros elsewhere: every layer starts as a norm-preserving map
  of the channels at each position, so the input-output Jacobian's
  singular values stay near 1 at any depth (dynamical isometry).

The experiment trains each at increasing depth and reports the training
accuracy after a fixed number of epochs: the depth at which Glorot and He
stop training while delta-orthogonal still trains. Fast mode: depth 128
only, 480 training images, 2 epochs.

Run: `python tutorials/09_delta_orthogonal.py [--fast] [--out DIR]`.

Reference:
    Xiao, Bahri, Sohl-Dickstein, Schoenholz & Pennington, 2018,
    "Dynamical Isometry and a Mean Field Theory of CNNs: How to Train
    10,000-Layer Vanilla Convolutional Neural Networks",
    https://arxiv.org/abs/1806.05393
"""

import sys

import keras
from _common import digits
from _common import format_table
from _common import output_dir
from _common import plot_curves
from _common import pyplot
from _common import run_script
from _common import save_figure
from _common import train

import keras_winit

INITS = {
    "Glorot": keras_winit.GlorotNormal,
    "He": keras_winit.HeNormal,
    "Delta-orthogonal": keras_winit.DeltaOrthogonal,
}
#: A run "trains" when its training accuracy ends above this (chance 0.1).
TRAINS = 0.5


def images(data):
    """The digits' 64 features as 8×8×1 images (already standardized)."""
    x, y, x_val, y_val = data
    return x.reshape(-1, 8, 8, 1), y, x_val.reshape(-1, 8, 8, 1), y_val


def plain_cnn(initializer_cls, depth, width, seed=0):
    """`depth` tanh convolutions, flatten, softmax."""
    keras.utils.set_random_seed(seed)
    initializer = initializer_cls(seed=seed)
    x = inputs = keras.Input((8, 8, 1))
    for _ in range(depth):
        x = keras.layers.Conv2D(
            width,
            3,
            padding="same",
            activation="tanh",
            kernel_initializer=initializer,
        )(x)
    # Flatten, not global pooling: a delta kernel starts as a per-pixel
    # map, and pooling would throw away where the pixels are.
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def main(fast=False, out=None):
    out = output_dir(out)
    data = images(digits())
    if fast:
        data = (data[0][:480], data[1][:480], data[2], data[3])
    width = 8
    depths = (128,) if fast else (16, 64, 128)
    epochs = 2 if fast else 4
    learning_rate = 0.003
    numbers, curves, rows = {}, {}, []
    for depth in depths:
        for name, cls in INITS.items():
            model = plain_cnn(cls, depth, width)
            history = train(
                model,
                data,
                epochs,
                batch_size=32,
                learning_rate=learning_rate,
                validation=not fast,
            )
            curves[(depth, name)] = history
            key = f"depth{depth}_{name.lower().replace('-', '_')}"
            numbers[f"{key}_final_loss"] = history["loss"][-1]
            numbers[f"{key}_train_accuracy"] = history["accuracy"][-1]
            if not fast:
                numbers[f"{key}_val_accuracy"] = history["val_accuracy"][-1]
            rows.append(
                [
                    depth,
                    name,
                    history["loss"][-1],
                    history["accuracy"][-1],
                    history["val_accuracy"][-1] if not fast else "—",
                ]
            )
    print(
        format_table(
            ["depth", "init", "final loss", "train acc", "val acc"], rows
        )
    )
    for name in INITS:
        trained = [
            d for d in depths if curves[(d, name)]["accuracy"][-1] > TRAINS
        ]
        numbers[f"{name.lower().replace('-', '_')}_deepest_trained"] = max(
            trained, default=0
        )

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    deepest = depths[-1]
    plot_curves(
        axes[0],
        {name: curves[(deepest, name)] for name in INITS},
        "loss",
        f"{deepest} tanh conv layers, width {width}",
        "training loss",
    )
    for name in INITS:
        axes[1].plot(
            depths,
            [curves[(d, name)]["accuracy"][-1] for d in depths],
            "o-",
            label=name,
        )
    axes[1].axhline(0.1, color="gray", lw=0.8, ls=":")
    axes[1].set(
        xscale="log",
        xlabel="depth (conv layers)",
        ylabel=f"train accuracy after {epochs} epochs",
        title="Plain tanh CNN on digits",
    )
    axes[1].legend(fontsize=7)
    numbers["figure"] = save_figure(fig, out, "09_delta_orthogonal.png")
    return numbers


if __name__ == "__main__":
    sys.exit(run_script(main, __doc__))
