"""GradientVarianceLogger's warning: `diagnose`'s rule on fit's first batch.

Issue 12: the warning must predict "will not train" as `diagnose` does.
Gradients alone miss a residual stream that explodes or saturating units;
the logger judges the first batch of `fit` with `diagnose` (before its
step, outside the train function) and the first step's gradients, in one
message. Training must be unchanged by it.
"""

import warnings

import keras
import numpy as np
import pytest

from benchmarks import trainability
from keras_winit import health
from keras_winit.monitoring import GradientVarianceLogger
from keras_winit.monitoring import GradientVarianceWarning
from keras_winit.monitoring import callback as callback_module
from keras_winit.monitoring import first_batch
from tests import _real_models

BACKEND = keras.backend.backend()
_LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _fit(model, x, y, log_dir, batch_size=64, epochs=1, **kwargs):
    """Fits; returns the GradientVarianceWarning messages and the logger."""
    logger = GradientVarianceLogger(str(log_dir), **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(
            x,
            y,
            batch_size=batch_size,
            epochs=epochs,
            verbose=0,
            shuffle=False,
            callbacks=[logger],
        )
    messages = [
        str(w.message)
        for w in caught
        if issubclass(w.category, GradientVarianceWarning)
    ]
    return messages, logger


@pytest.fixture(scope="module")
def digits():
    (x, y), _ = trainability.digits()
    return x[:64], y[:64]


def _zoo_case(name):
    model, task = trainability.build(name)
    trainability.compile_case(model, task)
    return model


# The zoo's failures; the last two are missed by the gradient rule alone
# (benchmarks/trainability.py: warning recall 0.71 without the probe).
# Under JAX (every eager op compiles: ~18 s for the 30-layer MLP), the two
# only the probe sees; tests/test_callbacks.py fits the 30-layer Glorot
# ReLU MLP with the logger on every backend.
_FAILURES = [
    ("mlp30-relu-glorot", "vanishing_activations", True),
    ("resnet16-plain", "exploding_stream", False),
    ("mlp10-sigmoid-kumar", "saturated", False),
][1 if BACKEND == "jax" else 0 :]
# Backend-independent logic of the callback: not repeated under JAX.
_not_jax = pytest.mark.skipif(
    BACKEND == "jax", reason="callback logic, tested on TF and PyTorch"
)


@pytest.mark.parametrize("name, kind, by_gradients", _FAILURES)
def test_warns_with_diagnose_advice(tmp_path, digits, name, kind, by_gradients):
    x, y = digits
    model = _zoo_case(name)
    messages, logger = _fit(model, x, y, tmp_path)
    assert logger._probe_skipped is None
    assert len(messages) == 1, messages
    message = messages[0]
    assert message.startswith("On the first batch of `fit`"), message
    assert kind.replace("_", " ") in message
    assert health.ADVICE[kind] in message
    # The gradient rule's part is there exactly when it finds something.
    assert ("At optimizer step 0:" in message) == by_gradients, message


def _bn_dropout_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.3, seed=1),
            keras.layers.Dense(10),
        ]
    )


class _BatchLogs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append(dict(logs))


_SPE = [1, 2] if BACKEND != "torch" else [1]


@pytest.mark.parametrize("steps_per_execution", _SPE)
def test_training_is_unchanged_by_the_warning(
    tmp_path, digits, steps_per_execution
):
    # BatchNorm's moving statistics, the dropout's seed state, the
    # optimizer's step and the metrics: the same with and without the
    # probe, after 4 steps (the first execution holds 2 with
    # steps_per_execution=2: the batches taken for the probe are all run).
    x, y = digits
    results = []
    for warn in (True, False):
        model = _bn_dropout_model()
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=_LOSS,
            metrics=["accuracy"],
            steps_per_execution=steps_per_execution,
        )
        history = _BatchLogs()
        with warnings.catch_warnings():
            # Healthy: no GradientVarianceWarning (an error under pytest).
            model.fit(
                x,
                y,
                batch_size=16,
                epochs=1,
                verbose=0,
                shuffle=False,
                callbacks=[
                    GradientVarianceLogger(
                        str(tmp_path / str(warn)), update_freq=1, warn=warn
                    ),
                    history,
                ],
            )
        assert int(model.optimizer.iterations) == 4
        results.append(
            (
                [keras.ops.convert_to_numpy(v) for v in model.weights],
                history.logs,
            )
        )
    (weights_on, logs_on), (weights_off, logs_off) = results
    assert len(weights_on) == len(weights_off)
    for a, b in zip(weights_on, weights_off, strict=True):
        np.testing.assert_array_equal(a, b)
    assert logs_on == logs_off


