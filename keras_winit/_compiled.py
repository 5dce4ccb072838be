"""`diagnose`'s probe pass compiled with `tf.function`, cached per model.

The eager probe pass (`keras_winit._signal`) runs the walker's forward,
with every kernel layer's pre-activation split off, and a
`tf.GradientTape`'s backward to every signal and kernel. On TensorFlow
eager execution alone costs ~3x a compiled training step
(benchmarks/trainability.py --cost). This module traces the same pass,
once, into a `tf.function` that returns the same tensors: each recorded
call's pre-activation, output, gradient and kernel gradient, and the
tensors whose stds give the residual structure (skip, branch and sum of
each residual add, input and output of each block). `diagnose` reduces
them exactly as it reduces the eager pass's.

The structure of the pass (which calls are normalized, which adds are
residual, the loss) needs concrete values: it comes from an eager pass of
the same signature, the probe pass of an eager `diagnose` call or, when
none ran, one eager forward pass; the traced pass checks that it records
the same calls and tensors.

Cache: per model (held by a weak reference, never kept alive: the traced
function and the cached structure only reach the model and its layers
through weak references) and per signature: the shapes and dtypes of
`x` and `y`, the loss, `training`, the seed, the normalization mode.
Weights are variables: new values need no retrace. A model whose layers,
variables, trainable flags, activations or configs changed (its
fingerprint) loses its cached passes and is traced again.

When to compile (`jit_compile="auto"`): on ResNet50V2 (64x64, batch 8,
benchmarks/trainability.py --cost, five runs) the trace costs 4.6-8.3 s
and saves 0.5-1.1 s a call: it pays after 7.2-11.5 calls (median 7.8).
So "auto" runs eagerly until the same model and signature has been
probed `AUTO_AFTER` times, then compiles (the rule of renting until the
rent paid equals the price: never more than twice the better choice
made in hindsight). A pass that cannot be
traced (a layer that needs concrete values) runs eagerly from then on
under "auto"; with `jit_compile=True` the error is raised.
"""

import dataclasses
import weakref
from typing import Any

import keras

from keras_winit import _compat
from keras_winit import _moments
from keras_winit import _signal
from keras_winit import walker

#: Under `jit_compile="auto"`, the number of eager probe passes of one
#: model and signature after which the next one is compiled.
AUTO_AFTER = 8

#: Signatures cached per model; the least recently used is dropped.
MAX_SIGNATURES = 8

# id(model) -> _ModelCache; entries removed when the model dies.
_CACHES: dict[int, "_ModelCache"] = {}
_TRACES = [0]


class NotTraceable(RuntimeError):
    """The traced pass does not record what the eager pass recorded."""


class _Stale(Exception):
    """The cached structure no longer holds (the output's kind changed)."""


@dataclasses.dataclass
class _Structure:
    """The structure of an eager pass, holding layers by weak reference."""

    calls: list  # walker.Call, `layer` a weak reference
    blocks: list  # walker.Block, likewise
    residuals: list  # walker.Residual
    kept: int  # number of tensors the recorder kept
    shapes: dict  # position in the kept tensors -> shape
    description: str
    from_logits: Any


@dataclasses.dataclass
class _Entry:
    count: int = 0  # probe passes of this signature
    structure: Any = None
    function: Any = None
    templates: Any = None  # (layer weak reference, call index) per record
    failed: bool = False


class _ModelCache:
    def __init__(self, fingerprint):
        self.fingerprint = fingerprint
        self.entries: dict[Any, _Entry] = {}


def clear() -> None:
    """Forgets every cached pass."""
    _CACHES.clear()


def cached(model: keras.Model) -> int:
    """Number of traced passes cached for `model`."""
    cache = _CACHES.get(id(model))
    if cache is None:
        return 0
    return sum(e.function is not None for e in cache.entries.values())


def traces() -> int:
    """Number of probe passes traced in this process."""
    return _TRACES[0]


