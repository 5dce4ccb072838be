"""Layer-by-layer execution of a Keras model, shared by the signal tools.

`diagnose`, `ActivationHistogramLogger` and `lsuv` all need to run a model
one layer at a time and look at what each layer does: its pre-activation
(the output of a `Dense`/`Conv` layer *before* its fused activation), its
output, and the gradient of a loss with respect to both. This module holds
that machinery, once:

- `execute(model, inputs, leaf_fn)` runs any model and calls
  `leaf_fn(layer, args, kwargs)` in place of every leaf layer call, in
  forward order (`keras_winit.walker` records the calls of the pass, so
  nested layers and subclassed models are covered).
- `split_call(layer, args, kwargs)` returns `(z, a)`: for a kernel layer
  with a fused activation, `z` is its output computed with the activation
  temporarily set to `linear` and `a = activation(z)`; otherwise `z` is
  `None` and `a` the layer's output.
- `probe(model, x, ...)` runs one forward and backward pass and returns
  one `Record` per layer call: under a `tf.GradientTape` on TensorFlow,
  with `torch.autograd.grad` on PyTorch, and with `jax.value_and_grad`
  of a pure function of zero perturbations added to every signal (and of
  the kernels, held in a `keras.StatelessScope`) on JAX. Each record
  also carries its call's structure from the walker (`kind`,
  `norm_after`, `branch`, `branch_end`, `parents`, `block`).
  `probe_tensors` is the same pass with the signals left as backend
  tensors, for callers that reduce them without a copy (`diagnose`).

The TensorFlow, JAX and PyTorch backends are supported, and every kind of
`keras.Model`.
"""

import dataclasses
import math
import numbers
from typing import Any

import keras
import numpy as np

from keras_winit import _compat
from keras_winit import walker

# Kernel layers whose fused activation is split off, and which LSUV
# rescales. Subclasses are covered by `isinstance`.
KERNEL_LAYER_TYPES = walker.KERNEL_LAYER_TYPES

# Activations whose output saturates: name -> (low, high) asymptotes.
SATURATING = {
    "tanh": (-1.0, 1.0),
    "sigmoid": (0.0, 1.0),
    "hard_sigmoid": (0.0, 1.0),
    "softsign": (-1.0, 1.0),
    "hard_tanh": (-1.0, 1.0),
}
# Activations whose units die: output exactly 0 over a whole region.
RELU_FAMILY = ("relu", "relu6")


# Backends with automatic differentiation, which `probe` supports.
GRADIENT_BACKENDS = ("tensorflow", "jax", "torch")


def check_backend(what):
    backend = keras.backend.backend()
    if backend not in GRADIENT_BACKENDS:
        raise RuntimeError(
            f"{what} supports the TensorFlow, JAX and PyTorch backends. "
            f"Received: backend={backend!r}. Set KERAS_BACKEND to one of "
            f"{', '.join(GRADIENT_BACKENDS)}."
        )


def check_model(model, what):
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Argument `model` of {what} must be a `keras.Model`. "
            f"Received: model={model!r}"
        )
    if not model.built or not model.weights:
        raise ValueError(
            f"{what} needs a built model with weights. Build it first "
            "(give it a `keras.Input`, call it on a batch, or call "
            f"`model.build(input_shape)`). Received: model={model.name!r} "
            f"(built={model.built}, {len(model.weights)} weights)."
        )


def is_graph_model(model):
    if isinstance(model, keras.Sequential):
        return True
    return _compat.is_functional(model)


def check_number(name, value, low=None, high=None, integer=False):
    """Validates a number in `(low, high)` (exclusive); returns it."""
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if integer:
        ok = ok and isinstance(value, numbers.Integral)
    # `math.isfinite` overflows on huge Python ints; ints are finite.
    ok = ok and (isinstance(value, numbers.Integral) or math.isfinite(value))
    if ok and low is not None:
        ok = value > low
    if ok and high is not None:
        ok = value < high
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"> {low}")
        if high is not None:
            bounds.append(f"< {high}")
        detail = f" {' and '.join(bounds)}" if bounds else ""
        raise ValueError(
            f"Argument `{name}` must be {kind}{detail}. "
            f"Received: {name}={value!r}"
        )
    return value


