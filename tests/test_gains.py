import math

import keras
import numpy as np
import pytest

import keras_winit
from keras_winit import gains

# PyTorch's torch.nn.init.calculate_gain, value for value.
TORCH_TABLE = [
    ("linear", None, 1),
    ("conv1d", None, 1),
    ("conv2d", None, 1),
    ("conv3d", None, 1),
    ("conv_transpose1d", None, 1),
    ("conv_transpose2d", None, 1),
    ("conv_transpose3d", None, 1),
    ("sigmoid", None, 1),
    ("tanh", None, 5.0 / 3),
    ("relu", None, math.sqrt(2.0)),
    ("leaky_relu", None, 1.4141428569978354),
    ("leaky_relu", 10, 0.14071950894605836),
    ("leaky_relu", 0.2, math.sqrt(2.0 / 1.04)),
    ("selu", None, 3.0 / 4),
]


@pytest.mark.parametrize("name, param, expected", TORCH_TABLE)
def test_torch_table_exact(name, param, expected):
    assert keras_winit.gain(name, param, method="torch") == expected


@pytest.mark.parametrize("name, param, _", TORCH_TABLE)
def test_torch_table_matches_torch_if_installed(name, param, _):
    torch = pytest.importorskip("torch")
    assert keras_winit.gain(name, param) == torch.nn.init.calculate_gain(
        name, param
    )


@pytest.mark.parametrize("name", ["gelu", "swish", "Relu", "softmax"])
def test_torch_rejects_names_outside_its_table(name):
    with pytest.raises(ValueError, match="method='torch'"):
        keras_winit.gain(name)


@pytest.mark.parametrize("param", [True, "0.1", [0.1], float("nan")])
def test_rejects_non_numeric_param(param):
    with pytest.raises(ValueError, match="param"):
        keras_winit.gain("leaky_relu", param)


@pytest.mark.parametrize(
    "name, expected, rel",
    [
        ("relu", math.sqrt(2.0), 1e-12),
        ("selu", 1.0, 1e-6),
        ("linear", 1.0, 1e-12),
        ("tanh", 1.5925, 1e-4),
        ("relu6", math.sqrt(2.0), 1e-8),
    ],
)
def test_moment_gains(name, expected, rel):
    assert keras_winit.gain(name, method="moment") == pytest.approx(
        expected, rel=rel
    )


def test_moment_matches_monte_carlo_for_smooth_activations():
    z = np.random.default_rng(0).standard_normal(400_000)
    gelu = 0.5 * z * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    moment = np.mean(gelu**2)
    assert gains.second_moment("gelu") == pytest.approx(moment, rel=0.01)
    assert gains.second_moment("sigmoid") == pytest.approx(
        np.mean((1 / (1 + np.exp(-z))) ** 2), rel=1e-3
    )


def test_moment_leaky_relu_uses_param():
    # E[leaky(z)^2] = (1 + a^2) / 2. Keras applies the slope in float32.
    assert keras_winit.gain(
        "leaky_relu", 0.3, method="moment"
    ) == pytest.approx(math.sqrt(2 / 1.09), rel=1e-7)


def test_moment_accepts_callables():
    assert keras_winit.gain(lambda x: 2.0 * x, method="moment") == (
        pytest.approx(0.5, rel=1e-12)
    )


@pytest.mark.parametrize(
    "name, param, expected",
    [
        ("sigmoid", None, 1 / (0.25 * math.sqrt(1.25))),  # 3.5777...
        ("tanh", None, 1.0),
        ("linear", None, 1.0),
        ("relu", None, math.sqrt(2.0)),
        ("leaky_relu", 0.1, math.sqrt(2.0 / 1.01)),
        ("gelu", None, 2.0),  # gelu'(0) = 1/2, gelu(0) = 0
        ("elu", None, 1.0),
    ],
)
def test_kumar_gains(name, param, expected):
    # XLA (JAX) evaluates tanh with a ~1e-6 rational approximation.
    rel = 1e-5 if keras.backend.backend() == "jax" else 1e-9
    assert keras_winit.gain(name, param, method="kumar") == pytest.approx(
        expected, rel=rel
    )


@pytest.mark.parametrize("name", ["tanh_shrink", "soft_shrink", "hard_shrink"])
def test_kumar_rejects_zero_slope_at_zero(name):
    with pytest.raises(ValueError, match="zero slope"):
        keras_winit.gain(name, method="kumar")


def test_kumar_sigmoid_is_the_papers_3_6():
    assert round(keras_winit.gain("sigmoid", method="kumar"), 2) == 3.58


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"activation": "nope", "method": "moment"}, "Unknown `activation`"),
        ({"activation": 3, "method": "kumar"}, "string or a callable"),
        ({"activation": "relu", "method": "he"}, "Invalid `method`"),
        (
            {"activation": "tanh", "param": 0.1, "method": "moment"},
            "takes no parameter",
        ),
    ],
)
def test_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_winit.gain(**kwargs)


@pytest.mark.parametrize("bound", [0.0, -1.0, float("inf"), "2"])
def test_truncated_normal_std_rejects(bound):
    with pytest.raises(ValueError, match="bound"):
        keras_winit.truncated_normal_std(bound)


def test_truncated_normal_std_small_bound_tends_to_uniform():
    k = 1e-4
    assert keras_winit.truncated_normal_std(k) == pytest.approx(
        k / math.sqrt(3), rel=1e-8
    )


def _swish(x):
    return x * keras.ops.sigmoid(x)


def _gelu_approximate(x):
    from keras_hub.src.utils.keras_utils import gelu_approximate

    return gelu_approximate(x)


# (activation, method): callables are not cached, so each call evaluates.
WITHOUT_X64 = [
    (keras.activations.sigmoid, "kumar"),  # 3.5777, not 4.0
    (keras.activations.tanh, "kumar"),
    (keras.activations.gelu, "kumar"),
    (keras.activations.gelu, "moment"),
    (keras.activations.elu, "kumar"),
    (keras.activations.relu, "kumar"),
    (_gelu_approximate, "kumar"),
    (_gelu_approximate, "moment"),
    (_swish, "kumar"),
    (_swish, "moment"),
]


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="jax_enable_x64 is JAX's"
)
@pytest.mark.parametrize("activation, method", WITHOUT_X64)
def test_gain_is_the_same_without_jax_x64(activation, method):
    # The suite enables x64 (conftest); users usually don't. Without it JAX
    # would evaluate the activation in float32 and Kumar's rule would see
    # a kink in every smooth activation.
    import jax

    with_x64 = keras_winit.gain(activation, method=method)
    with jax.enable_x64(False):
        without = keras_winit.gain(activation, method=method)
        assert not jax.config.jax_enable_x64  # restored after the call
    assert without == pytest.approx(with_x64, rel=1e-12, abs=0)


def test_kumar_sigmoid_by_name_and_callable_agree():
    by_name = keras_winit.gain("sigmoid", method="kumar")
    by_callable = keras_winit.gain(keras.activations.sigmoid, method="kumar")
    assert by_name == pytest.approx(1 / (0.25 * math.sqrt(1.25)), rel=1e-9)
    assert by_callable == pytest.approx(by_name, rel=1e-12)
