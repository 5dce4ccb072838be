"""Tests for `keras_winit.callbacks.GradientVarianceLogger`."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings

import keras
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from keras_winit.monitoring import GradientVarianceLogger
from keras_winit.monitoring import GradientVarianceWarning
from keras_winit.monitoring import records as records_module
from keras_winit.monitoring import writer as writer_module
from tests import _real_models

BACKEND = keras.backend.backend()

BATCH = 8
N = 48  # 6 batches per epoch


def _data(seed=0, n=N):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = rng.normal(size=(n, 2)).astype("float32")
    return x, y


def _model(seed=1, dtype=None):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(
                5, activation="tanh", name="hidden", dtype=dtype
            ),
            keras.layers.Dense(2, name="out", dtype=dtype),
        ],
        name="mlp",
    )


PATHS = [
    "mlp/hidden/kernel",
    "mlp/hidden/bias",
    "mlp/out/kernel",
    "mlp/out/bias",
]


def _read(run_dir):
    acc = event_accumulator.EventAccumulator(
        str(run_dir), size_guidance={event_accumulator.TENSORS: 0}
    )
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        out[tag] = [
            (e.step, tensor_util.make_ndarray(e.tensor_proto))
            for e in acc.Tensors(tag)
        ]
    return out


def _steps(events, tag):
    return [s for s, _ in events[tag]]


def _value(events, tag, step):
    values = [float(v) for s, v in events[tag] if s == step]
    assert len(values) == 1, (tag, step, values)
    return values[0]


def _numpy_grads(model, x, y):
    """Gradients of the MSE of a `hidden` (tanh) -> `out` model, by hand.

    An independent reference on every backend: NumPy, float64, with the
    model's current weights.
    """
    w = {}
    for v in model.trainable_variables:
        layer, name = v.path.split("/")[-2:]
        w[layer, name] = (v.path, keras.ops.convert_to_numpy(v).astype("f8"))
    x = np.asarray(x, "f8")
    h = np.tanh(x @ w["hidden", "kernel"][1] + w["hidden", "bias"][1])
    pred = h @ w["out", "kernel"][1] + w["out", "bias"][1]
    d = 2.0 * (pred - np.asarray(y, "f8")) / pred.size
    dz = (d @ w["out", "kernel"][1].T) * (1.0 - h**2)
    grads = {
        ("out", "kernel"): h.T @ d,
        ("out", "bias"): d.sum(0),
        ("hidden", "kernel"): x.T @ dz,
        ("hidden", "bias"): dz.sum(0),
    }
    return {w[key][0]: g for key, g in grads.items()}


def _reference_variances(model, x, y):
    return {p: float(np.var(g)) for p, g in _numpy_grads(model, x, y).items()}


def _iterations(model):
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def _wrapped(optimizer):
    return {"apply", "stateless_apply"} & set(optimizer.__dict__)


def _fit(model, log_dir, epochs=1, callbacks=(), **logger_kwargs):
    x, y = _data()
    logger = GradientVarianceLogger(log_dir, **logger_kwargs)
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[logger, *callbacks],
    )
    return logger


def _check_step0_matches_reference(events, expected):
    for path, variance in expected.items():
        got = _value(events, f"grad_variance/{path}", 0)
        np.testing.assert_allclose(got, variance, rtol=1e-4, err_msg=path)


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"update_freq": 0}, "Received: update_freq=0"),
        ({"update_freq": 1.5}, "Received: update_freq=1.5"),
        ({"update_freq": True}, "Received: update_freq=True"),
        ({"histogram_freq": -1}, "Received: histogram_freq=-1"),
        ({"weights_freq": "1"}, "Received: weights_freq='1'"),
        ({"warn": 0}, "Received: warn=0"),
        ({"warn": "big"}, "Received: warn='big'"),
        ({"warn": "Gradients"}, "Received: warn='Gradients'"),
        ({"log_dir": ""}, "Received: log_dir=''"),
        ({"log_dir": None}, "Received: log_dir=None"),
        ({"run_name": "a/b"}, "Received: run_name='a/b'"),
        # Issue 13, items 7 and 8.
        ({"update_freq": 10**400}, "Received: update_freq=1000"),
        ({"histogram_freq": 2**31}, "Received: histogram_freq=2147483648"),
        ({"weights_freq": 2**63}, "Received: weights_freq=9223372036854"),
        ({"update_freq": None}, "Received: update_freq=None"),
        ({"warn": None}, "Received: warn=None"),
        ({"run_name": ".."}, "Received: run_name='..'"),
        ({"signals": "grad_norm"}, "Received: signals='grad_norm'"),
        ({"signals": ["grad_norm", "speed"]}, "Unknown: \\['speed'\\]"),
        ({"run_name": "."}, "Received: run_name='.'"),
        ({"run_name": ""}, "Received: run_name=''"),
    ],
    ids=lambda v: str(v),
)
def test_init_validates_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradientVarianceLogger(**kwargs)


def test_init_messages_name_the_argument():
    with pytest.raises(
        ValueError,
        match=r"Argument `update_freq` must be a positive integer\. "
        r"Received: update_freq=0",
    ):
        GradientVarianceLogger(update_freq=0)


# ------------------------------------------------------------- fail early


def test_uncompiled_model_fails_before_first_step(tmp_path):
    logger = GradientVarianceLogger(tmp_path)
    logger.set_model(_model())
    with pytest.raises(ValueError, match="compiled model with an optimizer"):
        logger.on_train_begin()


def test_unsupported_backend_fails_in_set_model(tmp_path, monkeypatch):
    model = _model()
    logger = GradientVarianceLogger(tmp_path)
    monkeypatch.setattr(keras.backend, "backend", lambda: "numpy")
    with pytest.raises(RuntimeError, match="backend='numpy'"):
        logger.set_model(model)


def test_unbuilt_model_trains_and_is_logged_from_its_second_step(tmp_path):
    # Issue 13, item 9: plain Keras trains a Sequential without `Input`;
    # adding the logger must not make `fit` fail.
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(2)]
    )
    model.compile(optimizer="sgd", loss="mse")
    assert not model.trainable_variables
    _fit(model, tmp_path, update_freq=1)
    assert _iterations(model) == 6
    events = _read(tmp_path / "gradients")
    tag = f"grad_variance/{model.trainable_variables[0].path}"
    # Step 0 builds the model on TensorFlow and JAX (Keras' own train
    # function); PyTorch's trainer builds it before `on_train_begin`.
    assert _steps(events, tag) in ([1, 2, 3, 4, 5], list(range(6)))
    assert not _wrapped(model.optimizer)


def test_unwritable_log_dir_fails_before_first_step(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data()
    logger = GradientVarianceLogger(blocker / "logs")
    with pytest.raises(ValueError, match="cannot write to `log_dir`"):
        model.fit(x, y, batch_size=BATCH, verbose=0, callbacks=[logger])
    assert _iterations(model) == 0
    assert not _wrapped(model.optimizer)


# ---------------------------------------------------------- must work with


def test_plain_fit_logs_every_layer_and_matches_reference(tmp_path):
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data()
    expected = _reference_variances(model, x[:BATCH], y[:BATCH])
    _fit(model, tmp_path, epochs=2, update_freq=4)
    events = _read(tmp_path / "gradients")
    for path in PATHS:
        for stat in ("variance", "mean", "norm", "nonfinite"):
            assert _steps(events, f"grad_{stat}/{path}") == [0, 4, 8], path
        assert _value(events, f"grad_nonfinite/{path}", 0) == 0
    _check_step0_matches_reference(events, expected)
    assert _steps(events, "grad_summary/log10_variance_ratio") == [0, 4, 8]
    kernels = [expected["mlp/hidden/kernel"], expected["mlp/out/kernel"]]
    np.testing.assert_allclose(
        _value(events, "grad_summary/log10_variance_ratio", 0),
        np.log10(max(kernels) / min(kernels)),
        rtol=1e-4,
    )
    # Optional summaries are off by default.
    assert not any(t.startswith(("grad_histogram", "weight_")) for t in events)
    # The optimizer is restored and the model saves as before.
    assert not _wrapped(model.optimizer)
    model.save(tmp_path / "model.keras")


@pytest.mark.parametrize("jit_compile", [True, False])
def test_jit_compile(tmp_path, jit_compile):
    if BACKEND == "torch" and jit_compile:
        pytest.skip("jit_compile=True is torch.compile on PyTorch (slow)")
    model = _model()
    model.compile(optimizer="sgd", loss="mse", jit_compile=jit_compile)
    x, y = _data()
    expected = _reference_variances(model, x[:BATCH], y[:BATCH])
    _fit(model, tmp_path, update_freq=2)
    events = _read(tmp_path / "gradients")
    assert _steps(events, "grad_variance/mlp/out/kernel") == [0, 2, 4]
    _check_step0_matches_reference(events, expected)


@pytest.mark.skipif(
    BACKEND == "torch",
    reason="Keras' PyTorch trainer requires steps_per_execution=1",
)
def test_steps_per_execution_keeps_every_recorded_step(tmp_path):
    model = _model()
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=4)
    x, y = _data()
    expected = _reference_variances(model, x[:BATCH], y[:BATCH])
    # 6 batches per epoch: each epoch's second call runs out of data after
    # 2 of its 4 steps (on TensorFlow the steps read are the optimizer's
    # count: the 2 steps not run are neither written nor reported lost).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _fit(model, tmp_path, epochs=2, update_freq=1)
    events = _read(tmp_path / "gradients")
    assert _steps(events, "grad_variance/mlp/hidden/kernel") == list(range(12))
    _check_step0_matches_reference(events, expected)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("split", [True, False])
def test_tensorflow_records_overwritten_before_a_read_are_reported(
    tmp_path, monkeypatch, split
):
    # The ring buffer holds `2 * WRITE_EVERY` records; here it is read only
    # at the end of the epoch (16 steps more): the first 16 are lost, said
    # once, and the last ones written. Split (Keras' `train_step`): rows
    # given by the step; not split (loss scaling): rows counted in the
    # graph.
    from keras_winit.monitoring import tensorflow as tf_module
    from keras_winit.monitoring.records import WRITE_EVERY

    steps = 2 * WRITE_EVERY + 16

    write_pending = tf_module.Hook.write_pending
    kinds = set()

    def at_epoch_end_only(hook, force=False):
        kinds.add(hook.split)
        if force:
            write_pending(hook, force=True)

    monkeypatch.setattr(tf_module.Hook, "write_pending", at_epoch_end_only)
    model = _model()
    optimizer = keras.optimizers.SGD()
    if not split:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, loss="mse")
    x, y = _data(n=steps * BATCH)
    logger = GradientVarianceLogger(tmp_path, update_freq=1)
    with pytest.warns(UserWarning, match="dropped 16 records") as caught:
        model.fit(
            x, y, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[logger]
        )
    assert len([w for w in caught if "dropped" in str(w.message)]) == 1
    assert kinds == {split}
    events = _read(tmp_path / "gradients")
    assert _steps(events, "grad_variance/mlp/out/kernel") == list(
        range(16, steps)
    )


def test_mixed_float16_unscales_and_reports_skipped_steps(tmp_path):
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = _model()
        # A huge loss scale overflows float16 backprop: the first steps are
        # skipped (and the scale halved) until the gradients are finite.
        optimizer = keras.optimizers.LossScaleOptimizer(
            keras.optimizers.SGD(), initial_scale=2.0**20
        )
        model.compile(optimizer=optimizer, loss="mse")
        x, y = _data()
        logger = GradientVarianceLogger(tmp_path, update_freq=1)
        model.fit(
            x, y, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[logger]
        )
        events = _read(tmp_path / "gradients")
        skipped = events["grad_summary/skipped_steps"]
        n_skipped = int(skipped[-1][1])
        assert n_skipped >= 1
        assert [int(v) for _, v in skipped] == list(range(1, n_skipped + 1))
        # Skipped steps are not applied: iterations do not advance.
        assert all(s == 0 for s, _ in skipped)
        applied = N // BATCH - n_skipped
        tag = "grad_variance/mlp/hidden/kernel"
        assert _steps(events, tag) == list(range(applied))
        assert all(np.isfinite(float(v)) for _, v in events[tag])
        nonfinite = events["grad_nonfinite/mlp/hidden/kernel"]
        assert max(float(v) for _, v in nonfinite) > 0
        # Step 0 is the first finite batch; its logged gradient is unscaled.
        start = n_skipped * BATCH
        expected = _reference_variances(
            _model(), x[start : start + BATCH], y[start : start + BATCH]
        )
        for path, variance in expected.items():
            got = float(events[f"grad_variance/{path}"][-applied][1])
            np.testing.assert_allclose(got, variance, rtol=0.05, err_msg=path)
    finally:
        keras.config.set_dtype_policy("float32")


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    model = _model()
    model.compile(
        optimizer=keras.optimizers.SGD(gradient_accumulation_steps=2),
        loss="mse",
    )
    x, y = _data()
    # Optimizer step 0 applies the mean of the first two batch gradients.
    g0 = _numpy_grads(model, x[:BATCH], y[:BATCH])
    g1 = _numpy_grads(model, x[BATCH : 2 * BATCH], y[BATCH : 2 * BATCH])
    expected = {p: float(np.var((g0[p] + g1[p]) / 2)) for p in g0}
    _fit(model, tmp_path, epochs=2, update_freq=1)
    events = _read(tmp_path / "gradients")
    assert _iterations(model) == 6
    assert _steps(events, "grad_variance/mlp/out/kernel") == list(range(6))
    _check_step0_matches_reference(events, expected)


def test_repeated_fit_and_recompile(tmp_path):
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data()
    _fit(model, tmp_path, update_freq=3)  # steps 0..5
    model.fit(x, y, batch_size=BATCH, verbose=0)  # without: steps 6..11
    _fit(model, tmp_path, update_freq=3)  # steps 12..17
    model.compile(optimizer="adam", loss="mse")  # new optimizer: from 0
    expected = _reference_variances(model, x[:BATCH], y[:BATCH])
    _fit(model, tmp_path / "recompiled", update_freq=3)
    events = _read(tmp_path / "gradients")
    assert _steps(events, "grad_variance/mlp/out/bias") == [0, 3, 12, 15]
    events = _read(tmp_path / "recompiled" / "gradients")
    assert _steps(events, "grad_variance/mlp/out/bias") == [0, 3]
    _check_step0_matches_reference(events, expected)
    assert not _wrapped(model.optimizer)


def test_writes_event_files_without_tensorflow(tmp_path, monkeypatch):
    # A local log dir never asks for TensorFlow (JAX and PyTorch installs
    # usually lack it): the records are framed by the writer itself, on
    # every backend.
    opened = []
    asked = []

    class Spy(writer_module._Sink):
        def __init__(self, path):
            opened.append(path)
            super().__init__(path)

    monkeypatch.setattr(writer_module, "use_tensorflow", False)
    monkeypatch.setattr(writer_module, "_Sink", Spy)
    monkeypatch.setattr(writer_module, "_tensorflow", lambda: asked.append(1))
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data()
    expected = _reference_variances(model, x[:BATCH], y[:BATCH])
    _fit(model, tmp_path, update_freq=2, histogram_freq=4)
    assert len(opened) == 1 and not asked
    assert os.path.dirname(opened[0]) == str(tmp_path / "gradients")
    events = _read(tmp_path / "gradients")
    assert _steps(events, "grad_variance/mlp/out/kernel") == [0, 2, 4]
    assert _steps(events, "grad_histogram/mlp/out/kernel") == [0, 4]
    _check_step0_matches_reference(events, expected)


def test_later_fit_without_the_callback_records_nothing(tmp_path, monkeypatch):
    # The wrapper must not stay in a cached trace (JAX) or graph (TF).
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data()
    _fit(model, tmp_path, update_freq=1)
    calls = []
    monkeypatch.setattr(
        records_module.Records, "add_record", lambda *a: calls.append(a)
    )
    monkeypatch.setattr(
        records_module.Records, "write_record", lambda *a: calls.append(a)
    )
    model.fit(x, y, batch_size=BATCH, verbose=0)
    assert _iterations(model) == 12
    assert calls == []


def test_validation_data_is_not_logged(tmp_path):
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data()
    logger = GradientVarianceLogger(tmp_path, update_freq=1)
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=2,
        validation_data=_data(seed=5, n=16),
        verbose=0,
        callbacks=[logger],
    )
    events = _read(tmp_path / "gradients")
    assert _steps(events, "grad_variance/mlp/hidden/bias") == list(range(12))


def test_with_keras_tensorboard_on_same_log_dir(tmp_path):
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data()
    expected = _reference_variances(model, x[:BATCH], y[:BATCH])
    tensorboard = keras.callbacks.TensorBoard(
        tmp_path, update_freq=4, histogram_freq=1
    )
    # Keras' record_if(step % 4 == 0) must not swallow steps 1, 2, 3.
    _fit(model, tmp_path, callbacks=[tensorboard], update_freq=1)
    events = _read(tmp_path / "gradients")
    assert _steps(events, "grad_variance/mlp/out/kernel") == list(range(6))
    _check_step0_matches_reference(events, expected)
    keras_events = _read(tmp_path / "train")
    assert "batch_loss" in keras_events


class _SubclassedModel(keras.Model):
    """`hidden` (tanh) -> `out`, as `_model`, subclassed."""

    def __init__(self):
        super().__init__(name="custom")
        self.hidden = keras.layers.Dense(5, activation="tanh", name="hidden")
        self.out = keras.layers.Dense(2, name="out")

    def call(self, x):
        return self.out(self.hidden(x))


def _compiled_subclassed(model_class):
    """A built, compiled `model_class`, and its step-0 gradient variances."""
    keras.utils.set_random_seed(3)
    model = model_class()
    model.compile(optimizer="sgd")
    x, y = _data()
    model(x[:1])
    return model, _reference_variances(model, x[:BATCH], y[:BATCH])


class _CustomModel(_SubclassedModel):
    """Calls `optimizer.apply` from its own (TensorFlow) `train_step`."""

    def train_step(self, data):
        import tensorflow as tf

        x, y = data
        with tf.GradientTape() as tape:
            loss = keras.ops.mean(keras.ops.square(self(x) - y))
        variables = self.trainable_variables
        grads = tape.gradient(loss, variables)
        self.optimizer.apply(grads, variables)
        return {"loss": loss}


@pytest.mark.tensorflow_only
def test_custom_train_step_calling_optimizer_apply(tmp_path):
    model, expected = _compiled_subclassed(_CustomModel)
    _fit(model, tmp_path, update_freq=1)
    events = _read(tmp_path / "gradients")
    assert set(expected) == {
        "custom/hidden/kernel",
        "custom/hidden/bias",
        "custom/out/kernel",
        "custom/out/bias",
    }
    assert _steps(events, "grad_variance/custom/out/kernel") == list(range(6))
    _check_step0_matches_reference(events, expected)


class _TwiceModel(_CustomModel):
    def train_step(self, data):
        for _ in range(2):  # two optimizer steps per batch
            logs = super().train_step(data)
        return logs


@pytest.mark.tensorflow_only
def test_custom_train_step_with_two_optimizer_steps_per_batch(tmp_path):
    # The callback skips reading its variables on batch ends that cannot
    # hold a record; it must adapt to 2 optimizer steps per batch.
    keras.utils.set_random_seed(3)
    model = _TwiceModel()
    model.compile(optimizer="sgd")
    model(_data()[0][:1])
    _fit(model, tmp_path, epochs=3, update_freq=5)
    events = _read(tmp_path / "gradients")
    assert _iterations(model) == 36
    assert _steps(events, "grad_variance/custom/out/kernel") == list(
        range(0, 36, 5)
    )


class _JaxTwiceModel(_SubclassedModel):
    """A JAX `train_step` that makes two optimizer steps per batch."""

    def train_step(self, state, data):
        import jax

        trainable, non_trainable, optimizer_variables, metrics = state
        x, y = data

        def loss_fn(trainable):
            pred, _ = self.stateless_call(trainable, non_trainable, x)
            return keras.ops.mean(keras.ops.square(pred - y))

        for _ in range(2):
            loss, grads = jax.value_and_grad(loss_fn)(trainable)
            trainable, optimizer_variables = self.optimizer.stateless_apply(
                optimizer_variables, grads, trainable
            )
        return {"loss": loss}, (
            trainable,
            non_trainable,
            optimizer_variables,
            metrics,
        )


@pytest.mark.skipif(BACKEND != "jax", reason="a JAX train_step")
def test_jax_custom_train_step_with_two_stateless_applies(tmp_path):
    model, expected = _compiled_subclassed(_JaxTwiceModel)
    _fit(model, tmp_path, epochs=3, update_freq=5)
    events = _read(tmp_path / "gradients")
    assert _iterations(model) == 36
    assert _steps(events, "grad_variance/custom/out/kernel") == list(
        range(0, 36, 5)
    )
    _check_step0_matches_reference(events, expected)


@pytest.mark.skipif(BACKEND != "jax", reason="JAX fetches records in groups")
def test_jax_records_are_fetched_during_the_epoch(tmp_path, monkeypatch):
    from keras_winit.monitoring import jax as jax_hook

    monkeypatch.setattr(jax_hook.Hook, "fetch_every", 2)
    monkeypatch.setattr(records_module, "WRITE_AFTER_SECONDS", float("inf"))
    fetched = []  # (steps fetched, steps still in flight) of each fetch
    fetch = jax_hook.Hook.fetch

    def spy(hook, keep=0):
        before = len(hook.in_flight)
        fetch(hook, keep=keep)
        fetched.append((before - len(hook.in_flight), len(hook.in_flight)))

    monkeypatch.setattr(jax_hook.Hook, "fetch", spy)
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    _fit(model, tmp_path, epochs=2, update_freq=1, histogram_freq=3)
    assert jax_hook.Hook.in_flight_kept == 2
    # 6 steps per epoch, each a record; a fetch leaves those of the newest
    # 2 calls in flight. First epoch: the first record at once (call 3),
    # then 2 at call 5; the end of the epoch fetches the 3 left. Second
    # epoch: 2 at calls 10 and 12, the last 2 at its end (the end of
    # training finds nothing left).
    assert fetched == [(1, 2), (2, 2), (3, 0), (2, 2), (2, 2), (2, 0), (0, 0)]
    events = _read(tmp_path / "gradients")
    assert _steps(events, "grad_variance/mlp/out/kernel") == list(range(12))
    assert _steps(events, "grad_histogram/mlp/out/kernel") == [0, 3, 6, 9]


class _WrittenAt(keras.callbacks.Callback):
    """After the logger: the steps of the records written by each batch
    end (`records.Records.write_records`), by step."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.batch_ends = 0
        self.written_at = {}
        write_records = records_module.Records.write_records

        def spy(hook, records):
            n = len(hook.variables) * records_module.NUM_STATS
            for record in records:
                self.written_at[int(record[n])] = self.batch_ends
            write_records(hook, records)

        monkeypatch.setattr(records_module.Records, "write_records", spy)

    def on_train_batch_end(self, batch, logs=None):
        self.batch_ends += 1


