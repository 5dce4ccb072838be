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
| `Embedding` (and keras_hub's)      | `embeddings`       | kept (1)       |
| `*Normalization`, `*Norm`, `PReLU` | all                | kept           |
| `LayerScale`, learned tokens       | all                | kept           |

(1) Or `N(0, embeddings_stddev)`; PyTorch's `N(0, 1)` with `"torch"`.

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
from collections.abc import Iterable
from typing import Any

import keras

from keras_winit import _checks
from keras_winit import _compat
from keras_winit import _seeds
from keras_winit import gains
from keras_winit import initializers as init_lib
from keras_winit import layouts
from keras_winit import sampling
from keras_winit import walker

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
# keras_hub's position embeddings: a learned `(sequence, dim)` table.
_POSITION_EMBEDDINGS = ("PositionEmbedding",)
# Learned tokens prepended to a sequence (ViT's class token, BEiT's mask
# token, DeiT's distillation token, registers): kept, as the model draws
# them.
_TOKEN = re.compile(
    r"(^|_)(class|cls|mask|dist|distillation|register)_?tokens?$"
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
    `"orthogonal"`, `"zeros"`, `"kept"` or `"unknown"`, with
    ` ×factor (rule)` when a residual rule scaled it), `kind` (what the
    variable is: `"kernel"`, `"bias"`, `"recurrent"`, `"embedding"`,
    `"position embedding"`, `"normalization"`, `"activation"` (PReLU's
    slopes), `"layer scale"`, `"token"`,
    `"non-trainable"`, `"frozen"`, `"unknown"`; for a kept embedding also
    the model's own initializer), `target_std` and `measured_std` (std of
    the values now in the variable, computed on the device).

    `residual` is the rule applied (`"none"`, `"gpt2"`, `"fixup"`,
    `"zero"`); `residual_rows` say per residual branch which variable was
    scaled, by which factor and why (keys `branch`, `layer`, `path`,
    `rule`, `factor`, `why`, `applied`: False for a frozen variable, which
    is kept). `str(report)` is a plain-text table of both.
    """

    def __init__(
        self,
        rows: Iterable[dict[str, Any]],
        residual_rows: Iterable[dict[str, Any]] = (),
        residual: str = "none",
    ) -> None:
        self.rows = list(rows)
        self.residual_rows = list(residual_rows)
        self.residual = residual

    @property
    def unknown(self) -> list[dict[str, Any]]:
        """The rows of variables left as they are because unknown."""
        return [row for row in self.rows if row["init"] == "unknown"]

    @property
    def branches(self) -> list[str]:
        """Names of the residual branches the rule was applied to."""
        return list(dict.fromkeys(r["branch"] for r in self.residual_rows))

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __repr__(self):
        return f"<InitReport: {len(self.rows)} rows>"

    def __str__(self):
        text = _table(
            _COLUMNS,
            [
                [
                    _format_cell(
                        f"{row['init']} ({row['kind']})"
                        if c == "init"
                        and row["init"] == "kept"
                        and row.get("kind")
                        else row[c]
                    )
                    for c in _COLUMNS
                ]
                for row in self.rows
            ],
        )
        if self.residual_rows:
            columns = ("branch", "layer", "path", "factor", "why", "applied")
            text += (
                f"\n\nresidual={self.residual!r}: "
                f"{len(self.branches)} branches\n"
            )
            text += _table(
                columns,
                [
                    [_format_cell(r[c]) for c in columns]
                    for r in self.residual_rows
                ],
            )
        return text


def _table(columns, body):
    table = [list(columns)] + body
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    lines = [
        "  ".join(
            cell.ljust(w) for cell, w in zip(r, widths, strict=True)
        ).rstrip()
        for r in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def initialize(
    model: keras.Model | keras.layers.Layer,
    scheme: str | keras.initializers.VarianceScaling = "he_normal",
    *,
    bias: str | None = None,
    seed: int | None = None,
    gain_method: str = "moment",
    strict: bool = False,
    residual: str = "none",
    embeddings_stddev: float | None = None,
    include_frozen: bool = False,
) -> "InitReport":
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

    What is kept as the model drew it (reported with `init="kept"` and its
    `kind`): normalization scales and offsets (Keras' and any leaf layer
    whose class name ends in `Norm`/`Normalization`, e.g. keras_hub's
    RMS norms), ConvNeXt's `LayerScale`, learned tokens (ViT's
    `class_token`, mask/distillation/register tokens), non-trainable
    variables, and embedding tables (`Embedding`, keras_hub's
    `ReversibleEmbedding` and `PositionEmbedding`): a table's row is read,
    not summed, so no kernel fan rule applies to it (`he_normal` with
    `fan_in = 1` would give GPT-2's token table std 1.41; the model's own
    initializer, e.g. keras_hub's `N(0, 0.02)`, is kept and named in the
    report). `embeddings_stddev` draws every table from `N(0, stddev)`
    instead; `scheme="torch"` draws them from PyTorch's `N(0, 1)`.

    Frozen layers (`trainable=False`): their weights are kept and reported
    with `kind="frozen"` — re-drawing a frozen (e.g. pretrained) layer
    would silently lose what the user froze it for. `include_frozen=True`
    initializes them too (they stay frozen).

    `residual` scales the residual branches that `residual_branches`
    finds (an `Add` of a block's input and a branch in a Functional graph;
    keras_hub transformer and ViT blocks; in a model without a graph, the
    `x + f(x)` of one recorded forward pass), after the scheme's draw; `L` is
    the number of branches found in the model:

    - `"none"`: no rule.
    - `"gpt2"` (Radford et al. 2019): each branch's output projection
      (its last kernel layer) × `1/sqrt(L)` — GPT-2's `1/sqrt(2N)` for
      `N` transformer blocks of two branches each. (GPT-2 scales its
      `N(0, 0.02)`; here the scheme's std is scaled.)
    - `"fixup"` (Zhang et al. 2019): each branch's last kernel layer is
      zero and its other kernel layers × `L^(-1/(2m-2))`, `m` the
      branch's number of sequential kernel stages (attention's query, key
      and value are one stage, its output projection the next). With
      `m = 1` the exponent is undefined: only the last (only) layer is
      zeroed. Fixup's scalar biases and multiplier are layers added to
      the architecture, not an initialization: not done here. Fixup is
      meant for networks without normalization.
    - `"zero"` (Goyal et al. 2017): the scale (`gamma`) of the branch's
      last Keras normalization layer is zero, so the branch starts at its
      biases' response (zero with `bias="zeros"`). In pre-activation and
      pre-LN branches (ResNetV2, GPT-2) that is a norm before the last
      kernel; its offset `beta` is 0 at build and biases are zero, so the
      branch still starts at zero. A branch without such a normalization
      (post-LN transformers such as BERT, where the norm follows the add;
      nets without normalization; another package's norm, whose scale may
      mean `1 + s`) gets its last kernel zeroed instead, as in Fixup and
      SkipInit, and the report says so.

    A model without branches raises a `ValueError` for `residual !=
    "none"`. The report's `residual_rows` name each branch and each
    variable scaled, its factor and why. Frozen variables are not scaled.

    Unknown weights are listed, layer by layer, in one
    `UnknownLayerWarning` (or the `ValueError` of `strict=True`) before
    anything is written. All arguments are checked before any variable
    changes. Values are drawn and assigned variable by variable on the
    backend's device, and each measured std is computed there (in slices
    for tensors over 4M values); only scalars come to the host.

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

    >>> # Two residual blocks: GPT-2's rule scales each branch's last
    >>> # kernel by 1 / sqrt(2).
    >>> h = x = keras.Input((16,))
    >>> for i in range(2):
    ...     f = keras.layers.Dense(16, activation="relu")(h)
    ...     f = keras.layers.Dense(16, name=f"out{i}")(f)
    ...     h = keras.layers.Add(name=f"block{i}")([h, f])
    >>> report = keras_winit.initialize(
    ...     keras.Model(x, h), "auto", residual="gpt2", seed=0)
    >>> [(r["branch"], r["layer"], round(r["factor"], 4))
    ...  for r in report.residual_rows]
    [('block0', 'out0', 0.7071), ('block1', 'out1', 0.7071)]

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
        strict: Bool. If True, a trainable weight of an unknown layer kind
            raises a `ValueError` (naming the layer) instead of a warning,
            and nothing is changed.
        residual: One of `RESIDUAL_RULES` (case-insensitive): `"none"`
            (default), `"gpt2"`, `"fixup"` or `"zero"`.
        embeddings_stddev: Optional positive float: draw embedding tables
            from `N(0, embeddings_stddev)` (GPT-2 and BERT use 0.02).
            `None` (default) keeps the model's own tables.
        include_frozen: Bool. If True, weights of `trainable=False` layers
            are initialized too; by default they are kept.

    Returns:
        An `InitReport`.

    Reference:
        - [Glorot & Bengio, 2010](
          https://proceedings.mlr.press/v9/glorot10a.html)
        - [He et al., 2015](https://arxiv.org/abs/1502.01852)
        - [Saxe et al., 2013](https://arxiv.org/abs/1312.6120) (orthogonal)
        - [Goyal et al., 2017](https://arxiv.org/abs/1706.02677)
          (zero-init residual, "zero")
        - [Zhang, Dauphin & Ma, 2019](https://arxiv.org/abs/1901.09321)
          (Fixup)
        - [Radford et al., 2019](
          https://cdn.openai.com/better-language-models/language_models_are_unsupervised_multitask_learners.pdf)
          (GPT-2, section 2.3)
    """
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(
            "Argument `model` must be a Keras model or layer. "
            f"Received: model={model!r}"
        )
    base = _resolve_scheme(scheme)
    if bias is None:
        bias = "torch" if base == "torch" else "zeros"
    if not isinstance(bias, str) or bias not in BIAS_MODES:
        raise ValueError(
            f"Invalid `bias` argument: {bias!r}. Expected one of {BIAS_MODES}."
        )
    if bias == "fan_in_plus_one" and base == "torch":
        raise ValueError(
            "Argument `bias='fan_in_plus_one'` needs a variance-scaling "
            "scheme; scheme='torch' draws its biases as PyTorch does. "
            f"Received: scheme={scheme!r}, bias={bias!r}"
        )
    if not isinstance(gain_method, str) or gain_method not in (
        "moment",
        "kumar",
        "torch",
    ):
        raise ValueError(
            f"Invalid `gain_method` argument: {gain_method!r}. "
            "Expected one of ('moment', 'kumar', 'torch')."
        )
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
    ):
        raise ValueError(
            f"Argument `seed` must be an int or None. Received: seed={seed!r}"
        )
    _checks.boolean("strict", strict)
    _checks.boolean("include_frozen", include_frozen)
    if not isinstance(residual, str) or residual.lower() not in RESIDUAL_RULES:
        raise ValueError(
            f"Invalid `residual` argument: {residual!r}. "
            f"Expected one of {RESIDUAL_RULES}."
        )
    residual = residual.lower()
    if embeddings_stddev is not None:
        embeddings_stddev = _checks.positive_float(
            "embeddings_stddev", embeddings_stddev
        )
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built, so it has no weights to "
            "initialize. Build it first, e.g. with `model.build(input_shape)`"
            " or by calling it on data."
        )
    for layer in _compat.sublayers(model, recursive=True):
        if not layer.built:
            raise ValueError(
                f"Layer '{layer.name}' of model '{model.name}' is not built, "
                "so its weights do not exist yet. Call the model on data "
                "(or on `keras.Input`s) before initializing it."
            )
    if seed is None:
        seed = random.randint(1, 2**31 - 1)
    found = _Collector()
    found.visit(model)
    unknown = [item for item in found.items if item.role == "unknown"]
    if unknown:
        # Said before anything is written: with strict=True nothing changes.
        lines = "\n".join(
            f"  layer '{item.layer}' ({item.layer_class}): "
            f"'{item.variable.path}' {tuple(item.variable.shape)}"
            for item in unknown
        )
        message = (
            f"{len(unknown)} trainable weight(s) of model '{model.name}' "
            "are of a kind keras_winit.layer_init.initialize does not know; "
            f"they are left as they are:\n{lines}"
        )
        if strict:
            raise ValueError(message + "\n(strict=True: nothing was changed)")
        warnings.warn(message, UnknownLayerWarning, stacklevel=2)
    adjust, residual_rows, branches = {}, [], []
    if residual != "none":
        adjust, residual_rows, branches = _residual_plan(model, residual)
    writer = _Writer(
        base,
        bias,
        int(seed),
        gain_method,
        embeddings_stddev,
        include_frozen,
        adjust,
    )
    rows = []
    for index, item in enumerate(found.items):
        rows.extend(writer.write(index, item))
    for row in residual_rows:
        applied = [r for r in rows if r["path"] == row["path"]]
        row["applied"] = bool(applied) and applied[0]["kind"] != "frozen"
    return InitReport(rows, residual_rows, residual)


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
        kind=None,
        own=None,
    ):
        self.variable = variable
        self.layer_class = None
        self.kind = kind or role
        self.own = own
        self.layer = layer
        self.role = role
        self.layout = layout
        self.fans = fans
        self.gates = gates
        self.activations = activations
        self.torch = torch
        self.has_bias = has_bias
        self.forget_gate = forget_gate


