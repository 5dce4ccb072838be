"""Doctest set-up: docstring examples use `keras`, `keras_winit` and `np`.

The demo is TensorFlow-only (it says so and exits on other backends), so
its docstring examples are skipped under KERAS_BACKEND=jax/torch.
"""

import keras
import numpy as np
import pytest

import keras_winit

_TENSORFLOW_ONLY_DOCTESTS = ("keras_winit.demo.",)


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    doctest_namespace["keras"] = keras
    doctest_namespace["keras_winit"] = keras_winit
    doctest_namespace["np"] = np


def pytest_collection_modifyitems(config, items):
    if keras.backend.backend() == "tensorflow":
        return
    skip = pytest.mark.skip(reason="TensorFlow-only example (the demo)")
    for item in items:
        if isinstance(item, pytest.DoctestItem) and item.name.startswith(
            _TENSORFLOW_ONLY_DOCTESTS
        ):
            item.add_marker(skip)
