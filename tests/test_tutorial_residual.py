"""Tutorial 10 (residual scaling): its fast mode shows its claim.

A 24-block residual MLP without normalization: with `residual="none"` the
stream's std grows ×√2 per block and SGD fails (NaN or no better than a
uniform guess); with `"gpt2"` the stream grows by about `e^(1/2)` in all
and with `"fixup"` not at all, and both train. Runs on every backend.
"""

import importlib.util
import math
import os

import numpy as np
import pytest

TUTORIALS = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "tutorials"
)
LN10 = math.log(10.0)


def _load(monkeypatch):
    monkeypatch.syspath_prepend(TUTORIALS)
    path = os.path.join(TUTORIALS, "10_residual_scaling.py")
    spec = importlib.util.spec_from_file_location("tutorial_10", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_fast_mode_shows_the_claim(tmp_path, monkeypatch):
    n = _load(monkeypatch).main(fast=True, out=tmp_path)
    assert n["depth"] >= 24 and n["branches"] == n["depth"]
    assert os.path.getsize(n["figure"]) > 1000
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
