"""Tests of keras_winit.walker: forward order, nesting, norms, residuals."""

import keras
import numpy as np
import pytest

from keras_winit import walker
from tests import _real_models

L = keras.layers


def _kernel_layers(model):
    return {
        id(layer)
        for layer in model._flatten_layers()
        if isinstance(layer, walker.KERNEL_LAYER_TYPES) and layer.weights
    }


# Structure checks on a few real models (diagnose's test covers all of
# them: every kernel layer gets a row there).
_STRUCTURE = [
    n
    for n in ("MobileNetV2", "ResNet50V2") + _real_models.HUB_BACKBONES
    if n in _real_models.names()
    and (keras.backend.backend() != "jax" or n in ("GPT2Backbone",))
]


@pytest.fixture(scope="module", params=_STRUCTURE)
def real(request):
    model, batch = _real_models.build(request.param, batch_size=2)
    return request.param, model, batch, walker.walk(model, batch)


def test_every_kernel_layer_of_real_models_is_walked(real):
    name, model, _, walk = real
    walked = {id(c.layer) for c in walk.kernels()}
    assert walked == _kernel_layers(model), name
    # Forward order: indices are positions.
    assert [c.index for c in walk.calls] == list(range(len(walk.calls)))


def test_structure_of_real_models(real):
    name, _, _, walk = real
    kernels = walk.kernels()
    if name in ("MobileNetV2", "EfficientNetB0", "ResNet50V2"):
        # Convolutions followed by BatchNormalization.
        assert sum(bool(c.norm_after) for c in kernels) > len(kernels) // 2
    if name == "ResNet50V2":
        assert len(walk.residuals) == 16
        # Pre-activation: the stream is carried on un-normalized inside a
        # stage; the last add of a stage feeds only the next preact BN.
        assert sum(not r.normalized for r in walk.residuals) == 12
    if name in _real_models.HUB_BACKBONES:
        # Two residual adds per transformer block, found in the blocks'
        # `call` (no graph there).
        assert len(walk.residuals) == 4, [r.at for r in walk.residuals]
        names = [c.path for c in kernels]
        for part in ("query", "key", "value", "attention_output"):
            assert sum(n.endswith(part) for n in names) == 2, names
        assert sum("feedforward" in n for n in names) in (4, 0) or (
            name == "ViTBackbone"
        )
        ends = [c for c in walk.calls if c.branch_end]
        assert len(ends) == 4
        post_ln = name == "BertBackbone"
        # Pre-LN: the stream goes on un-normalized, except after the last
        # add (the final LayerNorm); post-LN: normalized after every add.
        assert [r.normalized for r in walk.residuals[:-1]] == [post_ln] * 3
        assert walk.residuals[-1].normalized
        # Calls inside a block know their block and parents.
        inner = [c for c in kernels if c.path.endswith("query")]
        assert all(c.parents and c.block is not None for c in inner)


def test_dispatch_restored_after_an_error():
    model = keras.Sequential([keras.Input((4,)), L.Dense(3), L.Dense(2)])
    original = keras.layers.Layer.__call__

    def boom(layer, args, kwargs):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        walker.execute(model, np.ones((2, 4), "float32"), boom)
    assert keras.layers.Layer.__call__ is original
    # Plain calls are untouched afterwards.
    assert model(np.ones((2, 4), "float32")).shape == (2, 2)


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.d1 = L.Dense(8, activation="relu")
        self.norm = L.LayerNormalization()
        self.d2 = L.Dense(8)
        self.head = L.Dense(3)

    def call(self, x):
        h = self.d1(x)
        h = h + self.d2(self.norm(h))
        return self.head(h)


def test_subclassed_model_recorded_with_its_residual():
    model = _Subclassed()
    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    model(x)
    walk = walker.walk(model, x)
    assert [c.layer for c in walk.calls] == [
        model.d1,
        model.norm,
        model.d2,
        model.head,
    ]
    assert len(walk.residuals) == 1
    r = walk.residuals[0]
    assert [walk.calls[i].layer for i in r.calls] == [model.norm, model.d2]
    assert walk.calls[2].branch_end and not walk.calls[0].branch_end
    assert r.growth > 1


def test_norm_after_through_activation_and_dropout():
    inputs = keras.Input((6,))
    h = L.Dense(6, name="a")(inputs)
    h = L.Activation("relu")(h)
    h = L.Dropout(0.1)(h)
    h = L.BatchNormalization(name="bn")(h)
    out = L.Dense(2, name="b")(h)
    model = keras.Model(inputs, out)
    walk = walker.walk(model, np.ones((4, 6), "float32"))
    by_name = {c.path: c for c in walk.calls}
    assert by_name["a"].norm_after == "bn"
    assert by_name["b"].norm_after is None


def test_norm_training_runs_batch_norm_on_batch_statistics():
    model = keras.Sequential([keras.Input((3,)), L.BatchNormalization()])
    x = np.random.default_rng(0).normal(5.0, 3.0, (64, 3)).astype("float32")
    plain = keras.ops.convert_to_numpy(walker.execute(model, x).outputs)
    normed = keras.ops.convert_to_numpy(
        walker.execute(model, x, norm_training=True).outputs
    )
    assert abs(float(np.std(plain)) - 3) < 0.5
    assert abs(float(np.std(normed)) - 1) < 0.05


def test_recording_inside_a_traced_function():
    if keras.backend.backend() != "jax":
        pytest.skip("JAX tracing")
    import jax

    model = keras.Sequential([keras.Input((4,)), L.Dense(3), L.Dense(2)])
    seen = []

    def leaf(layer, args, kwargs):
        seen.append(layer.name)
        return layer(*args, **kwargs)

    def f(x):
        return keras.ops.sum(walker.execute(model, x, leaf).outputs)

    jax.grad(f)(np.ones((2, 4), "float32"))
    assert len(seen) == 2


def test_walk_without_a_batch_uses_the_model_inputs():
    model, _ = _real_models.build("BertBackbone", batch_size=2)
    walk = walker.walk(model)
    assert len(walk.kernels()) == 13 and len(walk.residuals) == 4
    with pytest.raises(ValueError, match="no symbolic inputs"):
        walker.example_batch(_Subclassed())
