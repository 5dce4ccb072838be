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


def _residual_model():
    inputs = keras.Input((4,))
    h = keras.layers.Dense(4, name="branch")(inputs)
    added = keras.layers.Add(name="add_layer")([inputs, h])
    outputs = added + keras.layers.Dense(4, name="second")(added)
    return keras.Model(inputs, outputs), h, added, outputs


def test_is_functional():
    model = _residual_model()[0]
    assert _compat.is_functional(model)
    assert not _compat.is_functional(
        keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    )
    assert not _compat.is_functional(keras.layers.Dense(2))


def test_is_add_operation():
    model = _residual_model()[0]
    adds = [op for op in model.operations if _compat.is_add_operation(op)]
    assert len(adds) == 2
    assert isinstance(adds[0], keras.layers.Add)
    assert not isinstance(adds[1], keras.layers.Layer)  # `x + y`
    assert not _compat.is_add_operation(model.get_layer("branch"))


def test_tensor_history():
    model, h, added, _ = _residual_model()
    operation, node_index = _compat.tensor_history(h)
    assert operation is model.get_layer("branch") and node_index == 0
    assert _compat.tensor_history(added)[0] is model.get_layer("add_layer")
    assert _compat.tensor_history(np.zeros(2)) is None


def test_node_input_tensors():
    model, h, _, _ = _residual_model()
    (inputs,) = _compat.node_input_tensors(model.get_layer("add_layer"))
    assert len(inputs) == 2
    assert inputs[0] is model.inputs[0] and inputs[1] is h
    shared = keras.layers.Dense(4)
    x = keras.Input((4,))
    shared(shared(x))
    assert len(_compat.node_input_tensors(shared)) == 2


def test_layer_call_class():
    layer_class = _compat.layer_call_class()
    assert layer_class is keras.layers.Layer
    for cls in (keras.layers.Conv2D, keras.layers.MultiHeadAttention):
        assert cls.__call__ is layer_class.__call__


def _hub_blocks():
    keras_hub = pytest.importorskip("keras_hub")
    encoder = keras_hub.layers.TransformerEncoder(16, 2)
    encoder.build((1, 4, 8))
    decoder = keras_hub.layers.TransformerDecoder(16, 2)
    decoder.build((1, 4, 8), (1, 4, 8))  # with cross-attention
    vit = keras_hub.models.ViTBackbone(
        image_shape=(8, 8, 3),
        patch_size=4,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        mlp_dim=16,
    )
    blocks = [encoder, decoder]
    blocks += [
        layer
        for layer in _compat.sublayers(vit, recursive=True)
        if type(layer).__name__ == "ViTEncoderBlock"
    ]
    return blocks


def test_block_sublayer():
    blocks = _hub_blocks()
    assert {type(b).__name__ for b in blocks} == set(_compat.TRANSFORMER_BLOCKS)
    for block in blocks:
        for _, *names in _compat.TRANSFORMER_BLOCKS[type(block).__name__]:
            for name in names:
                sub = _compat.block_sublayer(block, name)
                assert isinstance(sub, keras.layers.Layer), (block, name)
                assert sub.built, (block, name)
    with pytest.raises(RuntimeError, match="keras_hub"):
        _compat.block_sublayer(blocks[0], "_no_such_layer")


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


@pytest.mark.tensorflow_only
def test_quiet_retracing():
    import tensorflow as tf

    function = tf.function(lambda x: x + 1.0)
    # The attribute exists in this TensorFlow (the touchpoint is alive).
    assert function._omit_frequent_tracing_warning is False
    assert _compat.quiet_retracing(function) is function
    assert function._omit_frequent_tracing_warning is True
    assert float(function(tf.constant(1.0))) == 2.0
    plain = object()  # Without the attribute: returned unchanged.
    assert _compat.quiet_retracing(plain) is plain


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="PyTorch")
def test_torch_device_dtype_and_generator():
    import torch

    assert str(_compat.torch_device()).startswith(("cpu", "cuda", "mps"))
    assert _compat.torch_dtype("bfloat16") is torch.bfloat16
    generator = _compat.torch_generator(3)
    assert isinstance(generator, torch.Generator)
    a = torch.rand(4, generator=generator)
    b = torch.rand(4, generator=_compat.torch_generator(3))
    assert torch.equal(a, b)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX")
def test_jax_key():
    import jax

    a = jax.random.uniform(_compat.jax_key(3), (4,))
    b = jax.random.uniform(_compat.jax_key(3), (4,))
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_variable_storage_detach_and_restore():
    variable = keras.Variable(np.arange(3.0, dtype="float32"))
    stored = _compat.variable_storage(variable)
    assert stored is not None
    _compat.set_variable_storage(variable, None)
    assert _compat.variable_storage(variable) is None
    _compat.set_variable_storage(variable, stored)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(variable.value), [0.0, 1.0, 2.0]
    )
    with pytest.raises(RuntimeError, match="keras.Variable._value"):
        _compat.variable_storage(object())