@pytest.mark.parametrize("seconds", [0.0, float("inf")])
def test_records_written_within_write_after_seconds(
    tmp_path, monkeypatch, seconds
):
    # Records are written in groups of `WRITE_EVERY` recorded steps, or
    # once the oldest has waited `WRITE_AFTER_SECONDS` (a record is never
    # kept from TensorBoard long, however rare the recorded steps): with
    # 0 s, each record is written at its own batch end (JAX: fetched two
    # calls later, a step may still run); without the deadline, only the
    # first (judged early), the rest at the end of the epoch.
    monkeypatch.setattr(records_module, "WRITE_AFTER_SECONDS", seconds)
    spy = _WrittenAt(monkeypatch)
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    _fit(model, tmp_path, epochs=2, update_freq=2, callbacks=[spy])
    # Steps 0-11, 6 per epoch, recorded at even steps. `written_at[s]`: the
    # batch ends done when the record of step `s` was written, `s` at its
    # own batch end, 6 and 12 at the ends of the epochs.
    delay = {"jax": 2}.get(BACKEND, 0)
    if seconds == 0:
        want = {s: s + delay for s in range(0, 12, 2)}
    else:
        want = {0: delay, 2: 6, 4: 6, 6: 12, 8: 12, 10: 12}
    assert spy.written_at == want
    events = _read(tmp_path / "gradients")
    assert _steps(events, "grad_variance/mlp/out/kernel") == list(
        range(0, 12, 2)
    )


