"""Signal-propagation diagnostics: does the signal die, explode or saturate?

Glorot & Bengio (2010) and He et al. (2015) derive initializations from
one rule: activations (forward) and back-propagated gradients (backward)
should keep roughly the same variance from layer to layer. `diagnose` runs
one forward and one backward pass of a model on a batch and shows, layer by
layer, whether the rule holds, flags the layers where it does not, and
recommends an initializer for each kernel layer from the activation that
follows it.

The command line runs it on a saved model:
`keras-winit diagnose MODEL.keras BATCH.npy [--labels Y.npy]`.

References:
    - Glorot & Bengio, 2010, "Understanding the difficulty of training deep
      feedforward neural networks", AISTATS.
    - He et al., 2015, "Delving Deep into Rectifiers", arXiv:1502.01852.
"""

import argparse
import dataclasses
import math
import os
import sys
from typing import Any

import keras
import numpy as np

from keras_winit import _checks
from keras_winit import _moments
from keras_winit import _signal
from keras_winit import gains
from keras_winit import health
from keras_winit import walker

#: Short names of the flags, in the order they are checked.
FLAG_KINDS = (
    "nonfinite_input",
    "nonfinite",
    "zero_signal",
    "zero_gradients",
    "vanishing_activations",
    "exploding_activations",
    "vanishing_gradients",
    "exploding_gradients",
    "exploding_stream",
    "saturated",
    "dead",
)

# Recommended initializer per activation family (the gain is computed).
_RELU_LIKE = ("relu", "relu6")


@dataclasses.dataclass
class Flag:
    """One problem found in one layer.

    Attributes:
        layer: Name of the layer (its Keras path).
        kind: One of `FLAG_KINDS`.
        value: The measured value (a std ratio or a fraction).
        threshold: The threshold it crossed.
    """

    layer: str
    kind: str
    value: float
    threshold: float

    @property
    def advice(self) -> str:
        """What the flag means and what to do, in one sentence."""
        return health.ADVICE[self.kind]

    def __str__(self):
        side = "<" if self.kind.startswith("vanishing") else ">"
        if self.kind.startswith(("zero", "nonfinite")):
            measured = ""
        else:
            measured = f" ({self.value:.3g} {side} {self.threshold:g})"
        return (
            f"{self.layer}: {self.kind.replace('_', ' ')}{measured}: "
            f"{self.advice}"
        )


