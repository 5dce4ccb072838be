"""`GradientVarianceLogger`: lifecycle, options and warning.

The statistics are computed by the backend modules of this package
(`tensorflow.py`, `jax.py`, `torch.py`, behind `records.Records`) and
written by `writer.EventWriter`.
"""

import atexit
import importlib
import numbers
import os
import warnings
import weakref
from typing import Any

import keras

from keras_winit import _checks
from keras_winit import health
from keras_winit import walker
from keras_winit.monitoring import first_batch
from keras_winit.monitoring import records as records_module
from keras_winit.monitoring import writer as writer_module

_BACKENDS = ("tensorflow", "jax", "torch")
# Optimizer methods that a train function may wrap (TensorFlow and PyTorch:
# `apply`; JAX: `stateless_apply`).
_WRAPPED_METHODS = ("apply", "stateless_apply")
# Largest frequency: steps are int32 on JAX, and `step % freq` must stay
# an integer operation on every backend.
_MAX_FREQ = 2**31 - 1
# Run directories written by a logger during a `fit`.
_active_runs: weakref.WeakValueDictionary[str, Any] = (
    weakref.WeakValueDictionary()
)
# Loggers between `on_train_begin` and their end, finished at exit.
_active_loggers: weakref.WeakSet[Any] = weakref.WeakSet()


@atexit.register
def _finish_all():
    """Writes what interrupted `fit`s left pending, at the process' exit."""
    for logger in list(_active_loggers):
        try:
            logger._finish()
        except Exception:  # noqa: BLE001 - never fail at exit
            pass


class GradientVarianceWarning(UserWarning):
    """Warning raised once when the initialization will not train.

    Decided by `health_warning` from `diagnose` on the first batch of `fit`
    and the first recorded step's gradients.
    """


class NonFiniteGradientWarning(UserWarning):
    """Warning raised once when a layer's gradient is first not finite."""


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _layer_path(variable_path):
    return variable_path.rsplit("/", 1)[0] if "/" in variable_path else ""


def check_log_dir(value):
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ValueError(
            "Argument `log_dir` must be a non-empty string or path. "
            f"Received: log_dir={value!r}"
        )
    return os.fspath(value)


def health_warning(records, kinds, step, flags=None):
    """The warning message for the first batch and the first recorded step.

    The one place where the logger decides whether to warn, with two
    inputs:

    - `flags`: the `keras_winit.diagnostics.Flag`s of `diagnose` run on
      the first batch of `fit` (`keras_winit.monitoring.first_batch`),
      before its step: the same rule as `diagnose`
      (`keras_winit.health.judge`: vanishing or exploding signal and
      gradient in plain chains, residual streams that grow, saturated or
      dead units, zero signal, non-finite values), reported one sentence
      per kind of flag with its advice. `None` or `[]`: nothing found, or
      the batch could not be taken (under a `tf.distribute` strategy).
    - `records`: `keras_winit.monitoring.records.VariableRecord`s (path,
      shape, gradient variance, gradient norm, weight norm, non-finite
      count), in forward order, of the variables that received a gradient
      at optimizer step `step`; `kinds` maps variable paths to their kind
      (`keras_winit.walker.variable_kinds`). Judged by
      `keras_winit.health.gradient_warnings`: kernels judged by their
      effective step `||g|| / ||w||` (also behind normalization), biases
      never (attention's key bias has an exactly-zero gradient by
      construction), an all-zero init reported, zero-initialized branch
      ends exempt.

    Returns:
        The message, or `None` when there is nothing to warn about.
    """
    messages = health.gradient_warnings(
        [
            {
                "path": r.path,
                "kind": kinds.get(r.path, "other"),
                "grad_var": r.variance,
                "grad_norm": r.norm,
                "weight_norm": r.weight_norm,
                "nonfinite": r.nonfinite,
                "norm_follows": False,
            }
            for r in records
        ]
    )
    parts = []
    if flags:
        parts.append(
            "On the first batch of `fit` (keras_winit.diagnose's rule): "
            + first_batch.summary(flags)
        )
    if messages:
        parts.append(f"At optimizer step {step}: " + " ".join(messages))
    if not parts:
        return None
    return " ".join(parts)


