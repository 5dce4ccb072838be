"""Gains: how much an activation changes the variance a layer should start at.

A gain is a multiplier of the standard deviation: an initializer with gain
`g` draws weights with `Var(w) = g**2 / fan`, i.e. a `VarianceScaling` with
`scale = g**2`. Three rules are offered, chosen with `method`:

- `"torch"`: PyTorch's `torch.nn.init.calculate_gain`, value for value
  (`tanh` 5/3, `relu` √2, `leaky_relu` √(2/(1+slope²)), `selu` 3/4,
  linear/convolution/sigmoid 1). Use it to match a PyTorch model.
- `"kumar"`: Kumar (2017). For an activation `g` differentiable at 0,
  `Var(w) = 1 / (N g'(0)² (1 + g(0)²))`, so the gain is
  `1 / (|g'(0)| sqrt(1 + g(0)²))`: `tanh` 1, `sigmoid` ≈ 3.58. For a kink
  at 0 with one-sided slopes `a` (left) and `b` (right), He et al.'s
  derivation gives `Var(w) = 2 / (N (a² + b²))`: ReLU √2, leaky ReLU
  √(2/(1+a²)).
- `"moment"`: the forward second-moment rule behind He et al. (2015):
  the pre-activation variance is preserved from layer to layer when
  `Var(w) = 1 / (N E[φ(z)²])` with `z ~ N(0, 1)`, so the gain is
  `1 / sqrt(E[φ(z)²])`. It is computed numerically for any activation —
  ReLU √2 and SELU 1 exactly, `tanh` ≈ 1.59, GELU, SiLU, ELU, softplus,
  mish…

References:
    - Glorot & Bengio, 2010, "Understanding the difficulty of training deep
      feedforward neural networks", AISTATS.
    - He et al., 2015, "Delving Deep into Rectifiers: Surpassing Human-Level
      Performance on ImageNet Classification", arXiv:1502.01852.
    - Kumar, 2017, "On weight initialization in deep neural networks",
      arXiv:1704.08863.
    - Klambauer et al., 2017, "Self-Normalizing Neural Networks" (SELU),
      arXiv:1706.02515.
"""

import contextlib
import functools
import importlib
import math

import numpy as np

from keras_winit import _checks

#: Methods understood by `gain`.
GAIN_METHODS = ("torch", "kumar", "moment")

# PyTorch's `calculate_gain` table (torch/nn/init.py). Names whose gain is 1.
_TORCH_UNIT_GAIN = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
)
#: The names PyTorch's `calculate_gain` knows (`gain(..., method="torch")`).
TORCH_NAMES = _TORCH_UNIT_GAIN + ("tanh", "relu", "leaky_relu", "selu")
# PyTorch's default negative slope when `param` is None.
_TORCH_DEFAULT_SLOPE = 0.01

# Keras activations whose second argument `param` sets, and its keyword.
_PARAMETRIZED = {
    "leaky_relu": "negative_slope",
    "elu": "alpha",
    "celu": "alpha",
}

# Composite Gauss-Legendre quadrature of the standard normal density on
# [-_Z_MAX, _Z_MAX], in panels of width _PANEL. Every multiple of 0.5 is a
# panel boundary, so the kinks of relu (0), hard_tanh (±1), hard_sigmoid
# (±3) and relu6 (6) do not spoil the convergence; the mass beyond ±12 is
# below 1e-32.
_Z_MAX = 12.0
_PANEL = 0.5
_NODES_PER_PANEL = 24


def truncated_normal_std(bound):
    """Std of a standard normal truncated to `[-bound, bound]`.

    `c(k)**2 = 1 - 2 k φ(k) / (2 Φ(k) - 1)`, with `φ`, `Φ` the standard
    normal pdf and cdf. A truncated normal whose underlying normal has std
    `σ` has std `σ · c(k)`; to hit a target std `s`, draw with `σ = s / c(k)`.

    Args:
        bound: Positive float `k`, the truncation bound in standard
            deviations of the underlying normal.

    Returns:
        A float in `(0, 1]` (1.0 once the mass beyond `±k` is below
        float64 precision, k ≳ 38).

    Example:

    >>> round(keras_winit.truncated_normal_std(2.0), 12)
    0.879625661034
    """
    k = _checks.positive_float("bound", bound)
    mass = math.erf(k / math.sqrt(2.0))  # 2 Φ(k) - 1
    pdf = math.exp(-0.5 * k * k) / math.sqrt(2.0 * math.pi)
    if k < 1e-3:
        # Nearly flat on [-k, k]: the uniform's std k/√3, avoiding the
        # cancellation in 1 - 2kφ/(2Φ-1) for tiny k.
        return k / math.sqrt(3.0) * math.sqrt(1.0 - k * k / 15.0)
    return math.sqrt(1.0 - 2.0 * k * pdf / mass)


