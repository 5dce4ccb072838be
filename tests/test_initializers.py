"""Statistics, seeds and argument checks of every keras_winit initializer.

Each class is checked against an *independent* statement of what it must
draw (`SPECS` below: scale, mode, distribution written out from the papers
and from the Keras/PyTorch definitions) with exact fans per layer kind
(`KERNELS`), by a Kolmogorov–Smirnov test against the exact distribution
(p > 1e-4, as PyTorch's init tests) and a std within a few percent. Keras'
own tests use `atol=0.1`, which lets swapped fans pass; these do not.
"""

import math

import keras
import numpy as np
import pytest
from scipy import stats

import keras_winit

# Class -> (constructor kwargs, variance numerator, mode, distribution).
SPECS = {
    "VarianceScaling": (
        {"scale": 3.0, "mode": "fan_geo_avg", "truncation": 2.5},
        3.0,
        "fan_geo_avg",
        "truncated_normal",
    ),
    "GlorotNormal": ({}, 1.0, "fan_avg", "truncated_normal"),
    "GlorotUniform": ({}, 1.0, "fan_avg", "uniform"),
    "HeNormal": ({}, 2.0, "fan_in", "truncated_normal"),
    "HeUniform": ({}, 2.0, "fan_in", "uniform"),
    "LecunNormal": ({}, 1.0, "fan_in", "truncated_normal"),
    "LecunUniform": ({}, 1.0, "fan_in", "uniform"),
    "XavierNormal": ({"gain": 5.0 / 3}, 25.0 / 9, "fan_avg", "normal"),
    "XavierUniform": ({"gain": 2.0}, 4.0, "fan_avg", "uniform"),
    "KaimingNormal": (
        {"nonlinearity": "leaky_relu", "negative_slope": 0.2},
        2.0 / 1.04,
        "fan_in",
        "normal",
    ),
    "KaimingUniform": (
        {"mode": "fan_out", "nonlinearity": "relu"},
        2.0,
        "fan_out",
        "uniform",
    ),
    "ActivationScaling": (
        {"activation": "sigmoid", "method": "kumar"},
        12.8,
        "fan_in",
        "truncated_normal",
    ),
}
ALL_CLASSES = [getattr(keras_winit, name) for name in SPECS]

# Layer kind -> (kernel shape, init kwargs, true fan_in, true fan_out).
KERNELS = {
    "dense": ((96, 128), {}, 96, 128),
    "conv1d": ((5, 32, 64), {}, 160, 320),
    "conv2d": ((3, 3, 32, 48), {}, 288, 432),
    "conv3d": ((3, 3, 3, 16, 32), {}, 432, 864),
    "einsum": (
        (64, 8, 24),
        {"input_axes": [0], "output_axes": [1, 2]},
        64,
        192,
    ),
}
DTYPES = ["float32", "float16", "bfloat16", "float64"]


def make(name, seed=1234, **extra):
    kwargs, *_ = SPECS[name]
    return getattr(keras_winit, name)(seed=seed, **kwargs, **extra)


def expected_std(name, fan_in, fan_out):
    _, scale, mode, _ = SPECS[name]
    fan = {
        "fan_in": fan_in,
        "fan_out": fan_out,
        "fan_avg": (fan_in + fan_out) / 2,
        "fan_geo_avg": math.sqrt(fan_in * fan_out),
    }[mode]
    return math.sqrt(scale / fan)


def exact_distribution(name, std):
    """The scipy distribution the samples must follow."""
    kwargs, _, _, distribution = SPECS[name]
    if distribution == "uniform":
        limit = math.sqrt(3) * std
        return stats.uniform(loc=-limit, scale=2 * limit)
    if distribution == "normal":
        return stats.norm(scale=std)
    k = kwargs.get("truncation", 2.0)
    # std of N(0,1) truncated to [-k, k], from scipy, independently of ours.
    sigma = std / stats.truncnorm(-k, k).std()
    return stats.truncnorm(-k, k, scale=sigma)


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(x, "float64")))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("name", sorted(SPECS))
def test_distribution_is_exact(name, kernel, dtype):
    shape, kwargs, fan_in, fan_out = KERNELS[kernel]
    initializer = make(name, **kwargs)
    values = initializer(shape, dtype=dtype)
    assert tuple(values.shape) == shape
    assert keras.backend.standardize_dtype(values.dtype) == dtype
    x = to_numpy(values).ravel()
    std = expected_std(name, fan_in, fan_out)
    # Kumar gains come from numerical derivatives (~1e-12).
    assert initializer.target_stddev(shape) == pytest.approx(std, rel=1e-9)
    target = exact_distribution(name, std)
    assert stats.kstest(x, target.cdf).pvalue > 1e-4
    # ~12k samples: the sample std is within ~1.5% of the truth (>4 sigma).
    assert np.std(x) == pytest.approx(std, rel=0.04)
    assert abs(np.mean(x)) < 0.05 * std
    lo, hi = target.support()
    assert x.min() >= lo and x.max() <= hi


