"""One layer walker: the layer calls of a forward pass, with their structure.

`initialize`, `diagnose`, `lsuv`, `ActivationHistogramLogger` and the
gradient logger's warning all ask the same questions about a model: which
layers run, in forward order; which kernel is followed by a normalization
layer; which layers sit inside a residual branch, and where that branch is
added back to the stream. This module answers them once, for every kind of
Keras model:

- `Sequential` and Functional models, nested ones, Functional subclasses
  (keras_hub backbones) and subclassed models alike: the walker does not
  read a graph. It records the layer calls of one real forward pass, by
  dispatching `keras.layers.Layer.__call__` for that pass only (restored in
  a `finally`, also on error), so layers that call sublayers in their
  `call` (keras_hub `TransformerEncoder`/`TransformerDecoder`,
  `MultiHeadAttention` and its query/key/value/output `EinsumDense`) are
  opened too.
- Leaves are the layers that compute: kernel layers (`Dense`, `Conv*`,
  `EinsumDense`…), normalization layers, recurrent layers and wrappers
  (run as one call), and any layer without sublayers. Every other layer is
  a *container*: its sublayer calls are recorded inside it.
- Residual adds are found from the data flow of the pass: an `Add` layer
  (or `keras.ops.add` in a graph) whose inputs share an ancestor, and, in
  layers without a graph, a tensor `t` entering a layer that equals
  `u + v` where `u` is the output of a recorded call and `v` an earlier
  tensor that `u` was computed from (`x = x + residual` in keras_hub
  blocks). The calls between the fork and the add form the branch.

The recording works on the TensorFlow, JAX and PyTorch backends, also
inside a traced function (`jax.value_and_grad`); the structure (norms,
residuals) needs concrete values and is found on an eager pass.

Examples:

>>> from keras_winit import walker
>>> inputs = keras.Input((8,))
>>> h = keras.layers.Dense(8, name="d1")(inputs)
>>> b = keras.layers.Dense(8, activation="relu", name="d2")(h)
>>> b = keras.layers.Dense(8, name="d3")(b)
>>> h = keras.layers.Add(name="add")([h, b])
>>> h = keras.layers.LayerNormalization(name="ln")(h)
>>> out = keras.layers.Dense(2, name="head")(h)
>>> model = keras.Model(inputs, out)
>>> walk = walker.walk(model, np.ones((4, 8), "float32"))
>>> [c.layer.name for c in walk.calls]
['d1', 'd2', 'd3', 'add', 'ln', 'head']
>>> [(c.layer.name, c.branch_end) for c in walk.calls if c.branch is not None]
[('d2', False), ('d3', True)]
>>> walk.residuals[0].normalized  # the sum goes through `ln` only
True

Reference:
    - He et al., 2016, "Identity Mappings in Deep Residual Networks",
      arXiv:1603.05027.
    - Xiong et al., 2020, "On Layer Normalization in the Transformer
      Architecture" (pre-LN / post-LN), arXiv:2002.04745.
"""

import contextlib
import dataclasses
import re
import threading
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from keras_winit import _compat
from keras_winit import _moments

# Keras' public convolution classes, by kernel layout. Keras derives them
# from four private bases (`BaseConv`, ...), none a subclass of another,
# so the dispatch order among these tuples does not matter.
CONV_TYPES = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
)
CONV_TRANSPOSE_TYPES = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
DEPTHWISE_CONV_TYPES = (
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
)
SEPARABLE_CONV_TYPES = (
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
)

# Kernel layers: their kernel sets the scale of their output.
KERNEL_LAYER_TYPES = (
    (keras.layers.Dense, keras.layers.EinsumDense)
    + CONV_TYPES
    + CONV_TRANSPOSE_TYPES
    + DEPTHWISE_CONV_TYPES
    + SEPARABLE_CONV_TYPES
)

NORM_LAYER_TYPES = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.UnitNormalization,
) + tuple(
    getattr(keras.layers, n)
    for n in ("RMSNormalization",)
    if hasattr(keras.layers, n)
)

# Layers run as one call although they hold sublayers (a cell per step).
_OPAQUE_TYPES = (
    keras.layers.RNN,
    keras.layers.Bidirectional,
    keras.layers.TimeDistributed,
)

