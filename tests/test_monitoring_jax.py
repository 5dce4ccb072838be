"""JAX monitoring: grouped statistics, fetching records in groups; no
warning records without a warning (every backend)."""

import warnings

import keras
import numpy as np
import pytest

from keras_winit.monitoring import GradientVarianceLogger
from keras_winit.monitoring import GradientVarianceWarning
from keras_winit.monitoring import records as records_module
from tests.test_callbacks import _fit
from tests.test_callbacks import _model
from tests.test_callbacks import _read
from tests.test_callbacks import _steps

jax_only = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="the JAX backend's hook"
)


def _expected(grads, weights, new_weights):
    rows = []
    for g, w, v in zip(grads, weights, new_weights, strict=True):
        finite = np.isfinite(g).all()
        g64 = g.astype("f8")
        rows.append(
            [
                np.var(g64) if finite else np.nan,
                np.mean(g64),  # NaN, or inf with an inf and no NaN.
                np.linalg.norm(g64),  # inf with an inf and no NaN.
                np.sum(~np.isfinite(g)),
                np.linalg.norm(w.astype("f8")),
                np.linalg.norm(v.astype("f8") - w.astype("f8")),
            ]
        )
    return np.array(rows)


def _fit_steps(log_dir, steps, epochs=1, update_freq=1):
    """`fit` of `steps` batches of 4 per epoch, logged every `update_freq`
    steps."""
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).normal(size=(steps * 4, 6)).astype("float32")
    y = np.zeros((steps * 4, 2), "float32")
    logger = GradientVarianceLogger(
        str(log_dir), update_freq=update_freq, warn=False
    )
    model.fit(x, y, batch_size=4, epochs=epochs, verbose=0, callbacks=[logger])


@jax_only
@pytest.mark.parametrize("with_nan", [False, True])
def test_grouped_statistics_match_numpy(with_nan):
    # Small variables of one size share reductions (here three groups: of
    # 4, of 12 and of 7 entries, one of them alone), interleaved with
    # large ones reduced alone; rows come back in the variables' order.
    import jax

    from keras_winit.monitoring import jax as hook_module

    large = records_module.LARGE_VARIABLE
    rng = np.random.default_rng(0)
    shapes = [(4,), (3, 4), (large + 3,), (2, 2), (7,), (4, 3), (130, 130)]
    grads = [rng.normal(size=s).astype("float32") for s in shapes]
    # Mean >> spread, in a group: a one-pass variance would lose it.
    grads[3] = (1e3 + 1e-2 * rng.normal(size=(2, 2))).astype("float32")
    grads[5] = np.full((4, 3), 0.25, "float32")  # Constant: variance 0.
    if with_nan:
        grads[1][2, 3] = np.nan
        grads[2][5] = np.inf
    weights = [rng.normal(size=s).astype("float32") for s in shapes]
    new_weights = [rng.normal(size=s).astype("float32") for s in shapes]
    stats = jax.jit(hook_module.fused_stats)
    got = np.asarray(stats(grads, weights, new_weights))
    np.testing.assert_allclose(
        got, _expected(grads, weights, new_weights), rtol=1e-4, atol=1e-6
    )
    assert got[5, records_module.VARIANCE] == 0.0
    without = np.asarray(stats(grads, weights))
    np.testing.assert_array_equal(without[:, :5], got[:, :5])
    assert not without[:, records_module.UPDATE_NORM].any()


def _spy_fetches(monkeypatch, seconds):
    """With `fetch_every` 100 and `WRITE_AFTER_SECONDS` = `seconds`: the
    list that receives the number of records each fetch takes."""
    from keras_winit.monitoring import jax as hook_module

    monkeypatch.setattr(hook_module.Hook, "fetch_every", 100)
    monkeypatch.setattr(records_module, "WRITE_AFTER_SECONDS", seconds)
    fetched = []
    fetch = hook_module.Hook.fetch

    def spy(hook, keep=0):
        before = len(hook.in_flight)
        fetch(hook, keep=keep)
        fetched.append(before - len(hook.in_flight))

    monkeypatch.setattr(hook_module.Hook, "fetch", spy)
    return fetched


