"""Callbacks that monitor how well an initialization trains.

`GradientVarianceLogger` logs, during `model.fit`, per-layer statistics of
the gradients that the optimizer really applies, to TensorBoard.
"""

import math
import numbers
import os
import warnings

import keras

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
    No extra forward or backward pass is run: the callback wraps
    `model.optimizer.apply` during `fit`, computes the statistics inside the
    training graph (gated by `tf.cond`, so the other steps cost almost
    nothing) and stores them in non-trainable `tf.Variable`s, which are
    written to TensorBoard between steps. This works with
    `jit_compile=True`, since no summary op is compiled.

    Steps are optimizer steps (`model.optimizer.iterations` before the
    update, starting at 0), so they do not depend on `steps_per_execution`
    or on gradient accumulation. A step skipped by `LossScaleOptimizer`
    because its gradient is not finite is not logged as values: it adds one
    to `grad_summary/skipped_steps` and logs `grad_nonfinite/...` at the
    step number that was not applied. With `steps_per_execution > 1`, all
    recorded steps of one execution are kept and written after it.

    Summaries are written to `log_dir/<run_name>` (default
    `log_dir/gradients`), a run of its own: `keras.callbacks.TensorBoard`
    can share the same `log_dir`, and TensorBoard does not read two event
    files written at once into one directory reliably. Only the TensorFlow
    backend is supported. Callbacks are not serialized, so this class is
    not registered as a Keras serializable.

    Examples:

    >>> import numpy as np
    >>> import tempfile
    >>> model = keras.Sequential([
    ...     keras.Input((8,)),
    ...     keras.layers.Dense(16, activation="tanh"),
    ...     keras.layers.Dense(1),
    ... ])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> logger = keras_winit.GradientVarianceLogger(
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
        if (
            not isinstance(run_name, str)
            or not run_name
            or "/" in run_name
            or "\\" in run_name
        ):
            raise ValueError(
                "Argument `run_name` must be a non-empty name without path "
                f"separators. Received: run_name={run_name!r}"
            )
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

    def _check_log_dir(self):
        import tensorflow as tf

        run_dir = self.run_dir
        try:
            tf.io.gfile.makedirs(run_dir)
            if "://" not in run_dir and not os.access(run_dir, os.W_OK):
                raise PermissionError(f"Permission denied: {run_dir!r}")
        except (OSError, tf.errors.OpError) as e:
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
        self._check_log_dir()
        import tensorflow as tf

        model = self.model
        self._unwrap()
        self._writer = tf.summary.create_file_writer(self.run_dir)
        self._state = _State(self, model)
        optimizer = model.optimizer
        original = optimizer.__dict__.get("apply")
        state = self._state

        def apply(grads, trainable_variables=None):
            state.record(grads, trainable_variables)
            if original is not None:
                return original(grads, trainable_variables)
            return type(optimizer).apply(optimizer, grads, trainable_variables)

        apply._keras_winit_original = original
        optimizer.apply = apply
        self._optimizer = optimizer
        # `fit` made the train function before `on_train_begin`: re-trace it
        # so that it calls the wrapper (also after an earlier `fit`).
        model.make_train_function(force=True)
        if self.weights_freq:
            self._state.write_weights(force=True)

    def on_train_batch_end(self, batch, logs=None):
        if self._state is not None:
            self._write_pending()

    def on_epoch_end(self, epoch, logs=None):
        if self._state is not None:
            self._write_pending()
            self._writer.flush()

    def on_train_end(self, logs=None):
        if self._state is None:
            return
        self._write_pending()
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
        apply = optimizer.__dict__.get("apply")
        if apply is not None and hasattr(apply, "_keras_winit_original"):
            original = apply._keras_winit_original
            if original is None:
                del optimizer.apply
            else:
                optimizer.apply = original
        self._optimizer = None

    def _write_pending(self):
        info = self._state.write_pending()
        if self.weights_freq:
            self._state.write_weights()
        if info is None or self.warn_log10_ratio is None or self._warned:
            return
        ratio, i_max, i_min, step = info
        if ratio > self.warn_log10_ratio:
            self._warned = True
            paths = self._state.paths
            variances = self._state.last_variances
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


def _check_backend():
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            "GradientVarianceLogger only supports the TensorFlow backend. "
            f"Received: backend={backend!r}. Set KERAS_BACKEND=tensorflow."
        )


