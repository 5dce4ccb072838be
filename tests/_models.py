"""A model with every kind of weighted layer, each with a keras_winit init.

Imports only keras and keras_winit, so a fresh process can rebuild it.
"""

import keras

import keras_winit


def build_model(seed=1):
    """Conv2D, DepthwiseConv2D, Conv2DTranspose, LSTM, MHA, EinsumDense, Dense.

    One `HeNormal` instance is shared by two layers on purpose: with an int
    seed they must still get different kernels.
    """
    # Seeds the initializers left at seed=None ("xavier_normal") too.
    keras.utils.set_random_seed(seed)
    shared = keras_winit.HeNormal(seed=seed)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(
        8, 3, padding="same", activation="relu", kernel_initializer=shared
    )(inputs)
    x = keras.layers.DepthwiseConv2D(
        3,
        depth_multiplier=2,
        padding="same",
        depthwise_initializer=keras_winit.KaimingUniform(
            nonlinearity="relu", seed=seed + 1
        ),
    )(x)
    x = keras.layers.Conv2DTranspose(
        4,
        3,
        padding="same",
        kernel_initializer=keras_winit.VarianceScaling(
            scale=2.0, mode="fan_geo_avg", truncation=3.0, seed=seed + 2
        ),
    )(x)
    x = keras.layers.Reshape((16, 16))(x)
    x = keras.layers.LSTM(
        16,
        return_sequences=True,
        kernel_initializer=keras_winit.XavierUniform(gain=1.0, seed=seed + 3),
        recurrent_initializer=keras_winit.LecunNormal(seed=seed + 4),
    )(x)
    x = keras.layers.MultiHeadAttention(
        num_heads=2,
        key_dim=8,
        kernel_initializer=keras_winit.GlorotNormal(seed=seed + 5),
    )(x, x)
    x = keras.layers.EinsumDense(
        "abc,cd->abd",
        output_shape=(None, 12),
        kernel_initializer=keras_winit.ActivationScaling(
            "gelu", method="moment", seed=seed + 6
        ),
    )(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    x = keras.layers.Dense(16, kernel_initializer=shared)(x)
    outputs = keras.layers.Dense(
        3, kernel_initializer="xavier_normal", name="head"
    )(x)
    return keras.Model(inputs, outputs, name="every_layer")
