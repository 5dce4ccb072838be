"""Tests of keras_winit.sampling: chunked draws, seeds and exact bounds."""

import math

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from scipy import stats

import keras_winit
from keras_winit import sampling
from keras_winit.gains import truncated_normal_std

DTYPES = ["float32", "float16", "bfloat16", "float64"]
# Three chunks of 2**17 values: the chunked path.
CHUNKED_SHAPE = (3, 2**17)
STD = 0.05


def target(distribution, std, k=2.0):
    if distribution == "uniform":
        limit = math.sqrt(3) * std
        return stats.uniform(loc=-limit, scale=2 * limit)
    if distribution == "untruncated_normal":
        return stats.norm(scale=std)
    sigma = std / stats.truncnorm(-k, k).std()
    return stats.truncnorm(-k, k, scale=sigma)


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(x, "float64")))


@pytest.mark.parametrize(
    "n", [0, 1, 2**17, 2**17 + 1, 3 * 3 * 512 * 512, 2**24 + 5]
)
@pytest.mark.parametrize("min_chunks", [4, 8])
@pytest.mark.parametrize("power_of_two", [False, True])
def test_chunk_sizes(n, min_chunks, power_of_two):
    sizes = sampling._chunk_sizes(n, min_chunks, power_of_two)
    if power_of_two:
        assert all(s & (s - 1) == 0 for s in sizes[:-1])
    assert sum(sizes) == n
    assert all(0 < s <= sampling._CHUNK_MAX for s in sizes) or n == 0
    if n <= sampling._CHUNK_MIN:
        assert sizes == [n]
    else:
        assert len(sizes) >= min(min_chunks, math.ceil(n / sampling._CHUNK_MIN))


def test_chunk_seeds():
    seeds = sampling._chunk_seeds(1234, 40)
    assert seeds[0] == 1234
    assert len(set(seeds)) == 40
    assert all(0 <= s < 2**31 for s in seeds)
    assert sampling._chunk_seeds(1234, 40) == seeds
    generator = keras.random.SeedGenerator(0)
    assert sampling._chunk_seeds(generator, 3) == [generator] * 3


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("distribution", sampling.DISTRIBUTIONS)
def test_chunked_draw_is_exact(distribution, dtype):
    values = sampling.sample(distribution, CHUNKED_SHAPE, STD, dtype, seed=3)
    assert tuple(values.shape) == CHUNKED_SHAPE
    assert keras.backend.standardize_dtype(values.dtype) == dtype
    x = to_numpy(values)
    dist = target(distribution, STD)
    assert stats.kstest(x.ravel(), dist.cdf).pvalue > 1e-4
    assert np.std(x) == pytest.approx(STD, rel=0.01)
    lo, hi = dist.support()
    assert x.min() >= lo and x.max() <= hi
    # Every chunk is its own draw.
    assert abs(np.corrcoef(x[0], x[1])[0, 1]) < 0.02
    assert abs(np.corrcoef(x[1], x[2])[0, 1]) < 0.02