# Layers that pass the signal on without changing its scale much, which a
# kernel's output may cross before it reaches a normalization layer.
_TRANSPARENT_TYPES = (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
    keras.layers.Reshape,
    keras.layers.Permute,
    keras.layers.Identity,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
)

#: The kinds of a recorded call.
KINDS = (
    "kernel",
    "norm",
    "embedding",
    "add",
    "activation",
    "recurrent",
    "other",
)


#: Class names of normalization layers of any package: Keras' and, by
#: name, keras_hub's `LlamaLayerNorm`, `T5LayerNorm`, `RmsNorm2d`,
#: `Qwen3_5RMSNormGated`, `Gemma3nRMSNorm`, `QKNorm`...
NORM_CLASS_NAME = re.compile(
    r"(Norm|Normalization)(1d|2d|3d|Gated)?$", re.IGNORECASE
)


def is_norm(layer: keras.layers.Layer) -> bool:
    """Whether a layer normalizes its input (BatchNorm, LayerNorm, RMS…).

    By type (`NORM_LAYER_TYPES`), or by class name: names ending in `Norm`
    or `Normalization` (optionally followed by `1d`/`2d`/`3d`/`Gated`) and
    names holding `RMSNorm`, so that other packages' norms count too.
    `SpectralNormalization` (a wrapper of a kernel layer) is not a norm.

    Examples:

    >>> keras_winit.walker.is_norm(keras.layers.LayerNormalization())
    True
    >>> class T5LayerNorm(keras.layers.Layer):
    ...     pass
    >>> keras_winit.walker.is_norm(T5LayerNorm())
    True
    """
    if isinstance(layer, NORM_LAYER_TYPES):
        return True
    if isinstance(layer, keras.layers.SpectralNormalization):
        return False
    name = type(layer).__name__
    return "rmsnorm" in name.lower() or bool(NORM_CLASS_NAME.search(name))


def kind_of(layer: keras.layers.Layer) -> str:
    """The kind of a leaf layer: one of `KINDS`."""
    if isinstance(layer, KERNEL_LAYER_TYPES):
        return "kernel"
    if is_norm(layer):
        return "norm"
    if isinstance(layer, keras.layers.Embedding) or (
        "embedding" in type(layer).__name__.lower()
    ):
        return "embedding"
    if isinstance(layer, keras.layers.Add):
        return "add"
    if isinstance(
        layer,
        (
            keras.layers.Activation,
            keras.layers.ReLU,
            keras.layers.LeakyReLU,
            keras.layers.ELU,
            keras.layers.PReLU,
            keras.layers.Softmax,
        ),
    ):
        return "activation"
    if isinstance(layer, _OPAQUE_TYPES):
        return "recurrent"
    return "other"


def is_leaf(layer: keras.layers.Layer) -> bool:
    """Whether the walker records a call of `layer` as one step."""
    if isinstance(layer, KERNEL_LAYER_TYPES + _OPAQUE_TYPES) or is_norm(layer):
        return True
    return not any(True for _ in _sublayers(layer))


def _sublayers(layer):
    if not isinstance(layer, keras.layers.Layer):
        return []
    return _compat.sublayers(layer)


def variable_kinds(model: keras.layers.Layer) -> dict[str, str]:
    """Path -> kind of each trainable variable, as `health` judges them.

    The kind (one of `keras_winit.health.VARIABLE_KINDS`) comes from the
    deepest layer that owns the variable: `"kernel"` and `"bias"` of
    kernel layers (and of any layer, by the variable's name),
    `"norm_scale"` / `"norm_bias"` of normalization layers,
    `"embedding"` of embedding tables; `"other"` for the rest. No forward
    pass is needed.

    Examples:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2),
    ...                           keras.layers.LayerNormalization()])
    >>> sorted(keras_winit.walker.variable_kinds(model).values())
    ['bias', 'kernel', 'norm_bias', 'norm_scale']
    """
    owner = {}
    # Parents come before their sublayers: the last owner is the deepest.
    for layer in [model, *_compat.sublayers(model, recursive=True)]:
        for variable in layer.trainable_weights:
            owner[id(variable)] = layer
    kinds = {}
    for variable in model.trainable_weights:
        layer = owner.get(id(variable))
        name = variable.path.rsplit("/", 1)[-1]
        kind = kind_of(layer) if layer is not None else "other"
        if kind == "norm":
            kinds[variable.path] = (
                "norm_scale" if name in ("gamma", "scale") else "norm_bias"
            )
        elif kind == "embedding":
            kinds[variable.path] = "embedding"
        elif "bias" in name:
            kinds[variable.path] = "bias"
        elif "kernel" in name:
            kinds[variable.path] = "kernel"
        else:
            kinds[variable.path] = "other"
    return kinds


