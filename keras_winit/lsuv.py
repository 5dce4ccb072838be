"""Layer-sequential unit-variance (LSUV) initialization.

Mishkin & Matas (2015), "All you need is a good init": start every kernel
from an orthonormal matrix, then, layer by layer from the input, rescale
the kernel by the std of the layer's output on a batch until that output
has unit variance. A data-driven way to satisfy "keep the variance
constant across layers" for any architecture and activation.

Reference:
    - Mishkin & Matas, 2015, "All you need is a good init",
      arXiv:1511.06422.
"""

import dataclasses
import math
import warnings
from typing import Any

import keras
import numpy as np

from keras_winit import _checks
from keras_winit import _signal

# Fewest output values of one layer from which a variance is estimated
# (the std of a variance estimate from n Gaussian values is about
# sqrt(2 / n) of it: 35% for 16 values).
MIN_VALUES = 16


class LSUVWarning(UserWarning):
    """Warning raised when a layer does not reach unit variance."""


@dataclasses.dataclass
class LSUVLayer:
    """What LSUV did to one kernel layer.

    Attributes:
        name: The layer's Keras path.
        layer_type: Class name of the layer.
        initial_variance: Variance of the pre-activation after the
            orthonormal pre-initialization, before any rescaling.
        iterations: Number of rescalings `W <- W / sqrt(Var)` applied.
        variance: Variance of the pre-activation after the last rescaling.
        converged: Whether `|variance - 1| < tol`.
    """

    name: str
    layer_type: str
    initial_variance: float
    iterations: int
    variance: float
    converged: bool


@dataclasses.dataclass
class LSUVResult:
    """The result of `lsuv`: one `LSUVLayer` per kernel layer, in order.

    Attributes:
        layers: List of `LSUVLayer`.
        tol: The tolerance used.
        batch_size: Number of examples in the batch.
    """

    layers: list[LSUVLayer]
    tol: float
    batch_size: int

    @property
    def converged(self) -> bool:
        """Whether every layer reached `|Var - 1| < tol`."""
        return all(layer.converged for layer in self.layers)

    def to_table(self) -> str:
        """Returns the per-layer result as a plain-text table."""
        headers = [
            "#",
            "layer",
            "type",
            "initial var",
            "iterations",
            "final var",
            "converged",
        ]
        rows = [
            [
                i,
                layer.name,
                layer.layer_type,
                _signal.fmt(layer.initial_variance, ".4g"),
                layer.iterations,
                _signal.fmt(layer.variance, ".4f"),
                "yes" if layer.converged else "NO",
            ]
            for i, layer in enumerate(self.layers)
        ]
        align = [">", "<", "<", ">", ">", ">", "<"]
        footer = (
            f"LSUV on {self.batch_size} examples, tol={self.tol:g}: "
            f"{sum(r.converged for r in self.layers)}/{len(self.layers)} "
            "layers converged"
        )
        return _signal.format_table(headers, rows, align) + "\n" + footer

    def __str__(self):
        return self.to_table()


