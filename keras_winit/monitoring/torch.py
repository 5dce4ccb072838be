"""PyTorch statistics: eager, on recorded steps only.

PyTorch trains eagerly: while the callback's train function runs,
`optimizer.apply` is wrapped (and unwrapped after each call, whatever
happens); on the optimizer steps that are recorded (a Python-level check
of `optimizer.iterations`), the statistics are computed with few torch
ops (`fused_stats`: one `sum` per gradient, one `torch._foreach_norm`)
and copied to the host in one transfer. Records are written between
steps: the first at once, then in groups of `records.WRITE_EVERY` (or
after `records.WRITE_AFTER_SECONDS`; at once when a gradient is not
finite), and at the end of each epoch.
"""

import math
from typing import Any

import keras
import numpy as np

from keras_winit import _compat
from keras_winit.monitoring import records as records_module
from keras_winit.monitoring import writer as writer_module
from keras_winit.monitoring.records import HISTOGRAM_BINS
from keras_winit.monitoring.records import NONFINITE
from keras_winit.monitoring.records import NUM_STATS


def _is_keras_train_step(model):
    step = getattr(type(model), "train_step", None)
    return getattr(step, "__qualname__", "") == "TorchTrainer.train_step"


class Hook(records_module.Records):
    """Wraps `optimizer.apply` during each step; statistics with torch ops."""

    def __init__(self, callback, model, writer):
        super().__init__(callback, model, writer)
        # `_logged`'s rows and positions, per list of variables.
        self._plans = {}
        # Whether the next batch end writes the buffered records (the
        # first record, a non-finite gradient).
        self._write_now = True
        # The entries and torch tensors of the variables of the last
        # `_logged` call.
        self._sizes = None
        self._weights = None
        # The float32 copy of the weights `update_ratio` compares with.
        self._copies = {}
        # Whether `apply` applies the gradients as given: no loss scaling,
        # no `loss_scale_factor`, no gradient accumulation.
        self._as_given = (
            not self.is_loss_scaled
            and self.inner.loss_scale_factor is None
            and not self.inner.gradient_accumulation_steps
        )
        # Unrecorded calls run Keras' own train function, unwrapped, when
        # each call's optimizer steps are known in Python: Keras' own
        # `train_step`, no loss scaling (skipped steps), no gradient
        # accumulation.
        self.split = (
            _is_keras_train_step(model)
            and not self.is_loss_scaled
            and not self.inner.gradient_accumulation_steps
        )
        self.steps_per_execution = int(
            getattr(model, "steps_per_execution", 1) or 1
        )
        self.next_step = None
        # (record, rows, weights, their copy before the update) of the step
        # being applied, or None.
        self._before: Any = None

    def install(self):
        model = self.model
        type(model).make_train_function(model, force=True)
        inner = model.train_function
        optimizer = self.optimizer
        hook = self

        def wrap(method):
            def apply(grads, trainable_variables=None, *args, **kwargs):
                hook.record(grads, trainable_variables)
                out = method(grads, trainable_variables, *args, **kwargs)
                hook.after_apply()
                return out

            return apply

        def train_function(data):
            if not hook._due_now():
                return inner(data)  # Keras' own, nothing wrapped.
            with records_module.patched(optimizer, "apply", wrap):
                return inner(data)

        return train_function

    def sync_step(self):
        """Re-reads the optimizer step (start of `fit`, end of each epoch)."""
        if self.split:
            self.next_step = self.current_step()

    def _due_now(self):
        """Whether the next call's steps may record something.

        Counted in Python when each call runs `steps_per_execution`
        optimizer steps (`split`); otherwise every call is wrapped and
        `record` decides.
        """
        s = self.next_step
        if s is None:
            return True
        self.next_step = s + self.steps_per_execution
        last = s + self.steps_per_execution - 1
        for f in (self.update_freq, self.histogram_freq):
            if f and (last // f) * f >= s:
                return True
        return False

    def _logged(self, grads, variables):
        """`records.Records._logged`, its variable walk cached.

        Keras' `train_step` hands `apply` the same variables, in the same
        order, at every step: the rows are found once per list of
        variables (and pattern of missing gradients), not once per
        variable and step.
        """
        if not isinstance(variables, list):
            variables = list(variables)
        key = (tuple(map(id, variables)), tuple(g is None for g in grads))
        plan = self._plans.get(key)
        if plan is None:
            rows, positions = self._logged_positions(grads, variables)
            if len(self._plans) >= 16:  # Bounded: lists may vary.
                self._plans.clear()
            # The variables are kept with their plan: their ids in `key`
            # cannot be reused by other objects while it is cached.
            sizes = [float(math.prod(self.shapes[i])) for i in rows]
            # The variables' torch tensors: updated in place by the
            # optimizer (`torch._foreach_add_`, `Variable.assign`'s
            # `copy_`), the same objects during the `fit`.
            weights = [_storage(variables[k]) for k in positions]
            plan = (rows, positions, variables, sizes, weights)
            self._plans[key] = plan
        rows, positions, _, self._sizes, self._weights = plan
        self.present.update(rows)
        return (
            rows,
            [variables[k] for k in positions],
            [grads[k] for k in positions],
        )

    def record(self, grads, trainable_variables=None):
        import torch

        optimizer = self.optimizer
        trainable_variables = self._applied_variables(trainable_variables)
        # Decide cheaply, before touching the gradients, whether this call
        # can be recorded: steps are known in Python (eager).
        step = _int(optimizer.iterations)
        k = self.inner.gradient_accumulation_steps
        if k:
            raw = _int(_compat.raw_iterations(self.inner))
            if (raw + 1) % k:
                return
        due = step % self.update_freq == 0
        hist_due = bool(self.histogram_freq) and (
            step % self.histogram_freq == 0
        )
        if not (due or hist_due or self.is_loss_scaled):
            return
        if not isinstance(grads, list):
            grads = list(grads)
        with torch.no_grad():
            if self._as_given:
                # The gradients are applied as they are: no Keras op.
                rows, _, grads = self._logged(grads, trainable_variables)
                grads = _float32(grads)
                finite = True
            else:
                rows, _, grads, _, _, finite = self.applied_gradients(
                    grads, trainable_variables
                )
                finite = True if finite is None else bool(finite)
            if not rows:
                return
            weights = self._weights  # Those of `rows` (`_logged`).
            if not finite:
                stats = fused_stats(grads, weights, self._sizes)
                self.add_record(step, True, rows, stats)
                return
            if due:
                stats = fused_stats(grads, weights, self._sizes)
                self.add_record(step, False, rows, stats)
                if stats[:, NONFINITE].any():
                    self._write_now = True  # Its warning, at once.
                if self.update_ratio and step % self.update_ratio_freq == 0:
                    # The weights before the update (a float32 copy).
                    self._before = (
                        self.pending[-1],
                        rows,
                        weights,
                        self._snapshot(rows, weights),
                    )
            if hist_due:
                tables = np.stack(
                    [
                        writer_module.histogram_buckets(
                            _finite(g.detach().cpu().numpy()), HISTOGRAM_BINS
                        )
                        for g in grads
                    ]
                )
                self.add_histograms(step, rows, tables)

    def _snapshot(self, rows, weights):
        """A float32 copy of `weights`, in buffers kept for the `fit`
        (one per variable, allocated once per set of `rows`), copied in one
        `torch._foreach_copy_`."""
        import torch

        key = tuple(rows)
        copies = self._copies.get(key)
        if copies is None:
            self._copies.clear()  # One float32 copy of the weights at most.
            copies = self._copies[key] = [
                torch.empty_like(w, dtype=torch.float32) for w in weights
            ]
        torch._foreach_copy_(copies, weights)
        return copies

    @staticmethod
    def _update_norms(new, old):
        """`[len(new)]` NumPy: `||new_k - old_k||` (`old`: `_snapshot`,
        overwritten by the differences)."""
        import torch

        new = _float32(new)
        torch._foreach_sub_(old, new)
        return _to_host(torch.stack(torch._foreach_norm(old)))

    def after_apply(self):
        """After the update: `||w_after - w_before||` into the record."""
        import torch

        before, self._before = self._before, None
        if before is None:
            return
        record, rows, weights, old = before
        with torch.no_grad():
            norms = self._update_norms(weights, old)
        table = record[: len(self.variables) * NUM_STATS].reshape(-1, NUM_STATS)
        table[rows, records_module.UPDATE_NORM] = norms

    def write_pending(self, force=False):
        """Writes the buffered records: the first one at once, then every
        `records.WRITE_EVERY` records or once the oldest has waited
        `records.WRITE_AFTER_SECONDS`; at once when one has a non-finite
        gradient (its warning) or a histogram is pending; always with
        `force` (end of each epoch, end of `fit`, clean-up after an
        exception).

        Measured on one CPU core between the MLP's steps: a record written
        alone costs 2 to 3 times what it costs among 8 written back to back
        (the writing code and data leave the CPU caches during a training
        step).
        """
        if self.pending_histograms or (
            self.pending
            and (
                force
                or self._write_now
                or len(self.pending) >= records_module.WRITE_EVERY
                or records_module.overdue(self.pending_since)
            )
        ):
            if self.pending:
                self._write_now = False
            self.write_buffered()
        if self.weights_freq:
            self.write_weights()


def fused_stats(grads, weights, sizes=None):
    """`[len(grads), 6]` NumPy statistics of torch tensors, in float32.

    Columns as in `records`: variance, mean, norm, non-finite count,
    weight norm, 0 (the update norm, filled after the update). One torch
    op per gradient (`sum`), one `torch._foreach_norm` over the gradients
    and the weights, one host transfer; then on the host, in float64,
    `mean = sum(g) / n` and `Var = ||g||**2 / n - mean**2`, exact to
    float32 rounding when `mean**2 <= Var`. Where it is not (a gradient
    whose mean dwarfs its spread), that variable's two-pass variance
    `sum((g - mean)**2) / n` is computed instead. Non-finite entries are
    counted only where a statistic is not finite. `sizes`: the number of
    entries of each gradient, floats (computed when `None`).

    (Measured alternatives on one CPU core: `var_mean` per variable
    (Welford's algorithm) is 10 to 50 times slower; segment sums over one
    flattened buffer (`index_add_`, `segment_reduce`) cost more than the
    per-variable ops they replace.)
    """
    import torch

    n = len(grads)
    if not n:
        return np.zeros((0, NUM_STATS))
    grads, weights = _float32(grads), _float32(weights)
    if sizes is None:
        sizes = [float(g.numel()) for g in grads]
    sums = [g.sum() for g in grads]
    norms = torch._foreach_norm(grads + weights)
    # One transfer; then Python floats (float64): a few operations per
    # variable cost less than a dozen NumPy calls on these short arrays.
    host = torch.stack([*sums, *norms]).tolist()
    rows = []
    for k in range(n):
        total, norm, size = host[k], host[n + k], sizes[k]
        mean = total / size
        variance = norm * norm / size - mean * mean
        nonfinite = 0
        if not (math.isfinite(total) and math.isfinite(norm)):
            nonfinite = int((~torch.isfinite(grads[k])).sum())
        elif size == 1:
            variance = 0.0  # Exactly (`norm**2 - mean**2` may round).
        elif not mean * mean <= variance:
            variance = _two_pass_variance(grads[k])
        rows.append((variance, mean, norm, nonfinite, host[2 * n + k], 0.0))
    return np.array(rows, np.float64)


def _two_pass_variance(g):
    """`mean((g - mean(g))**2)` of a torch tensor, as a float."""
    import torch

    centered = (g - g.mean()).reshape(-1)
    return float(torch.dot(centered, centered)) / centered.numel()


def _float32(tensors):
    """`tensors` as float32 (a cast only where they are not)."""
    import torch

    return [t if t.dtype == torch.float32 else t.float() for t in tensors]


def _to_host(tensor):
    """One device-to-host copy, as float64 NumPy."""
    return tensor.detach().cpu().numpy().astype(np.float64)


def _int(value):
    """A scalar `keras.Variable` or tensor as a Python `int` (no Keras op
    for a variable: `optimizer.iterations` is one, except under gradient
    accumulation)."""
    if isinstance(value, keras.Variable):
        value = _storage(value)
    return int(value)


def _storage(variable):
    """The torch tensor of a `keras.Variable` (Keras' `variable.value`
    without its per-call checks: no stateless scope or autocast in the
    optimizer's `apply`)."""
    value = _compat.variable_storage(variable)
    return variable.value if value is None else value


def _finite(values):
    values = values.reshape(-1)
    return values[np.isfinite(values)]