@dataclasses.dataclass
class Call:
    """One recorded leaf-layer call.

    Attributes:
        index: Position in forward order (0-based).
        layer: The layer.
        path: Its Keras path (`"gpt2_backbone/transformer_layer_0/
            self_attention/query"`), or the path of the enclosing
            container plus its name for a layer without weights.
        call_index: 0 for the layer's first call, 1 for the second…
        kind: One of `KINDS`.
        parents: Paths of the enclosing containers, outermost first.
        block: Index (into `Walk.blocks`) of the innermost enclosing
            container call that keeps the shape of the stream (a
            transformer block, a residual unit), or `None`.
        norm_after: Path of the normalization layer this call's output
            reaches before any other kernel layer, residual add or block
            end (through activations, dropout, padding…), else `None`.
        branch: Index (into `Walk.residuals`) of the innermost residual
            branch this call lies in, else `None`.
        branch_end: Whether this call's output is what its branch adds
            back to the stream.
        shortcut: Whether this call's output is the skip input of a
            residual add (a projection shortcut).
    """

    index: int
    layer: object
    path: str
    call_index: int
    kind: str
    parents: tuple
    block: object = None
    norm_after: object = None
    branch: object = None
    branch_end: bool = False
    shortcut: bool = False

    @property
    def name(self) -> str:
        if self.call_index == 0:
            return self.path
        return f"{self.path}/call_{self.call_index + 1}"


@dataclasses.dataclass
class Block:
    """One call of a container layer (a layer that calls sublayers).

    Attributes:
        path: The container's path.
        layer: The container.
        first: Index of its first recorded leaf call.
        last: Index of its last recorded leaf call.
        keeps_shape: Whether its output has the shape of its input (a
            block of a residual stream).
        in_std: Std of its (first) input, when known.
        out_std: Std of its output, when known.
    """

    path: str
    layer: object
    first: int
    last: int
    keeps_shape: bool
    in_std: object = None
    out_std: object = None
    # Positions in the recorder's kept tensors of (input, output), whose
    # stds a compiled pass measures again.
    _sources: tuple = dataclasses.field(default=(), repr=False)


@dataclasses.dataclass
class Residual:
    """One residual add `out = skip + branch`.

    Attributes:
        at: Path of the `Add` layer, or of the layer whose input is the
            sum (for `x + residual` inside a layer's `call`).
        calls: Indices of the calls of the branch, in order.
        skip_std: Std of the skip (stream) input.
        branch_std: Std of the branch output.
        out_std: Std of the sum.
        normalized: Whether the sum is normalized before it goes on
            (post-LN), rather than carried on as the next skip (pre-LN,
            pre-activation ResNets).
    """

    at: str
    calls: list
    skip_std: float
    branch_std: float
    out_std: float
    normalized: bool = False
    gated: bool = False
    _ids: tuple = dataclasses.field(default=(), repr=False)
    # Positions in the recorder's kept tensors of (skip, branch, sum).
    _sources: tuple = dataclasses.field(default=(), repr=False)

    @property
    def growth(self) -> float:
        """`out_std / skip_std`: how much the block grows the stream."""
        if self.skip_std == 0:
            return float("inf") if self.out_std > 0 else float("nan")
        return self.out_std / self.skip_std


@dataclasses.dataclass
class Walk:
    """The calls of one forward pass, with their structure."""

    calls: list[Call]
    blocks: list[Block]
    residuals: list[Residual]
    outputs: object = None

    def kernels(self) -> list[Call]:
        """The kernel-layer calls, in forward order."""
        return [c for c in self.calls if c.kind == "kernel"]

    def __str__(self):
        lines = []
        for c in self.calls:
            notes = [c.kind]
            if c.norm_after:
                notes.append(f"-> {c.norm_after}")
            if c.branch is not None:
                notes.append(
                    f"branch {c.branch}" + (" end" if c.branch_end else "")
                )
            lines.append(f"{c.index:4d} {c.name}  ({', '.join(notes)})")
        return "\n".join(lines)


