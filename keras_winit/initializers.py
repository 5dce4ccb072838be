"""Variance-scaling initializers for Keras 3.

Every class here is a `keras.initializers.VarianceScaling` subclass (so
`EinsumDense` and `MultiHeadAttention` pass it the right `input_axes` and
`output_axes`), registered for serialization as `"keras_winit>ClassName"`.

What differs from Keras' built-ins, and why:

- **Seeds.** Keras 3 draws statelessly from an int seed, so one initializer
  instance shared by several layers gives them *identical* kernels (the
  symmetry problem). Here an int seed starts a reproducible *stream*: the
  n-th call of an instance draws from a seed derived from `(seed, n)`.
  A model built twice from the same code and seeds is identical, in any
  process; layers sharing one instance get different tensors; and
  `from_config(get_config())` is a fresh instance that repeats the original
  instance's draws from the first one. A `keras.random.SeedGenerator` seed
  behaves as in Keras; `seed=None` picks a random int at construction
  (reproducible after `keras.utils.set_random_seed`).
- **Truncated normal.** The std correction is exact for any truncation
  bound (`truncation`, in std of the underlying normal; 2 as in Keras), and
  the samples are drawn by inverse CDF from one uniform draw instead of by
  rejection.
- **More modes and explicit fans.** `mode="fan_geo_avg"` uses
  `sqrt(fan_in * fan_out)`; `fan_in`/`fan_out` override what the shape
  implies (see `keras_winit.fans` for the layout convention).
- **Clear errors.** Bad arguments raise a `ValueError` naming the argument
  and the value at construction; a non-float dtype or an unknown dimension
  raises at call time.

References:
    - Glorot & Bengio, 2010, "Understanding the difficulty of training deep
      feedforward neural networks", AISTATS.
    - LeCun et al., 1998, "Efficient BackProp".
    - He et al., 2015, "Delving Deep into Rectifiers", arXiv:1502.01852.
    - Kumar, 2017, "On weight initialization in deep neural networks",
      arXiv:1704.08863.
"""

import math
import numbers
import random
import sys

import keras
import ml_dtypes
import numpy as np

from keras_winit import _checks
from keras_winit import _seeds
from keras_winit import fans as fans_lib
from keras_winit import gains
from keras_winit import sampling

_PACKAGE = "keras_winit"
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
# Keras' spelling: "normal" means the truncated normal.
_DISTRIBUTION_ALIASES = {"normal": "truncated_normal"}


def _register(cls):
    return keras.saving.register_keras_serializable(package=_PACKAGE)(cls)