@dataclasses.dataclass
class LayerStats:
    """Signal statistics of one layer call.

    Attributes:
        index: Position in execution order (0-based).
        name: The layer's Keras path (`"sequential/dense_3"`); a layer
            called more than once gets `"/call_2"`, `"/call_3"`… appended.
        layer_type: Class name of the layer.
        activation: Name of the activation the layer applies (fused or as an
            activation layer), or `None`.
        has_kernel: Whether the layer is a kernel layer (`Dense`, `Conv*`,
            `EinsumDense`…).
        mean: Mean of the layer's output over the batch.
        std: Std of the layer's output.
        std_ratio: `std` divided by the previous row's `std` (`None` for
            the first row).
        pre_std: Std of the pre-activation (the output before the fused
            activation) of a kernel layer, else `None`.
        saturated: Fraction of output values within `saturation_eps` of an
            asymptote of a saturating activation (`tanh`, `sigmoid`,
            `hard_sigmoid`, `softsign`, `hard_tanh`), else `None`.
        dead: Fraction of units (channels: the last axis, or axis 1 for
            `channels_first` layers) that are exactly 0 for the whole batch,
            for ReLU/ReLU6, else `None`.
        grad_std: Std of the back-propagated gradient `dC/dz` with respect
            to the pre-activation `z` of a kernel layer with a fused
            activation, or with respect to the output otherwise. `None` when
            the loss does not depend on the layer.
        grad_std_ratio: `grad_std` divided by the previous row's.
        weight_grad_var: Variance of the gradient of the layer's kernel
            (for `SeparableConv`, the pointwise kernel), else `None`.
        initializer: Class name of the kernel initializer in the layer's
            config, else `None`.
        recommended: The recommended kernel initializer, as code (e.g.
            `"keras_winit.HeNormal()"`), for kernel layers.
        gain: The gain of the activation that follows the kernel layer
            (`keras_winit.gain(..., method="moment")`), or `None`.
        flags: The kinds of flag raised for this layer.
        kind: The walker's kind of the layer (`"kernel"`, `"norm"`,
            `"add"`, `"embedding"`…).
        norm_after: Path of the normalization layer that normalizes this
            layer's output, else `None` (its raw scale is then not judged).
        branch: Index of the residual branch the layer lies in, else
            `None`.
        branch_end: Whether its output is added back to a residual
            stream.
        step: Effective step `‖dC/dW‖ / ‖W‖` of the kernel, else `None`.
        nonfinite: Number of non-finite values in its output and gradient.
    """

    index: int
    name: str
    layer_type: str
    activation: str | None
    has_kernel: bool
    mean: float
    std: float
    std_ratio: float | None
    pre_std: float | None
    saturated: float | None
    dead: float | None
    grad_std: float | None
    grad_std_ratio: float | None
    weight_grad_var: float | None
    initializer: str | None
    recommended: str | None
    gain: float | None
    flags: list[str]
    kind: str = "other"
    norm_after: str | None = None
    branch: int | None = None
    branch_end: bool = False
    shortcut: bool = False
    step: float | None = None
    nonfinite: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Diagnosis:
    """The result of `diagnose`.

    Attributes:
        layers: One `LayerStats` per layer call, in execution order.
        flags: All `Flag`s raised, in layer order.
        loss: How the backward pass was driven (which loss).
        batch_size: Number of examples used.
        residuals: The residual adds found (`keras_winit.walker.Residual`).
    """

    layers: list[LayerStats]
    flags: list[Flag]
    loss: str
    batch_size: int
    residuals: list[walker.Residual] = dataclasses.field(default_factory=list)

    def to_table(self) -> str:
        """Returns the per-layer table as a string (no pandas needed)."""
        headers = [
            "#",
            "layer",
            "activation",
            "mean",
            "std",
            "std x",
            "sat/dead",
            "grad std",
            "grad x",
            "W-grad var",
            "step",
            "recommended",
            "flags",
        ]
        rows = []
        for s in self.layers:
            if s.saturated is not None:
                share = f"{100 * s.saturated:.0f}% sat"
            elif s.dead is not None:
                share = f"{100 * s.dead:.0f}% dead"
            else:
                share = "-"
            rec = s.recommended
            if rec is not None and rec.startswith("keras_winit."):
                rec = rec[len("keras_winit.") :]
            rows.append(
                [
                    s.index,
                    s.name,
                    s.activation or "-",
                    _signal.fmt(s.mean, ".2g"),
                    _signal.fmt(s.std),
                    _signal.fmt(s.std_ratio, ".2f"),
                    share,
                    _signal.fmt(s.grad_std),
                    _signal.fmt(s.grad_std_ratio, ".2f"),
                    _signal.fmt(s.weight_grad_var),
                    _signal.fmt(s.step),
                    rec or "-",
                    ",".join(_SHORT[f] for f in s.flags) or "ok",
                ]
            )
        align = [">", "<", "<"] + [">"] * 8 + ["<", "<"]
        table = _signal.format_table(headers, rows, align)
        footer = [
            f"batch: {self.batch_size} examples; backward pass: {self.loss}"
        ]
        if self.flags:
            footer.append(f"{len(self.flags)} flag(s):")
            footer.extend(f"  {f}" for f in self.flags)
        else:
            footer.append("no layer flagged")
        return table + "\n" + "\n".join(footer)

    def __str__(self):
        return self.to_table()


_SHORT = {
    "nonfinite_input": "nonfinite-input",
    "nonfinite": "nonfinite",
    "zero_signal": "zero",
    "zero_gradients": "zero-grad",
    "exploding_stream": "stream",
    "vanishing_activations": "vanish-act",
    "exploding_activations": "explode-act",
    "vanishing_gradients": "vanish-grad",
    "exploding_gradients": "explode-grad",
    "saturated": "saturated",
    "dead": "dead",
}