class _Collector:
    """Collects `_Item`s from a layer tree, each variable once.

    No forward pass: it opens sublayers (`_compat.sublayers`) and asks
    `keras_winit.walker` what kind each layer is; the roles, layouts,
    fans and gates of its variables are decided here.
    """

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
        elif isinstance(layer, walker.SEPARABLE_CONV_TYPES):
            self._separable(layer)
        elif isinstance(layer, walker.DEPTHWISE_CONV_TYPES):
            self._conv(layer, "depthwise")
        elif isinstance(layer, walker.CONV_TRANSPOSE_TYPES):
            self._conv(layer, "conv_transpose")
        elif isinstance(layer, walker.CONV_TYPES):
            self._conv(layer, "conv")
        elif isinstance(layer, keras.layers.Embedding):
            self._embedding(layer)
        elif _is_kept_norm(layer):
            for variable in layer.weights:
                self._add(
                    _Item(variable, layer.name, "kept", kind="normalization")
                )
        elif walker.kind_of(layer) == "activation":
            # PReLU's slopes: part of the activation, not a kernel.
            for variable in layer.weights:
                self._add(
                    _Item(variable, layer.name, "kept", kind="activation")
                )
        elif walker.kind_of(layer) == "embedding" and walker.is_leaf(layer):
            # Another package's table read by index or position
            # (keras_hub's `PositionEmbedding`): kept, as `Embedding`s.
            kind = (
                "position embedding"
                if _class_named(layer, _POSITION_EMBEDDINGS)
                else "embedding"
            )
            for variable in layer.weights:
                if _is_float(variable) and len(variable.shape) == 2:
                    self._add(
                        _Item(
                            variable,
                            layer.name,
                            "embedding",
                            "embedding",
                            kind=kind,
                            own=getattr(layer, "initializer", None),
                        )
                    )
        elif _class_named(layer, ("LayerScale",)):
            for variable in layer.weights:
                self._add(
                    _Item(variable, layer.name, "kept", kind="layer scale")
                )
        else:
            sublayers = _compat.sublayers(layer)
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
                if _TOKEN.search(variable.name) and _is_float(variable):
                    self._add(_Item(variable, layer.name, "kept", kind="token"))
                elif variable.trainable:
                    item = _Item(variable, layer.name, "unknown")
                    item.layer_class = type(layer).__name__
                    self._add(item)
                else:
                    self._add(
                        _Item(
                            variable, layer.name, "kept", kind="non-trainable"
                        )
                    )

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
            getattr(layer, f"{n}_dense", None)
            for n in ("query", "key", "value")
        ]
        dims = {p.kernel.shape[0] for p in projections if p is not None}
        widths = {
            math.prod(p.kernel.shape[1:]) for p in projections if p is not None
        }
        # PyTorch packs q, k, v into one (3E, E) in_proj_weight when all
        # inputs and projections have the embedding width E.
        packed = len(dims) == 1 and widths == dims and None not in projections
        for sublayer in _compat.sublayers(layer):
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
        # keras_hub's ReversibleEmbedding (an `Embedding`) may also hold an
        # untied output projection `reverse_embeddings` (dim, vocab): the
        # language-model head, initialized as the table is.
        for variable in layer.weights:
            if variable.name in ("embeddings", "reverse_embeddings") and (
                _is_float(variable)
            ):
                self._add(
                    _Item(
                        variable,
                        layer.name,
                        "embedding",
                        "embedding",
                        torch=("normal", 1),
                        kind="embedding",
                        own=getattr(layer, "embeddings_initializer", None),
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
        if isinstance(cell, _compat.conv_lstm_cell_class()):
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
    """Draws and assigns the values of `_Item`s, and makes report rows.

    Variable by variable: each is drawn on the backend's device, assigned,
    and its std measured there; only the scalar std comes to the host. On
    PyTorch a variable of one block, whose values need no further step,
    is drawn straight into its `torch.nn.Parameter` (`sampling.draw_into`)
    and not copied.
    `adjust` maps `id(variable)` to the `(factor, note)` of a residual rule,
    applied to the values before they are assigned.
    """

    def __init__(
        self,
        base,
        bias,
        seed,
        gain_method,
        embeddings_stddev=None,
        include_frozen=False,
        adjust=None,
    ):
        self.base = base
        self.bias = bias
        self.seed = seed
        self.gain_method = gain_method
        self.embeddings_stddev = embeddings_stddev
        self.include_frozen = include_frozen
        self.adjust = adjust or {}
        self._gains = {}

    def keeps(self, item):
        """The reason `item` is kept as it is, or None if it is drawn."""
        if item.role in ("kept", "unknown"):
            return item.kind
        if not item.variable.trainable and not self.include_frozen:
            return "frozen"
        if item.role == "bias" and self.bias == "keep":
            return "bias"
        if (
            item.role == "embedding"
            and self.base != "torch"
            and self.embeddings_stddev is None
        ):
            return item.kind
        return None

    def write(self, index, item):
        variable = item.variable
        factor, note = self.adjust.get(id(variable), (None, ""))
        kept = self.keeps(item)
        if kept is not None:
            label = "unknown" if item.role == "unknown" else "kept"
            if factor is not None and kept != "frozen":
                values = keras.ops.multiply(variable.value, factor)
                variable.assign(keras.ops.cast(values, variable.dtype))
                label = f"kept ×{factor:.4g} ({note})"
            row = _row(
                item,
                "",
                variable.shape,
                label,
                (None, None),
                None,
                _std(variable.value),
            )
            row["kind"] = kept
            if item.own is not None and kept in (
                "embedding",
                "position embedding",
            ):
                row["kind"] = f"{kept}, own {_describe(item.own)}"
            return [row]
        shape = tuple(int(d) for d in variable.shape)
        n = len(item.gates)
        block_shape = shape[:-1] + (shape[-1] // n,)
        blocks, specs = [], []
        # One block: drawn straight into the variable's storage where the
        # backend allows it (PyTorch), so that nothing needs copying.
        into = variable.value if n == 1 else None
        for g in range(n):
            block_seed = _seeds.mix(self.seed, index, g)
            with sampling.draw_into(into), sampling.recording_std() as record:
                values, label, fans, target = self._draw(
                    item, g, block_shape, variable.dtype, block_seed
                )
            # Measured with the draw where that is free (JAX), else here.
            std = record.std(values)
            if factor is not None:
                values = self._scale(values, factor, values is into)
                label = f"{label} ×{factor:.4g} ({note})"
                target = None if target is None else target * abs(factor)
                std = None if std is None else std * abs(factor)
            values = keras.ops.cast(values, variable.dtype)
            blocks.append(values)
            specs.append(
                (label, fans, target, _std(values) if std is None else std)
            )
        values = blocks[0] if n == 1 else keras.ops.concatenate(blocks, -1)
        if values is not into:
            # One thread for the copy (see `sampling.single_cpu_thread`).
            with sampling.single_cpu_thread():
                variable.assign(values)
        rows = []
        for g, (label, fans, target, std) in enumerate(specs):
            row = _row(
                item, item.gates[g], block_shape, label, fans, target, std
            )
            rows.append(row)
        return rows

    @staticmethod
    def _scale(values, factor, in_place):
        """`keras.ops.multiply(values, factor)`; in place if `in_place`.

        In place for values drawn into a PyTorch variable (`draw_into`),
        on one thread: the same kernel and operands as
        `keras.ops.multiply` (which turns `factor` into a tensor of
        Keras' float dtype), so the same bits, without a new tensor and
        its copy into the variable.
        """
        if not in_place:
            return keras.ops.multiply(values, factor)
        import torch

        with torch.no_grad(), sampling.single_cpu_thread():
            values.mul_(keras.ops.convert_to_tensor(factor))
        return values

    def _draw(self, item, gate, shape, dtype, seed):
        """Returns `(values, init label, fans used, target std)`."""
        fan_in, fan_out = item.fans
        if item.role == "embedding":
            if self.base == "torch":
                return self._torch(item.torch, shape, dtype, seed)
            initializer = init_lib.VarianceScaling(
                scale=self.embeddings_stddev**2,
                mode="fan_in",
                distribution="untruncated_normal",
                seed=seed,
                fan_in=1,
                fan_out=1,
            )
            return (
                initializer(shape, dtype),
                f"normal(stddev={self.embeddings_stddev:g})",
                (None, None),
                self.embeddings_stddev,
            )
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
                return self._callable(
                    activation, fan_in, fan_out, seed, layer_name
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

    def _callable(self, function, fan_in, fan_out, seed, layer_name):
        """`"auto"` for an activation known only as a function."""
        name = getattr(function, "__name__", type(function).__name__)
        if id(function) not in self._gains:
            try:
                value = gains.gain(function, method=self.gain_method)
            except (ValueError, TypeError) as error:
                raise ValueError(
                    "scheme='auto' cannot compute a gain for the activation "
                    f"{function!r} of layer '{layer_name}' "
                    f"(gain_method={self.gain_method!r}): {error}"
                ) from error
            # The function is kept with its gain so its id is not reused.
            self._gains[id(function)] = (function, value)
        value = self._gains[id(function)][1]
        initializer = init_lib.VarianceScaling(
            scale=value**2,
            mode="fan_in",
            distribution="truncated_normal",
            seed=seed,
            fan_in=fan_in,
            fan_out=fan_out,
        )
        return initializer, f"auto({name}, g={value:.3g})"

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


# --- Residual branches ---------------------------------------------------
#
# A self-contained finder with a small interface: `residual_branches(model)`
# returns `ResidualBranch`es (the block, the branch's layers in order, its
# kernel layers in sequential stages, its last kernel layer and its last
# normalization). `initialize(..., residual=...)` only reads those.


#: Residual rules of `initialize`.
RESIDUAL_RULES = ("none", "gpt2", "fixup", "zero")

_TRANSFORMER_BLOCKS = _compat.TRANSFORMER_BLOCKS


class ResidualBranch:
    """One residual branch `F` of a block `h + F(h)`.

    Attributes:
        name: A readable name: the `Add`'s name in a Functional graph, or
            `"<block>/<branch>"` in a transformer block.
        block: The `Add` operation, or the transformer block layer.
        layers: The branch's layers in forward order (all of them, also
            normalization and activation layers).
        stages: The branch's kernel layers in sequential stages: a list of
            lists, one per stage. A stage is one layer, except attention:
            query, key and value are one stage, the output projection the
            next.
        last_kernel: The layer of the last stage (the branch's output
            projection).
        last_norm: The branch's last normalization layer, or None.
    """

    def __init__(
        self,
        name: str,
        block: Any,
        layers: Iterable[keras.layers.Layer],
        stages: Iterable[Iterable[keras.layers.Layer]],
        last_norm: keras.layers.Layer | None,
    ) -> None:
        self.name = name
        self.block = block
        self.layers = list(layers)
        self.stages = [list(stage) for stage in stages]
        self.last_kernel = self.stages[-1][-1]
        self.last_norm = last_norm

    @property
    def depth(self) -> int:
        """Fixup's `m`: the number of sequential kernel stages."""
        return len(self.stages)

    def __repr__(self):
        return (
            f"<ResidualBranch {self.name}: {self.depth} stages, last kernel "
            f"'{self.last_kernel.name}', last norm "
            f"{self.last_norm.name if self.last_norm else None!r}>"
        )


def residual_branches(
    model: keras.Model | keras.layers.Layer,
) -> list[ResidualBranch]:
    """Returns the residual branches of a model, in forward order.

    Three kinds are found:

    - in Functional graphs (also nested ones, and keras_hub backbones), an
      `Add` (the layer, or `+` on symbolic tensors) of two tensors where
      one side is the block's input, or a cheaper shortcut of it (at most
      one kernel layer, a projection or pooling), and the other side has
      more kernel layers: that side is the branch (ResNet, ResNetV2,
      ConvNeXt, MobileNetV2 blocks);
    - keras_hub `TransformerEncoder` / `TransformerDecoder` blocks (two or
      three branches: self-attention, cross-attention when built, the
      feed-forward network) and ViT encoder blocks (attention, MLP);
    - where these find none (a subclassed model, or layers whose `call`
      does `x + f(x)`), the residual adds `keras_winit.walker.walk`
      records in one forward pass (on `walker.built_batch(model)`: the
      model's inputs, or the shape it was built with). Such a branch is
      named after its `Add` layer, else after the innermost layer whose
      `call` holds it (`"<layer path>/residual_<i>"` when it holds
      several); its `block` is that layer.

    Examples:

    >>> x = keras.Input((8,))
    >>> h = keras.layers.Dense(8, activation="relu")(x)
    >>> y = keras.layers.Add(name="block")([x, keras.layers.Dense(8)(h)])
    >>> [b.name for b in keras_winit.layer_init.residual_branches(
    ...     keras.Model(x, y))]
    ['block']

    >>> # No graph: a subclassed model whose block does `x + f(x)`.
    >>> class Block(keras.layers.Layer):
    ...     def __init__(self, **kwargs):
    ...         super().__init__(**kwargs)
    ...         self.inner = keras.layers.Dense(8, activation="relu")
    ...         self.outer = keras.layers.Dense(8)
    ...     def call(self, x):
    ...         return x + self.outer(self.inner(x))
    >>> class Net(keras.Model):
    ...     def __init__(self):
    ...         super().__init__(name="net")
    ...         self.blocks = [Block(name=f"block{i}") for i in range(2)]
    ...     def call(self, x):
    ...         for block in self.blocks:
    ...             x = block(x)
    ...         return x
    >>> net = Net()
    >>> _ = net(np.ones((2, 8), "float32"))
    >>> [(b.name, b.depth) for b in
    ...  keras_winit.layer_init.residual_branches(net)]
    [('net/block0', 2), ('net/block1', 2)]

    Args:
        model: A built Keras model or layer.

    Returns:
        A list of `ResidualBranch`.

    Raises:
        ValueError: where the forward pass is needed and the model has
            neither symbolic inputs nor a single build shape to make a
            batch from, or the pass fails.
    """
    branches = []
    for layer in [model] + _compat.sublayers(model, recursive=True):
        if _compat.is_functional(layer):
            branches.extend(_functional_branches(layer))
        for class_name, spec in _TRANSFORMER_BLOCKS.items():
            if type(layer).__name__ == class_name:
                branches.extend(_transformer_branches(layer, spec))
                break
    if not branches:
        branches = _walked_branches(model)
    return branches


def _walked_branches(model):
    """The branches of the residual adds of one recorded forward pass."""
    batch = walker.built_batch(model)
    # Per leaf call, the ids of the tensors it takes; the ids of those
    # that leaf calls made (the tensors are kept, so ids stay unique).
    entering: list[set[int]] = []
    produced: set[int] = set()
    keep: list[Any] = []

    def leaf(layer, args, kwargs):
        out = layer(*args, **kwargs)
        ins = [t for t in keras.tree.flatten((args, kwargs)) if _tensor(t)]
        outs = [t for t in keras.tree.flatten(out) if _tensor(t)]
        keep.extend(ins + outs)
        entering.append({id(t) for t in ins})
        produced.update(id(t) for t in outs)
        return out

    try:
        walk = walker.execute(_Fed(model), batch, leaf, structure=True)
    except Exception as error:
        shapes = keras.tree.map_structure(lambda t: tuple(t.shape), batch)
        raise ValueError(
            f"Model '{model.name}' has no graph, so its residual branches "
            "are found by calling it once, on a batch of shape(s) "
            f"{shapes}; that call failed: {type(error).__name__}: {error}"
        ) from error
    containers = {block.path: block.layer for block in walk.blocks}
    # What a branch is named after: its `Add` layer, or the layer (a
    # container) whose `call` adds it.
    holders = {c.path: c.layer for c in walk.calls if c.kind == "add"}
    holders.update(containers)
    top = next(b.path for b in walk.blocks if b.layer is model)

    def owner(call):
        # Attention is one layer of a branch (its query, key and value
        # are one stage, see `_stages_of`), not four projections.
        for path in call.parents:
            if isinstance(
                containers.get(path), keras.layers.MultiHeadAttention
            ):
                return containers[path]
        return call.layer

    found = []
    for residual in walk.residuals:
        calls = [walk.calls[i] for i in residual.calls]
        layers = list({id(owner(c)): owner(c) for c in calls}.values())
        stages = [s for layer in layers for s in _stages_of(layer)]
        if not stages:
            continue
        norms = [n for layer in layers for n in _norms_of(layer)]
        name = _sum_holder(walk, residual) or top
        found.append((name, holders.get(name, model), layers, stages, norms))
    _check_complete(model, walk, found, top, entering, produced)
    counts: dict[str, int] = {}
    for name, *_ in found:
        counts[name] = counts.get(name, 0) + 1
    seen: dict[str, int] = {}
    branches = []
    for name, block, layers, stages, norms in found:
        if counts[name] > 1:
            seen[name] = seen.get(name, 0) + 1
            name = f"{name}/residual_{seen[name] - 1}"
        branches.append(
            ResidualBranch(
                name, block, layers, stages, norms[-1] if norms else None
            )
        )
    return branches


def _tensor(value):
    return keras.ops.is_tensor(value)


def _check_complete(model, walk, found, top, entering, produced):
    """Raises where the walker may have missed some residual adds.

    Its data flow links recorded layer calls; a tensor made by an op in a
    `call` (`keras.ops.relu(h)`) is tied to the layer call that holds the
    op, so an add after such an op in the model's own `call`, or whose
    skip is such a tensor, can go unseen. Found in some blocks only, a
    rule would count a wrong `L`: refused instead.
    """
    advice = (
        "A residual rule would use a wrong number of branches. Write each "
        "residual block as a layer whose `call` returns `x + f(x)` (with "
        "activations as layers or layer arguments), or build the model "
        "with the Functional API."
    )
    # 1. Every call of a layer class that holds branches holds as many.
    held: dict[str, int] = {}
    for name, block, *_ in found:
        if block is not model and not isinstance(block, keras.layers.Add):
            held[name] = held.get(name, 0) + 1
    classes = {type(b.layer) for b in walk.blocks if b.path in held}
    per_call = {
        b.path: held.get(b.path, 0)
        for b in walk.blocks
        if type(b.layer) in classes
    }
    if len(set(per_call.values())) > 1:
        raise ValueError(
            f"In model '{model.name}', one forward pass finds residual adds "
            "in only some calls of the same layer class: "
            + ", ".join(f"'{p}': {n}" for p, n in per_call.items())
            + " (an op between layer calls, e.g. `keras.ops.relu`, hides "
            f"the skip input of an add from it). {advice}"
        )
    # 2. Adds in the model's own `call`: every tensor its layer calls
    # take that no layer made must be one of the sums found.
    own = [i for i, c in enumerate(walk.calls) if c.parents[-1:] == (top,)]
    made_by_ops = {t for i in own for t in entering[i] if t not in produced}
    sums = sum(1 for _, block, *_ in found if block is model)
    if sums and len(made_by_ops) > sums:
        raise ValueError(
            f"Model '{model.name}' adds residual branches in its own "
            f"`call`, which also computes {len(made_by_ops) - sums} other "
            "tensor(s) between layer calls (e.g. `keras.ops.relu`): one "
            f"forward pass cannot tell all its branches apart. {advice}"
        )


def _functional_branches(model):
    order = {id(op): i for i, op in enumerate(model.operations)}
    memo = {}

    def ancestors(tensor):
        history = _compat.tensor_history(tensor)
        if history is None or id(history[0]) not in order:
            return frozenset()
        operation, node_index = history
        key = (id(operation), node_index)
        if key not in memo:
            inputs = _compat.node_input_tensors(operation)[node_index]
            found = {id(operation)}
            for parent in inputs:
                found |= ancestors(parent)
            memo[key] = frozenset(found)
        return memo[key]

    by_id = {id(op): op for op in model.operations}
    branches = []
    for op in model.operations:
        if not _compat.is_add_operation(op):
            continue
        for tensors in _compat.node_input_tensors(op):
            if len(tensors) != 2:
                continue
            a, b = (ancestors(t) for t in tensors)
            sides = []
            for own in (a - b, b - a):
                layers = sorted(
                    (by_id[i] for i in own), key=lambda o: order[id(o)]
                )
                stages = [s for layer in layers for s in _stages_of(layer)]
                sides.append((layers, stages))
            sides.sort(key=lambda side: len(side[1]))
            (_, short_stages), (layers, stages) = sides
            if not stages or len(short_stages) > 1:
                continue
            if len(short_stages) == len(stages):
                continue  # two alike paths: no shortcut to tell apart
            norms = [n for layer in layers for n in _norms_of(layer)]
            branches.append(
                ResidualBranch(
                    op.name,
                    op,
                    layers,
                    stages,
                    norms[-1] if norms else None,
                )
            )
    return branches


def _transformer_branches(block, spec):
    pre_norm = getattr(block, "normalize_first", True)
    branches = []
    for name, norm_name, *names in spec:
        layers = [_compat.block_sublayer(block, n) for n in names]
        if any(layer is None or not layer.built for layer in layers):
            continue  # e.g. no cross-attention in a decoder-only model
        norm = _compat.block_sublayer(block, norm_name) if pre_norm else None
        if norm is not None:
            layers.insert(0, norm)
        stages = [s for layer in layers for s in _stages_of(layer)]
        if stages:
            branches.append(
                ResidualBranch(
                    f"{block.name}/{name}", block, layers, stages, norm
                )
            )
    return branches


class _Fed(keras.layers.Layer):
    """`model` called on the output of an `Identity` layer, for the walker.

    The walker follows the data flow between recorded layer calls; a
    model's own inputs come from no call, so an `x + f(x)` on them (the
    first block of a model without a stem) would be missed, and so would
    a sum that is the model's output. Walking this layer makes the model a
    recorded container call, its inputs the output of a recorded call.
    """

    def __init__(self, model):
        super().__init__(name=f"{model.name}_fed")
        self.feed = keras.layers.Identity(name="feed")
        self.model = model

    def call(self, x):
        return self.model(self.feed(x))


def _sum_holder(walk, residual):
    """Path of the `Add` layer, or of the layer whose `call` adds; or None.

    The walker names a sum by the call it enters, or, when it is a
    layer's output, by that layer's last call (the branch end).
    """
    calls = walk.calls
    end = residual.calls[-1]
    if any(c.path == residual.at and c.kind == "add" for c in calls):
        return residual.at
    if residual.at == calls[end].path:  # the output of a layer's call
        for block in walk.blocks:  # innermost first
            if block.last == end and block.first <= residual.calls[0]:
                return block.path
        return None
    for call in calls[end + 1 :]:  # the sum enters `call`
        if call.path == residual.at:
            return call.parents[-1] if call.parents else None
    return None


def _output_kernel(layer):
    """The kernel variable that scales a kernel layer's output, or None."""
    if not isinstance(layer, walker.KERNEL_LAYER_TYPES):
        return None
    name = "kernel"
    if isinstance(layer, walker.SEPARABLE_CONV_TYPES):
        name = "pointwise_kernel"
    for variable in layer.weights:
        if variable.name == name and _is_float(variable):
            return variable
    return None


def _stages_of(layer):
    """A layer's kernel layers as sequential stages (see `ResidualBranch`)."""
    if isinstance(layer, keras.layers.MultiHeadAttention):
        inputs = [
            getattr(layer, f"{n}_dense", None)
            for n in ("query", "key", "value")
        ]
        stages = [[p for p in inputs if p is not None]]
        stages.append([layer.output_dense])
        return [s for s in stages if s]
    if _output_kernel(layer) is not None:
        return [[layer]]
    if not isinstance(layer, keras.layers.Layer) or _is_kept_norm(layer):
        return []
    return [s for sub in _compat.sublayers(layer) for s in _stages_of(sub)]


def _norms_of(layer):
    if not isinstance(layer, keras.layers.Layer):
        return []
    if _is_kept_norm(layer):
        return [layer]
    return [n for sub in _compat.sublayers(layer) for n in _norms_of(sub)]


def _gamma(norm):
    """The scale variable of a Keras normalization layer, or None."""
    if not isinstance(norm, walker.NORM_LAYER_TYPES):
        return None  # another package's norm: its scale may mean 1 + s
    for name in ("gamma", "scale"):
        variable = getattr(norm, name, None)
        if isinstance(variable, keras.Variable):
            return variable
    return None


def _residual_plan(model, rule):
    """`(adjust, rows, branches)` of a residual rule.

    `adjust` maps `id(variable)` to `(factor, note)`; `rows` say, per
    branch and variable, what is scaled and why.
    """
    try:
        branches = residual_branches(model)
    except ValueError as error:  # no graph, and no forward pass possible
        raise ValueError(
            f"Argument `residual={rule!r}` needs residual branches, but "
            f"those of model '{model.name}' could not be looked for: {error}"
        ) from error
    if not branches:
        raise ValueError(
            f"Argument `residual={rule!r}` needs residual branches, but "
            f"model '{model.name}' has none that initialize can find: an "
            "`Add` of a block's input and a branch with kernel layers in a "
            "Functional graph, a keras_hub TransformerEncoder/"
            "TransformerDecoder/ViT block, or, in one forward pass of a "
            "model without them, an `x + f(x)` where `f` has kernel "
            "layers. Use residual='none'. "
            f"Received: residual={rule!r}"
        )
    count = len(branches)
    adjust: dict[Any, Any] = {}
    rows: list[dict[str, Any]] = []

    def scale(branch, layer, variable, factor, why):
        if variable is None:
            return  # e.g. a quantized kernel: reported as unknown
        old, note = adjust.get(id(variable), (1.0, ""))
        note = f"{note}+{rule}" if note else rule
        adjust[id(variable)] = (old * factor, note)
        rows.append(
            {
                "branch": branch.name,
                "layer": layer.name,
                "path": variable.path,
                "rule": rule,
                "factor": factor,
                "why": why,
            }
        )

    for branch in branches:
        last = branch.last_kernel
        if rule == "gpt2":
            scale(
                branch,
                last,
                _output_kernel(last),
                1.0 / math.sqrt(count),
                f"output projection, 1/sqrt({count} branches)",
            )
        elif rule == "fixup":
            m = branch.depth
            scale(branch, last, _output_kernel(last), 0.0, "last layer")
            if m > 1:
                factor = count ** (-1.0 / (2 * m - 2))
                for stage in branch.stages[:-1]:
                    for layer in stage:
                        scale(
                            branch,
                            layer,
                            _output_kernel(layer),
                            factor,
                            f"L^(-1/(2m-2)), L={count}, m={m}",
                        )
        else:  # zero
            gamma = _gamma(branch.last_norm) if branch.last_norm else None
            if gamma is not None:
                scale(
                    branch,
                    branch.last_norm,
                    gamma,
                    0.0,
                    "last normalization's gamma",
                )
            else:
                scale(
                    branch,
                    last,
                    _output_kernel(last),
                    0.0,
                    "no normalization with a gamma: last kernel",
                )
    return adjust, rows, branches


def _resolve_scheme(scheme):
    if isinstance(scheme, str):
        name = scheme.lower()
        if name not in SCHEME_NAMES and name not in ("auto", "torch"):
            # CamelCase class names: "HeNormal" -> "he_normal".
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


def _class_named(layer, names):
    """Whether `layer`'s class, or a base class, has one of `names`."""
    return any(cls.__name__ in names for cls in type(layer).__mro__)


def _is_kept_norm(layer):
    """A normalization layer (`walker.is_norm`) kept as a whole.

    Only one without weighted sublayers of its own: a layer that holds a
    kernel layer (keras_hub's `AdaptiveLayerNormalization`, a
    `ConvNormAct`) is opened, and its kernels are drawn.
    """
    return walker.is_norm(layer) and not any(
        sub.weights for sub in _compat.sublayers(layer)
    )


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


# Tensors larger than this many elements have their std computed slice by
# slice, so that no temporary of the whole tensor is made (GPT-2's token
# table is 38.6M values: 147 MB per float32 temporary).
_STD_CHUNK = sampling._STD_SLICE


def _std(values):
    """The std of a tensor, computed on its device; a float on the host.

    See `keras_winit.sampling.sample_std`.
    """
    return sampling._sample_std(values, _STD_CHUNK)


def _describe(initializer):
    """A short name for an initializer, with its std or range if it has."""
    name = type(initializer).__name__
    config = {}
    try:
        config = initializer.get_config()
    except (AttributeError, NotImplementedError, TypeError):
        pass
    for key in ("stddev", "scale", "maxval"):
        if isinstance(config.get(key), numbers.Real):
            return f"{name}({key}={config[key]:g})"
    return name


def _row(item, gate, shape, label, fans, target, std):
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
        "measured_std": std,
        "kind": item.kind,
    }


def _format_cell(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