@_register
class VarianceScaling(keras.initializers.VarianceScaling):
    """Draws weights whose variance is `scale / fan`.

    With `mode="fan_in"` the fan is the number of input units of the weight,
    `"fan_out"` the number of output units, `"fan_avg"` their mean and
    `"fan_geo_avg"` their geometric mean `sqrt(fan_in * fan_out)`. The
    samples have standard deviation `s = sqrt(scale / fan)`:

    - `distribution="truncated_normal"` (or `"normal"`, as in Keras):
      `N(0, σ)` cut at `±truncation · σ`, where `σ = s / c(truncation)` and
      `c(k)` is the std of a unit normal truncated to `[-k, k]`
      (`c(2) = 0.87962566103423978`).
    - `distribution="untruncated_normal"`: `N(0, s)`.
    - `distribution="uniform"`: `U(-L, L)` with `L = sqrt(3) · s`.

    Seeds: with an int seed, the n-th call of an instance draws from a seed
    derived from `(seed, n)`, so a model is reproducible across processes,
    while layers that share one instance get different tensors. A fresh
    instance (e.g. `from_config(get_config())`) repeats the same sequence
    of draws. With a `keras.random.SeedGenerator`, each call advances the
    generator; with `None`, a random int seed is picked at construction.

    Examples:

    >>> # Standalone usage:
    >>> initializer = keras_winit.VarianceScaling(
    ...     scale=2.0, mode="fan_in", distribution="uniform", seed=1)
    >>> values = initializer(shape=(256, 128))
    >>> round(initializer.target_stddev((256, 128)), 6)
    0.088388

    >>> # Usage in a Keras layer:
    >>> layer = keras.layers.Dense(
    ...     3, kernel_initializer=keras_winit.VarianceScaling(
    ...         scale=1.0, mode="fan_geo_avg", truncation=3.0))

    Args:
        scale: Positive finite float, the variance numerator.
        mode: One of `"fan_in"`, `"fan_out"`, `"fan_avg"`, `"fan_geo_avg"`.
        distribution: One of `"truncated_normal"` (alias `"normal"`),
            `"untruncated_normal"`, `"uniform"`.
        seed: An int, a `keras.random.SeedGenerator`, or `None`.
        input_axes: Optional list of ints, the axes indexing input units
            (given together with `output_axes`; `EinsumDense` sets both).
        output_axes: Optional list of ints, the axes indexing output units.
        truncation: Positive float, where the truncated normal is cut, in
            standard deviations of the underlying normal. Default 2.
        fan_in: Optional positive int overriding the fan-in implied by the
            shape.
        fan_out: Optional positive int overriding the fan-out.

    Reference:
        - [Glorot & Bengio, 2010](
          https://proceedings.mlr.press/v9/glorot10a.html)
        - [He et al., 2015](https://arxiv.org/abs/1502.01852)
    """

    def __init__(
        self,
        scale=1.0,
        mode="fan_in",
        distribution="truncated_normal",
        seed=None,
        input_axes=None,
        output_axes=None,
        truncation=2.0,
        fan_in=None,
        fan_out=None,
    ):
        self.scale = _checks.positive_float("scale", scale)
        self.mode = _checks.choice("mode", mode, fans_lib.MODES)
        if isinstance(distribution, str):
            distribution = _DISTRIBUTION_ALIASES.get(
                distribution.lower(), distribution
            )
        self.distribution = _checks.choice(
            "distribution", distribution, sampling.DISTRIBUTIONS
        )
        self.truncation = _checks.positive_float("truncation", truncation)
        self.fan_in = _check_fan("fan_in", fan_in)
        self.fan_out = _check_fan("fan_out", fan_out)
        input_axes, output_axes = _check_axes(input_axes, output_axes)
        seed = _check_seed(seed)
        # Keras' VarianceScaling (and its RandomInitializer) with the values
        # checked above: it keeps `_init_seed` for the config and a concrete
        # `seed` for drawing. Its `mode` check predates "fan_geo_avg".
        super().__init__(
            scale=self.scale,
            mode="fan_avg" if self.mode == "fan_geo_avg" else self.mode,
            distribution=self.distribution,
            seed=seed,
            input_axes=input_axes,
            output_axes=output_axes,
        )
        self.mode = _checks.choice("mode", mode, fans_lib.MODES)
        # The seed as given, for `get_config` (Keras keeps the same value in
        # its private `_init_seed`; ours does not depend on it).
        self._init_seed = seed
        self._draws = 0

    def fans(self, shape):
        """Returns the `(fan_in, fan_out)` this initializer uses for `shape`.

        The overrides `fan_in`/`fan_out` win over what the shape implies.
        """
        shape = _checks.shape(shape)
        if (
            self._torch_fans is not None
            and len(shape) < 2
            and self.input_axes is None
            and not all(getattr(self, n) is not None for n in self._torch_fans)
        ):
            # torch.nn.init._calculate_fan_in_and_fan_out's error.
            raise ValueError(
                "Fan in and fan out can not be computed for tensor with "
                f"fewer than 2 dimensions. Received: shape={shape} (as "
                f"`torch.nn.init`; pass {' and '.join(self._torch_fans)} to "
                "set them, or use the Keras-named classes, which follow "
                "Keras' fans for such shapes)"
            )
        fan_in, fan_out = fans_lib.compute_fans(
            shape, self.input_axes, self.output_axes
        )
        if self.fan_in is not None:
            fan_in = self.fan_in
        if self.fan_out is not None:
            fan_out = self.fan_out
        return fan_in, fan_out

    def target_stddev(self, shape):
        """Returns the standard deviation of the values drawn for `shape`."""
        fan_in, fan_out = self.fans(shape)
        fan = fans_lib.fan_for_mode(self.mode, fan_in, fan_out)
        variance = self.scale / fan
        if variance < sys.float_info.min:
            # `scale / fan` underflows for tiny scales; two roots do not.
            return math.sqrt(self.scale) / math.sqrt(fan)
        return math.sqrt(variance)

    # Fans that PyTorch needs a rank >= 2 shape for (None: Keras' rule).
    _torch_fans = None

    def __call__(self, shape, dtype=None):
        shape = _checks.shape(shape)
        dtype = _check_dtype(dtype)
        sampling.check_size(shape, dtype)
        return sampling.sample(
            self.distribution,
            shape,
            self.target_stddev(shape),
            dtype,
            self._next_seed(),
            truncation=self.truncation,
        )

    def _next_seed(self):
        if isinstance(self.seed, keras.random.SeedGenerator):
            return self.seed
        seed = _seeds.mix(self.seed, self._draws)
        self._draws += 1
        return seed

    def _common_config(self):
        return {
            "seed": keras.saving.serialize_keras_object(self._init_seed),
            "input_axes": self.input_axes,
            "output_axes": self.output_axes,
            "fan_in": self.fan_in,
            "fan_out": self.fan_out,
        }

    def get_config(self):
        return {
            "scale": self.scale,
            "mode": self.mode,
            "distribution": self.distribution,
            "truncation": self.truncation,
            **self._common_config(),
        }