def diagnose(
    model: keras.Model,
    x: Any,
    y: Any = None,
    *,
    loss: Any = None,
    training: bool = False,
    vanishing_threshold: float = 0.1,
    exploding_threshold: float = 10.0,
    saturation_threshold: float = 0.1,
    dead_threshold: float = 0.6,
    saturation_eps: float = 0.01,
    stream_threshold: float = 100.0,
    seed: int | None = 0,
    print_table: bool = False,
    jit_compile: bool | str = "auto",
) -> Diagnosis:
    """Measures how the signal propagates through a model, layer by layer.

    One forward and one backward pass on the batch `x` (on the TensorFlow,
    JAX and PyTorch backends). For every layer call, in execution order, it
    reports the mean and std of the output, the std of the back-propagated
    gradient, the variance of the kernel's gradient, each std's ratio to
    the previous layer's, and the share of saturated (`|tanh| > 0.99`,
    `sigmoid` within 0.01 of 0 or 1) or dead (ReLU output exactly 0 for the
    whole batch) units.

    Pre-activations: the fused activation of a kernel layer (`Dense`,
    `Conv*`, `DepthwiseConv*`, `SeparableConv*`, `Conv*Transpose`,
    `EinsumDense`) is split off by calling the layer with its `activation`
    attribute temporarily set to `linear` and applying the activation to
    that output `z`; so the gradient is `dC/dz`, the "back-propagated
    gradient" of Glorot & Bengio, whatever activation the layer has.

    Flags (rules in `keras_winit.health`; each `Flag` has an `advice`
    sentence saying what to do):

    - `nonfinite_input`: the batch holds NaN/inf; `nonfinite`: a signal or
      gradient becomes NaN/inf.
    - `zero_signal`: a kernel layer outputs the same value for every
      example (an all-zero init); zero-initialized residual branch ends
      (Fixup, SkipInit) are healthy and not flagged.
    - `zero_gradients`: no gradient reaches the first layers.
    - `vanishing_activations` / `exploding_activations`: in a chain of
      kernel layers that are neither followed by normalization nor inside
      a residual branch, the std of a pre-activation divided by that of
      the chain's first kernel is below `vanishing_threshold` / above
      `exploding_threshold`; a normalization layer or a residual add ends
      a chain. A kernel followed by normalization is scale-invariant: its
      raw scale is not judged, the signal after the norm is (BatchNorm
      runs on batch statistics, see `training`) and its effective step
      `‖dC/dW‖/‖W‖` is reported (`step`).
    - `vanishing_gradients` / `exploding_gradients`: likewise for the
      gradient std against the chain's last hidden kernel.
    - `exploding_stream`: a residual stream's std, compounded over its
      blocks since the last normalization, grew more than
      `stream_threshold` (measured in benchmarks/trainability.py: a stream
      growing ~1.5x per block, 22x over 8 blocks, trains; 395x over 16
      diverges).
    - `saturated` / `dead`: more than `saturation_threshold` of the values
      saturated, more than `dead_threshold` of the units dead.

    Initializers that keep the variance (He for ReLU) keep the ratios
    near 1 at any depth; Glorot on a deep ReLU net halves the variance per
    layer (ratio ≈ 0.71 per layer, 3e-5 after 30 layers).

    The loss: without `y`, a fixed random projection
    `C = sum(output * r) / batch` with `r ~ N(0, 1)` (seeded), which needs
    no labels and feeds every output a unit-variance gradient, so the
    backward pass is seen independently of the forward scale. With `y`:
    `loss` if given, else the model's compiled loss
    (`model.compute_loss`), else sparse categorical cross-entropy for
    integer labels (`from_logits` unless the output sums to 1) or mean
    squared error for targets shaped like the output.

    Recommendation per kernel layer, from the activation that follows it
    (fused, or the first activation layer before the next kernel layer):
    ReLU → `HeNormal`, leaky ReLU → `KaimingNormal(negative_slope=...)`,
    SELU → `LecunNormal`, tanh/linear/softmax → `GlorotUniform`, sigmoid →
    `ActivationScaling("sigmoid", method="kumar")` (Kumar, 2017), any other
    → `ActivationScaling(name)` (second-moment gain); `gain` holds
    `keras_winit.gain(name, method="moment")`.

    Supported: any built `keras.Model` — Sequential, Functional, nested,
    Functional subclasses (keras_hub backbones) and subclassed models —
    walked by `keras_winit.walker`, which opens layers that call sublayers
    (transformer blocks: one row per attention projection and feed-forward
    layer), on the TensorFlow, JAX and PyTorch backends. The model's
    non-trainable state (BatchNorm moving statistics) is restored after
    the pass.

    Examples:

    >>> from keras_winit.diagnostics import diagnose
    >>> model = keras.Sequential([keras.Input((16,))] + [
    ...     keras.layers.Dense(
    ...         32, activation="relu",
    ...         kernel_initializer=keras_winit.HeNormal(seed=i))
    ...     for i in range(4)])
    >>> x = np.random.default_rng(0).normal(size=(128, 16))
    >>> result = diagnose(model, x)
    >>> len(result.layers), result.flags
    (4, [])
    >>> result.layers[1].recommended
    'keras_winit.HeNormal()'

    Args:
        model: A built `keras.Model`.
        x: A batch of inputs (array, or list/dict of arrays), at least 2
            examples. One that does not fit the model's inputs raises a
            `ValueError` naming the input and the shapes; NaN/inf values
            are flagged (`nonfinite_input`).
        y: Optional targets for `x`.
        loss: Optional loss used with `y` (a Keras loss name, a
            `keras.losses.Loss` or a callable `(y_true, y_pred)`).
        training: Passed as `training` to the layers (dropout...).
            Defaults to `False`. `BatchNormalization` always runs on batch
            statistics: a fresh BN under `training=False` is the identity,
            which would judge the net as if it had no normalization.
        vanishing_threshold: Number in `(0, 1)`; std ratio below which a
            layer is flagged vanishing. Defaults to `0.1`.
        exploding_threshold: Number `> 1`; std ratio above which a layer is
            flagged exploding. Defaults to `10.0`.
        saturation_threshold: Number in `(0, 1)`; share of saturated values
            above which a layer is flagged. Defaults to `0.1`.
        dead_threshold: Number in `(0, 1)`; share of dead units above which
            a layer is flagged. Defaults to `0.6`: deep ReLU nets lose
            units as the representations of different examples align with
            depth (40-50% dead at depth 30 with He init is common).
        saturation_eps: Number in `(0, 0.5)`; distance to an asymptote that
            counts as saturated. Defaults to `0.01`.
        stream_threshold: Number `> 1`; compounded growth of a residual
            stream's std above which it is flagged. Defaults to `100.0`.
        seed: Int seed of the random projection used without `y`.
        print_table: If `True`, print the table too.
        jit_compile: `True`, `False` or `"auto"` (the default), as in
            `Model.compile`: on TensorFlow, whether the forward and
            backward pass runs as one traced `tf.function`, cached per
            model and signature (shapes and dtypes of `x` and `y`, `loss`,
            `training`, `seed`); the results are the eager pass's, to
            float32 round-off. Tracing pays after about 8 calls
            (ResNet50V2, 64x64, batch 8: trace 4.6-8.3 s; warm compiled
            `diagnose` 1.3-1.9x one training step, eager 2.4-4.2x;
            benchmarks/trainability.py --cost), so `"auto"` compiles from
            the call after `keras_winit._compiled.AUTO_AFTER` (8) eager
            calls with the same model and signature, and stays eager if
            the pass cannot be traced. New weight values need no
            retrace; a changed model (layers, variables, configs,
            activations) is traced again. The cache never keeps a model
            alive. Ignored on JAX and PyTorch.

    Returns:
        A `Diagnosis` with `.layers` (one `LayerStats` each), `.flags`,
        `.to_table()`; `str(result)` is the table.

    Reference:
        - [Glorot & Bengio, 2010](
            https://proceedings.mlr.press/v9/glorot10a.html)
        - [He et al., 2015](https://arxiv.org/abs/1502.01852)
        - [Kumar, 2017](https://arxiv.org/abs/1704.08863)
    """
    _signal.check_backend("diagnose")
    _signal.check_model(model, "diagnose")
    _signal.check_number("vanishing_threshold", vanishing_threshold, 0, 1)
    _signal.check_number("exploding_threshold", exploding_threshold, 1)
    _signal.check_number("saturation_threshold", saturation_threshold, 0, 1)
    _signal.check_number("dead_threshold", dead_threshold, 0, 1)
    _signal.check_number("saturation_eps", saturation_eps, 0, 0.5)
    _signal.check_number("stream_threshold", stream_threshold, 1)
    _signal.check_number("seed", seed, -1, integer=True)
    _checks.boolean("training", training)
    _checks.boolean("print_table", print_table)
    if jit_compile not in (True, False, "auto") or (
        jit_compile in (0, 1) and not isinstance(jit_compile, bool)
    ):
        raise ValueError(
            "Argument `jit_compile` must be one of True, False or 'auto'. "
            f"Received: jit_compile={jit_compile!r}"
        )
    tensors, batch = _signal.to_tensors(x)
    if batch < 2:
        raise ValueError(
            "Argument `x` must hold at least 2 examples to estimate a std. "
            f"Received: batch size {batch}"
        )
    check_inputs(model, tensors)
    nonfinite = _count_nonfinite(tensors)
    if y is not None:
        y_tensors, y_batch = _signal.to_tensors(y, name="y")
        if y_batch != batch:
            raise ValueError(
                "Arguments `x` and `y` must have the same batch size. "
                f"Received: {batch} and {y_batch}"
            )
        y = y_tensors
    # BatchNorm runs on batch statistics (a fresh BN under training=False
    # is the identity); its moving statistics, and any other state the
    # pass changes, are restored.
    state = [(v, v.numpy()) for v in model.non_trainable_variables]
    try:
        records, description, walk = _signal.probe_tensors(
            model,
            tensors,
            y=y,
            loss=loss,
            training=training,
            seed=seed,
            norm_training=True,
            jit_compile=jit_compile,
        )
    finally:
        for v, value in state:
            v.assign(value)
    thresholds = {
        "vanishing": vanishing_threshold,
        "exploding": exploding_threshold,
        "saturation": saturation_threshold,
        "dead": dead_threshold,
        "eps": saturation_eps,
        "stream": stream_threshold,
    }
    result = _summarize(
        records, description, batch, thresholds, walk.residuals, nonfinite
    )
    if print_table:
        print(result.to_table())
    return result


