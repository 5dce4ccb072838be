"""Smoke tests of `keras-winit demo` (keras_winit/demo.py)."""

import json
import math
import os
import sys

import numpy as np
import pytest

from keras_winit import cli
from keras_winit import demo


def _event_files(run_dir):
    if not os.path.isdir(run_dir):
        return []
    return [f for f in os.listdir(run_dir) if "tfevents" in f]


@pytest.mark.tensorflow_only  # tf.GradientTape, tf.summary
def test_demo_writes_table_figure_and_logs(tmp_path, capsys):
    out = tmp_path / "demo"
    status = cli.main(
        [
            "demo",
            "--depth",
            "3",
            "--width",
            "8",
            "--epochs",
            "2",
            "--batch-size",
            "256",
            "--output-dir",
            str(out),
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    summary = (out / "summary.txt").read_text()
    assert summary.strip() in printed
    for name in ("glorot_normal", "he_normal"):
        assert name in summary
        assert f"[{name}] epoch 2/2" in printed
        for run in ("gradients", "train", "validation"):
            assert _event_files(out / "logs" / name / run), run
    assert "tensorboard --logdir" in printed
    assert (out / "demo.png").stat().st_size > 1000
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["depth"] == 3
    for r in results["results"].values():
        assert len(r["loss"]) == 2
        assert len(r["init_kernel_grad_variance"]) == 4
        assert all(v > 0 for v in r["init_kernel_grad_variance"])
        assert math.isfinite(r["val_accuracy"][-1])


@pytest.mark.tensorflow_only  # tf.GradientTape, tf.summary
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
    x, y, x_val, y_val = demo.load_digits_split(seed=1)
    assert x.shape == (1438, 64) and x_val.shape == (359, 64)
    assert x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)
    stds = x.std(axis=0)
    np.testing.assert_allclose(stds[stds > 0], 1.0, atol=1e-4)
    assert set(np.bincount(y_val)) <= {35, 36, 37}
    again = demo.load_digits_split(seed=1)
    np.testing.assert_array_equal(again[1], y)
    other = demo.load_digits_split(seed=2)
    assert not np.array_equal(other[1], y)


@pytest.mark.parametrize("fraction", [0, 1.0, 0.5j, "0.2"])
def test_load_digits_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="validation_fraction"):
        demo.load_digits_split(validation_fraction=fraction)


@pytest.mark.tensorflow_only  # tf.GradientTape, tf.summary
def test_layer_statistics_shows_glorot_shrinking_relu_signal():
    import keras_winit

    x, y, _, _ = demo.load_digits_split(seed=0)
    stds = {}
    for name, cls in (
        ("glorot", keras_winit.GlorotNormal),
        ("he", keras_winit.HeNormal),
    ):
        model = demo.build_mlp(10, 128, cls(seed=0))
        stats = demo.layer_statistics(model, x[:500], y[:500])
        assert len(stats["kernel_grad_variance"]) == 11
        stds[name] = stats["activation_std"][:-1]
    # He keeps the ReLU signal; Glorot halves its variance per layer.
    he_ratio = (stds["he"][-1] / stds["he"][0]) ** (1 / 9)
    glorot_ratio = (stds["glorot"][-1] / stds["glorot"][0]) ** (1 / 9)
    assert 0.9 < he_ratio < 1.1
    assert 0.6 < glorot_ratio < 0.8


def test_build_mlp_per_layer_bias_and_validation():
    import keras

    seen = []

    def bias(fan_in):
        seen.append(fan_in)
        return keras.initializers.Constant(float(fan_in))

    model = demo.build_mlp(2, 5, "zeros", bias_initializer=bias, input_dim=7)
    assert seen == [7, 5, 5]
    np.testing.assert_array_equal(model.layers[0].bias.numpy(), 7.0)
    with pytest.raises(ValueError, match="depth"):
        demo.build_mlp(0, 5, "zeros")