def test_batch_end_keeps_jax_async_dispatch(tmp_path):
    # Keras runs batch ends on a thread (async dispatch of the JAX steps)
    # only if every callback allows it.
    logger = GradientVarianceLogger(tmp_path)
    callbacks = keras.callbacks.CallbackList([logger], model=_model())
    assert logger.async_safe is (BACKEND == "jax")
    assert callbacks._async_train is (BACKEND == "jax")


def test_does_not_change_training_or_checkpoints(tmp_path):
    if BACKEND == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    try:
        weights, saved = [], []
        for use_logger in (False, True):
            model = _model(seed=7)
            model.compile(optimizer="adam", loss="mse")
            keras.utils.set_random_seed(11)
            x, y = _data()
            # Saved during `fit`, while the logger is in place.
            path = tmp_path / f"checkpoint_{use_logger}.keras"
            callbacks = [keras.callbacks.ModelCheckpoint(path)]
            if use_logger:
                callbacks.append(
                    GradientVarianceLogger(tmp_path, update_freq=2)
                )
            model.fit(
                x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=callbacks
            )
            weights.append(
                [keras.ops.convert_to_numpy(w) for w in model.weights]
            )
            loaded = keras.saving.load_model(path)
            saved.append(
                [
                    keras.ops.convert_to_numpy(v)
                    for v in loaded.weights + loaded.optimizer.variables
                ]
            )
        for a, b in zip(*weights, strict=True):
            np.testing.assert_array_equal(a, b)
        # Same weights and optimizer state, no extra variable.
        assert len(saved[0]) == len(saved[1])
        for a, b in zip(*saved, strict=True):
            np.testing.assert_array_equal(a, b)
    finally:
        if BACKEND == "tensorflow":
            # No public API turns it off again; the private switch does.
            from tensorflow.python.framework import config as tf_config

            tf_config.disable_op_determinism()


