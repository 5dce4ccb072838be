"""Tests for keras_winit.layouts: the true fans of each kernel layout."""

import keras
import pytest

from keras_winit import fans
from keras_winit import layouts

# (id, shape, layout, kwargs, expected (fan_in, fan_out)); the expectation
# is written from the geometry of the layer, not from the implementation.
CASES = [
    ("dense", (64, 32), "dense", {}, (64, 32)),
    ("conv1d", (5, 16, 32), "conv", {}, (5 * 16, 5 * 32)),
    ("conv2d", (3, 3, 16, 32), "conv", {}, (9 * 16, 9 * 32)),
    ("conv3d", (3, 3, 3, 4, 8), "conv", {}, (27 * 4, 27 * 8)),
    # groups=4 on 16 channels: kernel (3, 3, 4, 32); each input channel
    # feeds only the 8 filters of its group.
    ("conv2d_groups", (3, 3, 4, 32), "conv", {"groups": 4}, (36, 72)),
    ("pointwise", (1, 1, 32, 64), "pointwise", {}, (32, 64)),
    ("pointwise_1d", (1, 32, 64), "pointwise", {}, (32, 64)),
    # Conv2DTranspose(out=32) on in=8 channels: kernel (3, 3, 32, 8).
    ("conv_transpose2d", (3, 3, 32, 8), "conv_transpose", {}, (72, 288)),
    ("conv_transpose1d", (5, 6, 4), "conv_transpose", {}, (20, 30)),
    # DepthwiseConv2D(3, depth_multiplier=2) on 16 channels (issue 3).
    ("depthwise2d", (3, 3, 16, 2), "depthwise", {}, (9, 18)),
    ("depthwise1d", (7, 16, 1), "depthwise", {}, (7, 7)),
    ("lstm_kernel", (10, 4 * 64), "recurrent", {"gates": 4}, (10, 64)),
    ("gru_recurrent", (32, 3 * 32), "recurrent", {"gates": 3}, (32, 32)),
    ("simple_rnn", (10, 20), "recurrent", {}, (10, 20)),
    # ConvLSTM(filters=8, kernel 3) on 5 channels: each gate is a
    # convolution (*window, in, 8).
    (
        "conv_lstm1d_kernel",
        (3, 5, 4 * 8),
        "conv_recurrent",
        {"gates": 4},
        (3 * 5, 3 * 8),
    ),
    (
        "conv_lstm2d_kernel",
        (3, 3, 5, 4 * 8),
        "conv_recurrent",
        {"gates": 4},
        (9 * 5, 9 * 8),
    ),
    (
        "conv_lstm2d_recurrent",
        (3, 3, 8, 4 * 8),
        "conv_recurrent",
        {"gates": 4},
        (9 * 8, 9 * 8),
    ),
    (
        "conv_lstm3d_kernel",
        (3, 3, 3, 5, 4 * 8),
        "conv_recurrent",
        {"gates": 4},
        (27 * 5, 27 * 8),
    ),
    (
        "einsum_query",
        (64, 4, 16),
        "einsum",
        {"equation": "abc,cde->abde"},
        (64, 64),
    ),
    (
        "einsum_output",
        (4, 16, 64),
        "einsum",
        {"equation": "abcd,cde->abe"},
        (64, 64),
    ),
    (
        "einsum_ellipsis",
        (32, 8),
        "einsum",
        {"equation": "...b,bc->...c"},
        (32, 8),
    ),
    # A letter in input and output ('b') is batch-like: in neither fan.
    (
        "einsum_shared",
        (6, 5, 7),
        "einsum",
        {"equation": "abc,bcd->abd"},
        (5, 7),
    ),
    ("embedding", (1000, 64), "embedding", {}, (1, 64)),
    ("default", (3, 3, 16, 2), "default", {}, (144, 18)),
]