def gain(activation, param=None, method="torch"):
    """Returns the recommended std multiplier for an activation.

    Multiply the std of a fan-scaled initializer by this gain (or use
    `scale = gain**2` in `VarianceScaling`) so that activations keep their
    variance from layer to layer.

    Args:
        activation: Name of a Keras activation (`"relu"`, `"gelu"`, …), or,
            for `method="kumar"`/`"moment"`, any callable activation. With
            `method="torch"`, one of PyTorch's `calculate_gain` names.
        param: Optional number, the activation's parameter: the negative
            slope of `"leaky_relu"` (defaults: 0.01 for `method="torch"`,
            as PyTorch; Keras' `leaky_relu` default 0.2 otherwise), the
            `alpha` of `"elu"`/`"celu"`.
        method: `"torch"`, `"kumar"` or `"moment"` (see the module
            docstring).

    Returns:
        A positive float.

    Examples:

    >>> keras_winit.gain("tanh")
    1.6666666666666667
    >>> round(keras_winit.gain("sigmoid", method="kumar"), 4)
    3.5777
    >>> round(keras_winit.gain("relu", method="moment"), 6)
    1.414214
    >>> round(keras_winit.gain("gelu", method="moment"), 4)
    1.5335

    References:
        - PyTorch `torch.nn.init.calculate_gain`.
        - Kumar, 2017, arXiv:1704.08863.
        - He et al., 2015, arXiv:1502.01852.
    """
    if method not in GAIN_METHODS:
        raise ValueError(
            f"Invalid `method` argument: {_checks._short(method)}. "
            f"Expected one of {GAIN_METHODS}."
        )
    if param is not None:
        _check_param(param)
        param = float(param)
    if method == "torch":
        g = _torch_gain(activation, param)
    else:
        # Resolve names to functions (and validate) before caching on them.
        key = activation if isinstance(activation, str) else None
        fn = _resolve_activation(activation, param)
        try:
            if method == "kumar":
                g = _kumar_gain_cached(key, param, fn)
            else:
                g = 1.0 / math.sqrt(_second_moment_cached(key, param, fn))
        except ValueError as error:
            if param is None:
                raise
            # A parameter out of any sensible range (e.g. alpha=1e300).
            raise ValueError(
                f"{error} Received: activation={_checks._short(activation)}, "
                f"param={_checks._short(param)}"
            ) from error
    if not (0 < g * g < math.inf):
        # e.g. leaky_relu with slope 1e300: the gain underflows to 0.
        raise ValueError(
            f"The gain of activation={_checks._short(activation)} with "
            f"param={_checks._short(param)} is {g!r}; its square (the "
            "variance scale) is not a positive finite float. Received: "
            f"param={_checks._short(param)}"
        )
    return g


def second_moment(activation, param=None):
    """Returns `E[φ(z)²]` for `z ~ N(0, 1)`, by quadrature.

    Args:
        activation: Name of a Keras activation or a callable.
        param: Optional activation parameter (see `gain`).

    Returns:
        A positive float.

    Example:

    >>> round(keras_winit.gains.second_moment("relu"), 12)
    0.5
    """
    if param is not None:
        _check_param(param)
        param = float(param)
    fn = _resolve_activation(activation, param)
    key = activation if isinstance(activation, str) else None
    return _second_moment_cached(key, param, fn)


def _torch_gain(activation, param):
    if not isinstance(activation, str) or activation not in TORCH_NAMES:
        raise ValueError(
            "Invalid `activation` argument for method='torch': "
            f"{_checks._short(activation)}. Expected one of {TORCH_NAMES}; use "
            "method='moment' or method='kumar' for any Keras activation."
        )
    if activation in _TORCH_UNIT_GAIN:
        return 1
    if activation == "tanh":
        return 5.0 / 3
    if activation == "relu":
        return math.sqrt(2.0)
    if activation == "leaky_relu":
        slope = _TORCH_DEFAULT_SLOPE if param is None else param
        return math.sqrt(2.0 / (1 + slope * slope))  # no OverflowError
    return 3.0 / 4  # selu


def _check_param(param):
    number = _checks._real(param)
    if number is None:
        raise ValueError(
            "Argument `param` (the activation's parameter, e.g. the negative "
            f"slope) must be a number. Received: param={_checks._short(param)}"
        )
    if not math.isfinite(number):
        raise ValueError(
            "Argument `param` must be finite. "
            f"Received: param={_checks._short(param)}"
        )


