"""Tests of `keras-winit demo` (keras_winit/demo.py) and of its data, model
and statistics helpers (keras_winit/experiments.py), on every backend."""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_winit
from keras_winit import cli
from keras_winit import experiments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LN10 = math.log(10.0)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # Measured on the shared 2-core machine: a 10 x Dense(128) net trains
    # 4 epochs in 0.9 s with one PyTorch thread and in 18-39 s with two
    # (OpenMP threads spinning against the other processes). Small nets
    # gain nothing from a second thread.
    if keras.backend.backend() != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _event_files(run_dir):
    if not os.path.isdir(run_dir):
        return []
    return [f for f in os.listdir(run_dir) if "tfevents" in f]


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="backend-independent path (the figure is skipped); on JAX and "
    "PyTorch the demo runs in test_demo_command_shows_glorot_stuck_and_he_"
    "training",
)
def test_demo_without_matplotlib_skips_figure(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    status = cli.main(
        [
            "demo",
            "--depth",
            "2",
            "--width",
            "4",
            "--epochs",
            "1",
            "--initializers",
            "he_uniform",
            "--quiet",
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert status == 0
    assert "Figure skipped" in capsys.readouterr().out
    assert not (tmp_path / "demo.png").exists()
    assert (tmp_path / "summary.txt").exists()


def test_demo_without_sklearn_says_what_to_install(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    status = cli.main(["demo", "--output-dir", str(tmp_path)])
    assert status == 1
    assert "pip install 'keras-winit[tutorials]'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--depth", "0"],
        ["--width", "-3"],
        ["--epochs", "two"],
        ["--learning-rate", "0"],
        ["--initializers", "orthogonal"],
    ],
)
def test_demo_rejects_bad_options(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", *argv])
    assert e.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_load_digits_split_is_standardized_and_stratified():
    x, y, x_val, y_val = experiments.load_digits_split(seed=1)
    assert x.shape == (1438, 64) and x_val.shape == (359, 64)
    assert x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)
    stds = x.std(axis=0)
    np.testing.assert_allclose(stds[stds > 0], 1.0, atol=1e-4)
    assert set(np.bincount(y_val)) <= {35, 36, 37}
    again = experiments.load_digits_split(seed=1)
    np.testing.assert_array_equal(again[1], y)
    other = experiments.load_digits_split(seed=2)
    assert not np.array_equal(other[1], y)


@pytest.mark.parametrize("fraction", [0, 1.0, 0.5j, "0.2"])
def test_load_digits_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="validation_fraction"):
        experiments.load_digits_split(validation_fraction=fraction)


def test_layer_statistics_shows_glorot_shrinking_relu_signal():
    x, y, _, _ = experiments.load_digits_split(seed=0)
    stds = {}
    for name, cls in (
        ("glorot", keras_winit.GlorotNormal),
        ("he", keras_winit.HeNormal),
    ):
        model = experiments.build_mlp(10, 128, cls(seed=0))
        stats = experiments.layer_statistics(model, x[:500], y[:500])
        assert len(stats["kernel_grad_variance"]) == 11
        stds[name] = stats["activation_std"][:-1]
    # He keeps the ReLU signal; Glorot halves its variance per layer.
    he_ratio = (stds["he"][-1] / stds["he"][0]) ** (1 / 9)
    glorot_ratio = (stds["glorot"][-1] / stds["glorot"][0]) ** (1 / 9)
    assert 0.9 < he_ratio < 1.1
    assert 0.6 < glorot_ratio < 0.8


def test_build_mlp_per_layer_bias_and_validation():
    seen = []

    def bias(fan_in):
        seen.append(fan_in)
        return keras.initializers.Constant(float(fan_in))

    model = experiments.build_mlp(
        2, 5, "zeros", bias_initializer=bias, input_dim=7
    )
    assert seen == [7, 5, 5]
    np.testing.assert_array_equal(model.layers[0].bias.numpy(), 7.0)
    with pytest.raises(ValueError, match="depth"):
        experiments.build_mlp(0, 5, "zeros")


