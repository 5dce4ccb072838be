"""keras_winit on every Keras backend: TensorFlow, JAX and PyTorch.

A test process has one backend (Keras reads `KERAS_BACKEND` at import), so
CI runs the suite once per backend. The cross-backend test saves a `.keras`
model under this process' backend and loads it in a subprocess under the
next backend of the cycle tensorflow -> jax -> torch -> tensorflow: one
subprocess per run, and over the three runs every backend both writes and
reads a file written by another.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_winit
from keras_winit import initializers
from tests import _models

BACKEND = keras.backend.backend()
NEXT_BACKEND = {"tensorflow": "jax", "jax": "torch", "torch": "tensorflow"}
MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def _installed(backend):
    return importlib.util.find_spec(MODULES[backend]) is not None


def test_backend_is_the_requested_one():
    requested = os.environ.get("KERAS_BACKEND")
    if requested:
        assert BACKEND == requested
    assert BACKEND in NEXT_BACKEND


@pytest.mark.parametrize("cls", initializers.ALL_INITIALIZERS)
def test_initializers_return_native_tensors(cls):
    values = cls(seed=5)((64, 32), dtype="float32")
    assert keras.ops.is_tensor(values)
    assert keras.backend.standardize_dtype(values.dtype) == "float32"
    again = cls(seed=5)((64, 32), dtype="float32")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(values), keras.ops.convert_to_numpy(again)
    )


def test_variables_and_layers_use_the_backend():
    layer = keras.layers.Dense(
        8, kernel_initializer=keras_winit.HeNormal(seed=1)
    )
    layer.build((None, 16))
    assert keras.ops.is_tensor(layer.kernel.value)
    std = float(np.std(keras.ops.convert_to_numpy(layer.kernel)))
    assert 0.5 * np.sqrt(2 / 16) < std < 1.5 * np.sqrt(2 / 16)


LOADER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras
    import keras_winit

    path, out_dir = sys.argv[1:3]
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.load(out_dir + "/x.npy")
    np.save(out_dir + "/y_loaded.npy", keras.ops.convert_to_numpy(loaded(x)))
    np.savez(out_dir + "/weights.npz", *loaded.get_weights())
    with open(out_dir + "/config.json", "w") as f:
        json.dump(
            {
                "backend": keras.backend.backend(),
                "model": json.loads(loaded.to_json())["config"],
            },
            f,
        )
    # The loaded config builds a fresh model: its initializers draw here.
    fresh = keras.Model.from_config(loaded.get_config())
    kernel = fresh.layers[-2].kernel
    init = fresh.layers[-2].kernel_initializer
    std = float(np.std(keras.ops.convert_to_numpy(kernel)))
    with open(out_dir + "/fresh.json", "w") as f:
        json.dump(
            {
                "type": type(init).__name__,
                "std": std,
                "target": init.target_stddev(tuple(kernel.shape)),
            },
            f,
        )
    print("loaded under", keras.backend.backend())
    """
)


@pytest.mark.slow
def test_saved_here_loads_under_next_backend(tmp_path):
    target = NEXT_BACKEND[BACKEND]
    if not _installed(target):
        pytest.skip(f"backend {target!r} is not installed")
    model = _models.build_model(seed=1)
    path = str(tmp_path / "model.keras")
    model.save(path)
    x = np.random.default_rng(2).normal(size=(4, 8, 8, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ, KERAS_BACKEND=target, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", LOADER, path, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"loaded under {target}" in result.stdout

    with open(tmp_path / "config.json") as f:
        loaded = json.load(f)
    assert loaded["backend"] == target
    assert loaded["model"] == json.loads(model.to_json())["config"]
    with np.load(tmp_path / "weights.npz") as data:
        weights = [data[f"arr_{i}"] for i in range(len(data.files))]
    expected = model.get_weights()
    assert len(weights) == len(expected)
    for a, b in zip(weights, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(
        np.load(tmp_path / "y_loaded.npy"),
        keras.ops.convert_to_numpy(model(x)),
        rtol=1e-4,
        atol=1e-5,
    )
    with open(tmp_path / "fresh.json") as f:
        fresh = json.load(f)
    assert fresh["type"] == "HeNormal"
    assert fresh["target"] == pytest.approx(np.sqrt(2 / 12))  # fan_in 12
    # 192 samples: the sample std is within ~5% of the target (1 sigma).
    assert fresh["std"] == pytest.approx(fresh["target"], rel=0.2)