def _resolve_activation(activation, param):
    """Returns a NumPy float64 function for a Keras name or a callable."""
    import keras

    if isinstance(activation, str):
        try:
            fn = keras.activations.get(activation)
        except (ValueError, TypeError):
            # A function registered with register_keras_serializable,
            # by its "package>name".
            fn = keras.saving.get_registered_object(activation)
            fn = fn if callable(fn) else None
        if fn is None:
            raise ValueError(
                f"Unknown `activation`: {activation!r}. Expected the name of "
                "a Keras activation (see `keras.activations`) or a callable."
            )
        if param is not None:
            if activation not in _PARAMETRIZED:
                raise ValueError(
                    f"Activation {activation!r} takes no parameter. "
                    f"Received: param={param!r}. Parametrized activations: "
                    f"{sorted(_PARAMETRIZED)}."
                )
            fn = functools.partial(fn, **{_PARAMETRIZED[activation]: param})
    elif callable(activation):
        if param is not None:
            fn = functools.partial(activation, param)
        else:
            fn = activation
    else:
        raise ValueError(
            "Argument `activation` must be a string or a callable. "
            f"Received: activation={_checks._short(activation)}"
        )

    def numpy_fn(z):
        try:
            with _float64_enabled():
                out = fn(keras.ops.convert_to_tensor(z))
                out = keras.ops.convert_to_numpy(out)
        except Exception as error:  # backends raise different types
            # e.g. glu, which halves its last axis, on an odd-length input.
            raise ValueError(
                f"Activation {activation!r} cannot be evaluated elementwise "
                f"on a vector: {error}"
            ) from error
        out = np.asarray(out, dtype=np.float64)
        if out.shape != z.shape:
            raise ValueError(
                f"Activation {activation!r} is not elementwise: input shape "
                f"{z.shape} gave output shape {out.shape}."
            )
        return out

    return numpy_fn


def _float64_enabled():
    """A context in which the backend computes in float64.

    JAX computes in float32 unless `jax_enable_x64` is on (it is off by
    default): a float64 input is silently truncated, and the one-sided
    slopes of a smooth activation then differ by float32 rounding noise,
    so `method="kumar"` would take it for a kink (`sigmoid`: 4.0 instead
    of 3.5777). The activation is evaluated with 64-bit types enabled for
    the current thread only (`jax.enable_x64`, restored on exit, also
    after an exception). Other backends always have float64.
    """
    import keras

    if keras.backend.backend() != "jax":
        return contextlib.nullcontext()
    import jax

    enable_x64 = getattr(jax, "enable_x64", None)
    if enable_x64 is None:  # JAX before 0.4.36
        experimental = importlib.import_module("jax.experimental")
        enable_x64 = experimental.enable_x64
    return enable_x64(True)


@functools.cache
def _quadrature():
    nodes, weights = np.polynomial.legendre.leggauss(_NODES_PER_PANEL)
    edges = np.arange(-_Z_MAX, _Z_MAX + _PANEL / 2, _PANEL)
    half = _PANEL / 2.0
    mids = (edges[:-1] + edges[1:]) / 2.0
    z = (mids[:, None] + half * nodes[None, :]).ravel()
    w = np.tile(weights * half, len(mids))
    w = w * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return z, w


def _cached_by_name(compute):
    """Caches `compute(fn)` on activation names; callables are not cached."""
    cache = {}

    def wrapper(key, param, fn):
        if key is None:
            return compute(fn)
        if (key, param) not in cache:
            cache[(key, param)] = compute(fn)
        return cache[(key, param)]

    return wrapper


@_cached_by_name
def _second_moment_cached(fn):
    z, w = _quadrature()
    values = fn(z)
    with np.errstate(over="ignore"):  # an infinite moment is caught below
        squares = values * values
    if not np.all(np.isfinite(values)):
        raise ValueError(
            "The activation is not finite on the standard normal's support; "
            "its second moment is undefined."
        )
    with np.errstate(over="ignore", invalid="ignore"):
        moment = float(np.dot(w, squares))
    if not math.isfinite(moment):
        raise ValueError(
            "The activation's second moment on N(0, 1) overflows; no gain "
            "can be computed for it."
        )
    if moment <= 0:
        raise ValueError(
            "The activation is zero almost everywhere on N(0, 1); no gain "
            "can preserve the variance."
        )
    return moment


# Fourth-order one-sided difference: f'(0) = sum(c_i f(i h)) / (12 h).
_ONE_SIDED = np.array([-25.0, 48.0, -36.0, 16.0, -3.0]) / 12.0
_STEP = 1e-3


@_cached_by_name
def _kumar_gain_cached(fn):
    # One-sided slopes at 0, each exact to ~1e-12 where g is smooth on that
    # side; they differ at a kink (ReLU family) and agree otherwise (also
    # for ELU, whose second derivative jumps at 0).
    offsets = np.arange(5, dtype=np.float64) * _STEP
    values = fn(np.concatenate([offsets, -offsets]))
    g0 = float(values[0])
    right = float(np.dot(_ONE_SIDED, values[:5])) / _STEP
    left = -float(np.dot(_ONE_SIDED, values[5:])) / _STEP
    if abs(left - right) <= 1e-6 * max(1.0, abs(left), abs(right)):
        slope = (left + right) / 2.0
        # Below ~1e-7 the slope is rounding noise (tanh_shrink: x - tanh x
        # is O(x^3)), and a gain above 1e7 would be meaningless anyway.
        if abs(slope) < 1e-7:
            raise ValueError(
                "The activation has zero slope at 0; Kumar's rule "
                "Var(w) = 1 / (N g'(0)^2 (1 + g(0)^2)) is undefined."
            )
        return 1.0 / (abs(slope) * math.sqrt(1.0 + g0 * g0))
    # A kink at 0 (ReLU family): Var(w) = 2 / (N (a^2 + b^2)).
    return math.sqrt(2.0 / (left * left + right * right))