@pytest.mark.parametrize("distribution", sampling.DISTRIBUTIONS)
def test_chunked_draw_is_reproducible(distribution):
    def draw(seed):
        return to_numpy(
            sampling.sample(distribution, CHUNKED_SHAPE, STD, "float32", seed)
        )

    np.testing.assert_array_equal(draw(5), draw(5))
    assert not np.array_equal(draw(5), draw(6))
    # A SeedGenerator advances between the chunks and between the calls.
    generator = keras.random.SeedGenerator(5)
    first = to_numpy(
        sampling.sample(distribution, (2, 2**17), STD, "float32", generator)
    )
    second = to_numpy(
        sampling.sample(distribution, (2, 2**17), STD, "float32", generator)
    )
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("bound", [0.25, 0.5, 1.0, 2.0, 2.5])
@pytest.mark.parametrize("std", [1e-3, 0.0123, 1.0])
def test_unclipped_edge_cannot_round_past_the_bound(bound, std):
    # Where `sample` skips the clip, check the backend's float32 erfinv and
    # product on every float32 in the top 2% of the uniform's range.
    lo, hi = sampling._UNCLIPPED_BOUNDS.get(keras.backend.backend(), (1, 0))
    if not lo <= bound <= hi:
        pytest.skip("this backend clips the truncated normal")
    sigma = std / truncated_normal_std(bound)
    shrunk = bound * (1.0 - sampling._EDGE_MARGIN["float32"])
    edge = sampling._inner_limit(math.erf(shrunk / math.sqrt(2)), "float32")
    top = np.float32(edge).view(np.int32)
    bottom = np.float32(0.98 * edge).view(np.int32)
    v = np.arange(bottom, top + 1, dtype=np.int32).view(np.float32)
    x = keras.ops.multiply(keras.ops.erfinv(v), math.sqrt(2.0) * sigma)
    assert float(np.max(to_numpy(x))) <= bound * sigma


@pytest.mark.parametrize("dtype", DTYPES)
def test_uniform_limit_is_rounded_down(dtype):
    std = 0.1  # sqrt(3) * 0.1 is not representable in any float dtype
    limit = sampling._inner_limit(math.sqrt(3) * std, dtype)
    assert limit <= math.sqrt(3) * std
    assert limit == float(np.asarray(limit).astype(dtype))


def test_rejects_unknown_distribution():
    with pytest.raises(ValueError, match="Invalid `distribution` argument"):
        sampling.sample("cauchy", (2, 2), 1.0, "float32", seed=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("truncation", [6.0, 40.0, 1e300])
def test_extreme_uniform_draw_stays_finite(truncation, dtype, monkeypatch):
    # The inverse CDF's uniform edge is below 1 even where erf(k/√2)
    # rounds to 1: a draw of exactly -edge (possible: the uniform's
    # interval is closed below) must not give erfinv(-1) = -inf.
    # PyTorch fills its output in place (`_fill_uniform`); the other
    # backends draw with keras.random.uniform.
    def lowest(shape, minval, maxval, dtype=None, seed=None):
        del maxval, seed
        return keras.ops.full(shape, minval, dtype=dtype)

    def fill_lowest(x, low, high, generator):
        del high, generator
        x.fill_(low)

    # JAX traces keras.random.uniform into a cached program: start and end
    # with an empty cache, so that neither the real nor the patched
    # uniform is reused.
    sampling._jax_chunk_fn.cache_clear()
    try:
        with monkeypatch.context() as patch:
            if keras.backend.backend() == "torch":
                patch.setattr(sampling, "_fill_uniform", fill_lowest)
            else:
                patch.setattr(keras.random, "uniform", lowest)
            x = to_numpy(
                sampling.sample(
                    "truncated_normal", (8,), 1.0, dtype, 0, truncation
                )
            )
    finally:
        sampling._jax_chunk_fn.cache_clear()
    assert np.all(np.isfinite(x))
    assert np.all(x < -4)  # the far tail, not a clipped or zero value


@pytest.mark.parametrize(
    "distribution, stddev, dtype, message",
    [
        ("uniform", 1e-39, "float32", "underflow to zero"),
        ("truncated_normal", 1e-5, "float16", "underflow to zero"),
        ("untruncated_normal", 1e38, "float32", "overflow to inf"),
        ("uniform", 4e4, "float16", "overflow to inf"),
    ],
)
def test_std_outside_the_dtype_is_refused(distribution, stddev, dtype, message):
    with pytest.raises(ValueError, match=message):
        sampling.sample(distribution, (4, 4), stddev, dtype, 0)


def test_empty_shape_skips_the_range_check():
    x = sampling.sample("uniform", (0, 3), 1e-300, "float32", 0)
    assert tuple(x.shape) == (0, 3)


def test_size_check_counts_bytes_of_the_dtype(monkeypatch):
    monkeypatch.setattr(sampling, "MAX_OUTPUT_BYTES", 800)
    sampling.check_size((100,), "float64")
    sampling.check_size((400,), "bfloat16")
    with pytest.raises(sampling.OutputTooLargeError, match="808 bytes"):
        sampling.check_size((101,), "float64")
    monkeypatch.setattr(sampling, "MAX_OUTPUT_BYTES", None)
    assert sampling.max_output_bytes() > 2**20


@pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="PyTorch's thread count"
)
@pytest.mark.parametrize("fail", [False, True])
def test_torch_thread_count_is_restored(fail, monkeypatch):
    import torch

    seen = []

    def fill(x, low, high, generator):
        seen.append(torch.get_num_threads())
        if fail:
            raise RuntimeError("boom")
        x.uniform_(low, high, generator=generator)

    monkeypatch.setattr(sampling, "_fill_uniform", fill)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        if fail:
            with pytest.raises(RuntimeError, match="boom"):
                sampling.sample("uniform", (4, 4), 1.0, "float32", seed=0)
        else:
            sampling.sample("truncated_normal", (4, 4), 1.0, "float16", 0)
        assert seen == [1]  # drawn on one thread
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's jit")
def test_jax_compiles_once_per_padded_size_not_per_shape():
    sampling._jax_chunk_fn.cache_clear()
    try:
        # 1152, 1152, 1100 and 1200 values, all padded to 2048; four stds.
        shapes = [(3, 3, 8, 16), (1, 1, 32, 36), (1100,), (30, 40)]
        for i, shape in enumerate(shapes):
            x = sampling.sample(
                "truncated_normal", shape, 0.1 * (i + 1), "float32", seed=i
            )
            assert tuple(x.shape) == shape
            bound = 2.0 * 0.1 * (i + 1) / truncated_normal_std(2.0)
            assert float(np.max(np.abs(to_numpy(x)))) <= bound
        assert sampling._jax_chunk_fn.cache_info().currsize == 1
        program = sampling._jax_chunk_fn(
            2048, "inverse_cdf", "float32", "float32", True
        )
        assert program._cache_size() == 1  # traced and compiled once
    finally:
        sampling._jax_chunk_fn.cache_clear()


