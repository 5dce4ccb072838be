"""Tests of keras_winit.diagnostics (diagnose and its command line)."""

import gc
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

import keras_winit
from keras_winit import _compat
from keras_winit import _compiled
from keras_winit import _moments
from keras_winit import _signal
from keras_winit import cli
from keras_winit import walker
from keras_winit.diagnostics import _SHORT
from keras_winit.diagnostics import FLAG_KINDS
from keras_winit.diagnostics import diagnose
from keras_winit.diagnostics import recommend
from tests import _real_models

L = keras.layers


@pytest.fixture(scope="module")
def digits():
    x = load_digits().data.astype("float32")
    return (x - x.mean(0)) / (x.std(0) + 1e-8)


def _mlp(init, depth, width, activation, seed=0):
    layers = [keras.Input((64,))]
    for i in range(depth):
        layers.append(
            L.Dense(
                width,
                activation=activation,
                kernel_initializer=init(1000 * seed + i),
            )
        )
    layers.append(L.Dense(10, kernel_initializer=init(1000 * seed + 999)))
    return keras.Sequential(layers)


def _kinds(result):
    return {f.kind for f in result.flags}


# ----------------------------------------------------------------------
# He et al. (2015): a 30-layer ReLU net.


@pytest.mark.parametrize(
    "init", [keras_winit.GlorotUniform, keras_winit.GlorotNormal]
)
def test_glorot_deep_relu_is_flagged_vanishing(digits, init):
    model = _mlp(lambda s: init(seed=s), 30, 128, "relu")
    result = diagnose(model, digits[:256])
    kinds = _kinds(result)
    assert "vanishing_activations" in kinds
    assert "vanishing_gradients" in kinds
    kernel = [s for s in result.layers if s.has_kernel]
    # Var halves per layer: std ratio about 1/sqrt(2).
    ratios = [s.std_ratio for s in kernel[1:30]]
    assert 0.6 < np.exp(np.mean(np.log(ratios))) < 0.8
    # Deep layers are flagged for activations, early ones for gradients.
    assert "vanishing_activations" in kernel[29].flags
    assert "vanishing_gradients" in kernel[0].flags
    assert all(s.recommended == "keras_winit.HeNormal()" for s in kernel[:30])


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("init", [keras_winit.HeNormal, keras_winit.HeUniform])
def test_he_deep_relu_passes(digits, init, seed):
    model = _mlp(lambda s: init(seed=s), 30, 128, "relu", seed=seed)
    result = diagnose(model, digits[:256])
    assert result.flags == [], result.to_table()
    kernel = [s for s in result.layers if s.has_kernel]
    ratios = [s.std_ratio for s in kernel[1:30]]
    assert 0.9 < np.exp(np.mean(np.log(ratios))) < 1.1


# ----------------------------------------------------------------------
# Glorot & Bengio (2010): 5 x 1000 tanh.


def _standard_uniform(seed):
    # U[-1/sqrt(n), 1/sqrt(n)], n = fan_in: Var = 1/(3n).
    return keras_winit.VarianceScaling(
        scale=1 / 3, mode="fan_in", distribution="uniform", seed=seed
    )


def _std_ratios(result):
    return [s.std_ratio for s in result.layers[1:5]]


def test_tanh_standard_init_shrinks_by_sqrt_one_third(digits):
    result = diagnose(
        _mlp(_standard_uniform, 5, 1000, "tanh", seed=3), digits[:300]
    )
    ratios = _std_ratios(result)
    assert all(0.45 < r < 0.7 for r in ratios), ratios
    assert 0.5 < np.mean(ratios) < 0.65  # theory sqrt(1/3) = 0.577
    grads = [s.grad_std for s in result.layers[:5]]
    assert grads[0] / grads[4] < 0.2  # back-propagated gradients vanish


def test_tanh_random_uniform_per_layer_fan_in(digits):
    # The same rule written with Keras' RandomUniform, n per layer.
    fan_ins = [64] + [1000] * 4 + [1000]
    layers = [keras.Input((64,))]
    for i, n in enumerate(fan_ins):
        limit = 1 / np.sqrt(n)
        layers.append(
            L.Dense(
                10 if i == 5 else 1000,
                activation=None if i == 5 else "tanh",
                kernel_initializer=keras.initializers.RandomUniform(
                    -limit, limit, seed=i
                ),
            )
        )
    result = diagnose(keras.Sequential(layers), digits[:300])
    assert all(0.45 < r < 0.7 for r in _std_ratios(result))


def test_tanh_glorot_keeps_the_std(digits):
    model = _mlp(lambda s: keras_winit.GlorotUniform(seed=s), 5, 1000, "tanh")
    result = diagnose(model, digits[:300])
    assert all(r >= 0.85 for r in _std_ratios(result)), _std_ratios(result)
    grads = [s.grad_std for s in result.layers[:5]]
    assert grads[0] / grads[4] > 0.6
    assert result.flags == []