# ----------------------------------------------------------------------
# Recording.

_STATE = threading.local()


class _Recorder:
    def __init__(self, model, leaf_fn, norm_training, structure, values=True):
        self.members = {
            id(layer)
            for layer in [model, *_compat.sublayers(model, recursive=True)]
        }
        self.leaf_fn = leaf_fn
        self.norm_training = norm_training
        self.structure = structure
        # Whether tensors have values (not inside a traced function): the
        # residual adds in layers' `call` and the stds need them.
        self.values = values
        self.inside_leaf = 0
        self.stack = []  # (path, layer, first index)
        self.calls = []
        self.blocks = []
        self.counts = {}
        # Data flow (structure only): tensor id -> producer; tensors kept
        # alive so that ids stay unique during the pass.
        self.producer = {}
        self.inputs_of = []
        self.keep = []
        self.index_of = {}  # tensor id -> its first position in `keep`
        self.adds = []  # (call index, skip tensor, branch tensor, sum)
        self.entries = []  # input ids of each container call
        self.unknown = {}  # call index -> entry node of its container
        self.positions = {}  # node -> index of the last call before it
        self.input_nodes = {}  # node -> producers of its inputs, then

    def path(self, layer):
        parent = self.stack[-1][0] if self.stack else None
        if layer.path and layer.weights:
            return layer.path
        if parent is None:
            return layer.name
        return f"{parent}/{layer.name}"

    def dispatch(self, original, layer, args, kwargs):
        path = self.path(layer)
        if not is_leaf(layer):
            return self._container(original, layer, path, args, kwargs)
        count = self.counts.get(id(layer), 0)
        self.counts[id(layer)] = count + 1
        if self.norm_training and isinstance(
            layer, keras.layers.BatchNormalization
        ):
            kwargs = {**kwargs, "training": True}
        call = Call(
            index=len(self.calls),
            layer=layer,
            path=path,
            call_index=count,
            kind=kind_of(layer),
            parents=tuple(p[0] for p in self.stack[1:]),
        )
        self.inside_leaf += 1
        try:
            out = self.leaf_fn(layer, args, kwargs)
        finally:
            self.inside_leaf -= 1
        self.calls.append(call)
        if self.structure:
            self._flow(call.index, args, kwargs, out)
        return out

    def _container(self, original, layer, path, args, kwargs):
        first = len(self.calls)
        entry = None
        if self.structure:
            entry = ("entry", len(self.entries))
            ins = _tensors((args, kwargs))
            self._keep(ins)
            self.entries.append([id(t) for t in ins])
            self.positions[entry] = first - 1
            self.inputs_of.append((entry, [id(t) for t in ins]))
            self.input_nodes[entry] = [self.producer.get(id(t)) for t in ins]
        self.stack.append((path, layer, first, entry))
        try:
            out = original(layer, *args, **kwargs)
        finally:
            self.stack.pop()
        if len(self.calls) > first and self.stack:
            ins = _tensors((args, kwargs))
            outs = _tensors(out)
            keeps = bool(
                ins
                and len(outs) == 1
                and tuple(ins[0].shape) == tuple(outs[0].shape)
            )
            block = Block(
                path=path,
                layer=layer,
                first=first,
                last=len(self.calls) - 1,
                keeps_shape=keeps,
            )
            if self.structure and keeps and self.values:
                block.in_std = _std(ins[0])
                block.out_std = _std(outs[0])
            self.blocks.append(block)
            if self.structure:
                for t in outs:
                    if id(t) not in self.producer:
                        self._find_add(len(self.calls) - 1, t)
                self.positions[("block", len(self.blocks) - 1)] = (
                    len(self.calls) - 1
                )
                self._flow(("block", len(self.blocks) - 1), args, kwargs, out)
                if keeps:
                    block._sources = (
                        self.index_of[id(ins[0])],
                        self.index_of[id(outs[0])],
                    )
        return out

    def _flow(self, node, args, kwargs, out):
        ins = _tensors((args, kwargs))
        outs = _tensors(out)
        self._keep(ins)
        self._keep(outs)
        if not isinstance(node, tuple):
            self.inputs_of.append((node, [id(t) for t in ins]))
            for t in ins:
                if id(t) not in self.producer:
                    self._find_add(node, t)
                if id(t) not in self.producer and self.stack:
                    # Made by an op inside the enclosing container: it
                    # depends on what entered the container.
                    self.unknown[node] = self.stack[-1][3]
            self.input_nodes[node] = [self.producer.get(id(t)) for t in ins]
        passed = {id(t) for t in ins}
        for t in outs:
            if id(t) in passed and not isinstance(node, tuple):
                # Passed through unchanged (dropout at inference): the
                # tensor now comes from this call.
                self.producer[id(t)] = node
            else:
                self.producer.setdefault(id(t), node)

    def _keep(self, tensors):
        for t in tensors:
            self.index_of.setdefault(id(t), len(self.keep))
            self.keep.append(t)

    def _find_add(self, node, t):
        """Is `t` (made by no recorded call) `u + v`, u a recorded output?"""
        if not self.values:
            return
        value = _value(t)
        if value is None:
            return
        shape = value.shape
        candidates = []
        for tensor in reversed(self.keep[-400:]):
            if id(tensor) not in self.producer or tensor is t:
                continue
            if tuple(tensor.shape) != shape:
                continue
            candidates.append(tensor)
            if len(candidates) >= 24:
                break
        values = [(c, _value(c)) for c in candidates]
        for i, (u, uv) in enumerate(values):
            if uv is None:
                continue
            rest = value - uv
            for v, vv in values[i + 1 :]:
                if vv is None:
                    continue
                if np.allclose(rest, vv, rtol=1e-4, atol=1e-5):
                    self.adds.append(
                        (
                            node,
                            v,
                            u,
                            t,
                            self.producer.get(id(v)),
                            self.producer.get(id(u)),
                        )
                    )
                    self.producer[id(t)] = ("add", len(self.adds) - 1)
                    return


