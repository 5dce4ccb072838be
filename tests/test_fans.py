import pytest

from keras_winit import fans

SHAPES = [
    (),
    (7,),
    (64, 32),
    (5, 16, 32),
    (3, 3, 16, 32),
    (2, 3, 3, 8, 4),
    (0, 12),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_compute_fans_matches_keras(shape):
    from keras.src.initializers.random_initializers import compute_fans

    assert fans.compute_fans(shape) == compute_fans(shape)


def test_compute_fans_with_axes():
    assert fans.compute_fans((16, 4, 8), [0], [1, 2]) == (16, 32)
    assert fans.compute_fans((16, 4, 8), [-3], [-1]) == (16, 8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_axes": [0]}, "must be given together"),
        ({"input_axes": [0], "output_axes": [5]}, "out of range"),
    ],
)
def test_compute_fans_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fans.compute_fans((4, 5), **kwargs)


@pytest.mark.parametrize(
    "mode, expected",
    [("fan_in", 64), ("fan_out", 16), ("fan_avg", 40), ("fan_geo_avg", 32)],
)
def test_fan_for_mode(mode, expected):
    assert fans.fan_for_mode(mode, 64, 16) == expected


def test_fan_for_mode_floor_and_error():
    assert fans.fan_for_mode("fan_in", 0, 0) == 1.0
    with pytest.raises(ValueError, match="Invalid `mode`"):
        fans.fan_for_mode("fan_sum", 1, 1)
