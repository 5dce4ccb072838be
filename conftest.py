"""Doctest set-up: docstring examples use `keras`, `keras_winit` and `np`.

Every docstring example runs on the TensorFlow, JAX and PyTorch backends.
"""

import keras
import numpy as np
import pytest

import keras_winit


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    doctest_namespace["keras"] = keras
    doctest_namespace["keras_winit"] = keras_winit
    doctest_namespace["np"] = np