# --- sample_std ------------------------------------------------------------

TORCH = keras.backend.backend() == "torch"
# Over `_STD_SLICE` values with a tail that is not a whole row.
LARGE_SHAPE = (4100, 1025)


def _tensor(x, dtype):
    return keras.ops.cast(keras.ops.convert_to_tensor(x), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape", [(), (1,), (7,), (3, 1000), (2, 1024), (2, 3, 4, 5)]
)
@pytest.mark.parametrize("offset", [0.0, 0.5, 1000.0])
def test_sample_std_matches_numpy(shape, dtype, offset):
    rng = np.random.default_rng(0)
    x = _tensor(offset + 0.02 * rng.standard_normal(shape), dtype)
    exact = np.std(to_numpy(x))  # of the values in `dtype`, in float64
    # float32 partial sums; TF and JAX reduce in float32.
    rtol = 1e-6 if TORCH or dtype == "float64" else 1e-4
    got = sampling.sample_std(x)
    assert isinstance(got, float)
    np.testing.assert_allclose(got, exact, rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_sample_std_of_a_large_tensor(offset):
    x = np.random.default_rng(1).standard_normal(LARGE_SHAPE)
    x = _tensor(offset + 0.02 * x, "float32")
    exact = np.std(to_numpy(x))
    np.testing.assert_allclose(
        sampling.sample_std(x), exact, rtol=1e-6 if TORCH else 1e-4
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0,), (0, 3)])
def test_sample_std_of_an_empty_tensor(shape, dtype):
    assert sampling.sample_std(keras.ops.zeros(shape, dtype)) == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value", [1.0, 0.1, -3.0])
