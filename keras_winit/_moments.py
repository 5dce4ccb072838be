"""Mean and variance of tensors in host memory, without copies.

`diagnose` and the walker reduce every signal of a forward and backward
pass (on ResNet50V2 at 64x64, batch 8: 65 million values). A copy of each
tensor to NumPy, in float64, cost more than the pass itself; eager
backend reductions cost more in dispatch than in arithmetic. On CPU the
tensors' own buffers are read through a NumPy view, once, in cache-sized
chunks.

Reference:
    - Chan, Golub & LeVeque, 1979, "Updating Formulae and a Pairwise
      Algorithm for Computing Sample Variances", Stanford CS-TR-79-773.
"""

import math

import keras
import numpy as np


def host_view(t):
    """A read-only NumPy view of a tensor in host memory, else `None`."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        t = tf.convert_to_tensor(t)  # a variable's current value
        if "CPU:" in t.device.rsplit("/", 1)[-1]:
            return np.asarray(t)
        return None
    if backend == "torch":
        if t.device.type == "cpu":
            return t.detach().numpy()
        return None
    if backend == "jax":
        if all(d.platform == "cpu" for d in t.devices()):
            return np.asarray(t)
        return None
    return None


# Chunks of a host tensor are reduced in a cache-sized buffer.
CHUNK = 1 << 16


def moments(v):
    """`(mean, var)` of a 1-D float array, reading it once.

    Each chunk is reduced with NumPy's pairwise sums in the array's
    precision, two passes over the chunk while it is in cache (no
    full-size temporary); the chunks are merged in float64 (Chan et al.,
    1979), so the result is as accurate as a two-pass variance.

    Examples:

    >>> v = np.array([1001.0, 999.0] * 100_000, "float32")  # 4 chunks
    >>> keras_winit._moments.moments(v)
    (1000.0, 1.0)
    """
    n = v.size
    if n == 0:
        return math.nan, math.nan  # measured by the NumPy fallback
    # Overflow and NaN give non-finite results, measured again by callers.
    with np.errstate(all="ignore"):
        return _chunked(v, n)


def _chunked(v, n):
    buffer = np.empty(min(n, CHUNK), v.dtype)
    count, mean, m2 = 0, 0.0, 0.0
    for start in range(0, n, CHUNK):
        chunk = v[start : start + CHUNK]
        k = chunk.size
        b = buffer[:k]
        chunk_mean = float(chunk.sum()) / k
        center = v.dtype.type(chunk_mean)
        np.subtract(chunk, center, out=b)
        np.square(b, out=b)
        # Sum of squares about `chunk_mean`, from the one about `center`.
        shift = chunk_mean - float(center)
        chunk_m2 = float(b.sum()) - k * shift * shift
        delta = chunk_mean - mean
        total = count + k
        mean += delta * k / total
        m2 += chunk_m2 + delta * delta * count * k / total
        count = total
    return mean, max(m2, 0.0) / n


def std(t):
    """Std of a tensor (float64 on a host copy when float32 cannot tell).

    The float32 two-pass result, unless the values are not finite or
    nearly constant (`var <= 1e-6 * mean**2`, where the round-off of the
    mean dominates): then NumPy's float64 std of a copy, exactly.
    Returns `None` for a tensor that has no concrete value (a tracer).
    """
    try:
        v = host_view(t)
    except Exception:  # a tracer, or not numeric
        return None
    if v is not None and v.dtype in (np.float32, np.float64):
        mean, var = moments(v.reshape(-1))
        if math.isfinite(var) and var > 1e-6 * mean * mean:
            return math.sqrt(var)
    try:
        value = np.asarray(keras.ops.convert_to_numpy(t), dtype=np.float64)
    except Exception:  # a tracer, or not numeric
        return None
    with np.errstate(all="ignore"):
        return float(value.std())