# ----------------------------------------------------------------------
# What each column means.


def test_pre_activation_and_gradient_match_manual_computation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(5, activation="tanh", bias_initializer="ones"),
        ]
    )
    result = diagnose(model, x, seed=7)
    (s,) = result.layers
    kernel, bias = (w.numpy().astype(np.float64) for w in model.weights)
    z = x.astype(np.float64) @ kernel + bias
    a = np.tanh(z)
    assert s.pre_std == pytest.approx(z.std(), rel=1e-5)
    assert s.std == pytest.approx(a.std(), rel=1e-5)
    assert s.mean == pytest.approx(a.mean(), rel=1e-5)
    # Random projection loss: dC/da = r / batch, r ~ N(0, 1) seeded.
    r = np.random.default_rng(7).standard_normal(a.shape)
    dz = r / 50 * (1 - a**2)
    assert s.grad_std == pytest.approx(dz.std(), rel=1e-4)
    dw = x.astype(np.float64).T @ dz
    assert s.weight_grad_var == pytest.approx(dw.var(), rel=1e-4)
    # The activation is restored after the split call.
    assert model.layers[0].activation is keras.activations.tanh


def test_saturated_and_dead_units_are_flagged():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 8)).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((8,)),
            L.Dense(
                32,
                activation="tanh",
                kernel_initializer=keras.initializers.RandomNormal(
                    stddev=10.0, seed=0
                ),
            ),
            L.Dense(16, bias_initializer=keras.initializers.Constant(-1e3)),
            L.Activation("relu"),
            L.Dense(4, activation="sigmoid"),
        ]
    )
    result = diagnose(model, x)
    assert result.layers[0].saturated > 0.5
    assert result.layers[2].dead == 1.0
    assert "saturated" in result.layers[0].flags
    assert "dead" in result.layers[2].flags
    # Unfused Dense + Activation("relu"): the recommendation follows it.
    assert result.layers[1].recommended == "keras_winit.HeNormal()"
    assert result.layers[3].activation == "sigmoid"
    assert result.layers[3].saturated is not None


@pytest.mark.parametrize(
    "activation, expected",
    [
        ("relu", "keras_winit.HeNormal()"),
        ("relu6", "keras_winit.HeNormal()"),
        ("tanh", "keras_winit.GlorotUniform()"),
        (None, "keras_winit.GlorotUniform()"),
        ("selu", "keras_winit.LecunNormal()"),
        ("sigmoid", "keras_winit.ActivationScaling('sigmoid', method='kumar')"),
        ("gelu", "keras_winit.ActivationScaling('gelu')"),
        ("leaky_relu", "keras_winit.KaimingNormal(negative_slope=0.2)"),
    ],
)
def test_recommendations_are_runnable_code(activation, expected):
    code, gain = recommend(activation)
    assert code == expected
    initializer = eval(code, {"keras_winit": keras_winit})
    assert isinstance(initializer, keras.initializers.Initializer)
    if activation == "relu":
        assert gain == pytest.approx(np.sqrt(2), rel=1e-6)


def test_functional_nested_and_shared_layers():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(32, 8)).astype("float32")
    inner = keras.Sequential(
        [keras.Input((16,)), L.Dense(16, activation="relu")], name="inner"
    )
    shared = L.Dense(16, activation="relu", name="shared")
    inputs = keras.Input((8,))
    h = L.Dense(16, activation="relu", name="first")(inputs)
    h = inner(h)
    h = shared(h)
    h = shared(h)
    b = L.Dense(16, name="branch")(inputs)
    h = L.Add(name="add")([h, b])
    outputs = L.Dense(3, name="head")(h)
    model = keras.Model(inputs, outputs)
    result = diagnose(model, x)
    names = [s.name for s in result.layers]
    assert "inner/dense" in "".join(names) or any(
        n.startswith("inner/") for n in names
    )
    assert sum(n.startswith("shared") for n in names) == 2, names
    assert any(n.endswith("/call_2") for n in names)
    assert len(result.layers) == 7
    # The walked graph computes what the model computes.
    out = _signal.execute(model, keras.ops.convert_to_tensor(x), _plain)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(out),
        keras.ops.convert_to_numpy(model(x)),
        rtol=1e-5,
    )
    # Kernel gradient reported once for the shared layer.
    shared_rows = [s for s in result.layers if s.name.startswith("shared")]
    assert shared_rows[0].weight_grad_var is not None
    assert shared_rows[1].weight_grad_var is None


def _plain(layer, args, kwargs):
    return layer(*args, **kwargs)


