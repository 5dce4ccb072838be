"""Layer-aware initialization: re-initialize a built model with true fans.

`initialize(model, scheme)` walks an already-built model and re-draws every
weight it knows, layer by layer, with the fans of the layer's real kernel
layout (see `keras_winit.layouts`) instead of the fans a shape-only
initializer guesses. It returns an `InitReport` saying, per variable (and
per gate), which layout, fans and target std were used and what std the
written values have.

What each layer kind gets (the fans of each layout are in
`keras_winit.layouts`):

| layer                              | weight             | layout         |
|------------------------------------|--------------------|----------------|
| `Dense`                            | `kernel`           | dense          |
| `Conv1D/2D/3D` (any `groups`)      | `kernel`           | conv           |
| `Conv1D/2D/3DTranspose`            | `kernel`           | conv_transpose |
| `DepthwiseConv1D/2D`               | `kernel`           | depthwise      |
| `SeparableConv1D/2D`               | `depthwise_kernel` | depthwise      |
|                                    | `pointwise_kernel` | pointwise      |
| `EinsumDense`, `MultiHeadAttention`| `kernel`           | einsum         |
| `SimpleRNN`, `GRU`, `LSTM`         | `kernel`           | recurrent      |
| (also in `Bidirectional`, `RNN`)   | `recurrent_kernel` | orthogonal/gate|
| `ConvLSTM1D/2D/3D`                 | `kernel`           | conv_recurrent |
| (also in `Bidirectional`)          | `recurrent_kernel` | orthogonal/gate|
| `Embedding`                        | `embeddings`       | embedding      |
| `*Normalization`, `PReLU`          | all                | kept           |

Models (Functional, Sequential, subclassed), wrappers (`TimeDistributed`,
`Bidirectional`) and custom layers are searched for the layers above. A
trainable variable that belongs to no known layer kind (a custom layer's
own weight, a custom RNN cell, a LoRA or quantized kernel) is never
guessed at: it is left as it is, reported with `init="unknown"` and a
`UnknownLayerWarning`, or raises with `strict=True`.

Fused recurrent weights are drawn gate by gate (blocks along the last axis,
in Keras' order: LSTM and ConvLSTM `i, f, c, o`, GRU `z, r, h`), each with
its own fans and, for `"auto"`, the activation after that gate. A
`ConvLSTM` gate is a convolution `(*window, in, filters)`, so its kernel
block has the fans of a `Conv` layer with `filters` outputs. Its recurrent
block `(*window, filters, filters)` is orthogonal as Keras' `Orthogonal`
makes a conv kernel: flattened to `(k · filters, filters)` (`k` the window
size), with orthonormal columns. This is Keras' own default
(`recurrent_initializer="orthogonal"`), drawn per gate instead of over the
fused kernel, as for `LSTM`: each filter of each gate then has weights of
unit norm (entries of std `1 / sqrt(k · filters)`), so a gate's recurrent
sum has the variance of the state `h` it sums. Keras' fused draw gives
that only when `k ≥ 4`; for a window of 3 its `(3 · filters, 4 ·
filters)` matrix has orthonormal rows and std `1 / sqrt(4 · filters)`.
(Orthonormal filters do not make the convolution an orthogonal operator.)
"""

import math
import numbers
import random
import re
import warnings

import keras
import numpy as np

from keras_winit import _seeds
from keras_winit import initializers as init_lib
from keras_winit import layouts

#: Bias options of `initialize`.
BIAS_MODES = ("zeros", "fan_in_plus_one", "torch", "keep")

#: Scheme names `initialize` understands, besides `"auto"` and `"torch"`.
SCHEME_NAMES = {
    "glorot_normal": init_lib.GlorotNormal,
    "glorot_uniform": init_lib.GlorotUniform,
    "he_normal": init_lib.HeNormal,
    "he_uniform": init_lib.HeUniform,
    "lecun_normal": init_lib.LecunNormal,
    "lecun_uniform": init_lib.LecunUniform,
    "xavier_normal": init_lib.XavierNormal,
    "xavier_uniform": init_lib.XavierUniform,
    "kaiming_normal": init_lib.KaimingNormal,
    "kaiming_uniform": init_lib.KaimingUniform,
}