class _State:
    """Graph-side statistics and their writer for one `fit` call."""

    def __init__(self, callback, model):
        import tensorflow as tf

        self.callback = callback
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
        self.ratio_rows = kernels or list(range(len(self.variables)))
        self.present = set()
        self.last_variances = None
        spe = int(getattr(model, "steps_per_execution", 1) or 1)
        self.buffer_size = max(1, min(spe, _MAX_BUFFERED_RECORDS))
        self.update_freq = callback.update_freq
        self.histogram_freq = callback.histogram_freq
        self.weights_freq = callback.weights_freq
        self.written = 0
        self.hist_written = 0
        self.weights_written_at = None
        self.lost_warned = False
        n = len(self.variables)
        b = self.buffer_size
        on_read = dict(
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        # Created in the model's strategy scope, so each replica can write
        # its (identical, all-reduced) copy; not tracked by the model.
        with model.distribute_strategy.scope():
            self.buf = tf.Variable(
                tf.zeros([b, n, _NUM_STATS]), name="winit_stats", **on_read
            )
            self.buf_step = tf.Variable(
                tf.zeros([b], tf.int64), name="winit_steps", **on_read
            )
            self.buf_kind = tf.Variable(
                tf.zeros([b], tf.int32), name="winit_kinds", **on_read
            )
            self.count = tf.Variable(
                tf.constant(0, tf.int64), name="winit_count", **on_read
            )
            self.skipped = tf.Variable(
                tf.constant(0, tf.int64), name="winit_skipped", **on_read
            )
            if self.histogram_freq:
                self.hist = tf.Variable(
                    tf.zeros([n, _HISTOGRAM_BINS, 3]),
                    name="winit_hist",
                    **on_read,
                )
                self.hist_step = tf.Variable(
                    tf.constant(0, tf.int64), name="winit_hist_step", **on_read
                )
                self.hist_count = tf.Variable(
                    tf.constant(0, tf.int64),
                    name="winit_hist_count",
                    **on_read,
                )
        self._write_fn = None
        self._hist_fn = None
        self._weights_fn = None

    # In the training graph -------------------------------------------

    def _slot(self, variable):
        i = self.index.get(id(variable))
        if i is None:
            i = self.index_by_path.get(getattr(variable, "path", None))
        return i

    def record(self, grads, trainable_variables):
        """Computes and stores the statistics (traced into `train_step`)."""
        import tensorflow as tf

        optimizer = self.optimizer
        if not optimizer.built and trainable_variables is not None:
            # What `apply` does first; needed to read its state below.
            with keras.name_scope(optimizer.name, caller=optimizer):
                optimizer.build(list(trainable_variables))
            optimizer.built = True
        if trainable_variables is None:
            trainable_variables = self.inner._trainable_variables
        pairs = []
        for g, v in zip(grads, list(trainable_variables), strict=False):
            i = self._slot(v)
            if g is None or i is None:
                continue
            if getattr(v, "overwrite_with_gradient", False):
                continue
            pairs.append((i, v, g))
        if not pairs:
            return
        self.present.update(i for i, _, _ in pairs)
        rows = [i for i, _, _ in pairs]
        grads = [
            tf.cast(tf.convert_to_tensor(g), tf.float32) for _, _, g in pairs
        ]
        optimizer, inner = self.optimizer, self.inner

        # Unscale as the optimizer does.
        if self.is_loss_scaled:
            finite = tf.reduce_all(
                tf.stack([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
            )
            scale = tf.cast(optimizer.dynamic_scale, tf.float32)
            grads = [g / scale for g in grads]
        else:
            finite = tf.constant(True)
        if inner.loss_scale_factor is not None:
            grads = [g / inner.loss_scale_factor for g in grads]

        # Gradient accumulation: the applied gradient is the mean of the
        # accumulated micro-batch gradients, on every k-th call only.
        k = inner.gradient_accumulation_steps
        if k:
            raw_iterations = tf.convert_to_tensor(inner._iterations)
            is_update = tf.equal((raw_iterations + 1) % k, 0)
            accumulators = [
                inner._accumulated_gradients[inner._get_variable_index(v)]
                for _, v, _ in pairs
            ]
            grads = [
                (g + tf.cast(tf.convert_to_tensor(a), tf.float32)) / k
                for g, a in zip(grads, accumulators, strict=True)
            ]
        else:
            is_update = tf.constant(True)

        # tf.distribute: each replica holds its share; sum them (outside
        # the tf.cond, since an all-reduce may need a merge call).
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)

        step = tf.cast(tf.convert_to_tensor(optimizer.iterations), tf.int64)
        skipped = tf.logical_and(is_update, tf.logical_not(finite))
        if self.update_freq == 1:
            due = is_update
        else:
            due = tf.logical_and(is_update, step % self.update_freq == 0)
        due = tf.logical_and(due, finite)
        n = len(self.variables)

        def store():
            stats = tf.stack([_grad_stats(g) for g in grads])
            if len(rows) < n or rows != list(range(n)):
                stats = tf.scatter_nd(
                    tf.constant(rows)[:, None], stats, [n, _NUM_STATS]
                )
            count = tf.convert_to_tensor(self.count)
            slot = tf.cast(count % self.buffer_size, tf.int32)[None, None]
            self.buf.assign(
                tf.tensor_scatter_nd_update(
                    tf.convert_to_tensor(self.buf), slot, stats[None]
                )
            )
            self.buf_step.assign(
                tf.tensor_scatter_nd_update(
                    tf.convert_to_tensor(self.buf_step), slot, step[None]
                )
            )
            kind = tf.where(skipped, _KIND_SKIPPED, _KIND_APPLIED)
            self.buf_kind.assign(
                tf.tensor_scatter_nd_update(
                    tf.convert_to_tensor(self.buf_kind), slot, kind[None]
                )
            )
            self.skipped.assign_add(tf.cast(skipped, tf.int64))
            self.count.assign_add(1)
            return tf.constant(True)

        tf.cond(tf.logical_or(due, skipped), store, lambda: tf.constant(False))

        if self.histogram_freq:

            def store_histograms():
                hist = tf.stack([_histogram(g) for g in grads])
                if len(rows) < n or rows != list(range(n)):
                    hist = tf.scatter_nd(
                        tf.constant(rows)[:, None],
                        hist,
                        [n, _HISTOGRAM_BINS, 3],
                    )
                self.hist.assign(hist)
                self.hist_step.assign(step)
                self.hist_count.assign_add(1)
                return tf.constant(True)

            hist_due = tf.logical_and(
                tf.logical_and(is_update, finite),
                step % self.histogram_freq == 0,
            )
            tf.cond(hist_due, store_histograms, lambda: tf.constant(False))

    # Between steps ----------------------------------------------------

    def _build_write_fn(self):
        import tensorflow as tf

        present = sorted(self.present)
        paths = self.paths
        ratio_rows = [
            i for i in self.ratio_rows if i in self.present
        ] or present
        writer = self.writer
        b = self.buffer_size
        buf, buf_step, buf_kind = self.buf, self.buf_step, self.buf_kind
        skipped = self.skipped

        def write_values(stats, step):
            for i in present:
                p = paths[i]
                _scalar(f"grad_variance/{p}", stats[i, 0], step=step)
                _scalar(f"grad_mean/{p}", stats[i, 1], step=step)
                _scalar(f"grad_norm/{p}", stats[i, 2], step=step)
                _scalar(f"grad_nonfinite/{p}", stats[i, 3], step=step)
            variances = tf.maximum(
                tf.gather(stats[:, _VARIANCE], ratio_rows), _VARIANCE_FLOOR
            )
            ratio = (
                tf.math.log(tf.reduce_max(variances))
                - tf.math.log(tf.reduce_min(variances))
            ) / math.log(10.0)
            _scalar("grad_summary/log10_variance_ratio", ratio, step=step)
            return tf.stack(
                [
                    ratio,
                    tf.cast(tf.argmax(variances), tf.float32),
                    tf.cast(tf.argmin(variances), tf.float32),
                ]
            )

        def write_skipped(stats, step):
            for i in present:
                _scalar(f"grad_nonfinite/{paths[i]}", stats[i, 3], step=step)
            _scalar(
                "grad_summary/skipped_steps", skipped.read_value(), step=step
            )
            return tf.constant([math.nan, 0.0, 0.0])

        @tf.function(autograph=False)
        def write(start, end):
            with writer.as_default(), tf.summary.record_if(True):

                def body(i, info, last_step):
                    slot = i % b
                    stats = buf.read_value()[slot]
                    step = buf_step.read_value()[slot]
                    is_applied = tf.equal(
                        buf_kind.read_value()[slot], _KIND_APPLIED
                    )
                    new = tf.cond(
                        is_applied,
                        lambda: write_values(stats, step),
                        lambda: write_skipped(stats, step),
                    )
                    info = tf.where(is_applied, new, info)
                    last_step = tf.where(is_applied, step, last_step)
                    return i + 1, info, last_step

                _, info, last_step = tf.while_loop(
                    lambda i, info, last_step: i < end,
                    body,
                    (
                        start,
                        tf.constant([math.nan, 0.0, 0.0]),
                        tf.constant(-1, tf.int64),
                    ),
                )
            variances = tf.reshape(
                buf.read_value()[(end - 1) % b][:, _VARIANCE], [-1]
            )
            return info, last_step, variances

        self._write_fn = write

    def write_pending(self):
        """Writes the records stored since the last call.

        Returns `(ratio, i_max, i_min, step)` of the last applied record
        written (row indices into the variables), or `None`.
        """
        import tensorflow as tf

        count = int(self.count.numpy())
        info = None
        if count > self.written:
            if self._write_fn is None:
                self._build_write_fn()
            start = max(self.written, count - self.buffer_size)
            if start > self.written and not self.lost_warned:
                self.lost_warned = True
                warnings.warn(
                    f"GradientVarianceLogger dropped {start - self.written} "
                    "records written between two batch ends.",
                    stacklevel=3,
                )
            values, last_step, variances = self._write_fn(
                tf.constant(start, tf.int64), tf.constant(count, tf.int64)
            )
            self.written = count
            values = values.numpy()
            if not math.isnan(values[0]):
                ratio_rows = [
                    i for i in self.ratio_rows if i in self.present
                ] or sorted(self.present)
                self.last_variances = variances.numpy()
                info = (
                    float(values[0]),
                    ratio_rows[int(values[1])],
                    ratio_rows[int(values[2])],
                    int(last_step.numpy()),
                )
        if self.histogram_freq:
            self._write_histograms()
        return info

    def _write_histograms(self):
        import tensorflow as tf

        count = int(self.hist_count.numpy())
        if count <= self.hist_written:
            return
        self.hist_written = count
        if self._hist_fn is None:
            from tensorboard.plugins.histogram import metadata

            present = sorted(self.present)
            paths = self.paths
            writer = self.writer
            hist, hist_step = self.hist, self.hist_step
            meta = {
                i: metadata.create_summary_metadata(
                    display_name=f"grad_histogram/{paths[i]}", description=""
                )
                for i in present
            }

            @tf.function(autograph=False)
            def write_histograms():
                values = hist.read_value()
                step = hist_step.read_value()
                with writer.as_default(), tf.summary.record_if(True):
                    for i in present:
                        tf.summary.write(
                            f"grad_histogram/{paths[i]}",
                            tensor=values[i],
                            step=step,
                            metadata=meta[i],
                        )

            self._hist_fn = write_histograms
        self._hist_fn()

    def write_weights(self, force=False):
        import tensorflow as tf

        step = int(keras.ops.convert_to_numpy(self.optimizer.iterations))
        freq = self.weights_freq
        mark = step // freq
        # Logged at the first batch end at or after each multiple of freq.
        if not force and mark == self.weights_written_at:
            return
        self.weights_written_at = mark
        if self._weights_fn is None:
            variables = self.variables
            paths = self.paths
            writer = self.writer

            @tf.function(autograph=False)
            def write_weights(step):
                with writer.as_default(), tf.summary.record_if(True):
                    for v, p in zip(variables, paths, strict=True):
                        w = tf.cast(tf.convert_to_tensor(v), tf.float32)
                        _scalar(
                            f"weight_variance/{p}",
                            tf.math.reduce_variance(w),
                            step=step,
                        )

            self._weights_fn = write_weights
        self._weights_fn(tf.constant(step, tf.int64))


def _scalar(tag, value, step):
    """Writes a scalar summary under exactly `tag` (no name scope prefix)."""
    import tensorflow as tf
    from tensorboard.plugins.scalar import metadata

    return tf.summary.write(
        tag,
        tensor=tf.cast(value, tf.float32),
        step=step,
        metadata=metadata.create_summary_metadata(
            display_name=tag, description=""
        ),
    )


def _grad_stats(g):
    """Variance, mean, L2 norm and non-finite count of a float32 tensor."""
    import tensorflow as tf

    mean = tf.reduce_mean(g)
    variance = tf.reduce_mean(tf.square(g - mean))
    norm = tf.sqrt(tf.reduce_sum(tf.square(g)))
    nonfinite = tf.reduce_sum(tf.cast(~tf.math.is_finite(g), tf.float32))
    return tf.stack([variance, mean, norm, nonfinite])


def _histogram(g):
    """`[bins, 3]` (left edge, right edge, count) of the finite entries."""
    import tensorflow as tf

    g = tf.reshape(g, [-1])
    finite = tf.math.is_finite(g)
    low = tf.reduce_min(tf.where(finite, g, math.inf))
    high = tf.reduce_max(tf.where(finite, g, -math.inf))
    low = tf.where(tf.reduce_any(finite), low, 0.0)
    high = tf.where(tf.reduce_any(finite), high, 0.0)
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