@jax_only
@pytest.mark.parametrize(
    "update_freq, seconds, want",
    [
        # The first record at once (the warning judges it), once the call
        # that made it is 2 calls old; then, with a large `fetch_every`,
        # the rest at the end of the epoch (then nothing left)...
        (1, float("inf"), [1, 13, 0]),
        # ... or each once it waited `WRITE_AFTER_SECONDS` (0 s: at once,
        # but those of the newest 2 calls).
        (1, 0.0, [1] * 12 + [2, 0]),
        # Recorded steps 0, 3, 6, 9, 12 (calls 1, 4, 7, 10, 13): each
        # fetched by an unrecorded call, 2 calls after its own; the last
        # at the end of the epoch.
        (3, 0.0, [1] * 5 + [0]),
    ],
)
def test_records_are_fetched_when_due(
    tmp_path, monkeypatch, update_freq, seconds, want
):
    from keras_winit.monitoring import jax as hook_module

    fetched = _spy_fetches(monkeypatch, seconds)
    _fit_steps(tmp_path, 14, update_freq=update_freq)
    assert hook_module.Hook.in_flight_kept == 2
    assert fetched == want
    events = _read(tmp_path / "gradients")
    assert _steps(events, "grad_variance/mlp/out/kernel") == list(
        range(0, 14, update_freq)
    )


@jax_only
def test_first_record_fetched_at_once_after_a_histogram(tmp_path, monkeypatch):
    # Steps 3 (histogram only, call 1), 4 (the first record, call 2), 6
    # (histogram, call 4), 8 (record, call 6): the histogram's fetch (call
    # 3) does not count as the first record's, which is fetched at call 4;
    # the rest at the end of the epoch.
    fetched = _spy_fetches(monkeypatch, float("inf"))
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(3)
    x = np.random.default_rng(0).normal(size=(6 * 4, 6)).astype("float32")
    y = np.zeros((6 * 4, 2), "float32")
    logger = GradientVarianceLogger(
        str(tmp_path), update_freq=4, histogram_freq=3, warn=False
    )
    model.fit(x, y, batch_size=4, verbose=0, shuffle=False, callbacks=[logger])
    assert fetched == [1, 1, 2, 0]
    events = _read(tmp_path / "gradients")
    assert _steps(events, "grad_variance/mlp/out/kernel") == [4, 8]
    assert _steps(events, "grad_histogram/mlp/out/kernel") == [3, 6]


def test_no_warning_no_variable_records(tmp_path, monkeypatch):
    # Every backend (`records.Records.write_record`): with `warn=False`,
    # the per-variable records of the warning are not built at each
    # recorded step (nothing judges them).
    built = []
    original = records_module.VariableRecord

    def spy(*args):
        built.append(args[0])
        return original(*args)

    monkeypatch.setattr(records_module, "VariableRecord", spy)
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    _fit(model, tmp_path, update_freq=1, warn=False)
    assert built == []
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradientVarianceWarning)
        _fit(model, tmp_path / "warned", update_freq=1, warn="gradients")
    assert len(built) == 4  # The first recorded step only.


@jax_only
def test_update_ratio_steps_run_a_step_of_their_own(tmp_path, monkeypatch):
    # With the defaults at update_freq=1, the recorded steps run one of two
    # jitted steps, chosen in Python by the step: with the update's norm
    # (every 10th) or without; neither holds the other's branch (an
    # untaken `lax.cond` that reads the weights still makes XLA copy them
    # before the update). Each is traced once, over two epochs.
    from keras_winit.monitoring import jax as hook_module

    traced = []
    fused_stats = hook_module.fused_stats

    def spy(grads, weights, new_weights=None):
        traced.append(new_weights is not None)
        return fused_stats(grads, weights, new_weights)

    per_trace = []
    record = hook_module.Hook.record

    def record_spy(hook, *args):
        before = len(traced)
        out = record(hook, *args)
        per_trace.append(traced[before:])
        return out

    monkeypatch.setattr(hook_module, "fused_stats", spy)
    monkeypatch.setattr(hook_module.Hook, "record", record_spy)
    _fit_steps(tmp_path, 12, epochs=2)
    assert sorted(per_trace) == [[False], [True]]
    events = _read(tmp_path / "gradients")
    assert _steps(events, "update_ratio/mlp/out/kernel") == [0, 10, 20]
    assert _steps(events, "grad_norm/mlp/out/kernel") == list(range(24))
