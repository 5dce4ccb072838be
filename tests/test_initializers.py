"""Statistics, seeds and argument checks of every keras_winit initializer.

Each class is checked against an *independent* statement of what it must
draw (`SPECS` below: scale, mode, distribution written out from the papers
and from the Keras/PyTorch definitions) with exact fans per layer kind
(`KERNELS`), by a Kolmogorov–Smirnov test against the exact distribution
(p > 1e-4, as PyTorch's init tests) and a std within a few percent. Keras'
own tests use `atol=0.1`, which lets swapped fans pass; these do not.
"""

import math
import re

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
        ({"scale": 0.0}, "Argument `scale` must be positive float."),
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
            "Received: negative_slope=True",
        ),
        (
            lambda: keras_winit.KaimingUniform(nonlinearity="gelu"),
            "Invalid `nonlinearity` argument: .gelu.",
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


# ------------------------------------- issue 13: no silently wrong values


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("truncation", [1e-40, 1e-8, 1e-5, 5e-324])
def test_tiny_truncation_is_the_uniform_with_the_same_std(truncation, dtype):
    # On [-kσ, kσ] with tiny k the normal's density is flat: the samples
    # follow U(±√3·std) (inside ±kσ), with the target std, no zeros/NaN.
    initializer = keras_winit.VarianceScaling(1.0, truncation=truncation)
    x = to_numpy(initializer((100, 100), dtype=dtype)).ravel()
    std = 0.1
    assert np.all(np.isfinite(x))
    assert np.std(x) == pytest.approx(std, rel=0.03)
    limit = math.sqrt(3) * std
    assert np.abs(x).max() <= limit * (1 + 1e-6)
    uniform = stats.uniform(loc=-limit, scale=2 * limit)
    assert stats.kstest(x, uniform.cdf).pvalue > 1e-4


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_huge_truncation_is_the_normal(dtype):
    initializer = keras_winit.VarianceScaling(1.0, truncation=1e300, seed=3)
    x = to_numpy(initializer((100, 200), dtype=dtype)).ravel()
    assert np.all(np.isfinite(x))
    assert stats.kstest(x, stats.norm(scale=0.1).cdf).pvalue > 1e-4


def test_tiny_scale_is_exact_in_float64_and_rejected_in_float32():
    initializer = keras_winit.VarianceScaling(scale=5e-324, seed=0)
    x = to_numpy(initializer((100, 100), dtype="float64")).ravel()
    std = math.sqrt(5e-324) / 10
    assert initializer.target_stddev((100, 100)) == pytest.approx(std)
    assert np.std(x) == pytest.approx(std, rel=0.03)
    with pytest.raises(ValueError, match="underflow to zero.*float32|float32"):
        initializer((100, 100), dtype="float32")


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_huge_scale_is_rejected_where_it_overflows(dtype):
    initializer = keras_winit.VarianceScaling(scale=1e300, seed=0)
    with pytest.raises(ValueError, match=f"overflow to inf.*|{dtype}"):
        initializer((10, 10), dtype=dtype)
    x = to_numpy(initializer((100, 100), dtype="float64"))
    assert np.std(x) == pytest.approx(1e149, rel=0.05)


@pytest.mark.parametrize(
    "shape, nbytes",
    [
        ((200000, 200000), "160,000,000,000 bytes"),
        ((2**31, 2**31), "18,446,744,073,709,551,616 bytes"),
    ],
)
def test_huge_shape_fails_at_once_naming_shape_and_bytes(
    shape, nbytes, monkeypatch
):
    def must_not_draw(*args, **kwargs):
        raise AssertionError("drew before checking the size")

    for name in ("uniform", "normal"):
        monkeypatch.setattr(keras.random, name, must_not_draw)
    with pytest.raises(keras_winit.sampling.OutputTooLargeError) as info:
        keras_winit.VarianceScaling(2.0)(shape)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, MemoryError)
    assert str(shape) in str(info.value) and nbytes in str(info.value)


def test_size_limit_is_configurable(monkeypatch):
    monkeypatch.setattr(keras_winit.sampling, "MAX_OUTPUT_BYTES", 1000)
    initializer = keras_winit.HeNormal(seed=0)
    assert tuple(initializer((250,), dtype="float32").shape) == (250,)
    with pytest.raises(ValueError, match=r"\(251,\).*1,004 bytes"):
        initializer((251,), dtype="float32")


def test_huge_dense_in_keras_file_fails_at_once_in_safe_mode(tmp_path):
    import json
    import zipfile

    small = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(
                4, kernel_initializer=keras_winit.HeNormal(seed=0)
            ),
        ]
    )
    path = tmp_path / "small.keras"
    small.save(path)
    with zipfile.ZipFile(path) as archive:
        config = archive.read("config.json").decode()
        metadata = archive.read("metadata.json")
    config = json.loads(config)
    text = json.dumps(config).replace('"units": 4', '"units": 200000')
    text = text.replace("[null, 3]", "[null, 200000]")
    huge = tmp_path / "huge.keras"
    with zipfile.ZipFile(huge, "w") as archive:
        archive.writestr("config.json", text)
        archive.writestr("metadata.json", metadata)
    with pytest.raises(MemoryError, match=r"\(200000, 200000\)"):
        keras.saving.load_model(huge, safe_mode=True)