def lsuv(
    model: keras.Model,
    x: Any,
    tol: float = 0.02,
    max_iter: int = 20,
    *,
    seed: int | None = None,
    orthogonal: bool = True,
    zero_bias: bool = True,
    training: bool = False,
) -> LSUVResult:
    """Layer-sequential unit-variance initialization (Mishkin & Matas).

    For every kernel layer, in execution (topological) order:

    1. the kernel is drawn orthonormal (`keras.initializers.Orthogonal`;
       see below for the layout) and the bias is set to zero;
    2. on the batch `x`, with every earlier layer already done, while
       `|Var(z) - 1| >= tol` and fewer than `max_iter` rescalings were
       made: `W <- W / sqrt(Var(z))`.

    Measured quantity: `z` is the layer's output *before* its fused
    activation (for `Dense(..., activation="relu")`, the matmul output),
    the variance taken over all its values (batch, positions and units).
    This is the paper's choice (in Caffe the "layer output" is that of the
    convolution, before the separate ReLU layer), and the only one that can
    reach 1 for every activation (`Var(tanh(z)) < 1` always). With zero
    biases `z` is linear in `W`, so one rescaling usually suffices.

    Orthonormal layout. Keras' `Orthogonal` makes the matrix of the kernel
    flattened to `(all axes but the last, last axis)` orthonormal: that is
    `(prod(spatial) * in, out)` for `Dense`/`Conv*` and
    `(prod(spatial) * out, in)` for `Conv*Transpose` (orthogonal either
    way). Depthwise kernels `(*spatial, channels, multiplier)` get one
    orthonormal `(prod(spatial), multiplier)` matrix per channel.
    `EinsumDense` kernels are flattened to (contracted axes, other axes)
    from the equation. For `SeparableConv*`, both kernels are
    orthonormal and the pointwise kernel is the one rescaled.

    Supported layers: `Dense`, `EinsumDense`, `Conv1D/2D/3D`,
    `Conv1D/2D/3DTranspose`, `DepthwiseConv1D/2D`, `SeparableConv1D/2D`
    (and their subclasses). Layers without a kernel, and other layers with
    weights (e.g. `Embedding`, `LSTM`, `BatchNormalization`), are left as
    they are. A layer called several times is initialized on its first
    call. Models: any `keras.Model` (Sequential, Functional, Functional
    subclasses such as keras_hub backbones, subclassed models), walked by
    `keras_winit.walker`: kernel layers inside layers that call sublayers
    (transformer blocks, `MultiHeadAttention`'s query/key/value/output)
    are reached, in forward order; on the TensorFlow, JAX and PyTorch
    backends. Layers that do not reach
    `tol` are reported (and an `LSUVWarning` names them); the loop stops
    early when the variance is 0 or not finite.

    Examples:

    >>> from keras_winit.lsuv import lsuv
    >>> model = keras.Sequential([keras.Input((32,))] + [
    ...     keras.layers.Dense(64, activation="relu") for _ in range(3)])
    >>> x = np.random.default_rng(0).normal(size=(256, 32))
    >>> result = lsuv(model, x, seed=0)
    >>> result.converged, len(result.layers)
    (True, 3)
    >>> abs(result.layers[-1].variance - 1) < 0.02
    True

    Args:
        model: A built `keras.Model`; its weights are changed in place.
        x: A batch of inputs (array, or list/dict of arrays) of at least 2
            examples; every kernel layer's output must hold at least
            `MIN_VALUES` (16) values on it.
        tol: Positive float, the tolerance on `|Var - 1|`. Defaults to
            `0.02` (the paper's).
        max_iter: Non-negative int, the most rescalings per layer (`0`
            only pre-initializes and measures). Defaults to `20` (the
            paper's).
        seed: Int, `keras.random.SeedGenerator` or `None`, for the
            orthonormal draws. An int makes the result reproducible.
        orthogonal: If `False`, skip the orthonormal pre-initialization and
            rescale the kernels as they are.
        zero_bias: If `True` (default), set biases to zero first.
        training: Passed as `training` to the layers. Defaults to `False`.

    Returns:
        An `LSUVResult`: `.layers` (per-layer iterations, initial and final
        variance, converged), `.converged`, `.to_table()`.

    Reference:
        - [Mishkin & Matas, 2015](https://arxiv.org/abs/1511.06422)
    """
    _signal.check_backend("lsuv")
    _signal.check_model(model, "lsuv")
    _signal.check_number("tol", tol, 0, 1)
    _signal.check_number("max_iter", max_iter, -1, integer=True)
    for name, value in (
        ("orthogonal", orthogonal),
        ("zero_bias", zero_bias),
        ("training", training),
    ):
        _checks.boolean(name, value)
    if seed is not None and not isinstance(seed, keras.random.SeedGenerator):
        _signal.check_number("seed", seed, -1, integer=True)
    tensors, batch = _signal.to_tensors(x)
    if batch < 2:
        raise ValueError(
            "Argument `x` must hold at least 2 examples to estimate a "
            f"variance. Received: batch size {batch}"
        )
    if orthogonal and not isinstance(seed, keras.random.SeedGenerator):
        seed = keras.random.SeedGenerator(seed)
    done = set()
    results = []

    def leaf(layer, args, kwargs):
        kernel = _signal.kernel_variable(layer)
        if kernel is None or id(layer) in done:
            return layer(*args, **kwargs)
        done.add(id(layer))
        if orthogonal:
            _orthonormalize(layer, seed)
        if zero_bias and getattr(layer, "bias", None) is not None:
            layer.bias.assign(keras.ops.zeros_like(layer.bias.value))
        z, a = _signal.split_call(layer, args, kwargs)
        if z is None:
            z = a
        variance = _variance(z, layer)
        initial = variance
        iterations = 0
        while (
            abs(variance - 1.0) >= tol
            and iterations < max_iter
            and variance > 0
            and math.isfinite(variance)
        ):
            kernel.assign(kernel / math.sqrt(variance))
            iterations += 1
            z, a = _signal.split_call(layer, args, kwargs)
            if z is None:
                z = a
            variance = _variance(z, layer)
        results.append(
            LSUVLayer(
                name=_signal.layer_path(layer),
                layer_type=type(layer).__name__,
                initial_variance=initial,
                iterations=iterations,
                variance=variance,
                converged=abs(variance - 1.0) < tol,
            )
        )
        return a

    _signal.execute(model, tensors, leaf, training=training)
    result = LSUVResult(layers=results, tol=float(tol), batch_size=batch)
    failed = [r for r in results if not r.converged]
    if failed:
        warnings.warn(
            f"LSUV: {len(failed)} layer(s) did not reach |Var - 1| < {tol:g}"
            f" within max_iter={max_iter}: "
            + ", ".join(f"{r.name} (Var={r.variance:.4g})" for r in failed),
            LSUVWarning,
            stacklevel=2,
        )
    return result


