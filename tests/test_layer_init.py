"""Tests for keras_winit.layer_init.initialize: true fans for every layer."""

import math

import keras
import numpy as np
import pytest
from scipy import stats

import keras_winit
from keras_winit import layer_init

TRUNC = 0.87962566103423978  # std of N(0, 1) truncated to (-2, 2)
KS_P = 1e-4
STD_RTOL = 0.05


def _model(layer, input_shape):
    model = keras.Sequential([keras.Input(input_shape), layer])
    return model


def _var(model, path_suffix):
    matches = [v for v in model.weights if v.path.endswith(path_suffix)]
    assert len(matches) == 1, [v.path for v in model.weights]
    return np.asarray(keras.ops.convert_to_numpy(matches[0]), np.float64)


def _reference(scheme, fan_in, fan_out):
    """The exact distribution of `scheme` with the given true fans."""
    if scheme == "he_normal":
        std = math.sqrt(2.0 / fan_in)
        return stats.truncnorm(-2, 2, scale=std / TRUNC), std
    if scheme == "glorot_uniform":
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return stats.uniform(loc=-limit, scale=2 * limit), limit / math.sqrt(3)
    if scheme == "kaiming_normal":
        std = math.sqrt(2.0 / fan_in)
        return stats.norm(scale=std), std
    raise AssertionError(scheme)


def _check_distribution(values, scheme, fan_in, fan_out):
    dist, std = _reference(scheme, fan_in, fan_out)
    values = np.ravel(values)
    assert values.size >= 5000
    p = stats.kstest(values, dist.cdf).pvalue
    assert p > KS_P, (p, values.std(), std)
    np.testing.assert_allclose(values.std(), std, rtol=STD_RTOL)


# (id, layer factory, input shape, variable path suffix, true fans).
# The fans are written from the layer's geometry (see keras_winit.layouts).
LAYER_CASES = [
    ("dense", lambda: keras.layers.Dense(80), (96,), "kernel", (96, 80)),
    (
        "conv1d",
        lambda: keras.layers.Conv1D(32, 5),
        (12, 48),
        "kernel",
        (5 * 48, 5 * 32),
    ),
    (
        "conv2d",
        lambda: keras.layers.Conv2D(32, 3),
        (6, 6, 24),
        "kernel",
        (9 * 24, 9 * 32),
    ),
    (
        "conv2d_groups",
        lambda: keras.layers.Conv2D(32, 3, groups=4),
        (6, 6, 96),
        "kernel",
        (9 * 24, 9 * 8),
    ),
    (
        "conv3d",
        lambda: keras.layers.Conv3D(16, 3),
        (4, 4, 4, 16),
        "kernel",
        (27 * 16, 27 * 16),
    ),
    (
        "conv1d_transpose",
        lambda: keras.layers.Conv1DTranspose(32, 5),
        (6, 48),
        "kernel",
        (5 * 48, 5 * 32),
    ),
    (
        "conv2d_transpose",
        lambda: keras.layers.Conv2DTranspose(24, 3),
        (4, 4, 32),
        "kernel",
        (9 * 32, 9 * 24),
    ),
    (
        "conv3d_transpose",
        lambda: keras.layers.Conv3DTranspose(16, 3),
        (3, 3, 3, 12),
        "kernel",
        (27 * 12, 27 * 16),
    ),
    (
        "depthwise1d",
        lambda: keras.layers.DepthwiseConv1D(5, depth_multiplier=8),
        (8, 160),
        "kernel",
        (5, 5 * 8),
    ),
    (
        "depthwise2d",
        lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=8),
        (5, 5, 96),
        "kernel",
        (9, 9 * 8),
    ),
    (
        "separable1d_depthwise",
        lambda: keras.layers.SeparableConv1D(16, 5, depth_multiplier=4),
        (8, 256),
        "depthwise_kernel",
        (5, 5 * 4),
    ),
    (
        "separable2d_depthwise",
        lambda: keras.layers.SeparableConv2D(16, 3, depth_multiplier=4),
        (5, 5, 160),
        "depthwise_kernel",
        (9, 9 * 4),
    ),
    (
        "separable2d_pointwise",
        lambda: keras.layers.SeparableConv2D(64, 3, depth_multiplier=2),
        (5, 5, 48),
        "pointwise_kernel",
        (96, 64),
    ),
    (
        "einsum_dense",
        lambda: keras.layers.EinsumDense("ab,bcd->acd", (8, 10)),
        (80,),
        "kernel",
        (80, 80),
    ),
]
SCHEMES = ["he_normal", "glorot_uniform", "kaiming_normal"]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(
    "factory,input_shape,suffix,true_fans",
    [c[1:] for c in LAYER_CASES],
    ids=[c[0] for c in LAYER_CASES],
)
def test_kernel_uses_true_fans(factory, input_shape, suffix, true_fans, scheme):
    model = _model(factory(), input_shape)
    report = layer_init.initialize(model, scheme, seed=3)
    values = _var(model, suffix)
    _check_distribution(values, scheme, *true_fans)
    (row,) = [r for r in report.rows if r["path"].endswith(suffix)]
    assert (row["fan_in"], row["fan_out"]) == true_fans
    assert row["init"] == scheme
    np.testing.assert_allclose(
        row["target_std"], _reference(scheme, *true_fans)[1], rtol=1e-6
    )
    np.testing.assert_allclose(row["measured_std"], values.std(), rtol=1e-5)


@pytest.mark.parametrize("projection", ["query", "key", "value", "output"])
def test_multi_head_attention(projection):
    inputs = keras.Input((4, 64))
    outputs = keras.layers.MultiHeadAttention(8, 16)(inputs, inputs)
    model = keras.Model(inputs, outputs)
    layer_init.initialize(model, "glorot_uniform", seed=0)
    if projection == "output":
        values = _var(model, "attention_output/kernel")
        fans = (8 * 16, 64)
    else:
        values = _var(model, f"{projection}/kernel")
        fans = (64, 8 * 16)
    _check_distribution(values, "glorot_uniform", *fans)


GATES = [
    ("lstm", keras.layers.LSTM, 4),
    ("gru", keras.layers.GRU, 3),
    ("simple_rnn", keras.layers.SimpleRNN, 1),
]


@pytest.mark.parametrize("scheme", ["he_normal", "glorot_uniform"])
@pytest.mark.parametrize(
    "rnn,gates", [g[1:] for g in GATES], ids=[g[0] for g in GATES]
)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_recurrent_gates(rnn, gates, scheme, bidirectional):
    units, features = 64, 96
    layer = rnn(units)
    if bidirectional:
        layer = keras.layers.Bidirectional(layer)
    model = _model(layer, (3, features))
    report = layer_init.initialize(model, scheme, seed=1)
    directions = ["forward", "backward"] if bidirectional else [""]
    for direction in directions:
        prefix = f"{direction}_" if direction else ""
        kernel = [
            v
            for v in model.weights
            if v.path.endswith("/kernel") and prefix in v.path
        ]
        recurrent = [
            v
            for v in model.weights
            if v.path.endswith("recurrent_kernel") and prefix in v.path
        ]
        kernel = keras.ops.convert_to_numpy(kernel[0])
        recurrent = keras.ops.convert_to_numpy(recurrent[0])
        assert kernel.shape == (features, gates * units)
        for g in range(gates):
            block = kernel[:, g * units : (g + 1) * units]
            # Per gate: fan_in = features, fan_out = units (not G·units).
            _check_distribution(block, scheme, features, units)
            q = recurrent[:, g * units : (g + 1) * units]
            np.testing.assert_allclose(q.T @ q, np.eye(units), atol=1e-5)
    gate_rows = [
        r for r in report.rows if r["path"].endswith("/kernel") and r["part"]
    ]
    if gates > 1:
        assert len(gate_rows) == gates * len(directions)
        assert {(r["fan_in"], r["fan_out"]) for r in gate_rows} == {
            (features, units)
        }


