"""Keras' shape-only fans vs keras_winit's layer-aware fans, measured.

Builds small depthwise, transposed-convolution, LSTM and ConvLSTM2D models
with Keras' own initializers (which see only the kernel's shape), then
re-initializes them with `keras_winit.layer_init.initialize`, and prints,
for each kernel, the fans, the target std and the std actually measured on
the weights.
Then it pushes unit-variance data through a stack of 8
`DepthwiseConv2D + ReLU` layers (64 channels) and prints the activations'
second moment per layer under both initializations, averaged over 5 seeds
(He et al.'s rule keeps it at 1).

Run: `python tutorials/fans_before_after.py` (CPU, a few seconds).
"""

import math

import keras
import numpy as np

from keras_winit import fans
from keras_winit.layer_init import initialize

SEED = 0


def _models():
    he = keras.initializers.HeNormal(seed=SEED)
    depthwise = keras.Sequential(
        [
            keras.Input((16, 16, 16)),
            keras.layers.DepthwiseConv2D(
                3, depth_multiplier=2, depthwise_initializer=he
            ),
        ],
        name="depthwise",
    )
    transpose = keras.Sequential(
        [
            keras.Input((8, 8, 8)),
            keras.layers.Conv2DTranspose(32, 3, kernel_initializer=he),
        ],
        name="conv_transpose",
    )
    lstm = keras.Sequential(
        [keras.Input((5, 64)), keras.layers.LSTM(128)], name="lstm"
    )
    conv_lstm = keras.Sequential(
        [keras.Input((2, 6, 6, 5)), keras.layers.ConvLSTM2D(8, 3)],
        name="conv_lstm",
    )
    return [
        ("DepthwiseConv2D(3, mult=2), 16 ch", depthwise, "he_normal", 2.0),
        ("Conv2DTranspose(32, 3), 8 ch", transpose, "he_normal", 2.0),
        ("LSTM(128), 64 features", lstm, "glorot_uniform", None),
        ("ConvLSTM2D(8, 3), 5 ch", conv_lstm, "glorot_uniform", None),
    ]


def _keras_row(kernel, scheme_scale):
    fan_in, fan_out = fans.compute_fans(kernel.shape)
    if scheme_scale is None:  # glorot: fan_avg, scale 1
        target = math.sqrt(2.0 / (fan_in + fan_out))
    else:
        target = math.sqrt(scheme_scale / fan_in)
    measured = float(np.std(keras.ops.convert_to_numpy(kernel)))
    return fan_in, fan_out, target, measured


def fans_table():
    lines = [
        "| model | kernel shape | scheme | init | fan_in | fan_out "
        "| target std | measured std |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for title, model, scheme, scale in _models():
        variable = model.layers[-1].weights[0]
        shape = tuple(variable.shape)
        before = _keras_row(variable, scale)
        report = initialize(model, scheme, seed=SEED)
        rows = [r for r in report.rows if r["path"] == variable.path]
        after = rows[0]
        part = " (per gate)" if after["part"] else ""
        lines.append(
            f"| {title} | {shape} | {scheme} | Keras | {before[0]} "
            f"| {before[1]} | {before[2]:.4f} | {before[3]:.4f} |"
        )
        lines.append(
            f"| | | | keras_winit{part} | {after['fan_in']} "
            f"| {after['fan_out']} | {after['target_std']:.4f} "
            f"| {np.mean([r['measured_std'] for r in rows]):.4f} |"
        )
    return "\n".join(lines)


def _depthwise_stack(depth, channels, seed):
    layers = [keras.Input((28, 28, channels))]
    for i in range(depth):
        layers.append(
            keras.layers.DepthwiseConv2D(
                3,
                padding="valid",
                use_bias=False,
                activation="relu",
                depthwise_initializer=keras.initializers.HeNormal(
                    seed=seed * 100 + i
                ),
            )
        )
    return keras.Sequential(layers)


def _second_moments(model, x):
    moments = []
    for layer in model.layers:
        x = layer(x)
        moments.append(float(np.mean(keras.ops.convert_to_numpy(x) ** 2)))
    return moments


def activations_table(depth=8, channels=64, seeds=5):
    """E[a²] after each DepthwiseConv2D + ReLU, averaged over `seeds`.

    He et al.'s `Var(w) = 2 / fan_in` keeps the second moment of the ReLU
    outputs at the input's (1 here) when `fan_in` is the true one.
    """
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(4, 28, 28, channels)).astype("float32")
    keras_moments, ours = [], []
    for seed in range(seeds):
        model = _depthwise_stack(depth, channels, seed)
        keras_moments.append(_second_moments(model, x))
        initialize(model, "he_normal", seed=seed)
        ours.append(_second_moments(model, x))
    keras_moments = np.mean(keras_moments, axis=0)
    ours = np.mean(ours, axis=0)
    lines = [
        f"| layer | E[a²], Keras HeNormal (fan_in 9·{channels}) "
        "| E[a²], keras_winit he_normal (fan_in 9) |",
        "|---|---|---|",
    ]
    for i, (a, b) in enumerate(zip(keras_moments, ours, strict=True)):
        lines.append(f"| {i + 1} | {a:.3g} | {b:.3g} |")
    return "\n".join(lines)


def main():
    keras.utils.set_random_seed(SEED)
    print(fans_table())
    print()
    print(activations_table())


if __name__ == "__main__":
    main()