def _tensors(nest):
    return [t for t in keras.tree.flatten(nest) if keras.ops.is_tensor(t)]


def _value(t):
    try:
        return np.asarray(keras.ops.convert_to_numpy(t), dtype=np.float64)
    except Exception:  # a tracer, or not numeric
        return None


def _std(t):
    return _moments.std(t)


@contextlib.contextmanager
def _dispatching(recorder):
    """`Layer.__call__` routes the model's layers to `recorder`."""
    previous = getattr(_STATE, "recorder", None)
    layer_class = _compat.layer_call_class()
    original = layer_class.__call__
    patched = getattr(original, "_keras_winit_original", None)
    if patched is not None:
        original = patched

    def __call__(self, *args, **kwargs):
        rec = getattr(_STATE, "recorder", None)
        if rec is None or rec.inside_leaf or id(self) not in rec.members:
            return original(self, *args, **kwargs)
        return rec.dispatch(original, self, args, kwargs)

    __call__._keras_winit_original = original  # type: ignore[attr-defined]
    _STATE.recorder = recorder
    layer_class.__call__ = __call__  # type: ignore[method-assign]
    try:
        yield
    finally:
        _STATE.recorder = previous
        if previous is None:
            layer_class.__call__ = original  # type: ignore[method-assign]


def _plain_leaf(layer, args, kwargs):
    return layer(*args, **kwargs)


def execute(
    model: keras.layers.Layer,
    inputs: Any,
    leaf_fn: Callable[[keras.layers.Layer, tuple, dict], Any] | None = None,
    training: bool = False,
    norm_training: bool = False,
    structure: bool = False,
) -> Walk:
    """Runs `model(inputs)`, with `leaf_fn` in place of each leaf call.

    Args:
        model: A `keras.Model` (any kind) or layer.
        inputs: What the model is called on.
        leaf_fn: `leaf_fn(layer, args, kwargs)` must return what
            `layer(*args, **kwargs)` returns; `None` calls the layer.
        training: The `training` argument of the model call.
        norm_training: If `True`, `BatchNormalization` layers run in
            training mode (batch statistics) whatever `training` is.
        structure: If `True`, find the norms and residuals (needs concrete
            values: not inside a traced function).

    Returns:
        A `Walk`; `walk.outputs` holds the model's outputs.
    """
    return _execute(model, inputs, leaf_fn, training, norm_training, structure)[
        0
    ]