def _warnings_of_fit(model, x, y, log_dir, **kwargs):
    n = len(next(iter(x.values())) if isinstance(x, dict) else x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(
            x,
            y,
            batch_size=n,
            epochs=2,
            verbose=0,
            callbacks=[
                GradientVarianceLogger(log_dir, update_freq=1, **kwargs)
            ],
        )
    # Keras' PyTorch backend emits DeprecationWarnings of its own.
    return [
        str(w.message) for w in caught if w.category is GradientVarianceWarning
    ]


def _deep_relu(initializer, depth=30, width=64):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((16,))]
        + [
            keras.layers.Dense(
                width, activation="relu", kernel_initializer=initializer
            )
            for _ in range(depth)
        ]
        + [keras.layers.Dense(10)],
        name="deep",
    )


@pytest.mark.parametrize(
    "initializer, expected",
    [
        ("glorot_normal", "barely get a gradient"),
        ("zeros", "stay zero forever"),
        ("he_normal", None),
    ],
)
def test_warning_judges_the_initialization_once(
    tmp_path, initializer, expected
):
    # Issue 12: diagnose's rule. 30 Glorot ReLU layers: the span of the
    # variances across layers is small (every layer has the same gain
    # error), but the kernels' effective step |g|/|w| is ~1e-6.
    model = _deep_relu(initializer)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 16)).astype("float32")
    y = rng.integers(0, 10, 64)
    messages = _warnings_of_fit(model, x, y, tmp_path)
    if expected is None:
        assert messages == []
    else:
        assert len(messages) == 1 and expected in messages[0]
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    assert _warnings_of_fit(model, x, y, tmp_path / "off", warn=False) == []


_STOCK = {
    "tensorflow": ("MobileNetV2", "GPT2Backbone", "BertBackbone"),
    "torch": ("MobileNetV2", "GPT2Backbone", "BertBackbone"),
    "jax": ("GPT2Backbone",),
}


@pytest.mark.parametrize("name", _STOCK[BACKEND])
def test_warning_is_silent_on_stock_models(tmp_path, name):
    # Issue 12: "Gradient variances span 10^6.2" was raised on a stock
    # MobileNetV2 (BatchNorm after every kernel), and attention's key bias
    # (exactly-zero gradient) made transformers "span" 10^18.
    model, batch = _real_models.build(name, batch_size=4)
    if isinstance(batch, dict):
        y = keras.tree.map_structure(
            lambda t: np.zeros(t.shape, "float32"), model(batch)
        )
        model.compile(optimizer="adam", loss="mse")
    else:
        y = np.arange(4) % 10
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert _warnings_of_fit(model, batch, y, tmp_path) == []


def test_histograms_and_weight_variance(tmp_path):
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    _fit(model, tmp_path, epochs=2, histogram_freq=5, weights_freq=4)
    events = _read(tmp_path / "gradients")
    shapes = {v.path: v.shape for v in model.trainable_variables}
    for path in PATHS:
        hist = events[f"grad_histogram/{path}"]
        assert [s for s, _ in hist] == [0, 5, 10]
        size = np.prod(shapes[path])
        assert hist[0][1].shape == (30, 3)
        assert hist[0][1][:, 2].sum() == size
        # Before the first step (the initialization), then every 4 steps.
        assert _steps(events, f"weight_variance/{path}") == [0, 4, 8, 12]
    np.testing.assert_allclose(
        _value(events, "weight_variance/mlp/hidden/kernel", 12),
        np.var(keras.ops.convert_to_numpy(model.get_layer("hidden").kernel)),
        rtol=1e-5,
    )


# -------------------------------------------------------------- end to end


# Shared by the two-device scripts below: fits with the logger and reads
# the logged variances back, `got = {path: [(step, variance), ...]}`.
_FIT_AND_READ_STEP_VARIANCES = """
    model.fit(x, y, batch_size=8, shuffle=False, verbose=0,
              callbacks=[GradientVarianceLogger(log_dir, update_freq=1)])
    acc = ea.EventAccumulator(os.path.join(log_dir, "gradients"),
                              size_guidance={ea.TENSORS: 0})
    acc.Reload()
    got = {p: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
               for e in acc.Tensors("grad_variance/" + p)] for p in expected}
"""

MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util
    from keras_winit.callbacks import GradientVarianceLogger

    log_dir = sys.argv[1]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = rng.normal(size=(32, 2)).astype("float32")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([
            keras.Input((6,)),
            keras.layers.Dense(5, activation="tanh", name="hidden"),
            keras.layers.Dense(2, name="out")], name="mlp")
        model.compile(optimizer="sgd", loss="mse")
    with tf.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(y[:8], model(x[:8]))
    grads = tape.gradient(loss, model.trainable_variables)
    expected = {v.path: float(np.var(g.numpy()))
                for v, g in zip(model.trainable_variables, grads)}
    """
    + _FIT_AND_READ_STEP_VARIANCES
    + """
    print(json.dumps({"replicas": strategy.num_replicas_in_sync,
                      "expected": expected, "got": got}))
    """
)


def _run_on_two_devices(script, log_dir, backend, **env):
    """Runs `script` in a fresh process; returns its last line's JSON.

    Two CPU devices must be declared before the backend starts, which this
    test process already did.
    """
    result = subprocess.run(
        [sys.executable, "-c", script, str(log_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, KERAS_BACKEND=backend, **env),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _check_whole_batch_gradient(out):
    for path, variance in out["expected"].items():
        steps = [s for s, _ in out["got"][path]]
        assert steps == [0, 1, 2, 3], path
        # The gradient of the whole batch, not of one device's share.
        np.testing.assert_allclose(
            out["got"][path][0][1], variance, rtol=1e-4, err_msg=path
        )


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_mirrored_strategy_sums_replica_gradients(tmp_path):
    out = _run_on_two_devices(
        MIRRORED_SCRIPT, tmp_path, "tensorflow", TF_CPP_MIN_LOG_LEVEL="3"
    )
    assert out["replicas"] == 2
    _check_whole_batch_gradient(out)


MULTI_WORKER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    index, ports, log_dir = int(sys.argv[2]), sys.argv[3], sys.argv[1]
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"localhost:{p}" for p in ports.split(",")]},
        "task": {"type": "worker", "index": index}})
    import numpy as np
    import tensorflow as tf
    import keras
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util
    from keras_winit.monitoring import GradientVarianceLogger

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = rng.normal(size=(32, 2)).astype("float32")
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([
            keras.Input((6,)),
            keras.layers.Dense(5, activation="tanh", name="hidden"),
            keras.layers.Dense(2, name="out")], name="mlp")
        model.compile(optimizer="sgd", loss="mse")
    with tf.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(y[:8], model(x[:8]))
    grads = tape.gradient(loss, model.trainable_variables)
    expected = {v.path: float(np.var(g.numpy()))
                for v, g in zip(model.trainable_variables, grads)}
    # Keras 3.15: fit's `_maybe_symbolic_build` reduces the first batch
    # with MEAN, which fails under MultiWorkerMirroredStrategy ("Attempt to
    # convert a value (PerReplica...)"), with or without the logger. Build
    # first instead.
    with strategy.scope():
        model._symbolic_build(data_batch=(x[:8], y[:8]))
    model._maybe_symbolic_build = lambda *args, **kwargs: None
    # And its `reduce_per_replica` reduces the scalar logs along axis 0 under
    # the same strategy (a ValueError): reduce them locally (logs only).
    from keras.src.backend.tensorflow import trainer as tf_trainer
    tf_trainer._collective_all_reduce_multi_worker = lambda strategy: False
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    model.fit(data, verbose=0,
              callbacks=[GradientVarianceLogger(log_dir, update_freq=1)])
    print(json.dumps({"replicas": strategy.num_replicas_in_sync,
                      "index": index, "expected": expected}))
    """
)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_multi_worker_only_the_chief_writes_the_global_gradient(tmp_path):
    # Issue 14, item 4: two worker processes on localhost.
    ports = ",".join(str(p) for p in _free_ports(2))
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                MULTI_WORKER_SCRIPT,
                str(tmp_path),
                str(index),
                ports,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for index in range(2)
    ]
    outputs = []
    try:
        for worker in workers:
            out, err = worker.communicate(timeout=240)
            assert worker.returncode == 0, err[-3000:]
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    assert [o["replicas"] for o in outputs] == [2, 2]
    # One event file: the chief's.
    files = os.listdir(tmp_path / "gradients")
    assert len(files) == 1, files
    events = _read(tmp_path / "gradients")
    for path, variance in outputs[0]["expected"].items():
        tag = f"grad_variance/{path}"
        assert _steps(events, tag) == [0, 1, 2, 3]
        np.testing.assert_allclose(
            _value(events, tag, 0), variance, rtol=1e-4, err_msg=path
        )


