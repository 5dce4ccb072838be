"""Runs every tutorial's fast mode and checks the effect it claims.

Each `tutorials/NN_name.py` defines `main(fast=False, out=None)` returning
its key numbers; here it runs with `fast=True` (a smaller network, fewer
epochs) and the numbers must show the tutorial's point, so a change in
keras_winit that breaks a tutorial's story fails the suite.
"""

import importlib.util
import math
import os

import keras
import numpy as np
import pytest

TUTORIALS = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "tutorials"
)
LN10 = math.log(10.0)


def _load(name, monkeypatch):
    monkeypatch.syspath_prepend(TUTORIALS)
    spec = importlib.util.spec_from_file_location(
        f"tutorial_{name}", os.path.join(TUTORIALS, f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_symmetry(n):
    # Same start, same gradient, same step: the units never differ.
    assert n["zeros_distinct_units"] == [1, 1]
    assert n["constant_distinct_units"] == [1, 1]
    assert max(n["constant_max_spread_across_units"]) < 1e-4
    assert n["random_distinct_units"] == [32, 32]
    assert n["random_train_accuracy"] > n["constant_train_accuracy"] + 0.3


def check_uniform_width(n):
    # Too narrow: signal and gradients vanish toward the input.
    assert n["narrow_activation_std_layer10"] < 1e-6
    assert n["narrow_grad_ratio_layer1_to_10"] < 1e-6
    # Too wide: tanh saturates, gradients do not keep their scale.
    assert n["wide_saturated_fraction_layer10"] > 0.5
    assert n["wide_grad_ratio_layer1_to_10"] > 10
    # Scaled by 1/sqrt(n): unsaturated, gradients within a decade.
    assert n["scaled_saturated_fraction_layer10"] < 0.01
    assert 0.1 < n["scaled_grad_ratio_layer1_to_10"] < 10
    assert n["scaled_final_loss"] < 0.5
    assert abs(n["narrow_final_loss"] - LN10) < 0.1
    assert n["wide_final_loss"] > 1.0


def check_torch_default(n):
    he = n["he_val_accuracy"][-1]
    xavier = n["xavier_val_accuracy"][-1]
    torch = n["pytorch_val_accuracy"][-1]
    assert he > xavier + 0.2
    assert xavier > torch
    assert n["pytorch_std_ratio_per_layer"] < 0.85
    assert 0.95 < n["he_std_ratio_per_layer"] < 1.05


def check_glorot_bengio(n):
    # Standard init: std x sqrt(1/3) per layer; Glorot: nearly flat.
    assert 0.5 < n["standard_activation_ratio_per_layer"] < 0.65
    assert 0.88 < n["normalized_activation_ratio_per_layer"] < 1.0
    assert n["standard_grad_ratio_layer1_to_5"] < 0.2
    assert n["normalized_grad_ratio_layer1_to_5"] > 0.6


def check_he_depth(n):
    assert abs(n["depth30_xavier_final_loss"] - LN10) < 0.1
    assert n["depth30_he_final_loss"] < n["depth30_xavier_final_loss"] - 0.2
    assert 0.65 < n["depth30_xavier_std_ratio_per_layer"] < 0.75
    assert 0.93 < n["depth30_he_std_ratio_per_layer"] < 1.05


def check_kumar_sigmoid(n):
    assert n["lecun_grad_ratio_layer1_to_10"] < 1e-4
    assert (
        n["kumar_grad_ratio_layer1_to_10"]
        > 100 * n["lecun_grad_ratio_layer1_to_10"]
    )
    assert abs(n["lecun_final_loss"] - LN10) < 0.1


def check_lsuv(n):
    assert n["relu_lsuv_converged"]
    assert n["relu_lsuv_max_abs_variance_error"] < 0.02
    # Xavier stays at ln 10 on this network (checked by 05_he_depth).
    assert n["relu_lsuv_final_loss"] < LN10 - 0.3


def check_gain_table(n):
    gains, skipped = n["gains"], n["skipped"]
    public = {
        name
        for name in dir(keras.activations)
        if not name.startswith("_")
        and name not in ("get", "serialize", "deserialize")
    }
    assert set(gains) | set(skipped) == public
    assert {"softmax", "log_softmax"} <= set(skipped)
    np.testing.assert_allclose(
        [gains["relu"][m] for m in ("torch", "kumar", "moment")],
        math.sqrt(2),
        rtol=1e-6,
    )
    assert gains["tanh"]["torch"] == pytest.approx(5 / 3)
    assert gains["tanh"]["kumar"] == pytest.approx(1.0, rel=1e-6)
    assert gains["sigmoid"]["kumar"] == pytest.approx(3.5777, rel=1e-4)
    assert gains["selu"]["moment"] == pytest.approx(1.0, rel=1e-3)
    assert gains["gelu"]["torch"] is None
    assert all(g["moment"] > 0 for g in gains.values())


def check_delta_orthogonal(n):
    # Glorot: the loss stays at ln 10, accuracy at chance.
    assert abs(n["depth128_glorot_final_loss"] - LN10) < 0.05
    assert n["depth128_glorot_train_accuracy"] < 0.2
    # He (chaotic for tanh): no better than chance either.
    assert n["depth128_he_final_loss"] > LN10 - 0.1
    assert n["depth128_he_train_accuracy"] < 0.2
    # Delta-orthogonal trains.
    assert n["depth128_delta_orthogonal_final_loss"] < LN10 - 0.4
    assert n["depth128_delta_orthogonal_train_accuracy"] > 0.4
    assert n["delta_orthogonal_deepest_trained"] == 128
    assert n["glorot_deepest_trained"] == n["he_deepest_trained"] == 0


def check_residual_scaling(n):
    assert n["depth"] >= 24 and n["branches"] == n["depth"]
    # The stream at init: ×√2 per block without scaling (2^12 = 4096 at
    # 24 blocks; measured on 256 examples), ≈ (1 + 1/L)^(L/2) with gpt2,
    # constant with fixup (every branch starts at zero).
    growth = n["none_stream_growth"] ** (1 / n["depth"])
    assert 1.3 < growth < 1.5
    assert 1.2 < n["gpt2_stream_growth"] < 2.0
    np.testing.assert_allclose(n["fixup_stream_std"], n["fixup_stream_std"][0])
    # Training: "none" fails, the two rules train.
    none = n["none_final_loss"]
    assert not math.isfinite(none) or none > LN10
    assert n["none_train_accuracy"] < 0.3
    for rule in ("gpt2", "fixup"):
        assert n[f"{rule}_final_loss"] < 0.5 * LN10, rule
        assert n[f"{rule}_train_accuracy"] > 0.8, rule
        assert n[f"{rule}_val_accuracy"] > 0.8, rule


CHECKS = {
    "01_symmetry": check_symmetry,
    "02_uniform_width": check_uniform_width,
    "03_torch_default": check_torch_default,
    "04_glorot_bengio": check_glorot_bengio,
    "05_he_depth": check_he_depth,
    "06_kumar_sigmoid": check_kumar_sigmoid,
    "07_lsuv": check_lsuv,
    "08_gain_table": check_gain_table,
    "09_delta_orthogonal": check_delta_orthogonal,
    "10_residual_scaling": check_residual_scaling,
}


def test_every_tutorial_is_checked_and_documented():
    scripts = sorted(
        f[:-3]
        for f in os.listdir(TUTORIALS)
        if f.endswith(".py") and f[:2].isdigit()
    )
    assert scripts == sorted(CHECKS)
    for name in scripts:
        assert os.path.exists(os.path.join(TUTORIALS, f"{name}.md")), name


# Under JAX (XLA compiles every new shape) the suite runs a subset, within
# the test-time budget: 05 (Xavier stuck, He trains at depth 30) is the
# demo's claim, which tests/test_demo.py checks on JAX; 02 and 03 are the
# slowest. All eight run under JAX by hand (`KERAS_BACKEND=jax python
# tutorials/NN_name.py --fast`, see docs/tutorials.md).
_JAX_SUBSET = (
    "01_symmetry",
    "04_glorot_bengio",
    "06_kumar_sigmoid",
    "07_lsuv",
    "08_gain_table",
    "09_delta_orthogonal",
    "10_residual_scaling",
)


def _params():
    if keras.backend.backend() != "jax":
        return sorted(CHECKS)
    skip = pytest.mark.skip(
        reason="JAX runs a subset of the tutorials (compile time); "
        f"this suite runs {', '.join(_JAX_SUBSET)}"
    )
    return [
        n if n in _JAX_SUBSET else pytest.param(n, marks=skip)
        for n in sorted(CHECKS)
    ]


@pytest.mark.parametrize("name", _params())
def test_tutorial_fast_mode_shows_its_effect(name, tmp_path, monkeypatch):
    module = _load(name, monkeypatch)
    numbers = module.main(fast=True, out=tmp_path)
    figure = numbers["figure"]
    assert os.path.dirname(figure) == str(tmp_path)
    assert os.path.getsize(figure) > 1000
    CHECKS[name](numbers)