def _execute(
    model,
    inputs,
    leaf_fn=None,
    training=False,
    norm_training=False,
    structure=False,
    traced=False,
):
    """`execute`, also returning the recorder (its kept tensors).

    With `traced=True` (inside a traced function, where tensors have no
    values), the data flow is recorded, and the tensors kept in the same
    order as on an eager pass, but nothing is measured: the structure
    comes from an eager pass.
    """
    recorder = _Recorder(
        model,
        leaf_fn or _plain_leaf,
        norm_training,
        structure or traced,
        values=not traced,
    )
    with _dispatching(recorder):
        kwargs = {}
        if _takes_training(model):
            kwargs["training"] = training
        recorder.stack.append((model.path or model.name, model, 0, None))
        try:
            outputs = _call_top(model, inputs, kwargs)
        finally:
            recorder.stack.pop()
    walk = Walk(
        calls=recorder.calls,
        blocks=recorder.blocks,
        residuals=[],
        outputs=outputs,
    )
    if structure and not traced:
        _structure(walk, recorder)
    return walk, recorder


def _takes_training(model):
    return _compat.call_has_training_arg(model)


def _call_top(model, inputs, kwargs):
    # The model's own `__call__` (input standardization, masks, training
    # context) without being recorded as a container.
    original = keras.layers.Layer.__call__._keras_winit_original
    return original(model, inputs, **kwargs)


def example_batch(
    model: keras.Model,
    batch_size: int = 2,
    seed: int = 0,
    unknown_size: int = 8,
) -> Any:
    """A batch that fits `model.inputs` (normal floats, zero integers).

    For tools that have a model but no data (`initialize`, a callback's
    warning) and want its structure: `walk(model, example_batch(model))`.
    An unknown non-batch dimension (a sequence length) gets
    `unknown_size`. Raises `ValueError` when the model has no symbolic
    inputs (a subclassed model: pass a real batch).
    """
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise ValueError(
            f"Model {model.name!r} has no symbolic inputs to build a batch "
            "from (a subclassed model): pass a batch `x`."
        )
    rng = np.random.default_rng(seed)

    def make(spec):
        shape = tuple(
            unknown_size if d is None else d for d in tuple(spec.shape)[1:]
        )
        shape = (batch_size,) + shape
        dtype = keras.backend.standardize_dtype(spec.dtype)
        if "int" in dtype or dtype == "bool":
            return np.zeros(shape, dtype)
        return rng.standard_normal(shape).astype(dtype)

    struct = getattr(model, "_inputs_struct", inputs)
    return keras.tree.map_structure(make, struct)


def walk(
    model: keras.Model,
    x: Any = None,
    training: bool = False,
    norm_training: bool = False,
) -> Walk:
    """Records one forward pass of `model` on `x`, with its structure.

    Args:
        model: Any built `keras.Model` (Sequential, Functional, a
            Functional subclass such as a keras_hub backbone, or a
            subclassed model).
        x: A batch the model can be called on; `None` builds one from
            `model.inputs` (`example_batch`). The structure (norms,
            residual adds) does not depend on the values.
        training: Passed as `training` to the model.
        norm_training: Run `BatchNormalization` in training mode.

    Returns:
        A `Walk`: `.calls` (one `Call` per leaf call, forward order, with
        `kind`, `parents`, `norm_after`, `branch`, `branch_end`),
        `.blocks`, `.residuals`, `.kernels()`.
    """
    if x is None:
        x = example_batch(model)
    return execute(
        model, x, training=training, norm_training=norm_training, structure=True
    )


# ----------------------------------------------------------------------
# Structure from the data flow.