def test_labels_with_compiled_and_default_losses(digits):
    y = load_digits().target[:64]
    model = keras.Sequential(
        [keras.Input((64,)), L.Dense(32, activation="relu"), L.Dense(10)]
    )
    result = diagnose(model, digits[:64], y)
    assert "sparse categorical cross-entropy (from_logits=True)" in result.loss
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    compiled = diagnose(model, digits[:64], y)
    assert compiled.loss == "the model's compiled loss"
    assert compiled.layers[0].grad_std == pytest.approx(
        result.layers[0].grad_std, rel=1e-4
    )
    targets = np.zeros((64, 10), "float32")
    explicit = diagnose(model, digits[:64], targets, loss="mse")
    assert explicit.loss == "loss=mse"


def test_table_and_print(digits, capsys):
    model = _mlp(lambda s: keras_winit.GlorotUniform(seed=s), 12, 64, "relu")
    result = diagnose(model, digits[:128], print_table=True)
    printed = capsys.readouterr().out
    assert printed.strip() == str(result).strip() == result.to_table().strip()
    for header in ("layer", "std x", "grad std", "W-grad var", "recommended"):
        assert header in printed
    assert "vanish-act" in printed
    assert f"{len(result.flags)} flag(s)" in printed
    assert result.layers[0].to_dict()["name"] == result.layers[0].name


# ----------------------------------------------------------------------
# Errors.


def _small_model():
    return keras.Sequential([keras.Input((4,)), L.Dense(3)])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"vanishing_threshold": 0}, "vanishing_threshold"),
        ({"vanishing_threshold": 1.5}, "vanishing_threshold"),
        ({"exploding_threshold": 0.5}, "exploding_threshold"),
        ({"saturation_threshold": "a"}, "saturation_threshold"),
        ({"dead_threshold": True}, "dead_threshold"),
        ({"saturation_eps": 0.7}, "saturation_eps"),
        ({"seed": 1.5}, "seed"),
        ({"training": 1}, "training"),
        ({"print_table": "yes"}, "print_table"),
        ({"jit_compile": "yes"}, "jit_compile"),
        ({"jit_compile": 1}, "jit_compile"),
        ({"jit_compile": None}, "jit_compile"),
    ],
)
def test_invalid_arguments(kwargs, match):
    x = np.zeros((8, 4), "float32")
    with pytest.raises(ValueError, match=match):
        diagnose(_small_model(), x, **kwargs)


def test_invalid_models_and_batches():
    x = np.zeros((8, 4), "float32")
    with pytest.raises(ValueError, match="keras.Model"):
        diagnose("model", x)
    with pytest.raises(ValueError, match="built"):
        diagnose(keras.Sequential([L.Dense(3)]), x)

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(3)

        def call(self, x):
            return self.dense(x)

    sub = Sub()
    sub(x)
    # Subclassed models are walked (their layer calls are recorded).
    assert [s.layer_type for s in diagnose(sub, x).layers] == ["Dense"]
    with pytest.raises(ValueError, match="at least 2 examples"):
        diagnose(_small_model(), x[:1])
    with pytest.raises(ValueError, match="same batch size"):
        diagnose(_small_model(), x, np.zeros((7, 3)))
    with pytest.raises(ValueError, match="shape of the model's output"):
        diagnose(_small_model(), x, np.zeros((8, 5), "float32"))


# ----------------------------------------------------------------------
# Command line.


def _save(tmp_path, model, x):
    model_path = os.fspath(tmp_path / "m.keras")
    batch_path = os.fspath(tmp_path / "x.npy")
    model.save(model_path)
    np.save(batch_path, x)
    return model_path, batch_path


def test_cli_subprocess_prints_table_and_fails_on_flags(tmp_path, digits):
    model = _mlp(lambda s: keras_winit.GlorotUniform(seed=s), 20, 64, "relu")
    model_path, batch_path = _save(tmp_path, model, digits[:128])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_winit",
            "diagnose",
            model_path,
            batch_path,
            "--fail-on-flags",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert "W-grad var" in proc.stdout
    assert "vanish-act" in proc.stdout
    assert "dense_" in proc.stdout


def test_cli_in_process(tmp_path, digits, capsys):
    model = _mlp(lambda s: keras_winit.HeNormal(seed=s), 3, 32, "relu")
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model_path, batch_path = _save(tmp_path, model, digits[:64])
    labels_path = os.fspath(tmp_path / "y.npy")
    np.save(labels_path, load_digits().target[:64])
    argv = ["diagnose", model_path, batch_path, "--labels", labels_path]
    assert cli.main(argv + ["--fail-on-flags"]) == 0
    out = capsys.readouterr().out
    assert "compiled loss" in out and "no layer flagged" in out
    missing = os.fspath(tmp_path / "missing.npy")
    assert cli.main(["diagnose", model_path, missing]) == 2
    assert "error" in capsys.readouterr().err