# The arguments every preset shares, for the generated docstrings.
_COMMON_ARGS = """\
        seed: An int, a `keras.random.SeedGenerator`, or `None`.
        input_axes: Optional list of ints, axes indexing input units.
        output_axes: Optional list of ints, axes indexing output units.
        fan_in: Optional positive int overriding the shape's fan-in.
        fan_out: Optional positive int overriding the shape's fan-out.\
"""


def _preset(name, scale, mode, distribution, summary, reference):
    """Builds a fixed-scale preset class (Glorot, He, LeCun)."""

    def __init__(
        self,
        seed=None,
        input_axes=None,
        output_axes=None,
        fan_in=None,
        fan_out=None,
    ):
        VarianceScaling.__init__(
            self,
            scale=scale,
            mode=mode,
            distribution=distribution,
            seed=seed,
            input_axes=input_axes,
            output_axes=output_axes,
            fan_in=fan_in,
            fan_out=fan_out,
        )

    def get_config(self):
        return self._common_config()

    std = {
        "fan_in": f"sqrt({scale:g} / fan_in)",
        "fan_avg": f"sqrt({2 * scale:g} / (fan_in + fan_out))",
    }[mode]
    if distribution == "uniform":
        draws = f"Draws from `U(-limit, limit)` with `limit = sqrt(3) * {std}`."
    else:
        draws = (
            "Draws from a normal truncated at two standard deviations of "
            f"the underlying normal, scaled so that the samples' std is "
            f"exactly `{std}`."
        )
    snake = "".join("_" + c.lower() if c.isupper() else c for c in name)[1:]
    cls = type(
        name,
        (VarianceScaling,),
        {
            "__init__": __init__,
            "get_config": get_config,
            "__module__": __name__,
            "__doc__": f"""{summary}

    {draws} Same scale, mode and distribution as
    `keras.initializers.{name}`; the seeding and the sampler are keras_winit's
    (see `keras_winit.VarianceScaling`).

    Examples:

    >>> # Standalone usage:
    >>> initializer = keras_winit.{name}(seed=0)
    >>> values = initializer(shape=(2, 2))

    >>> # Usage in a Keras layer:
    >>> layer = keras.layers.Dense(3, kernel_initializer="{snake}")

    Args:
{_COMMON_ARGS}

    Reference:
        - {reference}
    """,
        },
    )
    cls.__qualname__ = name
    return _register(cls)


_GLOROT = (
    "[Glorot & Bengio, 2010](https://proceedings.mlr.press/v9/glorot10a.html)"
)
_HE = "[He et al., 2015](https://arxiv.org/abs/1502.01852)"
_LECUN = "[LeCun et al., 1998](https://doi.org/10.1007/3-540-49430-8_2)"

