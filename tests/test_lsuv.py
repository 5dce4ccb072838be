"""Tests of keras_winit.lsuv (Mishkin & Matas, 2015)."""

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

import keras_winit
from keras_winit.diagnostics import diagnose
from keras_winit.lsuv import LSUVWarning
from keras_winit.lsuv import lsuv

L = keras.layers


@pytest.fixture(scope="module")
def digits():
    x = load_digits().data.astype("float32")
    return (x - x.mean(0)) / (x.std(0) + 1e-8)


def _numpy_pre_activations(model, x):
    """Var of every Dense pre-activation, computed with NumPy only."""
    a = x.astype(np.float64)
    variances = []
    for layer in model.layers:
        kernel, bias = (w.numpy().astype(np.float64) for w in layer.weights)
        z = a @ kernel + bias
        variances.append(z.var())
        a = (
            np.maximum(z, 0)
            if layer.get_config()["activation"] == "relu"
            else z
        )
    return np.array(variances)


def test_deep_relu_mlp_every_layer_unit_variance(digits):
    widths = [64, 128] * 15
    layers = [keras.Input((64,))]
    for i, w in enumerate(widths):
        layers.append(
            L.Dense(
                w,
                activation="relu",
                kernel_initializer=keras_winit.GlorotUniform(seed=i),
            )
        )
    layers.append(L.Dense(10))
    model = keras.Sequential(layers)
    assert "vanishing_activations" in {
        f.kind for f in diagnose(model, digits[:256]).flags
    }
    result = lsuv(model, digits[:256], tol=0.02, seed=0)
    assert result.converged and len(result.layers) == 31
    on_batch = _numpy_pre_activations(model, digits[:256])
    assert np.all(np.abs(on_batch - 1) < 0.02), on_batch
    on_other = _numpy_pre_activations(model, digits[256:512])
    assert np.all((on_other > 0.5) & (on_other < 2)), on_other
    for layer in model.layers:
        np.testing.assert_array_equal(layer.bias.numpy(), 0)
    after = diagnose(model, digits[:256])
    assert not {"vanishing_activations", "vanishing_gradients"} & {
        f.kind for f in after.flags
    }


def _conv_cases():
    return {
        "Dense": ((16,), lambda: [L.Dense(32), L.Dense(8)]),
        "EinsumDense": (
            (4, 16),
            lambda: [
                L.EinsumDense(
                    "abc,cde->abde", output_shape=(None, 3, 8), bias_axes="de"
                ),
                L.Reshape((4, 24)),
                L.EinsumDense("abc,cd->abd", output_shape=(None, 8)),
            ],
        ),
        "Conv1D": ((12, 3), lambda: [L.Conv1D(8, 3), L.Conv1D(4, 3)]),
        "Conv2D": ((8, 8, 3), lambda: [L.Conv2D(8, 3), L.Conv2D(4, 3)]),
        "Conv3D": ((5, 5, 5, 2), lambda: [L.Conv3D(4, 3), L.Conv3D(4, 2)]),
        "Conv1DTranspose": (
            (6, 3),
            lambda: [
                L.Conv1DTranspose(8, 3),
                L.Conv1DTranspose(4, 3, strides=2),
            ],
        ),
        "Conv2DTranspose": (
            (5, 5, 3),
            lambda: [L.Conv2DTranspose(8, 3), L.Conv2DTranspose(4, 3)],
        ),
        "Conv3DTranspose": (
            (3, 3, 3, 2),
            lambda: [L.Conv3DTranspose(4, 2), L.Conv3DTranspose(2, 2)],
        ),
        "DepthwiseConv1D": (
            (12, 4),
            lambda: [
                L.DepthwiseConv1D(3, depth_multiplier=2),
                L.DepthwiseConv1D(3),
            ],
        ),
        "DepthwiseConv2D": (
            (8, 8, 4),
            lambda: [
                L.DepthwiseConv2D(3, depth_multiplier=2),
                L.DepthwiseConv2D(3),
            ],
        ),
        "SeparableConv1D": (
            (12, 4),
            lambda: [L.SeparableConv1D(8, 3), L.SeparableConv1D(4, 3)],
        ),
        "SeparableConv2D": (
            (8, 8, 4),
            lambda: [L.SeparableConv2D(8, 3), L.SeparableConv2D(4, 3)],
        ),
    }