@pytest.mark.parametrize("bound", [0.5, 1.0, 2.0, 3.0, 6.0])
def test_truncation_bound_and_std_correction(bound):
    init = keras_winit.VarianceScaling(
        scale=1.0, mode="fan_in", truncation=bound, seed=7
    )
    x = to_numpy(init((100, 400))).ravel()
    std = math.sqrt(1 / 100)
    sigma = std / stats.truncnorm(-bound, bound).std()
    assert keras_winit.truncated_normal_std(bound) == pytest.approx(
        stats.truncnorm(-bound, bound).std(), rel=1e-12
    )
    assert np.abs(x).max() <= bound * sigma
    assert np.std(x) == pytest.approx(std, rel=0.03)
    target = stats.truncnorm(-bound, bound, scale=sigma)
    assert stats.kstest(x, target.cdf).pvalue > 1e-4


def test_truncated_normal_std_constant():
    # The constant Keras hard-codes for k = 2.
    assert keras_winit.truncated_normal_std(2.0) == pytest.approx(
        0.87962566103423978, rel=1e-15
    )


@pytest.mark.parametrize(
    "name",
    [
        "GlorotNormal",
        "GlorotUniform",
        "HeNormal",
        "HeUniform",
        "LecunNormal",
        "LecunUniform",
    ],
)
def test_same_scale_mode_distribution_as_keras(name):
    ours, theirs = (
        getattr(keras_winit, name)(),
        getattr(keras.initializers, name)(),
    )
    assert (ours.scale, ours.mode, ours.distribution) == (
        theirs.scale,
        theirs.mode,
        theirs.distribution,
    )
    shape = (3, 3, 16, 32)
    assert ours.target_stddev(shape) == pytest.approx(
        math.sqrt(
            theirs.scale / ((144 + 288) / 2 if ours.mode == "fan_avg" else 144)
        )
    )


@pytest.mark.parametrize("name", sorted(SPECS))
def test_fan_overrides_win(name):
    init = make(name, fan_in=50, fan_out=50)
    assert init.fans((3, 3, 16, 32)) == (50, 50)
    assert init.target_stddev((3, 3, 16, 32)) == pytest.approx(
        expected_std(name, 50, 50)
    )


@pytest.mark.parametrize("name", sorted(SPECS))
def test_zero_size_shape(name):
    values = make(name)((0, 16))
    assert tuple(values.shape) == (0, 16)


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_is_a_keras_variance_scaling(cls):
    # EinsumDense/MultiHeadAttention only pass input/output axes to
    # subclasses of Keras' VarianceScaling.
    assert issubclass(cls, keras.initializers.VarianceScaling)
    assert issubclass(cls, keras.initializers.Initializer)


# ----------------------------------------------------------------- seeds