GlorotNormal = _preset(
    "GlorotNormal",
    1.0,
    "fan_avg",
    "truncated_normal",
    "The Glorot (Xavier) normal initializer: `Var(w) = 2/(fan_in+fan_out)`.",
    _GLOROT,
)
GlorotUniform = _preset(
    "GlorotUniform",
    1.0,
    "fan_avg",
    "uniform",
    "The Glorot (Xavier) uniform initializer: `Var(w) = 2/(fan_in+fan_out)`.",
    _GLOROT,
)
HeNormal = _preset(
    "HeNormal",
    2.0,
    "fan_in",
    "truncated_normal",
    "The He (Kaiming) normal initializer: `Var(w) = 2 / fan_in`.",
    _HE,
)
HeUniform = _preset(
    "HeUniform",
    2.0,
    "fan_in",
    "uniform",
    "The He (Kaiming) uniform initializer: `Var(w) = 2 / fan_in`.",
    _HE,
)
LecunNormal = _preset(
    "LecunNormal",
    1.0,
    "fan_in",
    "truncated_normal",
    "The LeCun normal initializer: `Var(w) = 1 / fan_in`.",
    _LECUN,
)
LecunUniform = _preset(
    "LecunUniform",
    1.0,
    "fan_in",
    "uniform",
    "The LeCun uniform initializer: `Var(w) = 1 / fan_in`.",
    _LECUN,
)


class _GainScaling(VarianceScaling):
    """Base of the initializers whose scale is `gain(...)**2`."""

    def __init__(
        self,
        activation,
        param,
        method,
        mode,
        distribution,
        seed,
        input_axes,
        output_axes,
        fan_in,
        fan_out,
        truncation=2.0,
        param_name="param",
    ):
        if callable(activation) and not isinstance(activation, str):
            activation = _activation_name(activation)
        try:
            g = gains.gain(activation, param, method=method)
        except ValueError as error:
            if param_name == "param":
                raise
            raise ValueError(
                f"{error} (`{param_name}` is the activation's parameter.) "
                f"Received: {param_name}={_checks._short(param)}"
            ) from error
        self._activation_name = activation
        super().__init__(
            scale=g * g,
            mode=mode,
            distribution=distribution,
            seed=seed,
            input_axes=input_axes,
            output_axes=output_axes,
            truncation=truncation,
            fan_in=fan_in,
            fan_out=fan_out,
        )
        self.gain = g


@_register
class ActivationScaling(_GainScaling):
    """Scales the variance for the activation that follows the layer.

    `Var(w) = gain(activation, param, method)**2 / fan`, with the gain rules
    of `keras_winit.gain`: `"moment"` (default) keeps the pre-activation
    variance constant for any activation, `"kumar"` follows Kumar (2017),
    `"torch"` follows PyTorch's `calculate_gain`. The config keeps the
    activation's *name*, so a saved model says what it was initialized for.

    Examples:

    >>> # Standalone usage:
    >>> initializer = keras_winit.ActivationScaling("gelu", seed=0)
    >>> values = initializer(shape=(64, 64))
    >>> round(initializer.gain, 4)
    1.5335

    >>> # Usage in a Keras layer:
    >>> layer = keras.layers.Dense(
    ...     64, activation="sigmoid",
    ...     kernel_initializer=keras_winit.ActivationScaling(
    ...         "sigmoid", method="kumar"))

    Args:
        activation: Name of a Keras activation (or a registered activation
            function, saved by name).
        param: Optional activation parameter (negative slope of
            `"leaky_relu"`, `alpha` of `"elu"`).
        method: `"moment"`, `"kumar"` or `"torch"`.
        mode: One of `"fan_in"`, `"fan_out"`, `"fan_avg"`, `"fan_geo_avg"`.
        distribution: `"truncated_normal"`, `"untruncated_normal"` or
            `"uniform"`.
        seed: An int, a `keras.random.SeedGenerator`, or `None`.
        input_axes: Optional list of ints, axes indexing input units.
        output_axes: Optional list of ints, axes indexing output units.
        truncation: Truncation bound of the truncated normal. Default 2.
        fan_in: Optional positive int overriding the shape's fan-in.
        fan_out: Optional positive int overriding the shape's fan-out.

    Reference:
        - [Kumar, 2017](https://arxiv.org/abs/1704.08863)
        - [He et al., 2015](https://arxiv.org/abs/1502.01852)
    """

    def __init__(
        self,
        activation="relu",
        param=None,
        method="moment",
        mode="fan_in",
        distribution="truncated_normal",
        seed=None,
        input_axes=None,
        output_axes=None,
        truncation=2.0,
        fan_in=None,
        fan_out=None,
    ):
        super().__init__(
            activation,
            param,
            method,
            mode,
            distribution,
            seed,
            input_axes,
            output_axes,
            fan_in,
            fan_out,
            truncation=truncation,
        )
        self.activation = self._activation_name
        self.param = param
        self.method = method

    def get_config(self):
        return {
            "activation": self.activation,
            "param": self.param,
            "method": self.method,
            "mode": self.mode,
            "distribution": self.distribution,
            "truncation": self.truncation,
            **self._common_config(),
        }