JAX_DATA_PARALLEL_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax
    import keras
    import numpy as np
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util
    from keras_winit.callbacks import GradientVarianceLogger

    log_dir = sys.argv[1]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = rng.normal(size=(32, 2)).astype("float32")
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=jax.devices()))
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(5, activation="tanh", name="hidden"),
        keras.layers.Dense(2, name="out")], name="mlp")
    model.compile(optimizer="sgd", loss="mse")
    loss = keras.losses.MeanSquaredError()

    def loss_fn(values):
        pred, _ = model.stateless_call(values, [], x[:8])
        return loss(y[:8], pred)

    grads = jax.grad(loss_fn)([v.value for v in model.trainable_variables])
    expected = {v.path: float(np.var(g))
                for v, g in zip(model.trainable_variables, grads)}
    """
    + _FIT_AND_READ_STEP_VARIANCES
    + """
    print(json.dumps({"devices": len(jax.devices()),
                      "weight_devices": len(model.trainable_variables[0]
                                            .value.sharding.device_set),
                      "expected": expected, "got": got}))
    """
)


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution on JAX")
def test_jax_data_parallel_logs_the_global_gradient(tmp_path):
    out = _run_on_two_devices(JAX_DATA_PARALLEL_SCRIPT, tmp_path, "jax")
    assert out["devices"] == out["weight_devices"] == 2
    _check_whole_batch_gradient(out)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_tensorboard_server_shows_the_curves(tmp_path):
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    _fit(model, tmp_path, update_freq=2)
    port = _free_port()
    tensorboard = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    server = subprocess.Popen(
        [
            tensorboard,
            "--logdir",
            str(tmp_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--reload_interval",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    tag = "grad_variance/mlp/hidden/kernel"
    try:
        deadline = time.monotonic() + 90
        tags = {}
        while time.monotonic() < deadline:  # bounded polling
            assert server.poll() is None, "tensorboard exited"
            try:
                tags = _get_json(f"{base}/data/plugin/scalars/tags")
            except (urllib.error.URLError, ConnectionError):
                tags = {}
            if tag in tags.get("gradients", {}):
                break
            time.sleep(0.5)
        assert tag in tags.get("gradients", {}), tags
        for path in PATHS:
            assert f"grad_variance/{path}" in tags["gradients"]
        query = urllib.parse.urlencode({"run": "gradients", "tag": tag})
        points = _get_json(f"{base}/data/plugin/scalars/scalars?{query}")
        assert [p[1] for p in points] == [0, 2, 4]
        events = _read(tmp_path / "gradients")
        np.testing.assert_allclose(
            [p[2] for p in points], [float(v) for _, v in events[tag]]
        )
    finally:
        server.terminate()
        server.wait(timeout=30)


# ------------------------------------------- issue 13: reliability


class _Interrupt(keras.callbacks.Callback):
    """Raises `error` at the end of optimizer step `at` (another callback)."""

    def __init__(self, error, at=2):
        super().__init__()
        self.error, self.at = error, at

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.at:
            raise self.error


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_interrupted_fit_leaves_nothing_patched(tmp_path, error):
    # Issue 13, item 1.
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data()
    logger = GradientVarianceLogger(tmp_path, update_freq=1)
    with pytest.raises(error):
        model.fit(
            x,
            y,
            batch_size=BATCH,
            shuffle=False,
            verbose=0,
            callbacks=[logger, _Interrupt(error("stop"))],
        )
    assert not _wrapped(model.optimizer)
    # Records are written in groups (issue 14: the first at once, on JAX
    # fetched by the third call; then every `records.WRITE_EVERY` recorded
    # steps): the clean-up writes the rest.
    events = _read(tmp_path / "gradients")
    on_disk = [s for s, _ in events.get("grad_variance/mlp/out/kernel", [])]
    assert on_disk == [0]
    # A later plain fit removes what is left, logs nothing and trains as
    # Keras does.
    model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
    assert "make_train_function" not in model.__dict__
    assert logger._hook is None and logger._writer is None
    assert _iterations(model) == 9
    events = _read(tmp_path / "gradients")
    assert _steps(events, "grad_variance/mlp/out/kernel") == [0, 1, 2]
    assert not _wrapped(model.optimizer)


def test_new_logger_after_an_interrupted_fit(tmp_path):
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data()
    first = GradientVarianceLogger(tmp_path, update_freq=1)
    with pytest.raises(KeyboardInterrupt):
        model.fit(
            x,
            y,
            batch_size=BATCH,
            shuffle=False,
            verbose=0,
            callbacks=[first, _Interrupt(KeyboardInterrupt(), at=1)],
        )
    second = _fit(model, tmp_path, update_freq=2)
    assert first._hook is None and first._writer is None
    assert second._hook is None
    events = _read(tmp_path / "gradients")
    assert _steps(events, "grad_variance/mlp/out/kernel") == [0, 1, 2, 4, 6]
    assert not _wrapped(model.optimizer)
    assert "make_train_function" not in model.__dict__


def test_train_on_batch_after_an_interrupted_fit(tmp_path):
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data()
    logger = GradientVarianceLogger(tmp_path, update_freq=1)
    with pytest.raises(RuntimeError):
        model.fit(
            x,
            y,
            batch_size=BATCH,
            verbose=0,
            callbacks=[logger, _Interrupt(RuntimeError("stop"), at=0)],
        )
    model.train_on_batch(x[:BATCH], y[:BATCH])
    assert logger._hook is None
    assert _iterations(model) == 2
    assert "make_train_function" not in model.__dict__


def _only(caught, category):
    return [w for w in caught if issubclass(w.category, category)]


class _RemoveLogDir(keras.callbacks.Callback):
    def __init__(self, log_dir, at):
        super().__init__()
        self.log_dir, self.at, self.seen = log_dir, at, 0

    def on_train_batch_end(self, batch, logs=None):
        import shutil

        self.seen += 1
        if self.seen == self.at:
            shutil.rmtree(self.log_dir)


def test_log_dir_removed_mid_fit_warns_once_and_keeps_every_record(tmp_path):
    # Issue 13, item 2.
    from keras_winit.monitoring import EventWriterWarning

    log_dir = tmp_path / "logs"
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    with pytest.warns(EventWriterWarning, match="deleted") as caught:
        _fit(
            model,
            log_dir,
            epochs=2,
            callbacks=[_RemoveLogDir(log_dir, at=4)],
            update_freq=1,
        )
    assert len(_only(caught, EventWriterWarning)) == 1
    assert _iterations(model) == 12
    events = _read(log_dir / "gradients")
    assert _steps(events, "grad_variance/mlp/out/kernel") == list(range(12))


def test_disk_full_warns_once_and_writes_the_records_later(
    tmp_path, monkeypatch
):
    import errno

    from keras_winit.monitoring import EventWriterWarning

    failing = {"on": False}
    write = writer_module._Sink.write

    def full(sink, record):
        if failing["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(sink, record)

    class Fill(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            failing["on"] = 2 <= _iterations(self.model) < 8

    monkeypatch.setattr(writer_module._Sink, "write", full)
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    with pytest.warns(EventWriterWarning, match="No space") as caught:
        _fit(model, tmp_path, epochs=2, callbacks=[Fill()], update_freq=1)
    assert len(_only(caught, EventWriterWarning)) == 1
    assert _iterations(model) == 12
    events = _read(tmp_path / "gradients")
    assert _steps(events, "grad_variance/mlp/out/kernel") == list(range(12))


def test_unwritable_forever_warns_and_training_goes_on(tmp_path, monkeypatch):
    import errno

    from keras_winit.monitoring import EventWriterWarning

    def denied(sink, record):
        raise OSError(errno.EACCES, "Permission denied")

    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    logger = GradientVarianceLogger(tmp_path, update_freq=1)
    model.fit(*_data(), batch_size=BATCH, verbose=0, epochs=0)
    logger.set_model(model)

    class Deny(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            monkeypatch.setattr(writer_module._Sink, "write", denied)

    with pytest.warns(EventWriterWarning) as caught:
        model.fit(
            *_data(),
            batch_size=BATCH,
            verbose=0,
            callbacks=[logger, Deny()],
        )
    messages = [str(w.message) for w in _only(caught, EventWriterWarning)]
    assert len(messages) == 2, messages
    assert "Permission denied" in messages[0]
    assert "are lost" in messages[1]
    assert _iterations(model) == 6


def test_two_loggers_on_one_run_are_detected(tmp_path):
    # Issue 13, item 8.
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data()
    loggers = [GradientVarianceLogger(tmp_path) for _ in range(2)]
    with pytest.raises(ValueError, match="Another GradientVarianceLogger"):
        model.fit(x, y, batch_size=BATCH, verbose=0, callbacks=loggers)
    assert _iterations(model) == 0
    assert not _wrapped(model.optimizer)
    # One run dir at a time, also for two models.
    busy = GradientVarianceLogger(tmp_path)
    busy.set_model(model)
    busy.on_train_begin()
    other = _model(seed=2)
    other.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="interleave their steps"):
        _fit(other, tmp_path)
    busy.on_train_end()
    # After a fit, the next one on the same run is fine.
    _fit(other, tmp_path, update_freq=1)
    model.fit(x, y, batch_size=BATCH, verbose=0)
    assert _iterations(other) == _iterations(model) == 6


def test_weights_freq_emits_no_deprecation_warning(tmp_path):
    # Issue 13, item 9.
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _fit(model, tmp_path, weights_freq=1, update_freq=3)
    events = _read(tmp_path / "gradients")
    assert _steps(events, "weight_variance/mlp/out/kernel") == list(range(7))


# --------------------------------------- issue 14: one architecture


def test_one_histogram_rule_for_a_constant_tensor():
    from keras_winit.monitoring import histogram_buckets

    values = np.full((4, 5), 0.25, "float32")
    want = histogram_buckets(values, 30)
    if BACKEND == "tensorflow":
        from keras_winit.monitoring import tensorflow as hook_module

        got = keras.ops.convert_to_numpy(hook_module.histogram(values))
    elif BACKEND == "jax":
        from keras_winit.monitoring import jax as hook_module

        got = np.asarray(hook_module.histogram(values))
    else:  # PyTorch writes the histograms of the host copy.
        got = want
    np.testing.assert_allclose(got, want)
    spread = np.linspace(-1, 2, 50, dtype="float32")
    if BACKEND != "torch":
        got = keras.ops.convert_to_numpy(hook_module.histogram(spread))
        np.testing.assert_allclose(
            got, histogram_buckets(spread, 30), rtol=1e-5, atol=1e-6
        )


def _branch_operations(op):
    """The operations of the branches of `op`, a functional `tf.cond` (`If`
    or `StatelessIf`), in the graph's function library; `[]` for any other
    op."""
    found = []
    for attr in ("then_branch", "else_branch"):
        if attr in op.node_def.attr:
            name = op.node_def.attr[attr].func.name
            branch = op.graph._functions.get(name)
            if branch is not None:
                found += branch.graph.get_operations()
    return found


def _op_count(num_variables):
    """Reductions traced by the fused statistics of `num_variables`."""
    shapes = [(3, 4) if i % 2 else (4,) for i in range(num_variables)]
    grads = [np.ones(s, "float32") for s in shapes]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        from keras_winit.monitoring import tensorflow as hook_module

        graph = (
            tf.function(hook_module.fused_stats)
            .get_concrete_function(grads, grads)
            .graph
        )
        ops = [op.type for op in graph.get_operations()]
        for op in graph.get_operations():
            ops += [o.type for o in _branch_operations(op)]
        skip = {"Const", "Placeholder", "Identity", "NoOp"}
    else:
        import jax

        from keras_winit.monitoring import jax as hook_module

        jaxpr = jax.make_jaxpr(hook_module.fused_stats)(grads, grads)
        ops = []

        def walk(jp):
            for eqn in jp.eqns:
                ops.append(eqn.primitive.name)
                for param in eqn.params.values():
                    branches = param if isinstance(param, tuple) else (param,)
                    for branch in branches:
                        if hasattr(branch, "jaxpr") and hasattr(
                            branch.jaxpr, "eqns"
                        ):
                            walk(branch.jaxpr)

        walk(jaxpr.jaxpr)
        skip = {"reshape"}
    return sorted(op for op in ops if op not in skip)


def _two_pass_calls(monkeypatch):
    """The gradients TensorFlow's two-pass branch counts, one per call
    (eagerly, `tf.cond` runs the taken branch only): empty while one pass
    is exact."""
    from keras_winit.monitoring import tensorflow as hook_module

    count, calls = hook_module._count_nonfinite, []

    def spy(g, axis):
        calls.append(g)
        return count(g, axis)

    monkeypatch.setattr(hook_module, "_count_nonfinite", spy)
    return calls


def _tensorflow_stats(grads, weights):
    """TensorFlow's statistics: the graph's sums, derived on the host."""
    from keras_winit.monitoring import tensorflow as hook_module

    sums = hook_module.fused_stats(grads, weights).numpy()
    return hook_module.stats_from_sums(sums, [np.size(g) for g in grads])


@pytest.mark.parametrize("one_pass", [True, False])
def test_large_variables_statistics_match_numpy(monkeypatch, one_pass):
    # Variables of at least `LARGE_VARIABLE` entries are reduced one by one,
    # the others fused: both give NumPy's values, NaNs counted. `one_pass`:
    # no variable needs the two-pass variance (TensorFlow: the branch is
    # not taken); otherwise some do (a mean that dwarfs the spread, a
    # constant, a NaN or an inf).
    rng = np.random.default_rng(0)
    if one_pass:
        offset, spread, constant = 0.5, 1.0, 0.0
    else:
        offset, spread, constant = 1e3, 1e-2, 0.25
    grads = [
        rng.normal(size=(130, 130)).astype("float32"),
        rng.normal(size=(7,)).astype("float32"),
        rng.normal(size=(128, 200)).astype("float32"),
        # Mean >> spread: a one-pass variance would lose every digit.
        (offset + spread * rng.normal(size=(150, 150))).astype("float32"),
        np.full((129, 129), constant, "float32"),  # Variance 0.
        # Small ones, fused by size: the same cases in a group's rows.
        (offset + spread * rng.normal(size=(7,))).astype("float32"),
        rng.normal(size=(5, 3)).astype("float32"),
        np.full((15,), -2 * constant, "float32"),
        # One entry: a variance of exactly 0 (a scalar, as Keras makes).
        np.array(0.3, "float32"),
        np.array([-1.7], "float32"),
    ]
    if not one_pass:
        grads[2][3, 4] = np.nan
        grads[6][2, 1] = np.inf
    if BACKEND == "tensorflow":
        calls = _two_pass_calls(monkeypatch)
    weights = [rng.normal(size=g.shape).astype("float32") for g in grads]
    if BACKEND == "torch":
        from keras_winit.monitoring import torch as hook_module

        tensors = [keras.ops.convert_to_tensor(t) for t in grads + weights]
        got = hook_module.fused_stats(
            tensors[: len(grads)], tensors[len(grads) :]
        )
    elif BACKEND == "tensorflow":
        got = _tensorflow_stats(grads, weights)
    else:
        from keras_winit.monitoring import jax as hook_module

        got = keras.ops.convert_to_numpy(
            hook_module.fused_stats(grads, weights)
        )
    for i, (g, w) in enumerate(zip(grads, weights, strict=True)):
        with np.errstate(invalid="ignore"):  # inf - inf: NaN, as logged.
            expected = [
                np.var(g, dtype="f8"),
                np.mean(g, dtype="f8"),
                np.linalg.norm(g.astype("f8")),
                np.sum(~np.isfinite(g)),
                np.linalg.norm(w.astype("f8")),
            ]
        np.testing.assert_allclose(got[i, :5], expected, rtol=1e-4)
    assert got[4, 0] == 0.0 and got[7, 0] == 0.0
    assert got[8, 0] == 0.0 and got[9, 0] == 0.0
    if BACKEND == "tensorflow":
        assert bool(calls) is not one_pass


@pytest.mark.tensorflow_only
def test_tensorflow_one_entry_variables_keep_the_one_pass_branch(
    monkeypatch,
):
    # A scalar variable's one-pass variance is exactly 0, and `mean**2 <=
    # Var` fails for it: unless the test leaves it out, it would make every
    # recorded step take the two-pass branch (eagerly, `tf.cond` runs the
    # taken branch only: the spy sees whether it ran). NaN still takes it.
    calls = _two_pass_calls(monkeypatch)
    rng = np.random.default_rng(0)
    grads = [
        np.array(0.5, "float32"),
        np.array([-2.0], "float32"),
        rng.normal(size=(4, 3)).astype("float32"),
    ]
    stats = _tensorflow_stats(grads, grads)
    assert not calls
    np.testing.assert_array_equal(stats[:2, :2], [[0.0, 0.5], [0.0, -2.0]])
    grads[0] = np.array(np.nan, "float32")
    stats = _tensorflow_stats(grads, grads)
    assert calls
    assert np.isnan(stats[0, 0]) and stats[0, 3] == 1.0
    assert stats[1, :2].tolist() == [0.0, -2.0]


@pytest.mark.skipif(BACKEND == "torch", reason="eager: no traced graph")
def test_fused_statistics_do_not_grow_with_the_number_of_variables():
    # Issue 14, item 2: the same ops for 4 and 30 variables of two sizes
    # (on JAX, only the zero-copy reshapes feeding each size's matrix grow;
    # on TensorFlow, tensors of one shape are stacked, then reshaped once;
    # a small variable alone in its size is reduced alone, as large ones).
    assert _op_count(4) == _op_count(30)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("jit_compile", [False, True])
def test_unrecorded_steps_run_keras_train_function(tmp_path, jit_compile):
    # Issue 14, item 3: 12 steps, spe=2, update_freq=4 -> executions
    # starting at steps 0, 4, 8 record; the other three run Keras' own.
    model = _model()
    model.compile(
        optimizer="sgd",
        loss="mse",
        steps_per_execution=2,
        jit_compile=jit_compile,
    )
    from keras_winit.monitoring import tensorflow as hook_module

    calls = []
    due = hook_module.Hook._due_now

    def spy(hook):
        calls.append(due(hook))
        return calls[-1]

    import unittest.mock

    with unittest.mock.patch.object(hook_module.Hook, "_due_now", spy):
        _fit(model, tmp_path, epochs=2, update_freq=4)
    assert calls == [True, False] * 3
    events = _read(tmp_path / "gradients")
    assert _steps(events, "grad_variance/mlp/out/kernel") == [0, 4, 8]


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("spe", [1, 2, 3, 7])
@pytest.mark.parametrize("freqs", [(1, 0), (4, 0), (10, 0), (4, 6), (5, 3)])
def test_tensorflow_due_now_is_a_recorded_step_in_the_call(spe, freqs):
    # The split train function decides each call by one comparison with
    # the next recorded step; the same as asking whether any of the call's
    # steps is a multiple of `update_freq` or `histogram_freq`.
    import types

    from keras_winit.monitoring import tensorflow as hook_module

    update_freq, histogram_freq = freqs
    hook = types.SimpleNamespace(
        update_freq=update_freq,
        histogram_freq=histogram_freq,
        steps_per_execution=spe,
    )
    Hook = hook_module.Hook
    for start in range(0, 40):
        hook.next_step = start
        hook.next_due = Hook._next_due(hook, start)
        hook._step = lambda: hook.next_step
        expected = any(
            f and s % f == 0
            for s in range(start, start + spe)
            for f in (update_freq, histogram_freq)
        )
        assert Hook._due_now(hook) == expected, start


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("update_freq", [1, 3])
def test_tensorflow_update_waits_for_the_statistics(tmp_path, update_freq):
    # Issue 14: the statistics read the weights before the update; were
    # the update to run while such a read is still to be consumed,
    # TensorFlow would copy the weights first (copy-on-write: MobileNetV2
    # +15% instead of +5%). So every op of the optimizer's `apply` is
    # traced after (a control dependency on) the statistics, whose
    # reductions of a large variable are `L2Loss` ops.
    import tensorflow as tf

    from keras_winit.monitoring.records import LARGE_VARIABLE

    width = int(np.sqrt(LARGE_VARIABLE))
    model = keras.Sequential(
        [keras.Input((width,)), keras.layers.Dense(width, name="large")]
    )
    model.compile(optimizer="sgd", loss="mse")
    optimizer = model.optimizer
    apply = optimizer.apply
    seen = []

    def spy(grads, *args, **kwargs):
        if not tf.executing_eagerly():
            seen.append(tf.identity(grads[0]).op)
        return apply(grads, *args, **kwargs)

    optimizer.apply = spy
    try:
        rng = np.random.default_rng(0)
        model.fit(
            rng.normal(size=(2 * BATCH, width)).astype("float32"),
            rng.normal(size=(2 * BATCH, width)).astype("float32"),
            batch_size=BATCH,
            verbose=0,
            callbacks=[
                GradientVarianceLogger(
                    tmp_path, update_freq=update_freq, warn=False
                )
            ],
        )
    finally:
        del optimizer.apply

    def waits_for_statistics(op):
        todo, done = list(op.control_inputs), set()
        while todo:
            op = todo.pop()
            if op.name in done:
                continue
            done.add(op.name)
            if op.type == "L2Loss":
                return True
            todo += list(op.control_inputs) + [t.op for t in op.inputs]
            # Inside a functional `If` (recorded steps chosen in the
            # graph): its branches hold the reductions.
            todo += _branch_operations(op)
        return False

    # Two steps. `update_freq=1`: step 0 traces the recording function
    # that also takes `update_ratio`, step 1 the one without; both record.
    # `update_freq=3`: step 0 records, step 1 runs Keras' own function.
    recorded = [waits_for_statistics(op) for op in seen]
    assert recorded == ([True, True] if update_freq == 1 else [True, False])


# ------------------------------------- issue 15: training-health signals


def _weights(model):
    return {
        v.path: keras.ops.convert_to_numpy(v).astype("f8")
        for v in model.trainable_variables
    }


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: keras.optimizers.SGD(0.1),
        lambda: keras.optimizers.AdamW(0.01, weight_decay=0.5),
        lambda: keras.optimizers.SGD(0.1, clipnorm=0.01),
    ],
    ids=["sgd", "adamw", "sgd_clipnorm"],
)
def test_update_ratio_and_norms_match_numpy(tmp_path, optimizer):
    model = _model()
    model.compile(optimizer=optimizer(), loss="mse")
    x, y = _data(n=BATCH)
    before = _weights(model)
    grads = _numpy_grads(model, x, y)
    _fit_on(model, tmp_path, x, y, update_freq=1)
    after = _weights(model)
    events = _read(tmp_path / "gradients")
    _check_update_ratios(events, before, after)
    for path, w in before.items():
        if np.linalg.norm(w) != 0:
            np.testing.assert_allclose(
                _value(events, f"grad_weight_ratio/{path}", 0),
                np.linalg.norm(grads[path]) / np.linalg.norm(w),
                rtol=1e-4,
                err_msg=path,
            )
    # Before clipping: what `clipnorm` / `global_clipnorm` see.
    np.testing.assert_allclose(
        _value(events, "grad_summary/global_norm", 0),
        np.sqrt(sum(np.sum(g**2) for g in grads.values())),
        rtol=1e-4,
    )


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("spe", [1, 2])
@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: keras.optimizers.SGD(0.1, momentum=0.9),
        lambda: keras.optimizers.AdamW(0.01, weight_decay=0.5),
    ],
    ids=["sgd_momentum", "adamw"],
)
def test_tensorflow_update_ratio_of_large_and_small_variables(
    tmp_path, optimizer, spe, jit_compile
):
    # `update_ratio` on TensorFlow: with one step per call (split), from
    # the weights' reads kept across the update (TensorFlow copies a
    # variable before updating it in place while such a read is pending),
    # with no copy variables; with `steps_per_execution > 1`, from the
    # copy variables. Variables above and below `LARGE_VARIABLE`, reduced
    # one by one (large, or small alone in their size) or by size groups
    # (the two biases of 3), updated by `assign_sub` (SGD) and by `assign`
    # (AdamW's decay), with and without XLA.
    from keras_winit.monitoring.records import LARGE_VARIABLE

    width = int(np.sqrt(LARGE_VARIABLE))
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((width,)),
            keras.layers.Dense(width, activation="tanh", name="wide"),
            keras.layers.Dense(3, activation="tanh", name="mid"),
            keras.layers.Dense(3, name="out"),
        ]
    )
    model.compile(
        optimizer=optimizer(),
        loss="mse",
        steps_per_execution=spe,
        jit_compile=jit_compile,
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, width)).astype("float32")
    y = rng.normal(size=(BATCH, 3)).astype("float32")
    before = _weights(model)
    logger = GradientVarianceLogger(tmp_path, update_freq=1)
    copies, fused = [], []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            copies.append(hasattr(logger._hook, "snapshot"))
            fused.append(logger._hook.fused_rows)

    model.fit(
        x,
        y,
        batch_size=BATCH,
        shuffle=False,
        verbose=0,
        callbacks=[logger, Spy()],
    )
    assert copies == [spe > 1]
    assert fused == [{3, 5}]  # mid/bias, out/bias.
    after = _weights(model)
    events = _read(tmp_path / "gradients")
    assert any(w.size >= LARGE_VARIABLE for w in before.values())
    for path, w in before.items():
        assert np.linalg.norm(after[path] - w) > 0, path
    _check_update_ratios(events, before, after)


def _check_update_ratios(events, before, after):
    """The step-0 `update_ratio` of each variable: `||after - before|| /
    ||before||`, or inf for a zero weight (biases start at zero)."""
    for path, w in before.items():
        update = np.linalg.norm(after[path] - w)
        got = _value(events, f"update_ratio/{path}", 0)
        if np.linalg.norm(w) == 0:
            assert got == np.inf and update > 0, path
        else:
            np.testing.assert_allclose(
                got, update / np.linalg.norm(w), rtol=2e-3, err_msg=path
            )


def _fit_on(model, log_dir, x, y, **logger_kwargs):
    logger = GradientVarianceLogger(log_dir, **logger_kwargs)
    model.fit(
        x, y, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[logger]
    )
    return logger


class _NaNGradient(keras.layers.Layer):
    """Adds `sqrt(0 * w**2) = 0`: its output is finite, the gradient of its
    weight is `inf * 0 = NaN`, the gradient of its input is finite."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(1,), initializer="zeros", name="w")

    def call(self, x):
        return x + keras.ops.sqrt(0.0 * self.w * self.w)


