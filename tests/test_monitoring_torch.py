"""PyTorch statistics of `GradientVarianceLogger` (issue 14: their cost).

`keras_winit.monitoring.torch.fused_stats` computes each variable's
variance, mean and norm from one `sum` per gradient and one
`torch._foreach_norm`, the variance on the host as
`||g||**2 / n - mean**2` with a two-pass fallback: checked here against
NumPy in float64, including the cases where the one-pass formula would
lose every digit, non-finite gradients and half-precision ones. The
cached walk of the variables (`Hook._logged`) and the kept snapshot of the
weights (`update_ratio`) are checked against the uncached code.
PyTorch only (skipped elsewhere); small tensors, no training except one
short `fit`.
"""

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from keras_winit.monitoring import records

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="PyTorch statistics"
)

BOUNDED = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)


def _torch_module():
    from keras_winit.monitoring import torch as hook_module

    return hook_module


def _expected(g, w):
    g64 = np.asarray(g, np.float64)
    finite = np.isfinite(g64).all()
    return [
        np.var(g64) if finite else np.nan,
        np.mean(g64) if finite else np.nan,
        np.linalg.norm(g64) if finite else np.nan,
        np.sum(~np.isfinite(g64)),
        np.linalg.norm(np.asarray(w, np.float64)),
        0.0,
    ]


def _stats(grads, weights, dtype="float32"):
    import torch

    def tensor(a):
        return torch.tensor(np.asarray(a, "float32")).to(getattr(torch, dtype))

    return _torch_module().fused_stats(
        [tensor(g) for g in grads], [tensor(w) for w in weights]
    )


def _cases():
    rng = np.random.default_rng(0)
    nan = rng.normal(size=(40, 3)).astype("float32")
    nan[2, 1] = np.nan
    inf = rng.normal(size=(7,)).astype("float32")
    inf[3] = np.inf
    return {
        "small and large": [
            rng.normal(size=(130, 130)),
            rng.normal(size=(7,)),
            rng.normal(size=(3, 3, 4, 8)),
        ],
        # Mean >> spread: the one-pass variance would lose every digit.
        "mean dwarfs spread": [
            1e3 + 1e-2 * rng.normal(size=(150, 150)),
            5.0 + 1e-4 * rng.normal(size=(10,)),
        ],
        "constant": [np.full((129, 129), 0.25), np.full((3,), -2.0)],
        "zero": [np.zeros((4, 5)), rng.normal(size=(5,))],
        "nan": [nan, rng.normal(size=(6,))],
        "inf": [inf, rng.normal(size=(2, 2))],
        "single entry": [np.array([3.5]), np.array([[0.0]])],
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_fused_stats_match_numpy(case):
    grads = [np.asarray(g, "float32") for g in _cases()[case]]
    rng = np.random.default_rng(1)
    weights = [rng.normal(size=g.shape).astype("float32") for g in grads]
    got = _stats(grads, weights)
    assert got.shape == (len(grads), records.NUM_STATS)
    assert got.dtype == np.float64
    for i, (g, w) in enumerate(zip(grads, weights, strict=True)):
        want = _expected(g, w)
        if not np.isfinite(g).all():
            # Counted, and the statistics are not finite (any value).
            assert got[i, records.NONFINITE] == want[records.NONFINITE]
            assert not np.isfinite(got[i, records.VARIANCE])
            np.testing.assert_allclose(got[i, 4:], want[4:], rtol=1e-5)
            continue
        np.testing.assert_allclose(
            got[i], want, rtol=1e-4, atol=1e-12, err_msg=f"{case}[{i}]"
        )


def test_constant_gradient_has_zero_variance():
    got = _stats([np.full((129, 129), 0.25)], [np.ones((129, 129))])
    assert got[0, records.VARIANCE] == 0.0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_fused_stats_of_half_precision_in_float32(dtype):
    import torch

    rng = np.random.default_rng(2)
    grads = [rng.normal(size=(64, 32)), 3.0 + rng.normal(size=(16,))]
    weights = [rng.normal(size=g.shape) for g in grads]
    # NumPy's values of the same half-precision numbers.
    rounded = [
        torch.tensor(np.asarray(a, "float32"))
        .to(getattr(torch, dtype))
        .float()
        .numpy()
        for a in grads + weights
    ]
    got = _stats(grads, weights, dtype)
    for i in range(len(grads)):
        want = _expected(rounded[i], rounded[len(grads) + i])
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-12)