def test_sample_std_of_a_constant_is_zero(value, dtype):
    # No cancellation error: Σx²/n - mean² would leave round-off.
    x = keras.ops.full((3, 1000), value, dtype=dtype)
    assert sampling.sample_std(x) == 0.0


@pytest.mark.skipif(not TORCH, reason="PyTorch's thread count")
@pytest.mark.parametrize("fail", [False, True])
def test_sample_std_restores_the_thread_count(fail, monkeypatch):
    import torch

    seen = []
    norm = torch.linalg.vector_norm

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        if fail:
            raise RuntimeError("boom")
        return norm(*args, **kwargs)

    monkeypatch.setattr(torch.linalg, "vector_norm", spy)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.ones(3000, requires_grad=True)
        if fail:
            with pytest.raises(RuntimeError, match="boom"):
                sampling.sample_std(x)
        else:
            assert sampling.sample_std(x) == 0.0
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


# Bounded: seconds, not minutes.
@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(
        # Not below 1e-18: squares under float32's smallest normal
        # (1.2e-38) lose precision (see `sample_std`).
        st.floats(-1e3, 1e3, allow_nan=False, width=32).filter(
            lambda v: v == 0 or abs(v) >= 1e-18
        ),
        min_size=1,
        max_size=3000,
    ),
    offset=st.floats(-1e3, 1e3, width=32),
)
def test_sample_std_property(values, offset):
    x = np.asarray(values, dtype=np.float32) + np.float32(offset)
    exact = float(np.std(x.astype(np.float64)))
    scale = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    got = sampling.sample_std(_tensor(x, "float32"))
    assert got >= 0.0
    # Float32 round-off of the values' magnitude, not of their spread.
    assert abs(got - exact) <= 1e-5 * exact + 1e-3 * scale * 2**-11


# --- draw_into -------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("distribution", sampling.DISTRIBUTIONS)
@pytest.mark.parametrize("shape", [(3, 5), CHUNKED_SHAPE])
def test_draw_into_gives_the_same_values(shape, distribution, dtype):
    plain = sampling.sample(distribution, shape, STD, dtype, seed=7)
    target = keras.ops.zeros(shape, dtype)
    with sampling.draw_into(target):
        drawn = sampling.sample(distribution, shape, STD, dtype, seed=7)
        again = sampling.sample(distribution, shape, STD, dtype, seed=8)
    np.testing.assert_array_equal(to_numpy(drawn), to_numpy(plain))
    assert again is not target  # the target is used once
    if TORCH:
        assert drawn is target
        np.testing.assert_array_equal(to_numpy(target), to_numpy(plain))
    else:
        assert drawn is not target
        np.testing.assert_array_equal(to_numpy(target), 0.0)


@pytest.mark.skipif(not TORCH, reason="PyTorch draws in place")
def test_draw_into_skips_what_does_not_fit():
    import torch

    cases = [
        torch.zeros(4, 6),  # other shape
        torch.zeros(6, 4, dtype=torch.float64),  # other dtype
        torch.zeros(4, 6).T,  # not contiguous
        torch.zeros(6, 4, device="meta"),
    ]
    for target in cases:
        with sampling.draw_into(target):
            x = sampling.sample("uniform", (6, 4), 1.0, "float32", 0)
        assert x is not target
        if not target.is_meta:
            assert not torch.any(target)


@pytest.mark.skipif(not TORCH, reason="PyTorch draws in place")
def test_draw_into_writes_a_parameter_and_forgets_it_on_error():
    import torch

    parameter = torch.nn.Parameter(torch.zeros(8, 8))
    pointer = parameter.data_ptr()
    with sampling.draw_into(parameter):
        x = sampling.sample("truncated_normal", (8, 8), 0.1, "float32", 0)
    assert x is parameter and parameter.data_ptr() == pointer
    assert parameter.requires_grad and parameter.grad_fn is None
    assert torch.all(parameter != 0)
    with pytest.raises(ValueError, match="underflow"):
        with sampling.draw_into(parameter):
            sampling.sample("uniform", (8, 8), 1e-39, "float32", 0)
    assert sampling._TARGET.get() is None
    before = parameter.detach().clone()
    sampling.sample("uniform", (8, 8), 1.0, "float32", 0)
    assert torch.equal(parameter.detach(), before)