def _cli_error(argv, capsys):
    status = cli.main(["diagnose"] + argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("keras-winit diagnose: error: ")
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_cli_bad_files_give_one_line_and_status_2(tmp_path, digits, capsys):
    import json
    import zipfile

    model = _mlp(lambda s: keras_winit.HeNormal(seed=s), 2, 16, "relu")
    model_path, batch_path = _save(tmp_path, model, digits[:32])
    empty = tmp_path / "empty.keras"
    empty.write_bytes(b"")
    assert "empty" in _cli_error([os.fspath(empty), batch_path], capsys)
    truncated = tmp_path / "truncated.keras"
    with open(model_path, "rb") as f:
        truncated.write_bytes(f.read()[:200])
    assert "truncated" in _cli_error([os.fspath(truncated), batch_path], capsys)
    no_config = tmp_path / "no_config.keras"
    with zipfile.ZipFile(no_config, "w") as z:
        z.writestr("metadata.json", "{}")
    assert "config.json" in _cli_error(
        [os.fspath(no_config), batch_path], capsys
    )
    # A bad config value (a string where a number goes) and an overflowing
    # one: loading fails, reported in one line.
    with zipfile.ZipFile(model_path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    for name, value in (("bad", "many"), ("overflow", 10**400)):
        config = json.loads(files["config.json"])
        config["config"]["layers"][1]["config"]["units"] = value
        if name == "overflow":
            text = json.dumps(config).replace(
                '"units": ' + str(10**400), '"units": 1e400'
            )
        else:
            text = json.dumps(config)
        path = tmp_path / f"{name}.keras"
        with zipfile.ZipFile(path, "w") as z:
            for n, data in files.items():
                z.writestr(n, text if n == "config.json" else data)
        assert "cannot load model" in _cli_error(
            [os.fspath(path), batch_path], capsys
        )
    text_batch = tmp_path / "batch.npy"
    text_batch.write_text("1 2 3\n")
    assert "not a .npy file" in _cli_error(
        [model_path, os.fspath(text_batch)], capsys
    )
    wrong = os.fspath(tmp_path / "wrong.npy")
    np.save(wrong, np.zeros((4, 5), "float32"))
    err = _cli_error([model_path, wrong], capsys)
    assert "(None, 64)" in err and "(4, 5)" in err


def test_cli_nan_batch_fails_on_flags(tmp_path, digits, capsys):
    model = _mlp(lambda s: keras_winit.HeNormal(seed=s), 2, 16, "relu")
    x = digits[:32].copy()
    x[3, 5] = np.nan
    model_path, batch_path = _save(tmp_path, model, x)
    assert cli.main(["diagnose", model_path, batch_path]) == 0
    assert (
        cli.main(["diagnose", model_path, batch_path, "--fail-on-flags"]) == 1
    )
    assert "input: nonfinite input" in capsys.readouterr().out


# ----------------------------------------------------------------------
# Truthful rules: normalization, residuals, zero inits, bad input.


def test_nan_and_inf_input_is_flagged(digits):
    x = digits[:32].copy()
    x[0, 0], x[1, 1] = np.nan, np.inf
    model = _mlp(lambda s: keras_winit.HeNormal(seed=s), 2, 16, "relu")
    result = diagnose(model, x)
    assert result.flags[0].kind == "nonfinite_input"
    assert result.flags[0].value == 2
    assert "clean the data" in str(result.flags[0])


def test_x_that_does_not_fit_names_the_input_and_shapes():
    inputs = {
        "tokens": keras.Input((6,), name="tokens"),
        "image": keras.Input((4, 4, 2), name="image"),
    }
    h = L.Concatenate()([inputs["tokens"], L.Flatten()(inputs["image"])])
    model = keras.Model(inputs, L.Dense(2)(h))
    good = {"tokens": np.ones((4, 6)), "image": np.ones((4, 4, 4, 2))}
    diagnose(model, good)
    with pytest.raises(
        ValueError,
        match=r"'image'.*\(None, 4, 4, 2\).*"
        r"\(4, 4, 4, 3\)",
    ):
        diagnose(model, {**good, "image": np.ones((4, 4, 4, 3))})
    with pytest.raises(ValueError, match=r"missing input\(s\) \['image'\]"):
        diagnose(model, {"tokens": good["tokens"]})
    with pytest.raises(ValueError, match=r"\(None, 64\).*\(8, 7\)"):
        diagnose(_mlp(keras_winit.HeNormal, 1, 8, "relu"), np.ones((8, 7)))


def test_all_zero_init_is_flagged(digits):
    zeros = lambda s: keras.initializers.Zeros()  # noqa: E731
    result = diagnose(_mlp(zeros, 5, 32, "relu"), digits[:64])
    assert "zero_signal" in _kinds(result)
    assert "Use a random initializer" in str(result.flags[0])


# ----------------------------------------------------------------------
# Statistics: reduced where the tensors live, as exact as float64 copies.


@pytest.mark.parametrize(
    "size",
    [1, 2, _moments.CHUNK - 1, _moments.CHUNK, _moments.CHUNK + 1, 200_003],
)
def test_chunked_moments_match_float64(size):
    rng = np.random.default_rng(size)
    # A mean 1000x the std: the case a one-pass variance gets wrong.
    v = (1e3 + rng.standard_normal(size)).astype("float32")
    mean, var = _moments.moments(v)
    ref = v.astype("float64")
    assert mean == pytest.approx(ref.mean(), rel=1e-7)
    assert var == pytest.approx(ref.var(), rel=1e-5, abs=1e-12)


def test_constant_signal_has_std_exactly_zero(digits):
    # Zero kernel, bias 0.1: every value is 0.1; a float32 mean is not
    # exactly 0.1, so only the float64 fallback gives std == 0.
    model = keras.Sequential(
        [
            keras.Input((64,)),
            L.Dense(
                16,
                activation="relu",
                kernel_initializer="zeros",
                bias_initializer=keras.initializers.Constant(0.1),
            ),
            L.Dense(10),
        ]
    )
    result = diagnose(model, digits[:32])
    first = result.layers[0]
    assert first.pre_std == 0.0 and first.std == 0.0
    assert first.mean == pytest.approx(0.1)
    assert "zero_signal" in first.flags


def test_signal_overflow_counts_nonfinite_values(digits):
    huge = keras.initializers.RandomNormal(stddev=1e25, seed=0)
    model = keras.Sequential(
        [keras.Input((64,))]
        + [L.Dense(32, kernel_initializer=huge) for _ in range(3)]
    )
    x = digits[:16]
    result = diagnose(model, x)
    # float32 overflows to inf in the second layer (~1e25 * 1e25 * 8).
    second = keras.ops.convert_to_numpy(model.layers[1](model.layers[0](x)))
    assert not np.isfinite(second).all()
    # The first layer's gradient is already non-finite (back from inf).
    assert result.flags[0].kind == "nonfinite"
    assert result.layers[1].nonfinite >= np.size(second) - np.count_nonzero(
        np.isfinite(second)
    )


def _mixed_model():
    inputs = keras.Input((64,))
    h = L.Reshape((8, 8, 1))(inputs)
    h = L.Conv2D(8, 3, activation="relu", kernel_initializer="he_normal")(h)
    h = L.BatchNormalization()(h)
    h = L.Flatten()(h)
    h = L.Dense(
        32,
        activation="tanh",
        kernel_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=1),
    )(h)
    h = L.Dense(16, activation="sigmoid")(h)
    h = L.Dense(16, kernel_initializer="zeros")(h)
    return keras.Model(inputs, L.Dense(10, activation="softmax")(h))


def test_backend_reductions_match_host_views(digits, monkeypatch):
    # On an accelerator, tensors are reduced by backend ops and fetched at
    # once; on CPU, through NumPy views. Both give the same table.
    keras.utils.set_random_seed(0)
    model = _mixed_model()
    x, y = digits[:64], np.arange(64) % 10
    host = diagnose(model, x, y)
    monkeypatch.setattr(_moments, "host_view", lambda t: None)
    device = diagnose(model, x, y)
    assert [f.kind for f in device.flags] == [f.kind for f in host.flags]
    assert {"saturated"} <= _kinds(host)
    for a, b in zip(host.layers, device.layers, strict=True):
        da, db = a.to_dict(), b.to_dict()
        for key, value in da.items():
            if isinstance(value, float):
                # A mean near 0 is compared to the scale of the values.
                tol = 1e-5 * a.std if key == "mean" else 1e-12
                assert db[key] == pytest.approx(
                    value, rel=1e-5, abs=tol, nan_ok=True
                ), (a.name, key)
            else:
                assert db[key] == value, (a.name, key)
    assert any(s.dead is not None for s in host.layers)


def _resnet(blocks, end_init, norm=False, width=32):
    inputs = keras.Input((64,))
    h = L.Dense(width, kernel_initializer=keras_winit.HeNormal(seed=0))(inputs)
    for b in range(blocks):
        f = L.BatchNormalization()(h) if norm else h
        f = L.Dense(
            width,
            activation="relu",
            kernel_initializer=keras_winit.HeNormal(seed=10 * b + 1),
        )(f)
        f = L.Dense(width, kernel_initializer=end_init(b))(f)
        h = L.Add()([h, f])
    return keras.Model(inputs, L.Dense(10)(L.ReLU()(h)))


def test_residual_stream_judged_by_growth_per_block(digits):
    he = lambda b: keras_winit.HeNormal(seed=10 * b + 2)  # noqa: E731
    # He on both branch layers: the stream grows ~1.5x per block (at most
    # sqrt(3)): 22x over 8 blocks trains, 395x over 16 gives NaN in
    # training (benchmarks/trainability.py).
    # Width 32 grows faster (~1.8x per block: 8 blocks sit at the
    # threshold); 4 blocks are clearly healthy.
    result = diagnose(_resnet(4, he), digits[:128])
    assert result.flags == [], result.to_table()
    growth = [r.growth for r in result.residuals]
    assert len(growth) == 4 and 1.3 < np.exp(np.mean(np.log(growth))) < 2.0
    result = diagnose(_resnet(16, he), digits[:128])
    assert _kinds(result) == {"exploding_stream"}, result.to_table()


def test_zero_initialized_branch_ends_are_healthy(digits):
    zeros = lambda b: keras.initializers.Zeros()  # noqa: E731
    result = diagnose(_resnet(16, zeros), digits[:128])
    assert result.flags == [], result.to_table()
    ends = [s for s in result.layers if s.branch_end]
    assert len(ends) == 16 and all(s.pre_std == 0 for s in ends)


def test_batch_norm_makes_the_kernel_scale_irrelevant(digits):
    def cnn(scale):
        x = inputs = keras.Input((64,))
        x = L.Reshape((8, 8, 1))(x)
        for i in range(6):
            init = keras.initializers.RandomNormal(
                stddev=scale * np.sqrt(2 / (9 * (1 if i == 0 else 16))),
                seed=i,
            )
            x = L.Conv2D(16, 3, padding="same", kernel_initializer=init)(x)
            x = L.BatchNormalization()(x)
            x = L.ReLU()(x)
        x = L.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, L.Dense(10)(x))

    model = cnn(0.01)
    bn = [layer for layer in model.layers if "batch_norm" in layer.name]
    before = [v.numpy().copy() for v in model.non_trainable_variables]
    result = diagnose(model, digits[:64])
    assert result.flags == [], result.to_table()
    kernels = [s for s in result.layers if s.has_kernel]
    assert all(s.norm_after for s in kernels[:6])
    # BatchNorm's moving statistics are left as they were.
    for v, value in zip(model.non_trainable_variables, before, strict=True):
        np.testing.assert_array_equal(v.numpy(), value)
    assert bn
    # At He's scale BatchNorm normalizes (batch statistics, not the
    # identity of a fresh BN under training=False).
    norms = [s for s in diagnose(cnn(1.0), digits[:64]).layers]
    norms = [s for s in norms if s.kind == "norm"]
    assert len(norms) == 6 and all(0.9 < s.std < 1.1 for s in norms)
    # The same CNN without BatchNorm at 1/100 of He's scale does fail.
    plain = _mlp(
        lambda s: keras.initializers.RandomNormal(stddev=0.002, seed=s),
        6,
        32,
        "relu",
    )
    assert "vanishing_gradients" in _kinds(diagnose(plain, digits[:64]))


