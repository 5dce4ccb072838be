"""Tests of keras_winit.monitoring.ActivationHistogramLogger."""

import os

import keras
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from keras_winit.monitoring import ActivationHistogramLogger

L = keras.layers


def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = rng.normal(size=(n, 1)).astype("float32")
    return x, y


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            L.Dense(16, activation="tanh", name="hidden"),
            L.Dense(6, name="linear"),
            L.Activation("relu", name="act"),
            L.Dense(1, name="out"),
        ]
    )
    model.compile(optimizer="sgd", loss="mse")
    return model


def _read(run_dir):
    acc = event_accumulator.EventAccumulator(
        run_dir, size_guidance={event_accumulator.TENSORS: 0}
    )
    acc.Reload()
    return acc


def _fit(model, callbacks, epochs=3):
    x, y = _data()
    model.fit(
        x, y, epochs=epochs, batch_size=40, callbacks=callbacks, verbose=0
    )


def test_histograms_are_readable_with_expected_tags(tmp_path):
    model = _model()
    x, _ = _data()
    logger = ActivationHistogramLogger(
        tmp_path, x_probe=x, epochs=(0, 2), num_examples=100, buckets=12
    )
    _fit(model, [logger])
    assert logger.logged_steps == [0, 2]
    acc = _read(os.path.join(tmp_path, "gradients"))
    tags = set(acc.Tags()["tensors"])
    units = {"hidden": 16, "linear": 6, "act": 6, "out": 1}
    for name, width in units.items():
        # A layer without weights has no Keras path: parent path / name.
        path = f"{model.path or model.name}/{name}"
        for prefix in ("activations", "backprop_gradients"):
            tag = f"{prefix}/{path}"
            assert tag in tags, (tag, sorted(tags))
            events = acc.Tensors(tag)
            assert [e.step for e in events] == [0, 2]
            hist = tensor_util.make_ndarray(events[0].tensor_proto)
            assert hist.shape == (12, 3)
            # Counts: one per value of the 100 probe examples.
            assert hist[:, 2].sum() == pytest.approx(100 * width)


def test_activation_histogram_matches_the_layer_output(tmp_path):
    model = _model()
    x, _ = _data()
    logger = ActivationHistogramLogger(tmp_path, x_probe=x, epochs=(0,))
    logger.set_model(model)
    logger.on_train_begin()
    logger.on_train_end()
    acc = _read(logger.run_dir)
    path = model.get_layer("hidden").path
    hist = tensor_util.make_ndarray(
        acc.Tensors(f"activations/{path}")[0].tensor_proto
    )
    kernel, bias = (
        keras.ops.convert_to_numpy(w) for w in model.get_layer("hidden").weights
    )
    a = np.tanh(x[:300] @ kernel + bias)
    assert hist[0, 0] == pytest.approx(a.min(), abs=1e-5)
    assert hist[-1, 1] == pytest.approx(a.max(), abs=1e-5)
    assert hist[:, 2].sum() == pytest.approx(a.size)


def test_every_and_iteration_steps(tmp_path):
    model = _model()
    x, y = _data()
    logger = ActivationHistogramLogger(
        tmp_path, x_probe=x, y_probe=y, every=2, step_unit="iteration"
    )
    _fit(model, [logger], epochs=4)
    # 120 examples / batch 40 = 3 optimizer steps per epoch.
    assert logger.logged_steps == [0, 6, 12]
    acc = _read(logger.run_dir)
    tag = f"backprop_gradients/{model.get_layer('out').path}"
    assert [e.step for e in acc.Tensors(tag)] == [0, 6, 12]


def test_shares_the_run_with_gradient_logger_and_tensorboard(tmp_path):
    from keras_winit.monitoring import GradientVarianceLogger

    model = _model()
    x, _ = _data()
    callbacks = [
        keras.callbacks.TensorBoard(os.fspath(tmp_path), update_freq=1000),
        GradientVarianceLogger(tmp_path, update_freq=1),
        ActivationHistogramLogger(tmp_path, x_probe=x, epochs=(1, 2)),
    ]
    _fit(model, callbacks, epochs=2)
    acc = _read(os.path.join(tmp_path, "gradients"))
    tags = acc.Tags()["tensors"]
    assert any(t.startswith("grad_variance/") for t in tags)
    path = model.get_layer("hidden").path
    assert [e.step for e in acc.Tensors(f"activations/{path}")] == [1, 2]


def test_default_is_every_epoch_and_custom_run_name(tmp_path):
    model = _model()
    x, _ = _data()
    logger = ActivationHistogramLogger(tmp_path, x_probe=x, run_name="probe")
    _fit(model, [logger], epochs=2)
    assert logger.logged_steps == [0, 1, 2]
    assert os.path.isdir(os.path.join(tmp_path, "probe"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"x_probe": None}, "x_probe"),
        ({"log_dir": ""}, "log_dir"),
        ({"epochs": (0,), "every": 2}, "either"),
        ({"epochs": (-1,)}, "epochs"),
        ({"epochs": 3}, "epochs"),
        ({"epochs": ()}, "epochs"),
        ({"every": 0}, "every"),
        ({"num_examples": 0}, "num_examples"),
        ({"buckets": 1.5}, "buckets"),
        ({"run_name": "a/b"}, "run_name"),
        ({"run_name": ".."}, "Received: run_name='..'"),
        ({"run_name": "."}, "Received: run_name='.'"),
        ({"step_unit": "batch"}, "step_unit"),
        ({"training": "yes"}, "training"),
        ({"seed": -3}, "seed"),
        ({"num_examples": 1}, "at least 2"),
        ({"y_probe": np.zeros((5, 1))}, "same number"),
    ],
)
def test_invalid_arguments(tmp_path, kwargs, match):
    x, _ = _data()
    arguments = {"log_dir": tmp_path, "x_probe": x, **kwargs}
    with pytest.raises(ValueError, match=match):
        ActivationHistogramLogger(**arguments)


def test_unbuilt_model_is_rejected(tmp_path):
    x, _ = _data()
    logger = ActivationHistogramLogger(tmp_path, x_probe=x)
    logger.set_model(keras.Sequential([L.Dense(2)]))
    with pytest.raises(ValueError, match="built"):
        logger.on_train_begin()


def test_unwritable_log_dir_fails_before_the_first_step(tmp_path):
    # Issue 13, item 8: it fails in `on_train_begin`, not after the epochs
    # it was told to wait for, and names `log_dir`.
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    model = _model()
    x, _ = _data()
    logger = ActivationHistogramLogger(blocker / "logs", x_probe=x, epochs=(3,))
    with pytest.raises(ValueError, match="cannot write to `log_dir`"):
        _fit(model, [logger], epochs=3)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0


def test_shims_keep_the_public_names():
    from keras_winit import callbacks
    from keras_winit import monitoring
    from keras_winit import probes

    assert probes.ActivationHistogramLogger is ActivationHistogramLogger
    assert callbacks.GradientVarianceLogger is monitoring.GradientVarianceLogger