def test_lstm_auto_uses_activation_per_gate():
    model = _model(keras.layers.LSTM(32), (3, 160))
    report = layer_init.initialize(model, "auto", seed=2)
    kernel = _var(model, "/kernel")
    expected = {
        "i": keras_winit.gain("sigmoid", method="moment"),
        "f": keras_winit.gain("sigmoid", method="moment"),
        "c": keras_winit.gain("tanh", method="moment"),
        "o": keras_winit.gain("sigmoid", method="moment"),
    }
    for g, name in enumerate("ifco"):
        block = kernel[:, g * 32 : (g + 1) * 32]
        std = expected[name] / math.sqrt(160)
        dist = stats.truncnorm(-2, 2, scale=std / TRUNC)
        assert stats.kstest(block.ravel(), dist.cdf).pvalue > KS_P
        (row,) = [
            r
            for r in report.rows
            if r["path"].endswith("/kernel") and r["part"] == f"gate {name}"
        ]
        np.testing.assert_allclose(row["target_std"], std, rtol=1e-6)


@pytest.mark.parametrize(
    "activation", ["relu", "tanh", "selu", None, "softmax"]
)
def test_auto_dense(activation):
    model = _model(keras.layers.Dense(64, activation=activation), (100,))
    layer_init.initialize(model, "auto", seed=0)
    name = "linear" if activation in (None, "softmax") else activation
    std = keras_winit.gain(name, method="moment") / math.sqrt(100)
    values = _var(model, "kernel").ravel()
    dist = stats.truncnorm(-2, 2, scale=std / TRUNC)
    assert stats.kstest(values, dist.cdf).pvalue > KS_P


@pytest.mark.parametrize(
    "activation_layer, name, param",
    [
        (lambda: keras.layers.ReLU(), "relu", None),
        (lambda: keras.layers.LeakyReLU(negative_slope=0.3), "leaky_relu", 0.3),
        (lambda: keras.layers.ELU(alpha=0.5), "elu", 0.5),
        (lambda: keras.layers.Activation("tanh"), "tanh", None),
    ],
)
@pytest.mark.parametrize("functional", [False, True])
def test_auto_follows_a_separate_activation_layer(
    activation_layer, name, param, functional
):
    dense = keras.layers.Dense(64)
    if functional:
        inputs = keras.Input((100,))
        outputs = keras.layers.Dense(3)(activation_layer()(dense(inputs)))
        model = keras.Model(inputs, outputs)
    else:
        model = keras.Sequential(
            [
                keras.Input((100,)),
                dense,
                activation_layer(),
                keras.layers.Dense(3),
            ]
        )
    report = layer_init.initialize(model, "auto", seed=0)
    std = keras_winit.gain(name, param, method="moment") / math.sqrt(100)
    values = np.asarray(dense.kernel).ravel()
    dist = stats.truncnorm(-2, 2, scale=std / TRUNC)
    assert stats.kstest(values, dist.cdf).pvalue > KS_P
    (row,) = [r for r in report.rows if r["path"] == dense.kernel.path]
    np.testing.assert_allclose(row["target_std"], std, rtol=1e-6)
    assert name in row["init"]
    # The head after the activation layer is linear.
    head = model.layers[-1].kernel
    (row,) = [r for r in report.rows if r["path"] == head.path]
    assert "linear" in row["init"]


def test_initializer_instance_scheme_keeps_scale_mode_distribution():
    scheme = keras_winit.VarianceScaling(
        scale=3.0, mode="fan_out", distribution="uniform", seed=5
    )
    model = _model(
        keras.layers.DepthwiseConv2D(3, depth_multiplier=8), (5, 5, 96)
    )
    layer_init.initialize(model, scheme, seed=0)
    values = _var(model, "kernel").ravel()
    limit = math.sqrt(3.0) * math.sqrt(3.0 / (9 * 8))  # true fan_out 72
    assert np.abs(values).max() <= limit
    p = stats.kstest(values, stats.uniform(loc=-limit, scale=2 * limit).cdf)
    assert p.pvalue > KS_P
    # The user's instance is not modified.
    assert scheme.fan_in is None and scheme.fan_out is None


def test_keras_variance_scaling_instance_scheme():
    scheme = keras.initializers.HeNormal()
    model = _model(
        keras.layers.DepthwiseConv2D(3, depth_multiplier=8), (5, 5, 96)
    )
    layer_init.initialize(model, scheme, seed=0)
    _check_distribution(_var(model, "kernel"), "he_normal", 9, 72)


# --- ConvLSTM1D/2D/3D ---------------------------------------------------

CONV_LSTM_FILTERS, CONV_LSTM_CHANNELS = 6, 5
# (id, layer class, kwargs, input shape (time, *spatial, channels), window
# size k = prod(kernel_size)).
CONV_LSTM = [
    ("conv_lstm1d", keras.layers.ConvLSTM1D, {}, (2, 6, 5), 3),
    ("conv_lstm2d", keras.layers.ConvLSTM2D, {}, (2, 5, 5, 5), 9),
    # The kernel is (*kernel_size, channels, 4·filters) in both formats.
    (
        "conv_lstm2d_channels_first",
        keras.layers.ConvLSTM2D,
        {"data_format": "channels_first"},
        (2, 5, 4, 3),
        9,
    ),
    ("conv_lstm3d", keras.layers.ConvLSTM3D, {}, (2, 4, 4, 4, 5), 27),
]


def _conv_lstm(cls, kwargs, input_shape, bidirectional=False, **more):
    layer = cls(CONV_LSTM_FILTERS, 3, **kwargs, **more)
    if bidirectional:
        layer = keras.layers.Bidirectional(layer)
    return _model(layer, input_shape)


def _std_rtol(dist, n):
    """Four standard errors of the std of `n` draws of `dist`, relative.

    The sample std of n i.i.d. draws has standard error
    `σ · sqrt((κ - 1) / (4n))` for large n, with `κ` the kurtosis.
    """
    excess = float(dist.stats(moments="k"))
    return 4 * math.sqrt((excess + 2) / (4 * n))


def _gate_rows(report, path):
    rows = [r for r in report.rows if r["path"] == path]
    assert [r["part"] for r in rows] == [f"gate {g}" for g in "ifco"]
    return rows


@pytest.mark.parametrize("scheme", ["he_normal", "glorot_uniform"])
@pytest.mark.parametrize(
    "cls,kwargs,input_shape,window",
    [c[1:] for c in CONV_LSTM],
    ids=[c[0] for c in CONV_LSTM],
)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_conv_lstm_gates(
    cls, kwargs, input_shape, window, scheme, bidirectional
):
    filters, channels = CONV_LSTM_FILTERS, CONV_LSTM_CHANNELS
    model = _conv_lstm(cls, kwargs, input_shape, bidirectional)
    report = layer_init.initialize(model, scheme, seed=3)
    assert report.unknown == []
    paths = {v.path: v for v in model.weights}
    kernels = [p for p in paths if p.endswith("/kernel")]
    assert len(kernels) == (2 if bidirectional else 1)
    # Per gate, a convolution (k, channels) -> filters.
    fans = (window * channels, window * filters)
    dist, std = _reference(scheme, *fans)
    for kernel_path in kernels:
        kernel = keras.ops.convert_to_numpy(paths[kernel_path])
        assert kernel.shape[-2:] == (channels, 4 * filters)
        blocks = np.split(kernel.astype(np.float64), 4, axis=-1)
        for block, row in zip(
            blocks, _gate_rows(report, kernel_path), strict=True
        ):
            assert row["layout"] == "conv_recurrent"
            assert (row["fan_in"], row["fan_out"]) == fans
            assert row["shape"] == block.shape
            np.testing.assert_allclose(row["target_std"], std, rtol=1e-6)
            np.testing.assert_allclose(
                row["measured_std"], block.std(), rtol=1e-5
            )
            np.testing.assert_allclose(
                block.std(), std, rtol=_std_rtol(dist, block.size)
            )
        # The four gates share one distribution: one KS test on all.
        pooled = np.concatenate([b.ravel() for b in blocks])
        assert stats.kstest(pooled, dist.cdf).pvalue > KS_P
        # Per gate, orthogonal as Keras flattens a conv kernel: rows are
        # (window position, input filter), columns the filters.
        recurrent_path = kernel_path.replace("/kernel", "/recurrent_kernel")
        recurrent = keras.ops.convert_to_numpy(paths[recurrent_path])
        rows = _gate_rows(report, recurrent_path)
        for g, row in enumerate(rows):
            q = recurrent[..., g * filters : (g + 1) * filters]
            q = q.reshape(window * filters, filters).astype(np.float64)
            np.testing.assert_allclose(q.T @ q, np.eye(filters), atol=1e-5)
            assert row["init"] == "orthogonal"
            assert (row["fan_in"], row["fan_out"]) == (
                window * filters,
                window * filters,
            )
            target = 1 / math.sqrt(window * filters)
            np.testing.assert_allclose(row["target_std"], target, rtol=1e-6)
            # Unit columns: mean square exactly 1 / (k·filters).
            np.testing.assert_allclose(np.mean(q**2), target**2, rtol=1e-5)


