"""The trainability zoo's prediction side, and the rules of keras_winit.health.

The ground truth (training each case) is cached in
benchmarks/trainability.json; these tests only run the predictions from
the untrained models, on a few cheap cases.
"""

import math

import keras
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from benchmarks import trainability
from keras_winit import health


@pytest.fixture(scope="module")
def cached():
    return trainability.load()


def test_cache_holds_the_zoo_with_seeds_and_versions(cached):
    assert len(cached["cases"]) >= 16
    assert set(cached["cases"]) == set(trainability.zoo())
    for key in ("seed", "epochs", "threshold", "keras", "backend"):
        assert cached[key] is not None
    outcomes = [trainability.outcome(c) for c in cached["cases"].values()]
    assert 0 < outcomes.count("fails") < len(outcomes)


# Cheap cases (MLPs and small residual nets on digits), both outcomes.
FAST = (
    "mlp30-relu-glorot",
    "mlp10-relu-zeros",
    "mlp10-tanh-glorot",
    "resnet8-plain",
    "resnet16-fixup",
    "resnet16-plain",
)


@pytest.mark.parametrize("name", FAST)
def test_diagnose_predicts_the_cached_outcome(cached, name):
    fails = trainability.outcome(cached["cases"][name]) == "fails"
    by_diagnose, flags = trainability.predict_diagnose(name)
    assert by_diagnose == fails, flags


# The real logger, one step of `fit`; resnet16-plain: only the first
# batch's probe sees it (the gradients look healthy).
@pytest.mark.parametrize(
    "name", ("mlp10-relu-zeros", "mlp10-tanh-glorot", "resnet16-plain")
)
def test_warning_predicts_the_cached_outcome(cached, name):
    fails = trainability.outcome(cached["cases"][name]) == "fails"
    by_warning, messages = trainability.predict_warning(name)
    assert by_warning == fails, (name, messages)


def test_score():
    truth = [True, True, False, False]
    assert trainability.score(truth, [True, False, True, False]) == (0.5, 0.5)
    assert trainability.score(truth, [True, True, False, False]) == (1, 1)


# ----------------------------------------------------------------------
# health.gradient_warnings: a pure function of per-variable records.


def _record(path, kind="kernel", grad_norm=0.1, weight_norm=8.0, **kw):
    return dict(
        path=path,
        kind=kind,
        grad_var=grad_norm**2 / 100,
        grad_norm=grad_norm,
        weight_norm=weight_norm,
        nonfinite=kw.get("nonfinite", 0),
        norm_follows=kw.get("norm_follows", False),
    )


def test_attention_key_bias_with_zero_gradient_is_ignored():
    records = [_record(f"block/{p}/kernel") for p in "qkvo"]
    records.append(_record("block/key/bias", "bias", 0.0, 0.0))
    records.append(_record("block/query/bias", "bias", 1e-9, 0.0))
    assert health.gradient_warnings(records) == []


def test_same_gain_error_everywhere_is_still_caught():
    # 30-layer Glorot ReLU: every layer's step is ~3e-6; the span across
    # layers is ~2 (it cancels), the median is what shows it.
    records = [_record(f"d{i}/kernel", grad_norm=3e-5) for i in range(30)]
    (message,) = health.gradient_warnings(records)
    assert "barely get a gradient" in message


def test_exploding_and_nonfinite_and_zero_init():
    big = [_record(f"d{i}/kernel", grad_norm=1e5) for i in range(4)]
    assert "huge" in health.gradient_warnings(big)[0]
    bad = [_record("d/kernel", nonfinite=3), _record("e/kernel")]
    assert "Non-finite" in health.gradient_warnings(bad)[0]
    zeros = [
        _record(f"d{i}/kernel", grad_norm=0, weight_norm=0) for i in range(3)
    ]
    assert "All kernels are zero" in health.gradient_warnings(zeros)[0]


def test_zero_initialized_branch_ends_are_healthy():
    # Fixup: the branch ends are zero, the layers before them get exactly
    # zero gradient at init; both are by design.
    records = []
    for b in range(4):
        records.append(_record(f"b{b}/dense_1/kernel", grad_norm=0.0))
        records.append(_record(f"b{b}/dense_2/kernel", weight_norm=0.0))
    records.append(_record("head/kernel"))
    assert health.gradient_warnings(records) == []


def test_kernels_followed_by_norm_are_judged_by_their_step():
    # Measured on benchmarks/trainability's cnn6-bn-he-x0.01 (trains): the
    # 100x too small kernels before BatchNorm have ordinary effective
    # steps (0.03-0.2); the head after the norm (BN's epsilon dominates the
    # tiny variance) has a tiny one. The median says: healthy.
    steps = [0.026, 0.15, 0.14, 0.15, 0.19, 0.18]
    records = [
        _record(
            f"conv{i}/kernel",
            grad_norm=s * 0.01,
            weight_norm=0.01,
            norm_follows=True,
        )
        for i, s in enumerate(steps)
    ] + [_record("head/kernel", grad_norm=1.7e-5, weight_norm=1.0)]
    assert health.gradient_warnings(records) == []


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(health.VARIABLE_KINDS),
            st.floats(0, 1e30, allow_nan=False),
            st.floats(0, 1e30, allow_nan=False),
            st.integers(0, 5),
            st.booleans(),
        ),
        max_size=8,
    )
)
def test_gradient_warnings_always_returns_messages(rows):
    records = [
        dict(
            path=f"v{i}",
            kind=kind,
            grad_var=g,
            grad_norm=g,
            weight_norm=w,
            nonfinite=n,
            norm_follows=f,
        )
        for i, (kind, g, w, n, f) in enumerate(rows)
    ]
    messages = health.gradient_warnings(records)
    assert isinstance(messages, list)
    assert all(isinstance(m, str) and m for m in messages)
    if not any(r["nonfinite"] for r in records) and not any(
        r["kind"] == "kernel" for r in records
    ):
        assert messages == []


def test_residual_growth_compounds_until_normalized():
    class R:
        def __init__(self, growth, normalized=False):
            self.at, self.normalized = f"add{id(self)}", normalized
            self.skip_std, self.out_std = 1.0, growth
            self.branch_std = growth

        @property
        def growth(self):
            return self.out_std / self.skip_std

    thresholds = {"stream": 100.0}
    stream = [R(math.sqrt(2)) for _ in range(16)]
    found = health._judge_residuals(stream, thresholds)
    assert [f.kind for _, f in found] == ["exploding_stream"]
    renormed = [R(math.sqrt(2), normalized=True) for _ in range(16)]
    assert health._judge_residuals(renormed, thresholds) == []
    assert keras.backend.backend()  # runs on every backend