def _structure(walk, rec):
    calls = walk.calls
    inputs_of = dict(rec.inputs_of)
    # Consumers: node -> calls whose inputs include the node's outputs.
    consumers: dict[Any, Any] = {}
    for index, nodes in rec.input_nodes.items():
        if isinstance(index, tuple):
            continue
        for node in nodes:
            if node is not None:
                consumers.setdefault(node, []).append(index)

    def parents_of(node):
        if isinstance(node, tuple) and node[0] == "add":
            return list(rec.adds[node[1]][4:])
        found = list(rec.input_nodes.get(node, []))
        if not isinstance(node, tuple) and node in rec.unknown:
            found.append(rec.unknown[node])
        return found

    ancestors_cache: dict[Any, Any] = {}

    def ancestors(node):
        if node is None:
            return frozenset()
        if node in ancestors_cache:
            return ancestors_cache[node]
        seen = set()
        todo = [node]
        while todo:
            n = todo.pop()
            for p in parents_of(n):
                if p is not None and p not in seen:
                    seen.add(p)
                    todo.append(p)
        ancestors_cache[node] = frozenset(seen)
        return ancestors_cache[node]

    residuals: list[Residual] = []
    # A stream's sum is the next block's skip: each tensor measured once
    # (`rec.keep` holds them, so their ids stay unique).
    stds: dict[int, Any] = {}

    def std_of(t):
        if id(t) not in stds:
            stds[id(t)] = _std(t)
        return stds[id(t)]

    def position(node):
        if isinstance(node, int):
            return node
        if isinstance(node, tuple) and node[0] == "add":
            return rec.adds[node[1]][0] - 1
        return rec.positions.get(node, -1)

    def add_residual(at, skip_node, branch_node, skip, branch, total):
        skip_anc = ancestors(skip_node) | {skip_node}
        branch_anc = ancestors(branch_node) | {branch_node}
        # The calls after the fork up to the branch end, that the skip
        # does not depend on (siblings in a layer's `call` included).
        fork = max(
            (position(n) for n in (skip_anc & branch_anc) - {None}),
            default=-1,
        )
        end = position(branch_node)
        members = [
            i
            for i in range(fork + 1, end + 1)
            if i not in skip_anc
            and (
                i in branch_anc
                or not isinstance(branch_node, int)
                or calls[i].parents[: len(calls[end].parents)]
                != calls[end].parents
                or True
            )
        ]
        if all(calls[i].kind == "embedding" for i in members):
            return
        if not members:
            return
        r = len(residuals)
        residuals.append(
            Residual(
                at=at,
                calls=members,
                skip_std=std_of(skip),
                branch_std=std_of(branch),
                out_std=std_of(total),
                _ids=(id(skip), id(total)),
                _sources=tuple(
                    rec.index_of.get(id(t)) for t in (skip, branch, total)
                ),
            )
        )
        for i in members:
            calls[i].branch = r
        if isinstance(branch_node, int):
            end_call = calls[branch_node]
            end_call.branch_end = True
            # A learned scale at the branch end (LayerScale, a SkipInit
            # gate) starts small on purpose.
            residuals[-1].gated = end_call.kind == "other" and bool(
                end_call.layer.trainable_weights
            )
        if isinstance(skip_node, int):
            calls[skip_node].shortcut = True

    # Add layers (and graph adds) whose inputs share an ancestor.
    for c in calls:
        if c.kind != "add" or not rec.structure:
            continue
        ids = inputs_of.get(c.index, [])
        if len(ids) != 2:
            continue
        nodes = rec.input_nodes.get(c.index, [None, None])
        tensors = [_by_id(rec, t) for t in ids]
        a_anc = ancestors(nodes[0]) | {nodes[0]}
        b_anc = ancestors(nodes[1]) | {nodes[1]}
        if not (a_anc & b_anc) - {None}:
            continue
        # The skip is the input with fewer calls of its own.
        a_own = len(a_anc - b_anc)
        b_own = len(b_anc - a_anc)
        s, b = (0, 1) if a_own <= b_own else (1, 0)
        out = _by_id(rec, _output_id(rec, c.index))
        add_residual(
            c.path,
            nodes[s],
            nodes[b],
            tensors[s],
            tensors[b],
            out if out is not None else tensors[b],
        )
    # `x + residual` inside layers without a graph.
    for node, v, u, t, vn, un in rec.adds:
        if vn not in ancestors(un):
            continue
        add_residual(calls[node].path, vn, un, v, u, t)
    walk.residuals = residuals
    skips = {r._ids[0] for r in residuals}
    for r in residuals:
        total = r._ids[1]
        users = [
            calls[i]
            for i, ids in rec.inputs_of
            if isinstance(i, int) and total in ids
        ]
        r.normalized = (
            total not in skips
            and bool(users)
            and all(u.kind == "norm" for u in users)
        )
    # Blocks: the innermost shape-keeping container of each call.
    for b_index, block in enumerate(walk.blocks):
        if not block.keeps_shape:
            continue
        for i in range(block.first, block.last + 1):
            current = calls[i].block
            if current is None or (
                walk.blocks[current].last - walk.blocks[current].first
                > block.last - block.first
            ):
                calls[i].block = b_index
    # Norm after each kernel: through transparent layers only.
    for c in calls:
        if c.kind != "kernel":
            continue
        node = c.index
        for _ in range(8):
            nxt = consumers.get(node, [])
            if len(nxt) != 1:
                break
            n = calls[nxt[0]]
            if n.kind == "norm":
                c.norm_after = n.path
                break
            if not isinstance(n.layer, _TRANSPARENT_TYPES) and not (
                n.kind == "activation"
            ):
                break
            node = n.index


