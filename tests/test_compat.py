"""One test per Keras internal that keras_winit uses (`keras_winit._compat`).

A Keras release that moves one of them fails the test named after it.
"""

import pathlib

import keras
import numpy as np
import pytest

from keras_winit import _compat


class _Holder(keras.layers.Layer):
    def __init__(self):
        super().__init__()
        self.first = keras.layers.Dense(3)
        self.blocks = [keras.layers.Dense(4), keras.layers.Dropout(0.1)]
        self.inner = keras.Sequential([keras.layers.Dense(5)])


def test_sublayers():
    holder = _Holder()
    direct = _compat.sublayers(holder)
    assert direct[:3] == [holder.first, *holder.blocks]
    assert holder.inner in direct
    nested = _compat.sublayers(holder, recursive=True)
    assert holder.inner.layers[0] in nested
    assert holder not in nested


def test_call_has_training_arg():
    assert _compat.call_has_training_arg(keras.layers.Dropout(0.5))
    assert not _compat.call_has_training_arg(keras.layers.Flatten())


def test_run_functional():
    inputs = keras.Input((4,))
    h = keras.layers.Dense(4, name="branch")(inputs)
    outputs = keras.layers.Add()([inputs, h])
    model = keras.Model(inputs, outputs)
    seen = []

    def operation_fn(op):
        seen.append(op.name)
        return op

    x = np.random.default_rng(0).normal(size=(2, 4)).astype("float32")
    out = _compat.run_functional(model, x, operation_fn)
    out = out[0] if isinstance(out, (list, tuple)) else out
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(out),
        keras.ops.convert_to_numpy(model(x)),
        rtol=1e-6,
    )
    assert seen[0] == "branch" and "add" in seen[-1]


def _accumulating_optimizer():
    variable = keras.Variable(np.ones((2,), "float32"))
    optimizer = keras.optimizers.SGD(0.1, gradient_accumulation_steps=2)
    optimizer.build([variable])
    grad = keras.ops.convert_to_tensor(np.array([1.0, 2.0], "float32"))
    optimizer.apply([grad], [variable])
    return optimizer, variable


def test_raw_iterations():
    optimizer, _ = _accumulating_optimizer()
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == 0
    raw = _compat.raw_iterations(optimizer)
    assert int(keras.ops.convert_to_numpy(raw)) == 1


def test_accumulated_gradient():
    optimizer, variable = _accumulating_optimizer()
    accumulator = _compat.accumulated_gradient(optimizer, variable)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(accumulator), [1.0, 2.0]
    )


def test_optimizer_variables_order():
    variables = [
        keras.Variable(np.zeros((i + 1,), "float32")) for i in range(3)
    ]
    optimizer = keras.optimizers.Adam()
    optimizer.build(variables)
    assert _compat.optimizer_variables_order(optimizer) == variables


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX trainer only")
def test_state_sharding_spec():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    model.fit(np.ones((4, 3)), np.ones((4, 2)), epochs=1, verbose=0)
    spec = _compat.state_sharding_spec(model)
    assert isinstance(spec, tuple) and len(spec) >= 2


def test_conv_lstm_cell_class():
    layer = keras.layers.ConvLSTM2D(2, 3)
    assert isinstance(layer.cell, _compat.conv_lstm_cell_class())


def test_missing_internal_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"Layer\._flatten_layers.*Keras"):
        _compat.sublayers(object())


def test_only_compat_imports_keras_src():
    package = pathlib.Path(_compat.__file__).parent
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "_compat.py" and "keras.src" in path.read_text()
    ]
    assert offenders == []


@pytest.mark.tensorflow_only
def test_keep_functional_cond():
    import tensorflow as tf

    ops = []

    @tf.function
    def f(x):
        out = tf.cond(x > 0, lambda: x * 2.0, lambda: x)
        op = out.op
        while op.type not in ("If", "StatelessIf") and op.inputs:
            op = op.inputs[0].op
        _compat.keep_functional_cond(op)
        ops.append(op)
        return out

    assert float(f(tf.constant(3.0))) == 6.0
    assert ops[0].get_attr("_lower_using_switch_merge") is False
    with pytest.raises(RuntimeError, match="Operation._set_attr"):
        _compat.keep_functional_cond(object())
