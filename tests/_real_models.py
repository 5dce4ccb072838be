"""Stock models nobody here wrote, small enough for the test suite.

Six `keras.applications` nets (`weights=None`, so nothing is downloaded) and
three keras_hub backbones built from their config classes (2 layers, hidden
64). Each builder returns `(model, batch)`: a freshly built model with its
own (Keras or keras_hub) initialization and a small input batch that fits
it, generated here. Shared by every test that must hold on real models.
"""

import keras
import numpy as np

APPLICATIONS = (
    "MobileNetV2",
    "ResNet50V2",
    "EfficientNetB0",
    "ConvNeXtTiny",
    "Xception",
    "DenseNet121",
)
HUB_BACKBONES = ("GPT2Backbone", "BertBackbone", "ViTBackbone")
ALL = APPLICATIONS + HUB_BACKBONES
# Eager calls under JAX cost 2-20 s per model (XLA compiles each op):
# tests that call models eagerly use this subset there.
JAX_SUBSET = ("MobileNetV2", "ResNet50V2", "GPT2Backbone", "BertBackbone")


def names():
    """The models to test under the current backend."""
    return JAX_SUBSET if keras.backend.backend() == "jax" else ALL


# Xception needs inputs of at least 71x71; the others take 32x32.
_IMAGE_SIZE = {"Xception": 71}
_VOCABULARY = 500
_SEQUENCE = 16


def build(name, batch_size=4, seed=0):
    """`(model, batch)` for one of `ALL`, seeded."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    if name in APPLICATIONS:
        size = _IMAGE_SIZE.get(name, 32)
        model = getattr(keras.applications, name)(
            weights=None, input_shape=(size, size, 3), classes=10
        )
        batch = rng.uniform(0, 255, (batch_size, size, size, 3))
        return model, batch.astype("float32")
    if name not in HUB_BACKBONES:
        raise ValueError(f"Unknown model {name!r}; expected one of {ALL}.")
    import keras_hub

    common = dict(num_layers=2, num_heads=2, hidden_dim=64)
    if name == "ViTBackbone":
        model = keras_hub.models.ViTBackbone(
            image_shape=(32, 32, 3), patch_size=8, mlp_dim=128, **common
        )
        batch = rng.normal(size=(batch_size, 32, 32, 3)).astype("float32")
        return model, batch
    cls = getattr(keras_hub.models, name)
    model = cls(
        vocabulary_size=_VOCABULARY,
        intermediate_dim=128,
        max_sequence_length=32,
        dropout=0.0,
        **common,
    )
    batch = {
        "token_ids": rng.integers(1, _VOCABULARY, (batch_size, _SEQUENCE)),
        "padding_mask": np.ones((batch_size, _SEQUENCE), "int32"),
    }
    if name == "BertBackbone":
        batch["segment_ids"] = np.zeros((batch_size, _SEQUENCE), "int32")
    return model, batch
