"""JAX and PyTorch hooks of `keras_winit.callbacks.GradientVarianceLogger`.

The TensorFlow implementation lives in `keras_winit.callbacks` (`_State`):
statistics computed in the training graph, kept in `tf.Variable`s. Here:

- PyTorch trains eagerly: `optimizer.apply` is wrapped; on the optimizer
  steps that are recorded (a Python-level check of `optimizer.iterations`),
  the statistics are computed with torch ops and copied to the host in one
  transfer.
- JAX's train step is a pure function, traced once and jitted: the trainer
  calls `optimizer.stateless_apply(optimizer_variables, grads,
  trainable_variables)`, which is wrapped so that the trace computes the
  statistics inside a `jax.lax.cond` taken only on recorded steps, and
  hands them to the host with an unordered
  `jax.experimental.io_callback` (executed exactly once per taken branch,
  not on the other steps). The host side buffers the records and writes
  them at the next batch end; `jax.effects_barrier()` at the end of each
  epoch waits for the callbacks still in flight.

Both share, with the TensorFlow implementation, the record layout and the
event writing of `keras_winit.callbacks._Records`.
"""

import threading

import keras
import numpy as np

from keras_winit import callbacks as _callbacks
from keras_winit._event_writer import histogram_buckets


def make_hook(callback, model):
    """The hook of `callback` for the current (JAX or PyTorch) backend."""
    backend = keras.backend.backend()
    if backend == "jax":
        return _JaxHook(callback, model)
    if backend == "torch":
        return _TorchHook(callback, model)
    raise RuntimeError(  # pragma: no cover - checked by the callback
        f"No gradient hook for backend={backend!r}."
    )


class _HostHook(_callbacks._Records):
    """Records that arrive on the host, written at batch ends."""

    def __init__(self, callback, model):
        super().__init__(callback, model)
        self.pending = []
        self.pending_histograms = []
        self.skipped_total = 0
        self.lock = threading.Lock()

    # Backend-neutral part of the trace (or of the eager call) --------

    def applied_gradients(self, grads, trainable_variables):
        """The gradients as the optimizer applies them.

        Returns `(rows, grads, step, is_update, finite)`: the rows of the
        variables that receive a gradient, their float32 gradients
        (unscaled, accumulated mean on the applying step), the optimizer
        step before the update, whether this call updates the variables
        (gradient accumulation), and whether the gradients are finite
        (`LossScaleOptimizer` skips the step otherwise). Reads the
        optimizer's state through Keras variables: inside
        `stateless_apply`, under a `StatelessScope` of its variables.
        """
        ops = keras.ops
        optimizer, inner = self.optimizer, self.inner
        rows, kept = [], []
        for g, v in zip(grads, list(trainable_variables), strict=False):
            i = self._row(v)
            if g is None or i is None:
                continue
            if getattr(v, "overwrite_with_gradient", False):
                continue
            rows.append(i)
            kept.append((v, g))
        if not kept:
            return rows, [], None, None, None
        grads = [ops.cast(g, "float32") for _, g in kept]
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
                for v, _ in kept
            ]
            grads = [
                (g + ops.cast(ops.convert_to_tensor(a), "float32")) / k
                for g, a in zip(grads, accumulators, strict=True)
            ]
        step = ops.convert_to_tensor(optimizer.iterations)
        self.present.update(rows)
        return rows, grads, step, is_update, finite

    # Host side ---------------------------------------------------------

    def add_record(self, step, skipped, rows, stats):
        """Stores the statistics (`[len(rows), 4]`) of one optimizer step."""
        record = np.zeros(self.width, np.float64)
        stats = np.asarray(stats, np.float64).reshape(len(rows), 4)
        table = record[: len(self.variables) * 4].reshape(-1, 4)
        table[list(rows)] = stats
        with self.lock:
            if skipped:
                self.skipped_total += 1
            record[-3:] = (
                int(step),
                _callbacks._KIND_SKIPPED if skipped else 0,
                self.skipped_total,
            )
            self.pending.append(record)

    def add_histograms(self, step, rows, grads):
        hist = np.zeros((len(self.variables), _callbacks._HISTOGRAM_BINS, 3))
        for i, g in zip(rows, grads, strict=True):
            g = np.asarray(g, np.float64).reshape(-1)
            hist[i] = histogram_buckets(
                g[np.isfinite(g)], _callbacks._HISTOGRAM_BINS
            )
        with self.lock:
            self.pending_histograms.append((int(step), rows, hist))

    def wait(self):
        """Waits for the statistics still being computed (JAX)."""

    def write_pending(self, force=False):
        if force:
            self.wait()
        with self.lock:
            records, self.pending = self.pending, []
            histograms, self.pending_histograms = self.pending_histograms, []
        for record in records:
            self._write_record(record)
        for step, rows, hist in histograms:
            self._write_histogram_table(step, hist, rows)
        if self.weights_freq:
            self.write_weights()


