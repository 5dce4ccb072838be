"""PyTorch statistics: eager, on recorded steps only.

PyTorch trains eagerly: while the callback's train function runs,
`optimizer.apply` is wrapped (and unwrapped after each call, whatever
happens); on the optimizer steps that are recorded (a Python-level check
of `optimizer.iterations`), the statistics are computed with fused torch
ops and copied to the host in one transfer.
"""

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
        self._segment_ids = {}
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
        # (record, rows, variables, weights before the update) of the step
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

    def record(self, grads, trainable_variables=None):
        import torch

        optimizer = self.optimizer
        trainable_variables = self._applied_variables(trainable_variables)
        # Decide cheaply, before touching the gradients, whether this call
        # can be recorded: steps are known in Python (eager).
        step = int(keras.ops.convert_to_tensor(optimizer.iterations))
        k = self.inner.gradient_accumulation_steps
        if k:
            raw = _compat.raw_iterations(self.inner)
            raw = int(keras.ops.convert_to_tensor(raw))
            if (raw + 1) % k:
                return
        due = step % self.update_freq == 0
        hist_due = bool(self.histogram_freq) and (
            step % self.histogram_freq == 0
        )
        if not (due or hist_due or self.is_loss_scaled):
            return
        with torch.no_grad():
            rows, variables, grads, _, _, finite = self.applied_gradients(
                grads, trainable_variables
            )
            if not rows:
                return
            finite = True if finite is None else bool(finite)
            weights = [v.value for v in variables]
            if not finite:
                stats = self.fused_stats(rows, grads, weights)
                self.add_record(step, True, rows, stats)
                return
            if due:
                stats = self.fused_stats(rows, grads, weights)
                self.add_record(step, False, rows, stats)
                if self.update_ratio and step % self.update_ratio_freq == 0:
                    # The weights before the update (a copy).
                    self._before = (
                        self.pending[-1],
                        rows,
                        variables,
                        self._snapshot(weights),
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

    @staticmethod
    def _flat(tensors):
        import torch

        return torch.cat([t.detach().reshape(-1).float() for t in tensors])

    @staticmethod
    def _groups(tensors):
        """`(small, large)` indices, split at `records.LARGE_VARIABLE`."""
        small = [
            k
            for k, t in enumerate(tensors)
            if t.numel() < records_module.LARGE_VARIABLE
        ]
        large = [k for k in range(len(tensors)) if k not in small]
        return small, large

    def _snapshot(self, weights):
        """A float32 copy of `weights`: the small ones flattened together
        (one copy), each large one on its own (no flattening copy)."""
        small, large = self._groups(weights)
        flat = self._flat([weights[k] for k in small]) if small else None
        return flat, {k: weights[k].detach().float().clone() for k in large}

    def _update_norms(self, new, old):
        """`[len(new)]` NumPy: `||new_k - old_k||` (`old`: `_snapshot`)."""
        import torch

        flat, copies = old
        small, large = self._groups(new)
        parts = []
        if small:
            delta = self._flat([new[k] for k in small]) - flat
            sizes = [int(new[k].numel()) for k in small]
            parts += [torch.linalg.vector_norm(d) for d in delta.split(sizes)]
        parts += [
            torch.linalg.vector_norm(new[k].detach().float() - copies[k])
            for k in large
        ]
        norms = torch.stack(parts).cpu().numpy()
        return norms[np.argsort(small + large)]

    def after_apply(self):
        """After the update: `||w_after - w_before||` into the record."""
        import torch

        before, self._before = self._before, None
        if before is None:
            return
        record, rows, variables, old = before
        with torch.no_grad():
            norms = self._update_norms([v.value for v in variables], old)
        table = record[: len(self.variables) * NUM_STATS].reshape(-1, NUM_STATS)
        table[list(rows), records_module.UPDATE_NORM] = norms

    def fused_stats(self, rows, grads, weights):
        """`[len(grads), 6]` NumPy array, as the other backends compute it.

        The variables smaller than `records.LARGE_VARIABLE` entries are
        flattened into one buffer and reduced with `index_add_` (segment
        sums), so their number costs nothing; larger ones one by one
        (vectorized sums beat a scatter-add; one pass each, see
        `_large_rows`). Two transfers to the host.
        Non-finite entries are counted only when some statistic is not
        finite.
        """
        import torch

        small = [
            k
            for k, g in enumerate(grads)
            if g.numel() < records_module.LARGE_VARIABLE
        ]
        large = [k for k in range(len(grads)) if k not in small]
        parts = []
        if small:
            parts.append(
                self._segment_stats(
                    tuple(rows[k] for k in small),
                    [grads[k] for k in small],
                    [weights[k] for k in small],
                )
            )
        if large:
            # One pass each: sum(g), sum(g**2), sum(w**2) (no temporary);
            # see `_large_rows`.
            flat = [grads[k].detach().reshape(-1) for k in large]
            sums = torch.stack(
                [
                    torch.stack([g.sum(), torch.dot(g, g), torch.dot(w, w)])
                    for g, w in zip(
                        flat,
                        (
                            weights[k].detach().reshape(-1).float()
                            for k in large
                        ),
                        strict=True,
                    )
                ]
            )
            parts.append(_large_rows(flat, sums.cpu().numpy()))
        order = small + large
        stats = np.concatenate(
            [p if isinstance(p, np.ndarray) else p.cpu().numpy() for p in parts]
        )[np.argsort(order)]
        if not np.isfinite(stats[:, :3]).all():
            stats[:, NONFINITE] = [
                int((~torch.isfinite(g)).sum()) for g in grads
            ]
        return stats

    def _segment_stats(self, key, grads, weights):
        import torch

        n = len(grads)
        flat = torch.cat([g.detach().reshape(-1) for g in grads])
        ids = self._segment_ids.get(key)
        if ids is None or ids.device != flat.device:
            sizes = torch.tensor([g.numel() for g in grads], device=flat.device)
            ids = torch.repeat_interleave(
                torch.arange(n, device=flat.device), sizes
            )
            self._segment_ids[key] = ids
        counts = torch.tensor(
            [float(g.numel()) for g in grads], device=flat.device
        )

        def segment_sum(x):
            return torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(
                0, ids, x
            )

        means = segment_sum(flat) / counts
        centered = flat - means[ids]
        squares = segment_sum(centered * centered)
        w = torch.cat([x.detach().reshape(-1).float() for x in weights])
        zeros = torch.zeros_like(means)
        return torch.stack(
            [
                squares / counts,
                means,
                torch.sqrt(squares + counts * means * means),
                zeros,
                torch.sqrt(segment_sum(w * w)),
                zeros,
            ],
            dim=1,
        )

    def write_pending(self, force=False):
        self.write_buffered()
        if self.weights_freq:
            self.write_weights()


def _large_rows(flat, sums):
    """`fused_stats` rows (NumPy) of large variables from their `[k, 3]`
    sums `sum(g)`, `sum(g**2)`, `sum(w**2)`.

    `Var = sum(g**2) / n - mean**2` is exact to float32 rounding when
    `mean**2 <= Var`; the variables where it is not (or not finite) get
    the two-pass variance, `sum((g - mean)**2) / n`.
    """
    import torch

    sums = sums.astype(np.float64)
    n = np.array([float(g.numel()) for g in flat])
    means = sums[:, 0] / n
    with np.errstate(invalid="ignore", over="ignore"):
        variances = sums[:, 1] / n - means * means
        inexact = ~(means * means <= variances)
    for k in np.flatnonzero(inexact):
        centered = flat[k] - flat[k].mean()
        variances[k] = float(torch.dot(centered, centered)) / n[k]
    zeros = np.zeros_like(means)
    return np.stack(
        [
            variances,
            means,
            np.sqrt(sums[:, 1]),
            zeros,
            np.sqrt(sums[:, 2]),
            zeros,
        ],
        axis=1,
    )


def _finite(values):
    values = values.reshape(-1)
    return values[np.isfinite(values)]