def test_conv_lstm_auto_uses_activation_per_gate():
    cls, kwargs, input_shape, window = CONV_LSTM[1][1:]
    model = _conv_lstm(cls, kwargs, input_shape, activation="relu")
    report = layer_init.initialize(model, "auto", seed=2)
    expected = {
        "i": keras_winit.gain("sigmoid", method="moment"),
        "f": keras_winit.gain("sigmoid", method="moment"),
        "c": keras_winit.gain("relu", method="moment"),
        "o": keras_winit.gain("sigmoid", method="moment"),
    }
    (path,) = [v.path for v in model.weights if v.path.endswith("/kernel")]
    kernel = _var(model, "/kernel")
    fan_in = window * CONV_LSTM_CHANNELS
    for g, row in enumerate(_gate_rows(report, path)):
        std = expected["ifco"[g]] / math.sqrt(fan_in)
        np.testing.assert_allclose(row["target_std"], std, rtol=1e-6)
        assert row["fan_in"] == fan_in
        block = np.split(kernel, 4, axis=-1)[g]
        dist = stats.truncnorm(-2, 2, scale=std / TRUNC)
        np.testing.assert_allclose(
            block.std(), std, rtol=_std_rtol(dist, block.size)
        )
    # The test tells the gates apart only if the two gains differ.
    assert not math.isclose(expected["c"], expected["i"], rel_tol=0.1)


@pytest.mark.parametrize(
    "cls,kwargs,input_shape,window",
    [c[1:] for c in CONV_LSTM],
    ids=[c[0] for c in CONV_LSTM],
)
def test_conv_lstm_bias(cls, kwargs, input_shape, window):
    filters = CONV_LSTM_FILTERS
    model = _conv_lstm(cls, kwargs, input_shape)
    layer_init.initialize(model, "he_normal", seed=0)
    bias = _var(model, "/bias")
    forget = slice(filters, 2 * filters)
    # Keras' unit_forget_bias: forget gate 1, the others 0.
    np.testing.assert_array_equal(bias[forget], 1.0)
    np.testing.assert_array_equal(
        np.delete(bias, range(filters, 2 * filters)), 0.0
    )
    report = layer_init.initialize(
        model, "he_normal", bias="fan_in_plus_one", seed=0
    )
    fan_in = window * CONV_LSTM_CHANNELS + 1
    sigma = math.sqrt(2.0 / fan_in) / TRUNC  # of the untruncated normal
    bias = _var(model, "/bias")
    assert np.all(np.abs(bias[forget] - 1.0) <= 2 * sigma + 1e-6)
    assert np.all(bias[forget] != 1.0)
    others = np.delete(bias, range(filters, 2 * filters))
    assert np.all(np.abs(others) <= 2 * sigma + 1e-6)
    assert np.count_nonzero(others) == others.size
    kernel_rows = [r for r in report.rows if r["path"].endswith("/kernel")]
    assert {r["fan_in"] for r in kernel_rows} == {fan_in}


def test_conv_lstm_without_unit_forget_bias():
    cls, kwargs, input_shape, _ = CONV_LSTM[1][1:]
    model = _conv_lstm(cls, kwargs, input_shape, unit_forget_bias=False)
    layer_init.initialize(model, "he_normal", seed=0)
    np.testing.assert_array_equal(_var(model, "/bias"), 0.0)


@pytest.mark.parametrize(
    "cls,kwargs,input_shape,window",
    [c[1:] for c in CONV_LSTM],
    ids=[c[0] for c in CONV_LSTM],
)
def test_conv_lstm_torch_scheme(cls, kwargs, input_shape, window):
    # One ConvNd(channels + filters, 4·filters) over concat(x, h).
    fan_in = window * (CONV_LSTM_CHANNELS + CONV_LSTM_FILTERS)
    bound = 1 / math.sqrt(fan_in)
    model = _conv_lstm(cls, kwargs, input_shape)
    report = layer_init.initialize(model, "torch", seed=0)
    assert {r["fan_in"] for r in report.rows} == {fan_in}
    uniform = stats.uniform(loc=-bound, scale=2 * bound)
    for suffix in ("/kernel", "/recurrent_kernel", "/bias"):
        values = _var(model, suffix).ravel()
        assert np.abs(values).max() <= bound
        assert stats.kstest(values, uniform.cdf).pvalue > KS_P
    kernel = _var(model, "/recurrent_kernel").ravel()
    assert np.abs(kernel).max() > 0.95 * bound


def test_conv_lstm_torch_scheme_matches_a_pytorch_conv_lstm():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    filters, channels = CONV_LSTM_FILTERS, CONV_LSTM_CHANNELS
    # The common PyTorch ConvLSTM cell: one convolution over concat(x, h).
    reference = torch.nn.Conv2d(channels + filters, 4 * filters, 3)
    cls, kwargs, input_shape, _ = CONV_LSTM[1][1:]
    model = _conv_lstm(cls, kwargs, input_shape)
    layer_init.initialize(model, "torch", seed=0)
    ours = np.concatenate(
        [_var(model, "/kernel"), _var(model, "/recurrent_kernel")], axis=-2
    ).ravel()
    theirs = reference.weight.detach().numpy().ravel()
    assert ours.size == theirs.size
    assert stats.ks_2samp(ours, theirs).pvalue > KS_P
    np.testing.assert_allclose(
        np.abs(ours).max(), np.abs(theirs).max(), rtol=0.02
    )


def test_conv_lstm_seed_reproducible_and_gates_distinct():
    cls, kwargs, input_shape, _ = CONV_LSTM[1][1:]
    first = _conv_lstm(cls, kwargs, input_shape)
    second = _conv_lstm(cls, kwargs, input_shape)
    layer_init.initialize(first, "glorot_uniform", seed=5)
    layer_init.initialize(second, "glorot_uniform", seed=5)
    for a, b in zip(first.weights, second.weights, strict=True):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        )
    kernel = _var(first, "/kernel")
    layer_init.initialize(second, "glorot_uniform", seed=6)
    assert not np.allclose(_var(second, "/kernel"), kernel)
    for suffix in ("/kernel", "/recurrent_kernel"):
        blocks = np.split(_var(first, suffix), 4, axis=-1)
        for i in range(4):
            for j in range(i + 1, 4):
                assert not np.allclose(blocks[i], blocks[j])


# --- Biases -------------------------------------------------------------


def test_bias_zeros_default_and_lstm_forget_gate():
    model = keras.Sequential(
        [
            keras.Input((3, 8)),
            keras.layers.LSTM(5, return_sequences=True),
            keras.layers.Dense(4, bias_initializer="ones", name="head"),
        ]
    )
    layer_init.initialize(model, "he_normal", seed=0)
    lstm_bias = _var(model, "lstm_cell/bias")
    np.testing.assert_array_equal(lstm_bias[5:10], 1.0)
    np.testing.assert_array_equal(np.delete(lstm_bias, range(5, 10)), 0.0)
    np.testing.assert_array_equal(_var(model, "head/bias"), 0.0)


def test_bias_fan_in_plus_one():
    model = _model(keras.layers.Dense(80), (96,))
    report = layer_init.initialize(
        model, "he_normal", bias="fan_in_plus_one", seed=0
    )
    _check_distribution(_var(model, "kernel"), "he_normal", 97, 80)
    bias = _var(model, "bias")
    sigma = math.sqrt(2.0 / 97) / TRUNC
    assert np.all(np.abs(bias) <= 2 * sigma + 1e-7)
    assert np.count_nonzero(bias) == bias.size
    assert {r["fan_in"] for r in report.rows} == {97}


def test_bias_keep():
    model = _model(keras.layers.Dense(8, bias_initializer="ones"), (4,))
    layer_init.initialize(model, "he_normal", bias="keep", seed=0)
    np.testing.assert_array_equal(_var(model, "bias"), 1.0)