# Gate order of Keras' fused recurrent kernels (`LSTMCell.call`,
# `GRUCell.call`), and whether a gate is followed by `recurrent_activation`
# (True) or by `activation` (False).
_GATES = {
    "SimpleRNNCell": (("", False),),
    "GRUCell": (("z", True), ("r", True), ("h", False)),
    "LSTMCell": (("i", True), ("f", True), ("c", False), ("o", True)),
}
# Activations that are not element-wise: `"auto"` treats them as linear.
_NOT_ELEMENTWISE = ("softmax", "log_softmax")
_KEPT_LAYERS = tuple(
    getattr(keras.layers, name)
    for name in (
        "BatchNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "RMSNormalization",
        "PReLU",
    )
    if hasattr(keras.layers, name)
)
_COLUMNS = (
    "layer",
    "path",
    "part",
    "shape",
    "layout",
    "fan_in",
    "fan_out",
    "init",
    "target_std",
    "measured_std",
)


class UnknownLayerWarning(UserWarning):
    """A trainable weight `initialize` does not know how to initialize."""


class InitReport:
    """What `initialize` did, one row per variable (per gate when fused).

    `rows` is a list of dicts with the keys `layer`, `path` (the variable's
    path), `part` (`"gate i"` … for fused recurrent weights, else `""`),
    `shape` (of the part), `layout`, `fan_in`, `fan_out` (the fans used,
    `None` where none apply), `init` (how it was drawn: a scheme name,
    `"orthogonal"`, `"zeros"`, `"kept"` or `"unknown"`), `target_std` and
    `measured_std` (std of the values now in the variable). `str(report)`
    is a plain-text table.
    """

    def __init__(self, rows):
        self.rows = list(rows)

    @property
    def unknown(self):
        """The rows of variables left as they are because unknown."""
        return [row for row in self.rows if row["init"] == "unknown"]

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __repr__(self):
        return f"<InitReport: {len(self.rows)} rows>"

    def __str__(self):
        table = [list(_COLUMNS)]
        for row in self.rows:
            table.append([_format_cell(row[c]) for c in _COLUMNS])
        widths = [max(len(r[i]) for r in table) for i in range(len(_COLUMNS))]
        lines = [
            "  ".join(
                cell.ljust(w) for cell, w in zip(r, widths, strict=True)
            ).rstrip()
            for r in table
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def initialize(
    model,
    scheme="he_normal",
    *,
    bias=None,
    seed=None,
    gain_method="moment",
    strict=False,
):
    """Re-initializes a built model in place, with each layer's true fans.

    Every kernel is drawn with `Var(w) = scale / fan`, where the fan comes
    from the layer's kernel layout (`keras_winit.layouts`): a depthwise 3×3
    kernel has `fan_in = 9` whatever its channels, a transposed convolution
    counts its *input* channels as fan-in, and each gate of an LSTM/GRU is
    its own `(in, units)` matrix. Recurrent kernels get one orthogonal
    `(units, units)` matrix per gate. Values are written with
    `variable.assign` in the variable's dtype. A `ConvLSTM1D/2D/3D` gate
    is a convolution: its kernel block `(*window, in, filters)` has
    `fan_in = k · in`, `fan_out = k · filters` (`k` the window size), and
    its recurrent block is orthogonal when flattened to
    `(k · filters, filters)`, as Keras' `Orthogonal` flattens conv kernels.

    `scheme` chooses `scale`, `mode` and distribution:

    - a name: `"he_normal"`, `"he_uniform"`, `"glorot_normal"`,
      `"glorot_uniform"`, `"lecun_normal"`, `"lecun_uniform"`,
      `"xavier_normal"`, `"xavier_uniform"`, `"kaiming_normal"`,
      `"kaiming_uniform"` (keras_winit's classes of the same names);
    - an initializer instance (a keras_winit initializer or a
      `keras.initializers.VarianceScaling`): its scale, mode and
      distribution, with its own fans and axes replaced per layer;
    - `"auto"`: per layer, `keras_winit.ActivationScaling` with the
      activation that follows the kernel (`layer.activation`, or, when that
      is linear, a separate `Activation`/`ReLU`/`LeakyReLU`/`ELU` layer
      applied right after it, with its slope or alpha; per gate
      `recurrent_activation` or `activation` for RNNs; linear for
      `softmax`, for the depthwise half of a separable convolution and for
      layers without one), `gain_method` (default `"moment"`: the
      second-moment rule, `Var(w) = 1 / (fan_in · E[φ(z)²])`),
      `mode="fan_in"`, truncated normal;
    - `"torch"`: PyTorch's defaults, so that a model ported from PyTorch
      starts from the same distribution: `Linear`/`ConvNd`/depthwise/
      einsum kernels and biases `U(±1/sqrt(fan_in))` (the kernel's fan-in;
      `kaiming_uniform_(a=sqrt(5))`), with PyTorch's fan-in `out·k` for
      transposed convolutions (its weight is `(in, out, *window)`);
      recurrent weights and biases `U(±1/sqrt(units))`; `ConvLSTM`
      kernel, recurrent kernel and bias `U(±1/sqrt(k · (in + filters)))`,
      the default of the one `ConvNd(in + filters, 4 · filters, window)`
      over `concat(x, h)` that PyTorch ConvLSTM implementations use
      (PyTorch itself has no ConvLSTM), whose weight, split along its
      input channels, is Keras' `kernel` and `recurrent_kernel`;
      `Embedding`
      `N(0, 1)`; `MultiHeadAttention` query/key/value Xavier-uniform (on
      the packed `(3E, E)` matrix when PyTorch would pack it), output
      projection `U(±1/sqrt(fan_in))`, biases zero.

    `bias` chooses the biases (default `"torch"` with `scheme="torch"`,
    else `"zeros"`):

    - `"zeros"`: zeros (LSTM forget gate 1 when `unit_forget_bias`).
    - `"fan_in_plus_one"`: the bias counts as one more incoming
      connection: kernel and bias are both drawn from the scheme with
      `fan_in + 1` (forget gate +1 when `unit_forget_bias`).
    - `"torch"`: PyTorch's default bias, `U(±1/sqrt(fan_in))` with the
      kernel's (PyTorch) fan-in; `U(±1/sqrt(units))` for RNNs and
      `U(±1/sqrt(k · (in + filters)))` for `ConvLSTM`.
    - `"keep"`: biases are left as they are.

    Examples:

    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 16)),
    ...     keras.layers.DepthwiseConv2D(3, depth_multiplier=2),
    ... ])
    >>> report = keras_winit.layer_init.initialize(model, "he_normal", seed=0)
    >>> row = report.rows[0]
    >>> row["layout"], row["fan_in"], row["fan_out"]
    ('depthwise', 9, 18)
    >>> round(row["target_std"], 4)  # sqrt(2 / 9)
    0.4714

    Args:
        model: A built `keras.Model` (or any built `keras.layers.Layer`).
        scheme: A scheme name, `"auto"`, `"torch"`, or a
            `keras.initializers.VarianceScaling` instance.
        bias: One of `BIAS_MODES`, or `None` for the scheme's default.
        seed: Optional int. The same seed on the same architecture gives
            identical weights; every variable (and gate) draws from its own
            derived seed, so no two layers get identical tensors. `None`
            picks a random seed (reproducible after
            `keras.utils.set_random_seed`).
        gain_method: Gain rule of `scheme="auto"`: `"moment"`, `"kumar"`
            or `"torch"` (see `keras_winit.gain`).
        strict: If True, a trainable weight of an unknown layer kind raises
            a `ValueError` (naming the layer) instead of a warning.

    Returns:
        An `InitReport`.

    Reference:
        - [Glorot & Bengio, 2010](
          https://proceedings.mlr.press/v9/glorot10a.html)
        - [He et al., 2015](https://arxiv.org/abs/1502.01852)
        - [Saxe et al., 2013](https://arxiv.org/abs/1312.6120) (orthogonal)
    """
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(
            "Argument `model` must be a Keras model or layer. "
            f"Received: model={model!r}"
        )
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built, so it has no weights to "
            "initialize. Build it first, e.g. with `model.build(input_shape)`"
            " or by calling it on data."
        )
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not layer.built:
            raise ValueError(
                f"Layer '{layer.name}' of model '{model.name}' is not built, "
                "so its weights do not exist yet. Call the model on data "
                "(or on `keras.Input`s) before initializing it."
            )
    base = _resolve_scheme(scheme)
    if bias is None:
        bias = "torch" if base == "torch" else "zeros"
    if bias not in BIAS_MODES:
        raise ValueError(
            f"Invalid `bias` argument: {bias!r}. Expected one of {BIAS_MODES}."
        )
    if bias == "fan_in_plus_one" and base == "torch":
        raise ValueError(
            "Argument `bias='fan_in_plus_one'` needs a variance-scaling "
            "scheme; scheme='torch' draws its biases as PyTorch does. "
            f"Received: scheme={scheme!r}, bias={bias!r}"
        )
    if gain_method not in ("moment", "kumar", "torch"):
        raise ValueError(
            f"Invalid `gain_method` argument: {gain_method!r}. "
            "Expected one of ('moment', 'kumar', 'torch')."
        )
    if seed is None:
        seed = random.randint(1, 2**31 - 1)
    elif isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(
            f"Argument `seed` must be an int or None. Received: seed={seed!r}"
        )
    walker = _Walker()
    walker.visit(model)
    writer = _Writer(base, bias, int(seed), gain_method, strict)
    rows = []
    for index, item in enumerate(walker.items):
        rows.extend(writer.write(index, item))
    return InitReport(rows)


