"""Callbacks that monitor how well an initialization trains.

`GradientVarianceLogger` logs, during `model.fit`, per-layer statistics of
the gradients that the optimizer really applies, to TensorBoard.
"""

import math
import numbers
import os
import warnings

import keras

from keras_winit import _checks

# Number of bins of the optional gradient histograms (TensorBoard's default).
_HISTOGRAM_BINS = 30
# Columns of one record of per-variable statistics.
_VARIANCE, _MEAN, _NORM, _NONFINITE = range(4)
_NUM_STATS = 4
# Kinds of record: statistics of an applied step, or a skipped step.
_KIND_APPLIED, _KIND_SKIPPED = 0, 1
# Largest number of records kept between two writes (ring buffer).
_MAX_BUFFERED_RECORDS = 4096
# Floor of the variance in the log10 ratio, so that a layer whose gradient
# is exactly zero gives a large finite ratio instead of infinity.
_VARIANCE_FLOOR = 1e-30


class GradientVarianceWarning(UserWarning):
    """Warning raised once when gradient variances span too many decades."""


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _layer_path(variable_path):
    return variable_path.rsplit("/", 1)[0] if "/" in variable_path else ""


class GradientVarianceLogger(keras.callbacks.Callback):
    """Logs per-layer statistics of the applied gradients to TensorBoard.

    Keras' `TensorBoard` callback logs weights only (`write_grads` was
    removed in TensorFlow 2). This callback logs, for every trainable
    variable `w` of the model and every `update_freq`-th optimizer step, the
    statistics of the gradient `g` that `fit` applies to `w`:

    - `grad_variance/<variable path>`: `mean((g - mean(g)) ** 2)`,
    - `grad_mean/<variable path>`: `mean(g)`,
    - `grad_norm/<variable path>`: `sqrt(sum(g ** 2))`,
    - `grad_nonfinite/<variable path>`: number of NaN and inf entries,

    where the variable path is Keras' `variable.path`, e.g.
    `sequential/dense/kernel` (so the tags of one statistic are grouped
    together, one curve per layer and variable). The model-level scalar
    `grad_summary/log10_variance_ratio` is
    `log10(max_l Var(g_l) / min_l Var(g_l))` over the kernels (variables of
    rank >= 2; all variables when there is no kernel): 0 when all layers
    receive gradients of the same size, large when gradients vanish or
    explode across depth (Glorot & Bengio, 2010). When it first exceeds
    `warn_log10_ratio`, a `GradientVarianceWarning` names the two layers.

    Optionally, each at its own frequency: gradient histograms
    (`grad_histogram/<variable path>`, every `histogram_freq` steps) and the
    variance of the weights (`weight_variance/<variable path>`, every
    `weights_freq` steps and once before the first step, so the
    initialization itself is logged).

    Which gradient: the one handed to the optimizer, as the optimizer uses
    it: divided by the loss scale under mixed precision
    (`keras.optimizers.LossScaleOptimizer`); summed across replicas under
    `tf.distribute`; with `gradient_accumulation_steps`, the accumulated
    mean on the step that applies it. Clipping (`clipnorm`, `clipvalue`)
    and weight decay, done inside the optimizer's update, are not included.
    No extra forward or backward pass is run. On TensorFlow, the callback
    wraps `model.optimizer.apply` during `fit`, computes the statistics
    inside the training graph (gated by `tf.cond`, so the other steps cost
    almost nothing) and stores them in non-trainable `tf.Variable`s (not
    tracked by the model, so saving is unaffected). After each batch, one
    read of those variables tells whether a step was recorded; new records
    are written to the event file from Python, between steps. No summary op
    is traced into `train_step`, which is why `jit_compile=True` works, and
    no `tf.summary.record_if` (such as the one Keras' `TensorBoard`
    callback sets around each batch) can drop them. On JAX, whose train
    step is a pure jitted function, the callback wraps
    `model.optimizer.stateless_apply` (what the trainer calls) so that the
    trace computes the statistics inside a `jax.lax.cond` taken only on
    recorded steps, and makes `fit`'s train function: the model's
    `train_step`, jitted as Keras does, that also returns the statistics
    (no host callback in the step); they are fetched every 32 steps,
    without waiting for the step in flight, and at the end of each epoch.
    On PyTorch (eager), the callback wraps
    `model.optimizer.apply` and computes the statistics with torch ops on
    recorded steps only. The optimizer's method is restored in
    `on_train_end`, and the train function is re-made by the next `fit`.

    Cost, measured with `benchmarks/monitoring.py` (64 -> 5 x 256 tanh ->
    10 MLP, batch 64, one CPU thread): at `update_freq=100`, within noise
    of a plain step on JAX and PyTorch and about 7% on TensorFlow; at
    `update_freq=1`, about what Keras' `TensorBoard(update_freq=1)` costs
    to log the loss alone, or less. Numbers per backend:
    `docs/gradient_monitoring.md`.
    Under `tf.distribute`, gradients are all-reduced once more every step.

    Steps are optimizer steps (`model.optimizer.iterations` before the
    update, starting at 0), so they do not depend on `steps_per_execution`
    or on gradient accumulation. A step skipped by `LossScaleOptimizer`
    because its gradient is not finite is not logged as values: it adds one
    to `grad_summary/skipped_steps` and logs `grad_nonfinite/...` at the
    step number that was not applied. With `steps_per_execution > 1`, all
    recorded steps of one execution are kept and written after it.

    Summaries are written to `log_dir/<run_name>` (default
    `log_dir/gradients`), a run of its own: `keras.callbacks.TensorBoard`
    can share the same `log_dir` (it writes `train/` and `validation/`),
    and TensorBoard does not read two event files written at once into one
    directory reliably. Each `fit` starts a new event file there; it is
    flushed at the end of every epoch and closed at the end of training.
    Validation and `evaluate` are not monitored (no gradients).

    Backends: TensorFlow, JAX and PyTorch (`set_model` raises a
    `RuntimeError` on others). Event files are written with
    `tf.io.TFRecordWriter` when TensorFlow is installed, else with the
    `tensorboard` package alone (local directories only). On JAX, a custom
    `train_step` must call `self.optimizer.stateless_apply`; on PyTorch,
    `self.optimizer.apply`. An uncompiled model or an unwritable `log_dir`
    raise a `ValueError` in `on_train_begin`, before the first step.
    Callbacks are not serialized, so this class is not registered as a
    Keras serializable.

    Examples:

    >>> import tempfile
    >>> import keras
    >>> import numpy as np
    >>> from keras_winit.callbacks import GradientVarianceLogger
    >>> model = keras.Sequential([
    ...     keras.Input((8,)),
    ...     keras.layers.Dense(16, activation="tanh"),
    ...     keras.layers.Dense(1),
    ... ])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> logger = GradientVarianceLogger(
    ...     log_dir=tempfile.mkdtemp(), update_freq=2)
    >>> x = np.random.rand(32, 8).astype("float32")
    >>> y = np.random.rand(32, 1).astype("float32")
    >>> history = model.fit(x, y, batch_size=8, callbacks=[logger], verbose=0)
    >>> # Then: tensorboard --logdir <log_dir>

    Args:
        log_dir: Directory of the TensorBoard logs; created if needed.
            Defaults to `"logs"`.
        update_freq: Positive integer. Log the gradient statistics every
            `update_freq` optimizer steps (steps 0, `update_freq`, ...).
            Defaults to `10`.
        histogram_freq: Non-negative integer. Log gradient histograms every
            `histogram_freq` optimizer steps; `0` (default) disables them.
            Only the last histogram of one execution is kept when
            `steps_per_execution > histogram_freq`.
        weights_freq: Non-negative integer. Log the variance of the weights
            every `weights_freq` optimizer steps (read after the step's
            update) and before the first step; `0` (default) disables it.
        warn_log10_ratio: Positive number or `None`. Warn once when
            `grad_summary/log10_variance_ratio` exceeds it. Defaults to `4.0`
            (a factor of 10,000 between layers); `None` disables the
            warning.
        run_name: Name of the run, the subdirectory of `log_dir` that
            receives the summaries. Defaults to `"gradients"`.

    Reference:
        - [Glorot & Bengio, 2010](
            https://proceedings.mlr.press/v9/glorot10a.html): Understanding
            the difficulty of training deep feedforward neural networks.
    """

    def __init__(
        self,
        log_dir="logs",
        update_freq=10,
        histogram_freq=0,
        weights_freq=0,
        warn_log10_ratio=4.0,
        run_name="gradients",
    ):
        super().__init__()
        if not isinstance(log_dir, (str, os.PathLike)) or not str(log_dir):
            raise ValueError(
                "Argument `log_dir` must be a non-empty string or path. "
                f"Received: log_dir={log_dir!r}"
            )
        if not _is_int(update_freq) or update_freq < 1:
            raise ValueError(
                "Argument `update_freq` must be a positive integer. "
                f"Received: update_freq={update_freq!r}"
            )
        for name, value in (
            ("histogram_freq", histogram_freq),
            ("weights_freq", weights_freq),
        ):
            if not _is_int(value) or value < 0:
                raise ValueError(
                    f"Argument `{name}` must be a non-negative integer. "
                    f"Received: {name}={value!r}"
                )
        if warn_log10_ratio is not None and (
            not isinstance(warn_log10_ratio, numbers.Real)
            or isinstance(warn_log10_ratio, bool)
            or not warn_log10_ratio > 0
            or not math.isfinite(warn_log10_ratio)
        ):
            raise ValueError(
                "Argument `warn_log10_ratio` must be a positive number or "
                f"None. Received: warn_log10_ratio={warn_log10_ratio!r}"
            )
        _checks.run_name(run_name)
        self.log_dir = os.fspath(log_dir)
        self.update_freq = int(update_freq)
        self.histogram_freq = int(histogram_freq)
        self.weights_freq = int(weights_freq)
        self.warn_log10_ratio = warn_log10_ratio
        self.run_name = run_name
        self._warned = False
        self._state = None
        self._writer = None
        self._optimizer = None

    @property
    def async_safe(self):
        """Whether Keras may run this callback's batch ends on a thread.

        On JAX, the batch end does nothing (records are fetched by the
        callback's train function, between steps), so it does not keep
        Keras' JAX trainer from dispatching steps asynchronously.
        """
        return keras.backend.backend() == "jax"

    @property
    def run_dir(self):
        """Directory that receives the event files."""
        return os.path.join(self.log_dir, self.run_name)

    # ------------------------------------------------------------------
    # Checks before the first step.

    def set_model(self, model):
        _check_backend()
        super().set_model(model)

    def _check_model(self):
        model = self.model
        if model is None:
            raise ValueError(
                "GradientVarianceLogger has no model: call `set_model(model)` "
                "or pass the callback to `model.fit`."
            )
        if not getattr(model, "compiled", False) or model.optimizer is None:
            raise ValueError(
                "GradientVarianceLogger needs a compiled model with an "
                f"optimizer. Call `model.compile(optimizer=...)` before "
                f"`fit`. Received: model={model.name!r} (not compiled)."
            )

    def _check_variables(self):
        if not self.model.trainable_variables:
            raise ValueError(
                "GradientVarianceLogger found no trainable variables in "
                f"model {self.model.name!r} at the start of `fit`. Build the "
                "model first (e.g. call it on one batch: `model(x[:1])`), "
                "or give it trainable weights."
            )

    def _check_log_dir(self):
        run_dir = self.run_dir
        tf = _tensorflow()
        errors = (OSError,) if tf is None else (OSError, tf.errors.OpError)
        try:
            if tf is not None:
                tf.io.gfile.makedirs(run_dir)
            else:
                os.makedirs(run_dir, exist_ok=True)
            if "://" not in run_dir and not os.access(run_dir, os.W_OK):
                raise PermissionError(f"Permission denied: {run_dir!r}")
        except errors as e:
            raise ValueError(
                "GradientVarianceLogger cannot write to `log_dir`: "
                f"{run_dir!r} cannot be created or is not writable ({e}). "
                f"Received: log_dir={self.log_dir!r}"
            ) from e

    # ------------------------------------------------------------------
    # Training hooks.

    def on_train_begin(self, logs=None):
        _check_backend()
        self._check_model()
        self._check_variables()
        self._check_log_dir()
        model = self.model
        # Left over by a `fit` that raised before `on_train_end`.
        self._unwrap()
        if self._writer is not None:
            self._writer.close()
        self._writer = _EventWriter(self.run_dir)
        optimizer = model.optimizer
        self._optimizer = optimizer
        if keras.backend.backend() != "tensorflow":
            from keras_winit import _grad_hooks

            self._state = _grad_hooks.make_hook(self, model)
            self._state.install()
        else:
            self._state = _State(self, model)
            state = self._state

            def record(grads, trainable_variables=None):
                state.record(grads, trainable_variables)

            _wrap(optimizer, "apply", record)
            # `fit` made the train function before `on_train_begin`:
            # re-trace it so that it calls the wrapper (also after an
            # earlier `fit`).
            model.make_train_function(force=True)
        if self.weights_freq:
            self._state.write_weights(force=True)

    def on_train_batch_end(self, batch, logs=None):
        if self._state is not None:
            self._state.write_pending()

    def on_epoch_end(self, epoch, logs=None):
        if self._state is not None:
            self._state.write_pending(force=True)
            self._writer.flush()

    def on_train_end(self, logs=None):
        if self._state is None:
            return
        self._state.write_pending(force=True)
        self._unwrap()
        # Next `fit` re-traces without the wrapper (or with a new one).
        self.model.train_function = None
        self._writer.flush()
        self._writer.close()
        self._writer = None
        self._state = None

    def _unwrap(self):
        optimizer = self._optimizer
        if optimizer is None:
            return
        for name in _WRAPPED_METHODS:
            _unwrap(optimizer, name)
        self._optimizer = None

    def _maybe_warn(self, ratio, i_max, i_min, step, variances):
        """Warns once that gradient variances span too many decades."""
        if self.warn_log10_ratio is None or self._warned:
            return
        if ratio > self.warn_log10_ratio:
            self._warned = True
            paths = self._state.paths
            warnings.warn(
                f"Gradient variances span 10^{ratio:.1f} across layers at "
                f"optimizer step {step}: largest in layer "
                f"'{_layer_path(paths[i_max])}' ({variances[i_max]:.3g} for "
                f"'{paths[i_max]}'), smallest in layer "
                f"'{_layer_path(paths[i_min])}' ({variances[i_min]:.3g} for "
                f"'{paths[i_min]}'). Gradients may be vanishing or "
                "exploding; check the initialization of these layers "
                "(threshold warn_log10_ratio="
                f"{self.warn_log10_ratio}).",
                GradientVarianceWarning,
                stacklevel=2,
            )