TORCH_CASES = [
    # (id, layer, input shape, PyTorch's fan_in of the kernel)
    ("linear", lambda: keras.layers.Dense(6000), (4,), 4),
    ("conv2d", lambda: keras.layers.Conv2D(400, 3), (5, 5, 2), 18),
    (
        "depthwise",
        lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=8),
        (5, 5, 96),
        9,
    ),
    # PyTorch's ConvTranspose weight is (in, out, kh, kw): fan_in = out·k.
    (
        "conv_transpose",
        lambda: keras.layers.Conv2DTranspose(700, 3),
        (4, 4, 2),
        700 * 9,
    ),
]


@pytest.mark.parametrize(
    "factory,input_shape,torch_fan_in",
    [c[1:] for c in TORCH_CASES],
    ids=[c[0] for c in TORCH_CASES],
)
def test_torch_scheme_bounds(factory, input_shape, torch_fan_in):
    model = _model(factory(), input_shape)
    layer_init.initialize(model, "torch", seed=0)
    bound = 1.0 / math.sqrt(torch_fan_in)
    kernel = _var(model, "kernel").ravel()
    bias = _var(model, "bias").ravel()
    uniform = stats.uniform(loc=-bound, scale=2 * bound)
    assert np.abs(kernel).max() <= bound
    assert np.abs(kernel).max() > 0.99 * bound
    assert stats.kstest(kernel, uniform.cdf).pvalue > KS_P
    assert np.abs(bias).max() <= bound
    if bias.size >= 400:
        assert stats.kstest(bias, uniform.cdf).pvalue > KS_P


def test_torch_scheme_recurrent_and_embedding():
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Embedding(300, 32),
            keras.layers.GRU(48),
        ]
    )
    layer_init.initialize(model, "torch", seed=0)
    table = _var(model, "embeddings").ravel()
    assert stats.kstest(table, stats.norm().cdf).pvalue > KS_P
    bound = 1.0 / math.sqrt(48)
    for suffix in ("/kernel", "recurrent_kernel", "/bias"):
        values = _var(model, suffix).ravel()
        assert np.abs(values).max() <= bound
        uniform = stats.uniform(loc=-bound, scale=2 * bound)
        assert stats.kstest(values, uniform.cdf).pvalue > KS_P


def test_bias_torch_with_another_scheme():
    model = _model(keras.layers.Dense(6000), (4,))
    layer_init.initialize(model, "he_normal", bias="torch", seed=0)
    bias = _var(model, "bias")
    uniform = stats.uniform(loc=-0.5, scale=1.0)
    assert stats.kstest(bias, uniform.cdf).pvalue > KS_P


@pytest.mark.parametrize("kind", ["linear", "conv2d"], ids=["linear", "conv2d"])
def test_torch_scheme_matches_pytorch(kind):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    if kind == "linear":
        reference = torch.nn.Linear(96, 80)
        layer, input_shape = keras.layers.Dense(80), (96,)
    else:
        reference = torch.nn.Conv2d(24, 32, 3)
        layer, input_shape = keras.layers.Conv2D(32, 3), (6, 6, 24)
    model = _model(layer, input_shape)
    layer_init.initialize(model, "torch", seed=0)
    ours = _var(model, "kernel").ravel()
    theirs = reference.weight.detach().numpy().ravel()
    assert stats.ks_2samp(ours, theirs).pvalue > KS_P
    np.testing.assert_allclose(ours.std(), theirs.std(), rtol=STD_RTOL)
    np.testing.assert_allclose(
        np.abs(ours).max(), np.abs(theirs).max(), rtol=0.01
    )
    bias_ours = _var(model, "bias")
    bias_theirs = reference.bias.detach().numpy()
    bound = 1 / math.sqrt(theirs.size / bias_theirs.size)
    assert np.abs(bias_ours).max() <= bound
    assert np.abs(bias_theirs).max() <= bound


# --- Model structure, kept layers, seeds, dtypes --------------------------


class _Block(keras.layers.Layer):
    """A custom layer that wraps a known layer (and owns no weight)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = keras.layers.Dense(64, activation="relu")

    def call(self, x):
        return self.inner(x)


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.stack = keras.Sequential(
            [keras.layers.Dense(96), keras.layers.Dropout(0.1)]
        )
        self.block = _Block()
        self.norm = keras.layers.BatchNormalization()

    def call(self, x):
        return self.norm(self.block(self.stack(x)))


def test_nested_models_and_kept_layers():
    model = _Subclassed()
    model(np.zeros((2, 80), "float32"))
    gamma = model.norm.gamma
    gamma.assign(np.full(gamma.shape, 2.0, "float32"))
    report = layer_init.initialize(model, "he_normal", seed=0)
    _check_distribution(
        keras.ops.convert_to_numpy(model.stack.layers[0].kernel),
        "he_normal",
        80,
        96,
    )
    _check_distribution(
        keras.ops.convert_to_numpy(model.block.inner.kernel),
        "he_normal",
        96,
        64,
    )
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(gamma), 2.0)
    kept = {r["path"] for r in report.rows if r["init"] == "kept"}
    assert kept == {v.path for v in model.norm.weights}
    assert len(report.rows) == len(model.weights)
    text = str(report)
    assert "measured_std" in text and "kept" in text
    assert text.count("\n") == len(report.rows) + 1


class T5LayerNorm(keras.layers.Layer):
    """Another package's RMS norm, known by its class name only."""

    def build(self, input_shape):
        self.weight = self.add_weight((input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.weight


class AdaptiveNorm(keras.layers.Layer):
    """A "norm" by its name that holds a kernel layer: opened, not kept."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.modulation = keras.layers.Dense(8, name="modulation")

    def call(self, x):
        return x * self.modulation(x)


class RelativeEmbedding(keras.layers.Layer):
    """A learned `(positions, dim)` table of another package."""

    def build(self, input_shape):
        self.table = self.add_weight((5, input_shape[-1]), initializer="ones")

    def call(self, x):
        return x + self.table


@pytest.mark.parametrize(
    "layer, kind",
    [
        (T5LayerNorm, "normalization"),
        (keras.layers.PReLU, "activation"),
        (RelativeEmbedding, "embedding"),
        (AdaptiveNorm, None),
    ],
    ids=["by_name_norm", "prelu", "embedding_table", "norm_with_a_kernel"],
)
def test_layer_kinds_from_the_walker(layer, kind):
    inputs = keras.Input((5, 8))
    model = keras.Model(inputs, layer(name="x")(keras.layers.Dense(8)(inputs)))
    before = _values(model)
    report = layer_init.initialize(model, "he_normal", seed=0)  # no warning
    rows = [r for r in report.rows if r["path"].startswith("x/")]
    assert rows
    for row in rows:
        if kind is None:  # the Dense inside is drawn
            assert row["init"] == "he_normal" or row["kind"] == "bias"
            assert row["path"].startswith("x/modulation/")
        else:
            assert (row["init"], row["kind"]) == ("kept", kind)
            np.testing.assert_array_equal(
                _values(model)[row["path"]], before[row["path"]]
            )


def _two_dense():
    return keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(64), keras.layers.Dense(64)]
    )


def test_same_seed_same_weights_and_no_shared_tensors():
    first, second = _two_dense(), _two_dense()
    layer_init.initialize(first, "he_normal", seed=7)
    layer_init.initialize(second, "he_normal", seed=7)
    for a, b in zip(first.weights, second.weights, strict=True):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        )
    k1, k2 = (keras.ops.convert_to_numpy(w) for w in first.weights[::2])
    assert not np.allclose(k1, k2)
    third = _two_dense()
    layer_init.initialize(third, "he_normal", seed=8)
    assert not np.allclose(keras.ops.convert_to_numpy(third.weights[0]), k1)


def test_gates_do_not_share_tensors():
    model = _model(keras.layers.LSTM(16), (3, 16))
    layer_init.initialize(model, "he_normal", seed=0)
    kernel = _var(model, "/kernel")
    recurrent = _var(model, "recurrent_kernel")
    for values in (kernel, recurrent):
        blocks = np.split(values, 4, axis=-1)
        for i in range(4):
            for j in range(i + 1, 4):
                assert not np.allclose(blocks[i], blocks[j])


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_dtype_is_kept(dtype):
    model = _model(keras.layers.Dense(80, dtype=dtype), (96,))
    layer_init.initialize(model, "he_normal", seed=0)
    kernel = model.layers[0].kernel
    assert keras.backend.standardize_dtype(kernel.dtype) == dtype
    _check_distribution(
        keras.ops.convert_to_numpy(kernel).astype(np.float64),
        "he_normal",
        96,
        80,
    )


def test_save_load_and_train(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.DepthwiseConv2D(3, depth_multiplier=2),
            keras.layers.Conv2DTranspose(4, 3, activation="relu"),
            keras.layers.Reshape((9, 16)),
            keras.layers.LSTM(6),
            keras.layers.Dense(2),
        ]
    )
    layer_init.initialize(model, "auto", seed=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6, 6, 3)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    loaded.compile(optimizer="adam", loss="mse", run_eagerly=True)
    before = [keras.ops.convert_to_numpy(w) for w in loaded.weights]
    history = loaded.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert all(np.isfinite(history.history["loss"]))
    after = [keras.ops.convert_to_numpy(w) for w in loaded.weights]
    assert not np.allclose(before[0], after[0])


# --- Unknown layers and errors ------------------------------------------


class _Scale(keras.layers.Layer):
    def build(self, input_shape):
        self.scale = self.add_weight(
            shape=(input_shape[-1],), initializer="ones", name="scale"
        )

    def call(self, x):
        return x * self.scale


def _with_unknown():
    return keras.Sequential(
        [keras.Input((4,)), _Scale(name="my_scale"), keras.layers.Dense(3)]
    )


def test_unknown_layer_warns_and_is_left_alone():
    model = _with_unknown()
    with pytest.warns(layer_init.UnknownLayerWarning, match="my_scale"):
        report = layer_init.initialize(model, "he_normal", seed=0)
    np.testing.assert_array_equal(_var(model, "scale"), 1.0)
    assert [r["layer"] for r in report.unknown] == ["my_scale"]
    assert "unknown" in str(report)


class _MinimalCell(keras.layers.Layer):
    """A custom RNN cell: its weights are of no kind `initialize` knows."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.state_size = units

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(input_shape[-1], self.units), name="kernel"
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, self.units), name="recurrent_kernel"
        )

    def call(self, inputs, states):
        h = keras.ops.matmul(inputs, self.kernel) + keras.ops.matmul(
            states[0], self.recurrent_kernel
        )
        return h, [h]