class _Item:
    """One variable and how to initialize it.

    `role` is `"kernel"`, `"recurrent"`, `"bias"`, `"kept"` or `"unknown"`.
    `fans` are the true `(fan_in, fan_out)` of one gate of the kernel the
    variable belongs to (a bias carries its kernel's); `gates` names the
    blocks fused along the last axis; `activations` the activation after
    each gate (for `"auto"`); `torch` the PyTorch rule of the variable.
    """

    def __init__(
        self,
        variable,
        layer,
        role,
        layout=None,
        fans=(None, None),
        gates=("",),
        activations=("linear",),
        torch=None,
        has_bias=False,
        forget_gate=None,
    ):
        self.variable = variable
        self.layer = layer
        self.role = role
        self.layout = layout
        self.fans = fans
        self.gates = gates
        self.activations = activations
        self.torch = torch
        self.has_bias = has_bias
        self.forget_gate = forget_gate


class _Walker:
    """Collects `_Item`s from a layer tree, each variable once."""

    def __init__(self):
        self.items = []
        self._seen = set()
        # id(layer) -> (activation name, param) of a separate activation
        # layer (`Activation`, `ReLU`, `LeakyReLU`, `ELU`) fed by it.
        self._following = {}

    def visit(self, layer):
        if not layer.weights:
            return
        if isinstance(layer, keras.layers.Bidirectional):
            self.visit(layer.forward_layer)
            self.visit(layer.backward_layer)
        elif isinstance(layer, keras.layers.RNN):
            self._rnn(layer)
        elif isinstance(layer, keras.layers.MultiHeadAttention):
            self._attention(layer)
        elif isinstance(layer, keras.layers.EinsumDense):
            self._einsum(layer)
        elif isinstance(layer, keras.layers.Dense):
            self._dense(layer)
        elif isinstance(layer, _conv_classes("BaseSeparableConv")):
            self._separable(layer)
        elif isinstance(layer, _conv_classes("BaseDepthwiseConv")):
            self._conv(layer, "depthwise")
        elif isinstance(layer, _conv_classes("BaseConvTranspose")):
            self._conv(layer, "conv_transpose")
        elif isinstance(layer, _conv_classes("BaseConv")):
            self._conv(layer, "conv")
        elif isinstance(layer, keras.layers.Embedding):
            self._embedding(layer)
        elif isinstance(layer, _KEPT_LAYERS):
            for variable in layer.weights:
                self._add(_Item(variable, layer.name, "kept"))
        else:
            sublayers = list(_sublayers(layer))
            for before, after in zip(sublayers, sublayers[1:], strict=False):
                spec = _activation_layer_spec(after)
                if spec is not None and _feeds(before, after):
                    self._following[id(before)] = spec
            for sublayer in sublayers:
                self.visit(sublayer)
        # Whatever is left (a custom layer's own weights, LoRA factors,
        # quantization scales, a cell we do not know) is never guessed at.
        for variable in layer.weights:
            if id(variable) not in self._seen:
                role = "unknown" if variable.trainable else "kept"
                self._add(_Item(variable, layer.name, role))

    def _activation(self, layer):
        """The layer's activation, or that of an activation layer after it."""
        own = _activation_name(layer)
        if own == "linear" and id(layer) in self._following:
            return self._following[id(layer)]
        return own

    def _add(self, item):
        if id(item.variable) not in self._seen:
            self._seen.add(id(item.variable))
            self.items.append(item)

    def _own(self, layer, name):
        for variable in layer.weights:
            if variable.name == name:
                if not _is_float(variable):
                    return None  # quantized: reported as unknown
                return variable
        return None

    def _kernel_and_bias(
        self, layer, layout, fans, activation, torch, torch_bias, kernel_name
    ):
        kernel = self._own(layer, kernel_name)
        bias = self._own(layer, "bias")
        if kernel is None:
            return
        self._add(
            _Item(
                kernel,
                layer.name,
                "kernel",
                layout,
                fans,
                activations=(activation,),
                torch=torch,
                has_bias=bias is not None,
            )
        )
        if bias is not None:
            self._add(
                _Item(
                    bias,
                    layer.name,
                    "bias",
                    layout,
                    fans,
                    activations=(activation,),
                    torch=torch_bias,
                    has_bias=True,
                )
            )

    def _dense(self, layer):
        kernel = self._own(layer, "kernel")
        if kernel is None:
            return
        fans = layouts.compute_layout_fans(kernel.shape, "dense")
        self._kernel_and_bias(
            layer,
            "dense",
            fans,
            self._activation(layer),
            ("uniform", fans[0]),
            ("uniform", fans[0]),
            "kernel",
        )

    def _einsum(self, layer, torch=None, torch_bias=None):
        kernel = self._own(layer, "kernel")
        if kernel is None:
            return
        fans = layouts.compute_layout_fans(
            kernel.shape, "einsum", equation=layer.equation
        )
        self._kernel_and_bias(
            layer,
            "einsum",
            fans,
            self._activation(layer),
            torch or ("uniform", fans[0]),
            torch_bias or ("uniform", fans[0]),
            "kernel",
        )

    def _attention(self, layer):
        projections = [
            getattr(layer, f"_{n}_dense", None)
            for n in ("query", "key", "value")
        ]
        dims = {p.kernel.shape[0] for p in projections if p is not None}
        widths = {
            math.prod(p.kernel.shape[1:]) for p in projections if p is not None
        }
        # PyTorch packs q, k, v into one (3E, E) in_proj_weight when all
        # inputs and projections have the embedding width E.
        packed = len(dims) == 1 and widths == dims and None not in projections
        for sublayer in _sublayers(layer):
            if not isinstance(sublayer, keras.layers.EinsumDense):
                self.visit(sublayer)
                continue
            if sublayer in projections:
                fans = layouts.compute_layout_fans(
                    sublayer.kernel.shape, "einsum", equation=sublayer.equation
                )
                fan_out = 3 * fans[1] if packed else fans[1]
                torch = ("xavier", fans[0], fan_out)
            else:
                torch = None
            self._einsum(sublayer, torch, ("zeros",))

    def _conv(self, layer, layout):
        kernel = self._own(layer, "kernel")
        if kernel is None:
            return
        groups = getattr(layer, "groups", 1) if layout == "conv" else 1
        fans = layouts.compute_layout_fans(kernel.shape, layout, groups=groups)
        torch_fan = fans[0]
        if layout == "conv_transpose":
            # PyTorch's ConvTranspose weight is (in, out, *window) and its
            # fan-in is computed from dim 1: out · window.
            torch_fan = fans[1]
        self._kernel_and_bias(
            layer,
            layout,
            fans,
            self._activation(layer),
            ("uniform", torch_fan),
            ("uniform", torch_fan),
            "kernel",
        )

    def _separable(self, layer):
        depthwise = self._own(layer, "depthwise_kernel")
        pointwise = self._own(layer, "pointwise_kernel")
        if depthwise is not None:
            fans = layouts.compute_layout_fans(depthwise.shape, "depthwise")
            self._add(
                _Item(
                    depthwise,
                    layer.name,
                    "kernel",
                    "depthwise",
                    fans,
                    torch=("uniform", fans[0]),
                )
            )
        if pointwise is not None:
            fans = layouts.compute_layout_fans(pointwise.shape, "pointwise")
            self._kernel_and_bias(
                layer,
                "pointwise",
                fans,
                self._activation(layer),
                ("uniform", fans[0]),
                ("uniform", fans[0]),
                "pointwise_kernel",
            )

    def _embedding(self, layer):
        table = self._own(layer, "embeddings")
        if table is None:
            return
        fans = layouts.compute_layout_fans(table.shape, "embedding")
        self._add(
            _Item(
                table,
                layer.name,
                "kernel",
                "embedding",
                fans,
                torch=("normal", 1),
            )
        )

    def _rnn(self, layer):
        cell = layer.cell
        cells = getattr(cell, "cells", None)
        for one in cells if cells is not None else [cell]:
            self._cell(one, layer.name)

    def _cell(self, cell, name):
        gates = None
        for cell_name, cell_gates in _GATES.items():
            if isinstance(cell, getattr(keras.layers, cell_name)):
                gates = cell_gates
        layout = "recurrent"
        if isinstance(cell, _conv_lstm_cell()):
            gates, layout = _GATES["LSTMCell"], "conv_recurrent"
        if gates is None:
            return  # unknown cell: its weights are reported as unknown
        kernel = self._own(cell, "kernel")
        recurrent = self._own(cell, "recurrent_kernel")
        bias = self._own(cell, "bias")
        labels = tuple(f"gate {g}" if g else "" for g, _ in gates)
        acts = tuple(
            _activation_name(
                cell, "recurrent_activation" if rec else "activation"
            )
            for _, rec in gates
        )
        forget = 1 if getattr(cell, "unit_forget_bias", False) else None
        if layout == "conv_recurrent":
            # PyTorch ConvLSTMs are one ConvNd(in + filters, 4 · filters)
            # over concat(x, h): fan-in k · (in + filters). (The kernel is
            # (*kernel_size, input_dim, 4 · filters) in both data formats.)
            window = math.prod(cell.kernel_size)
            torch = ("uniform", window * (cell.input_dim + cell.filters))
        else:
            torch = ("uniform", cell.units)
        if kernel is not None:
            fans = layouts.compute_layout_fans(
                kernel.shape, layout, gates=len(gates)
            )
            self._add(
                _Item(
                    kernel,
                    name,
                    "kernel",
                    layout,
                    fans,
                    labels,
                    acts,
                    torch,
                    has_bias=bias is not None,
                )
            )
            if bias is not None:
                self._add(
                    _Item(
                        bias,
                        name,
                        "bias",
                        layout,
                        fans,
                        labels,
                        acts,
                        torch,
                        has_bias=True,
                        forget_gate=forget,
                    )
                )
        if recurrent is not None:
            fans = layouts.compute_layout_fans(
                recurrent.shape, layout, gates=len(gates)
            )
            self._add(
                _Item(
                    recurrent,
                    name,
                    "recurrent",
                    layout,
                    fans,
                    labels,
                    acts,
                    torch,
                )
            )