class _TorchHook(_HostHook):
    """Wraps `optimizer.apply`; statistics with torch ops, eagerly."""

    def install(self):
        _callbacks._wrap(self.optimizer, "apply", self.record)
        # The torch trainer calls `self.optimizer.apply` at each step; its
        # train function (if compiled) is rebuilt to see the wrapper.
        self.model.make_train_function(force=True)

    def record(self, grads, trainable_variables=None):
        import torch

        optimizer = self.optimizer
        if not optimizer.built and trainable_variables is not None:
            with keras.name_scope(optimizer.name, caller=optimizer):
                optimizer.build(list(trainable_variables))
            optimizer.built = True
        if trainable_variables is None:
            trainable_variables = self.inner._trainable_variables
        # Decide cheaply, before touching the gradients, whether this call
        # can be recorded: steps are known in Python (eager).
        step = int(keras.ops.convert_to_tensor(optimizer.iterations))
        k = self.inner.gradient_accumulation_steps
        if k:
            raw = int(keras.ops.convert_to_tensor(self.inner._iterations))
            if (raw + 1) % k:
                return
        due = step % self.update_freq == 0
        hist_due = bool(self.histogram_freq) and (
            step % self.histogram_freq == 0
        )
        if not (due or hist_due or self.is_loss_scaled):
            return
        with torch.no_grad():
            rows, grads, _, _, finite = self.applied_gradients(
                grads, trainable_variables
            )
            if not rows:
                return
            finite = True if finite is None else bool(finite)
            if not finite:
                self.add_record(step, True, rows, _torch_stats(grads))
                return
            if due:
                self.add_record(step, False, rows, _torch_stats(grads))
            if hist_due:
                self.add_histograms(
                    step, rows, [g.detach().cpu().numpy() for g in grads]
                )


def _torch_stats(grads):
    """`[len(grads), 4]` NumPy array: variance, mean, norm, non-finite."""
    import torch

    out = []
    for g in grads:
        flat = g.detach().reshape(-1)
        n = flat.numel()
        mean = flat.sum() / n
        centered = flat - mean
        squares = torch.dot(centered, centered)
        out.append(
            torch.stack(
                [
                    squares / n,
                    mean,
                    torch.sqrt(squares + n * mean * mean),
                    (~torch.isfinite(flat)).sum().to(flat.dtype),
                ]
            )
        )
    return torch.stack(out).cpu().numpy()


class _JaxHook(_HostHook):
    """Wraps `optimizer.stateless_apply`, traced into the jitted step."""

    def __init__(self, callback, model):
        super().__init__(callback, model)
        variables = list(self.optimizer.variables)
        # `optimizer.iterations` is computed from `_iterations` under
        # gradient accumulation: keep the index of the raw counter.
        self.iterations_index = _index_of(variables, self.inner._iterations)

    def install(self):
        _callbacks._wrap(self.optimizer, "stateless_apply", self.record)
        # `fit` made (but did not trace) the train function before
        # `on_train_begin`. JAX caches traces by function: a fresh function
        # object makes sure that this `fit` traces the wrapper, and that a
        # later `fit` without the callback does not reuse this trace.
        model = self.model
        train_step = type(model).train_step

        def fresh_train_step(state, data):
            return train_step(model, state, data)

        model.train_step = fresh_train_step
        try:
            model.make_train_function(force=True)
        finally:
            del model.train_step

    def record(self, optimizer_variables, grads, trainable_variables):
        """Traced: statistics in a `lax.cond`, sent to the host."""
        import jax
        import jax.numpy as jnp
        from jax.experimental import io_callback

        optimizer = self.optimizer
        mapping = list(
            zip(optimizer.variables, optimizer_variables, strict=True)
        )
        with keras.StatelessScope(state_mapping=mapping):
            rows, grads, step, is_update, finite = self.applied_gradients(
                grads, optimizer._trainable_variables
            )
        if not rows:
            return
        update = jnp.bool_(True) if is_update is None else is_update
        ok = update if finite is None else jnp.logical_and(update, finite)
        skipped = jnp.logical_and(update, jnp.logical_not(ok))
        due = jnp.logical_and(ok, step % self.update_freq == 0)
        rows = tuple(rows)

        def host_record(step, skipped, stats):
            self.add_record(int(step), bool(skipped), rows, stats)

        def send_record():
            io_callback(host_record, None, step, skipped, _jax_stats(grads))

        jax.lax.cond(jnp.logical_or(due, skipped), send_record, _nothing)
        if self.histogram_freq:

            def host_histograms(step, *values):
                self.add_histograms(int(step), rows, values)

            def send_histograms():
                io_callback(host_histograms, None, step, *grads)

            hist_due = jnp.logical_and(ok, step % self.histogram_freq == 0)
            jax.lax.cond(hist_due, send_histograms, _nothing)

    def wait(self):
        import jax

        jax.effects_barrier()

    def _jax_state(self):
        return getattr(self.model, "_jax_state", None)

    def _current_step(self):
        # During `fit`, the model's variables are purged: the current values
        # are in `model._jax_state`.
        state = self._jax_state()
        if state is not None:
            value = state["optimizer_variables"][self.iterations_index]
            k = self.inner.gradient_accumulation_steps
            return int(np.asarray(value)) // (k or 1)
        return super()._current_step()

    def _weight_values(self):
        state = self._jax_state()
        if state is not None:
            values = state["trainable_variables"]
            model_variables = self.model.trainable_variables
            return [
                np.asarray(values[_index_of(model_variables, v)])
                for v in self.variables
            ]
        return super()._weight_values()


def _nothing():
    return None


def _index_of(variables, variable):
    for i, v in enumerate(variables):
        if v is variable:
            return i
    raise ValueError(f"Variable {variable.path!r} not found.")


def _jax_stats(grads):
    """`[len(grads), 4]`: variance, mean, L2 norm and non-finite count."""
    import jax.numpy as jnp

    out = []
    for g in grads:
        flat = jnp.reshape(g, (-1,))
        n = flat.size
        mean = jnp.sum(flat) / n
        centered = flat - mean
        squares = jnp.dot(centered, centered)
        out.append(
            jnp.stack(
                [
                    squares / n,
                    mean,
                    jnp.sqrt(squares + n * mean * mean),
                    jnp.sum(~jnp.isfinite(flat)).astype(flat.dtype),
                ]
            )
        )
    return jnp.stack(out)