@pytest.mark.parametrize("name", sorted(SPECS))
def test_int_seed_reproduces(name):
    a = to_numpy(make(name, seed=11)((32, 16)))
    b = to_numpy(make(name, seed=11)((32, 16)))
    c = to_numpy(make(name, seed=12)((32, 16)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_shared_instance_gives_different_tensors(name):
    init = make(name, seed=11)
    first = to_numpy(init((32, 16)))
    second = to_numpy(init((32, 16)))
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_from_config_repeats_the_stream(name):
    init = make(name, seed=5)
    draws = [to_numpy(init((8, 8))) for _ in range(3)]
    clone = type(init).from_config(init.get_config())
    for expected in draws:
        np.testing.assert_array_equal(to_numpy(clone((8, 8))), expected)


def test_shared_instance_in_layers_breaks_symmetry():
    init = keras_winit.HeNormal(seed=3)
    model = keras.Sequential(
        [
            keras.Input((32,)),
            keras.layers.Dense(32, kernel_initializer=init),
            keras.layers.Dense(32, kernel_initializer=init),
        ]
    )
    k1, k2 = (to_numpy(layer.kernel) for layer in model.layers)
    assert not np.array_equal(k1, k2)
    # Keras' own class repeats itself with an int seed (the trap we fix).
    keras_init = keras.initializers.HeNormal(seed=3)
    a, b = keras_init((32, 32)), keras_init((32, 32))
    np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_seed_generator_advances():
    gen = keras.random.SeedGenerator(9)
    init = keras_winit.GlorotUniform(seed=gen)
    assert not np.array_equal(to_numpy(init((4, 4))), to_numpy(init((4, 4))))


def test_none_seed_follows_global_seed():
    keras.utils.set_random_seed(21)
    a = to_numpy(keras_winit.HeUniform()((16, 16)))
    keras.utils.set_random_seed(21)
    b = to_numpy(keras_winit.HeUniform()((16, 16)))
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------- einsum and MHA


def test_einsum_dense_gets_true_fans():
    layer = keras.layers.EinsumDense(
        "ab,bcd->acd",
        output_shape=(16, 32),
        kernel_initializer=keras_winit.HeNormal(seed=1),
    )
    layer.build((None, 100))
    x = to_numpy(layer.kernel).ravel()
    std = math.sqrt(2.0 / 100)  # fan_in = 100, not 100 * 16
    assert np.std(x) == pytest.approx(std, rel=0.04)


def test_multi_head_attention_projections():
    mha = keras.layers.MultiHeadAttention(
        num_heads=4, key_dim=32, kernel_initializer=keras_winit.GlorotUniform()
    )
    q = np.zeros((2, 5, 64), "float32")
    mha(q, q)
    kernel = to_numpy(mha.query_dense.kernel)  # (64, 4, 32)
    std = math.sqrt(2.0 / (64 + 128))
    assert np.std(kernel) == pytest.approx(std, rel=0.06)
    out = to_numpy(mha.output_dense.kernel)  # (4, 32, 64)
    std = math.sqrt(2.0 / (128 + 64))
    assert np.std(out) == pytest.approx(std, rel=0.06)


# ------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scale": 0.0}, "`scale` must be a positive finite float"),
        ({"scale": -1.0}, "Received: scale=-1.0"),
        ({"scale": float("nan")}, "Received: scale=nan"),
        ({"scale": float("inf")}, "Received: scale=inf"),
        ({"scale": "2"}, "Received: scale='2'"),
        ({"mode": "fan_sum"}, "Invalid `mode` argument: 'fan_sum'"),
        ({"distribution": "cauchy"}, "Invalid `distribution` argument"),
        ({"truncation": 0.0}, "Received: truncation=0.0"),
        ({"truncation": -2}, "Received: truncation=-2"),
        ({"fan_in": 0}, "Received: fan_in=0"),
        ({"fan_out": -3}, "Received: fan_out=-3"),
        ({"fan_in": 2.5}, "Received: fan_in=2.5"),
        ({"input_axes": [0]}, "must be given together"),
        ({"seed": "abc"}, "seed"),
    ],
)
def test_variance_scaling_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        keras_winit.VarianceScaling(**kwargs)


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: keras_winit.ActivationScaling("swooshy"), "Unknown"),
        (
            lambda: keras_winit.ActivationScaling("leaky_relu", param="x"),
            "Received: param='x'",
        ),
        (
            lambda: keras_winit.KaimingNormal(negative_slope=True),
            "Received: param=True",
        ),
        (
            lambda: keras_winit.KaimingUniform(nonlinearity="gelu"),
            "method='torch'",
        ),
        (lambda: keras_winit.KaimingNormal(mode="fan_avg"), "Invalid `mode`"),
        (lambda: keras_winit.XavierUniform(gain=0), "Received: gain=0"),
        (
            lambda: keras_winit.ActivationScaling("relu", method="lsuv"),
            "Invalid `method`",
        ),
    ],
)
def test_activation_initializers_reject(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


@pytest.mark.parametrize("dtype", ["int32", "bool", "uint8"])
def test_rejects_non_float_dtype(dtype):
    with pytest.raises(ValueError, match=f"Received: dtype={dtype}"):
        keras_winit.HeUniform(seed=1)((3, 3), dtype=dtype)


@pytest.mark.parametrize("shape", [(None, 3), (3, -1), "ab", 3.5])
def test_rejects_unknown_dimensions(shape):
    with pytest.raises(ValueError, match="Argument `shape`"):
        keras_winit.HeUniform(seed=1)(shape)


def test_names_resolve_through_keras_get():
    for name, cls in [
        ("xavier_uniform", keras_winit.XavierUniform),
        ("xavier_normal", keras_winit.XavierNormal),
        ("kaiming_normal", keras_winit.KaimingNormal),
        ("kaiming_uniform", keras_winit.KaimingUniform),
        ("keras_winit>HeNormal", keras_winit.HeNormal),
        ("keras_winit>ActivationScaling", keras_winit.ActivationScaling),
    ]:
        assert type(keras.initializers.get(name)) is cls
    layer = keras.layers.Dense(4, kernel_initializer="kaiming_uniform")
    assert isinstance(layer.kernel_initializer, keras_winit.KaimingUniform)