def fingerprint(model):
    """What a traced pass depends on besides the variables' values."""
    parts = []
    for layer in [model, *_compat.sublayers(model, recursive=True)]:
        activation = getattr(layer, "activation", None)
        parts.append(
            (
                id(layer),
                type(layer),
                layer.trainable,
                None if activation is None else id(activation),
                tuple(
                    (id(v), tuple(v.shape), v.dtype, v.trainable)
                    for v in layer.weights
                ),
                repr(_config(layer)),
            )
        )
    return tuple(parts)


def _config(layer):
    if isinstance(layer, keras.Model):
        return None  # its layers are fingerprinted one by one
    try:
        return layer.get_config()
    except Exception:  # a layer without a config: its type only
        return None


def _signature(tree):
    if tree is None:
        return None

    def spec(t):
        return (tuple(t.shape), keras.backend.standardize_dtype(t.dtype))

    return repr(keras.tree.map_structure(spec, tree))


def _loss_key(loss):
    if loss is None or isinstance(loss, str):
        return loss
    return ("object", id(loss))


def _cache_of(model):
    key = id(model)
    print_ = fingerprint(model)
    cache = _CACHES.get(key)
    if cache is not None and cache.fingerprint != print_:
        cache = None
    if cache is None:
        cache = _ModelCache(print_)
        _CACHES[key] = cache
        weakref.finalize(model, _CACHES.pop, key, None)
    return cache


def probe(model, x, y, loss, training, seed, norm_training, jit_compile):
    """The probe pass, eager or compiled; returns `(records, desc, walk)`."""
    cache = _cache_of(model)
    key = (
        _signature(x),
        _signature(y),
        _loss_key(loss),
        training,
        seed,
        norm_training,
    )
    entry = cache.entries.pop(key, None) or _Entry()
    cache.entries[key] = entry  # the most recent last
    while len(cache.entries) > MAX_SIGNATURES:
        cache.entries.pop(next(iter(cache.entries)))
    entry.count += 1
    compile_now = jit_compile is True or (
        not entry.failed and entry.count > AUTO_AFTER
    )
    if not compile_now:
        records, description, walk, (recorder, from_logits) = (
            _signal._probe_eager(
                model, x, y, loss, training, seed, norm_training
            )
        )
        if entry.function is None:  # the latest eager pass's structure
            entry.structure = _structure(
                walk, recorder, description, from_logits
            )
        return records, description, walk
    if entry.structure is None:
        walk, recorder = walker._execute(
            model,
            x,
            training=training,
            norm_training=norm_training,
            structure=True,
        )
        _, description, from_logits = _signal._loss(
            model, x, y, loss, walk.outputs, seed, with_from_logits=True
        )
        entry.structure = _structure(walk, recorder, description, from_logits)
    try:
        return _run(entry, model, x, y, loss, training, seed, norm_training)
    except _Stale:
        entry.structure = entry.function = entry.templates = None
    except Exception:
        if jit_compile is True:
            raise
        entry.failed = True
        entry.function = entry.templates = None
    records, description, walk, _ = _signal._probe_eager(
        model, x, y, loss, training, seed, norm_training
    )
    return records, description, walk


def _structure(walk, recorder, description, from_logits):
    def weak(item):
        return dataclasses.replace(item, layer=weakref.ref(item.layer))

    blocks = [weak(b) for b in walk.blocks]
    residuals = [dataclasses.replace(r) for r in walk.residuals]
    positions = {i for b in blocks for i in b._sources}
    positions |= {i for r in residuals for i in r._sources}
    if len(residuals) != len([r for r in residuals if r._sources]):
        positions.add(None)  # a residual without sources: not traceable
    shapes = {
        i: None if i is None else tuple(recorder.keep[i].shape)
        for i in positions
    }
    return _Structure(
        calls=[weak(c) for c in walk.calls],
        blocks=blocks,
        residuals=residuals,
        kept=len(recorder.keep),
        shapes=shapes,
        description=description,
        from_logits=from_logits,
    )


