"""Keras' own initializer tests, run against keras_winit's same-named classes.

`keras/src/initializers/random_initializers_test.py` of the installed Keras
is executed with its `initializers` module replaced by one that returns
keras_winit's class wherever keras_winit has one of the same name
(`VarianceScaling`, `LecunNormal`, ...; Keras' own otherwise) and its
`compute_fans` replaced by keras_winit's. Nothing else of the file is
changed except the two lines that need Keras' private test set-up
(`conftest.skip_if_backend`) and the MultiHeadAttention test's string
`"lecun_normal"`, which becomes the class so that ours is used. Each
substitution is checked, so a Keras release that rewrites the file fails
`test_substitutions_apply` by name instead of silently testing Keras.
"""

import pathlib
import types

import keras
import pytest
from keras.src import initializers as keras_initializers

import keras_winit

KERAS_TEST = (
    pathlib.Path(keras.__file__).parent
    / "src"
    / "initializers"
    / "random_initializers_test.py"
)
# (text in Keras' file, what replaces it)
SUBSTITUTIONS = [
    ("from conftest import skip_if_backend\n", ""),
    ("from keras.src import initializers\n", ""),
    (
        "from keras.src.initializers.random_initializers import compute_fans\n",
        "",
    ),
    (
        'kernel_initializer="lecun_normal"',
        "kernel_initializer=initializers.LecunNormal()",
    ),
]


class _Initializers(types.ModuleType):
    """`keras.src.initializers`, with keras_winit's same-named classes."""

    def __getattr__(self, name):
        ours = getattr(keras_winit, name, None)
        if isinstance(ours, type) and issubclass(
            ours, keras.initializers.Initializer
        ):
            return ours
        return getattr(keras_initializers, name)


def _skip_if_backend(given_backend, reason):
    # Keras' conftest helper.
    return pytest.mark.skipif(
        keras.backend.backend() == given_backend, reason=reason
    )


def _load():
    if not KERAS_TEST.exists():
        return None, [], {}
    source = KERAS_TEST.read_text()
    missing = []
    for old, new in SUBSTITUTIONS:
        if source.count(old) != 1:
            missing.append(old)
        source = source.replace(old, new)
    namespace = {
        "__name__": __name__,
        "initializers": _Initializers("initializers"),
        "compute_fans": keras_winit.compute_fans,
        "skip_if_backend": _skip_if_backend,
    }
    exec(compile(source, str(KERAS_TEST), "exec"), namespace)
    return namespace["RandomInitializersTest"], missing, namespace


KerasRandomInitializersTest, _MISSING, _NAMESPACE = _load()
if KerasRandomInitializersTest is None:
    del KerasRandomInitializersTest


def test_substitutions_apply():
    if not KERAS_TEST.exists():
        pytest.skip(f"Keras' tests are not installed ({KERAS_TEST})")
    assert not _MISSING, f"Keras' test file changed: {_MISSING}"


def test_our_classes_are_the_ones_tested():
    if not KERAS_TEST.exists():
        pytest.skip(f"Keras' tests are not installed ({KERAS_TEST})")
    initializers = _NAMESPACE["initializers"]
    assert initializers.VarianceScaling is keras_winit.VarianceScaling
    assert initializers.LecunNormal is keras_winit.LecunNormal
    assert initializers.RandomNormal is keras.initializers.RandomNormal
    assert _NAMESPACE["compute_fans"] is keras_winit.compute_fans
    instance = keras_winit.VarianceScaling(scale=2.0, seed=1)
    assert isinstance(instance, keras.initializers.VarianceScaling)