def check_inputs(model: keras.Model, tensors: Any) -> None:
    """Raises a `ValueError` naming the input when `x` does not fit."""
    inputs = getattr(model, "inputs", None)
    if not inputs:
        return
    try:
        expected = list(keras.tree.flatten(inputs))
    except (TypeError, ValueError):
        return
    names = [getattr(t, "name", f"input_{i}") for i, t in enumerate(expected)]
    names = [n.split(":")[0] for n in names]
    if isinstance(tensors, dict):
        wanted = getattr(model, "_inputs_struct", None)
        keys = list(wanted) if isinstance(wanted, dict) else names
        missing = [k for k in keys if k not in tensors]
        if missing:
            raise ValueError(
                f"Argument `x` does not fit the inputs of model "
                f"{model.name!r}: missing input(s) {missing}. Received: "
                f"keys {sorted(tensors)}, expected {keys}."
            )
        if isinstance(wanted, dict):
            pairs = [(k, wanted[k], tensors[k]) for k in keys]
        else:
            pairs = []
    else:
        flat = keras.tree.flatten(tensors)
        if len(flat) != len(expected):
            raise ValueError(
                f"Argument `x` does not fit the inputs of model "
                f"{model.name!r}: it expects {len(expected)} input(s) "
                f"({', '.join(names)}). Received: {len(flat)} array(s) of "
                f"shapes {[tuple(t.shape) for t in flat]}."
            )
        pairs = list(zip(names, expected, flat, strict=True))
    for name, spec, t in pairs:
        want = tuple(spec.shape)
        got = tuple(t.shape)
        ok = len(want) == len(got) and all(
            w is None or w == g for w, g in zip(want, got, strict=True)
        )
        if not ok:
            raise ValueError(
                f"Argument `x` does not fit input {name!r} of model "
                f"{model.name!r}: expected shape {want}, received shape "
                f"{got}."
            )