def test_unknown_cell_is_reported():
    model = _model(keras.layers.RNN(_MinimalCell(2), name="custom_rnn"), (2, 3))
    with pytest.warns(layer_init.UnknownLayerWarning, match="custom_rnn"):
        report = layer_init.initialize(model, "he_normal", seed=0)
    assert len(report.unknown) == 2


def test_strict_raises_naming_the_layer():
    with pytest.raises(ValueError, match="my_scale"):
        layer_init.initialize(_with_unknown(), "he_normal", strict=True)


def test_unbuilt_model():
    model = keras.Sequential([keras.layers.Dense(3)], name="not_built_yet")
    with pytest.raises(ValueError, match="not_built_yet.*not built"):
        layer_init.initialize(model)


def test_unbuilt_sublayer():
    # Keras marks a subclassed model built by `build()` (with a warning)
    # even though its sublayers have no weights yet.
    model = _Subclassed()
    with pytest.warns(UserWarning, match="unbuilt state"):
        model.build((None, 80))
    with pytest.raises(ValueError, match="'sequential.*' .* not built"):
        layer_init.initialize(model)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"scheme": "he_nromal"}, "scheme"),
        ({"scheme": keras.initializers.Orthogonal()}, "scheme"),
        ({"scheme": 3}, "scheme"),
        ({"bias": "ones"}, "bias"),
        ({"scheme": "torch", "bias": "fan_in_plus_one"}, "bias"),
        ({"seed": 1.5}, "seed"),
        ({"scheme": "auto", "gain_method": "magic"}, "gain_method"),
    ],
    ids=[
        "unknown_name",
        "not_variance_scaling",
        "not_a_scheme",
        "bias",
        "torch_plus_one",
        "seed",
        "gain_method",
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        layer_init.initialize(_two_dense(), **kwargs)


def test_not_a_model():
    with pytest.raises(ValueError, match="model"):
        layer_init.initialize("model")


def test_auto_with_unusable_activation_names_the_layer():
    model = _model(
        keras.layers.Dense(
            3,
            activation=lambda x: keras.ops.sum(x, keepdims=True),
            name="lambda_dense",
        ),
        (4,),
    )
    with pytest.raises(ValueError, match="lambda_dense.*not elementwise"):
        layer_init.initialize(model, "auto")


# --- Callable activations, embeddings, frozen layers, arguments ----------


def _tanh_gelu(x):
    """A plain function, as keras_hub's `gelu_approximate`."""
    return keras.activations.gelu(x, approximate=True)


@pytest.mark.parametrize("method", ["moment", "kumar"])
def test_auto_computes_the_gain_of_a_callable(method):
    model = _model(
        keras.layers.Dense(3000, activation=_tanh_gelu, name="ffn"), (200,)
    )
    report = layer_init.initialize(model, "auto", gain_method=method, seed=0)
    (row,) = [r for r in report.rows if r["kind"] == "kernel"]
    g = keras_winit.gain(_tanh_gelu, method=method)
    assert row["init"] == f"auto(_tanh_gelu, g={g:.3g})"
    np.testing.assert_allclose(row["target_std"], g / math.sqrt(200))
    values = _var(model, "kernel").ravel()
    sigma = g / math.sqrt(200) / TRUNC
    truncated = stats.truncnorm(-2, 2, scale=sigma)
    assert stats.kstest(values, truncated.cdf).pvalue > KS_P


def test_auto_callable_with_torch_gains_names_the_layer():
    model = _model(
        keras.layers.Dense(3, activation=_tanh_gelu, name="ffn"), (4,)
    )
    with pytest.raises(ValueError, match="'ffn'.*gain_method='torch'"):
        layer_init.initialize(model, "auto", gain_method="torch")


def _embedding_model():
    inputs = keras.Input((5,), dtype="int32")
    x = keras.layers.Embedding(
        400,
        64,
        embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
        name="tokens",
    )(inputs)
    return keras.Model(inputs, keras.layers.Dense(8, name="proj")(x))


@pytest.mark.parametrize("scheme", ["he_normal", "auto", "glorot_uniform"])
def test_embeddings_keep_the_models_initializer(scheme):
    model = _embedding_model()
    before = _var(model, "embeddings")
    report = layer_init.initialize(model, scheme, seed=0)
    np.testing.assert_array_equal(_var(model, "embeddings"), before)
    (row,) = [r for r in report.rows if r["layer"] == "tokens"]
    assert row["init"] == "kept"
    assert row["kind"] == "embedding, own RandomNormal(stddev=0.02)"
    np.testing.assert_allclose(row["measured_std"], before.std(), rtol=1e-5)
    assert "kept (embedding, own RandomNormal" in str(report)


def test_embeddings_stddev():
    model = _embedding_model()
    report = layer_init.initialize(
        model, "he_normal", embeddings_stddev=0.5, seed=0
    )
    values = _var(model, "embeddings").ravel()
    assert stats.kstest(values, stats.norm(scale=0.5).cdf).pvalue > KS_P
    (row,) = [r for r in report.rows if r["layer"] == "tokens"]
    assert row["init"] == "normal(stddev=0.5)" and row["target_std"] == 0.5
    # Other weights follow the scheme as before.
    assert [r["init"] for r in report.rows if r["layer"] == "proj"] == [
        "he_normal",
        "zeros",
    ]


def _frozen_model():
    model = _two_dense()
    model.layers[0].trainable = False
    return model


def test_frozen_layers_are_kept_and_reported():
    model = _frozen_model()
    frozen = [keras.ops.convert_to_numpy(v) for v in model.layers[0].weights]
    other = keras.ops.convert_to_numpy(model.layers[1].kernel)
    report = layer_init.initialize(model, "he_normal", seed=0)
    for variable, before in zip(model.layers[0].weights, frozen, strict=True):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(variable), before
        )
    assert not np.array_equal(
        keras.ops.convert_to_numpy(model.layers[1].kernel), other
    )
    kinds = [r["kind"] for r in report.rows]
    assert kinds == ["frozen", "frozen", "kernel", "bias"]
    assert "kept (frozen)" in str(report)


def test_include_frozen_initializes_them():
    model = _frozen_model()
    before = keras.ops.convert_to_numpy(model.layers[0].kernel)
    report = layer_init.initialize(
        model, "he_normal", include_frozen=True, seed=0
    )
    assert not np.array_equal(
        keras.ops.convert_to_numpy(model.layers[0].kernel), before
    )
    assert report.rows[0]["init"] == "he_normal"
    assert not model.layers[0].trainable  # still frozen