@pytest.mark.tensorflow_only
def test_tensorflow_batch_taken_without_retracing(tmp_path, digits):
    # The batch is replayed through a dataset of the same element_spec:
    # Keras' traced train function is reused, no trace is added.
    x, y = digits
    traces = []
    for warn in (True, False):
        model = _bn_dropout_model()
        model.compile(optimizer="sgd", loss=_LOSS)
        count = [0]
        step = model.train_step

        def train_step(data, step=step, count=count):
            count[0] += 1  # Python runs only while tracing.
            return step(data)

        model.train_step = train_step
        messages, _ = _fit(
            model, x, y, tmp_path / str(warn), batch_size=16, warn=warn
        )
        assert messages == []
        traces.append(count[0])
    assert traces[0] == traces[1] > 0


@pytest.mark.tensorflow_only
def test_distributed_falls_back_to_the_gradient_rule(tmp_path, digits):
    import tensorflow as tf

    x, y = digits
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = _zoo_case("mlp10-relu-zeros")
    messages, logger = _fit(model, x, y, tmp_path)
    assert logger._probe_skipped is not None
    assert len(messages) == 1
    assert messages[0].startswith("At optimizer step 0: All kernels are zero")


@_not_jax
def test_failing_probe_falls_back_and_training_goes_on(
    tmp_path, digits, monkeypatch
):
    def broken(*args, **kwargs):
        raise RuntimeError("probe broke")

    monkeypatch.setattr(first_batch, "check", broken)
    x, y = digits
    model = _zoo_case("mlp10-relu-zeros")
    messages, logger = _fit(model, x, y, tmp_path)
    assert "probe broke" in logger._probe_skipped
    assert int(model.optimizer.iterations) == 1
    assert len(messages) == 1
    assert messages[0].startswith("At optimizer step 0: All kernels are zero")


def test_flags_without_a_recorded_step_are_raised_at_the_end(tmp_path, digits):
    # No step of this fit is recorded (steps 5..6, update_freq=100): the
    # first batch's findings are raised when `fit` ends.
    x, y = digits
    model = _zoo_case("mlp10-sigmoid-kumar")
    model.optimizer.iterations.assign(5)
    messages, _ = _fit(model, x, y, tmp_path, batch_size=32, update_freq=100)
    assert len(messages) == 1
    assert "saturated" in messages[0]
    assert "At optimizer step" not in messages[0]


@_not_jax
@pytest.mark.parametrize("warn", [False, "gradients"])
def test_warn_false_or_gradients_skips_the_probe(
    tmp_path, digits, monkeypatch, warn
):
    calls = []
    monkeypatch.setattr(
        first_batch, "check", lambda *a, **k: calls.append(1) or []
    )
    x, y = digits
    model = _zoo_case("mlp10-sigmoid-kumar")
    messages, logger = _fit(model, x, y, tmp_path, warn=warn)
    assert messages == [] and calls == [] and not logger._probed


@_not_jax
def test_warn_gradients_keeps_the_gradient_rule(tmp_path, digits):
    x, y = digits
    model = _zoo_case("mlp30-relu-glorot")
    messages, logger = _fit(model, x, y, tmp_path, warn="gradients")
    assert not logger._probed
    assert len(messages) == 1, messages
    assert messages[0].startswith("At optimizer step 0")


def test_health_warning_combines_flags_and_records():
    from keras_winit.diagnostics import Flag

    flags = [Flag(f"m/add_{i}", "exploding_stream", 150.0, 100.0) for i in (1,)]
    message = callback_module.health_warning([], {}, 0, flags)
    assert message == (
        "On the first batch of `fit` (keras_winit.diagnose's rule): "
        "exploding stream at m/add_1 (150 > 100): "
        + health.ADVICE["exploding_stream"]
    )
    assert callback_module.health_warning([], {}, 0, []) is None
    assert callback_module.health_warning([], {}, 0) is None


# Stock models: the probe (compiled loss, fit's batch) flags nothing.
# Eager passes under JAX compile every op (minutes for a convnet on the
# CI's cores, 13-30 s per backbone): none here under JAX, where
# tests/test_callbacks.py fits GPT-2 with the logger (so probes it).
_STOCK = {
    "tensorflow": _real_models.ALL,
    "jax": (),
    "torch": _real_models.ALL,
}[BACKEND]


@pytest.mark.parametrize("name", _STOCK)
def test_first_batch_check_is_silent_on_stock_models(name):
    model, batch = _real_models.build(name, batch_size=4)
    if name in _real_models.APPLICATIONS:
        y = np.arange(4) % 10
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    else:
        # A backbone's sequence output: regressed to zeros.
        y = keras.tree.map_structure(
            lambda t: np.zeros(t.shape, "float32"), model(batch)
        )
        model.compile(optimizer="adam", loss="mse")
    before = [keras.ops.convert_to_numpy(v) for v in model.weights]
    with warnings.catch_warnings():
        # Keras' own warnings of an eager pass are not ours.
        warnings.simplefilter("ignore", UserWarning)
        flags = first_batch.check(model, (batch, y))
    assert flags == [], "\n".join(map(str, flags))
    for v, value in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), value)
