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
  statistics inside a `jax.lax.cond` taken only on recorded steps. The
  callback's own train function returns them as extra outputs of the
  jitted step (next to the logs, not in the donated state), and fetches
  them in groups of steps, between steps, without waiting for the step in
  flight. No host callback is traced into the step: a step that contains
  one costs more on every call, whether the callback fires or not.

Both share, with the TensorFlow implementation, the preparation of the
applied gradients (`applied_gradients`), the record layout and the event
writing of `keras_winit.callbacks._Records`.
"""

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

    # Host side ---------------------------------------------------------

    def add_record(self, step, skipped, rows, stats):
        """Stores the statistics (`[len(rows), 4]`) of one optimizer step."""
        record = np.zeros(self.width, np.float64)
        stats = np.asarray(stats, np.float64).reshape(len(rows), 4)
        table = record[: len(self.variables) * 4].reshape(-1, 4)
        table[list(rows)] = stats
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
        self.pending_histograms.append((int(step), rows, hist))

    def write_buffered(self):
        """Writes the records and histograms added since the last call."""
        records, self.pending = self.pending, []
        histograms, self.pending_histograms = self.pending_histograms, []
        for record in records:
            self._write_record(record)
        for step, rows, hist in histograms:
            self._write_histogram_table(step, hist, rows)

    def write_pending(self, force=False):
        self.write_buffered()
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
        trainable_variables = self._applied_variables(trainable_variables)
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
    """`[len(grads), 4]` NumPy array: variance, mean, norm, non-finite.

    Per gradient: its sum, the centred values and their dot product
    (`sum(g**2) = sum((g - mean)**2) + n * mean**2`); one transfer to the
    host. Non-finite entries are counted (`torch.isfinite` costs more than
    the rest together) only when some statistic is not finite.
    """
    import torch

    means, squares = [], []
    for g in grads:
        flat = g.detach().reshape(-1)
        mean = flat.mean()
        centered = flat - mean
        means.append(mean)
        squares.append(torch.dot(centered, centered))
    means, squares = torch.stack(means), torch.stack(squares)
    n = torch.tensor([g.numel() for g in grads], dtype=squares.dtype)
    stats = torch.stack(
        [squares / n, means, torch.sqrt(squares + n * means**2)], dim=1
    )
    stats = stats.cpu().numpy()
    nonfinite = np.zeros((len(grads), 1), stats.dtype)
    if not np.isfinite(stats).all():
        nonfinite[:, 0] = [int((~torch.isfinite(g)).sum()) for g in grads]
    return np.concatenate([stats, nonfinite], axis=1)


class _JaxHook(_HostHook):
    """Statistics computed in the jitted train step and returned by it.

    Wraps `optimizer.stateless_apply` (traced: it adds this step's records
    to `traced`) and makes this `fit`'s train function around
    `type(model).train_step`, jitted as `JAXTrainer.make_train_function`
    jits it, returning the records next to the logs. The records' arrays
    are fetched in groups, from the main thread, between steps.
    """

    # Steps whose records are fetched together. The newest `in_flight_kept`
    # are left for the next fetch, so that a fetch does not wait for a step
    # still running (JAX dispatches steps asynchronously).
    fetch_every = 32
    in_flight_kept = 2

    def __init__(self, callback, model):
        super().__init__(callback, model)
        # While a step is traced: a list of (record, layout) pairs, one per
        # `stateless_apply` call; the layout holds the static rows of the
        # gradients and of the weights that the record's arrays hold.
        self.traced = None
        self.layouts = []
        # Records (device arrays) of the steps run since the last fetch.
        self.in_flight = []

    def install(self):
        _wrap_around(self.optimizer, "stateless_apply", self.record)
        self.model.train_function = self._make_train_function()

    def _make_train_function(self):
        """This `fit`'s `model.train_function`.

        Traced afresh by every `fit` with the callback: a later `fit`
        without it re-makes Keras' own (`on_train_end` clears this one).
        """
        import jax

        model = self.model
        train_step = type(model).train_step
        hook = self

        def step_and_records(state, data):
            hook.traced = []
            try:
                logs, state = train_step(model, state, data)
                traced = hook.traced
            finally:
                hook.traced = None
            hook.layouts = [layout for _, layout in traced]
            return (logs, tuple(record for record, _ in traced)), state

        if not model.run_eagerly and model.jit_compile:
            out_shardings = None
            if keras.distribution.distribution() is not None:
                out_shardings = (None, model._get_state_sharding_spec())
            step_and_records = jax.jit(
                step_and_records, donate_argnums=0, out_shardings=out_shardings
            )

        def one_step(state, data):
            (logs, records), state = step_and_records(state, data)
            if records:
                hook.in_flight.append(records)
                if (
                    len(hook.in_flight)
                    >= hook.fetch_every + hook.in_flight_kept
                ):
                    hook.fetch(keep=hook.in_flight_kept)
            return logs, state

        steps_per_execution = model.steps_per_execution

        def train_function(state, iterator):
            # As `JAXTrainer._make_function`: `steps_per_execution` steps,
            # fewer at the end of the data.
            logs, state = one_step(state, next(iterator))
            try:
                for _ in range(steps_per_execution - 1):
                    logs, state = one_step(state, next(iterator))
            except StopIteration:
                pass
            return logs, state

        return train_function

    def record(self, stateless_apply, optimizer_variables, grads, variables):
        """Traced: `stateless_apply`, and this step's record."""
        import jax
        import jax.numpy as jnp

        result = stateless_apply(optimizer_variables, grads, variables)
        if self.traced is None:  # Not called from this `fit`'s train step.
            return result
        optimizer = self.optimizer
        mapping = list(
            zip(optimizer.variables, optimizer_variables, strict=True)
        )
        with keras.StatelessScope(state_mapping=mapping):
            rows, grads, step, is_update, finite = self.applied_gradients(
                grads, optimizer._trainable_variables
            )
        if not rows:
            return result
        update = jnp.bool_(True) if is_update is None else is_update
        ok = update if finite is None else jnp.logical_and(update, finite)
        skipped = jnp.logical_and(update, jnp.logical_not(ok))
        due = jnp.logical_and(ok, step % self.update_freq == 0)
        # 0: nothing to log; else 1 + the kind of record.
        kind = jnp.where(
            skipped,
            1 + _callbacks._KIND_SKIPPED,
            jnp.where(due, 1 + _callbacks._KIND_APPLIED, 0),
        )
        record = {
            "stats": jax.lax.cond(
                kind > 0,
                lambda: _jax_stats(grads),
                lambda: jnp.zeros(
                    (len(rows), _callbacks._NUM_STATS), "float32"
                ),
            )
        }
        hist_due = weights_due = jnp.bool_(False)
        if self.histogram_freq:
            hist_due = jnp.logical_and(ok, step % self.histogram_freq == 0)
            record["histograms"] = jax.lax.cond(
                hist_due,
                lambda: jnp.stack([_jax_histogram(g) for g in grads]),
                lambda: jnp.zeros(
                    (len(rows), _callbacks._HISTOGRAM_BINS, 3), "float32"
                ),
            )
        weight_rows, weights = [], []
        if self.weights_freq:
            # Variance of the updated weights, logged at the step count
            # after the update (what `optimizer.iterations` then reads).
            for v, value in zip(
                optimizer._trainable_variables, result[0], strict=True
            ):
                i = self._row(v)
                if i is not None:
                    weight_rows.append(i)
                    weights.append(value)
            weights_due = jnp.logical_and(
                ok, (step + 1) % self.weights_freq == 0
            )
            record["weights"] = jax.lax.cond(
                weights_due,
                lambda: jnp.stack(
                    [jnp.var(jnp.asarray(w, "float32")) for w in weights]
                ),
                lambda: jnp.zeros((len(weights),), "float32"),
            )
        record["flags"] = jnp.stack(
            [
                jnp.asarray(kind, "int32"),
                jnp.asarray(step, "int32"),
                jnp.asarray(hist_due, "int32"),
                jnp.asarray(weights_due, "int32"),
            ]
        )
        self.traced.append((record, (tuple(rows), tuple(weight_rows))))
        return result

    def fetch(self, keep=0):
        """Writes the records of the steps run, but the newest `keep`."""
        import jax

        count = len(self.in_flight) - keep
        if count <= 0:
            return
        steps = self.in_flight[:count]
        del self.in_flight[:count]
        layouts = self.layouts
        # One transfer for the flags, one for the arrays that are due.
        flags = jax.device_get([[r["flags"] for r in rs] for rs in steps])
        due = []
        for records, step_flags in zip(steps, flags, strict=True):
            for record, layout, (kind, step, hist, weights) in zip(
                records, layouts, step_flags, strict=True
            ):
                if kind:
                    due.append(("stats", kind - 1, step, layout[0], record))
                if hist:
                    due.append(("histograms", 0, step, layout[0], record))
                if weights:
                    due.append(("weights", 0, step + 1, layout[1], record))
        if not due:
            return
        values = jax.device_get([record[key] for key, *_, record in due])
        n = len(self.variables)
        for (key, kind, step, rows, _), value in zip(due, values, strict=True):
            if key == "stats":
                skipped = kind == _callbacks._KIND_SKIPPED
                self.add_record(int(step), skipped, rows, value)
            elif key == "histograms":
                table = np.zeros((n, _callbacks._HISTOGRAM_BINS, 3))
                table[list(rows)] = value
                self.pending_histograms.append((int(step), rows, table))
            else:
                self._scalars(
                    int(step),
                    [
                        (f"weight_variance/{self.paths[i]}", v)
                        for i, v in zip(rows, value, strict=True)
                    ],
                )
        self.write_buffered()

    def write_pending(self, force=False):
        # At batch ends, nothing: records are fetched between steps (and
        # this may run on Keras' callback thread, see `async_safe`).
        if force:
            self.fetch()