@pytest.mark.parametrize(
    "shape,layout,kwargs,expected",
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_layout_fans(shape, layout, kwargs, expected):
    assert layouts.compute_layout_fans(shape, layout, **kwargs) == expected


def test_every_layout_is_tested():
    assert {c[2] for c in CASES} == set(layouts.LAYOUTS)


@pytest.mark.parametrize("layout", ["dense", "conv", "depthwise", "einsum"])
def test_explicit_fans_win(layout):
    shape = (3, 3, 16, 2) if layout in ("conv", "depthwise") else (8, 4)
    kwargs = {"equation": "ab,bc->ac"} if layout == "einsum" else {}
    assert layouts.compute_layout_fans(
        shape, layout, fan_in=7, fan_out=11, **kwargs
    ) == (7, 11)
    only_in = layouts.compute_layout_fans(shape, layout, fan_in=7, **kwargs)
    natural = layouts.compute_layout_fans(shape, layout, **kwargs)
    assert only_in == (7, natural[1])


def test_default_layout_matches_keras_compute_fans():
    for shape in [(5,), (4, 3), (3, 3, 16, 2), (2, 2, 2, 3, 5)]:
        assert layouts.compute_layout_fans(
            shape, "default"
        ) == fans.compute_fans(shape)


def test_keras_counts_depthwise_and_transpose_wrongly():
    # The traps of issue 3, as Keras' shape-only rule counts them.
    assert fans.compute_fans((3, 3, 16, 2)) == (144, 18)
    assert layouts.compute_layout_fans((3, 3, 16, 2), "depthwise")[0] == 9
    keras_in, keras_out = fans.compute_fans((3, 3, 32, 8))
    true_in, true_out = layouts.compute_layout_fans(
        (3, 3, 32, 8), "conv_transpose"
    )
    assert (keras_in, keras_out) == (true_out, true_in)


@pytest.mark.parametrize(
    "layer,input_shape,layout,kwargs",
    [
        (keras.layers.Conv2D(6, 3), (None, 8, 8, 4), "conv", {}),
        (keras.layers.Conv2D(6, 3, groups=2), (None, 8, 8, 4), "conv", {}),
        (
            keras.layers.Conv2DTranspose(6, 3),
            (None, 8, 8, 4),
            "conv_transpose",
            {},
        ),
        (
            keras.layers.DepthwiseConv2D(3, depth_multiplier=5),
            (None, 8, 8, 4),
            "depthwise",
            {},
        ),
        (keras.layers.Dense(6), (None, 4), "dense", {}),
        (keras.layers.LSTM(6), (None, 3, 4), "recurrent", {"gates": 4}),
        (
            keras.layers.ConvLSTM2D(6, 3),
            (None, 3, 8, 8, 4),
            "conv_recurrent",
            {"gates": 4},
        ),
    ],
    ids=[
        "conv",
        "conv_groups",
        "conv_transpose",
        "depthwise",
        "dense",
        "lstm",
        "conv_lstm2d",
    ],
)
def test_layouts_match_keras_kernel_shapes(layer, input_shape, layout, kwargs):
    """The layouts accept the shapes Keras actually builds."""
    layer.build(input_shape)
    kernel = layer.cell.kernel if hasattr(layer, "cell") else layer.kernel
    fan_in, fan_out = layouts.compute_layout_fans(
        kernel.shape, layout, groups=getattr(layer, "groups", 1), **kwargs
    )
    channels = input_shape[-1]
    expected_in = {
        "conv": 9 * channels // getattr(layer, "groups", 1),
        "conv_transpose": 9 * channels,
        "depthwise": 9,
        "dense": channels,
        "recurrent": channels,
        "conv_recurrent": 9 * channels,
    }[layout]
    assert fan_in == expected_in
    assert fan_out > 0


def test_einsum_axes():
    assert layouts.einsum_axes("abc,cde->abde") == ([0], [1, 2])
    assert layouts.einsum_axes("abcd,cde->abe") == ([0, 1], [2])
    assert layouts.einsum_axes("...b,bc->...c") == ([0], [1])
    assert layouts.einsum_axes("abc,bcd->abd") == ([1], [2])


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: layouts.compute_layout_fans((3, 3), "spiral"), "layout"),
        (lambda: layouts.compute_layout_fans((3, 0), "dense"), "shape"),
        (lambda: layouts.compute_layout_fans((3, 3, 3), "dense"), "rank 2"),
        (lambda: layouts.compute_layout_fans((3, 3), "depthwise"), "rank"),
        (
            lambda: layouts.compute_layout_fans((3, 3, 4, 6), "conv", groups=4),
            "groups",
        ),
        (
            lambda: layouts.compute_layout_fans((3, 3, 4, 6), "conv", groups=0),
            "groups",
        ),
        (
            lambda: layouts.compute_layout_fans((3, 10), "recurrent", gates=4),
            "gates",
        ),
        (
            lambda: layouts.compute_layout_fans(
                (3, 3, 4, 10), "conv_recurrent", gates=4
            ),
            "gates",
        ),
        (
            lambda: layouts.compute_layout_fans((4, 8), "conv_recurrent"),
            "rank",
        ),
        (
            lambda: layouts.compute_layout_fans((3, 4, 6), "recurrent"),
            "rank 2",
        ),
        (
            lambda: layouts.compute_layout_fans((3, 3, 4, 6), "pointwise"),
            "pointwise",
        ),
        (lambda: layouts.compute_layout_fans((3, 4), "einsum"), "equation"),
        (
            lambda: layouts.compute_layout_fans(
                (3, 4), "einsum", equation="abc,cde->abde"
            ),
            "rank",
        ),
        (
            lambda: layouts.compute_layout_fans((3, 4), "dense", fan_in=0),
            "fan_in",
        ),
        (
            lambda: layouts.compute_layout_fans((3, 4), "dense", fan_out=True),
            "fan_out",
        ),
    ],
    ids=[
        "layout",
        "zero_dim",
        "dense_rank",
        "depthwise_rank",
        "groups_divide",
        "groups_zero",
        "gates_divide",
        "conv_gates_divide",
        "conv_recurrent_rank",
        "recurrent_rank",
        "pointwise_window",
        "einsum_no_equation",
        "einsum_rank",
        "fan_in",
        "fan_out",
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
