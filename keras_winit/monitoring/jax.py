"""JAX statistics: computed in the jitted train step and returned by it.

JAX's train step is a pure function, traced once and jitted: the trainer
calls `optimizer.stateless_apply(optimizer_variables, grads,
trainable_variables)`, which is wrapped (only while the callback's train
function runs, so nothing stays patched) so that the trace computes the
statistics inside a `jax.lax.cond` taken only on recorded steps. The
callback's own train function returns them as extra outputs of the jitted
step (next to the logs, not in the donated state), and fetches them in
groups of steps, between steps, without waiting for the step in flight. No
host callback is traced into the step: a step that contains one costs more
on every call, whether the callback fires or not.
"""

import time
from typing import Any

import keras
import numpy as np

from keras_winit import _compat
from keras_winit.monitoring import records as records_module
from keras_winit.monitoring.records import HISTOGRAM_BINS
from keras_winit.monitoring.records import NUM_STATS


def _is_keras_train_step(model):
    step = getattr(type(model), "train_step", None)
    return getattr(step, "__qualname__", "") == "JAXTrainer.train_step"


class Hook(records_module.Records):
    """Statistics computed in the jitted train step and returned by it.

    Makes this `fit`'s train function around `type(model).train_step`,
    jitted as `JAXTrainer.make_train_function` jits it, returning the
    records next to the logs. The records' arrays are fetched in groups,
    from the main thread, between steps.
    """

    # Records fetched together: the first at once, then `fetch_every`, or
    # fewer once the oldest has waited `records.WRITE_AFTER_SECONDS`
    # (every 10 s, not every 2 recorded steps, at `update_freq=100`). The
    # records of the newest `in_flight_kept` calls are left for the next
    # fetch, so that a fetch does not wait for a step still running (JAX
    # dispatches steps asynchronously).
    fetch_every = records_module.WRITE_EVERY
    in_flight_kept = 2

    def __init__(self, callback, model, writer):
        super().__init__(callback, model, writer)
        # While a step is traced: a list of (record, layout) pairs, one per
        # `stateless_apply` call; the layout holds the static rows of the
        # gradients and of the weights that the record's arrays hold.
        self.traced = None
        # While a step is traced: whether it takes the update's norm
        # (split), or `None`: decided in the graph by the step.
        self.traced_ratio: bool | None = None
        self.layouts = []
        # Records (device arrays) of the steps run since the last fetch.
        self.in_flight = []
        # Unrecorded steps run Keras' own jitted `train_step` when each
        # call of the step is one optimizer step, known in Python: Keras'
        # own `train_step`, no loss scaling (skipped steps), no gradient
        # accumulation. `next_step`: the optimizer step of the next call.
        self.split = (
            _is_keras_train_step(model)
            and not self.is_loss_scaled
            and not self.inner.gradient_accumulation_steps
        )
        self.next_step: int | None = None
        # Calls of the step so far, and the call that made each record
        # still in flight and when (`time.monotonic`), and whether a record
        # of statistics was fetched yet (not only a histogram).
        self.steps_run = 0
        self.made_at: list[tuple[int, float]] = []
        self.fetched_any = False
        # When the last fetch ended (`time.monotonic`): the records it left
        # in flight wait from then (not fetched one by one just after).
        self.fetched_at = 0.0

    def install(self):
        """Makes this `fit`'s train function and returns it.

        Traced afresh by every `fit` with the callback: a later `fit`
        without it re-makes Keras' own.
        """
        import jax

        model = self.model
        train_step = type(model).train_step
        hook = self
        optimizer = self.optimizer

        def make_step_and_records(ratio):
            def step_and_records(state, data):
                hook.traced = []
                hook.traced_ratio = ratio
                try:
                    logs, state = train_step(model, state, data)
                    traced = hook.traced
                finally:
                    hook.traced = None
                    hook.traced_ratio = None
                hook.layouts = [layout for _, layout in traced]
                return (logs, tuple(record for record, _ in traced)), state

            return jit(step_and_records) if jitted else step_and_records

        jitted = not model.run_eagerly and model.jit_compile

        # Read now: during an epoch, the JAX trainer's variables hold no
        # values to read the sharding from.
        out_shardings = None
        if keras.distribution.distribution() is not None:
            out_shardings = (None, _compat.state_sharding_spec(model))

        def jit(function):
            return jax.jit(
                function, donate_argnums=0, out_shardings=out_shardings
            )

        # Split: Keras' own step for the unrecorded calls; a recording
        # step, and when `update_ratio` is logged on some recorded steps
        # only (the defaults), a third that also takes the update's norm.
        # Each is jitted on its first call, and chosen in Python, so no
        # branch waits untaken in the step (an untaken `lax.cond` that
        # reads the weights still makes XLA copy them before the update).
        # Not split: one step, which decides in the graph.
        functions: dict[Any, Any] = {}

        def function(ratio):
            if ratio not in functions:
                if ratio == "plain":

                    def keras_step(state, data):
                        return train_step(model, state, data)

                    functions[ratio] = jit(keras_step) if jitted else keras_step
                else:
                    functions[ratio] = make_step_and_records(ratio)
            return functions[ratio]

        def wrap(method):
            def stateless_apply(*args, **kwargs):
                return hook.record(method, *args, **kwargs)

            return stateless_apply

        def one_step(state, data):
            hook.steps_run += 1
            step = hook.next_step
            ratio = None
            if step is not None:
                hook.next_step = step + 1
                if not hook._due(step):
                    result = function("plain")(state, data)
                    if hook.made_at:
                        hook.fetch_if_due()
                    return result
                ratio = bool(hook.update_ratio) and (
                    step % hook.update_ratio_freq == 0
                )
            with records_module.patched(optimizer, "stateless_apply", wrap):
                (logs, records), state = function(ratio)(state, data)
            if records:
                hook.in_flight.append(records)
                hook.made_at.append((hook.steps_run, time.monotonic()))
            if hook.made_at:
                hook.fetch_if_due()
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

    def sync_step(self):
        """Reads the optimizer step once, at the start of `fit`.

        Later, each call of the step is one optimizer step (`split`): the
        steps are counted in Python (the model's variables are not synced
        with the trainer's state during an epoch on JAX).
        """
        if not self.split or self.next_step is not None:
            return
        iterations = self.optimizer.iterations
        if getattr(iterations, "_value", None) is None:
            # Purged by the JAX trainer during an epoch (a model built by
            # its first step starts the hook inside that step): the step
            # is unknown, every call runs the recording step.
            self.split = False
            return
        self.next_step = self.current_step()

    def _due(self, step):
        """Whether optimizer step `step` records something."""
        if step % self.update_freq == 0:
            return True
        if self.histogram_freq and step % self.histogram_freq == 0:
            return True
        return bool(self.weights_freq) and (step + 1) % self.weights_freq == 0

    def record(self, stateless_apply, optimizer_variables, grads, variables):
        """Traced: `stateless_apply`, and this step's record."""
        import jax
        import jax.numpy as jnp

        result = stateless_apply(optimizer_variables, grads, variables)
        if self.traced is None:  # Not called from this `fit`'s train step.
            return result
        optimizer = self.optimizer
        order = _compat.optimizer_variables_order(optimizer)
        mapping = list(
            zip(optimizer.variables, optimizer_variables, strict=True)
        )
        values = {
            id(v): value for v, value in zip(order, variables, strict=True)
        }
        with keras.StatelessScope(state_mapping=mapping):
            rows, logged, grads, step, is_update, finite = (
                self.applied_gradients(grads, order)
            )
        if not rows:
            return result
        weights = [values[id(v)] for v in logged]
        new_values = {
            id(v): value for v, value in zip(order, result[0], strict=True)
        }
        new_weights = (
            [new_values[id(v)] for v in logged] if self.update_ratio else None
        )
        update = jnp.bool_(True) if is_update is None else is_update
        ok = update if finite is None else jnp.logical_and(update, finite)
        skipped = jnp.logical_and(update, jnp.logical_not(ok))
        due = jnp.logical_and(ok, step % self.update_freq == 0)
        # 0: nothing to log; else 1 + the kind of record.
        kind = jnp.where(
            skipped,
            1 + records_module.KIND_SKIPPED,
            jnp.where(due, 1 + records_module.KIND_APPLIED, 0),
        )
        ratio = self.traced_ratio
        if ratio is None:  # Not split: decided in the graph.
            stats = jax.lax.cond(
                kind > 0,
                lambda: self._stats(grads, weights, new_weights, step),
                lambda: jnp.zeros((len(rows), NUM_STATS), "float32"),
            )
        else:
            # Split: this function runs only on steps that record something
            # (a step that only logs histograms or weights ignores them, by
            # its `kind`), with or without the update's norm.
            stats = fused_stats(grads, weights, new_weights if ratio else None)
        record = {"stats": stats}
        hist_due = weights_due = jnp.bool_(False)
        if self.histogram_freq:
            hist_due = jnp.logical_and(ok, step % self.histogram_freq == 0)
            record["histograms"] = jax.lax.cond(
                hist_due,
                lambda: jnp.stack([histogram(g) for g in grads]),
                lambda: jnp.zeros((len(rows), HISTOGRAM_BINS, 3), "float32"),
            )
        weight_rows, new_weights = [], []
        if self.weights_freq:
            # Variance of the updated weights, logged at the step count
            # after the update (what `optimizer.iterations` then reads).
            for v, value in zip(order, result[0], strict=True):
                i = self._row(v)
                if i is not None:
                    weight_rows.append(i)
                    new_weights.append(value)
            weights_due = jnp.logical_and(
                ok, (step + 1) % self.weights_freq == 0
            )
            record["weights"] = jax.lax.cond(
                weights_due,
                lambda: jnp.stack(
                    [jnp.var(jnp.asarray(w, "float32")) for w in new_weights]
                ),
                lambda: jnp.zeros((len(new_weights),), "float32"),
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

    def _stats(self, grads, weights, new_weights, step):
        """`fused_stats`, the update's norm only on `update_ratio` steps."""
        import jax

        if new_weights is None or self.update_ratio_freq == self.update_freq:
            return fused_stats(grads, weights, new_weights)
        return jax.lax.cond(
            step % self.update_ratio_freq == 0,
            lambda: fused_stats(grads, weights, new_weights),
            lambda: fused_stats(grads, weights),
        )

    def fetch_if_due(self):
        """Fetches the records in flight but those of the newest
        `in_flight_kept` calls (perhaps still running): the first record
        (judged early), then `fetch_every` at once, or fewer once the
        oldest has waited `records.WRITE_AFTER_SECONDS` (since it was made,
        or since the last fetch, which left it in flight)."""
        made_at = self.made_at
        recent = self.steps_run - self.in_flight_kept
        if made_at[0][0] > recent:
            return  # All may still be running.
        keep = sum(
            1 for call, _ in made_at[-self.in_flight_kept :] if call > recent
        )
        if (
            len(made_at) - keep >= self.fetch_every
            or not self.fetched_any
            or records_module.overdue(max(made_at[0][1], self.fetched_at))
        ):
            self.fetch(keep=keep)
            self.fetched_at = time.monotonic()

    def fetch(self, keep=0):
        """Writes the records of the steps run, but the newest `keep`."""
        count = len(self.in_flight) - keep
        if count <= 0:
            return
        steps = self.in_flight[:count]
        del self.in_flight[:count]
        del self.made_at[:count]
        layouts = self.layouts
        # One transfer for the flags, one for the arrays that are due.
        flags = _to_host([[r["flags"] for r in rs] for rs in steps])
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
        values = _to_host([record[key] for key, *_, record in due])
        for (key, kind, step, rows, _), value in zip(due, values, strict=True):
            if key == "stats":
                self.fetched_any = True
                skipped = kind == records_module.KIND_SKIPPED
                self.add_record(int(step), skipped, rows, value)
            elif key == "histograms":
                self.add_histograms(int(step), rows, np.asarray(value))
            else:
                self.write_buffered()
                self.writer.scalars(
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


def _to_host(tree):
    """NumPy values of the device arrays of `tree`.

    On the CPU backend, `np.asarray` of each array (0.8 µs each on the
    benchmark machine; `jax.device_get` first starts an asynchronous copy
    of each: 7.6 µs); elsewhere `jax.device_get`, whose copies overlap.
    """
    import jax

    if jax.default_backend() != "cpu":
        return jax.device_get(tree)
    return jax.tree.map(np.asarray, tree)


def fused_stats(grads, weights, new_weights=None):
    """`[len(grads), 6]`: variance, mean, L2 norm, non-finite, weight norm
    and the norm of the update (`new_weights - weights`; 0 without
    `new_weights`).

    One pass over each gradient and weight: `sum(g)`, `sum(g**2)` and
    `sum(w**2)` (one loop each on XLA's CPU backend, where each kernel
    costs microseconds to launch), `Var = sum(g**2) / n - mean**2`, exact
    to float32 rounding when `mean**2 <= Var`; when some variable's is not
    (a one-pass variance loses every digit when the mean is large against
    the spread, or a statistic is not finite), the variances take two
    passes (the mean, then the centered squares) and the non-finite
    entries are counted, in one `lax.cond` taken only then. The variables
    smaller than `records.LARGE_VARIABLE` entries are flattened into one
    buffer, grouped by size, and each group is reduced as the rows of one
    `[variables, size]` matrix (a slice of the buffer): one set of
    reductions per distinct size, however many variables (a segment sum
    would scatter-add, which XLA's CPU backend does several times slower
    per entry than a vectorized sum; and each kernel costs a few
    microseconds to launch). Larger ones are reduced one by one, without
    a copy.
    """
    import jax
    import jax.numpy as jnp

    groups = _size_groups(grads)
    order = [k for group in groups for k in group]
    large = {
        k
        for k, g in enumerate(grads)
        if int(np.prod(g.shape)) >= records_module.LARGE_VARIABLE
    }

    def matrices(tensors):
        """`[variables, size]` float32 of each group of `tensors`."""
        flat = [jnp.reshape(jnp.asarray(t, "float32"), (-1,)) for t in tensors]
        small = [flat[k] for k in order if k not in large]
        buffer = jnp.concatenate(small) if small else None
        out, start = [], 0
        for group in groups:
            if group[0] in large:
                out.append(flat[group[0]][None])
                continue
            size = flat[group[0]].shape[0]
            end = start + size * len(group)
            assert buffer is not None  # A small group: `small` holds it.
            out.append(jnp.reshape(buffer[start:end], (len(group), size)))
            start = end
        return out

    gs = matrices(grads)
    ws = matrices(weights)
    nws = [None] * len(gs) if new_weights is None else matrices(new_weights)
    parts = [_group_sums(*args) for args in zip(gs, ws, nws, strict=True)]
    sizes = jnp.concatenate(
        [jnp.full((g.shape[0],), float(g.shape[1])) for g in gs]
    )
    sums, squares, weight_squares, update_squares = (
        jnp.concatenate([p[k] for p in parts]) for k in range(4)
    )
    means = sums / sizes
    variances = squares / sizes - means * means

    def two_pass_and_count():
        centered = [
            jnp.sum((g - (jnp.sum(g, axis=1) / g.shape[1])[:, None]) ** 2, 1)
            for g in gs
        ]
        counts = [jnp.sum(~jnp.isfinite(g), axis=1) for g in gs]
        return (
            jnp.concatenate(centered) / sizes,
            jnp.concatenate(counts).astype("float32"),
        )

    # One pass (`sum(g)`, `sum(g**2)`, `sum(w**2)`: one loop per variable)
    # is exact to float32 rounding when `mean**2 <= Var`; otherwise (the
    # mean large against the spread, or a statistic not finite: NaN fails
    # the test) the variances take two passes and the non-finite entries
    # are counted, in one `lax.cond`.
    variances, bounded = _one_entry_variances(
        variances,
        np.concatenate([np.full(g.shape[0], g.shape[1]) for g in gs]),
    )
    variances, nonfinite = jax.lax.cond(
        jnp.all(means * means <= bounded),
        lambda: (variances, jnp.zeros_like(means)),
        two_pass_and_count,
    )
    stats = jnp.stack(
        [
            variances,
            means,
            jnp.sqrt(squares),
            nonfinite,
            jnp.sqrt(weight_squares),
            jnp.sqrt(update_squares),
        ],
        axis=1,
    )
    if order != sorted(order):
        stats = stats[np.argsort(order)]
    return stats


def _size_groups(tensors):
    """Indices of `tensors` grouped by number of entries, the large ones
    (`records.LARGE_VARIABLE` entries or more) alone."""
    groups: dict[Any, list[int]] = {}
    for k, t in enumerate(tensors):
        size = int(np.prod(t.shape))
        key = size if size < records_module.LARGE_VARIABLE else (None, k)
        groups.setdefault(key, []).append(k)
    return list(groups.values())


def _group_sums(g, w, new_w):
    """`(sum(g), sum(g**2), sum(w**2), sum((new_w - w)**2))` of the rows
    of `g`, `w` and `new_w` (`[variables, size]`; `new_w` may be `None`:
    zeros), reductions of one shape, which XLA fuses into one loop."""
    import jax.numpy as jnp

    sums = jnp.sum(g, axis=1)
    if new_w is None:
        updates = jnp.zeros_like(sums)
    else:
        delta = new_w - w
        updates = jnp.sum(delta * delta, axis=1)
    return sums, jnp.sum(g * g, axis=1), jnp.sum(w * w, axis=1), updates


def histogram(g):
    """`[bins, 3]` histogram of the finite entries, TensorBoard's rule.

    As `keras_winit.monitoring.writer.histogram_buckets` and the
    TensorFlow implementation.
    """
    import jax.numpy as jnp

    bins = HISTOGRAM_BINS
    g = jnp.reshape(g, (-1,))
    finite = jnp.isfinite(g)
    any_finite = jnp.any(finite)
    low = jnp.where(any_finite, jnp.min(jnp.where(finite, g, jnp.inf)), 0.0)
    high = jnp.where(any_finite, jnp.max(jnp.where(finite, g, -jnp.inf)), 0.0)
    spread = high - low
    constant = spread <= 0.0
    width = jnp.where(constant, 1.0, spread / bins)
    index = jnp.floor((jnp.where(finite, g, low) - low) / width)
    index = jnp.clip(index.astype("int32"), 0, bins - 1)
    index = jnp.where(constant, bins - 1, index)
    counts = (
        jnp.zeros((bins,), "float32").at[index].add(finite.astype("float32"))
    )
    edges = low + (spread / bins) * jnp.arange(bins + 1, dtype="float32")
    edges = edges.at[-1].set(high)
    return jnp.stack([edges[:-1], edges[1:], counts], axis=1)


def _one_entry_variances(variances, sizes):
    """`(variances, bounded)` for the one-pass variance's exactness test
    (`mean**2 <= bounded`) of `fused_stats` (TensorFlow tests the
    inequality on the sums instead). The variables of one entry (a scalar)
    get a variance of exactly 0 (`g*g - g*g` may round) and an
    infinite bound: otherwise `mean**2 <= 0` would fail at every step and
    send every recorded step of a model with a scalar variable down the
    two-pass branch. A NaN or inf still fails (`NaN * 0 + inf` is NaN).
    Without such variables, both are `variances` (no op is added)."""
    bound = np.where(np.asarray(sizes) == 1, np.inf, 0.0).astype(np.float32)
    if not bound.any():
        return variances, variances
    variances = variances * (bound == 0).astype(np.float32)
    return variances, variances + bound
