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
  erf(k/√2))`. Unlike rejection sampling it never loops.

Every value stays inside its bound (`±L`, `±kσ`) exactly, in the output
dtype:

- The uniform's limits are rounded *down* to the compute dtype, and a
  uniform draw never leaves `[minval, maxval]`.
- For the truncated normal, the uniform's edge is `erf(k (1 - δ) / √2)`
  rounded down, with `δ = 2**-18` (float32) or `2**-40` (float64). With
  the TensorFlow backend and `0.25 <= k <= 2.5`, `erfinv` is accurate to
  `9.4e-7` relative in float32 (checked on every float32 of the edge's
  range) and `1.9e-15` in float64 (2e7 random points), far inside `δ`, so
  the product cannot round past `kσ` and no clip is needed. Elsewhere
  (other backends, other `k`) the values are clipped. Moving the edge
  by `δ` drops a mass below `1e-6`: the std correction stays exact to
  float32 precision.
- Half-precision outputs (`float16`, `bfloat16`) are drawn in float32 and
  clipped to the largest value of the output dtype inside the bound
  before the cast (round-to-nearest is monotone, so the cast cannot step
  past it).

Large draws are made in chunks of at most `2**20` values (at least 4
chunks above `2**17` values, 8 for half-precision outputs) and
concatenated: every intermediate (the
uniform's scaling, `erfinv`, the product, the cast) then works on a
cache-sized buffer instead of a fresh multi-megabyte one, which is faster
on CPU and keeps the peak memory near twice the output (the chunks plus
the concatenated result). With an int seed, chunk `i > 0` draws from a
seed derived from `(seed, i)`, so results depend only on the seed and the
shape.

Two backends take their own path to the same values' distribution:

- **PyTorch** draws each chunk in place into its slice of the output
  (`uniform_`, `erfinv_`, `mul_`, `clamp_`; no temporaries, no
  concatenation) on one intra-op thread (`single_cpu_thread`).
- **JAX** runs one jitted program per chunk, compiled once per
  power-of-two chunk size, distribution and dtype (not per variable
  shape), and one small program per shape that cuts, joins and reshapes
  the chunks.

Three helpers serve `initialize`, which writes every variable of a model
and reports each one's measured std:

- `draw_into(tensor)`: on PyTorch, the next `sample` of the tensor's
  shape and dtype draws straight into its storage (a variable's
  `torch.nn.Parameter`), with the same values: no copy of the model.
- `sample_std(values)`: the std of a tensor on its device, one pass of
  fast reductions on PyTorch.
- `recording_std()`: on JAX, the std of what `sample` draws, from sums
  computed by the program that assembles the draw: no program compiled
  per shape just to measure it.

Before anything is drawn, `sample` checks what it was asked for:

- **Size.** The output's bytes are compared with `max_output_bytes()` (the
  machine's physical memory unless `MAX_OUTPUT_BYTES` says otherwise); a
  larger request raises `OutputTooLargeError` (a `ValueError` and a
  `MemoryError`) naming the full shape and the bytes, at once: nothing
  is allocated first.
- **Range.** The standard deviation must be a normal number of the output
  dtype and the bound (`±L`, `±kσ`) must fit in it; otherwise the values
  would silently underflow to zeros or overflow to inf, and a
  `ValueError` names the std, the dtype and the shape instead.
- **Tiny and huge truncation bounds.** For `k` with `k²/2` below the
  compute dtype's epsilon, the truncated normal's density is flat on
  `[-kσ, kσ]` to that precision: it *is* the uniform with the same std,
  `U(±√3·std)` (inside `±kσ`), and is drawn as such (the inverse CDF of a
  tiny interval underflows in float32). Above `k = 40` the truncated
  normal is the normal to float64 precision, and `k` is treated as 40.
"""

import contextlib
import contextvars
import functools
import math
import os
from collections.abc import Iterator
from typing import Any

import keras
import ml_dtypes  # also registers bfloat16 with NumPy
import numpy as np

from keras_winit import _compat
from keras_winit import _seeds
from keras_winit.gains import truncated_normal_std

#: Distributions understood by `sample`.
DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform")

_HALF_PRECISION = ("float16", "bfloat16")
# Values per chunk of a large draw, and how finely a mid-sized draw is cut.
_CHUNK_MAX = 2**20
_CHUNK_MIN = 2**17
# A chunk's float32 intermediates take ~3 chunks: halve the chunks of a
# half-precision output so that they stay below its size.
_MIN_CHUNKS = {"full": 4, "half": 8}
# Relative shrink of the truncated normal's edge (see the module docstring).
_EDGE_MARGIN = {"float32": 2.0**-18, "float64": 2.0**-40}
# Above this truncation bound, erf(k/√2) == 1 in float64: the truncated
# normal is the untruncated one to the last bit.
_NO_TRUNCATION = 40.0
# Truncation bounds for which the backend's float32/float64 `erfinv` was
# checked to stay within `_EDGE_MARGIN`, so the clip can be skipped.
_UNCLIPPED_BOUNDS = {"tensorflow": (0.25, 2.5)}

#: Largest output, in bytes, that `sample` draws; `None` means the
#: machine's physical memory (see `max_output_bytes`).
MAX_OUTPUT_BYTES = None


class OutputTooLargeError(ValueError, MemoryError):
    """A requested tensor is larger than `max_output_bytes()`.

    Both a `ValueError` (the argument `shape` is unusable here) and a
    `MemoryError` (what NumPy and the backends raise for the same cause).
    """


def max_output_bytes() -> int:
    """Returns the largest output `sample` draws, in bytes.

    `MAX_OUTPUT_BYTES` if set, else the machine's physical memory (a draw
    needs up to about twice its output: the chunks and the concatenation),
    else `2**63 - 1`.
    """
    if MAX_OUTPUT_BYTES is not None:
        return int(MAX_OUTPUT_BYTES)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows)
        return 2**63 - 1


def check_size(shape: tuple[int, ...], dtype: str) -> None:
    """Raises `OutputTooLargeError` unless `shape` fits `max_output_bytes()`.

    Called before anything is allocated.

    Args:
        shape: Tuple of non-negative ints.
        dtype: A dtype name.
    """
    count = math.prod(shape)
    nbytes = count * np.dtype(dtype).itemsize
    limit = max_output_bytes()
    if nbytes > limit:
        raise OutputTooLargeError(
            f"Cannot draw a tensor of shape {tuple(shape)} and dtype {dtype}: "
            f"{count:,} values, {nbytes:,} bytes ({nbytes / 2**30:,.1f} GiB), "
            f"more than the limit of {limit:,} bytes "
            f"({limit / 2**30:,.1f} GiB, "
            + (
                "keras_winit.sampling.MAX_OUTPUT_BYTES"
                if MAX_OUTPUT_BYTES is not None
                else "this machine's physical memory"
            )
            + "). Nothing was allocated."
        )


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
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"Invalid `distribution` argument: {distribution!r}. "
            f"Expected one of {DISTRIBUTIONS}."
        )
    check_size(shape, dtype)
    count = math.prod(shape)
    if count:
        check_range(distribution, shape, stddev, dtype, truncation)
    sizes = _chunk_sizes(
        count,
        _MIN_CHUNKS["half" if dtype in _HALF_PRECISION else "full"],
        power_of_two=keras.backend.backend() == "jax",
    )
    seeds = _chunk_seeds(seed, len(sizes))
    if keras.backend.backend() == "torch":
        plan = _plan(distribution, stddev, dtype, truncation)
        return _sample_torch(
            plan, shape, dtype, sizes, seeds, _take_target(shape, dtype)
        )
    if keras.backend.backend() == "jax":
        plan = _plan(distribution, stddev, dtype, truncation)
        return _sample_jax(plan, shape, dtype, sizes, seeds)
    draw = _chunk_sampler(distribution, stddev, dtype, truncation)
    if len(sizes) == 1:
        flat = draw(sizes[0], seeds[0])
    else:
        parts = [draw(size, s) for size, s in zip(sizes, seeds, strict=True)]
        flat = keras.ops.concatenate(parts)
        del parts
    return keras.ops.reshape(flat, shape)


def _is_flat(truncation, compute_dtype):
    """Whether N(0,1) on [-k, k] is flat to the dtype's precision."""
    return truncation * truncation / 2.0 < float(np.finfo(compute_dtype).eps)


def _largest_bound(distribution, stddev, truncation, compute_dtype):
    """The largest magnitude the sampler computes with (≥ every value)."""
    if distribution == "untruncated_normal":
        return 10.0 * stddev  # beyond any normal draw in float32/float64
    if distribution == "uniform" or _is_flat(truncation, compute_dtype):
        return math.sqrt(3.0) * stddev
    k = min(truncation, _NO_TRUNCATION)
    sigma = stddev / truncated_normal_std(k)
    return max(k, math.sqrt(2.0)) * sigma


def check_range(
    distribution: str,
    shape: tuple[int, ...],
    stddev: float,
    dtype: str,
    truncation: float = 2.0,
) -> None:
    """Raises unless std and bound are normal, finite numbers of `dtype`.

    The values would otherwise silently underflow to zeros or overflow to
    inf. Called by `sample` before anything is drawn.

    Args:
        distribution: One of `DISTRIBUTIONS`.
        shape: The shape drawn (for the message).
        stddev: The std of the samples.
        dtype: The output dtype.
        truncation: Bound `k` of the truncated normal.
    """
    info = ml_dtypes.finfo(dtype)
    if not stddev >= float(info.tiny):
        raise ValueError(
            f"The standard deviation {stddev!r} of the values for shape "
            f"{tuple(shape)} is below the smallest normal {dtype} "
            f"({float(info.tiny):.4g}): the values would underflow to zero. "
            "Use a larger `scale` (or `gain`), smaller fans, or a wider dtype "
            "such as float64."
        )
    compute_dtype = "float32" if dtype in _HALF_PRECISION else dtype
    bound = _largest_bound(distribution, stddev, truncation, compute_dtype)
    if not 2.0 * bound <= float(info.max):
        raise ValueError(
            f"The standard deviation {stddev!r} of the values for shape "
            f"{tuple(shape)} is too large for {dtype} (largest "
            f"{float(info.max):.4g}): the values would overflow to inf. "
            "Use a smaller `scale` (or `gain`) or a wider dtype."
        )


def _plan(distribution, stddev, dtype, truncation):
    """What a draw computes: a dict of Python floats and flags.

    - `kind`: `"normal"` (`N(0, stddev)`), `"uniform"` (`U(-low, low)`) or
      `"inverse_cdf"` (`scale · erfinv(U(-low, low))`).
    - `compute_dtype`: the dtype drawn in (float32 for half precision).
    - `clip`: `None`, or the limit the values are clipped to (in the
      compute dtype) before the cast to `dtype`.
    """
    compute_dtype = "float32" if dtype in _HALF_PRECISION else dtype
    half = compute_dtype != dtype
    plan = {"compute_dtype": compute_dtype, "half": half, "clip": None}
    if distribution == "truncated_normal" and _is_flat(
        truncation, compute_dtype
    ):
        # Flat to the dtype's precision: the uniform with the same std,
        # whose bound √3·std lies inside ±kσ (c(k) <= k/√3).
        distribution = "uniform"
    truncation = min(truncation, _NO_TRUNCATION)

    if distribution == "untruncated_normal":
        return dict(plan, kind="normal", stddev=stddev)

    if distribution == "uniform":
        bound = math.sqrt(3.0) * stddev
        low = _inner_limit(bound, compute_dtype)
        clip = _inner_limit(bound, dtype) if half else None
        return dict(plan, kind="uniform", low=low, clip=clip)

    sigma = stddev / truncated_normal_std(truncation)
    bound = truncation * sigma
    shrunk = truncation * (1.0 - _EDGE_MARGIN[compute_dtype])
    edge = _inner_limit(math.erf(shrunk / math.sqrt(2.0)), compute_dtype)
    # Never ±1 (erfinv(±1) = ±inf): for large k, erf rounds to 1.
    edge = min(edge, float(np.nextafter(np.ones((), compute_dtype), 0)))
    lo, hi = _UNCLIPPED_BOUNDS.get(keras.backend.backend(), (1.0, 0.0))
    clip = half or not lo <= truncation <= hi
    return dict(
        plan,
        kind="inverse_cdf",
        low=edge,
        scale=math.sqrt(2.0) * sigma,
        clip=_inner_limit(bound, dtype) if clip else None,
    )


def _chunk_sampler(distribution, stddev, dtype, truncation):
    """Returns `draw(size, seed)`: `size` values, flat, in `dtype`."""
    plan = _plan(distribution, stddev, dtype, truncation)
    compute_dtype = plan["compute_dtype"]
    kind, limit = plan["kind"], plan["clip"]

    def draw(size, seed):
        if kind == "normal":
            x = keras.random.normal(
                (size,), stddev=plan["stddev"], dtype=compute_dtype, seed=seed
            )
        else:
            x = keras.random.uniform(
                (size,),
                -plan["low"],
                plan["low"],
                dtype=compute_dtype,
                seed=seed,
            )
        if kind == "inverse_cdf":
            x = keras.ops.erfinv(x)
            # Scalars as tensors of the compute dtype: the torch backend
            # turns a Python float into float32 (1e150 -> inf) before a
            # float64 op.
            x = keras.ops.multiply(x, _scalar(plan["scale"], compute_dtype))
        if limit is not None:
            x = keras.ops.clip(
                x,
                _scalar(-limit, compute_dtype),
                _scalar(limit, compute_dtype),
            )
        return keras.ops.cast(x, dtype) if plan["half"] else x

    return draw


def _sample_torch(plan, shape, dtype, sizes, seeds, target=None):
    """`sample` on PyTorch: in place, into the output, on one thread.

    Each chunk is drawn straight into its slice of the output (through a
    float32 buffer for half precision) with in-place ops: no temporary,
    no concatenation. The output is `target` when given (see
    `draw_into`), else a new tensor. On the CPU the draw runs on one
    intra-op thread: PyTorch splits `erfinv` across threads from a few
    thousand values on, and on a loaded machine every chunk then waits
    for the other threads (measured on 2 busy cores: 1M float32 `erfinv`
    2.9 ms on one thread, 15 ms on two). The generator behind
    `uniform_`/`normal_` is serial anyway. The thread count is restored
    on exit, also after an exception.
    """
    import torch

    device = _compat.torch_device()
    if target is not None:
        device = target.device
        out = target.detach().view(-1)
    else:
        out = torch.empty(
            sum(sizes), dtype=_compat.torch_dtype(dtype), device=device
        ).reshape(-1)
    compute_dtype = _compat.torch_dtype(plan["compute_dtype"])
    buffer = (
        torch.empty(max(sizes, default=0), dtype=compute_dtype, device=device)
        if plan["half"]
        else None
    )
    kind, limit = plan["kind"], plan["clip"]
    with torch.no_grad(), single_cpu_thread():
        start = 0
        for size, seed in zip(sizes, seeds, strict=True):
            part = out[start : start + size]
            x = part if buffer is None else buffer[:size]
            generator = _compat.torch_generator(seed)
            if kind == "normal":
                x.normal_(0.0, plan["stddev"], generator=generator)
            else:
                _fill_uniform(x, -plan["low"], plan["low"], generator)
            if kind == "inverse_cdf":
                x.erfinv_()
                x.mul_(plan["scale"])
            if limit is not None:
                x.clamp_(-limit, limit)
            if buffer is not None:
                part.copy_(x)
            start += size
    return out.reshape(shape) if target is None else target


def _sample_jax(plan, shape, dtype, sizes, seeds):
    """`sample` on JAX: compiled per power-of-two chunk size, not per shape.

    Each chunk runs one jitted program (the uniform or normal draw, the
    inverse CDF, the clip and the cast, fused by XLA) for the next power
    of two at or above its size (at least `2**_JAX_MIN_LOG2`), and is
    then cut to size. Eager JAX compiles every op once per shape: the
    first `initialize` of a model with many variable shapes spent most
    of its time compiling (MobileNetV2: ~50 shapes). The std, bounds and
    scale are arguments, not constants, so one program serves every
    variable with the same padded size, distribution and dtype. Cutting,
    joining and reshaping the chunks is one small program per shape.
    """
    kind, compute_dtype = plan["kind"], plan["compute_dtype"]
    args = [
        np.asarray(plan.get(name) or 0.0, dtype=compute_dtype)
        for name in ("low", "scale", "clip", "stddev")
    ]
    parts = []
    for size, seed in zip(sizes, seeds, strict=True):
        padded = 1 << max(_JAX_MIN_LOG2, (size - 1).bit_length())
        fn = _jax_chunk_fn(
            padded, kind, compute_dtype, dtype, plan["clip"] is not None
        )
        parts.append(fn(_compat.jax_key(seed), *args))
    values, moments = _jax_assemble_fn(tuple(sizes), tuple(shape))(*parts)
    record = _RECORD.get()
    if record is not None:
        record.add(values, moments, sum(sizes))
    return values


# Smallest chunk JAX draws (padded): 256 values.
_JAX_MIN_LOG2 = 8


@functools.cache
def _jax_chunk_fn(size, kind, compute_dtype, dtype, clip):
    """A jitted `fn(key, low, scale, limit, stddev)` drawing `size` values."""
    import jax

    def fn(key, low, scale, limit, stddev):
        if kind == "normal":
            x = keras.random.normal(
                (size,), stddev=stddev, dtype=compute_dtype, seed=key
            )
        else:
            x = keras.random.uniform(
                (size,), -low, low, dtype=compute_dtype, seed=key
            )
        if kind == "inverse_cdf":
            x = keras.ops.multiply(keras.ops.erfinv(x), scale)
        if clip:
            x = keras.ops.clip(x, -limit, limit)
        return keras.ops.cast(x, dtype)

    return jax.jit(fn)


@functools.cache
def _jax_assemble_fn(sizes, shape):
    """A jitted `fn(*chunks)`: the chunks cut to `sizes`, joined, reshaped.

    One small program per shape instead of an eager slice, concatenation
    and reshape, each compiled on its own. It also returns the sum and the
    sum of squares of the values (in float32, float64 for float64 values)
    for `recording_std`: measuring them here costs no compilation of its
    own. The values are not changed by it (no arithmetic touches them).
    """
    import jax
    import jax.numpy as jnp

    def fn(*parts):
        cut = [part[:size] for part, size in zip(parts, sizes, strict=True)]
        flat = cut[0] if len(cut) == 1 else keras.ops.concatenate(cut)
        wide = flat.dtype == jnp.float64
        x = flat.astype(jnp.float64 if wide else jnp.float32)
        moments = jnp.stack([jnp.sum(x), jnp.sum(x * x)])
        return keras.ops.reshape(flat, shape), moments

    return jax.jit(fn)


# The `_DrawRecord` of the enclosing `recording_std`, if any.
_RECORD: contextvars.ContextVar["_DrawRecord | None"] = contextvars.ContextVar(
    "keras_winit_sampling_record", default=None
)


class _DrawRecord:
    """What `sample` drew inside `recording_std`: `std(values)` from it."""

    def __init__(self):
        self._draws = []

    def add(self, values, moments, count):
        self._draws.append((values, moments, count))

    def std(self, values):
        """The std of `values` if `sample` drew them here, else None.

        From the sums measured with the draw (`var = Σx²/n - mean²`);
        None also where that would lose precision (`mean² > var`; never
        for a fresh draw, whose mean is near 0).
        """
        for drawn, moments, count in reversed(self._draws):
            if drawn is values:
                total, squares = (
                    float(m) for m in keras.ops.convert_to_numpy(moments)
                )
                mean = total / count
                var = squares / count - mean * mean
                if mean * mean > var or not math.isfinite(var):
                    return None
                return math.sqrt(var)
        return None


@contextlib.contextmanager
def recording_std() -> Iterator["_DrawRecord"]:
    """Lets `sample` measure the std of what it draws in the block.

    Yields a record whose `std(values)` is the std of `values` if they are
    a tensor that `sample` returned inside the block (the same object),
    else None. On JAX the sums it needs are computed by the program that
    assembles the draw, which is compiled anyway; a separate std would
    compile a program per shape (`initialize` on GPT-2: about half of its
    first call). Other backends record nothing (`sample_std` measures
    there without compiling). The record is dropped on exit, also after
    an exception.

    Example:

    >>> with keras_winit.sampling.recording_std() as record:
    ...     x = keras_winit.sampling.sample(
    ...         "uniform", (64, 64), 0.1, "float32", seed=0)
    >>> std = record.std(x)
    >>> std is None or abs(std - 0.1) < 0.005  # None off JAX
    True
    """
    record = _DrawRecord()
    token = _RECORD.set(record)
    try:
        yield record
    finally:
        _RECORD.reset(token)


def _fill_uniform(x, low, high, generator):
    """Fills the torch tensor `x` with `U(low, high)`, in place."""
    x.uniform_(low, high, generator=generator)


@contextlib.contextmanager
def single_cpu_thread():
    """Runs the block on one PyTorch intra-op thread on the CPU.

    A no-op on other backends and devices, or where PyTorch already uses
    one thread. The previous thread count is restored on exit, also after
    an exception. PyTorch splits elementwise ops and reductions (`erfinv`,
    `std`, `copy_`) across its threads; on a busy machine each op then
    waits for every thread to be scheduled. Measured on 2 busy cores
    (`benchmarks/initializers.py --sampler`): 1M float32 `erfinv` 2.9 ms
    on one thread, 15 ms on two; `initialize` on GPT-2 124M 2.1 s with
    the default threads, 0.67 s inside this context.

    Example:

    >>> with keras_winit.sampling.single_cpu_thread():
    ...     x = keras_winit.sampling.sample(
    ...         "truncated_normal", (4, 4), 0.1, "float32", seed=0
    ...     )
    >>> tuple(x.shape)
    (4, 4)
    """
    if keras.backend.backend() != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    if not str(_compat.torch_device()).startswith("cpu") or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# The tensor `draw_into` hands to the next matching `sample` (PyTorch).
_TARGET: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "keras_winit_sampling_target", default=None
)


@contextlib.contextmanager
def draw_into(target: Any) -> Iterator[None]:
    """Lets the next matching `sample` write into `target` (PyTorch only).

    Inside the block, the first `sample` call whose shape and dtype are
    `target`'s draws its values straight into `target`'s storage and
    returns `target` itself, instead of a new tensor that would then be
    copied into it (e.g. by `variable.assign`): `initialize` draws a
    variable's values into its `torch.nn.Parameter`, and saves a copy of
    the whole model. The values are bit-identical to those of a plain
    `sample` call. Later calls, and calls of another shape or dtype, draw
    as usual. A no-op on other backends (their arrays are immutable or
    assigned by Keras), for a tensor that is not contiguous or not on
    Keras' device, and inside `torch.compile`/meta-device tracing. The
    target is forgotten on exit, also after an exception.

    Args:
        target: A tensor (on PyTorch, a `torch.Tensor` or
            `torch.nn.Parameter`, written in place without autograd).

    Example:

    >>> if keras.backend.backend() == "torch":
    ...     import torch
    ...     out = torch.empty(4, 4)
    ...     with keras_winit.sampling.draw_into(out):
    ...         x = keras_winit.sampling.sample(
    ...             "uniform", (4, 4), 0.1, "float32", seed=0)
    ...     assert x is out
    """
    token = _TARGET.set([target])
    try:
        yield
    finally:
        _TARGET.reset(token)


def _take_target(shape, dtype):
    """The `draw_into` target if it fits `shape` and `dtype`, once."""
    slot = _TARGET.get()
    if not slot:
        return None
    import torch

    target = slot[0]
    if (
        not isinstance(target, torch.Tensor)
        or tuple(target.shape) != tuple(shape)
        or target.dtype != _compat.torch_dtype(dtype)
        or not target.is_contiguous()
        or target.is_meta
        or target.device != torch.empty(0, device=_compat.torch_device()).device
    ):
        return None
    slot.clear()  # used once
    return target


# Values per row of `sample_std`'s partial sums on PyTorch: float32 sums of
# 1024 values are exact to ~1e-7, and their float64 total to ~1e-9 over
# GPT-2's 38.6M-value token table (a single float32 dot product of it
# is off by 2e-4).
_STD_ROW = 1024
# Values per slice of `sample_std`: half-precision tensors are converted to
# float32 a slice at a time, and the centered pass makes its temporaries
# slice by slice (16 MB in float32).
_STD_SLICE = 1 << 22


def sample_std(values: Any) -> float:
    """The standard deviation of a tensor, computed on its device.

    Population std (`ddof=0`) of every value, in float64 arithmetic on
    float32 partial sums (float64 for float64 tensors), returned as a
    Python float; only scalars come to the host.

    - **PyTorch**: one pass of two fast reductions, row sums and row
      Euclidean norms over rows of 1024 values, totalled in float64:
      `var = Σx²/n - mean²`. Where cancellation could cost precision
      (`mean² > var`), a constant tensor gives 0 and any other a second
      pass, centered on the mean rounded to the tensor's precision. The
      reductions run on one intra-op thread (`single_cpu_thread`,
      restored right after): a reduction split over the threads of a busy
      CPU waits for each of them, and these are memory-bound. Measured
      against NumPy in float64: relative error below 1e-7.
    - **JAX**: `jnp.std` in float32 (float64 for float64 tensors) in
      one jitted program per shape (XLA fuses it: no temporary). Values
      drawn inside `recording_std` are measured with the draw instead.
    - **TensorFlow and JAX**: a constant tensor (minimum = maximum) gives
      exactly 0 (on TensorFlow checked only where the std is below
      `2**-16` of the first value, i.e. could be round-off).
    - **TensorFlow**: `keras.ops.std` in float32 (float64 for float64
      tensors); tensors over 4M values are reduced slice by slice along
      their first axis in two passes (the mean, then the squared
      deviations), each slice's sum brought to the host as one float, so
      that no temporary of the whole tensor is made.

    Deviations below about `1e-19` (float32; `1e-154` in float64) have
    squares under the dtype's smallest normal number and lose precision
    (JAX's CPU backend flushes them to zero); such weights do not occur
    in practice.

    Args:
        values: A tensor of any shape and floating-point dtype.

    Returns:
        A float; 0.0 for an empty tensor.

    Example:

    >>> x = keras.ops.convert_to_tensor([[1.0, 2.0], [3.0, 4.0]])
    >>> round(keras_winit.sampling.sample_std(x), 6)  # sqrt(1.25)
    1.118034
    """
    return _sample_std(values, _STD_SLICE)


def _sample_std(values, slice_size):
    """`sample_std` in slices of `slice_size` values."""
    size = math.prod(values.shape)
    if not size:
        return 0.0
    if keras.backend.backend() == "torch":
        return _std_torch(values, slice_size)
    if keras.backend.backend() == "jax":
        return float(_jax_std_fn()(values))
    return _std_generic(values, slice_size)


@functools.cache
def _jax_std_fn():
    """A jitted std (float32, float64 for float64): one program per shape.

    XLA fuses the centering and squaring into the reductions, so no
    temporary of the tensor is made; eager slices would each compile.
    """
    import jax
    import jax.numpy as jnp

    def fn(x):
        wide = x.dtype == jnp.float64
        x = x.astype(jnp.float64 if wide else jnp.float32)
        # A constant's std is 0, not the round-off of its float32 mean.
        return jnp.where(jnp.min(x) == jnp.max(x), 0.0, jnp.std(x))

    return jax.jit(fn)


def _std_torch(values, slice_size):
    """`sample_std` on PyTorch."""
    import torch

    flat = values.detach().reshape(-1)
    wide = flat.dtype == torch.float64
    acc = torch.float64 if wide else torch.float32
    slices = [
        flat[a : a + slice_size] for a in range(0, flat.numel(), slice_size)
    ]

    def rows(chunk):
        chunk = chunk.to(acc)
        bulk = (chunk.numel() // _STD_ROW) * _STD_ROW
        parts = [chunk[:bulk].view(-1, _STD_ROW)] if bulk else []
        if bulk < chunk.numel():
            parts.append(chunk[bulk:].view(1, -1))
        return parts

    def totals(shift):
        sums, squares = [], []
        for chunk in slices:
            for part in rows(chunk):
                if shift is not None:
                    part = part - shift
                sums.append(torch.sum(part, dim=1).double().sum())
                squares.append(
                    torch.linalg.vector_norm(part, dim=1)
                    .double()
                    .square()
                    .sum()
                )
        return torch.stack(sums + squares).tolist()

    n = flat.numel()
    with torch.no_grad(), single_cpu_thread():
        parts = totals(None)
        half = len(parts) // 2
        mean = math.fsum(parts[:half]) / n
        var = math.fsum(parts[half:]) / n - mean * mean
        if mean * mean > var:
            # Σx²/n and mean² nearly cancel: 0 for a constant, else the
            # centered pass.
            low, high = torch.aminmax(flat)
            if bool(low == high):
                return 0.0
            shift = torch.tensor(mean, dtype=acc, device=flat.device)
            parts = totals(shift)
            residual = math.fsum(parts[:half]) / n
            var = math.fsum(parts[half:]) / n - residual * residual
    return math.sqrt(max(var, 0.0))


def _std_generic(values, slice_size):
    """`sample_std` with `keras.ops` (TensorFlow)."""
    std = _std_two_pass(values, slice_size)
    if std and std <= _ROUND_OFF * abs(_first_value(values)):
        # Near the round-off of the float32 mean: is it a constant, whose
        # std is 0? (Checked only here: min and max cost two passes.)
        if bool(keras.ops.min(values) == keras.ops.max(values)):
            return 0.0
    return std


# A std below this fraction of a tensor's values may be round-off.
_ROUND_OFF = 2.0**-16


def _first_value(values):
    """The tensor's first value, a float."""
    first = keras.ops.reshape(values, (-1,))[:1]
    return float(
        keras.ops.convert_to_numpy(keras.ops.cast(first, "float32"))[0]
    )


def _std_two_pass(values, slice_size):
    """Mean, then mean squared deviation, in slices of large tensors."""
    dtype = keras.backend.standardize_dtype(values.dtype)
    dtype = "float64" if dtype == "float64" else "float32"
    size = math.prod(values.shape)
    if size <= slice_size or len(values.shape) == 0:
        std = keras.ops.std(keras.ops.cast(values, dtype))
        return float(keras.ops.convert_to_numpy(std))
    rows = int(values.shape[0])
    step = max(1, slice_size // (size // rows))
    slices = [
        (start, min(start + step, rows)) for start in range(0, rows, step)
    ]

    def total(fn):
        return math.fsum(
            float(
                keras.ops.convert_to_numpy(
                    keras.ops.sum(fn(keras.ops.cast(values[a:b], dtype)))
                )
            )
            for a, b in slices
        )

    mean = total(lambda chunk: chunk) / size
    square = total(lambda chunk: keras.ops.square(chunk - mean))
    return math.sqrt(square / size)


def _chunk_sizes(n, min_chunks=_MIN_CHUNKS["half"], power_of_two=False):
    """Sizes of the chunks a draw of `n` values is made of.

    With `power_of_two`, every chunk but the last is a power of two (JAX
    pads each chunk to one: only the last one is then padded).
    """
    if n <= _CHUNK_MIN:
        return [n]
    size = min(_CHUNK_MAX, max(_CHUNK_MIN, -(-n // min_chunks)))
    if power_of_two:
        size = 1 << (size.bit_length() - 1)
    count = -(-n // size)
    return [size] * (count - 1) + [n - size * (count - 1)]


def _chunk_seeds(seed, count):
    """One seed per chunk: chunk 0 keeps an int seed, the others mix it."""
    if isinstance(seed, int) and not isinstance(seed, bool):
        return [seed] + [_seeds.mix(seed, i) for i in range(1, count)]
    # A SeedGenerator advances on every draw; None uses Keras' global one.
    return [seed] * count


def _scalar(value, dtype):
    """`value` as a 0-d tensor of `dtype`."""
    return keras.ops.convert_to_tensor(np.asarray(value, dtype=dtype))


def _inner_limit(limit, dtype):
    """The largest value representable in `dtype` that is <= `limit`."""
    rounded = np.asarray(limit, dtype=np.float64).astype(dtype)
    if float(rounded) > limit:
        rounded = np.nextafter(rounded, np.zeros((), dtype=dtype))
    return float(rounded)
