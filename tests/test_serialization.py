"""Configs round-trip, and models with keras_winit initializers save/load.

The `.keras` file is loaded in a fresh Python process that imports only
keras and keras_winit (no `custom_objects`), with `safe_mode=True`.
"""

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
from tests._roundtrip import assert_serialization_round_trip
from tests._roundtrip import attributes

ALL = initializers.ALL_INITIALIZERS + initializers.CONV_INITIALIZERS


def instances(seed):
    out = []
    for cls in ALL:
        out.append(cls(seed=seed))
    out += [
        keras_winit.VarianceScaling(
            scale=0.5,
            mode="fan_geo_avg",
            distribution="uniform",
            truncation=3.0,
            fan_in=10,
            fan_out=20,
            seed=seed,
        ),
        keras_winit.VarianceScaling(input_axes=[0], output_axes=[1, 2]),
        keras_winit.KaimingNormal(0.1, "fan_out", "leaky_relu", seed=seed),
        keras_winit.ActivationScaling("leaky_relu", 0.1, "kumar", seed=seed),
        keras_winit.XavierUniform(gain=2.0, seed=seed),
        keras_winit.DeltaOrthogonal(gain=1.5, seed=seed),
    ]
    return out


@pytest.mark.parametrize(
    "instance",
    instances(seed=3) + instances(seed=None),
    ids=lambda i: f"{type(i).__name__}-{i.get_config()['seed']}",
)
def test_config_round_trips(instance):
    revived = assert_serialization_round_trip(instance)
    assert revived.get_config() == instance.get_config()
    # Calling must not add attributes (Keras' serialization test checks it).
    before = attributes(revived)
    revived((3, 4, 4))
    assert attributes(revived) == before


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_registered_name(cls):
    name = keras.saving.get_registered_name(cls)
    assert name == f"keras_winit>{cls.__name__}"
    assert keras.saving.get_registered_object(name) is cls


def test_activation_scaling_keeps_the_name():
    init = keras_winit.ActivationScaling(keras.activations.gelu)
    assert init.get_config()["activation"] == "gelu"
    kaiming = keras_winit.KaimingNormal(nonlinearity="tanh")
    assert kaiming.get_config()["nonlinearity"] == "tanh"
    assert "scale" not in kaiming.get_config()


def weights_of(model):
    return [np.asarray(w) for w in model.get_weights()]


def configs_of(model):
    """Layer configs as JSON would give them back (tuples become lists)."""
    configs = [layer.get_config() for layer in model.layers]
    return json.loads(json.dumps(keras.saving.serialize_keras_object(configs)))


def initializer_configs_of(model):
    return [
        {k: v for k, v in config.items() if k.endswith("initializer")}
        for config in configs_of(model)
    ]


@pytest.fixture(scope="module")
def model():
    return _models.build_model(seed=1)


def test_every_layer_model_has_distinct_kernels(model):
    conv = model.layers[1].kernel.numpy()
    dense = model.get_layer(index=-2).kernel.numpy()
    assert conv.shape != dense.shape  # shared instance, both drawn
    again = _models.build_model(seed=1)
    for a, b in zip(weights_of(model), weights_of(again), strict=True):
        np.testing.assert_array_equal(a, b)


FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras
    import keras_winit

    keras_path, h5_path, out_dir, tests_dir = sys.argv[1:5]
    loaded = keras.saving.load_model(keras_path, safe_mode=True)
    np.savez(out_dir + "/keras.npz", *loaded.get_weights())
    configs = [layer.get_config() for layer in loaded.layers]
    with open(out_dir + "/configs.json", "w") as f:
        json.dump(keras.saving.serialize_keras_object(configs), f)
    legacy = keras.saving.load_model(h5_path)
    np.savez(out_dir + "/h5.npz", *legacy.get_weights())

    # Same code, same seeds, another process: the same model.
    sys.path.insert(0, tests_dir)
    from _models import build_model
    np.savez(out_dir + "/rebuilt.npz", *build_model(seed=1).get_weights())
    print("fresh process ok")
    """
)


@pytest.mark.slow
def test_save_and_load_in_fresh_process(model, tmp_path):
    keras_path = str(tmp_path / "model.keras")
    h5_path = str(tmp_path / "model.h5")
    model.save(keras_path)
    model.save(h5_path)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            FRESH_PROCESS,
            keras_path,
            h5_path,
            str(tmp_path),
            tests_dir,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fresh process ok" in result.stdout

    expected = weights_of(model)
    for name in ("keras", "h5", "rebuilt"):
        with np.load(tmp_path / f"{name}.npz") as data:
            got = [data[f"arr_{i}"] for i in range(len(data.files))]
        assert len(got) == len(expected), name
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)
    with open(tmp_path / "configs.json") as f:
        loaded_configs = json.load(f)
    assert loaded_configs == configs_of(model)


def test_json_round_trip(model):
    clone = keras.models.model_from_json(model.to_json())
    assert configs_of(clone) == configs_of(model)
    head = clone.get_layer("head").kernel_initializer
    assert isinstance(head, keras_winit.XavierNormal)


def test_clone_model(model):
    clone = keras.models.clone_model(model)
    assert initializer_configs_of(clone) == initializer_configs_of(model)
    init = clone.layers[1].kernel_initializer
    assert isinstance(init, keras_winit.HeNormal)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    assert clone(x).shape == (2, 3)


@pytest.mark.slow
@pytest.mark.tensorflow_only  # tf.saved_model
def test_export_saved_model(model, tmp_path):
    import tensorflow as tf

    path = str(tmp_path / "exported")
    model.export(path, verbose=False)
    reloaded = tf.saved_model.load(path)
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(reloaded.serve(x)),
        np.asarray(model(x)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_legacy_h5_in_process(model, tmp_path):
    path = str(tmp_path / "m.h5")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(weights_of(loaded), weights_of(model), strict=True):
        np.testing.assert_array_equal(a, b)
    conv = loaded.layers[1].kernel_initializer
    assert isinstance(conv, keras_winit.HeNormal)


@pytest.mark.parametrize(
    "cls", initializers.CONV_INITIALIZERS, ids=lambda c: c.__name__
)
def test_conv_initializer_keras_round_trip(cls, tmp_path):
    inputs = keras.Input((9, 4))
    outputs = keras.layers.Conv1D(
        6, 3, padding="same", kernel_initializer=cls(seed=7)
    )(inputs)
    model = keras.Model(inputs, outputs)
    path = tmp_path / "conv.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    for a, b in zip(weights_of(loaded), weights_of(model), strict=True):
        np.testing.assert_array_equal(a, b)
    revived = loaded.layers[1].kernel_initializer
    assert type(revived) is cls
    assert revived.get_config() == cls(seed=7).get_config()
    # A fresh instance from the config repeats the first draw.
    fresh = cls.from_config(revived.get_config())
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(fresh((3, 4, 6))),
        keras.ops.convert_to_numpy(model.layers[1].kernel),
    )