def _kaiming(name, distribution, sampled):
    def __init__(
        self,
        negative_slope=0.0,
        mode="fan_in",
        nonlinearity="leaky_relu",
        seed=None,
        input_axes=None,
        output_axes=None,
        fan_in=None,
        fan_out=None,
    ):
        _checks.choice("mode", mode, ("fan_in", "fan_out"))
        negative_slope = _checks.finite_float("negative_slope", negative_slope)
        nonlinearity = _checks.choice(
            "nonlinearity", nonlinearity, gains.TORCH_NAMES
        )
        _GainScaling.__init__(
            self,
            nonlinearity,
            negative_slope,
            "torch",
            mode,
            distribution,
            seed,
            input_axes,
            output_axes,
            fan_in,
            fan_out,
            param_name="negative_slope",
        )
        self.negative_slope = negative_slope
        self.nonlinearity = nonlinearity
        self._torch_fans = (self.mode,)

    def get_config(self):
        return {
            "negative_slope": self.negative_slope,
            "mode": self.mode,
            "nonlinearity": self.nonlinearity,
            **self._common_config(),
        }

    snake = f"kaiming_{name[7:].lower()}"
    cls = type(
        name,
        (_GainScaling,),
        {
            "__init__": __init__,
            "get_config": get_config,
            "__module__": __name__,
            "__doc__": f"""The Kaiming (He) initializer, as PyTorch has it.

    Same arguments and values as `torch.nn.init.{snake}_`:
    {sampled} with `gain = calculate_gain(nonlinearity, negative_slope)`.
    With the defaults (`nonlinearity="leaky_relu"`, `negative_slope=0`) the
    gain is √2, i.e. `Var(w) = 2 / fan_in`. Unlike Keras' `He*`, the normal
    form is *untruncated*, as in PyTorch. The config keeps
    `nonlinearity`, not the resulting float.

    Examples:

    >>> # Standalone usage:
    >>> initializer = keras_winit.{name}(nonlinearity="relu", seed=0)
    >>> values = initializer(shape=(64, 32))

    >>> # Usage in a Keras layer, by its registered name:
    >>> layer = keras.layers.Dense(3, kernel_initializer="{snake}")

    Args:
        negative_slope: Negative slope of the leaky ReLU (PyTorch's `a`);
            used only with `nonlinearity="leaky_relu"`.
        mode: `"fan_in"` (preserves the forward variance) or `"fan_out"`
            (preserves the backward variance).
        nonlinearity: A PyTorch `calculate_gain` name: `"relu"`,
            `"leaky_relu"`, `"tanh"`, `"selu"`, `"sigmoid"`, `"linear"`, ...
{_COMMON_ARGS}

    Reference:
        - [He et al., 2015](https://arxiv.org/abs/1502.01852)
    """,
        },
    )
    cls.__qualname__ = name
    return _register(cls)


