"""Samplers for the three variance-scaling distributions.

Only `keras.ops` and `keras.random` are used, so the samplers run on every
Keras backend. Each sampler draws with the *target* standard deviation of
the samples (not of an underlying distribution):

- `"uniform"`: `U(-L, L)` with `L = sqrt(3) · std`.
- `"untruncated_normal"`: `N(0, std)`.
- `"truncated_normal"`: `N(0, σ)` restricted to `[-kσ, kσ]`, with
  `σ = std / c(k)` so that the samples have std `std` (see
  `keras_winit.truncated_normal_std`). Drawn by inverse CDF: one uniform
  draw per value, `x = sqrt(2) σ erfinv(v)` with `v ~ U(-erf(k/√2),
  erf(k/√2))`. Unlike rejection sampling it never loops, and every value is
  inside the bound by construction (clipped against float rounding).

Half-precision outputs (`float16`, `bfloat16`) are drawn in float32 and
cast, so `erfinv` and the bound are computed at full precision.
"""

import math

import keras
import ml_dtypes  # noqa: F401  (registers bfloat16 with NumPy)
import numpy as np

from keras_winit.gains import truncated_normal_std

#: Distributions understood by `sample`.
DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform")

_HALF_PRECISION = ("float16", "bfloat16")


def sample(distribution, shape, stddev, dtype, seed, truncation=2.0):
    """Draws a tensor whose values have std `stddev`.

    Args:
        distribution: One of `DISTRIBUTIONS`.
        shape: Tuple of ints.
        stddev: Positive float, the std of the samples.
        dtype: A floating-point dtype name.
        seed: An int or a `keras.random.SeedGenerator`.
        truncation: Bound `k` of the truncated normal, in standard
            deviations of the underlying normal.

    Returns:
        A tensor of the given shape and dtype.
    """
    compute_dtype = "float32" if dtype in _HALF_PRECISION else dtype
    if distribution == "uniform":
        limit = math.sqrt(3.0) * stddev
        values = keras.random.uniform(
            shape, minval=-limit, maxval=limit, dtype=compute_dtype, seed=seed
        )
    elif distribution == "untruncated_normal":
        values = keras.random.normal(
            shape, mean=0.0, stddev=stddev, dtype=compute_dtype, seed=seed
        )
    elif distribution == "truncated_normal":
        values = _truncated_normal(
            shape, stddev, truncation, compute_dtype, seed
        )
    else:
        raise ValueError(
            f"Invalid `distribution` argument: {distribution!r}. "
            f"Expected one of {DISTRIBUTIONS}."
        )
    if compute_dtype != dtype:
        values = keras.ops.cast(values, dtype)
        if distribution != "untruncated_normal":
            # Rounding to half precision can step past the bound: clip to the
            # largest value of `dtype` that is inside it.
            limit = _inner_limit(
                math.sqrt(3.0) * stddev
                if distribution == "uniform"
                else truncation * stddev / truncated_normal_std(truncation),
                dtype,
            )
            values = keras.ops.clip(values, -limit, limit)
    return values


def _inner_limit(limit, dtype):
    """The largest value representable in `dtype` that is <= `limit`."""
    rounded = np.asarray(limit, dtype=np.float64).astype(dtype)
    if float(rounded) > limit:
        rounded = np.nextafter(rounded, np.zeros((), dtype=dtype))
    return float(rounded)


def _truncated_normal(shape, stddev, bound, dtype, seed):
    sigma = stddev / truncated_normal_std(bound)
    edge = math.erf(bound / math.sqrt(2.0))  # 2 Φ(k) - 1
    v = keras.random.uniform(
        shape, minval=-edge, maxval=edge, dtype=dtype, seed=seed
    )
    x = keras.ops.erfinv(v)
    x = keras.ops.multiply(x, math.sqrt(2.0) * sigma)
    limit = bound * sigma
    return keras.ops.clip(x, -limit, limit)