@pytest.mark.skipif(not TORCH, reason="PyTorch draws in place")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("residual", ["none", "gpt2"])
def test_initialize_draws_into_the_parameters(residual, dtype, monkeypatch):
    import torch

    def model():
        keras.utils.set_random_seed(0)
        h = x = keras.Input((16,), dtype=dtype)
        for i in range(2):
            f = keras.layers.Dense(32, activation="relu", dtype=dtype)(h)
            f = keras.layers.Dense(16, name=f"out{i}", dtype=dtype)(f)
            h = keras.layers.Add(dtype=dtype)([h, f])
        h = keras.layers.Reshape((4, 4), dtype=dtype)(h)
        return keras.Model(x, keras.layers.LSTM(4, dtype=dtype)(h))

    taken = []
    take = sampling._take_target

    def spy(shape, dtype):
        target = take(shape, dtype)
        taken.append(target is not None)
        return target

    monkeypatch.setattr(sampling, "_take_target", spy)
    fast = model()
    assert {v.dtype for v in fast.weights} == {dtype}
    pointers = [v.value.data_ptr() for v in fast.weights]
    parameters = [v.value for v in fast.weights]
    report = keras_winit.initialize(
        fast, "he_normal", residual=residual, seed=3
    )
    # The same storage and Parameter objects (an optimizer's references
    # stay valid), holding what the copying path gives, with the same
    # report.
    assert [v.value.data_ptr() for v in fast.weights] == pointers
    assert sum(taken) == 4  # the Dense kernels; not the LSTM's gates
    assert all(
        v.value is p for v, p in zip(fast.weights, parameters, strict=True)
    )
    monkeypatch.setattr(sampling, "_take_target", lambda shape, dtype: None)
    slow = model()
    expected = keras_winit.initialize(
        slow, "he_normal", residual=residual, seed=3
    )
    for a, b in zip(fast.weights, slow.weights, strict=True):
        assert torch.equal(a.value.detach(), b.value.detach()), a.path

    def numbers(rows):  # the layer names differ between the two models
        return [
            {k: v for k, v in r.items() if k not in ("layer", "path")}
            for r in rows
        ]

    assert numbers(report.rows) == numbers(expected.rows)


# --- recording_std ---------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("distribution", sampling.DISTRIBUTIONS)
def test_recording_std_matches_sample_std(distribution, dtype):
    with sampling.recording_std() as record:
        x = sampling.sample(distribution, (3, 700), STD, dtype, seed=1)
    other = keras.ops.multiply(x, 2.0)
    assert record.std(other) is None  # not what `sample` returned
    std = record.std(x)
    if keras.backend.backend() != "jax":
        assert std is None  # measured by `sample_std` there
        return
    np.testing.assert_allclose(std, np.std(to_numpy(x)), rtol=1e-5)
    assert sampling._RECORD.get() is None


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's jit")
def test_jax_initialize_compiles_no_std_for_drawn_values():
    model = keras.Sequential(
        [keras.Input((13,)), keras.layers.Dense(17, use_bias=False)]
    )
    sampling._jax_std_fn.cache_clear()
    try:
        report = keras_winit.initialize(model, "he_normal", seed=0)
        kernel = to_numpy(model.weights[0].value)
        np.testing.assert_allclose(
            report.rows[0]["measured_std"], kernel.std(), rtol=1e-5
        )
        assert sampling._jax_std_fn.cache_info().currsize == 0
    finally:
        sampling._jax_std_fn.cache_clear()