def test_first_nonfinite_layer_is_named(tmp_path):
    from keras_winit.monitoring import NonFiniteGradientWarning

    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, activation="tanh", name="hidden"),
            _NaNGradient(name="mid"),
            keras.layers.Dense(2, name="out"),
        ],
        name="mlp",
    )
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data(n=BATCH)
    # warn=False: the initialization's health warning (a
    # GradientVarianceWarning for the NaN gradient) is tested elsewhere.
    with pytest.warns(NonFiniteGradientWarning, match="'mlp/mid'") as caught:
        _fit_on(model, tmp_path, x, y, update_freq=1, warn=False)
    assert len(_only(caught, NonFiniteGradientWarning)) == 1
    events = _read(tmp_path / "gradients")
    # Layers in forward order: hidden 0, mid 1, out 2.
    assert _value(events, "grad_summary/first_nonfinite_layer", 0) == 1
    assert _value(events, "grad_nonfinite/mlp/mid/w", 0) == 1
    assert _value(events, "grad_nonfinite/mlp/hidden/kernel", 0) == 0


def test_each_signal_can_be_turned_off(tmp_path):
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data(n=BATCH)
    _fit_on(model, tmp_path, x, y, signals=["grad_variance"])
    tags = set(_read(tmp_path / "gradients"))
    # The overview's custom-scalars layout (one chart: grad_variance).
    assert tags == {f"grad_variance/{p}" for p in PATHS} | {
        "grad_summary/log10_variance_ratio",
        "custom_scalars__config__",
    }