def _trace(entry, model, loss, training, seed, norm_training):
    """The `tf.function` of the probe pass of one signature."""
    import tensorflow as tf

    model_ref = weakref.ref(model)
    structure = entry.structure
    positions = sorted(i for i in structure.shapes if i is not None)

    def probe_pass(x, y):
        _TRACES[0] += 1
        model = model_ref()
        calls: list[Any] = []
        tape = tf.GradientTape()
        leaf = _signal.recording_leaf(calls, tape.watch)
        with tape:
            walk, recorder = walker._execute(
                model,
                x,
                leaf,
                training=training,
                norm_training=norm_training,
                traced=True,
            )
            loss_value, _ = _signal._loss(
                model,
                x,
                y,
                loss,
                walk.outputs,
                seed,
                from_logits=structure.from_logits,
            )
        _check(structure, walk, recorder)
        kernels, sources = _signal.gradient_sources(calls)
        grads = tape.gradient(loss_value, sources)
        out = [
            (
                z,
                a,
                None if g is None else _signal._dense(g),
                None if kg is None else _signal._dense(kg),
            )
            for (_, _, z, a), g, kg in _signal.per_call_gradients(
                calls, kernels, grads
            )
        ]
        entry.templates = [
            (weakref.ref(layer), count) for layer, count, _, _ in calls
        ]
        kept = [recorder.keep[i] for i in positions]
        return out, kept, walk.outputs

    function = tf.function(probe_pass, autograph=False)
    # One trace per model and signature is the design, not an accident:
    # TensorFlow's "frequent retracing" log line (keyed by the code of
    # `probe_pass`, shared by every model's pass) would be misleading.
    return _compat.quiet_retracing(function)


def _check(structure, walk, recorder):
    if None in structure.shapes:
        raise NotTraceable("a residual's tensors were not recorded")
    if [c.path for c in walk.calls] != [c.path for c in structure.calls]:
        raise NotTraceable(
            "the traced pass records other layer calls than the eager pass"
        )
    if len(recorder.keep) != structure.kept or any(
        tuple(recorder.keep[i].shape) != shape
        for i, shape in structure.shapes.items()
        if i is not None
    ):
        raise NotTraceable(
            "the traced pass records other tensors than the eager pass"
        )


def _run(entry, model, x, y, loss, training, seed, norm_training):
    if entry.function is None:
        entry.function = _trace(
            entry, model, loss, training, seed, norm_training
        )
    out, kept, outputs = entry.function(x, y)
    structure = entry.structure
    if structure.from_logits is not None:
        flat = keras.tree.flatten(outputs)
        flat = [o for o in flat if _signal._is_float_tensor(o)]
        if _signal.decide_from_logits(flat[0]) != structure.from_logits:
            raise _Stale()
    records = []
    for (layer_ref, count), (z, a, g, kg) in zip(
        entry.templates, out, strict=True
    ):
        records.append(_signal._record(layer_ref(), count, z, a, g, kg))
    stds = {
        i: _moments.std(t)
        for i, t in zip(
            sorted(i for i in structure.shapes if i is not None),
            kept,
            strict=True,
        )
    }
    blocks = []
    for b in structure.blocks:
        block = dataclasses.replace(b, layer=b.layer())
        if b._sources:
            block.in_std, block.out_std = (stds[i] for i in b._sources)
        blocks.append(block)
    residuals = []
    for r in structure.residuals:
        skip, branch, total = (stds[i] for i in r._sources)
        residuals.append(
            dataclasses.replace(
                r, skip_std=skip, branch_std=branch, out_std=total
            )
        )
    walk = walker.Walk(
        calls=[
            dataclasses.replace(c, layer=c.layer()) for c in structure.calls
        ],
        blocks=blocks,
        residuals=residuals,
        outputs=outputs,
    )
    return records, structure.description, walk