def test_flags_have_advice():
    from keras_winit import health

    for kind in FLAG_KINDS:
        assert kind in health.ADVICE and kind in _SHORT


# ----------------------------------------------------------------------
# Real models (tests/_real_models.py).


# Every model on TensorFlow. Under JAX an eager probe of a stock convnet
# costs minutes on the CI's cores (every op compiles): the keras_hub
# text backbones are tested there; under PyTorch the convnets take 10-25 s
# each: MobileNetV2, ResNet50V2 and the backbones.
_STOCK = {
    "tensorflow": _real_models.ALL,
    "jax": ("GPT2Backbone", "BertBackbone"),
    "torch": ("MobileNetV2", "ResNet50V2") + _real_models.HUB_BACKBONES,
}[keras.backend.backend()]


@pytest.mark.parametrize("name", _STOCK)
def test_no_flag_on_stock_real_models(name):
    model, batch = _real_models.build(name, batch_size=2)
    result = diagnose(model, batch)
    assert result.flags == [], "\n".join(map(str, result.flags))
    # Every kernel layer, nested ones included, has its row.
    kernels = {
        id(layer)
        for layer in model._flatten_layers()
        if _signal.kernel_variable(layer) is not None
    }
    rows = {s.name for s in result.layers if s.has_kernel}
    assert len(rows) == len(kernels)
    if name in _real_models.HUB_BACKBONES:
        rows = [s.name for s in result.layers]
        for part in ("query", "key", "value", "attention_output"):
            assert sum(r.endswith(part) for r in rows) == 2, rows
        assert sum(s.has_kernel for s in result.layers) >= 12