@pytest.mark.parametrize("update_freq", [1, 3])
def test_update_ratio_of_large_and_small_variables(tmp_path, update_freq):
    # A kernel of 16900 >= records.LARGE_VARIABLE entries (its own
    # snapshot and reduction) next to small ones (fused, grouped by size:
    # here sizes 130, 260, 2, 260, 130, 260, 2, interleaved).
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((130,)),
            keras.layers.Dense(130, activation="tanh", name="big"),
            keras.layers.Dense(2, activation="tanh", name="mid"),
            keras.layers.Dense(130, activation="tanh", name="up"),
            keras.layers.Dense(2, name="out"),
        ],
        name="wide",
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, 130)).astype("float32")
    y = rng.normal(size=(BATCH, 2)).astype("float32")
    before = _weights(model)
    _fit_on(model, tmp_path, x, y, update_freq=update_freq, warn=False)
    after = _weights(model)
    events = _read(tmp_path / "gradients")
    assert model.get_layer("big").kernel.shape == (130, 130)
    for path, w in before.items():
        got = _value(events, f"update_ratio/{path}", 0)
        update = np.linalg.norm(after[path] - w)
        if np.linalg.norm(w) == 0:
            assert got == np.inf and update > 0
        else:
            np.testing.assert_allclose(
                got, update / np.linalg.norm(w), rtol=2e-3, err_msg=path
            )