KaimingNormal = _kaiming(
    "KaimingNormal",
    "untruncated_normal",
    "draws from `N(0, gain / sqrt(fan))`",
)
KaimingUniform = _kaiming(
    "KaimingUniform",
    "uniform",
    "draws from `U(-b, b)`, `b = gain * sqrt(3 / fan)`,",
)


def _xavier(name, distribution, sampled):
    def __init__(
        self,
        gain=1.0,
        seed=None,
        input_axes=None,
        output_axes=None,
        fan_in=None,
        fan_out=None,
    ):
        g = _checks.positive_float("gain", gain)
        VarianceScaling.__init__(
            self,
            scale=g * g,
            mode="fan_avg",
            distribution=distribution,
            seed=seed,
            input_axes=input_axes,
            output_axes=output_axes,
            fan_in=fan_in,
            fan_out=fan_out,
        )
        self.gain = g
        self._torch_fans = ("fan_in", "fan_out")

    def get_config(self):
        return {"gain": self.gain, **self._common_config()}

    snake = f"xavier_{name[6:].lower()}"
    cls = type(
        name,
        (VarianceScaling,),
        {
            "__init__": __init__,
            "get_config": get_config,
            "__module__": __name__,
            "__doc__": f"""The Xavier (Glorot) initializer, as PyTorch has it.

    Same arguments and values as `torch.nn.init.{snake}_`: {sampled}.
    With `gain=1` the variance is `2 / (fan_in + fan_out)`, as Glorot &
    Bengio's normalized initialization.{
                " Unlike Keras' `GlorotNormal` (truncated), the "
                "distribution is an untruncated normal, as in PyTorch."
                if distribution == "untruncated_normal"
                else ""
            }

    Examples:

    >>> # Standalone usage:
    >>> initializer = keras_winit.{name}(gain=keras_winit.gain("tanh"))
    >>> values = initializer(shape=(64, 32))

    >>> # Usage in a Keras layer, by its registered name:
    >>> layer = keras.layers.Dense(3, kernel_initializer="{snake}")

    Args:
        gain: Positive float multiplying the standard deviation.
{_COMMON_ARGS}

    Reference:
        - {_GLOROT}
    """,
        },
    )
    cls.__qualname__ = name
    return _register(cls)


XavierNormal = _xavier(
    "XavierNormal",
    "untruncated_normal",
    "`N(0, gain * sqrt(2 / (fan_in + fan_out)))`",
)
XavierUniform = _xavier(
    "XavierUniform",
    "uniform",
    "`U(-b, b)` with `b = gain * sqrt(6 / (fan_in + fan_out))`",
)