def _count_nonfinite(tensors):
    total = 0
    for t in keras.tree.flatten(tensors):
        v = keras.ops.convert_to_numpy(t)
        if np.issubdtype(v.dtype, np.floating):
            total += int(np.size(v) - np.count_nonzero(np.isfinite(v)))
    return total


def _summarize(records, description, batch, thresholds, residuals, nonfinite):
    measured = _measure(records, thresholds["eps"])
    stats = []
    previous = None
    for i, (r, m) in enumerate(zip(records, measured, strict=True)):
        act = r.activation
        kernel = _signal.kernel_variable(r.layer)
        step = None
        if kernel is not None and m["grad_norm"] is not None:
            w, g = m["weight_norm"], m["grad_norm"]
            step = g / w if w > 0 else (math.inf if g > 0 else 0.0)
        std, grad_std = m["std"], m["grad_std"]
        s = LayerStats(
            index=i,
            name=r.name,
            layer_type=type(r.layer).__name__,
            activation=None if act is None else act[0],
            has_kernel=kernel is not None,
            mean=m["mean"],
            std=std,
            std_ratio=_ratio(std, previous and previous.std),
            pre_std=m["pre_std"],
            saturated=m["saturated"],
            dead=m["dead"],
            grad_std=grad_std,
            grad_std_ratio=_ratio(grad_std, previous and previous.grad_std),
            weight_grad_var=m["weight_grad_var"],
            initializer=_initializer_name(r.layer),
            recommended=None,
            gain=None,
            flags=[],
            kind=r.kind,
            norm_after=r.norm_after,
            branch=r.branch,
            branch_end=r.branch_end,
            shortcut=r.shortcut,
            step=step,
            nonfinite=m["nonfinite"],
        )
        if s.has_kernel and s.pre_std is None:
            s.pre_std = std
        stats.append(s)
        previous = s
    _recommend(stats)
    flags = []
    for row, finding in health.judge(stats, residuals, thresholds, nonfinite):
        if row is not None:
            row.flags.append(finding.kind)
        flags.append(
            Flag(finding.where, finding.kind, finding.value, finding.threshold)
        )
    return Diagnosis(
        layers=stats,
        flags=flags,
        loss=description,
        batch_size=batch,
        residuals=list(residuals),
    )


# ----------------------------------------------------------------------
# Statistics, reduced on the backend and fetched to the host at once.

# Below this `var / mean**2`, a float32 variance may be mostly the
# round-off of the mean (a constant signal gives ~1e-14, not 0): such a
# tensor is measured again in float64, exactly as before.
_CANCELLATION = 1e-6


