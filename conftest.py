"""Doctest namespace: docstring examples use `keras` and `keras_winit`."""

import keras
import numpy as np
import pytest

import keras_winit


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    doctest_namespace["keras"] = keras
    doctest_namespace["keras_winit"] = keras_winit
    doctest_namespace["np"] = np
