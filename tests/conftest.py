"""Backend helpers for the test suite.

Keras picks its backend once, at import, from `KERAS_BACKEND`, so every
test process runs ONE backend; CI runs the suite once per backend.

- `requires_tensorflow` (the `tensorflow_only` marker) skips a test that is
  TensorFlow by nature (SavedModel export, `tf.GradientTape`,
  `tf.distribute`, XLA, `tf.summary`) on the other backends, with the
  reason. `pytest -m "not tensorflow_only"` leaves them out altogether.
- On JAX, 64-bit types are enabled (`jax_enable_x64`): without it JAX
  silently truncates `float64` to `float32` (with a warning, an error
  here), and the initializers are tested in `float64` on every backend.
  Users who want `float64` weights on JAX must enable it too.
- On PyTorch the suite uses one compute thread: measured on the shared
  2-core machine, 4 epochs of a 10 x Dense(128) net take 0.9 s with one
  thread and 18-39 s with two (OpenMP threads spinning against other
  processes).
- After each test, Keras name scopes left open are dropped: on TensorFlow, Keras
  3.15 leaves the model's scope open after the first call of a subclassed
  model, and every layer built later gets that prefix in its `path`.
"""

import keras
import pytest

BACKEND = keras.backend.backend()

if BACKEND == "jax":
    import jax

    jax.config.update("jax_enable_x64", True)
elif BACKEND == "torch":
    import torch

    torch.set_num_threads(1)

TENSORFLOW_ONLY_REASON = (
    f"TensorFlow-only feature; the Keras backend is {BACKEND!r} "
    "(set KERAS_BACKEND=tensorflow)"
)

requires_tensorflow = pytest.mark.tensorflow_only


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "tensorflow_only: needs the TensorFlow backend (SavedModel, "
        "tf.GradientTape, tf.distribute, XLA); skipped on other backends",
    )


@pytest.fixture(autouse=True)
def _close_leaked_name_scopes():
    yield
    from keras.src.backend.common import global_state

    stack = global_state.get_global_attribute("name_scope_stack")
    if stack:
        stack.clear()


def pytest_collection_modifyitems(config, items):
    if BACKEND == "tensorflow":
        return
    skip = pytest.mark.skip(reason=TENSORFLOW_ONLY_REASON)
    for item in items:
        if item.get_closest_marker("tensorflow_only") is not None:
            item.add_marker(skip)