# ---------------------- issue 13 item 7: every argument named when wrong

NAN = float("nan")
BAD_ARGUMENTS = [
    (keras_winit.KaimingNormal, {"negative_slope": NAN}, "negative_slope=nan"),
    (
        keras_winit.KaimingNormal,
        {"negative_slope": None},
        "negative_slope=None",
    ),
    (
        keras_winit.KaimingUniform,
        {"negative_slope": 10**400},
        "negative_slope=",
    ),
    (keras_winit.KaimingNormal, {"nonlinearity": "gelu"}, "`nonlinearity`"),
    (keras_winit.KaimingNormal, {"nonlinearity": 3}, "`nonlinearity`"),
    (keras_winit.KaimingUniform, {"mode": ["fan_in"]}, "`mode`"),
    (keras_winit.VarianceScaling, {"distribution": [1]}, "`distribution`"),
    (keras_winit.VarianceScaling, {"mode": {}}, "`mode`"),
    (
        keras_winit.VarianceScaling,
        {"input_axes": 1.5, "output_axes": [1]},
        "input_axes=1.5",
    ),
    (
        keras_winit.VarianceScaling,
        {"input_axes": [0], "output_axes": "ab"},
        "output_axes='ab'",
    ),
    (keras_winit.VarianceScaling, {"scale": 10**400}, "`scale`"),
    (keras_winit.VarianceScaling, {"truncation": 10**400}, "`truncation`"),
    (keras_winit.XavierNormal, {"gain": 10**400}, "`gain`"),
    (keras_winit.XavierNormal, {"gain": NAN}, "gain=nan"),
    (keras_winit.HeNormal, {"seed": {}}, "seed={}"),
    (keras_winit.HeNormal, {"seed": 1.5}, "seed=1.5"),
    (keras_winit.HeNormal, {"seed": True}, "seed=True"),
    (keras_winit.HeNormal, {"fan_in": 10**400}, "`fan_in`"),
    (keras_winit.GlorotUniform, {"fan_out": 2**63}, "`fan_out`"),
    (keras_winit.ActivationScaling, {"activation": 3}, "activation=3"),
    (keras_winit.ActivationScaling, {"param": NAN}, "param=nan"),
    (keras_winit.ActivationScaling, {"method": [1]}, "`method`"),
    (keras_winit.ActivationScaling, {"activation": lambda x: x}, "activation"),
]