class _Pending:
    """Per-tensor reductions, done where the tensor lives.

    A tensor in host memory (every backend on CPU) is reduced with NumPy
    on a zero-copy view of its buffer: measured on ResNet50V2, faster than
    eager backend ops, whose dispatch costs more than the arithmetic. A
    tensor on an accelerator is reduced there and its scalars queued;
    `fetch` stacks them and copies them to the host at once.
    """

    def __init__(self):
        self.values = []  # floats, or 0-d backend tensors until `fetch`

    def _put(self, *values):
        start = len(self.values)
        self.values.extend(values)
        return tuple(range(start, len(self.values)))

    def moments(self, t):
        """Queues `mean(t)` and `mean((t - mean(t))**2)` (two passes)."""
        v = _moments.host_view(t)
        if v is not None:
            return self._put(*_moments.moments(v.reshape(-1)))
        mean = keras.ops.mean(t)
        return self._put(mean, keras.ops.mean(keras.ops.square(t - mean)))

    def square_sum(self, t):
        v = _moments.host_view(t)
        if v is not None:
            v = v.reshape(-1)
            with np.errstate(over="ignore"):
                total = float(np.dot(v, v))
            if math.isinf(total):  # squares beyond float32, values not
                wide = v.astype(np.float64)
                total = float(np.dot(wide, wide))
            return self._put(total)[0]
        return self._put(keras.ops.sum(keras.ops.square(t)))[0]

    def saturated(self, t, low, high):
        """Queues the count of values within reach of `low` or `high`."""
        v = _moments.host_view(t)
        if v is not None:
            return self._put(float(np.count_nonzero((v <= low) | (v >= high))))[
                0
            ]
        near = keras.ops.logical_or(
            keras.ops.less_equal(t, low), keras.ops.greater_equal(t, high)
        )
        return self._put(_count(near))[0]

    def alive(self, t, axis):
        """Queues the count of units (along `axis`) not always zero."""
        v = _moments.host_view(t)
        if v is not None:
            if axis == v.ndim - 1:
                alive = np.any(v.reshape(-1, v.shape[-1]) != 0, axis=0)
            else:
                other = tuple(a for a in range(v.ndim) if a != axis)
                alive = np.any(v != 0, axis=other)
            return self._put(float(np.count_nonzero(alive)))[0]
        other = tuple(a for a in range(len(t.shape)) if a != axis)
        alive = keras.ops.any(keras.ops.not_equal(t, 0), axis=other)
        return self._put(_count(alive))[0]

    def fetch(self):
        """The values as floats, backend scalars copied in one transfer."""
        queued = [i for i, v in enumerate(self.values) if not _is_float(v)]
        groups: dict[str, list[int]] = {}
        for i in queued:
            dtype = keras.backend.standardize_dtype(self.values[i].dtype)
            # Counts stay integers (exact); float32 and float64 stack in
            # the wider of the two.
            kind = "int" if "int" in dtype else "float"
            groups.setdefault(kind, []).append(i)
        for kind, indices in groups.items():
            tensors = [self.values[i] for i in indices]
            if kind == "float":
                dtypes = {
                    keras.backend.standardize_dtype(t.dtype) for t in tensors
                }
                dtype = "float64" if "float64" in dtypes else "float32"
                tensors = [keras.ops.cast(t, dtype) for t in tensors]
            stacked = keras.ops.convert_to_numpy(keras.ops.stack(tensors))
            for i, v in zip(indices, stacked.tolist(), strict=True):
                self.values[i] = float(v)
        return self.values


def _count(t):
    """Number of `True` values of a boolean tensor, as an integer tensor."""
    # Not `ops.count_nonzero`: on torch it warns on a 0-d result.
    return keras.ops.sum(keras.ops.cast(t, "int32"))


def _is_float(v):
    return isinstance(v, float)


def _float(t):
    """`t` in float32, or float64 when it is (what the host copy held)."""
    dtype = keras.backend.standardize_dtype(t.dtype)
    if dtype in ("float32", "float64"):
        return t
    return keras.ops.cast(t, "float32")