# ------------------------------- issue 14: cost of update_freq=1 (defaults)


@pytest.mark.parametrize(
    "update_freq, steps_per_execution",
    [
        (1, 1),
        (3, 1),
        pytest.param(
            1,
            4,
            marks=pytest.mark.skipif(
                BACKEND == "torch",
                reason="Keras' PyTorch trainer: steps_per_execution=1 only",
            ),
        ),
    ],
)
def test_default_signals_log_update_ratio_every_tenth_step(
    tmp_path, update_freq, steps_per_execution
):
    # With the defaults, update_ratio (its snapshot of the weights) only
    # every max(update_freq, 10) steps, rounded up to a multiple of
    # update_freq; listing it in `signals` logs it at every recorded step,
    # with the same values. On TensorFlow, its steps run a train function
    # of their own (chosen in Python); with steps_per_execution=4 a call of
    # it also holds steps without update_ratio.
    from keras_winit.monitoring.records import SIGNALS

    runs = {}
    for name, signals in (("defaults", None), ("all", list(SIGNALS))):
        model = _model()
        model.compile(
            optimizer="sgd",
            loss="mse",
            steps_per_execution=steps_per_execution,
        )
        _fit(
            model,
            tmp_path / name,
            epochs=2,
            update_freq=update_freq,
            warn=False,
            signals=signals,
        )
        runs[name] = _read(tmp_path / name / "gradients")
    tag = "update_ratio/mlp/out/kernel"
    every = list(range(0, 12, update_freq))
    ratio_every = 10 if update_freq == 1 else 12
    assert _steps(runs["all"], tag) == every
    assert _steps(runs["defaults"], tag) == list(range(0, 12, ratio_every))
    for name in runs:
        assert _steps(runs[name], "grad_norm/mlp/out/kernel") == every
    for step in _steps(runs["defaults"], tag):
        assert _value(runs["defaults"], tag, step) == pytest.approx(
            _value(runs["all"], tag, step), rel=1e-5
        )


@pytest.mark.skipif(BACKEND == "tensorflow", reason="tested above")
def test_unrecorded_steps_run_keras_step_on_jax_and_torch(tmp_path):
    # Issue 14: as on TensorFlow, the steps that record nothing run Keras'
    # own step (JAX: its jitted `train_step`; PyTorch: its train function,
    # nothing wrapped), decided in Python by the counted step.
    import unittest.mock

    if BACKEND == "jax":
        from keras_winit.monitoring import jax as hook_module

        name = "_due"
    else:
        from keras_winit.monitoring import torch as hook_module

        name = "_due_now"
    decide = getattr(hook_module.Hook, name)
    calls = []

    def spy(hook, *args):
        calls.append(decide(hook, *args))
        return calls[-1]

    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    with unittest.mock.patch.object(hook_module.Hook, name, spy):
        _fit(model, tmp_path, epochs=2, update_freq=4, warn=False)
    assert calls == [True, False, False, False] * 3
    events = _read(tmp_path / "gradients")
    assert _steps(events, "grad_variance/mlp/out/kernel") == [0, 4, 8]
    assert _iterations(model) == 12


@pytest.mark.parametrize("warn", [True, False])
def test_records_written_at_once_are_the_same_bytes(
    tmp_path, monkeypatch, warn
):
    # `Records.write_records` writes runs of routine records at once (one
    # array of values, summaries filled together); the events are those of
    # writing each through `write_record`, byte for byte but the wall time.
    # Defaults (update_ratio on every 10th step), histograms every 5 steps
    # (a depth profile: not routine), the first records judged (warn).
    from tensorboard.compat.proto import event_pb2

    from keras_winit.monitoring import records as records_module
    from keras_winit.monitoring import writer as writer_module

    def events(run):
        out = []
        for path in sorted((tmp_path / run / "gradients").glob("events*")):
            for payload in writer_module._payloads(path.read_bytes()):
                event = event_pb2.Event.FromString(payload)
                event.wall_time = 0
                out.append(event.SerializeToString())
        return out

    kwargs = dict(update_freq=1, histogram_freq=5, warn=warn)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24 * BATCH, 6)).astype("float32")
    y = rng.normal(size=(24 * BATCH, 2)).astype("float32")
    sizes = []
    scalar_arrays = writer_module.EventWriter.scalar_arrays

    def spy(writer, steps, tags, values):
        sizes.append(len(steps))
        return scalar_arrays(writer, steps, tags, values)

    monkeypatch.setattr(writer_module.EventWriter, "scalar_arrays", spy)
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    _fit_on(model, tmp_path / "at_once", x, y, **kwargs)
    assert max(sizes) > 1  # Some records were written at once.

    def one_by_one(hook, records):
        for record in records:
            hook.write_record(record)

    monkeypatch.setattr(records_module.Records, "write_records", one_by_one)
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    _fit_on(model, tmp_path / "one_by_one", x, y, **kwargs)
    at_once, reference = events("at_once"), events("one_by_one")
    assert len(at_once) > 24
    assert at_once == reference