@pytest.mark.parametrize(
    "scheme,expected",
    [
        ("HE_NORMAL", "he_normal"),
        ("He_Normal", "he_normal"),
        ("HeNormal", "he_normal"),
        ("GLOROT_UNIFORM", "glorot_uniform"),
        ("AUTO", "auto"),
        ("Torch", "torch"),
    ],
)
def test_scheme_names_are_case_insensitive(scheme, expected):
    model = _two_dense()
    report = layer_init.initialize(model, scheme, seed=0)
    assert report.rows[0]["init"].startswith(
        {"auto": "auto(", "torch": "torch U"}.get(expected, expected)
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"strict": "yes"}, "`strict`.*strict='yes'"),
        ({"strict": 1}, "`strict`.*strict=1"),
        ({"include_frozen": None}, "`include_frozen`.*include_frozen=None"),
        ({"residual": "gtp2"}, "`residual`.*'gtp2'"),
        ({"residual": None}, "`residual`.*None"),
        ({"embeddings_stddev": 0}, "`embeddings_stddev`.*=0"),
        ({"embeddings_stddev": -0.1}, "`embeddings_stddev`.*=-0.1"),
        ({"embeddings_stddev": float("nan")}, "`embeddings_stddev`.*nan"),
        ({"embeddings_stddev": "0.02"}, "`embeddings_stddev`.*'0.02'"),
        ({"embeddings_stddev": True}, "`embeddings_stddev`.*True"),
        ({"bias": ["zeros"]}, "`bias`.*\\['zeros'\\]"),
        ({"gain_method": None}, "`gain_method`.*None"),
        ({"seed": True}, "`seed`.*True"),
    ],
)
def test_more_bad_arguments(kwargs, match):
    model = _two_dense()
    before = keras.ops.convert_to_numpy(model.layers[0].kernel)
    with pytest.raises(ValueError, match=match):
        layer_init.initialize(model, **kwargs)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.layers[0].kernel), before
    )


def test_strict_changes_nothing():
    model = _with_unknown()
    before = [keras.ops.convert_to_numpy(v) for v in model.weights]
    with pytest.raises(ValueError, match="(?s)my_scale.*strict=True"):
        layer_init.initialize(model, "he_normal", strict=True)
    for variable, values in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(variable), values
        )


def test_unknown_layers_are_listed_layer_by_layer():
    model = keras.Sequential(
        [
            keras.Input((4,)),
            _Scale(name="scale_a"),
            keras.layers.Dense(4),
            _Scale(name="scale_b"),
        ]
    )
    with pytest.warns(layer_init.UnknownLayerWarning) as caught:
        report = layer_init.initialize(model, "he_normal", seed=0)
    (warning,) = [
        w for w in caught if w.category is layer_init.UnknownLayerWarning
    ]
    text = str(warning.message)
    assert "2 trainable weight(s)" in text
    assert "layer 'scale_a' (_Scale)" in text
    assert "layer 'scale_b' (_Scale)" in text
    assert [r["layer"] for r in report.unknown] == ["scale_a", "scale_b"]


# --- Real models (tests/_real_models.py) ---------------------------------

from tests import _real_models  # noqa: E402

_BUILT = {}


def _real(name):
    """Each real model is built once per test module (they are re-drawn)."""
    if name not in _BUILT:
        _BUILT[name] = _real_models.build(name)[0]
    return _BUILT[name]


# The kinds of weights `initialize` keeps as the model drew them.
_KEPT_KINDS = {
    "normalization",
    "non-trainable",
    "layer scale",
    "token",
    "embedding",
    "position embedding",
}


# Which kinds a model's weights are is decided without the backend; the
# draws are not. TensorFlow runs all nine models. Under JAX the first
# `initialize` of a model compiles every sampler op for each distinct
# variable shape (MobileNetV2: ~50 s on 2 busy cores), and PyTorch's CPU
# sampler makes 5-8 M values/s (ConvNeXtTiny's 28 M parameters: 12 s), so
# they run a subset that still has every kind: ResNet50V2 (its compiled
# shapes are reused by the residual tests below) and the keras_hub
# backbones (embeddings, position embeddings, callable activations; ViT's
# class token on PyTorch).
_AUTO_MODELS = {
    "jax": ("ResNet50V2", "GPT2Backbone", "BertBackbone"),
    "torch": ("MobileNetV2", "ResNet50V2") + _real_models.HUB_BACKBONES,
}.get(keras.backend.backend(), _real_models.ALL)


@pytest.mark.parametrize("name", _AUTO_MODELS)
def test_real_models_auto_leaves_nothing_unknown(name):
    model = _real(name)
    variables = {v.path: v for v in model.weights}
    kept = {
        path: keras.ops.convert_to_numpy(v)
        for path, v in variables.items()
        if "embedding" in path or "gamma" in path or "token" in path
    }
    report = layer_init.initialize(model, "auto", seed=0)  # no warning
    assert report.unknown == []
    assert len({r["path"] for r in report.rows}) == len(model.weights)
    for row in report.rows:
        kind = row["kind"].split(",")[0]
        if row["init"] == "kept":
            assert kind in _KEPT_KINDS, row
        else:
            assert kind in ("kernel", "bias", "recurrent"), row
        if kind in _KEPT_KINDS and row["path"] in kept:
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(variables[row["path"]]),
                kept[row["path"]],
            )
    kinds = {r["kind"].split(",")[0] for r in report.rows}
    if name == "ConvNeXtTiny":
        assert "layer scale" in kinds
    if name in _real_models.HUB_BACKBONES:
        assert {"embedding", "position embedding"} & kinds
        assert any(r["init"].startswith("auto(") for r in report.rows)
    if name == "ViTBackbone":
        assert "token" in kinds


def test_gpt2_token_embedding_is_not_drawn_with_a_fan_rule():
    model = _real("GPT2Backbone")
    report = layer_init.initialize(model, "he_normal", seed=0)
    (row,) = [r for r in report.rows if r["path"].startswith("token_emb")]
    assert row["init"] == "kept" and row["measured_std"] < 0.05
    report = layer_init.initialize(
        model, "he_normal", seed=0, embeddings_stddev=0.02
    )
    rows = [r for r in report.rows if "embedding" in r["kind"]]
    assert len(rows) == 2  # token and position tables
    for row in rows:
        assert row["init"] == "normal(stddev=0.02)"
        np.testing.assert_allclose(row["measured_std"], 0.02, rtol=0.05)
    auto = layer_init.initialize(model, "auto", seed=0)
    (row,) = [r for r in auto.rows if "intermediate" in r["path"]][:1]
    assert row["init"].startswith("auto(gelu_approximate, g=")


# --- Residual rules -------------------------------------------------------


def _resnet(blocks=4, norm=False, width=32):
    """A Functional residual MLP: stem, `blocks` × (h + F(h)), head.

    F = Dense(relu) → Dense (→ BatchNorm when `norm`, post-norm as in
    Goyal et al.'s ResNets). Odd blocks add with `+`, even ones with `Add`.
    """
    inputs = keras.Input((16,))
    h = keras.layers.Dense(width, name="stem")(inputs)
    for i in range(blocks):
        f = keras.layers.Dense(width, activation="relu", name=f"b{i}_1")(h)
        f = keras.layers.Dense(width, name=f"b{i}_2")(f)
        if norm:
            f = keras.layers.BatchNormalization(name=f"b{i}_bn")(f)
        h = keras.layers.Add(name=f"add{i}")([h, f]) if i % 2 == 0 else h + f
    outputs = keras.layers.Dense(10, name="head")(h)
    return keras.Model(inputs, outputs)


def _values(model):
    return {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}


def _check_factors(model, rule, expected, **kwargs):
    """Values with `rule` == values without it × the expected factor.

    `expected(path)` is the factor of a variable (1 for untouched ones).
    The same seed draws the same values, so the comparison is exact.
    """
    layer_init.initialize(model, "he_normal", seed=5, **kwargs)
    plain = _values(model)
    report = layer_init.initialize(
        model, "he_normal", seed=5, residual=rule, **kwargs
    )
    scaled = _values(model)
    touched = set()
    for path, values in plain.items():
        factor = expected(path)
        if factor != 1:
            touched.add(path)
        np.testing.assert_allclose(
            scaled[path], values * factor, rtol=1e-6, err_msg=path
        )
    assert {r["path"] for r in report.residual_rows} == touched
    assert all(r["applied"] for r in report.residual_rows)
    return report