def _wrap_around(optimizer, name, around):
    """Makes `optimizer.<name>(*args)` return `around(method, *args)`.

    Undone by `keras_winit.callbacks._unwrap`.
    """
    original = optimizer.__dict__.get(name)
    method = original if original is not None else getattr(optimizer, name)

    def wrapper(*args, **kwargs):
        return around(method, *args, **kwargs)

    wrapper._keras_winit_original = original
    setattr(optimizer, name, wrapper)


def _jax_stats(grads):
    """`[len(grads), 4]`: variance, mean, L2 norm and non-finite count.

    Two fused passes over each gradient: its sum, then the sum of squared
    deviations (`sum(g**2) = sum((g - mean)**2) + n * mean**2`, both terms
    non-negative). Non-finite entries are counted, in a `lax.cond`, only
    when some sum is not finite.
    """
    import jax
    import jax.numpy as jnp

    stats, sums = [], []
    for g in grads:
        flat = jnp.reshape(g, (-1,))
        n = flat.size
        total = jnp.sum(flat)
        mean = total / n
        squares = jnp.sum(jnp.square(flat - mean))
        stats.append(
            jnp.stack([squares / n, mean, jnp.sqrt(squares + n * mean * mean)])
        )
        sums.append(total + squares)
    stats = jnp.stack(stats)
    sums = jnp.stack(sums)
    nonfinite = jax.lax.cond(
        jnp.all(jnp.isfinite(sums)),
        lambda: jnp.zeros((len(grads),), "float32"),
        lambda: jnp.stack(
            [jnp.sum(~jnp.isfinite(g)).astype("float32") for g in grads]
        ),
    )
    return jnp.concatenate([stats, nonfinite[:, None]], axis=1)


def _jax_histogram(g):
    """`[bins, 3]` (left edge, right edge, count) of the finite entries.

    As the TensorFlow implementation (`keras_winit.callbacks._histogram`).
    """
    import jax.numpy as jnp

    bins = _callbacks._HISTOGRAM_BINS
    g = jnp.reshape(g, (-1,))
    finite = jnp.isfinite(g)
    any_finite = jnp.any(finite)
    low = jnp.where(any_finite, jnp.min(jnp.where(finite, g, jnp.inf)), 0.0)
    high = jnp.where(any_finite, jnp.max(jnp.where(finite, g, -jnp.inf)), 0.0)
    width = jnp.maximum(high - low, 1e-12) / bins
    index = jnp.floor((jnp.where(finite, g, low) - low) / width)
    index = jnp.clip(index.astype("int32"), 0, bins - 1)
    counts = (
        jnp.zeros((bins,), "float32").at[index].add(finite.astype("float32"))
    )
    edges = low + width * jnp.arange(bins + 1, dtype="float32")
    return jnp.stack([edges[:-1], edges[1:], counts], axis=1)