@pytest.mark.parametrize("kind", sorted(_conv_cases()))
def test_every_layer_kind_reaches_unit_variance(kind):
    shape, make = _conv_cases()[kind]
    kernel_layers = make()
    body = []
    for layer in kernel_layers:
        body.append(layer)
        if not isinstance(layer, L.Reshape):
            body.append(L.Activation("relu"))
    model = keras.Sequential([keras.Input(shape)] + body)
    x = np.random.default_rng(0).normal(size=(32,) + shape) * 3
    result = lsuv(model, x.astype("float32"), seed=0)
    assert [r.layer_type for r in result.layers] == [kind, kind]
    assert result.converged
    for layer in kernel_layers:
        if isinstance(layer, L.Reshape):
            continue
        # Independent check: a Keras sub-model up to the linear output.
        probe = keras.Model(model.inputs[0], layer.output)
        variance = np.var(
            keras.ops.convert_to_numpy(probe(x.astype("float32")))
        )
        assert abs(variance - 1) < 0.02, (layer.name, variance)
        if layer.bias is not None:
            np.testing.assert_array_equal(layer.bias.numpy(), 0)


def test_fused_tanh_measures_the_pre_activation():
    x = np.random.default_rng(1).normal(size=(128, 20)).astype("float32")
    model = keras.Sequential(
        [keras.Input((20,))]
        + [L.Dense(40, activation="tanh") for _ in range(4)]
    )
    result = lsuv(model, x, seed=3)
    assert result.converged
    report = diagnose(model, x)
    for s in report.layers:
        assert s.pre_std**2 == pytest.approx(1, abs=0.02)
        assert s.std < 1  # Var(tanh(z)) < 1: the output itself cannot be 1


def test_orthonormal_pre_initialization():
    x = np.random.default_rng(2).normal(size=(64, 16)).astype("float32")
    inputs = keras.Input((16,))
    h = L.Dense(32)(inputs)
    h = L.Reshape((4, 8))(h)
    h = L.EinsumDense("abc,cd->abd", output_shape=(None, 6))(h)
    model = keras.Model(inputs, h)
    lsuv(model, x, seed=0)
    dense, einsum = model.layers[1], model.layers[3]
    w = dense.kernel.numpy()  # (16, 32): orthonormal rows, scaled
    gram = w @ w.T
    np.testing.assert_allclose(gram, gram[0, 0] * np.eye(16), atol=1e-5)
    k = einsum.kernel.numpy()  # (8, 6): contracted axis first
    gram = k.T @ k
    np.testing.assert_allclose(gram, gram[0, 0] * np.eye(6), atol=1e-5)

    xs = np.random.default_rng(3).normal(size=(16, 8, 8, 3)).astype("float32")
    conv = keras.Sequential(
        [keras.Input((8, 8, 3)), L.DepthwiseConv2D(3, depth_multiplier=4)]
    )
    lsuv(conv, xs, seed=0)
    k = conv.layers[0].kernel.numpy()  # (3, 3, 3, 4)
    for c in range(3):
        m = k[:, :, c, :].reshape(9, 4)
        gram = m.T @ m
        np.testing.assert_allclose(gram, gram[0, 0] * np.eye(4), atol=1e-5)


def _model(seed_layers=0):
    keras.utils.set_random_seed(seed_layers)
    return keras.Sequential(
        [keras.Input((10,)), L.Dense(20, activation="relu"), L.Dense(20)]
    )


def test_seeded_and_reproducible():
    x = np.random.default_rng(4).normal(size=(32, 10)).astype("float32")
    a, b, c = _model(0), _model(1), _model(0)
    lsuv(a, x, seed=5)
    lsuv(b, x, seed=5)
    lsuv(c, x, seed=6)
    for wa, wb in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy())
    assert not np.allclose(a.layers[0].kernel.numpy(), c.layers[0].kernel)