@pytest.mark.slow
def test_demo_command_shows_glorot_stuck_and_he_training(tmp_path):
    # `python -m keras_winit demo` itself, on this suite's backend (CI runs
    # the suite under KERAS_BACKEND=tensorflow, jax and torch), on a
    # 20-layer ReLU net small enough for seconds. Glorot halves the
    # signal's variance per layer (2**-10 in std after 20 layers): the
    # softmax is uniform and the loss stays at ln 10; He's init trains.
    backend = keras.backend.backend()
    env = {**os.environ, "KERAS_BACKEND": backend}
    env["PYTHONPATH"] = os.pathsep.join(
        [ROOT] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    if backend == "torch":
        env["OMP_NUM_THREADS"] = "1"  # see `_one_torch_thread`
    out = tmp_path / "demo"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_winit",
            "demo",
            *("--depth", "20", "--width", "32", "--epochs", "4"),
            *("--batch-size", "32", "--learning-rate", "0.01"),
            *("--output-dir", str(out)),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    printed = completed.stdout
    assert f"{backend} backend" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["backend"] == backend
    assert results["config"]["depth"] == 20
    glorot = results["results"]["glorot_normal"]
    he = results["results"]["he_normal"]
    assert abs(glorot["loss"][-1] - LN10) < 0.01
    assert abs(glorot["val_loss"][-1] - LN10) < 0.01
    assert he["loss"][-1] < LN10 - 0.5
    assert he["val_accuracy"][-1] > glorot["val_accuracy"][-1] + 0.2
    # At init: the last hidden layer's signal has all but vanished.
    assert glorot["init_activation_std"][19] < 1e-2
    assert he["init_activation_std"][19] > 0.1
    summary = (out / "summary.txt").read_text()
    assert summary.strip() in printed
    for name in ("glorot_normal", "he_normal"):
        assert name in summary
        assert f"[{name}] epoch 4/4" in printed
        assert len(results["results"][name]["init_kernel_grad_variance"]) == 21
        assert all(v > 0 for v in he["init_kernel_grad_variance"])
        for run in ("gradients", "train", "validation"):
            assert _event_files(out / "logs" / name / run), run
    assert "tensorboard --logdir" in printed
    assert (out / "demo.png").stat().st_size > 1000


def test_layer_statistics_output_gradient_is_softmax_minus_onehot():
    # dC/ds of the mean cross-entropy of a softmax is (p - onehot(y)) / n:
    # checks the probe's loss, gradients and their order on every backend.
    keras.utils.set_random_seed(0)
    model = experiments.build_mlp(2, 8, keras_winit.HeNormal(seed=3))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 64)).astype("float32")
    y = np.array([0, 1, 2, 3, 9, 9], dtype="int32")
    stats = experiments.layer_statistics(model, x, y)
    p = stats["activations"][-1]
    onehot = np.eye(10)[y]
    np.testing.assert_allclose(
        stats["preactivation_grads"][-1], (p - onehot) / 6, atol=1e-6
    )
    np.testing.assert_allclose(
        stats["loss"], -np.mean(np.log(p[np.arange(6), y])), rtol=1e-5
    )
    h = stats["activations"][0]
    np.testing.assert_allclose(
        stats["preactivations"][1],
        h @ keras.ops.convert_to_numpy(model.layers[1].kernel),
        rtol=1e-4,
        atol=1e-5,
    )
    np.testing.assert_allclose(h, np.maximum(stats["preactivations"][0], 0))
    # The weights are not changed by the pass.
    again = experiments.layer_statistics(model, x, y)
    np.testing.assert_array_equal(
        again["activation_std"], stats["activation_std"]
    )


@pytest.mark.parametrize(
    "model, match",
    [
        (
            keras.Sequential([keras.Input((4,)), keras.layers.Flatten()]),
            "Dense",
        ),
        ("not a model", "model"),
        (
            keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]),
            "softmax",
        ),
    ],
)
def test_layer_statistics_rejects_other_models(model, match):
    with pytest.raises(ValueError, match=match):
        experiments.layer_statistics(model, np.ones((2, 4)), np.zeros(2))


def test_layer_statistics_rejects_mismatched_labels():
    model = experiments.build_mlp(1, 4, "ones")
    with pytest.raises(ValueError, match="Argument `y`"):
        experiments.layer_statistics(
            model, np.ones((3, 64), "float32"), np.zeros(2, "int32")
        )