@pytest.mark.parametrize("norm", [False, True], ids=["plain", "bn"])
@pytest.mark.parametrize("rule", ["gpt2", "fixup", "zero"])
def test_residual_rules_on_a_functional_resnet(rule, norm):
    model = _resnet(blocks=4, norm=norm)

    def expected(path):
        layer, name = path.split("/")[-2:]
        if not layer.startswith("b"):
            return 1
        last = layer.endswith("_2") and name == "kernel"
        if rule == "gpt2":
            return 0.5 if last else 1  # 1 / sqrt(4 branches)
        if rule == "fixup":
            if last:
                return 0
            # m = 2: L^(-1/(2m-2)) = 4^(-1/2)
            return 0.5 if layer.endswith("_1") and name == "kernel" else 1
        if norm:
            return 0 if name == "gamma" else 1
        return 0 if last else 1

    report = _check_factors(model, rule, expected)
    assert len(report.branches) == 4
    assert report.branches[0] == "add0" and report.branches[2] == "add2"
    assert report.residual == rule
    text = str(report)
    assert f"residual={rule!r}: 4 branches" in text
    if rule == "zero":
        whys = {r["why"] for r in report.residual_rows}
        assert whys == (
            {"last normalization's gamma"}
            if norm
            else {"no normalization with a gamma: last kernel"}
        )


def test_residual_branch_structure():
    model = _resnet(blocks=2, norm=True)
    branches = layer_init.residual_branches(model)
    assert [b.name for b in branches][0] == "add0"
    first = branches[0]
    assert [layer.name for layer in first.layers] == ["b0_1", "b0_2", "b0_bn"]
    assert [[s.name for s in stage] for stage in first.stages] == [
        ["b0_1"],
        ["b0_2"],
    ]
    assert first.last_kernel.name == "b0_2"
    assert first.last_norm.name == "b0_bn"
    assert first.depth == 2


def test_projection_shortcut_is_not_the_branch():
    inputs = keras.Input((16,))
    shortcut = keras.layers.Dense(8, name="projection")(inputs)
    f = keras.layers.Dense(8, activation="relu", name="f1")(inputs)
    f = keras.layers.Dense(8, name="f2")(f)
    model = keras.Model(inputs, keras.layers.Add(name="out")([shortcut, f]))
    (branch,) = layer_init.residual_branches(model)
    assert [layer.name for layer in branch.layers] == ["f1", "f2"]


def test_residual_without_branches_is_an_error():
    model = _two_dense()
    before = keras.ops.convert_to_numpy(model.layers[0].kernel)
    with pytest.raises(ValueError, match="`residual='gpt2'`.*has none"):
        layer_init.initialize(model, residual="gpt2")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.layers[0].kernel), before
    )


def test_residual_rule_skips_frozen_layers():
    model = _resnet(blocks=2)
    model.get_layer("b0_2").trainable = False
    before = keras.ops.convert_to_numpy(model.get_layer("b0_2").kernel)
    report = layer_init.initialize(model, "he_normal", residual="fixup")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.get_layer("b0_2").kernel), before
    )
    applied = {r["layer"]: r["applied"] for r in report.residual_rows}
    assert applied["b0_2"] is False and applied["b1_2"] is True


@pytest.mark.parametrize("rule", ["gpt2", "fixup", "zero"])
@pytest.mark.parametrize("name", ["GPT2Backbone", "BertBackbone"])
def test_residual_rules_on_keras_hub_transformers(name, rule):
    model = _real(name)  # 2 blocks: 4 branches
    pre_ln = name == "GPT2Backbone"

    def expected(path):
        if not path.startswith("transformer_layer_"):
            return 1
        kernel = path.endswith("/kernel")
        last = kernel and (
            "attention_output" in path or "feedforward_output" in path
        )
        if rule == "gpt2":
            return 0.5 if last else 1
        if rule == "fixup":
            if last:
                return 0
            inner = ("/query/", "/key/", "/value/", "intermediate_dense")
            return 0.5 if kernel and any(s in path for s in inner) else 1
        if pre_ln:  # the branch's LayerNorm (its first layer)
            return 0 if path.endswith("layer_norm/gamma") else 1
        return 0 if last else 1  # post-LN: no norm inside the branch

    report = _check_factors(model, rule, expected)
    assert report.branches == [
        "transformer_layer_0/self_attention",
        "transformer_layer_0/feedforward",
        "transformer_layer_1/self_attention",
        "transformer_layer_1/feedforward",
    ]


def test_residual_rules_on_resnet50v2():
    model = _real("ResNet50V2")
    layer_init.initialize(model, "he_normal", seed=5)
    plain = _values(model)
    # "gpt2" applied: 16 blocks; conv*_block*_3_conv ends each branch.
    report = layer_init.initialize(model, "he_normal", seed=5, residual="gpt2")
    assert len(report.branches) == 16
    scaled = _values(model)
    touched = set()
    for path, values in plain.items():
        layer, name = path.split("/")[-2:]
        last = layer.endswith("_3_conv") and name == "kernel"
        if last:
            touched.add(path)
        np.testing.assert_allclose(
            scaled[path], values * (0.25 if last else 1), rtol=1e-6
        )
    assert {r["path"] for r in report.residual_rows} == touched
    assert len(touched) == 16
    # The other rules' plans (applying a plan is tested above, on the
    # Functional ResNet; each application re-draws 25 M values).
    _, rows, _ = layer_init._residual_plan(model, "zero")
    # Pre-activation blocks: each branch's last BN is *_2_bn.
    assert {(r["layer"][-5:], r["path"][-5:], r["factor"]) for r in rows} == {
        ("_2_bn", "gamma", 0.0)
    }
    assert len(rows) == 16
    _, rows, _ = layer_init._residual_plan(model, "fixup")
    factors = {r["layer"][-7:]: r["factor"] for r in rows}
    assert factors == {
        "_1_conv": 16**-0.25,
        "_2_conv": 16**-0.25,
        "_3_conv": 0.0,
    }
    assert len(rows) == 48


class _ResidualBlock(keras.layers.Layer):
    """`x + dense2(relu(dense1(norm(x))))`: the `+` is in `call`, no graph."""

    def __init__(self, width, norm=False, **kwargs):
        super().__init__(**kwargs)
        self.norm = (
            keras.layers.LayerNormalization(name="norm") if norm else None
        )
        self.dense1 = keras.layers.Dense(width, name="dense1")
        self.dense2 = keras.layers.Dense(width, name="dense2")

    def call(self, x):
        h = self.norm(x) if self.norm is not None else x
        return x + self.dense2(keras.ops.relu(self.dense1(h)))