@BOUNDED
@given(
    shape=st.sampled_from([(1,), (5,), (17, 3), (2, 3, 4), (300,)]),
    offset=st.sampled_from([0.0, 1e-3, 1.0, -50.0, 1e3]),
    scale=st.sampled_from([1e-6, 1e-2, 1.0, 1e3]),
    seed=st.integers(0, 2**16),
)
def test_fused_stats_property(shape, offset, scale, seed):
    # Any offset and scale: NumPy's float64 values of the float32 data, to
    # float32 round-off (the variance relative to the mean square, where
    # the float32 data itself bounds what can be known).
    rng = np.random.default_rng(seed)
    g = (offset + scale * rng.normal(size=shape)).astype("float32")
    w = rng.normal(size=shape).astype("float32")
    got = _stats([g], [w])[0]
    want = _expected(g, w)
    g64 = g.astype(np.float64)
    mean_square = np.mean(g64 * g64)
    assert abs(got[0] - want[0]) <= 1e-5 * mean_square + 1e-30
    np.testing.assert_allclose(got[1:], want[1:], rtol=1e-5, atol=1e-30)


def _hook(tmp_path, model):
    from keras_winit.monitoring import GradientVarianceLogger

    logger = GradientVarianceLogger(tmp_path, update_freq=1, warn=False)
    logger.set_model(model)
    logger.on_train_begin()
    return logger, logger._hook


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, name="a"),
            keras.layers.Dense(3, name="b"),
        ]
    )
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_logged_cache_matches_the_uncached_walk(tmp_path):
    import torch

    model = _model()
    logger, hook = _hook(tmp_path, model)
    try:
        variables = list(model.trainable_variables)
        other = keras.Variable(np.zeros(2, "float32"), name="other")
        grads = [torch.ones(tuple(v.shape)) for v in variables]
        cases = [
            (grads, variables),
            (grads[:1] + [None] + grads[2:], variables),
            (grads[::-1], variables[::-1]),
            ([torch.ones(2), *grads], [other, *variables]),
        ]
        for g, v in cases * 2:  # The second round from the cache.
            got = hook._logged(g, v)
            want = records.Records._logged(hook, g, v)
            assert got[0] == want[0]
            assert [id(x) for x in got[1]] == [id(x) for x in want[1]]
            assert [id(x) for x in got[2]] == [id(x) for x in want[2]]
            np.testing.assert_array_equal(
                hook._sizes, [np.prod(hook.shapes[i]) for i in got[0]]
            )
            assert len(hook._weights) == len(got[0])
        assert len(hook._plans) == len(cases)
    finally:
        logger.on_train_end()


def test_update_norms_from_kept_copies(tmp_path):
    import torch

    model = _model()
    logger, hook = _hook(tmp_path, model)
    try:
        weights = [v.value for v in model.trainable_variables]
        rows = list(range(len(weights)))
        before = [w.detach().numpy().copy() for w in weights]
        copies = hook._snapshot(rows, weights)
        # Kept for the `fit`: the next snapshot reuses the same buffers.
        assert [id(c) for c in hook._snapshot(rows, weights)] == [
            id(c) for c in copies
        ]
        with torch.no_grad():
            for k, w in enumerate(weights):
                w.add_(0.01 * (k + 1))
        norms = hook._update_norms(weights, copies)
        for k, w in enumerate(weights):
            np.testing.assert_allclose(
                norms[k],
                np.linalg.norm(w.detach().numpy() - before[k]),
                rtol=1e-5,
            )
    finally:
        logger.on_train_end()