def _check_backend():
    backend = keras.backend.backend()
    if backend not in _BACKENDS:
        raise RuntimeError(
            "GradientVarianceLogger supports the TensorFlow, JAX and "
            f"PyTorch backends. Received: backend={backend!r}. Set "
            "KERAS_BACKEND to one of tensorflow, jax, torch."
        )


def _is_chief(model):
    """Whether this process writes (the chief of a multi-worker cluster).

    Under `tf.distribute.MultiWorkerMirroredStrategy`, every worker computes
    the same (all-reduced) statistics; only the chief writes them, as
    Keras' `ModelCheckpoint` saves from the chief only.
    """
    if keras.backend.backend() != "tensorflow":
        return True
    strategy = getattr(model, "distribute_strategy", None)
    extended = getattr(strategy, "extended", None)
    return bool(getattr(extended, "should_checkpoint", True))


def _hook_class():
    backend = keras.backend.backend()
    name = backend if backend in ("tensorflow", "jax") else "torch"
    module = importlib.import_module(f"keras_winit.monitoring.{name}")
    return module.Hook


def remove_stale_patches(model):
    """Removes whatever an interrupted `fit` with a logger left on `model`.

    Returns:
        Whether something was removed.
    """
    removed = False
    guard = model.__dict__.get("make_train_function")
    owner = getattr(guard, "_keras_winit_owner", None)
    if owner is not None:
        logger = owner()
        if logger is not None:
            logger._finish()
        removed = True
    if records_module.unpatch(model, "make_train_function"):
        removed = True
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        for name in _WRAPPED_METHODS:
            removed = records_module.unpatch(optimizer, name) or removed
    if removed:
        model.train_function = None
    return removed


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
    receive gradients of the same size (Glorot & Bengio, 2010).

    With `warn=True`, the initialization is judged once by `diagnose`'s
    rule, and one `GradientVarianceWarning` lists what was found, each
    finding with what to do:

    - the first batch of `fit`, before its step (outside the train
      function): `keras_winit.diagnostics.diagnose(model, x, y)` with the
      model's compiled loss, so a signal or gradient that vanishes or
      explodes through plain chains of layers, a residual stream that
      grows, saturated or dead units, a zero signal or NaN/inf are seen
      as `diagnose` sees them (`keras_winit.monitoring.first_batch`; the
      model and its training are left unchanged; under a `tf.distribute`
      strategy the batch is not taken and only the gradients are judged);
    - the first recorded step's gradients
      (`keras_winit.health.gradient_warnings`): the kernels' effective
      step `||g|| / ||w||` so small that they will not learn or so large
      that they explode, every kernel zero, or kernels that get exactly
      no gradient. Biases and normalization parameters are not judged,
      and a kernel followed by normalization is judged by its effective
      step, not by its raw gradient.

    Stock `keras.applications` and keras_hub models do not warn.

    Training-health signals, at the same steps:

    - `update_ratio/<variable path>`: `||w_after - w_before|| /
      ||w_before||` of the update the optimizer really applied (after
      clipping, weight decay; 0 on a step skipped by loss scaling); about
      1e-3 per step in healthy training;
    - `grad_weight_ratio/<variable path>`: `||g|| / ||w||`;
    - `grad_summary/global_norm`: the norm of all the gradients together,
      before clipping (what `clipnorm` / `global_clipnorm` see);
    - `grad_summary/first_nonfinite_layer`: when a gradient is not finite,
      the index (in forward order) of the first layer whose gradient is
      not, and a `NonFiniteGradientWarning` (once) names that layer
      (not for the steps `LossScaleOptimizer` skips: skipping them is its
      job).

    Each signal can be turned off with `signals`. `update_ratio`, the most
    expensive one (a copy of the weights before the update and a pass over
    their difference; on TensorFlow and PyTorch it keeps one float32 copy
    of the weights during `fit`), is logged with the default signals
    (`signals=None`) only every `max(update_freq, 10)` steps (the smallest
    multiple of `update_freq` that is at least 10: steps 0, 10, 20, ... at
    `update_freq=1`); name it in `signals` to log it at every recorded
    step.

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
    The statistics need no extra forward or backward pass (the warning's
    first-batch check runs one `diagnose` pass per `fit`; `warn=False`
    skips it).

    How: the statistics are computed inside the training step, fused (the
    small variables' gradients are grouped by size and each group reduced
    as the rows of one matrix, so the number of reductions does not grow
    with the number of variables; PyTorch: one grouped `_foreach_norm`),
    only on recorded steps, by the module of
    `keras_winit.monitoring` for the backend. The callback makes `fit`'s
    train function: it wraps the optimizer's `apply` (TensorFlow,
    PyTorch) or `stateless_apply` (JAX) only while that function runs, so
    nothing stays patched when an exception or an interrupt ends `fit`. On
    TensorFlow, the statistics are stored in a ring buffer of
    non-trainable `tf.Variable`s (not tracked by the model: saving is
    unaffected), read and written from Python between steps; no summary
    op is traced, so `jit_compile=True` works and no
    `tf.summary.record_if` can drop them. On JAX, the jitted step returns
    the statistics next to the logs; they are fetched between steps,
    without waiting for the step in flight. On PyTorch, they are computed
    eagerly on recorded steps only. On every backend, records are written
    the first at once (on JAX two steps later), then in groups of
    `records.WRITE_EVERY` (128) recorded steps, or once the oldest has
    waited `records.WRITE_AFTER_SECONDS` (10 s), and at the end of each
    epoch (PyTorch: also at once when non-finite): TensorBoard shows a
    record within about 10 s. With Keras' own `train_step` (no
    loss scaling, no gradient accumulation), unrecorded steps run Keras'
    unmodified train function (TensorFlow, PyTorch) or jitted
    `train_step` (JAX), chosen in Python by the step number. Cost:
    `docs/gradient_monitoring.md#cost`.

    Steps are optimizer steps (`model.optimizer.iterations` before the
    update, starting at 0), so they do not depend on `steps_per_execution`
    or on gradient accumulation. A step skipped by `LossScaleOptimizer`
    because its gradient is not finite is not logged as values: it adds one
    to `grad_summary/skipped_steps` and logs `grad_nonfinite/...` at the
    step number that was not applied.

    Summaries are written to `log_dir/<run_name>` (default
    `log_dir/gradients`), a run of its own: `keras.callbacks.TensorBoard`
    can share the same `log_dir`. Each `fit` starts a new event file; events
    are flushed after each write and the file is closed at the end of
    training. Two loggers writing one run at once raise a `ValueError`.
    A fault of the writer (disk full, directory deleted or made read-only)
    does not stop training: it is reported once as a
    `keras_winit.monitoring.EventWriterWarning` (see `EventWriter`).

    Clean-up on every exit path: the optimizer is only wrapped while the
    train function runs. If `fit` ends with an exception before
    `on_train_end`, the next `fit` or `train_on_batch` of the model (with or
    without a logger) writes what is pending, closes the event file and
    restores Keras' own train function; the process' exit closes the file
    too.

    Multi-worker: under `tf.distribute.MultiWorkerMirroredStrategy`, every
    worker computes the statistics of the all-reduced (global-batch)
    gradient; only the chief writes them.

    Backends: TensorFlow, JAX and PyTorch (`set_model` raises a
    `RuntimeError` on others). On JAX, a custom `train_step` must call
    `self.optimizer.stateless_apply`; elsewhere `self.optimizer.apply`. An
    uncompiled model or an unwritable `log_dir` raise a `ValueError` in
    `on_train_begin`, before the first step. A model without variables at
    the start of `fit` (built by its first step) is logged from its second
    step. Callbacks are not serialized, so this class is not registered as
    a Keras serializable.

    Examples:

    >>> import tempfile
    >>> import keras
    >>> import numpy as np
    >>> from keras_winit.monitoring import GradientVarianceLogger
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
        update_freq: Positive integer (at most `2**31 - 1`). Log the
            gradient statistics every `update_freq` optimizer steps (steps
            0, `update_freq`, ...). Defaults to `10`.
        histogram_freq: Non-negative integer. Log gradient histograms every
            `histogram_freq` optimizer steps; `0` (default) disables them.
            Only the last histogram of one execution is kept on TensorFlow
            when `steps_per_execution > histogram_freq`.
        weights_freq: Non-negative integer. Log the variance of the weights
            every `weights_freq` optimizer steps (read after the step's
            update) and before the first step; `0` (default) disables it.
        warn: `True`, `False` or `"gradients"`. `True`: judge the first
            batch (one `diagnose` pass per `fit`) and the first recorded
            step, and warn (once) when the model will not train, as
            above. `"gradients"`: judge the first recorded step's
            gradients only (no extra pass; on JAX the first pass of a
            process compiles every op, see docs/gradient_monitoring.md).
            `False` skips both. Defaults to `True`.
        run_name: Name of the run, the subdirectory of `log_dir` that
            receives the summaries (not `.` or `..`). Defaults to
            `"gradients"`.
        signals: Collection of the signals to log, names among
            `"grad_variance"`, `"grad_mean"`, `"grad_norm"`,
            `"grad_nonfinite"`, `"update_ratio"`, `"grad_weight_ratio"`,
            `"global_norm"` and `"first_nonfinite_layer"`; `None` (default)
            logs all, `update_ratio` every `max(update_freq, 10)` steps
            (rounded up to a multiple of `update_freq`); a collection logs
            each named signal at every recorded step.
            `grad_summary/log10_variance_ratio` (and the warning) and
            `grad_summary/skipped_steps` are always logged. The signals
            cost only on recorded steps; `update_ratio` costs the most (a
            copy of the weights before the update and their difference
            after it: +10% to +20% of a step on the project's MLP when
            logged every step). Measurements:
            `docs/gradient_monitoring.md#cost`.

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
        warn=True,
        run_name="gradients",
        signals=None,
    ):
        super().__init__()
        log_dir = check_log_dir(log_dir)
        if not _is_int(update_freq) or not 1 <= update_freq <= _MAX_FREQ:
            raise ValueError(
                "Argument `update_freq` must be a positive integer. "
                f"Received: update_freq={update_freq!r}"
                + _too_large(update_freq)
            )
        for name, value in (
            ("histogram_freq", histogram_freq),
            ("weights_freq", weights_freq),
        ):
            if not _is_int(value) or not 0 <= value <= _MAX_FREQ:
                raise ValueError(
                    f"Argument `{name}` must be a non-negative integer. "
                    f"Received: {name}={value!r}" + _too_large(value)
                )
        if not isinstance(warn, bool) and warn != "gradients":
            raise ValueError(
                'Argument `warn` must be True, False or "gradients". '
                f"Received: warn={warn!r}"
            )
        _checks.run_name(run_name)
        self.signals_given = signals is not None
        signals = _check_signals(signals)
        self.log_dir = log_dir
        self.update_freq = int(update_freq)
        self.histogram_freq = int(histogram_freq)
        self.weights_freq = int(weights_freq)
        self.warn = warn
        self._judged = False
        self._probed = False
        self._probe_flags = None
        self._probe_skipped = None
        self._kinds = None
        self._pending_judgement = None
        self._pending_warnings = []
        self.run_name = run_name
        self.signals = signals
        self._warned_nonfinite = False
        self._hook = None
        self._writer = None
        self._model_ref = None

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

    # Checks before the first step -------------------------------------

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

    def _claim_run_dir(self):
        key = os.path.realpath(self.run_dir)
        other = _active_runs.get(key)
        if other is not None and other is not self and other._hook is not None:
            raise ValueError(
                "Another GradientVarianceLogger is writing to "
                f"{self.run_dir!r} during a `fit`: two loggers would "
                "interleave their steps in one run. Give each its own "
                f"`run_name`. Received: log_dir={self.log_dir!r}, "
                f"run_name={self.run_name!r}"
            )
        _active_runs[key] = self

    # Training hooks -----------------------------------------------------

    def on_train_begin(self, logs=None):
        _check_backend()
        self._check_model()
        model = self.model
        # Left over by a `fit` that ended with an exception.
        self._finish()
        guard = model.__dict__.get("make_train_function")
        other = getattr(guard, "_keras_winit_owner", lambda: None)()
        if other is not None and other is not self:
            # Both are in this `fit`, which this error ends.
            other._finish()
            raise ValueError(
                "Another GradientVarianceLogger already monitors this `fit` "
                f"of model {model.name!r} (writing to {other.run_dir!r}): "
                "pass one GradientVarianceLogger per `fit`. Received: "
                f"log_dir={self.log_dir!r}, run_name={self.run_name!r}"
            )
        remove_stale_patches(model)
        self._model_ref = weakref.ref(model)
        _active_loggers.add(self)
        if _is_chief(model):
            writer_module.check_writable(
                self.run_dir, "GradientVarianceLogger", self.log_dir
            )
            self._claim_run_dir()
            self._writer = writer_module.EventWriter(self.run_dir)
        else:
            # Another worker of the cluster writes the run.
            self._writer = writer_module.NullWriter()
        self._install_guard(model)
        if not model.trainable_variables:
            # Built by its first step (e.g. no `Input`): that step runs
            # Keras' own train function, the next ones are logged.
            self._defer(model)
            return
        self._start(model)

    def _start(self, model):
        if not model.trainable_variables:
            raise ValueError(
                "GradientVarianceLogger found no trainable variables in "
                f"model {model.name!r}: there is no gradient to log. Give "
                "the model trainable weights."
            )
        hook = _hook_class()(self, model, self._writer)
        self._hook = hook
        train_function = hook.install()
        hook.sync_step()
        owner = weakref.ref(self)

        def guarded(*args, **kwargs):
            logger = owner()
            if logger is None or logger._hook is not hook:
                # Left by a `fit` that ended without `on_train_end`.
                remove_stale_patches(model)
                model.make_train_function()
                return model.train_function(*args, **kwargs)
            if logger.warn is True and not logger._probed:
                args = logger._check_first_batch(model, args)
            return train_function(*args, **kwargs)

        model.train_function = guarded
        if self.weights_freq:
            hook.write_weights(force=True)

    def _defer(self, model):
        type(model).make_train_function(model, force=True)
        keras_function = model.train_function
        owner = weakref.ref(self)

        def first_step(*args, **kwargs):
            out = keras_function(*args, **kwargs)
            logger = owner()
            if logger is not None and logger._writer is not None:
                logger._start(model)
            return out

        model.train_function = first_step

    def _install_guard(self, model):
        """Detects a new `fit` after one that ended with an exception.

        Every `fit` (and `train_on_batch`) calls `model.make_train_function`
        before anything else. While this logger's `fit` runs, that call
        means the `fit` ended without `on_train_end`: the guard finishes
        the logger (writes, closes) and restores Keras' train function.
        """
        original = type(model).make_train_function
        owner = weakref.ref(self)

        def make_train_function(force=False):
            logger = owner()
            if logger is not None:
                logger._finish()
            remove_stale_patches(model)
            return original(model, force=True)

        setattr(make_train_function, "_keras_winit_owner", owner)  # noqa: B010
        setattr(make_train_function, "_keras_winit_original", None)  # noqa: B010
        model.__dict__["make_train_function"] = make_train_function

    def on_train_batch_end(self, batch, logs=None):
        if self._hook is not None:
            self._hook.write_pending()
        if keras.backend.backend() != "jax":  # JAX: may run on a thread.
            self._emit_warnings()

    def on_epoch_end(self, epoch, logs=None):
        if self._hook is not None:
            self._hook.write_pending(force=True)
            self._hook.sync_step()
        if self._writer is not None:
            self._writer.flush()
        self._emit_warnings()

    def on_train_end(self, logs=None):
        self._finish()

    def _finish(self):
        """Writes what is pending and restores the model (idempotent)."""
        _active_loggers.discard(self)
        hook, self._hook = self._hook, None
        writer, self._writer = self._writer, None
        model = self._model_ref() if self._model_ref is not None else None
        try:
            if hook is not None:
                hook.close()
            self._emit_warnings(final=True)
        finally:
            if model is not None:
                guard = model.__dict__.get("make_train_function")
                if getattr(guard, "_keras_winit_owner", None) is not None:
                    if guard._keras_winit_owner() is self:
                        del model.__dict__["make_train_function"]
                        # The next `fit` re-makes Keras' own.
                        model.train_function = None
            if writer is not None:
                writer.close()

    def _nonfinite(self, step, layer, path):
        """Warns once, naming the first layer with a non-finite gradient."""
        if self._warned_nonfinite:
            return
        self._warned_nonfinite = True
        self._pending_warnings.append(
            (
                f"Non-finite gradient at optimizer step {step}: the first "
                f"layer (in forward order) with a NaN or inf gradient is "
                f"'{layer}' ('{path}'). See grad_nonfinite/... and "
                "grad_summary/first_nonfinite_layer.",
                NonFiniteGradientWarning,
            )
        )

    def _check_first_batch(self, model, args):
        """Judges the model on the first batch by `diagnose`'s rule.

        Runs once, before the step of the train function's first call,
        outside it (`keras_winit.monitoring.first_batch`); returns the
        arguments to call it with (the batch put back). When the batch
        cannot be taken, or the probe fails, only the gradients are
        judged: training never stops for it.
        """
        self._probed = True
        try:
            data, args = first_batch.take(model, args)
        except Exception as e:  # noqa: BLE001 - never stop training
            self._probe_skipped = f"batch not taken: {e!r}"
            return args
        if data is None:
            self._probe_skipped = "batch not taken (distributed or empty)"
            return args
        state = args[0] if keras.backend.backend() == "jax" else None
        try:
            with warnings.catch_warnings():
                # The probe's own pass, not the user's training.
                warnings.simplefilter("ignore")
                self._probe_flags = first_batch.check(model, data, state)
        except Exception as e:  # noqa: BLE001 - never stop training
            self._probe_skipped = f"probe failed: {e!r}"
        return args

    def _check_records(self, step, records):
        """Judges the first recorded step, as decided by `health_warning`.

        Only the initialization is judged: late in training, small
        gradients mean convergence, not a broken init.
        """
        if not self.warn or self._judged or not records:
            return
        self._judged = True
        self._pending_judgement = (step, records)

    def _emit_warnings(self, final=False):
        """Judges the first records and raises the warnings found so far.

        Called between steps, outside the train function (records may
        arrive inside it, e.g. on JAX): a warning turned into an error by
        the user's filters then cannot interrupt a step whose state was
        already donated, and the model's structure is read while no step
        runs. The first batch's flags wait for the first recorded step's
        records (one message), or for the end of `fit` (`final`).
        """
        judgement = self._pending_judgement
        if judgement is None and not self._pending_warnings and not final:
            return  # Most batch ends: nothing to do.
        if judgement is None and final and self._probe_flags:
            judgement = (None, [])
        if judgement is not None and self.model is not None:
            step, records = judgement
            self._pending_judgement = None
            if self._kinds is None:
                self._kinds = walker.variable_kinds(self.model)
            flags, self._probe_flags = self._probe_flags, None
            message = health_warning(records, self._kinds, step, flags)
            if message is not None:
                self._pending_warnings.append(
                    (message, GradientVarianceWarning)
                )
        pending, self._pending_warnings = self._pending_warnings, []
        for message, category in pending:
            warnings.warn(message, category, stacklevel=3)


def _check_signals(signals):
    """`signals` as a tuple of names of `records.SIGNALS` (all if None)."""
    if signals is None:
        return records_module.SIGNALS
    if isinstance(signals, (str, bytes)) or not hasattr(signals, "__iter__"):
        raise ValueError(
            "Argument `signals` must be a collection of names among "
            f"{records_module.SIGNALS}, or None. Received: signals={signals!r}"
        )
    names = list(signals)
    unknown = [
        n
        for n in names
        if not isinstance(n, str) or n not in records_module.SIGNALS
    ]
    if unknown:
        raise ValueError(
            f"Invalid `signals` argument: {signals!r}. Unknown: {unknown!r}. "
            f"Expected names among {records_module.SIGNALS}."
        )
    return tuple(n for n in records_module.SIGNALS if n in names)


def _too_large(value):
    if _is_int(value) and value > _MAX_FREQ:
        return f" (at most {_MAX_FREQ})"
    return ""