def to_tensors(x, name="x"):
    """Converts a batch (array or nest of arrays) to tensors; checks size."""

    def convert(v):
        if not keras.ops.is_tensor(v):
            v = np.asarray(v)
        dtype = keras.backend.standardize_dtype(v.dtype)
        if "float" in dtype and dtype != "float32":
            return keras.ops.cast(v, keras.backend.floatx())
        return keras.ops.convert_to_tensor(v)

    try:
        tensors = keras.tree.map_structure(convert, x)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"Argument `{name}` must be an array or a nest of arrays. "
            f"Received: {name} of type {type(x).__name__} ({e})"
        ) from e
    flat = keras.tree.flatten(tensors)
    if not flat or any(len(t.shape) < 1 for t in flat):
        raise ValueError(
            f"Argument `{name}` must hold arrays with a batch axis. "
            f"Received: {name} with shapes {[tuple(t.shape) for t in flat]}"
        )
    sizes = {int(t.shape[0]) for t in flat}
    if len(sizes) != 1:
        raise ValueError(
            f"All arrays of `{name}` must have the same batch size. "
            f"Received: batch sizes {sorted(sizes)}"
        )
    return tensors, sizes.pop()


# ----------------------------------------------------------------------
# Execution.


def execute(model, inputs, leaf_fn, training=False, norm_training=False):
    """Runs `model` on `inputs`, with `leaf_fn` in place of each leaf layer.

    `leaf_fn(layer, args, kwargs)` must return what `layer(*args, **kwargs)`
    returns. The leaves are found by `keras_winit.walker`: nested models
    and layers that call sublayers (keras_hub transformer blocks,
    `MultiHeadAttention`) are opened, in any kind of model.
    """
    return walker.execute(
        model,
        inputs,
        leaf_fn,
        training=training,
        norm_training=norm_training,
    ).outputs


def fused_activation(layer):
    """The activation fused into a kernel layer, or `None` when linear."""
    if not isinstance(layer, KERNEL_LAYER_TYPES):
        return None
    fn = getattr(layer, "activation", None)
    if fn is None or fn is keras.activations.linear:
        return None
    if getattr(fn, "__name__", None) == "linear":
        return None
    return fn


def split_call(layer, args, kwargs, perturb=None):
    """Returns `(z, a)`: pre-activation (or `None`) and output of a call.

    A kernel layer with a fused activation is called with its `activation`
    attribute temporarily set to `keras.activations.linear` (restored even
    on error), which gives the exact pre-activation `z`; the activation is
    then applied to it. Masks and autocasting are handled by the layer's
    own `__call__`.

    `perturb`, when given, maps the signal (`z` when split, else the
    output) to the tensor used from then on (`a = activation(perturb(z))`);
    `probe` adds a zero perturbation there to differentiate with respect
    to it on JAX.
    """
    fn = fused_activation(layer)
    if fn is None:
        a = layer(*args, **kwargs)
        if perturb is not None and _is_float_tensor(a):
            a = perturb(a)
        return None, a
    layer.activation = keras.activations.linear
    try:
        z = layer(*args, **kwargs)
    finally:
        layer.activation = fn
    if perturb is not None:
        z = perturb(z)
    return z, fn(z)