class _Writer:
    """Draws and assigns the values of `_Item`s, and makes report rows."""

    def __init__(self, base, bias, seed, gain_method, strict):
        self.base = base
        self.bias = bias
        self.seed = seed
        self.gain_method = gain_method
        self.strict = strict

    def write(self, index, item):
        variable = item.variable
        path = variable.path
        if item.role in ("kept", "unknown") or (
            item.role == "bias" and self.bias == "keep"
        ):
            if item.role == "unknown":
                message = (
                    f"Layer '{item.layer}' has a trainable weight "
                    f"'{path}' (shape {tuple(variable.shape)}) of a kind "
                    "keras_winit.layer_init.initialize does not know; it "
                    "was left as it is."
                )
                if self.strict:
                    raise ValueError(message + " (strict=True)")
                warnings.warn(message, UnknownLayerWarning, stacklevel=3)
            values = _to_numpy(variable)
            return [
                _row(
                    item,
                    "",
                    values.shape,
                    "kept" if item.role != "unknown" else "unknown",
                    (None, None),
                    None,
                    values,
                )
            ]
        shape = tuple(int(d) for d in variable.shape)
        n = len(item.gates)
        block_shape = shape[:-1] + (shape[-1] // n,)
        blocks, specs = [], []
        for g in range(n):
            block_seed = _seeds.mix(self.seed, index, g)
            values, label, fans, target = self._draw(
                item, g, block_shape, variable.dtype, block_seed
            )
            blocks.append(values)
            specs.append((label, fans, target))
        values = blocks[0] if n == 1 else keras.ops.concatenate(blocks, -1)
        variable.assign(keras.ops.cast(values, variable.dtype))
        written = _to_numpy(variable)
        rows = []
        width = block_shape[-1]
        for g, (label, fans, target) in enumerate(specs):
            part = written[..., g * width : (g + 1) * width]
            rows.append(
                _row(item, item.gates[g], part.shape, label, fans, target, part)
            )
        return rows

    def _draw(self, item, gate, shape, dtype, seed):
        """Returns `(values, init label, fans used, target std)`."""
        fan_in, fan_out = item.fans
        if item.role == "recurrent" and self.base != "torch":
            values = keras.initializers.Orthogonal(seed=seed)(shape, dtype)
            # Keras flattens the block to (prod(shape[:-1]), shape[-1]);
            # an orthogonal (r, c) matrix has mean square 1 / max(r, c).
            rows = math.prod(shape[:-1])
            return (
                values,
                "orthogonal",
                (fan_in, fan_out),
                1 / math.sqrt(max(rows, shape[-1])),
            )
        if item.role == "bias" and self.bias in ("zeros", "torch"):
            rule = item.torch if self.bias == "torch" else ("zeros",)
            values, label, fans, target = self._torch(rule, shape, dtype, seed)
            if item.forget_gate == gate and self.bias == "zeros":
                values = keras.ops.add(values, 1.0)
                label = "ones (forget gate)"
            return values, label, fans, target
        if self.base == "torch":
            return self._torch(item.torch, shape, dtype, seed)
        if self.bias == "fan_in_plus_one" and item.has_bias:
            fan_in += 1
        initializer, label = self._initializer(
            item.activations[gate], fan_in, fan_out, seed, item.layer
        )
        values = initializer(shape, dtype)
        if item.role == "bias" and item.forget_gate == gate:
            values = keras.ops.add(values, 1.0)
            label += " +1 (forget gate)"
        return (
            values,
            label,
            (fan_in, fan_out),
            initializer.target_stddev(shape),
        )

    def _initializer(self, activation, fan_in, fan_out, seed, layer_name):
        if self.base == "auto":
            param = None
            if isinstance(activation, tuple):  # from a separate layer
                activation, param = activation
            if not isinstance(activation, str):
                raise ValueError(
                    "scheme='auto' needs the activation of layer "
                    f"'{layer_name}' by name, to compute its gain, but "
                    f"{activation!r} is neither a Keras activation nor a "
                    "registered one. Register it with "
                    "`keras.saving.register_keras_serializable`, or pass "
                    "a scheme name."
                )
            try:
                initializer = init_lib.ActivationScaling(
                    activation,
                    param=param,
                    method=self.gain_method,
                    seed=seed,
                    fan_in=fan_in,
                    fan_out=fan_out,
                )
            except ValueError as error:
                raise ValueError(
                    f"scheme='auto' cannot compute a gain for the activation "
                    f"{activation!r} of layer '{layer_name}': {error}"
                ) from error
            name = activation if param is None else f"{activation}({param:g})"
            return initializer, f"auto({name}, g={initializer.gain:.3g})"
        config = dict(self.base.get_config())
        config.update(
            seed=seed,
            fan_in=fan_in,
            fan_out=fan_out,
            input_axes=None,
            output_axes=None,
        )
        initializer = type(self.base).from_config(config)
        return initializer, _scheme_label(self.base)

    def _torch(self, rule, shape, dtype, seed):
        kind = rule[0]
        if kind == "zeros":
            return keras.ops.zeros(shape, dtype), "zeros", (None, None), 0.0
        if kind == "uniform":
            fan = rule[1]
            initializer = init_lib.VarianceScaling(
                scale=1.0 / 3.0,
                mode="fan_in",
                distribution="uniform",
                seed=seed,
                fan_in=fan,
                fan_out=fan,
            )
            label = f"torch U(±1/√{fan})"
            fans = (fan, None)
        elif kind == "normal":
            initializer = init_lib.VarianceScaling(
                scale=1.0,
                mode="fan_in",
                distribution="untruncated_normal",
                seed=seed,
                fan_in=1,
                fan_out=1,
            )
            label = "torch N(0, 1)"
            fans = (None, None)
        else:  # xavier
            initializer = init_lib.XavierUniform(
                seed=seed, fan_in=rule[1], fan_out=rule[2]
            )
            label = "torch xavier_uniform"
            fans = (rule[1], rule[2])
        return (
            initializer(shape, dtype),
            label,
            fans,
            initializer.target_stddev(shape),
        )


def _resolve_scheme(scheme):
    if isinstance(scheme, str):
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", scheme).lower()
        if name in ("auto", "torch"):
            return name
        if name in SCHEME_NAMES:
            return SCHEME_NAMES[name](seed=0)
    elif isinstance(scheme, init_lib.VarianceScaling):
        return scheme
    elif isinstance(scheme, keras.initializers.VarianceScaling):
        return init_lib.VarianceScaling(
            scale=scheme.scale,
            mode=scheme.mode,
            distribution=scheme.distribution,
            seed=0,
        )
    raise ValueError(
        f"Invalid `scheme` argument: {scheme!r}. Expected 'auto', 'torch', "
        f"one of {tuple(SCHEME_NAMES)}, or a "
        "keras.initializers.VarianceScaling instance."
    )


def _scheme_label(base):
    for name, cls in SCHEME_NAMES.items():
        if type(base) is cls:
            return name
    return type(base).__name__


def _conv_classes(name):
    from keras.src.layers.convolutional import base_conv
    from keras.src.layers.convolutional import base_conv_transpose
    from keras.src.layers.convolutional import base_depthwise_conv
    from keras.src.layers.convolutional import base_separable_conv

    return {
        "BaseConv": base_conv.BaseConv,
        "BaseConvTranspose": base_conv_transpose.BaseConvTranspose,
        "BaseDepthwiseConv": base_depthwise_conv.BaseDepthwiseConv,
        "BaseSeparableConv": base_separable_conv.BaseSeparableConv,
    }[name]


def _conv_lstm_cell():
    from keras.src.layers.rnn import conv_lstm

    return conv_lstm.ConvLSTMCell


def _sublayers(layer):
    return layer._flatten_layers(include_self=False, recursive=False)


def _activation_layer_spec(layer):
    """`(name, param)` of an elementwise activation layer, else None."""
    if isinstance(layer, keras.layers.Activation):
        name = _activation_name(layer)
        return (name, None) if isinstance(name, str) else None
    if isinstance(layer, keras.layers.LeakyReLU):
        return ("leaky_relu", float(layer.negative_slope))
    if isinstance(layer, keras.layers.ELU):
        return ("elu", float(layer.alpha))
    if isinstance(layer, keras.layers.ReLU):
        if layer.max_value is not None or layer.threshold != 0:
            return None  # not one of the gain rules' activations
        if layer.negative_slope:
            return ("leaky_relu", float(layer.negative_slope))
        return ("relu", None)
    return None


def _feeds(before, after):
    """Whether `after` is applied to the output of `before` (and only it)."""
    try:
        return after.input is before.output
    except (AttributeError, ValueError):  # not called, or called twice
        return False


def _activation_name(layer, attribute="activation"):
    """The name `keras.activations.get` resolves to the layer's activation.

    Returns the function itself when it has no such name (a lambda, an
    unregistered function); `"auto"` then refuses it, naming the layer.
    """
    activation = getattr(layer, attribute, None)
    if activation is None:
        return "linear"
    if isinstance(activation, str):
        name = activation
    else:
        name = None
        for candidate in (
            getattr(activation, "__name__", None),
            keras.saving.get_registered_name(activation),
        ):
            try:
                found = keras.activations.get(candidate)
            except (ValueError, TypeError):
                continue
            if isinstance(candidate, str) and found is activation:
                name = candidate
                break
        if name is None:
            return activation
    return "linear" if name in _NOT_ELEMENTWISE else name


def _is_float(variable):
    return keras.backend.standardize_dtype(variable.dtype) in (
        "float16",
        "bfloat16",
        "float32",
        "float64",
    )


def _to_numpy(variable):
    return np.asarray(
        keras.ops.convert_to_numpy(keras.ops.cast(variable, "float32"))
    )


def _row(item, gate, shape, label, fans, target, values):
    values = np.asarray(values, dtype=np.float64)
    return {
        "layer": item.layer,
        "path": item.variable.path,
        "part": gate,
        "shape": tuple(int(d) for d in shape),
        "layout": item.layout or "",
        "fan_in": fans[0],
        "fan_out": fans[1],
        "init": label,
        "target_std": None if target is None else float(target),
        "measured_std": float(values.std()) if values.size else 0.0,
    }


def _format_cell(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