def test_broken_real_transformer_diverges_in_the_table():
    # GPT-2 with token embeddings x100 trains on benchmarks/trainability's
    # copy task (measured): not flagged, but the residual table shows the
    # branches adding ~1% of the stream instead of ~50%.
    model, batch = _real_models.build("GPT2Backbone", batch_size=2)
    stock = diagnose(model, batch).residuals
    for v in model.weights:
        if "token_embedding" in v.path:
            v.assign(v * 100)
    broken = diagnose(model, batch).residuals
    share = [r.branch_std / r.skip_std for r in stock]
    share_broken = [r.branch_std / r.skip_std for r in broken]
    assert min(share) > 0.2 and max(share_broken) < 0.05


@pytest.mark.parametrize(
    "name",
    [n for n in ("MobileNetV2", "EfficientNetB0") if n in _STOCK],
)
def test_no_flag_after_auto_initialize(name):
    # The false alarms: 64 and 152 flags after initialize("auto"),
    # BatchNorm after each convolution makes the kernel scale irrelevant.
    import warnings

    model, batch = _real_models.build(name, batch_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keras_winit.initialize(model, "auto", seed=0)
    result = diagnose(model, batch)
    assert result.flags == [], "\n".join(map(str, result.flags))


# ----------------------------------------------------------------------
# The compiled probe pass (TensorFlow): the eager pass's results, cached
# per model and signature.


def _assert_same(eager, compiled, rtol=1e-5):
    """Same rows, flags and residuals; numbers to float32 round-off."""
    assert [s.name for s in compiled.layers] == [s.name for s in eager.layers]
    assert [(f.layer, f.kind) for f in compiled.flags] == [
        (f.layer, f.kind) for f in eager.flags
    ]
    assert compiled.loss == eager.loss
    fields = ("std", "pre_std", "grad_std", "weight_grad_var", "step")
    for e, c in zip(eager.layers, compiled.layers, strict=True):
        assert (c.flags, c.kind, c.norm_after, c.branch, c.branch_end) == (
            e.flags,
            e.kind,
            e.norm_after,
            e.branch,
            e.branch_end,
        )
        assert (c.saturated, c.dead, c.nonfinite) == (
            e.saturated,
            e.dead,
            e.nonfinite,
        ) or np.allclose([c.saturated, c.dead], [e.saturated, e.dead])
        for name in fields:
            u, v = getattr(e, name), getattr(c, name)
            assert (u is None) == (v is None), (e.name, name)
            if u is not None:
                np.testing.assert_allclose(v, u, rtol=rtol, err_msg=e.name)
        # A mean is judged against the spread of the signal.
        assert abs(c.mean - e.mean) <= rtol * (abs(e.mean) + e.std + 1e-30)
    assert len(compiled.residuals) == len(eager.residuals)
    for e, c in zip(eager.residuals, compiled.residuals, strict=True):
        assert (c.at, c.calls, c.normalized, c.gated) == (
            e.at,
            e.calls,
            e.normalized,
            e.gated,
        )
        np.testing.assert_allclose(
            [c.skip_std, c.branch_std, c.out_std],
            [e.skip_std, e.branch_std, e.out_std],
            rtol=rtol,
        )


class PreNormBlock(keras.layers.Layer):
    """A pre-LN block that adds its branch in `call` (no graph, no Add)."""

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.norm = L.LayerNormalization()
        self.inner = L.Dense(2 * width, activation="gelu")
        self.outer = L.Dense(width)

    def call(self, x):
        return x + self.outer(self.inner(self.norm(x)))


class SubclassedNet(keras.Model):
    def __init__(self):
        super().__init__()
        self.embed = L.Dense(16)
        self.blocks = [PreNormBlock(16) for _ in range(3)]
        self.head = L.Dense(10)

    def call(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def _bn_cnn():
    x = inputs = keras.Input((64,))
    x = L.Reshape((8, 8, 1))(x)
    for _ in range(3):
        x = L.Conv2D(8, 3, padding="same", activation="relu")(x)
        x = L.BatchNormalization()(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(10, activation="softmax")(x))


@pytest.mark.tensorflow_only
@pytest.mark.parametrize(
    "name", ["resnet", "bn_cnn", "subclassed", "Xception", "GPT2Backbone"]
)
def test_compiled_pass_matches_eager(digits, name):
    y = None
    if name in _real_models.ALL:
        model, x = _real_models.build(name, batch_size=4)
    else:
        model = {
            "resnet": lambda: _resnet(
                3, lambda b: keras_winit.HeNormal(seed=b)
            ),
            "bn_cnn": _bn_cnn,
            "subclassed": SubclassedNet,
        }[name]()
        x = digits[:32]
        _ = model(x[:2])
        # Labels: cross-entropy, `from_logits` found from the output.
        y = np.arange(32) % 10 if name != "subclassed" else None
    eager = diagnose(model, x, y, jit_compile=False)
    traced = _compiled.traces()
    compiled = diagnose(model, x, y, jit_compile=True)
    assert _compiled.traces() == traced + 1
    _assert_same(eager, compiled)
    assert diagnose(model, x, y, jit_compile=True).to_table() == (
        compiled.to_table()
    )
    assert _compiled.traces() == traced + 1  # cached
    if name in ("resnet", "subclassed", "GPT2Backbone"):
        assert eager.residuals


@pytest.mark.tensorflow_only
def test_compiled_pass_follows_weights_and_retraces_a_changed_model(digits):
    model = _resnet(2, lambda b: keras_winit.HeNormal(seed=b))
    x = digits[:32]
    traced = _compiled.traces()
    diagnose(model, x, jit_compile=True)
    # New weight values: no retrace, the results follow them.
    for v in model.trainable_variables:
        v.assign(v * 1.5)
    _assert_same(
        diagnose(model, x, jit_compile=False),
        diagnose(model, x, jit_compile=True),
    )
    assert _compiled.traces() == traced + 1
    # Another batch size is another signature: a second traced pass.
    diagnose(model, x[:16], jit_compile=True)
    assert _compiled.traces() == traced + 2 and _compiled.cached(model) == 2
    # A changed model (an activation swapped in place) is traced again.
    dense = [layer for layer in model.layers if isinstance(layer, L.Dense)]
    dense[1].activation = keras.activations.tanh
    compiled = diagnose(model, x, jit_compile=True)
    assert _compiled.traces() == traced + 3 and _compiled.cached(model) == 1
    eager = diagnose(model, x, jit_compile=False)
    _assert_same(eager, compiled)
    assert "tanh" in [s.activation for s in compiled.layers]


@pytest.mark.tensorflow_only
def test_auto_compiles_once_the_signature_repeats(digits, monkeypatch):
    monkeypatch.setattr(_compiled, "AUTO_AFTER", 2)
    model = _mlp(lambda s: keras_winit.HeNormal(seed=s), 3, 16, "relu")
    traced = _compiled.traces()
    results = [diagnose(model, digits[:16]) for _ in range(2)]
    assert _compiled.traces() == traced  # eager while it would not pay
    results.append(diagnose(model, digits[:16]))
    assert _compiled.traces() == traced + 1
    _assert_same(results[0], results[2])
    # On the other backends (and with jit_compile=False) nothing traces.
    diagnose(model, digits[:16], jit_compile=False)
    assert _compiled.traces() == traced + 1


@pytest.mark.tensorflow_only
def test_compiled_cache_keeps_no_model_alive(digits):
    import weakref

    model = _resnet(2, lambda b: keras_winit.HeNormal(seed=b))
    diagnose(model, digits[:16], jit_compile=True)
    assert _compiled.cached(model) == 1
    ref, key = weakref.ref(model), id(model)
    del model
    gc.collect()
    assert ref() is None
    assert key not in _compiled._CACHES


class _GraphFails(L.Dense):
    """Fails only when traced: a layer that needs concrete values."""

    def call(self, x):
        import tensorflow as tf

        if not tf.executing_eagerly():
            raise RuntimeError("needs concrete values")
        return super().call(x)


@pytest.mark.tensorflow_only
def test_nothing_left_patched_after_an_error_in_the_traced_pass(
    digits, monkeypatch
):
    failing = _GraphFails(8, activation="relu")
    model = keras.Sequential(
        [
            keras.Input((64,)),
            L.Dense(8),
            L.BatchNormalization(),
            failing,
            L.Dense(10),
        ]
    )
    before = [v.numpy().copy() for v in model.non_trainable_variables]
    call = _compat.layer_call_class().__call__
    with pytest.raises(RuntimeError, match="concrete values"):
        diagnose(model, digits[:16], jit_compile=True)
    assert _compat.layer_call_class().__call__ is call
    assert getattr(walker._STATE, "recorder", None) is None
    assert failing.activation is keras.activations.relu
    for v, value in zip(model.non_trainable_variables, before, strict=True):
        np.testing.assert_array_equal(v.numpy(), value)
    # "auto" runs such a pass eagerly, with the eager results.
    monkeypatch.setattr(_compiled, "AUTO_AFTER", 0)
    auto = diagnose(model, digits[:16])
    _assert_same(diagnose(model, digits[:16], jit_compile=False), auto)
    assert _compat.layer_call_class().__call__ is call


@pytest.mark.tensorflow_only
def test_compiled_pass_follows_the_output_from_probabilities_to_logits(
    digits,
):
    # Cross-entropy's `from_logits` is decided from the output's values:
    # a constant 0.1 output sums to 1 (probabilities); random biases make
    # it logits. The compiled pass notices and runs the pass again.
    model = _mlp(lambda s: keras_winit.HeNormal(seed=s), 2, 16, "relu")
    head = model.layers[-1]
    head.kernel.assign(np.zeros(head.kernel.shape, "float32"))
    head.bias.assign(np.full(head.bias.shape, 0.1, "float32"))
    x, y = digits[:16], np.arange(16) % 10
    assert "from_logits=False" in diagnose(model, x, y, jit_compile=True).loss
    head.bias.assign(np.linspace(-1, 1, 10).astype("float32"))
    compiled = diagnose(model, x, y, jit_compile=True)
    assert "from_logits=True" in compiled.loss
    _assert_same(diagnose(model, x, y, jit_compile=False), compiled)
