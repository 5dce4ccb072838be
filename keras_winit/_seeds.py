"""Derived seeds: one int seed, many independent streams.

`mix(seed, index)` is SplitMix64 (Steele, Lea & Flood 2014) of the pair,
folded to a non-negative int32 (every backend's seed dtype holds it). The
initializers derive the seed of their n-th call from `(seed, n)`, the
samplers the seed of chunk i from `(seed, i)`, and `initialize` the seed of
each variable and gate, so no two draws repeat and all are reproducible.
"""

_MASK = 0xFFFFFFFFFFFFFFFF
_GOLDEN = 0x9E3779B97F4A7C15  # 2**64 / golden ratio, SplitMix64's increment


def mix(seed, *indices):
    """Returns a seed in `[0, 2**31)` derived from `seed` and `indices`.

    Example:

    >>> from keras_winit import _seeds
    >>> _seeds.mix(42, 0) == _seeds.mix(42, 0) != _seeds.mix(42, 1)
    True
    """
    z = int(seed) & _MASK
    for index in indices:
        z = (z * _GOLDEN + int(index) + 1) & _MASK
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        z ^= z >> 31
    return int(z & 0x7FFFFFFF)