class _ResidualMLP(keras.Model):
    """A subclassed residual MLP: stem, `blocks` × `_ResidualBlock`, head."""

    def __init__(self, blocks=4, width=16, norm=False):
        super().__init__(name="net")
        self.stem = keras.layers.Dense(width, name="stem")
        self.blocks = [
            _ResidualBlock(width, norm, name=f"block{i}") for i in range(blocks)
        ]
        self.head = keras.layers.Dense(3, name="head")

    def call(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _residual_mlp(**kwargs):
    model = _ResidualMLP(**kwargs)
    model(np.zeros((2, 8), "float32"))
    return model


@pytest.mark.parametrize(
    "rule, norm",
    [("gpt2", False), ("fixup", False), ("zero", False), ("zero", True)],
)
def test_residual_rules_on_a_subclassed_model(rule, norm):
    model = _residual_mlp(norm=norm)

    def expected(path):
        layer, name = path.split("/")[-2:]
        if name != ("gamma" if rule == "zero" and norm else "kernel"):
            return 1
        if rule == "gpt2":
            return 0.5 if layer == "dense2" else 1  # 1 / sqrt(4 branches)
        if rule == "fixup":  # m = 2: L^(-1/(2m-2)) = 4^(-1/2)
            return {"dense1": 0.5, "dense2": 0.0}.get(layer, 1)
        return 0 if layer == ("norm" if norm else "dense2") else 1

    report = _check_factors(model, rule, expected)
    assert report.branches == [f"net/block{i}" for i in range(4)]


@pytest.mark.parametrize("norm", [False, True], ids=["plain", "pre_ln"])
def test_residual_branch_structure_of_a_subclassed_model(norm):
    model = _residual_mlp(blocks=2, norm=norm)
    branches = layer_init.residual_branches(model)
    assert [b.name for b in branches] == ["net/block0", "net/block1"]
    first = branches[0]
    assert first.block is model.blocks[0]
    names = ["norm", "dense1", "dense2"] if norm else ["dense1", "dense2"]
    assert [layer.name for layer in first.layers] == names
    assert [[s.name for s in stage] for stage in first.stages] == [
        ["dense1"],
        ["dense2"],
    ]
    assert first.last_kernel is model.blocks[0].dense2
    assert first.last_norm is (model.blocks[0].norm if norm else None)


class _TwoBranches(keras.layers.Layer):
    """A transformer-like block written by hand: attention, then an MLP."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.attention = keras.layers.MultiHeadAttention(2, 4, name="mha")
        self.up = keras.layers.Dense(16, activation="relu", name="up")
        self.down = keras.layers.Dense(8, name="down")

    def call(self, x):
        x = x + self.attention(x, x)
        return x + self.down(self.up(x))


class _Transformer(keras.Model):
    def __init__(self):
        super().__init__(name="tf")
        self.embed = keras.layers.Dense(8, name="embed")
        self.block = _TwoBranches(name="block")

    def call(self, x):
        return self.block(self.embed(x))


def test_residual_branches_of_a_subclassed_block_with_attention():
    model = _Transformer()
    model(np.zeros((2, 5, 3), "float32"))
    attention, mlp = layer_init.residual_branches(model)
    # Two adds in one layer's `call`: named after it, numbered.
    assert [attention.name, mlp.name] == [
        "tf/block/residual_0",
        "tf/block/residual_1",
    ]
    assert attention.layers == [model.block.attention]
    # Query, key and value are one stage, the output projection the next.
    assert [[p.name for p in s] for s in attention.stages] == [
        ["query", "key", "value"],
        ["attention_output"],
    ]
    assert [layer.name for layer in mlp.layers] == ["up", "down"]


class _TwoInputs(keras.Model):
    """A residual block scaled by a second call argument."""

    def __init__(self):
        super().__init__()
        self.block = _ResidualBlock(8)

    def call(self, x, scale):
        return self.block(x) * scale


def test_residual_search_that_cannot_call_the_model_is_an_error():
    model = _TwoInputs()
    model(np.zeros((2, 8), "float32"), np.ones((2, 8), "float32"))
    before = _values(model)
    call = keras.layers.Layer.__call__
    # No batch to call it on (two call arguments), or, where Keras kept no
    # build shape (TensorFlow, JAX), a call with one argument that fails.
    with pytest.raises(
        ValueError, match=r"`residual='gpt2'`.*could not be looked for"
    ):
        layer_init.initialize(model, residual="gpt2")
    assert keras.layers.Layer.__call__ is call
    for path, values in _values(model).items():
        np.testing.assert_array_equal(values, before[path])


class _InlineResidual(keras.Model):
    """`x = x + dense2(relu(dense1(x)))` in the model's own `call`."""

    def __init__(self, relu_op, stem):
        super().__init__(name="inline")
        self.relu_op = relu_op
        self.stem = keras.layers.Dense(16, name="stem") if stem else None
        activation = None if relu_op else "relu"
        self.dense1 = [
            keras.layers.Dense(16, activation=activation) for _ in range(3)
        ]
        self.dense2 = [keras.layers.Dense(16) for _ in range(3)]

    def call(self, x):
        if self.stem is not None:
            x = self.stem(x)
        for dense1, dense2 in zip(self.dense1, self.dense2, strict=True):
            h = dense1(x)
            x = x + dense2(keras.ops.relu(h) if self.relu_op else h)
        return x


class _OpBeforeBlocks(keras.Model):
    """An op (`relu`) makes the first block's skip input."""

    def __init__(self):
        super().__init__(name="op_first")
        self.stem = keras.layers.Dense(16, name="stem")
        self.blocks = [_ResidualBlock(16, name=f"block{i}") for i in range(3)]

    def call(self, x):
        x = keras.ops.relu(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return x


def test_residual_adds_in_the_models_own_call():
    # Only layer calls between the adds: all three found, the first on
    # the model's input, the last the model's output.
    model = _InlineResidual(relu_op=False, stem=False)
    model(np.zeros((2, 16), "float32"))
    branches = layer_init.residual_branches(model)
    assert [b.name for b in branches] == [
        f"inline/residual_{i}" for i in range(3)
    ]
    assert [b.last_kernel for b in branches] == model.dense2


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: _InlineResidual(relu_op=True, stem=False), "its own `call`"),
        (_OpBeforeBlocks, "only some calls.*'op_first/block0': 0"),
    ],
    ids=["ops_between_adds", "op_before_blocks"],
)
def test_residual_adds_the_walk_may_miss_are_refused(factory, match):
    # The walker would find only some of the three branches: an error,
    # not a rule with a wrong number of branches.
    model = factory()
    model(np.zeros((2, 16), "float32"))
    before = _values(model)
    with pytest.raises(ValueError, match=match):
        layer_init.residual_branches(model)
    with pytest.raises(ValueError, match="`residual='gpt2'`.*" + match):
        layer_init.initialize(model, residual="gpt2")
    for path, values in _values(model).items():
        np.testing.assert_array_equal(values, before[path])


def test_residual_on_a_subclassed_model_without_branches_is_an_error():
    model = _Subclassed()
    model(np.zeros((2, 80), "float32"))
    with pytest.raises(ValueError, match="`residual='zero'`.*has none"):
        layer_init.initialize(model, residual="zero")


# --- Property: every argument works or is named in a ValueError ----------

from hypothesis import given  # noqa: E402
from hypothesis import settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# (valid values, invalid values) per argument, on `_resnet(2)`.
_ARGUMENTS = {
    "scheme": (
        ["he_normal", "GLOROT_UNIFORM", "LecunNormal", "auto", "Torch"],
        ["he_nromal", 3, None, "", keras.initializers.Orthogonal()],
    ),
    "bias": (
        [None, "zeros", "torch", "keep"],
        ["ones", 0, ["zeros"]],
    ),
    "seed": ([None, 0, 7, 2**40], [1.5, "1", True]),
    "gain_method": (["moment", "kumar", "torch"], ["magic", None, 1]),
    "strict": ([False, True], ["yes", 1, None]),
    "residual": (
        ["none", "gpt2", "FIXUP", "zero"],
        ["gtp2", None, 0, "fix-up"],
    ),
    "embeddings_stddev": (
        [None, 0.02, 1, 3.5],
        [0, -1.0, float("nan"), float("inf"), "0.1", True],
    ),
    "include_frozen": ([False, True], ["no", 0, None]),
}


@st.composite
def _arguments(draw):
    kwargs, invalid = {}, set()
    for name, (good, bad) in _ARGUMENTS.items():
        if draw(st.booleans()):
            continue  # the default
        if draw(st.integers(0, 3)) == 0:
            kwargs[name] = draw(st.sampled_from(bad))
            invalid.add(name)
        else:
            kwargs[name] = draw(st.sampled_from(good))
    return kwargs, invalid


@settings(max_examples=40, deadline=None, derandomize=True)
@given(_arguments())
def test_property_arguments_work_or_are_named(case):
    kwargs, invalid = case
    model = _PROPERTY_MODEL
    before = _values(model)
    try:
        report = layer_init.initialize(model, **kwargs)
    except ValueError as error:
        message = str(error)
        assert invalid, (kwargs, message)
        assert any(f"`{name}" in message for name in invalid), message
        assert _values(model).keys() == before.keys()
        for path, values in _values(model).items():
            np.testing.assert_array_equal(values, before[path])
        return
    assert not invalid, (kwargs, "accepted")
    assert isinstance(report, layer_init.InitReport)
    assert len({r["path"] for r in report.rows}) == len(model.weights)


_PROPERTY_MODEL = _resnet(blocks=2)


@pytest.mark.parametrize("shape", [(301, 7), (5, 400), (2000,), (1, 999)])
def test_std_in_slices_matches_numpy(shape, monkeypatch):
    monkeypatch.setattr(layer_init, "_STD_CHUNK", 100)
    rng = np.random.default_rng(0)
    values = (rng.normal(size=shape) * 3 + 5).astype("float32")
    std = layer_init._std(keras.ops.convert_to_tensor(values))
    np.testing.assert_allclose(std, values.astype("float64").std(), rtol=1e-5)