def test_without_orthogonal_rescales_the_existing_kernel():
    x = np.random.default_rng(4).normal(size=(32, 10)).astype("float32")
    model = _model(0)
    before = model.layers[0].kernel.numpy()
    result = lsuv(model, x, orthogonal=False, zero_bias=False)
    after = model.layers[0].kernel.numpy()
    ratio = after / before
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)
    assert result.layers[0].iterations >= 1


def test_not_converged_warns_and_reports():
    x = np.random.default_rng(5).normal(size=(32, 10)).astype("float32")
    with pytest.warns(LSUVWarning, match="did not reach"):
        result = lsuv(_model(), x * 5, max_iter=0, seed=0)
    assert not result.converged
    assert all(r.iterations == 0 for r in result.layers)
    assert "NO" in result.to_table()


def test_shared_layer_and_layers_without_kernel():
    x = np.random.default_rng(6).normal(size=(64, 12)).astype("float32")
    inputs = keras.Input((12,))
    shared = L.Dense(12, name="shared")
    h = shared(shared(inputs))
    h = L.BatchNormalization(name="bn")(h)
    outputs = L.Dense(4, name="out")(h)
    model = keras.Model(inputs, outputs)
    gamma = model.get_layer("bn").gamma.numpy().copy()
    result = lsuv(model, x, seed=0)
    assert [r.name.split("/")[-1] for r in result.layers] == ["shared", "out"]
    np.testing.assert_array_equal(model.get_layer("bn").gamma.numpy(), gamma)


def test_table():
    x = np.random.default_rng(7).normal(size=(32, 10)).astype("float32")
    result = lsuv(_model(), x, seed=0)
    table = str(result)
    assert table == result.to_table()
    for text in ("layer", "iterations", "final var", "2/2 layers converged"):
        assert text in table


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tol": 0}, "tol"),
        ({"tol": -1}, "tol"),
        ({"max_iter": -1}, "max_iter"),
        ({"max_iter": 2.5}, "max_iter"),
        ({"seed": "a"}, "seed"),
        ({"orthogonal": 1}, "orthogonal"),
        ({"zero_bias": None}, "zero_bias"),
        ({"training": "no"}, "training"),
    ],
)
def test_invalid_arguments(kwargs, match):
    x = np.zeros((32, 10), "float32")
    with pytest.raises(ValueError, match=match):
        lsuv(_model(), x, **kwargs)


def test_batch_too_small_and_unbuilt_model():
    with pytest.raises(ValueError, match="at least 2 examples"):
        lsuv(_model(), np.zeros((1, 10), "float32"))
    tiny = keras.Sequential([keras.Input((10,)), L.Dense(1)])
    with pytest.raises(ValueError, match="too small to estimate"):
        lsuv(tiny, np.ones((8, 10), "float32"))
    with pytest.raises(ValueError, match="built"):
        lsuv(keras.Sequential([L.Dense(3)]), np.ones((8, 10), "float32"))


# ----------------------------------------------------------------------
# Nested layers and subclassed models (keras_winit.walker).


def test_lsuv_reaches_transformer_sublayers():
    from tests import _real_models

    model, batch = _real_models.build("GPT2Backbone", batch_size=4)
    result = lsuv(model, batch, seed=0)
    names = [r.name for r in result.layers]
    for part in ("query", "key", "value", "attention_output"):
        assert sum(n.endswith(part) for n in names) == 2, names
    assert sum("feedforward" in n for n in names) == 4, names
    assert result.converged


def test_lsuv_on_a_subclassed_model():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.a = L.Dense(16, activation="relu")
            self.b = L.Dense(16)

        def call(self, x):
            h = self.a(x)
            return h + self.b(h)

    x = np.random.default_rng(8).normal(size=(64, 10)).astype("float32")
    model = Sub()
    model(x)
    result = lsuv(model, x, seed=0)
    assert len(result.layers) == 2 and result.converged