_BACKENDS = ("tensorflow", "jax", "torch")
# Optimizer methods that a `fit` may have wrapped (TensorFlow and PyTorch:
# `apply`; JAX: `stateless_apply`).
_WRAPPED_METHODS = ("apply", "stateless_apply")


def _check_backend():
    backend = keras.backend.backend()
    if backend not in _BACKENDS:
        raise RuntimeError(
            "GradientVarianceLogger supports the TensorFlow, JAX and "
            f"PyTorch backends. Received: backend={backend!r}. Set "
            "KERAS_BACKEND to one of tensorflow, jax, torch."
        )


def _tensorflow():
    """The `tensorflow` module, or `None` when it is not installed.

    The `tensorboard` package imports TensorFlow whenever it is installed;
    without it, the event files are written with `tensorboard` alone.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf
    import importlib.util

    if _tensorflow.disabled or importlib.util.find_spec("tensorflow") is None:
        return None
    import tensorflow as tf

    return tf


# Set to True to write event files without TensorFlow even when it is
# installed (tests).
_tensorflow.disabled = False


def _wrap(optimizer, name, before):
    """Makes `optimizer.<name>(*args)` call `before(*args)` first.

    The wrapper is an instance attribute (the class is untouched); it
    remembers the instance attribute it replaces, if any, for `_unwrap`.
    """
    original = optimizer.__dict__.get(name)
    method = original if original is not None else getattr(optimizer, name)

    def wrapper(*args, **kwargs):
        before(*args, **kwargs)
        return method(*args, **kwargs)

    wrapper._keras_winit_original = original
    setattr(optimizer, name, wrapper)


def _unwrap(optimizer, name):
    wrapper = optimizer.__dict__.get(name)
    if wrapper is not None and hasattr(wrapper, "_keras_winit_original"):
        original = wrapper._keras_winit_original
        if original is None:
            delattr(optimizer, name)
        else:
            setattr(optimizer, name, original)


def _float32(x):
    """`x` as float32 (a Keras op only when it is not float32 already)."""
    if keras.backend.standardize_dtype(x.dtype) == "float32":
        return x
    return keras.ops.cast(x, "float32")


class _EventWriter:
    """Appends `Event` records to a new TensorBoard event file.

    An event file is a TFRecord file of serialized `Event` protos, the first
    one giving the file version. When TensorFlow is installed,
    `tf.io.TFRecordWriter` writes a record in one C++ call, which costs a
    fraction of a `tf.summary` op dispatch; it knows the same file systems
    (local, `gs://`, ...). Without TensorFlow, `tensorboard`'s own record
    writer frames the records (its CRC is pure Python: slower, and local
    files only). Not subject to `tf.summary.record_if`, so Keras'
    `TensorBoard` callback cannot swallow these events.
    """

    _files = 0

    def __init__(self, run_dir):
        import socket
        import time

        from tensorboard.compat.proto import event_pb2

        _EventWriter._files += 1
        name = (
            f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
            f"{os.getpid()}.{_EventWriter._files}.keras_winit.v2"
        )
        self.path = os.path.join(run_dir, name)
        tf = _tensorflow()
        if tf is not None:
            self._writer = tf.io.TFRecordWriter(self.path)
        else:
            from tensorboard.summary.writer import record_writer

            self._writer = record_writer.RecordWriter(open(self.path, "wb"))
        self._writer.write(
            event_pb2.Event(
                wall_time=time.time(), file_version="brain.Event:2"
            ).SerializeToString()
        )

    def write(self, step, summary):
        """Writes one event of serialized `Summary` bytes at `step`."""
        import struct
        import time

        # Event: wall_time (field 1, double), step (2, int64),
        # summary (5, message).
        self._writer.write(
            b"\x09"
            + struct.pack("<d", time.time())
            + b"\x10"
            + _varint(int(step))
            + b"\x2a"
            + _varint(len(summary))
            + summary
        )

    def flush(self):
        self._writer.flush()

    def close(self):
        self._writer.close()


class _Records:
    """Host side of one `fit` call: tags, and writing records as events.

    Shared by the TensorFlow implementation (`_State`) and the JAX and
    PyTorch hooks (`keras_winit._grad_hooks`). A record is a flat float64
    array: `n x (variance, mean, norm, nonfinite)` for the `n` trainable
    variables (zeros for variables without a gradient), then the optimizer
    step, the kind of record and the number of skipped steps so far.
    """

    def __init__(self, callback, model):
        self.callback = callback
        self.model = model
        self.writer = callback._writer
        self.optimizer = model.optimizer
        self.inner = getattr(self.optimizer, "inner_optimizer", None)
        self.is_loss_scaled = isinstance(
            self.optimizer, keras.optimizers.LossScaleOptimizer
        )
        if self.inner is None:
            self.inner = self.optimizer
        self.variables = list(model.trainable_variables)
        self.paths = [v.path for v in self.variables]
        self.index = {id(v): i for i, v in enumerate(self.variables)}
        self.index_by_path = {p: i for i, p in enumerate(self.paths)}
        kernels = [i for i, v in enumerate(self.variables) if len(v.shape) >= 2]
        self.kernel_rows = kernels or list(range(len(self.variables)))
        self.present = set()
        self.update_freq = callback.update_freq
        self.histogram_freq = callback.histogram_freq
        self.weights_freq = callback.weights_freq
        self.weights_written_at = None
        self.tags_with_metadata = set()
        self._scalar_heads = {}
        from tensorboard.plugins.scalar import metadata

        self._scalar_metadata = metadata.create_summary_metadata(
            display_name=None, description=None
        ).SerializeToString()
        n = len(self.variables)
        self.width = n * _NUM_STATS + 3

    def _row(self, variable):
        i = self.index.get(id(variable))
        if i is None:
            i = self.index_by_path.get(getattr(variable, "path", None))
        return i

    def _applied_variables(self, trainable_variables):
        """The variables an `optimizer.apply` call updates.

        Builds the optimizer first if needed, as `apply` does, so that its
        state can be read.
        """
        optimizer = self.optimizer
        if not optimizer.built and trainable_variables is not None:
            with keras.name_scope(optimizer.name, caller=optimizer):
                optimizer.build(list(trainable_variables))
            optimizer.built = True
        if trainable_variables is None:
            return self.inner._trainable_variables
        return trainable_variables

    def _logged(self, grads, variables):
        """`(rows, variables, grads)` of the gradients that are logged.

        Those of the model's trainable variables that receive a gradient,
        except `overwrite_with_gradient` ones (not a gradient step). Marks
        their rows as present.
        """
        rows, kept_variables, kept_grads = [], [], []
        for g, v in zip(grads, list(variables), strict=False):
            i = self._row(v)
            if g is None or i is None:
                continue
            if getattr(v, "overwrite_with_gradient", False):
                continue
            rows.append(i)
            kept_variables.append(v)
            kept_grads.append(g)
        self.present.update(rows)
        return rows, kept_variables, kept_grads

    def applied_gradients(self, grads, trainable_variables):
        """The gradients as the optimizer applies them.

        Returns `(rows, grads, step, is_update, finite)`: the rows of the
        variables that receive a gradient, their float32 gradients
        (unscaled, accumulated mean on the applying step), the optimizer
        step before the update, whether this call updates the variables
        (gradient accumulation), and whether the gradients are finite
        (`LossScaleOptimizer` skips the step otherwise). Keras ops on the
        optimizer's state through its Keras variables: traced into the
        training graph (TensorFlow), inside `stateless_apply` under a
        `StatelessScope` of its variables (JAX), or eagerly (PyTorch).
        """
        ops = keras.ops
        optimizer, inner = self.optimizer, self.inner
        rows, variables, grads = self._logged(grads, trainable_variables)
        if not rows:
            return rows, [], None, None, None
        grads = [_float32(g) for g in grads]
        finite = None
        if self.is_loss_scaled:
            finite = ops.all(
                ops.stack([ops.all(ops.isfinite(g)) for g in grads])
            )
            scale = ops.cast(optimizer.dynamic_scale, "float32")
            grads = [g / scale for g in grads]
        if inner.loss_scale_factor is not None:
            grads = [g / inner.loss_scale_factor for g in grads]
        k = inner.gradient_accumulation_steps
        is_update = None
        if k:
            raw_iterations = ops.convert_to_tensor(inner._iterations)
            is_update = ops.equal((raw_iterations + 1) % k, 0)
            accumulators = [
                inner._accumulated_gradients[inner._get_variable_index(v)]
                for v in variables
            ]
            grads = [
                (g + ops.cast(ops.convert_to_tensor(a), "float32")) / k
                for g, a in zip(grads, accumulators, strict=True)
            ]
        step = ops.convert_to_tensor(optimizer.iterations)
        return rows, grads, step, is_update, finite

    # Writing, between steps -------------------------------------------

    def _value(self, tag, tensor, metadata):
        from tensorboard.compat.proto import summary_pb2

        value = summary_pb2.Summary.Value(tag=tag, tensor=tensor)
        # TensorBoard reads a tag's metadata from its first value only.
        if tag not in self.tags_with_metadata:
            self.tags_with_metadata.add(tag)
            value.metadata.CopyFrom(metadata)
        return value

    def _write_event(self, step, summary):
        self.writer.write(step, summary)

    def _scalars(self, step, tags_and_values):
        import numpy as np

        tags = [tag for tag, _ in tags_and_values]
        values = np.asarray([x for _, x in tags_and_values], "<f4")
        self._write_scalars(step, tags, values.tobytes())

    def _write_scalars(self, step, tags, packed):
        """Writes one event of float32 scalars, as `tf.summary.scalar` does.

        `packed` holds the little-endian float32 values of `tags`. The
        `Summary` is assembled from serialized pieces cached per tag (only
        the 4 bytes of each value change), which costs a fraction of
        building one protobuf message per value.
        """
        heads = self._scalar_heads
        parts = []
        for j, tag in enumerate(tags):
            head = heads.get(tag)
            if head is None:
                # The first value of a tag carries the scalar plugin's
                # metadata; later ones do not need it.
                head = _scalar_head(tag, self._scalar_metadata)
                heads[tag] = _scalar_head(tag, None)
            parts.append(head)
            parts.append(packed[4 * j : 4 * j + 4])
        self._write_event(step, b"".join(parts))

    def _layout(self):
        """Present rows, their tags in record order, and the ratio rows."""
        present = tuple(sorted(self.present))
        if getattr(self, "_layout_key", None) != present:
            paths = self.paths
            tags = []
            for i in present:
                tags += [
                    f"grad_variance/{paths[i]}",
                    f"grad_mean/{paths[i]}",
                    f"grad_norm/{paths[i]}",
                    f"grad_nonfinite/{paths[i]}",
                ]
            tags.append("grad_summary/log10_variance_ratio")
            ratio_rows = [i for i in self.kernel_rows if i in self.present]
            self._layout_key = present
            self._layout_value = (list(present), tags, ratio_rows or present)
        return self._layout_value

    def _write_record(self, record):
        import numpy as np

        n = len(self.variables)
        stats = record[: n * _NUM_STATS].reshape(n, _NUM_STATS)
        step, kind, skipped_total = record[n * _NUM_STATS :]
        step = int(step)
        present, tags, ratio_rows = self._layout()
        if kind == _KIND_SKIPPED:
            self._scalars(
                step,
                [
                    (f"grad_nonfinite/{self.paths[i]}", stats[i, _NONFINITE])
                    for i in present
                ]
                + [("grad_summary/skipped_steps", skipped_total)],
            )
            return
        variances = [
            max(float(stats[i, _VARIANCE]), _VARIANCE_FLOOR) for i in ratio_rows
        ]
        high, low = max(variances), min(variances)
        if math.isfinite(high) and math.isfinite(low):
            ratio = math.log10(high / low)
        else:
            ratio = math.nan
        values = np.empty(len(tags), "<f4")
        values[:-1] = stats[present].ravel()
        values[-1] = ratio
        self._write_scalars(step, tags, values.tobytes())
        if not math.isnan(ratio):
            self.callback._maybe_warn(
                ratio,
                ratio_rows[variances.index(high)],
                ratio_rows[variances.index(low)],
                step,
                stats[:, _VARIANCE],
            )

    def _write_histogram_table(self, step, hist, rows):
        """Writes `hist[i]` (`[bins, 3]`) of each row `i` in `rows`."""
        from tensorboard.compat.proto import summary_pb2
        from tensorboard.plugins.histogram import metadata
        from tensorboard.util import tensor_util

        if not hasattr(self, "_histogram_metadata"):
            self._histogram_metadata = metadata.create_summary_metadata(
                display_name=None, description=None
            )
        values = [
            self._value(
                f"grad_histogram/{self.paths[i]}",
                tensor_util.make_tensor_proto(hist[i]),
                self._histogram_metadata,
            )
            for i in rows
        ]
        self._write_event(
            step, summary_pb2.Summary(value=values).SerializeToString()
        )

    def _current_step(self):
        return int(_numpy(self.optimizer.iterations))

    def _weight_values(self):
        return [_numpy(v) for v in self.variables]

    def write_weights(self, force=False):
        import numpy as np

        step = self._current_step()
        # Logged at the first batch end at or after each multiple of freq.
        mark = step // self.weights_freq
        if not force and mark == self.weights_written_at:
            return
        self.weights_written_at = mark
        self._scalars(
            step,
            [
                (
                    f"weight_variance/{p}",
                    np.var(np.asarray(w).astype("float64")),
                )
                for w, p in zip(self._weight_values(), self.paths, strict=True)
            ],
        )


class _State(_Records):
    """In-graph statistics of one `fit` call on TensorFlow, and their writer."""

    def __init__(self, callback, model):
        import tensorflow as tf

        super().__init__(callback, model)
        spe = int(getattr(model, "steps_per_execution", 1) or 1)
        self.steps_per_execution = spe
        # Room for the records of several executions, in case the schedule
        # of reads below underestimates the optimizer steps per batch.
        self.buffer_size = min(max(2 * spe, 16), _MAX_BUFFERED_RECORDS)
        self.batch_ends = 0
        self.next_read = 1
        self.last_seen = None
        self.written = 0
        self.hist_written = 0
        self.lost_warned = False
        n = len(self.variables)
        # One record: n x (variance, mean, norm, nonfinite), then the
        # optimizer step, the kind of record and the skipped-step count.
        # float64 keeps steps exact up to 2**53.
        on_read = dict(
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        # Created in the model's strategy scope so that each replica writes
        # its (identical, all-reduced) copy without a merge call; plain
        # `tf.Variable`s, not tracked by the model, so saving is unaffected.
        with model.distribute_strategy.scope():
            # Row 0 is a header: number of records, of histograms, and of
            # skipped steps so far. Rows 1.. are a ring buffer of records.
            # One variable, so that one read per batch end tells what is new.
            self.buf = tf.Variable(
                tf.tensor_scatter_nd_update(
                    tf.zeros([self.buffer_size + 1, self.width], tf.float64),
                    [[0, 3]],
                    tf.constant([-1.0], tf.float64),
                ),
                name="winit_records",
                **on_read,
            )
            if self.histogram_freq:
                self.hist = tf.Variable(
                    tf.zeros([n, _HISTOGRAM_BINS, 3]),
                    name="winit_histograms",
                    **on_read,
                )
                self.hist_step = tf.Variable(
                    tf.constant(0, tf.int64), name="winit_hist_step", **on_read
                )

    # In the training graph -------------------------------------------

    def record(self, grads, trainable_variables):
        """Computes and stores the statistics (traced into `train_step`)."""
        import tensorflow as tf

        # Sparse gradients (`tf.IndexedSlices`) as dense tensors.
        grads = [None if g is None else tf.convert_to_tensor(g) for g in grads]
        rows, grads, step, is_update, finite = self.applied_gradients(
            grads, self._applied_variables(trainable_variables)
        )
        if not rows:
            return
        if finite is None:
            finite = tf.constant(True)
        if is_update is None:
            is_update = tf.constant(True)

        # tf.distribute: each replica holds its share of the gradient; sum
        # them (outside any tf.cond: an all-reduce may need a merge call).
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)

        step = tf.cast(step, tf.int64)
        skipped = tf.logical_and(is_update, tf.logical_not(finite))
        due = tf.logical_and(is_update, finite)
        if self.update_freq > 1:
            due = tf.logical_and(due, step % self.update_freq == 0)
        n = len(self.variables)
        all_rows = rows == list(range(n))

        def store():
            stats = _grad_stats(grads)
            if not all_rows:
                stats = tf.scatter_nd(
                    tf.constant(rows)[:, None], stats, [n, _NUM_STATS]
                )
            buf = self.buf.read_value()
            count = tf.cast(buf[0, 0], tf.int64)
            skipped_total = buf[0, 2] + tf.cast(skipped, tf.float64)
            kind = tf.where(skipped, _KIND_SKIPPED, _KIND_APPLIED)
            record = tf.concat(
                [
                    tf.cast(tf.reshape(stats, [-1]), tf.float64),
                    tf.cast(
                        tf.stack([step, tf.cast(kind, tf.int64)]), tf.float64
                    ),
                    skipped_total[None],
                ],
                0,
            )
            header = tf.concat(
                [
                    tf.stack([buf[0, 0] + 1.0, buf[0, 1], skipped_total]),
                    buf[0, 3:],
                ],
                0,
            )
            slot = tf.cast(count % self.buffer_size + 1, tf.int32)
            self.buf.assign(
                tf.tensor_scatter_nd_update(
                    buf, tf.stack([[0], slot[None]]), tf.stack([header, record])
                )
            )
            return tf.constant(True)

        if (
            self.update_freq == 1
            and not self.is_loss_scaled
            and not self.inner.gradient_accumulation_steps
        ):
            store()  # Every call is recorded: no tf.cond.
        else:
            _cond(tf.logical_or(due, skipped), store)
        # The latest step seen, every step: lets the Python side skip
        # reading the variables on batch ends that cannot hold a record
        # (with update_freq=1, every batch end is read anyway).
        if self.update_freq > 1:
            self.buf.assign(
                tf.tensor_scatter_nd_update(
                    self.buf.read_value(),
                    [[0, 3]],
                    tf.cast(step, tf.float64)[None],
                )
            )

        if self.histogram_freq:

            def store_histograms():
                hist = tf.stack([_histogram(g) for g in grads])
                if not all_rows:
                    hist = tf.scatter_nd(
                        tf.constant(rows)[:, None],
                        hist,
                        [n, _HISTOGRAM_BINS, 3],
                    )
                self.hist.assign(hist)
                self.hist_step.assign(step)
                self.buf.assign(
                    tf.tensor_scatter_nd_add(
                        self.buf.read_value(),
                        [[0, 1]],
                        tf.constant([1.0], tf.float64),
                    )
                )
                return tf.constant(True)

            hist_due = tf.logical_and(
                tf.logical_and(is_update, finite),
                step % self.histogram_freq == 0,
            )
            _cond(hist_due, store_histograms)

    def write_pending(self, force=False):
        """Writes the records and histograms stored since the last read.

        Reading the variables costs more than the rest of a batch end, so
        it is skipped on batch ends that cannot hold a new record (see
        `_schedule`), unless `force`.
        """
        if not force:
            self.batch_ends += 1
            if self.batch_ends < self.next_read:
                return
        buf = self.buf.numpy()
        count = int(buf[0, 0])
        if count > self.written:
            start = max(self.written, count - self.buffer_size)
            if start > self.written and not self.lost_warned:
                self.lost_warned = True
                warnings.warn(
                    f"GradientVarianceLogger dropped {start - self.written} "
                    "records stored between two batch ends.",
                    stacklevel=3,
                )
            for i in range(start, count):
                self._write_record(buf[i % self.buffer_size + 1])
            self.written = count
        if self.histogram_freq and int(buf[0, 1]) > self.hist_written:
            self.hist_written = int(buf[0, 1])
            self._write_histograms()
        latest = int(buf[0, 3])
        if self.weights_freq:
            self.write_weights()
        self._schedule(latest)

    def _schedule(self, latest):
        """Sets the next batch end that may hold a record after `latest`.

        `latest` is the last optimizer step seen (-1: none yet). Loss-scaled
        training records skipped steps at any time: read every batch end.
        Otherwise, at most `rate` optimizer steps pass per batch end:
        `steps_per_execution`, or more if observed (several `apply` calls per
        step in a custom `train_step`).
        """
        if self.is_loss_scaled or latest < 0:
            self.next_read = self.batch_ends + 1
            return
        rate = self.steps_per_execution
        if self.last_seen is not None:
            seen_step, seen_batch = self.last_seen
            if self.batch_ends > seen_batch:
                rate = max(
                    rate, (latest - seen_step) / (self.batch_ends - seen_batch)
                )
        self.last_seen = (latest, self.batch_ends)
        due = min(
            (latest // f + 1) * f
            for f in (self.update_freq, self.histogram_freq, self.weights_freq)
            if f
        )
        # Steps latest+1 .. due-1 cannot be recorded.
        skip = int((due - latest - 1) // rate)
        self.next_read = self.batch_ends + max(1, skip)

    def _write_histograms(self):
        hist = self.hist.numpy().astype("float64")
        step = int(self.hist_step.numpy())
        self._write_histogram_table(step, hist, sorted(self.present))


def _numpy(value):
    """NumPy value of a variable or tensor of any backend."""
    return keras.ops.convert_to_numpy(keras.ops.convert_to_tensor(value))


def _varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _scalar_head(tag, metadata):
    """Serialized `Summary.value` entry for a float32 scalar, minus the value.

    Protobuf wire format: `Summary.value` (field 1) holds a `Summary.Value`
    with `tag` (field 1), optionally `metadata` (field 9) and `tensor`
    (field 8): a `TensorProto` with `dtype` (field 1) = DT_FLOAT (1) and a
    packed `float_val` (field 5) of 4 bytes, which the caller appends.
    """
    tag = tag.encode("utf-8")
    body = b"\x0a" + _varint(len(tag)) + tag
    if metadata:
        body += b"\x4a" + _varint(len(metadata)) + metadata
    body += b"\x42\x08\x08\x01\x2a\x04"
    return b"\x0a" + _varint(len(body) + 4) + body


def _cond(pred, true_fn):
    """`tf.cond(pred, true_fn, no-op)` that costs ~nothing when not taken.

    Inside a `tf.function`, TensorFlow lowers `tf.cond` to Switch/Merge ops,
    so the executor visits every op of the branch not taken, on every
    step. Keeping the functional `If` op runs only the taken branch.
    """
    import tensorflow as tf

    out = tf.cond(pred, true_fn, lambda: tf.constant(False))
    if not tf.executing_eagerly():
        from tensorflow.core.framework import attr_value_pb2

        op = out.op
        while op.type not in ("If", "StatelessIf") and op.inputs:
            op = op.inputs[0].op
        if op.type in ("If", "StatelessIf"):
            op._set_attr(
                "_lower_using_switch_merge", attr_value_pb2.AttrValue(b=False)
            )
    return out


def _grad_stats(grads):
    """`[len(grads), 4]`: variance, mean, L2 norm and non-finite count.

    Three passes over each gradient: its sum, the centred values and their
    dot product (`sum(g**2) = sum((g - mean)**2) + n * mean**2`, both terms
    non-negative). Non-finite entries are only counted, in one `tf.cond`,
    when some sum is not finite.
    """
    import tensorflow as tf

    means, variances, norms, sums = [], [], [], []
    for g in grads:
        size = g.shape.num_elements()
        if size is None:
            flat = tf.reshape(g, [1, -1])
            n = tf.cast(tf.size(flat), tf.float32)
        else:  # A static size saves a few ops per variable.
            flat = tf.reshape(g, [1, size])
            n = float(size)
        total = tf.reduce_sum(flat)
        mean = total / n
        centered = flat - mean
        squares = tf.reshape(
            tf.matmul(centered, centered, transpose_b=True), []
        )
        means.append(mean)
        variances.append(squares / n)
        norms.append(tf.sqrt(squares + n * tf.square(mean)))
        sums.append(total + squares)
    means, variances, norms = (
        tf.stack(means),
        tf.stack(variances),
        tf.stack(norms),
    )
    nonfinite = tf.cond(
        tf.reduce_all(tf.math.is_finite(tf.stack(sums))),
        lambda: tf.zeros([len(grads)]),
        lambda: tf.stack(
            [
                tf.reduce_sum(tf.cast(~tf.math.is_finite(g), tf.float32))
                for g in grads
            ]
        ),
    )
    return tf.stack([variances, means, norms, nonfinite], axis=1)


def _histogram(g):
    """`[bins, 3]` (left edge, right edge, count) of the finite entries."""
    import tensorflow as tf

    g = tf.reshape(g, [-1])
    finite = tf.math.is_finite(g)
    any_finite = tf.reduce_any(finite)
    low = tf.reduce_min(tf.where(finite, g, math.inf))
    high = tf.reduce_max(tf.where(finite, g, -math.inf))
    low = tf.where(any_finite, low, 0.0)
    high = tf.where(any_finite, high, 0.0)
    width = tf.maximum(high - low, 1e-12) / _HISTOGRAM_BINS
    index = tf.cast(
        tf.floor((tf.where(finite, g, low) - low) / width), tf.int32
    )
    index = tf.clip_by_value(index, 0, _HISTOGRAM_BINS - 1)
    counts = tf.math.unsorted_segment_sum(
        tf.cast(finite, tf.float32), index, _HISTOGRAM_BINS
    )
    edges = low + width * tf.range(_HISTOGRAM_BINS + 1, dtype=tf.float32)
    return tf.stack([edges[:-1], edges[1:], counts], axis=1)