def test_fit_logs_numpy_statistics_at_each_step(tmp_path):
    # End to end: the logged step-0 variance, mean and norm of each
    # gradient are those of the gradient applied (SGD: the update / -lr).
    model = _model()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 6)).astype("float32")
    y = rng.normal(size=(8, 3)).astype("float32")
    before = [v.numpy().copy() for v in model.trainable_variables]
    from keras_winit.monitoring import GradientVarianceLogger

    logger = GradientVarianceLogger(tmp_path, update_freq=1, warn=False)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[logger])
    lr = float(model.optimizer.learning_rate.numpy())
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(
        str(tmp_path / "gradients"),
        size_guidance={event_accumulator.TENSORS: 0},
    )
    acc.Reload()

    def value(tag):
        (event,) = acc.Tensors(tag)
        return float(np.asarray(event.tensor_proto.float_val)[0])

    for v, w in zip(model.trainable_variables, before, strict=True):
        g = (w.astype(np.float64) - v.numpy()) / lr
        np.testing.assert_allclose(
            value(f"grad_variance/{v.path}"), np.var(g), rtol=1e-3
        )
        np.testing.assert_allclose(
            value(f"grad_norm/{v.path}"), np.linalg.norm(g), rtol=1e-3
        )
        np.testing.assert_allclose(
            value(f"grad_mean/{v.path}"),
            np.mean(g),
            rtol=1e-3,
            atol=1e-6 * np.abs(g).max(),
        )


class _Pending(keras.callbacks.Callback):
    """Records the logger's buffered records after each batch end."""

    def __init__(self, logger):
        super().__init__()
        self.logger = logger
        self.counts = []
        self.at_epoch_end = []

    def on_train_batch_end(self, batch, logs=None):
        self.counts.append(len(self.logger._hook.pending))

    def on_epoch_end(self, epoch, logs=None):
        self.at_epoch_end.append(len(self.logger._hook.pending))


@pytest.mark.parametrize("nan_at", [None, 3])
def test_records_written_in_groups(tmp_path, monkeypatch, nan_at):
    # The first record at once, then every `WRITE_EVERY` records, at once
    # when a gradient is not finite (its warning), all at each epoch end.
    from keras_winit.monitoring import GradientVarianceLogger
    from keras_winit.monitoring import NonFiniteGradientWarning
    from keras_winit.monitoring import records as records_module
    from keras_winit.monitoring.records import WRITE_EVERY as every

    # Groups only: a slow machine takes no record out early.
    monkeypatch.setattr(records_module, "WRITE_AFTER_SECONDS", float("inf"))

    model = _model()
    rng = np.random.default_rng(0)
    steps = 2 * every + 3
    x = rng.normal(size=(steps * 4, 6)).astype("float32")
    y = rng.normal(size=(steps * 4, 3)).astype("float32")
    if nan_at is not None:
        x[4 * nan_at] = np.nan
    logger = GradientVarianceLogger(tmp_path, update_freq=1, warn=False)
    spy = _Pending(logger)

    def fit():
        model.fit(
            x,
            y,
            batch_size=4,
            verbose=0,
            shuffle=False,
            callbacks=[logger, spy],
        )

    if nan_at is None:
        fit()
        want = [0] + [k % every for k in range(1, steps)]
    else:
        with pytest.warns(NonFiniteGradientWarning):
            fit()
        # From the NaN batch on, the weights and every gradient are NaN.
        want = [0, 1, 2] + [0] * (steps - 3)
    assert spy.counts == want
    assert spy.at_epoch_end == [0]


def test_first_record_written_at_once_after_a_histogram(tmp_path):
    # A histogram-only step first (step 3), then the first record (step
    # 4): that record is still written at its batch end.
    from keras_winit.monitoring import GradientVarianceLogger

    model = _model()
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4 * 4, 6)).astype("float32")
    y = rng.normal(size=(4 * 4, 3)).astype("float32")
    logger = GradientVarianceLogger(
        tmp_path, update_freq=4, histogram_freq=3, warn=False
    )
    spy = _Pending(logger)
    model.fit(
        x, y, batch_size=4, verbose=0, shuffle=False, callbacks=[logger, spy]
    )
    # Steps 3 (histogram), 4 (first record, written), 5, 6 (histogram).
    assert spy.counts == [0, 0, 0, 0]