@pytest.mark.parametrize(
    "cls, kwargs, message",
    BAD_ARGUMENTS,
    ids=[f"{c.__name__}-{'-'.join(k)}" for c, k, _ in BAD_ARGUMENTS],
)
def test_bad_argument_is_named_at_construction(cls, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        cls(**kwargs)


def test_activation_scaling_accepts_registered_activation():
    @keras.saving.register_keras_serializable(package="winit_test")
    def scaled_tanh(x):
        return 1.7159 * keras.ops.tanh(2.0 * x / 3.0)

    by_function = keras_winit.ActivationScaling(scaled_tanh, seed=0)
    by_name = keras_winit.ActivationScaling("winit_test>scaled_tanh", seed=0)
    assert by_function.activation == "winit_test>scaled_tanh"
    assert by_function.get_config() == by_name.get_config()
    # 1 / sqrt(E[(1.7159 tanh(2z/3))^2]), z ~ N(0, 1): LeCun's scaled tanh.
    assert by_name.gain == pytest.approx(
        1
        / math.sqrt(
            keras_winit.gains.second_moment(
                lambda z: 1.7159 * np.tanh(2.0 * z / 3.0)
            )
        )
    )
    revived = keras_winit.ActivationScaling.from_config(by_name.get_config())
    assert revived.gain == by_name.gain


# --------------------- issue 16 item 3: PyTorch's rank < 2 error, Keras' not

TORCH_NAMED = [
    "XavierNormal",
    "XavierUniform",
    "KaimingNormal",
    "KaimingUniform",
]


@pytest.mark.parametrize("shape", [(), (7,)])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_rank_below_two(name, shape):
    initializer = make(name)
    if name in TORCH_NAMED:
        with pytest.raises(
            ValueError,
            match="Fan in and fan out can not be computed for tensor with "
            "fewer than 2 dimensions",
        ):
            initializer(shape)
    else:  # Keras' fans: (1, 1) for a scalar, (n, n) for a vector.
        assert tuple(initializer(shape).shape) == shape


@pytest.mark.parametrize("name", TORCH_NAMED)
def test_rank_below_two_with_explicit_fans(name):
    initializer = make(name, fan_in=9, fan_out=4)
    assert tuple(initializer((4,)).shape) == (4,)


# ------------------------------------ issue 16 item 2: DeltaOrthogonal

DELTA_SHAPES = [
    (3, 4, 8),
    (1, 6, 6),
    (3, 3, 5, 5),
    (5, 3, 2, 7),
    (3, 3, 3, 2, 4),
]


# Every shape, both gains, every kind of dtype (few cases: JAX compiles
# each shape).
DELTA_CASES = [
    (DELTA_SHAPES[0], 1.0, "float32"),
    (DELTA_SHAPES[1], 0.5, "float64"),
    (DELTA_SHAPES[2], 1.0, "bfloat16"),
    (DELTA_SHAPES[3], 0.5, "float32"),
    (DELTA_SHAPES[4], 2.0, "float64"),
    (DELTA_SHAPES[2], 0.5, "float16"),
]


@pytest.mark.parametrize("shape, gain, dtype", DELTA_CASES, ids=str)
def test_delta_orthogonal_centre_is_orthogonal_rest_zero(shape, gain, dtype):
    kernel = keras_winit.DeltaOrthogonal(gain=gain, seed=3)(shape, dtype)
    assert tuple(kernel.shape) == shape
    assert keras.backend.standardize_dtype(kernel.dtype) == dtype
    kernel = to_numpy(kernel)
    centre_index = tuple(k // 2 for k in shape[:-2])
    centre = kernel[centre_index]
    atol = 2e-2 if dtype in ("bfloat16", "float16") else 1e-5
    # (in, out) with in <= out: orthonormal rows, H Hᵀ = gain² I.
    np.testing.assert_allclose(
        centre @ centre.T, gain**2 * np.eye(shape[-2]), atol=atol
    )
    rest = kernel.copy()
    rest[centre_index] = 0
    assert not rest.any()


def test_delta_orthogonal_conv_preserves_the_norm():
    # 'same' padding: at every position the channels go through an
    # isometry, so the output has exactly the input's norm (times gain).
    layer = keras.layers.Conv2D(
        16,
        3,
        padding="same",
        use_bias=False,
        kernel_initializer=keras_winit.DeltaOrthogonal(gain=2.0, seed=0),
    )
    x = np.random.default_rng(0).normal(size=(2, 7, 7, 8)).astype("float32")
    y = to_numpy(layer(x))
    assert np.linalg.norm(y) == pytest.approx(2 * np.linalg.norm(x), rel=1e-5)


def test_delta_orthogonal_seeds():
    shape = (3, 3, 4, 4)
    first = keras_winit.DeltaOrthogonal(seed=11)
    a, b = to_numpy(first(shape)), to_numpy(first(shape))
    assert not np.allclose(a, b)  # shared instance: new draw per call
    again = keras_winit.DeltaOrthogonal(seed=11)
    np.testing.assert_array_equal(a, to_numpy(again(shape)))
    np.testing.assert_array_equal(b, to_numpy(again(shape)))
    revived = keras_winit.DeltaOrthogonal.from_config(first.get_config())
    np.testing.assert_array_equal(a, to_numpy(revived(shape)))
    generator = keras_winit.DeltaOrthogonal(seed=keras.random.SeedGenerator(1))
    assert not np.allclose(
        to_numpy(generator(shape)), to_numpy(generator(shape))
    )
    keras.utils.set_random_seed(5)
    c = to_numpy(keras_winit.DeltaOrthogonal()(shape))
    keras.utils.set_random_seed(5)
    np.testing.assert_array_equal(
        c, to_numpy(keras_winit.DeltaOrthogonal()(shape))
    )


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: keras_winit.DeltaOrthogonal()((4, 8)), "rank 3, 4 or 5"),
        (lambda: keras_winit.DeltaOrthogonal()((2, 2, 2, 2, 2, 2)), "rank"),
        (lambda: keras_winit.DeltaOrthogonal()((2, 4, 8)), "odd spatial"),
        (lambda: keras_winit.DeltaOrthogonal()((3, 4, 4, 8)), "odd spatial"),
        (
            lambda: keras_winit.DeltaOrthogonal()((3, 3, 8, 4)),
            "in_channels=8, out_channels=4",
        ),
        (lambda: keras_winit.DeltaOrthogonal(gain=0), "Received: gain=0"),
        (lambda: keras_winit.DeltaOrthogonal(gain=NAN), "gain=nan"),
        (lambda: keras_winit.DeltaOrthogonal(seed="x"), "seed='x'"),
        (
            lambda: keras_winit.DeltaOrthogonal()((3, 2, 2), dtype="int32"),
            "dtype=int32",
        ),
    ],
)
def test_delta_orthogonal_rejects(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_delta_orthogonal_resolves_by_name():
    layer = keras.layers.Conv1D(4, 3, kernel_initializer="delta_orthogonal")
    assert isinstance(layer.kernel_initializer, keras_winit.DeltaOrthogonal)
