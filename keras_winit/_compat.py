"""The Keras internals keras_winit uses, each behind one function.

Keras 3 has no public API for a few things the tools need: the sublayers
a layer tracks, running a Functional graph with a replacement for each
operation, the graph's nodes and their `Add`s, the optimizer's raw step
counter and gradient accumulators, and the state sharding of JAX's train
step; keras_hub has none for the sublayers of its transformer blocks.
Every such use goes through this module, and `tests/test_compat.py` tests
each function against the installed Keras, so a Keras release that moves
one of them fails one named test (and a clear `RuntimeError` here)
instead of a tool far away.

Public Keras classes are used everywhere else; nothing outside this module
imports `keras.src`.
"""

from collections.abc import Callable
from typing import Any

import keras

_KERAS = f"Keras {keras.__version__}"


def _missing(what: str, error: Exception) -> RuntimeError:
    return RuntimeError(
        f"keras_winit needs {what}, which {_KERAS} does not provide "
        f"({type(error).__name__}: {error}). Please report this with your "
        "Keras version."
    )


def sublayers(layer: Any, recursive: bool = False) -> list[Any]:
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


def call_has_training_arg(layer: Any) -> bool:
    """Whether `layer.call` takes a `training` argument."""
    try:
        return bool(layer._call_has_training_arg)
    except AttributeError as error:
        if not isinstance(layer, keras.layers.Layer):
            return False
        raise _missing("`Layer._call_has_training_arg`", error) from error


def run_functional(
    model: Any, inputs: Any, operation_fn: Callable[[Any], Callable[..., Any]]
) -> Any:
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


def raw_iterations(optimizer: Any) -> Any:
    """The optimizer's step counter, counting accumulation micro-steps.

    `optimizer.iterations` counts applied updates; with
    `gradient_accumulation_steps` the private `_iterations` counts every
    call of `apply`.
    """
    try:
        return optimizer._iterations
    except AttributeError as error:
        raise _missing("`Optimizer._iterations`", error) from error


def accumulated_gradient(optimizer: Any, variable: Any) -> Any:
    """The accumulator of `variable` under `gradient_accumulation_steps`."""
    try:
        index = optimizer._get_variable_index(variable)
        return optimizer._accumulated_gradients[index]
    except AttributeError as error:
        raise _missing("`Optimizer._accumulated_gradients`", error) from error


def optimizer_variables_order(optimizer: Any) -> list[Any]:
    """The trainable variables the optimizer was built with, in its order.

    `stateless_apply` (JAX) takes gradients in this order.
    """
    try:
        return list(optimizer._trainable_variables)
    except AttributeError as error:
        raise _missing("`Optimizer._trainable_variables`", error) from error


def state_sharding_spec(model: Any) -> Any:
    """JAX: the sharding of the train step's state under a distribution."""
    try:
        return model._get_state_sharding_spec()
    except AttributeError as error:
        raise _missing(
            "`JAXTrainer._get_state_sharding_spec`", error
        ) from error


def conv_lstm_cell_class() -> type:
    """The cell class of `ConvLSTM1D/2D/3D` (not exported by Keras)."""
    try:
        from keras.src.layers.rnn import conv_lstm
    except ImportError as error:
        raise _missing("`keras.src.layers.rnn.conv_lstm`", error) from error
    return conv_lstm.ConvLSTMCell


def is_functional(model: Any) -> bool:
    """Whether `model` is a Functional model (`keras.Model(inputs, outputs)`).

    `keras.src.models.functional.Functional` is not exported by Keras;
    `keras.Sequential` is not one.
    """
    try:
        from keras.src.models.functional import Functional
    except ImportError as error:
        raise _missing("`keras.src.models.functional`", error) from error
    return isinstance(model, Functional)


def is_add_operation(operation: Any) -> bool:
    """Whether a graph node's operation adds two tensors.

    `keras.layers.Add`, or `keras.ops.add` / `x + y` on symbolic tensors,
    whose operation class (`keras.src.ops.numpy.Add`) Keras does not
    export.
    """
    try:
        from keras.src.ops import numpy as numpy_ops

        add = numpy_ops.Add
    except (ImportError, AttributeError) as error:
        raise _missing("`keras.src.ops.numpy.Add`", error) from error
    return isinstance(operation, (keras.layers.Add, add))


def tensor_history(tensor: Any) -> tuple[Any, int] | None:
    """`(operation, node_index)` that made a symbolic `tensor`, or `None`.

    `KerasTensor._keras_history`; `None` for a tensor no operation made
    (e.g. not a `KerasTensor`).
    """
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None
    try:
        return history.operation, history.node_index
    except AttributeError as error:
        raise _missing("`KerasTensor._keras_history`", error) from error


def node_input_tensors(operation: Any) -> list[list[Any]]:
    """The input tensors of each call of `operation` in a graph, in order.

    `Operation._inbound_nodes[i].input_tensors`: item `i` belongs to the
    `node_index` `i` of `tensor_history`.
    """
    try:
        return [list(node.input_tensors) for node in operation._inbound_nodes]
    except AttributeError as error:
        raise _missing("`Operation._inbound_nodes`", error) from error