@_register
class DeltaOrthogonal(keras.initializers.Initializer):
    """Delta-orthogonal convolution kernels (Xiao et al., 2018).

    For a kernel of shape `(*spatial, in_channels, out_channels)` (Conv1D,
    Conv2D, Conv3D; odd spatial sizes; `in_channels <= out_channels`), the
    centre tap is `gain · H`, where `H` is a random `(in, out)` matrix with
    orthonormal rows (`H Hᵀ = I`, drawn from the Haar measure by a QR
    decomposition with the signs of `R`'s diagonal fixed), and every other
    tap is zero. The convolution then starts as a norm-preserving map of
    the channels at each position (times `gain`), which is what lets
    vanilla tanh CNNs of thousands of layers train (dynamical isometry).

    Differences from `jax.nn.initializers.delta_orthogonal(scale)`: even
    spatial sizes are rejected (JAX puts the matrix at `(k - 1) // 2`,
    which is off-centre and shifts the feature map by half a pixel per
    layer); the layout is Keras' (`column_axis=-1` in JAX); the seeds
    follow keras_winit's stream rule (see `keras_winit.VarianceScaling`);
    `gain` must be positive and finite.

    Examples:

    >>> # Standalone usage:
    >>> initializer = keras_winit.DeltaOrthogonal(gain=1.0, seed=0)
    >>> kernel = keras.ops.convert_to_numpy(initializer((3, 3, 4, 8)))
    >>> centre = kernel[1, 1]
    >>> bool(np.allclose(centre @ centre.T, np.eye(4), atol=1e-5))
    True
    >>> # Only the centre tap is non-zero:
    >>> bool(np.count_nonzero(kernel) == np.count_nonzero(centre))
    True

    >>> # Usage in a Keras layer:
    >>> layer = keras.layers.Conv2D(
    ...     16, 3, padding="same", activation="tanh",
    ...     kernel_initializer=keras_winit.DeltaOrthogonal(seed=1))

    Args:
        gain: Positive finite float multiplying the orthogonal matrix.
        seed: An int, a `keras.random.SeedGenerator`, or `None`.

    Reference:
        - [Xiao et al., 2018, "Dynamical Isometry and a Mean Field Theory
          of CNNs: How to Train 10,000-Layer Vanilla Convolutional Neural
          Networks"](https://arxiv.org/abs/1806.05393)
    """

    def __init__(self, gain=1.0, seed=None):
        self.gain = _checks.positive_float("gain", gain)
        seed = _check_seed(seed)
        self._init_seed = seed
        if seed is None:
            # As Keras' RandomInitializer (python's `random`, which
            # `keras.utils.set_random_seed` seeds).
            seed = random.randint(1, 10**9)
        elif isinstance(seed, dict):
            seed = keras.saving.deserialize_keras_object(seed)
        self.seed = seed
        self._draws = 0

    _next_seed = VarianceScaling._next_seed

    def __call__(self, shape, dtype=None):
        shape = _checks.shape(shape)
        dtype = _check_dtype(dtype)
        if len(shape) not in (3, 4, 5):
            raise ValueError(
                "DeltaOrthogonal initializes Conv1D/2D/3D kernels, of rank 3, "
                "4 or 5 `(*spatial, in_channels, out_channels)`. "
                f"Received: shape={shape} of rank {len(shape)}."
            )
        *spatial, fan_in, fan_out = shape
        if any(k % 2 == 0 for k in spatial):
            raise ValueError(
                "DeltaOrthogonal needs odd spatial kernel sizes, so that the "
                "kernel has a centre tap. "
                f"Received: shape={shape}, spatial sizes {tuple(spatial)}."
            )
        if fan_in > fan_out:
            raise ValueError(
                "DeltaOrthogonal needs in_channels <= out_channels (shape[-2] "
                "<= shape[-1]), as in Xiao et al. (2018): only then is the "
                "centre tap an isometry, H Hᵀ = I. "
                f"Received: shape={shape}, in_channels={fan_in}, "
                f"out_channels={fan_out}."
            )
        sampling.check_size(shape, dtype)
        if fan_in:
            # The centre's entries have std gain/sqrt(out) and |.| <= gain.
            sampling.check_range(
                "uniform", shape, self.gain / math.sqrt(fan_out), dtype
            )
            if not self.gain <= float(ml_dtypes.finfo(dtype).max):
                raise ValueError(
                    f"The standard deviation of the centre tap for shape "
                    f"{shape} is too large for {dtype}: `gain`={self.gain!r} "
                    "would overflow to inf. Use a smaller `gain` or a wider "
                    "dtype."
                )
        seed = self._next_seed()
        if fan_in == 0:
            return keras.ops.zeros(shape, dtype=dtype)
        compute_dtype = "float64" if dtype == "float64" else "float32"
        a = keras.random.normal(
            (fan_out, fan_in), dtype=compute_dtype, seed=seed
        )
        q, r = keras.ops.qr(a)  # q: (out, in), orthonormal columns
        q = q * keras.ops.sign(keras.ops.diagonal(r))
        # (in, out), H Hᵀ = I; the gain as a tensor of the compute dtype
        # (torch would round a Python float to float32).
        gain = keras.ops.convert_to_tensor(np.asarray(self.gain, compute_dtype))
        centre = keras.ops.transpose(q) * gain
        centre = keras.ops.reshape(centre, (1,) * len(spatial) + centre.shape)
        pads = [(k // 2, k // 2) for k in spatial] + [(0, 0), (0, 0)]
        kernel = keras.ops.pad(centre, pads)
        return keras.ops.cast(kernel, dtype)

    def get_config(self):
        return {
            "gain": self.gain,
            "seed": keras.saving.serialize_keras_object(self._init_seed),
        }


#: Every variance-scaling initializer class keras_winit defines (any
#: weight shape).
ALL_INITIALIZERS = (
    VarianceScaling,
    GlorotNormal,
    GlorotUniform,
    HeNormal,
    HeUniform,
    LecunNormal,
    LecunUniform,
    XavierNormal,
    XavierUniform,
    KaimingNormal,
    KaimingUniform,
    ActivationScaling,
)

#: The initializers for convolution kernels only (rank 3 to 5).
CONV_INITIALIZERS = (DeltaOrthogonal,)

# Snake-case names users bring from PyTorch and the papers, resolvable with
# `keras.initializers.get(...)` and usable as `kernel_initializer="..."`.
ALIASES = {
    "xavier_normal": XavierNormal,
    "xavier_uniform": XavierUniform,
    "kaiming_normal": KaimingNormal,
    "kaiming_uniform": KaimingUniform,
    "delta_orthogonal": DeltaOrthogonal,
}


def register_aliases() -> None:
    """Makes the `ALIASES` names resolvable by `keras.initializers.get`."""
    custom_objects = keras.saving.get_custom_objects()
    for alias, cls in ALIASES.items():
        custom_objects.setdefault(alias, cls)


def _check_fan(name, value):
    if value is None:
        return None
    return _checks.positive_int(name, value)


def _check_axes(input_axes, output_axes):
    if (input_axes is None) != (output_axes is None):
        raise ValueError(
            "Arguments `input_axes` and `output_axes` must be given together. "
            f"Received: input_axes={_checks._short(input_axes)}, "
            f"output_axes={_checks._short(output_axes)}"
        )
    if input_axes is None:
        return None, None
    return (
        _checks.axes("input_axes", input_axes),
        _checks.axes("output_axes", output_axes),
    )


def _check_seed(seed):
    """Returns `seed` if Keras' RandomInitializer can use it; raises otherwise.

    Keras accepts `None`, an int, a `keras.random.SeedGenerator` or its
    serialized dict; a dict that does not deserialize to a generator (e.g.
    `{}`) would fail only at the first call, and a bool is not a seed.
    """
    if seed is None or isinstance(seed, keras.random.SeedGenerator):
        return seed
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return int(seed)
    if isinstance(seed, dict):
        try:
            revived = keras.saving.deserialize_keras_object(seed)
        except Exception:  # Keras raises several types for a bad config
            revived = None
        if isinstance(revived, keras.random.SeedGenerator):
            return seed
    raise ValueError(
        "`seed` argument should be an instance of "
        "`keras.random.SeedGenerator()` or an integer. "
        f"Received: seed={_checks._short(seed)}"
    )


def _activation_name(activation):
    """The name a callable activation is saved under; raises if it has none.

    Keras' own activations serialize to their name; a function registered
    with `keras.saving.register_keras_serializable` to its registered name
    (`"package>name"`), which `keras.saving.get_registered_object` resolves.
    """
    name = getattr(activation, "__name__", None)
    if isinstance(name, str):
        try:
            if keras.activations.get(name) is activation:
                return name
        except (ValueError, TypeError):
            pass
    registered = keras.saving.get_registered_name(activation)
    if keras.saving.get_registered_object(registered) is activation:
        return registered
    raise ValueError(
        "Argument `activation` must be the name of a Keras activation, or a "
        "registered activation function "
        "(`keras.saving.register_keras_serializable`), so the config can keep "
        f"it. Received: activation={_checks._short(activation)}"
    )


def _check_dtype(dtype):
    try:
        dtype = keras.backend.standardize_dtype(
            keras.backend.floatx() if dtype is None else dtype
        )
    except Exception as error:  # backends raise several types
        raise ValueError(
            f"Invalid `dtype` argument: {_checks._short(dtype)}. Expected "
            f"one of {_FLOAT_DTYPES}. Received: dtype={_checks._short(dtype)}"
        ) from error
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(
            "keras_winit initializers draw floating-point values only. "
            f"Expected one of {_FLOAT_DTYPES}. Received: dtype={dtype}"
        )
    return dtype
