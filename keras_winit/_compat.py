"""The Keras internals keras_winit uses, each behind one function.

Keras 3 has no public API for a few things the tools need: the sublayers
a layer tracks, running a Functional graph with a replacement for each
operation, the optimizer's raw step counter and gradient accumulators,
and the state sharding of JAX's train step. Every such use goes through
this module, and `tests/test_compat.py` tests each function against the
installed Keras, so a Keras release that moves one of them fails one named
test (and a clear `RuntimeError` here) instead of a tool far away.

Public Keras classes are used everywhere else; nothing outside this module
imports `keras.src`.
"""

import keras

_KERAS = f"Keras {keras.__version__}"


def _missing(what, error):
    return RuntimeError(
        f"keras_winit needs {what}, which {_KERAS} does not provide "
        f"({type(error).__name__}: {error}). Please report this with your "
        "Keras version."
    )


def sublayers(layer, recursive=False):
    """The layers `layer` tracks (not `layer` itself), in creation order.

    `Layer._flatten_layers`: Keras' own traversal, which sees layers held
    in attributes, lists and dicts, also of layers that are not models.
    """
    try:
        return list(
            layer._flatten_layers(include_self=False, recursive=recursive)
        )
    except AttributeError as error:
        raise _missing("`Layer._flatten_layers`", error) from error


def call_has_training_arg(layer):
    """Whether `layer.call` takes a `training` argument."""
    try:
        return bool(layer._call_has_training_arg)
    except AttributeError as error:
        if not isinstance(layer, keras.layers.Layer):
            return False
        raise _missing("`Layer._call_has_training_arg`", error) from error


def run_functional(model, inputs, operation_fn):
    """Runs a Functional `model`'s graph with `operation_fn(op)` per node.

    `operation_fn(op)` returns the callable used in place of `op` (a layer
    or a `keras.ops` operation). Returns the model's outputs in the
    structure of `model.outputs`. `Functional._standardize_inputs` and
    `Functional._run_through_graph`: Keras' own graph executor, so input
    dicts, nested models and masks behave as in `model(inputs)`.
    """
    try:
        flat = model._standardize_inputs(inputs)
        run = model._run_through_graph
    except AttributeError as error:
        raise _missing("`Functional._run_through_graph`", error) from error
    return run(flat, operation_fn=operation_fn)


def raw_iterations(optimizer):
    """The optimizer's step counter, counting accumulation micro-steps.

    `optimizer.iterations` counts applied updates; with
    `gradient_accumulation_steps` the private `_iterations` counts every
    call of `apply`.
    """
    try:
        return optimizer._iterations
    except AttributeError as error:
        raise _missing("`Optimizer._iterations`", error) from error


def accumulated_gradient(optimizer, variable):
    """The accumulator of `variable` under `gradient_accumulation_steps`."""
    try:
        index = optimizer._get_variable_index(variable)
        return optimizer._accumulated_gradients[index]
    except AttributeError as error:
        raise _missing("`Optimizer._accumulated_gradients`", error) from error


def optimizer_variables_order(optimizer):
    """The trainable variables the optimizer was built with, in its order.

    `stateless_apply` (JAX) takes gradients in this order.
    """
    try:
        return list(optimizer._trainable_variables)
    except AttributeError as error:
        raise _missing("`Optimizer._trainable_variables`", error) from error


def state_sharding_spec(model):
    """JAX: the sharding of the train step's state under a distribution."""
    try:
        return model._get_state_sharding_spec()
    except AttributeError as error:
        raise _missing(
            "`JAXTrainer._get_state_sharding_spec`", error
        ) from error


def conv_lstm_cell_class():
    """The cell class of `ConvLSTM1D/2D/3D` (not exported by Keras)."""
    try:
        from keras.src.layers.rnn import conv_lstm
    except ImportError as error:
        raise _missing("`keras.src.layers.rnn.conv_lstm`", error) from error
    return conv_lstm.ConvLSTMCell


def keep_functional_cond(op):
    """TensorFlow: keeps the `If` op `op` of a `tf.cond` functional.

    Inside a `tf.function`, TensorFlow lowers `tf.cond` to Switch/Merge
    ops, which visit the ops of the branch not taken on every step; the
    private attribute `_lower_using_switch_merge=False` (set through the
    private `Operation._set_attr`) keeps the `If` op, which runs only the
    taken branch.
    """
    try:
        from tensorflow.core.framework import attr_value_pb2

        op._set_attr(
            "_lower_using_switch_merge", attr_value_pb2.AttrValue(b=False)
        )
    except (AttributeError, ImportError) as error:
        raise _missing(
            "TensorFlow's `Operation._set_attr` (`_lower_using_switch_merge`)",
            error,
        ) from error