def _variance(z, layer):
    values = np.asarray(keras.ops.convert_to_numpy(z), dtype=np.float64)
    if values.size < MIN_VALUES:
        raise ValueError(
            f"The batch is too small to estimate the output variance of "
            f"layer {_signal.layer_path(layer)!r}: its output holds "
            f"{values.size} values (shape {values.shape}), fewer than "
            f"{MIN_VALUES}. Pass more examples in `x`."
        )
    return float(values.var())


def _orthonormalize(layer, seed):
    if isinstance(
        layer, (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
    ):
        _assign(
            layer.depthwise_kernel, _depthwise(layer.depthwise_kernel, seed)
        )
        _assign(layer.pointwise_kernel, _draw(layer.pointwise_kernel, seed))
        return
    kernel = _signal.kernel_variable(layer)
    if isinstance(
        layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
    ):
        _assign(kernel, _depthwise(kernel, seed))
    elif isinstance(layer, keras.layers.EinsumDense):
        _assign(kernel, _einsum(layer, kernel, seed))
    else:
        _assign(kernel, _draw(kernel, seed))


def _assign(variable, value):
    variable.assign(keras.ops.cast(value, variable.dtype))


def _orthogonal(shape, seed):
    initializer = keras.initializers.Orthogonal(gain=1.0, seed=seed)
    return keras.ops.convert_to_numpy(initializer(shape, dtype="float32"))


def _draw(kernel, seed):
    return _orthogonal(tuple(kernel.shape), seed)


def _depthwise(kernel, seed):
    """One orthonormal (prod(spatial), multiplier) matrix per channel."""
    shape = tuple(kernel.shape)
    *spatial, channels, multiplier = shape
    rows = int(np.prod(spatial))
    mats = [_orthogonal((rows, multiplier), seed) for _ in range(channels)]
    value = np.stack(mats, axis=1)  # (rows, channels, multiplier)
    return value.reshape(shape)


def _einsum(layer, kernel, seed):
    """Orthonormal as a (contracted axes, other axes) matrix."""
    shape = tuple(kernel.shape)
    equation = layer.equation.replace(" ", "")
    lhs, out_spec = equation.split("->")
    in_spec, kernel_spec = lhs.split(",")
    kernel_spec = kernel_spec.replace("...", "")
    if len(kernel_spec) != len(shape):
        return _draw(kernel, seed)
    contracted = [
        i
        for i, c in enumerate(kernel_spec)
        if c in in_spec and c not in out_spec
    ]
    others = [i for i in range(len(shape)) if i not in contracted]
    if not contracted or not others:
        return _draw(kernel, seed)
    order = contracted + others
    rows = int(np.prod([shape[i] for i in contracted]))
    cols = int(np.prod([shape[i] for i in others]))
    value = _orthogonal((rows, cols), seed)
    value = value.reshape([shape[i] for i in order])
    return np.transpose(value, np.argsort(order))