def _measure(records, eps):
    """Per record: mean, stds, saturation, dead units, kernel norms.

    Every signal is reduced where it lives (`_Pending`): mean and
    two-pass variance in its own float32 precision, a relative error of
    ~1e-7. A tensor whose reduction cannot be trusted to that (non-finite
    values, or a variance within `_CANCELLATION` of its squared mean, a
    constant signal included) is copied and measured with NumPy in
    float64 instead, as before: the values reported are the same.
    """
    pending = _Pending()
    plans = []
    for r in records:
        out = _float(r.out)
        plan = {"out": pending.moments(out)}
        if r.pre is not None:
            plan["pre"] = pending.moments(_float(r.pre))
        if r.grad is not None:
            plan["grad"] = pending.moments(_float(r.grad))
        kernel = _signal.kernel_variable(r.layer)
        if r.kernel_grad is not None and kernel is not None:
            plan["kernel_grad"] = pending.moments(_float(r.kernel_grad))
            plan["weight"] = pending.square_sum(_float(kernel.value))
        act = r.activation
        if act is not None and act[0] in _signal.SATURATING:
            low, high = _signal.SATURATING[act[0]]
            plan["saturated"] = pending.saturated(out, low + eps, high - eps)
        axis = _unit_axis(act, out, r.layer)
        if axis is not None:
            plan["alive"] = (pending.alive(out, axis), int(out.shape[axis]))
        plans.append(plan)
    values = pending.fetch()

    def moments(where):
        mean, var = (values[i] for i in where)
        exact = (
            math.isfinite(mean)
            and math.isfinite(var)
            and var > _CANCELLATION * mean * mean
        )
        return mean, var, exact

    def mean_std(where, tensor):
        """`(mean, std, non-finite count)` of `tensor`: from the fetched
        moments when exact, else in float64 from its host values."""
        mean, var, exact = moments(where)
        if exact:
            return mean, math.sqrt(var), 0
        host = _signal._numpy(tensor)
        with np.errstate(all="ignore"):
            mean, std = float(host.mean()), float(host.std(dtype=np.float64))
        return mean, std, _nonfinite(host)

    measured = []
    for r, plan in zip(records, plans, strict=True):
        m = {}
        m["mean"], m["std"], nonfinite = mean_std(plan["out"], r.out)
        m["pre_std"] = None
        if "pre" in plan:
            _, m["pre_std"], _ = mean_std(plan["pre"], r.pre)
        m["grad_std"] = None
        if "grad" in plan:
            _, m["grad_std"], grad_nonfinite = mean_std(plan["grad"], r.grad)
            nonfinite += grad_nonfinite
        m["nonfinite"] = nonfinite
        m["weight_grad_var"] = m["grad_norm"] = m["weight_norm"] = None
        if "kernel_grad" in plan:
            mean, var, exact = moments(plan["kernel_grad"])
            size = int(np.prod(r.kernel_grad.shape))
            if exact:
                m["weight_grad_var"] = var
                m["grad_norm"] = math.sqrt(size * (var + mean * mean))
            else:
                g = _signal._numpy(r.kernel_grad)
                with np.errstate(all="ignore"):
                    m["weight_grad_var"] = float(g.var())
                    m["grad_norm"] = _norm(g)
            m["weight_norm"] = math.sqrt(values[plan["weight"]])
        m["saturated"] = None
        if "saturated" in plan:
            size = int(np.prod(r.out.shape))
            m["saturated"] = values[plan["saturated"]] / size
        m["dead"] = None
        if "alive" in plan:
            index, units = plan["alive"]
            m["dead"] = float(1.0 - values[index] / units)
        measured.append(m)
    return measured


def _nonfinite(a):
    return int(np.size(a) - np.count_nonzero(np.isfinite(a)))


def _unit_axis(act, out, layer):
    """The unit (channel) axis of a ReLU-family output, else `None`."""
    if act is None or act[0] not in _signal.RELU_FAMILY:
        return None
    if len(out.shape) < 2:
        return None
    if getattr(layer, "data_format", None) == "channels_first":
        return 1
    return len(out.shape) - 1


def _norm(a):
    flat = np.ravel(a)
    return float(np.sqrt(np.dot(flat, flat)))


def _ratio(value, previous):
    if value is None or previous is None:
        return None
    if previous == 0:
        return math.inf if value > 0 else math.nan
    return value / previous


def _initializer_name(layer):
    initializer = getattr(layer, "kernel_initializer", None)
    if initializer is None:
        initializer = getattr(layer, "pointwise_initializer", None)
    return None if initializer is None else type(initializer).__name__


def _recommend(stats):
    for i, s in enumerate(stats):
        if not s.has_kernel:
            continue
        activation = s.activation
        if activation is None:
            # The first activation layer before the next kernel layer.
            for t in stats[i + 1 :]:
                if t.has_kernel:
                    break
                if t.activation is not None:
                    activation = t.activation
                    break
        s.recommended, s.gain = recommend(activation)