def _by_id(rec, tid):
    for t in rec.keep:
        if id(t) == tid:
            return t
    return None


def _output_id(rec, index):
    for tid, node in rec.producer.items():
        if node == index:
            return tid
    return None


# ----------------------------------------------------------------------
# A batch for models without symbolic inputs (used by `initialize`).


def built_batch(
    model: keras.layers.Layer,
    batch_size: int = 2,
    seed: int = 0,
    unknown_size: int = 8,
) -> Any:
    """A batch for any built model: `example_batch`, else its build shapes.

    A model with symbolic inputs (Sequential, Functional) gets
    `example_batch(model)`. A subclassed model or layer has none; it gets
    normal floats (of its `input_dtype`) of the shape it was built with
    (`model.get_build_config()`: from `build(input_shape)` or its first
    call), the batch dimension `batch_size` and other unknown dimensions
    `unknown_size`. A model built at construction (it has no `build` of
    its own: no build shape) gets the batch of its first sublayer, usually
    the first it calls: a guess, that a forward pass confirms or refutes.

    Raises `ValueError` when neither is known (not built, or built from
    several call arguments).

    Examples:

    >>> class Net(keras.Model):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.dense = keras.layers.Dense(3)
    ...     def call(self, x):
    ...         return self.dense(x)
    >>> net = Net()
    >>> _ = net(np.ones((4, 5), "float32"))
    >>> keras_winit.walker.built_batch(net).shape
    (2, 5)
    """
    if getattr(model, "inputs", None):
        batch = example_batch(model, batch_size, seed, unknown_size)
        if isinstance(model, keras.Sequential) and len(batch) == 1:
            # `example_batch` gives a list; a Sequential model warns that
            # it expects its one input unwrapped.
            return batch[0]
        return batch
    config = model.get_build_config() if model.built else None
    shape = (config or {}).get("input_shape")
    if shape is None:
        # Built at construction (no `build` of its own): what its first
        # sublayer, usually the first one it calls, was built with.
        first = _sublayers(model)[:1]
        if config is None and first and first[0].built:
            try:
                return built_batch(first[0], batch_size, seed, unknown_size)
            except ValueError:
                pass
        raise ValueError(
            f"Model {model.name!r} has no symbolic inputs and no single "
            "input shape it (or its first sublayer) was built with to make "
            f"a batch from. Received: build config {config!r}"
        )
    rng = np.random.default_rng(seed)
    dtype = keras.backend.standardize_dtype(
        getattr(model, "input_dtype", None) or "float32"
    )

    def is_shape(s):
        return isinstance(s, (list, tuple)) and all(
            d is None or isinstance(d, int) for d in s
        )

    def make(s):
        if is_shape(s):
            dims = [unknown_size if d is None else d for d in s[1:]]
            return rng.standard_normal((batch_size, *dims)).astype(dtype)
        if isinstance(s, dict):
            return {k: make(v) for k, v in s.items()}
        return [make(v) for v in s]

    return make(shape)
