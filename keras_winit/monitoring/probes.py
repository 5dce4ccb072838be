"""Activation and back-propagated-gradient histograms during training.

Glorot & Bengio (2010), figures 6 and 7, show how initialization shapes
learning with per-layer histograms of the activations and of the
back-propagated gradients on a fixed set of examples, at chosen moments of
training. `ActivationHistogramLogger` writes those histograms to
TensorBoard.

Reference:
    - Glorot & Bengio, 2010, "Understanding the difficulty of training deep
      feedforward neural networks", AISTATS.
"""

import numbers
import os

import keras
import numpy as np

from keras_winit import _checks
from keras_winit import _signal
from keras_winit.monitoring import callback as callback_module
from keras_winit.monitoring import writer as writer_module

#: Step units understood by `ActivationHistogramLogger`.
STEP_UNITS = ("epoch", "iteration")


class ActivationHistogramLogger(keras.callbacks.Callback):
    """Logs per-layer activation and gradient histograms on a probe set.

    At chosen epochs, the callback runs one forward and backward pass of
    the model on a fixed probe set (the first `num_examples` examples of
    `x_probe`) and writes, for every layer call (in execution order):

    - `activations/<layer path>`: histogram of the layer's output values,
    - `backprop_gradients/<layer path>`: histogram of the back-propagated
      gradient `dC/dz` with respect to the layer's pre-activation `z` (for
      kernel layers with a fused activation; with respect to the output
      for other layers).

    The layer path is Keras' `layer.path` (e.g. `sequential/dense_2`), the
    same prefix as the variable paths of `GradientVarianceLogger`'s tags; a
    layer called several times gets `/call_2`, `/call_3`… appended. The
    pass is the one of `keras_winit.diagnose` (same code): without
    `y_probe`, the loss is a fixed random projection of the outputs; with
    it, the model's compiled loss.

    When: `epochs` lists numbers of *completed* epochs (`0` = before
    training, at `on_train_begin`; `k` = after the k-th epoch of this
    `fit`); or `every=k` logs at 0, k, 2k… completed epochs. Steps: with
    `step_unit="epoch"` (default) the summary step is the number of
    completed epochs; with `"iteration"` it is `model.optimizer.iterations`
    (the step axis of `GradientVarianceLogger`). Summaries are written
    with an explicit `step` by `keras_winit.monitoring.EventWriter` (the
    writer of `GradientVarianceLogger`, no `tf.summary`), so
    `keras.callbacks.TensorBoard`'s `update_freq` gating does not drop
    them; its faults never stop training (see `EventWriter`). An
    unwritable `log_dir` raises a `ValueError` in `on_train_begin`, before
    the first step.

    Writer: event files go to `log_dir/<run_name>`, with `run_name`
    defaulting to `"gradients"`, the run of `GradientVarianceLogger`, so
    both appear as one run in TensorBoard. Each callback owns its writer
    (one event file each in that directory). Works on the TensorFlow, JAX
    and PyTorch backends, with or without TensorFlow installed.

    Examples:

    >>> import tempfile
    >>> from keras_winit.monitoring import ActivationHistogramLogger
    >>> model = keras.Sequential([
    ...     keras.Input((8,)),
    ...     keras.layers.Dense(16, activation="tanh"),
    ...     keras.layers.Dense(1),
    ... ])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> x = np.random.rand(64, 8).astype("float32")
    >>> y = np.random.rand(64, 1).astype("float32")
    >>> logger = ActivationHistogramLogger(
    ...     tempfile.mkdtemp(), x_probe=x, epochs=(0, 2))
    >>> history = model.fit(x, y, epochs=2, callbacks=[logger], verbose=0)
    >>> logger.logged_steps
    [0, 2]

    Args:
        log_dir: Directory of the TensorBoard logs. Defaults to `"logs"`.
        x_probe: The probe inputs (array, or list/dict of arrays).
        y_probe: Optional targets of the probe inputs.
        epochs: Optional collection of non-negative ints: the numbers of
            completed epochs at which to log. Exclusive with `every`.
        every: Optional positive int: log every `every` completed epochs,
            starting at 0. Used (with `every=1`) when neither `epochs` nor
            `every` is given.
        num_examples: Positive int, size of the probe set (the first
            examples of `x_probe`). Defaults to `300`, as in Glorot &
            Bengio.
        buckets: Positive int (at most 10000), number of histogram
            buckets. Defaults to `30`.
        run_name: Subdirectory of `log_dir` that receives the event files
            (not `.` or `..`). Defaults to `"gradients"`.
        step_unit: `"epoch"` (default) or `"iteration"`.
        training: Passed as `training` to the layers during the probe
            pass. Defaults to `False`.
        seed: Int seed of the random projection used without `y_probe`.

    Reference:
        - [Glorot & Bengio, 2010](
            https://proceedings.mlr.press/v9/glorot10a.html)
    """

    def __init__(
        self,
        log_dir="logs",
        x_probe=None,
        y_probe=None,
        epochs=None,
        every=None,
        num_examples=300,
        buckets=30,
        run_name="gradients",
        step_unit="epoch",
        training=False,
        seed=0,
    ):
        super().__init__()
        log_dir = callback_module.check_log_dir(log_dir)
        if x_probe is None:
            raise ValueError(
                "Argument `x_probe` is required: the fixed batch of inputs "
                "on which the histograms are computed. Received: "
                "x_probe=None"
            )
        _signal.check_number("num_examples", num_examples, 0, integer=True)
        # More buckets than this would only cost memory (TensorBoard: 30).
        _signal.check_number("buckets", buckets, 0, 10_001, integer=True)
        _signal.check_number("seed", seed, -1, integer=True)
        if epochs is not None and every is not None:
            raise ValueError(
                "Pass either `epochs` or `every`, not both. Received: "
                f"epochs={epochs!r}, every={every!r}"
            )
        if epochs is not None:
            if isinstance(epochs, (str, bytes)) or not hasattr(
                epochs, "__iter__"
            ):
                raise ValueError(
                    "Argument `epochs` must be a collection of non-negative "
                    f"integers. Received: epochs={epochs!r}"
                )
            epochs = list(epochs)
            if not epochs or not all(_is_int(e) and e >= 0 for e in epochs):
                raise ValueError(
                    "Argument `epochs` must be a non-empty collection of "
                    f"non-negative integers. Received: epochs={epochs!r}"
                )
            epochs = frozenset(int(e) for e in epochs)
        elif every is None:
            every = 1
        if every is not None:
            _signal.check_number("every", every, 0, integer=True)
        if step_unit not in STEP_UNITS:
            raise ValueError(
                f"Invalid `step_unit` argument: {step_unit!r}. "
                f"Expected one of {STEP_UNITS}."
            )
        _checks.run_name(run_name)
        _checks.boolean("training", training)
        x, n = _signal.to_tensors(_take(x_probe, num_examples), "x_probe")
        if n < 2:
            raise ValueError(
                "Argument `x_probe` must hold at least 2 examples. "
                f"Received: {n} example(s)"
            )
        y = None
        if y_probe is not None:
            y, n_y = _signal.to_tensors(_take(y_probe, num_examples), "y_probe")
            if n_y != n:
                raise ValueError(
                    "Arguments `x_probe` and `y_probe` must have the same "
                    f"number of examples. Received: {n} and {n_y}"
                )
        self.log_dir = os.fspath(log_dir)
        self.epochs = epochs
        self.every = every
        self.num_examples = int(num_examples)
        self.buckets = int(buckets)
        self.run_name = run_name
        self.step_unit = step_unit
        self.training = training
        self.seed = int(seed)
        self.logged_steps = []
        self._x = x
        self._y = y
        self._writer = None

    @property
    def run_dir(self):
        """Directory that receives the event files."""
        return os.path.join(self.log_dir, self.run_name)

    def _due(self, completed):
        if self.epochs is not None:
            return completed in self.epochs
        return completed % self.every == 0

    def on_train_begin(self, logs=None):
        _signal.check_backend("ActivationHistogramLogger")
        _signal.check_model(self.model, "ActivationHistogramLogger")
        writer_module.check_writable(
            self.run_dir, "ActivationHistogramLogger", self.log_dir
        )
        if self._writer is not None:  # Left by a `fit` that raised.
            self._writer.close()
            self._writer = None
        if self._due(0):
            self.log(0)

    def on_epoch_end(self, epoch, logs=None):
        completed = epoch + 1
        if self._due(completed):
            self.log(completed)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def log(self, completed_epochs):
        """Runs the probe pass now and writes its histograms.

        Args:
            completed_epochs: Number of completed epochs, the step when
                `step_unit="epoch"`.

        Returns:
            The step the histograms were written at.
        """
        if self.step_unit == "epoch":
            step = int(completed_epochs)
        else:
            step = int(
                keras.ops.convert_to_numpy(self.model.optimizer.iterations)
            )
        records, _ = _signal.probe(
            self.model,
            self._x,
            y=self._y,
            training=self.training,
            seed=self.seed,
        )
        if self._writer is None:
            self._writer = writer_module.EventWriter(self.run_dir)
        tables = []
        for r in records:
            tables.append(
                (
                    f"activations/{r.name}",
                    writer_module.histogram_buckets(
                        _numpy(r.out), self.buckets
                    ),
                )
            )
            if r.grad is not None:
                tables.append(
                    (
                        f"backprop_gradients/{r.name}",
                        writer_module.histogram_buckets(
                            _numpy(r.grad), self.buckets
                        ),
                    )
                )
        self._writer.histograms(step, tables)
        self._writer.flush()
        self.logged_steps.append(step)
        return step


def _numpy(values):
    return np.asarray(keras.ops.convert_to_numpy(values)).ravel()


def _take(x, n):
    return keras.tree.map_structure(lambda v: v[:n], x)


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