def recommend(
    activation: str | None, param: float | None = None
) -> tuple[str, float]:
    """Recommended kernel initializer (as code) and gain for an activation.

    Args:
        activation: Name of the activation that follows the layer, or
            `None` for a linear layer.
        param: Optional activation parameter (negative slope of
            `leaky_relu`).

    Returns:
        A tuple `(code, gain)`: e.g. `("keras_winit.HeNormal()", 1.414…)`.
        `gain` is `keras_winit.gain(activation, param, method="moment")`,
        or `None` when it cannot be computed.

    Examples:

    >>> keras_winit.diagnostics.recommend("relu")[0]
    'keras_winit.HeNormal()'
    >>> keras_winit.diagnostics.recommend("tanh")[0]
    'keras_winit.GlorotUniform()'
    """
    name = activation or "linear"
    try:
        g = gains.gain(name, param, method="moment")
    except (ValueError, TypeError):
        g = None
    if name in _RELU_LIKE:
        code = "keras_winit.HeNormal()"
    elif name == "leaky_relu":
        slope = 0.2 if param is None else param
        code = f"keras_winit.KaimingNormal(negative_slope={slope:g})"
    elif name == "selu":
        code = "keras_winit.LecunNormal()"
    elif name in ("tanh", "linear", "softmax", "softsign", "hard_tanh"):
        code = "keras_winit.GlorotUniform()"
    elif name == "sigmoid":
        code = "keras_winit.ActivationScaling('sigmoid', method='kumar')"
    elif g is not None:
        code = f"keras_winit.ActivationScaling({name!r})"
    else:
        code = "keras_winit.GlorotUniform()"
    return code, g


# ----------------------------------------------------------------------
# Command line: keras-winit diagnose MODEL.keras BATCH.npy [--labels Y.npy]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `keras-winit diagnose` arguments to an argparse parser."""
    parser.add_argument("model", help="saved model (.keras file)")
    parser.add_argument("batch", help="input batch (.npy file)")
    parser.add_argument(
        "--labels", default=None, help="targets for the batch (.npy file)"
    )
    parser.add_argument(
        "--fail-on-flags",
        action="store_true",
        help="exit with status 1 when a layer is flagged",
    )
    parser.add_argument(
        "--training",
        action="store_true",
        help="run layers in training mode (dropout, batch norm)",
    )
    parser.add_argument("--vanishing-threshold", type=float, default=0.1)
    parser.add_argument("--exploding-threshold", type=float, default=10.0)
    parser.add_argument("--saturation-threshold", type=float, default=0.1)
    parser.add_argument("--dead-threshold", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=0)


#: Exit status of `keras-winit diagnose`: done; layers flagged (with
#: `--fail-on-flags`); bad input (a file that cannot be read, a model that
#: cannot be loaded, a batch that does not fit, an invalid option).
EXIT_OK, EXIT_FLAGGED, EXIT_BAD_INPUT = 0, 1, 2


class _BadInput(Exception):
    pass


def _load_model(path):
    import zipfile

    import keras

    if not os.path.isfile(path):
        raise _BadInput(f"model file not found: {path}")
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        size = os.path.getsize(path)
        raise _BadInput(
            f"cannot load model {path}: not a .keras zip archive "
            f"({'empty' if size == 0 else 'truncated or corrupt'}, "
            f"{size} bytes)"
        )
    if path.endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            if "config.json" not in archive.namelist():
                raise _BadInput(
                    f"cannot load model {path}: the archive has no "
                    "config.json (not a Keras model file)"
                )
    try:
        return keras.saving.load_model(path)
    except Exception as e:  # any failure of the file's content
        lines = str(e).strip().splitlines()
        detail = lines[0] if lines else ""
        raise _BadInput(
            f"cannot load model {path}: {type(e).__name__}"
            + (f": {detail[:300]}" if detail else "")
        ) from e


def _load_array(path, what):
    if not os.path.isfile(path):
        raise _BadInput(f"{what} file not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":
        raise _BadInput(
            f"cannot read {what} {path}: not a .npy file (save it with "
            "numpy.save)"
        )
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:
        raise _BadInput(
            f"cannot read {what} {path}: {type(e).__name__}: {e}"
        ) from e


def run(args: argparse.Namespace) -> int:
    """Runs `keras-winit diagnose`; returns the exit status.

    0 when done (or when layers are flagged without `--fail-on-flags`), 1
    when layers are flagged (NaN/inf in the batch included) and
    `--fail-on-flags` is given, 2 on bad input: a file that cannot be read
    or loaded, a batch that does not fit the model, an invalid option. Each
    error is one line on stderr.
    """
    import keras_winit  # noqa: F401  (registers the initializers)

    try:
        model = _load_model(args.model)
        x = _load_array(args.batch, "batch")
        y = None
        if args.labels is not None:
            y = _load_array(args.labels, "labels")
        result = diagnose(
            model,
            x,
            y,
            training=args.training,
            vanishing_threshold=args.vanishing_threshold,
            exploding_threshold=args.exploding_threshold,
            saturation_threshold=args.saturation_threshold,
            dead_threshold=args.dead_threshold,
            seed=args.seed,
        )
    except (_BadInput, OSError, ValueError, TypeError, OverflowError) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"keras-winit diagnose: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(result.to_table())
    if result.flags and args.fail_on_flags:
        return EXIT_FLAGGED
    return EXIT_OK