def kernel_variable(layer):
    """The kernel that sets a kernel layer's output scale (or `None`)."""
    if not isinstance(layer, KERNEL_LAYER_TYPES):
        return None
    if isinstance(
        layer, (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
    ):
        return getattr(layer, "pointwise_kernel", None)
    kernel = getattr(layer, "_kernel", None)
    if kernel is None:
        kernel = getattr(layer, "kernel", None)
    if isinstance(kernel, keras.Variable):
        return kernel
    return None


def activation_of(layer):
    """`(name, param)` of the activation a layer applies, or `None`."""
    fn = None
    if isinstance(layer, keras.layers.Activation):
        fn = layer.activation
    elif isinstance(layer, KERNEL_LAYER_TYPES):
        fn = fused_activation(layer)
    elif isinstance(layer, keras.layers.ReLU):
        if layer.max_value == 6 and not layer.negative_slope:
            return "relu6", None
        if layer.negative_slope:
            return "leaky_relu", float(layer.negative_slope)
        return "relu", None
    elif isinstance(layer, keras.layers.LeakyReLU):
        return "leaky_relu", float(layer.negative_slope)
    elif isinstance(layer, keras.layers.ELU):
        return "elu", float(layer.alpha)
    elif isinstance(layer, keras.layers.Softmax):
        return "softmax", None
    if fn is None:
        return None
    name = getattr(fn, "__name__", None) or type(fn).__name__
    if name == "linear":
        return None
    return name, None


# `layer.path` is set when a layer builds weights; a layer without weights
# (`Activation`, `Flatten`...) gets `<parent model path>/<layer name>`,
# recorded by `execute` on every run.
_FALLBACK_PATHS: dict[int, str] = {}


def layer_path(layer):
    return layer.path or _FALLBACK_PATHS.get(id(layer), layer.name)


# ----------------------------------------------------------------------
# One forward and backward pass.


@dataclasses.dataclass
class Record:
    """What one layer call did during `probe`.

    `pre`, `out`, `grad` and `kernel_grad` are NumPy arrays from `probe`,
    backend tensors from `probe_tensors`.
    """

    layer: object
    path: str
    call_index: int
    activation: object  # (name, param) or None
    pre: object  # pre-activation z, or None when not split
    out: object  # output a
    grad: object  # dC/dz when split, else dC/da; None if disconnected
    kernel_grad: object  # dC/dkernel (first call only), else None
    # Structure, from `keras_winit.walker` (see `walker.Call`).
    kind: str = "other"
    parents: tuple = ()
    block: object = None
    norm_after: object = None
    branch: object = None
    branch_end: bool = False
    shortcut: bool = False

    @property
    def signal(self):
        """The tensor whose gradient is `grad`: `pre` if split, else `out`."""
        return self.out if self.pre is None else self.pre

    @property
    def name(self):
        if self.call_index == 0:
            return self.path
        return f"{self.path}/call_{self.call_index + 1}"


def probe(
    model,
    x,
    y=None,
    loss=None,
    training=False,
    seed=0,
    norm_training=False,
    return_walk=False,
):
    """One forward and backward pass; returns `(records, loss_description)`.

    With `return_walk=True`, returns `(records, loss_description, walk)`,
    the `keras_winit.walker.Walk` of the pass (norms, residuals, blocks);
    each record carries its call's structure fields too.

    Args:
        model: A built `Sequential` or Functional model.
        x: The batch (already converted with `to_tensors`).
        y: Optional targets, or `None`.
        loss: Optional loss (name, `keras.losses.Loss` or callable
            `(y_true, y_pred)`), used with `y`.
        training: Passed to layers that take a `training` argument.
        seed: Seed of the random projection used when `y` is `None`.
        norm_training: Run `BatchNormalization` on batch statistics.
        return_walk: Also return the walk.
    """
    records, description, walk = probe_tensors(
        model, x, y, loss, training, seed, norm_training
    )
    for r in records:
        r.pre = None if r.pre is None else _numpy(r.pre)
        r.out = _numpy(r.out)
        r.grad = None if r.grad is None else _numpy(r.grad)
        r.kernel_grad = None if r.kernel_grad is None else _numpy(r.kernel_grad)
    if return_walk:
        return records, description, walk
    return records, description


def probe_tensors(
    model,
    x,
    y=None,
    loss=None,
    training=False,
    seed=0,
    norm_training=False,
    jit_compile=False,
):
    """`probe` whose records hold backend tensors, not NumPy arrays.

    Returns `(records, loss_description, walk)`. For callers that reduce
    the signals on the backend (`diagnose`) instead of copying every one
    to the host.

    `jit_compile` (`True`, `False` or `"auto"`): on TensorFlow, run the
    pass as a traced `tf.function`, cached per model and signature
    (`keras_winit._compiled`); ignored on the other backends.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        records, description, walk = _probe_jax(
            model, x, y, loss, training, seed, norm_training
        )
    elif backend == "tensorflow" and jit_compile is not False:
        from keras_winit import _compiled

        records, description, walk = _compiled.probe(
            model, x, y, loss, training, seed, norm_training, jit_compile
        )
    else:
        records, description, walk, _ = _probe_eager(
            model, x, y, loss, training, seed, norm_training
        )
    annotate(records, walk)
    return records, description, walk


def annotate(records, walk):
    by_call = {(id(c.layer), c.call_index): c for c in walk.calls}
    for r in records:
        c = by_call.get((id(r.layer), r.call_index))
        if c is None:
            continue
        r.path = c.path
        r.kind = c.kind
        r.parents = c.parents
        r.block = c.block
        r.norm_after = c.norm_after
        r.branch = c.branch
        r.branch_end = c.branch_end
        r.shortcut = c.shortcut


def recording_leaf(calls, watch=None):
    """The walker's leaf of a probe pass: calls each leaf layer with its
    pre-activation split off (`split_call`) and appends
    `(layer, call_index, pre_activation or None, output)` to `calls` for
    the calls with a float output; `watch(tensor)` (a TensorFlow tape's),
    when given, sees the output and the pre-activation."""
    seen: dict[int, int] = {}

    def leaf(layer, args, kwargs):
        z, a = split_call(layer, args, kwargs)
        if not _is_float_tensor(a):
            return a
        count = seen.get(id(layer), 0)
        seen[id(layer)] = count + 1
        if watch is not None:
            watch(a)
            if z is not None:
                watch(z)
        calls.append((layer, count, z, a))
        return a

    return leaf


def gradient_sources(calls):
    """`(kernels, sources)` of the recorded `calls`: each call's kernel
    variable (its layer's first call only, else `None`), and what the
    loss is differentiated with respect to: each call's signal (its
    pre-activation where split off, else its output), then the kernels."""
    kernels = [
        kernel_variable(layer) if count == 0 else None
        for layer, count, _, _ in calls
    ]
    signals = [a if z is None else z for _, _, z, a in calls]
    return kernels, signals + [k for k in kernels if k is not None]


def per_call_gradients(calls, kernels, grads):
    """`(call, signal gradient, kernel gradient or None)` for each call,
    from the gradients of `gradient_sources(calls)`'s sources."""
    kernel_grads = iter(grads[len(calls) :])
    for call, g, kernel in zip(
        calls, grads[: len(calls)], kernels, strict=True
    ):
        yield call, g, (next(kernel_grads) if kernel is not None else None)


def _probe_eager(model, x, y, loss, training, seed, norm_training):
    backend = keras.backend.backend()
    calls: list[Any] = []
    if backend == "tensorflow":
        import tensorflow as tf

        tape = tf.GradientTape()
        context: Any = tape
        leaf = recording_leaf(calls, tape.watch)
    else:
        import torch

        x = keras.tree.map_structure(_torch_requires_grad, x)
        context = torch.enable_grad()
        leaf = recording_leaf(calls)
    with context:
        walk, recorder = walker._execute(
            model,
            x,
            leaf,
            training=training,
            norm_training=norm_training,
            structure=True,
        )
        loss_value, description, from_logits = _loss(
            model, x, y, loss, walk.outputs, seed, with_from_logits=True
        )
        kernels, sources = gradient_sources(calls)
        if backend != "tensorflow":
            grads = _torch_gradients(loss_value, sources)
    if backend == "tensorflow":
        grads = tape.gradient(loss_value, sources)
    records = [
        _record(layer, count, z, a, g, kg)
        for (layer, count, z, a), g, kg in per_call_gradients(
            calls, kernels, grads
        )
    ]
    return records, description, walk, (recorder, from_logits)


def _record(layer, count, z, a, grad, kernel_grad):
    return Record(
        layer=layer,
        path=layer_path(layer),
        call_index=count,
        activation=activation_of(layer),
        pre=z,
        out=a,
        grad=None if grad is None else _dense(grad),
        kernel_grad=None if kernel_grad is None else _dense(kernel_grad),
    )


def _dense(t):
    """A gradient as a dense tensor (TensorFlow's `IndexedSlices`)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if isinstance(t, tf.IndexedSlices):
            return tf.convert_to_tensor(t)
    return t


def _torch_requires_grad(t):
    """A float input as a leaf that requires grad, so every signal has one."""
    if _is_float_tensor(t):
        return t.detach().requires_grad_(True)
    return t


def _torch_gradients(loss_value, sources):
    """`torch.autograd.grad`, with `None` for what the loss does not use."""
    import torch

    tensors = [s.value if isinstance(s, keras.Variable) else s for s in sources]
    wanted = [i for i, t in enumerate(tensors) if t.requires_grad]
    grads: list[Any] = [None] * len(tensors)
    if wanted:
        found = torch.autograd.grad(
            loss_value, [tensors[i] for i in wanted], allow_unused=True
        )
        for i, g in zip(wanted, found, strict=True):
            grads[i] = g
    return grads


def _probe_jax(model, x, y, loss, training, seed, norm_training):
    """`probe` on JAX: gradients of a pure function of perturbations.

    A first, eager pass records every signal's shape and dtype and the
    kernels. `jax.value_and_grad` then differentiates the loss with
    respect to zero perturbations added to the signals (which gives
    dC/dsignal) and to the kernels' values, held in a `StatelessScope` so
    that nothing is assigned. The signals themselves come back as
    auxiliary outputs.
    """
    import jax

    recorded: list[Any] = []
    with keras.StatelessScope():
        walk = walker.execute(
            model,
            x,
            recording_leaf(recorded),
            training=training,
            norm_training=norm_training,
            structure=True,
        )
        outputs = walk.outputs
        _, description, from_logits = _loss(
            model, x, y, loss, outputs, seed, with_from_logits=True
        )
    kernels, _ = gradient_sources(recorded)
    kernel_sources = [k for k in kernels if k is not None]
    # Only the signals' shapes and dtypes are kept (values come back from
    # the differentiated pass).
    calls = []
    for layer, count, z, a in recorded:
        signal = a if z is None else z
        calls.append((layer, count, signal.shape, signal.dtype))
    recorded.clear()  # The first pass's activations are not kept alive.

    def forward(perturbations, kernel_values):
        signals = []
        position = iter(range(len(calls)))

        def leaf(layer, args, kwargs):
            def perturb(t):
                i = next(position)
                return t + perturbations[i]

            z, a = split_call(layer, args, kwargs, perturb=perturb)
            if _is_float_tensor(a):
                signals.append((z, a))
            return a

        mapping = list(zip(kernel_sources, kernel_values, strict=True))
        with keras.StatelessScope(state_mapping=mapping):
            outputs = execute(
                model, x, leaf, training=training, norm_training=norm_training
            )
            value, _ = _loss(
                model, x, y, loss, outputs, seed, from_logits=from_logits
            )
        return value, signals

    zeros = [jax.numpy.zeros(shape, dtype) for _, _, shape, dtype in calls]
    values = [k.value for k in kernel_sources]
    (_, signals), (grads, kernel_grads) = jax.value_and_grad(
        forward, argnums=(0, 1), has_aux=True
    )(zeros, values)
    kernel_grads = iter(kernel_grads)
    records = []
    for (layer, count, _, _), (z, a), g, kernel in zip(
        calls, signals, grads, kernels, strict=True
    ):
        kg = next(kernel_grads) if kernel is not None else None
        records.append(_record(layer, count, z, a, g, kg))
    return records, description, walk


def _is_float_tensor(value):
    if not keras.ops.is_tensor(value):
        return False
    return keras.backend.is_float_dtype(
        keras.backend.standardize_dtype(value.dtype)
    )


def _numpy(t):
    t = _dense(t)
    # float32 (or float64 when the tensor is): statistics of float32
    # signals need no more, and a float64 copy of every signal doubles the
    # cost of a pass on a real model.
    value = np.asarray(keras.ops.convert_to_numpy(t))
    if value.dtype != np.float64:
        value = value.astype(np.float32, copy=False)
    return value


def _loss(
    model,
    x,
    y,
    loss,
    outputs,
    seed,
    from_logits=None,
    with_from_logits=False,
):
    """The scalar loss of a probe pass, and a description of it.

    `from_logits` is the sparse cross-entropy's `from_logits`, found from
    the output's values when `None`; with `with_from_logits=True` the
    value found is returned as a third element (JAX decides it on an
    eager pass and reuses it while tracing).
    """
    value, description, from_logits = _loss_and_kind(
        model, x, y, loss, outputs, seed, from_logits
    )
    if with_from_logits:
        return value, description, from_logits
    return value, description


def _loss_and_kind(model, x, y, loss, outputs, seed, from_logits):
    ops = keras.ops
    flat = [o for o in keras.tree.flatten(outputs) if _is_float_tensor(o)]
    if not flat:
        raise ValueError(
            f"Model {model.name!r} has no floating-point output to "
            "back-propagate from."
        )
    if y is None:
        # A fixed random projection: dC/d(output) = r / batch, r ~ N(0, 1),
        # whatever the size of the output, so the backward pass is seen on
        # its own, independent of how the forward signal was scaled.
        rng = np.random.default_rng(seed)
        total = 0.0
        for o in flat:
            dtype = keras.backend.standardize_dtype(o.dtype)
            r = rng.standard_normal(tuple(o.shape)).astype(dtype)
            r = ops.convert_to_tensor(r, dtype=dtype)
            total += ops.sum(o * r) / ops.cast(ops.shape(o)[0], dtype)
        return (
            total,
            "random projection sum(output * r) / batch, r ~ N(0,1)",
            None,
        )
    if loss is None and getattr(model, "compiled", False):
        if getattr(model, "loss", None) is not None:
            value = model.compute_loss(x=x, y=y, y_pred=outputs, training=False)
            return value, "the model's compiled loss", None
    if len(flat) != 1:
        raise ValueError(
            "With `y` and a model that is not compiled with a loss, the "
            f"model must have one output. Received: {len(flat)} outputs. "
            "Pass `loss=` or compile the model."
        )
    out = flat[0]
    if loss is not None:
        fn = keras.losses.get(loss) if isinstance(loss, str) else loss
        value = fn(y, out)
        return ops.mean(value), f"loss={_loss_name(loss)}", None
    y = ops.convert_to_tensor(y)
    y_dtype = keras.backend.standardize_dtype(y.dtype)
    if "int" in y_dtype and len(y.shape) == len(out.shape) - 1:
        if from_logits is None:
            from_logits = decide_from_logits(out)
        fn = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
        return (
            fn(y, out),
            f"sparse categorical cross-entropy (from_logits={from_logits})",
            from_logits,
        )
    if tuple(y.shape) != tuple(out.shape):
        raise ValueError(
            "Argument `y` must have the shape of the model's output (mean "
            "squared error) or be integer class labels (cross-entropy) when "
            f"the model is not compiled. Received: y.shape={tuple(y.shape)}, "
            f"output shape {tuple(out.shape)}. Pass `loss=` to choose."
        )
    fn = keras.losses.MeanSquaredError()
    return fn(ops.cast(y, out.dtype), out), "mean squared error", None


def decide_from_logits(out):
    """Whether an output holds logits: not all `>= 0` summing to 1."""
    probs = keras.ops.convert_to_numpy(out)
    return not (
        probs.min() >= 0 and np.allclose(probs.sum(axis=-1), 1, atol=1e-3)
    )


def _loss_name(loss):
    if isinstance(loss, str):
        return loss
    return getattr(loss, "name", None) or getattr(
        loss, "__name__", type(loss).__name__
    )


# ----------------------------------------------------------------------
# Tables.


def format_table(headers, rows, align=None):
    """A plain-text table: a header, a rule, one line per row."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or ["<"] * len(headers)

    def line(row):
        parts = [
            f"{c:{a}{w}}" for c, a, w in zip(row, align, widths, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def fmt(value, spec=".3g"):
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)