def layer_call_class() -> type:
    """The class whose `__call__` every Keras layer and model call runs.

    The walker replaces `keras.layers.Layer.__call__` for one pass to see
    each layer call; that works as long as no built-in layer or model
    class defines its own `__call__` before `Layer` in its MRO.
    """
    layer = keras.layers.Layer
    for cls in (keras.layers.Dense, keras.Sequential, keras.Model):
        if cls.__call__ is not layer.__call__:
            raise _missing(
                "every layer call to run `keras.layers.Layer.__call__`",
                TypeError(f"{cls.__name__} defines its own `__call__`"),
            )
    return layer


# keras_hub transformer blocks (layers that call sublayers, no graph
# inside), by class name: for each residual branch, `(branch name, the
# attribute of its normalization, *the attributes of its layers)`, in
# order. The normalization is inside the branch only when
# `normalize_first` (pre-LN). All but ViT's are private attributes.
TRANSFORMER_BLOCKS: dict[str, tuple[tuple[str, ...], ...]] = {
    "TransformerEncoder": (
        (
            "self_attention",
            "_self_attention_layer_norm",
            "_self_attention_layer",
        ),
        (
            "feedforward",
            "_feedforward_layer_norm",
            "_feedforward_intermediate_dense",
            "_feedforward_output_dense",
        ),
    ),
    "TransformerDecoder": (
        (
            "self_attention",
            "_self_attention_layer_norm",
            "_self_attention_layer",
        ),
        (
            "cross_attention",
            "_cross_attention_layer_norm",
            "_cross_attention_layer",
        ),
        (
            "feedforward",
            "_feedforward_layer_norm",
            "_feedforward_intermediate_dense",
            "_feedforward_output_dense",
        ),
    ),
    # ViT's blocks are always pre-LN.
    "ViTEncoderBlock": (
        ("attention", "layer_norm_1", "mha"),
        ("mlp", "layer_norm_2", "mlp"),
    ),
}


def block_sublayer(block: Any, name: str) -> Any:
    """The sublayer `name` of a `TRANSFORMER_BLOCKS` block, or `None`.

    keras_hub keeps a transformer block's sublayers in private attributes
    (`TransformerEncoder._self_attention_layer`, ...), set in `build`.
    `None` where the block has none (a decoder without cross-attention)
    or is not built yet.
    """
    if not getattr(block, "built", False):
        return getattr(block, name, None)
    try:
        return getattr(block, name)
    except AttributeError as error:
        raise _missing(
            f"`{type(block).__name__}.{name}` (keras_hub)", error
        ) from error


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


def quiet_retracing(function: Any) -> Any:
    """TensorFlow: turns off the "frequent retracing" log line of the
    `tf.function` `function` (its private `_omit_frequent_tracing_warning`),
    for functions traced once per model and signature by design (the line
    is keyed by the Python code, shared by every model's function).

    Returns `function`. A TensorFlow without the attribute only logs.
    """
    if hasattr(function, "_omit_frequent_tracing_warning"):
        function._omit_frequent_tracing_warning = True
    return function


def torch_device() -> Any:
    """PyTorch: the device Keras puts new tensors on (`get_device`)."""
    try:
        from keras.src.backend.torch.core import get_device
    except ImportError as error:
        raise _missing(
            "`keras.src.backend.torch.core.get_device`", error
        ) from error
    return get_device()


def torch_dtype(dtype: Any) -> Any:
    """PyTorch: the `torch.dtype` of a Keras dtype name."""
    try:
        from keras.src.backend.torch.core import to_torch_dtype
    except ImportError as error:
        raise _missing(
            "`keras.src.backend.torch.core.to_torch_dtype`", error
        ) from error
    return to_torch_dtype(dtype)


def torch_generator(seed: Any) -> Any:
    """PyTorch: the `torch.Generator` Keras' random ops use for `seed`."""
    try:
        from keras.src.backend.torch.random import torch_seed_generator
    except ImportError as error:
        raise _missing(
            "`keras.src.backend.torch.random.torch_seed_generator`", error
        ) from error
    return torch_seed_generator(seed)


def jax_key(seed: Any) -> Any:
    """JAX: the PRNG key Keras' random ops draw from for `seed`."""
    try:
        from keras.src.backend.jax.random import jax_draw_seed
    except ImportError as error:
        raise _missing(
            "`keras.src.backend.jax.random.jax_draw_seed`", error
        ) from error
    return jax_draw_seed(seed)


def variable_storage(variable: Any) -> Any:
    """A `keras.Variable`'s backing value, `None` when detached.

    Keras' JAX trainer detaches the model's variables during `fit`
    (`_purge_model_variables` sets `_value = None`) and passes their
    values in `state`.
    """
    if not hasattr(variable, "_value"):
        raise _missing("`keras.Variable._value`", AttributeError("_value"))
    return variable._value


def set_variable_storage(variable: Any, value: Any) -> None:
    """Sets what `variable_storage` reads (no cast, no copy, no check)."""
    if not hasattr(variable, "_value"):
        raise _missing("`keras.Variable._value`", AttributeError("_value"))
    variable._value = value
