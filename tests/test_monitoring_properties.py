"""Property tests (Hypothesis) of the monitoring callbacks' constructors.

The contract (issue 13): any value either works as documented or raises a
`ValueError`/`TypeError` whose message names the argument and the value
received, in `__init__` (before `fit`, before anything is written).
Bounded: at most 40 examples per argument, no deadline.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import keras_winit

BOUNDED = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
    ],
    derandomize=True,
)
ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 2, -1, 2**31, 2**63, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["..", ".", "", "a/b", "ok", "epoch", "step"]),
    st.lists(st.sampled_from(["grad_norm", "speed", 3]), max_size=3),
    st.sampled_from([b"x", object(), 1j, {"x"}]),
)

GRADIENT_ARGUMENTS = (
    "update_freq",
    "histogram_freq",
    "weights_freq",
    "warn",
    "run_name",
    "signals",
)
HISTOGRAM_ARGUMENTS = (
    "epochs",
    "every",
    "num_examples",
    "buckets",
    "run_name",
    "step_unit",
    "training",
    "seed",
)


def _check(make, name, value):
    try:
        make()
    except (ValueError, TypeError) as error:
        message = str(error)
        assert f"`{name}`" in message or f"{name}=" in message, message
        assert "Received" in message or repr(value)[:20] in message, message


@pytest.mark.parametrize("name", GRADIENT_ARGUMENTS)
@BOUNDED
@given(value=ANY)
def test_gradient_logger_arguments(tmp_path, name, value):
    _check(
        lambda: keras_winit.GradientVarianceLogger(
            str(tmp_path), **{name: value}
        ),
        name,
        value,
    )


@pytest.mark.parametrize("name", HISTOGRAM_ARGUMENTS)
@BOUNDED
@given(value=ANY)
def test_histogram_logger_arguments(tmp_path, name, value):
    x = np.zeros((4, 3), "float32")
    _check(
        lambda: keras_winit.ActivationHistogramLogger(
            str(tmp_path), x_probe=x, **{name: value}
        ),
        name,
        value,
    )
