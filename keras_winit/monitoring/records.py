"""Records of gradient statistics: the interface between the backends and
the callback.

A record is a flat float64 array: `n x (variance, mean, norm, nonfinite,
weight_norm)` for the `n` trainable variables (zeros for variables without
a gradient), then the optimizer step, the kind of record and the number of
skipped steps so far. The backend modules (`tensorflow.py`, `jax.py`,
`torch.py`) compute the statistics inside the training step and hand the
records to `Records`, which writes them with the run's `EventWriter` and
gives the callback the per-variable values its warning needs
(`VariableRecord`, in forward order).
"""

import collections
import contextlib
import math
import time
from typing import Any

import keras
import numpy as np

from keras_winit import _compat
from keras_winit.monitoring import writer as writer_module

# Number of bins of the optional gradient histograms (TensorBoard's default).
HISTOGRAM_BINS = writer_module.DEFAULT_BUCKETS
# Columns of one record of per-variable statistics.
VARIANCE, MEAN, NORM, NONFINITE, WEIGHT_NORM, UPDATE_NORM = range(6)
NUM_STATS = 6
#: Signals the logger can write (each can be turned off).
SIGNALS = (
    "grad_variance",
    "grad_mean",
    "grad_norm",
    "grad_nonfinite",
    "update_ratio",
    "grad_weight_ratio",
    "global_norm",
    "first_nonfinite_layer",
)
# Statistics drawn against depth (`depth_profile/<name>` images) every
# `histogram_freq` steps, when logged.
DEPTH_PROFILES = (
    "grad_variance",
    "grad_norm",
    "grad_weight_ratio",
    "update_ratio",
)
# Per-variable signals: tag prefix and how the value is read from a row.
_PER_VARIABLE = (
    ("grad_variance", lambda row: row[VARIANCE]),
    ("grad_mean", lambda row: row[MEAN]),
    ("grad_norm", lambda row: row[NORM]),
    ("grad_nonfinite", lambda row: row[NONFINITE]),
    ("update_ratio", lambda row: _ratio(row[UPDATE_NORM], row[WEIGHT_NORM])),
    ("grad_weight_ratio", lambda row: _ratio(row[NORM], row[WEIGHT_NORM])),
)


def _per_variable_table(rows, names):
    """`[..., len(names)]` float64: the per-variable signals `names` (in
    `_PER_VARIABLE` order) of the statistics `rows` (`[..., NUM_STATS]`:
    one record's rows, or several records'), as `_PER_VARIABLE` reads
    them one by one."""
    columns = {
        "grad_variance": rows[..., VARIANCE],
        "grad_mean": rows[..., MEAN],
        "grad_norm": rows[..., NORM],
        "grad_nonfinite": rows[..., NONFINITE],
    }
    out = np.empty((*rows.shape[:-1], len(names)), np.float64)
    for j, name in enumerate(names):
        if name == "update_ratio":
            out[..., j] = _ratios(
                rows[..., UPDATE_NORM], rows[..., WEIGHT_NORM]
            )
        elif name == "grad_weight_ratio":
            out[..., j] = _ratios(rows[..., NORM], rows[..., WEIGHT_NORM])
        else:
            out[..., j] = columns[name]
    return out


def _ratios(a, b):
    """`_ratio` of arrays, elementwise."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.asarray(a, np.float64) / np.asarray(b, np.float64)
    zero = b == 0
    out[zero] = np.where(a[zero] == 0, 0.0, math.inf)
    return out


def _ratio(a, b):
    """`a / b`; `inf` for `a > 0 = b`, `0` for `a = b = 0`."""
    if b == 0:
        return 0.0 if a == 0 else math.inf
    return a / b


# With the default signals, `update_ratio` (the most expensive signal: a
# copy of the weights before the update and a pass over their difference)
# is logged at most every this many steps.
UPDATE_RATIO_DEFAULT_EVERY = 10


def update_ratio_freq(update_freq, signals_given):
    """The steps whose `update_ratio` is logged: every `update_freq` steps
    when the signals were chosen (`signals_given`); with the defaults, the
    smallest multiple of `update_freq` that is at least
    `UPDATE_RATIO_DEFAULT_EVERY` (10 for `update_freq=1`, 12 for 3, the
    same for 10 and more)."""
    if signals_given:
        return update_freq
    return update_freq * -(-UPDATE_RATIO_DEFAULT_EVERY // update_freq)


# Kinds of record: statistics of an applied step, or a skipped step.
KIND_APPLIED, KIND_SKIPPED = 0, 1
# Largest number of records kept between two writes (ring buffer).
MAX_BUFFERED_RECORDS = 4096
# Records written together, on every backend (but the first ones, written
# at once, and non-finite ones): measured between the MLP's steps on one
# CPU core, writing costs several times more per record in small groups
# (the writing code and data leave the CPU caches during a training step);
# TensorFlow's batch ends cost 33 µs per step with groups of 32, 22 with
# 64, 16 with 128 (of a 2 ms step).
WRITE_EVERY = 128
# ... or once the oldest record waiting has waited this many seconds,
# whichever comes first: TensorBoard sees every record within about this
# delay (plus a step), however rare the recorded steps (`update_freq=100`
# is 12,800 steps per group) or slow the steps. A group written costs
# about 1 ms on the MLP (0.8 ms measured for 2 records on JAX, where
# fetching every 256 steps cost +0.5% at `update_freq=100`), so 10 s
# costs nothing measurable; TensorBoard reloads every 5 s by default.
WRITE_AFTER_SECONDS = 10.0


def overdue(since: float | None) -> bool:
    """Whether records waiting since `since` (a `time.monotonic()`; `None`:
    none wait) have waited `WRITE_AFTER_SECONDS`."""
    return since is not None and time.monotonic() - since >= WRITE_AFTER_SECONDS


# Variables with at least this many entries are reduced one by one (their
# reductions are bound by memory traffic, so one launch each costs little,
# and CPU scatter-adds are several times slower than vectorized sums); the
# smaller ones are grouped by size and reduced as the rows of one matrix
# per size (TensorFlow, JAX), so their number costs nothing. Such large
# variables number at most (number of weights) / LARGE_VARIABLE.
LARGE_VARIABLE = 2**14
# Marks the methods keras_winit patched on an instance.
PATCH_MARK = "_keras_winit_original"

#: Statistics of one trainable variable at one recorded step.
VariableRecord = collections.namedtuple(
    "VariableRecord",
    [
        "path",
        "shape",
        "variance",
        "norm",
        "weight_norm",
        "nonfinite",
        "update_norm",
    ],
)


@contextlib.contextmanager
def patched(obj, name, make_wrapper):
    """Sets `obj.<name> = make_wrapper(method)` for the `with` block only.

    Restored on every exit path (exceptions and interrupts included); the
    wrapper carries `PATCH_MARK` so that a left-over one can be found.
    """
    original = obj.__dict__.get(name)
    method = original if original is not None else getattr(obj, name)
    wrapper = make_wrapper(method)
    setattr(wrapper, PATCH_MARK, original)
    obj.__dict__[name] = wrapper
    try:
        yield
    finally:
        unpatch(obj, name)


def unpatch(obj, name):
    """Removes keras_winit's wrapper of `obj.<name>`, if there is one.

    Returns:
        Whether a wrapper was removed.
    """
    wrapper = obj.__dict__.get(name)
    if wrapper is None or not hasattr(wrapper, PATCH_MARK):
        return False
    original = getattr(wrapper, PATCH_MARK)
    if original is None:
        del obj.__dict__[name]
    else:
        obj.__dict__[name] = original
    return True


def float32(x):
    """`x` as float32 (a Keras op only when it is not float32 already)."""
    if keras.backend.standardize_dtype(x.dtype) == "float32":
        return x
    return keras.ops.cast(x, "float32")


def to_numpy(value):
    """NumPy value of a variable or tensor of any backend."""
    if isinstance(value, keras.Variable):
        value = value.value
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # `convert_to_numpy` of a `tf.Variable` warns (NumPy 2 `copy`).
        return np.asarray(tf.convert_to_tensor(value).numpy())
    if keras.backend.backend() == "torch":
        import torch

        if isinstance(value, torch.Tensor):  # Also warns through NumPy.
            return value.detach().cpu().numpy()
    return np.asarray(keras.ops.convert_to_numpy(value))


class Records:
    """Host side of one `fit` call: tags, and writing records as events.

    The base of each backend's hook. Subclasses implement `install`
    (returns the train function of this `fit`) and `write_pending`.
    """

    def __init__(self, callback, model, writer):
        self.callback = callback
        self.model = model
        self.writer = writer
        # The callback checked that the model is compiled with one.
        self.optimizer: Any = model.optimizer
        self.is_loss_scaled = isinstance(
            self.optimizer, keras.optimizers.LossScaleOptimizer
        )
        self.inner: Any = getattr(self.optimizer, "inner_optimizer", None)
        if self.inner is None:
            self.inner = self.optimizer
        self.variables = list(model.trainable_variables)
        self.paths = [v.path for v in self.variables]
        self.shapes = [tuple(v.shape) for v in self.variables]
        self.index = {id(v): i for i, v in enumerate(self.variables)}
        self.index_by_path = {p: i for i, p in enumerate(self.paths)}
        self.present = set()
        self.update_freq = callback.update_freq
        self.histogram_freq = callback.histogram_freq
        self.weights_freq = callback.weights_freq
        self.layout_written = False
        self.signals = frozenset(callback.signals)
        self.update_ratio = "update_ratio" in self.signals
        # Steps whose `update_ratio` is logged (a multiple of update_freq).
        self.update_ratio_freq = update_ratio_freq(
            self.update_freq, callback.signals_given
        )
        self.weights_written_at = None
        # Layer of each variable (its path without the variable name), and
        # the index of that layer in forward order.
        layers = []
        for path in self.paths:
            layer = path.rsplit("/", 1)[0] if "/" in path else path
            if layer not in layers:
                layers.append(layer)
        self.layer_of = [
            (p.rsplit("/", 1)[0] if "/" in p else p) for p in self.paths
        ]
        self.layer_index = {layer: i for i, layer in enumerate(layers)}
        self.width = len(self.variables) * NUM_STATS + 3
        self.pending = []
        # When the oldest record of `pending` was added (`time.monotonic`).
        self.pending_since: float | None = None
        self.pending_histograms = []
        self.skipped_total = 0

    # Gradients as the optimizer applies them ----------------------------

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
            return _compat.optimizer_variables_order(self.inner)
        return trainable_variables

    def _logged(self, grads, variables):
        """`(rows, variables, grads)` of the gradients that are logged.

        Those of the model's trainable variables that receive a gradient,
        except `overwrite_with_gradient` ones (not a gradient step). Marks
        their rows as present.
        """
        variables = list(variables)
        rows, positions = self._logged_positions(grads, variables)
        self.present.update(rows)
        return (
            rows,
            [variables[k] for k in positions],
            [grads[k] for k in positions],
        )

    def _logged_positions(self, grads, variables):
        """`(rows, positions)`: the rows of the logged gradients (see
        `_logged`) and their positions in `grads` and `variables`."""
        rows, positions = [], []
        for k, (g, v) in enumerate(zip(grads, variables, strict=False)):
            i = self._row(v)
            if g is None or i is None:
                continue
            if getattr(v, "overwrite_with_gradient", False):
                continue
            rows.append(i)
            positions.append(k)
        return rows, positions

    def applied_gradients(self, grads, trainable_variables):
        """The gradients as the optimizer applies them.

        Returns `(rows, variables, grads, step, is_update, finite)`: the
        rows of the variables that receive a gradient, those variables,
        their float32 gradients (unscaled, accumulated mean on the applying
        step), the optimizer step before the update, whether this call
        updates the variables (gradient accumulation), and whether the
        gradients are finite (`LossScaleOptimizer` skips the step
        otherwise). Keras ops on the optimizer's state through its Keras
        variables: traced into the training graph (TensorFlow), inside
        `stateless_apply` under a `StatelessScope` of its variables (JAX),
        or eagerly (PyTorch).
        """
        ops = keras.ops
        optimizer, inner = self.optimizer, self.inner
        rows, variables, grads = self._logged(grads, trainable_variables)
        if not rows:
            return rows, [], [], None, None, None
        grads = [float32(g) for g in grads]
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
            raw_iterations = ops.convert_to_tensor(
                _compat.raw_iterations(inner)
            )
            is_update = ops.equal((raw_iterations + 1) % k, 0)
            accumulators = [
                _compat.accumulated_gradient(inner, v) for v in variables
            ]
            grads = [
                (g + ops.cast(ops.convert_to_tensor(a), "float32")) / k
                for g, a in zip(grads, accumulators, strict=True)
            ]
        step = ops.convert_to_tensor(optimizer.iterations)
        return rows, variables, grads, step, is_update, finite

    # Records arriving on the host ---------------------------------------

    def add_record(self, step, skipped, rows, stats):
        """Stores the statistics (`[len(rows), NUM_STATS]`) of one step."""
        record = np.zeros(self.width, np.float64)
        stats = np.asarray(stats, np.float64).reshape(len(rows), NUM_STATS)
        table = record[: len(self.variables) * NUM_STATS].reshape(-1, NUM_STATS)
        table[list(rows)] = stats
        if skipped:
            self.skipped_total += 1
        record[-3:] = (
            int(step),
            KIND_SKIPPED if skipped else KIND_APPLIED,
            self.skipped_total,
        )
        if not self.pending:
            self.pending_since = time.monotonic()
        self.pending.append(record)

    def add_histograms(self, step, rows, tables):
        """Stores `[len(rows), bins, 3]` histogram tables of one step."""
        self.pending_histograms.append((int(step), list(rows), tables))

    def write_buffered(self):
        """Writes the records and histograms added since the last call."""
        records, self.pending = self.pending, []
        self.pending_since = None
        histograms, self.pending_histograms = self.pending_histograms, []
        self.write_records(records)
        for step, rows, tables in histograms:
            self.write_histograms(step, rows, tables)
        if records or histograms:
            # On disk at once, for TensorBoard (a flush per group of
            # `WRITE_EVERY` records: ~1 µs per step).
            self.writer.flush()

    # Writing, between steps ---------------------------------------------

    def write_records(self, records):
        """Writes `records` in order, as `write_record` writes each.

        Runs of consecutive routine records (applied, finite, nothing to
        judge, no depth profile due) are written at once: their values
        are computed as one array per set of signals (with and without
        `update_ratio`) and their summaries filled together
        (`EventWriter.scalar_arrays`), the same bytes; any other record
        goes through `write_record`. One call per run, not one per kind of
        record: a group of 32 MLP records took 1.09 ms when its runs were
        split at each `update_ratio` record, 0.54 ms now (tight loop).
        """
        if not records:
            return
        n = len(self.variables)
        table = np.stack(records)
        stats = table[:, : n * NUM_STATS].reshape(len(records), n, NUM_STATS)
        steps = table[:, n * NUM_STATS].astype(np.int64)
        routine = (table[:, n * NUM_STATS + 1] == KIND_APPLIED) & ~(
            stats[:, :, NONFINITE].any(axis=1)
        )
        if self.histogram_freq:
            routine &= steps % self.histogram_freq != 0
        with_ratio = steps % self.update_ratio_freq == 0
        start = 0
        while start < len(records):
            if not (routine[start] and self._routine_ready()):
                self.write_record(records[start])
                start += 1
                continue
            end = start + 1
            while end < len(records) and routine[end]:
                end += 1
            self._write_routine(
                steps[start:end], stats[start:end], with_ratio[start:end]
            )
            start = end

    def _write_routine(self, steps, stats, with_ratio):
        """Writes routine records (see `write_records`): `stats`
        `[records, variables, NUM_STATS]`, `with_ratio` whether each logs
        `update_ratio`."""
        present, _ = self._present_and_tags()
        rows = stats[:, present]
        tails = self._summaries(rows)
        numbers: list[Any] = [None] * len(steps)
        tags: list[Any] = [None] * len(steps)
        for kind in (True, False):
            (at,) = np.nonzero(with_ratio == kind)
            if not len(at):
                continue
            table = _per_variable_table(rows[at], self._logged_signals(kind))
            values = np.concatenate(
                [table.reshape(len(at), -1), tails[at]], axis=1
            )
            kind_tags = self._record_tags(kind, [])
            for i, row in zip(at, values, strict=True):
                numbers[i], tags[i] = row, kind_tags
        self.writer.scalar_arrays([int(s) for s in steps], tags, numbers)

    def _summaries(self, rows):
        """`[records, summaries]`: the `grad_summary/` values of records'
        present `rows` (`[records, variables, NUM_STATS]`), in tag order:
        the log10 variance ratio, and the global norm if logged."""
        tail = [self._log10_variance_ratios(rows)]
        if "global_norm" in self.signals:
            norms = rows[:, :, NORM]
            tail.append(np.sqrt(np.einsum("ij,ij->i", norms, norms)))
        return np.stack(tail, axis=1)

    def _routine_ready(self):
        """Whether routine records may be written at once: the layout is
        written and no record is left to judge."""
        return self.layout_written and not self._judging()

    def _judging(self):
        """Whether the callback's warning still judges records (only the
        first ones are judged, if any)."""
        callback = self.callback
        return getattr(callback, "warn", True) and not getattr(
            callback, "_judged", False
        )

    def write_record(self, record):
        n = len(self.variables)
        stats = record[: n * NUM_STATS].reshape(n, NUM_STATS)
        step, kind, skipped_total = record[n * NUM_STATS :]
        step = int(step)
        present, tags = self._present_and_tags()
        signals = self.signals
        first = self._first_nonfinite(stats, present)
        head: list[tuple[str, float]] = []
        if first is not None and "first_nonfinite_layer" in signals:
            head.append(
                (
                    "grad_summary/first_nonfinite_layer",
                    self.layer_index[self.layer_of[first]],
                )
            )
        if kind == KIND_SKIPPED:
            values = head
            if "grad_nonfinite" in signals:
                values += [
                    (f"grad_nonfinite/{self.paths[i]}", stats[i, NONFINITE])
                    for i in present
                ]
            values.append(("grad_summary/skipped_steps", skipped_total))
            # No warning: loss scaling skips such steps by design (often
            # at the start of training, while the scale settles).
            self.writer.scalars(step, values)
            return
        rows = stats[present]
        with_ratio = step % self.update_ratio_freq == 0
        present, tags = self._present_and_tags(with_ratio)
        # Per-variable values, row by row (variables in forward order,
        # signals in `_PER_VARIABLE` order), as one array, then the
        # summaries; their tags are cached as one tuple.
        table = _per_variable_table(rows, self._logged_signals(with_ratio))
        tail = self._summaries(rows[None])[0]
        numbers = np.concatenate([[v for _, v in head], table.ravel(), tail])
        self.writer.scalar_array(
            step, self._record_tags(with_ratio, head), numbers
        )
        self._write_overview(step, stats, present)
        if first is not None:
            self.callback._nonfinite(
                step, self.layer_of[first], self.paths[first]
            )
        if not self._judging():
            return
        variable_records = [
            VariableRecord(
                self.paths[i],
                self.shapes[i],
                float(stats[i, VARIANCE]),
                float(stats[i, NORM]),
                float(stats[i, WEIGHT_NORM]),
                float(stats[i, NONFINITE]),
                float(stats[i, UPDATE_NORM]),
            )
            for i in present
        ]
        self.callback._check_records(step, variable_records)

    def _record_tags(self, with_ratio, head):
        """The tags of an applied record's values, one tuple (cached)."""
        key = (with_ratio, tuple(tag for tag, _ in head), len(self.present))
        caches = self.__dict__.setdefault("_record_tags_cache", {})
        tags = caches.get(key)
        if tags is None:
            tail = ["grad_summary/log10_variance_ratio"]
            if "global_norm" in self.signals:
                tail.append("grad_summary/global_norm")
            tags = (*key[1], *self._present_and_tags(with_ratio)[1], *tail)
            caches[key] = tags
        return tags

    def _logged_signals(self, with_ratio=True):
        """The per-variable signals logged (`update_ratio` only at the
        steps of `update_ratio_freq`: `with_ratio`)."""
        return [
            name
            for name, _ in _PER_VARIABLE
            if name in self.signals and (with_ratio or name != "update_ratio")
        ]

    def _present_and_tags(self, with_ratio=True):
        """Sorted present rows and their per-variable tags (cached)."""
        caches = self.__dict__.setdefault("_tags_cache", {})
        cached = caches.get(with_ratio)
        if cached is None or cached[0] != len(self.present):
            present = sorted(self.present)
            names = self._logged_signals(with_ratio)
            tags = [f"{n}/{self.paths[i]}" for i in present for n in names]
            kernels = [
                k for k, i in enumerate(present) if len(self.shapes[i]) >= 2
            ]
            cached = (
                len(self.present),
                present,
                tags,
                kernels or list(range(len(present))),
            )
            caches[with_ratio] = cached
        self._kernel_rows = cached[3]
        return cached[1], cached[2]

    def _log10_variance_ratios(self, rows):
        """`log10_variance_ratio(...)[0]` of each record's present `rows`
        (`[records, variables, NUM_STATS]`)."""
        kernels = self._kernel_rows
        if not kernels:
            return np.full(len(rows), math.nan)
        floored = np.maximum(rows[:, kernels, VARIANCE], VARIANCE_FLOOR)
        high, low = floored.max(axis=1), floored.min(axis=1)
        with np.errstate(invalid="ignore", over="ignore"):
            ratios = np.log10(high / low)
        ratios[~(np.isfinite(high) & np.isfinite(low))] = math.nan
        return ratios

    def _write_overview(self, step, stats, present):
        """The all-layers overview (`keras_winit.monitoring.overview`).

        The custom-scalars layout (one chart per logged statistic, every
        variable on it in forward order) once per run, with the first
        record; depth profiles (each statistic against depth, an image)
        every `histogram_freq` steps.
        """
        # Imported here: its PNG encoder and protos are not needed by
        # `import keras_winit`.
        from keras_winit.monitoring import overview

        logged = self._logged_signals()
        if not self.layout_written:
            self.layout_written = True
            written = set(logged)
            if self.weights_freq:
                written.add("weight_variance")
            charts = [n for n in overview.STATISTICS if n in written]
            if charts:
                self.writer.write_summary(
                    overview.layout_summary(charts, self.paths), step
                )
        if not self.histogram_freq or step % self.histogram_freq:
            return
        with_ratio = step % self.update_ratio_freq == 0
        profiled = [
            n
            for n in DEPTH_PROFILES
            if n in logged and (with_ratio or n != "update_ratio")
        ]
        if not profiled or not present:
            return
        read = dict(_PER_VARIABLE)
        values = {
            name: [float(read[name](stats[i])) for i in present]
            for name in profiled
        }
        self.writer.write_summary(
            overview.depth_profile_summary(
                values, [self.paths[i] for i in present], step=step
            ),
            step,
        )

    @staticmethod
    def _first_nonfinite(stats, present):
        """First row, in forward order, with a non-finite gradient."""
        if not stats[:, NONFINITE].any():
            return None
        hits = np.flatnonzero(stats[present, NONFINITE] > 0)
        return present[int(hits[0])] if len(hits) else None

    def write_histograms(self, step, rows, tables):
        self.writer.histograms(
            step,
            [
                (f"grad_histogram/{self.paths[i]}", table)
                for i, table in zip(rows, tables, strict=True)
            ],
        )

    def current_step(self):
        return int(to_numpy(self.optimizer.iterations))

    def write_weights(self, force=False):
        step = self.current_step()
        # Logged at the first batch end at or after each multiple of freq.
        mark = step // self.weights_freq
        if not force and mark == self.weights_written_at:
            return
        self.weights_written_at = mark
        self.writer.scalars(
            step,
            [
                (
                    f"weight_variance/{p}",
                    np.var(np.asarray(to_numpy(w)).astype("float64")),
                )
                for w, p in zip(self.variables, self.paths, strict=True)
            ],
        )

    def write_pending(self, force=False):
        """Writes the records the backend has computed (each backend's)."""
        raise NotImplementedError

    def close(self):
        """Writes what is pending (called on every exit path)."""
        self.write_pending(force=True)


# Floor of the variance in the log10 ratio, so that a layer whose gradient
# is exactly zero gives a large finite ratio instead of infinity.
VARIANCE_FLOOR = 1e-30


def log10_variance_ratio(records):
    """`(ratio, largest, smallest)` over the kernels of `records`.

    `log10(max Var(g) / min Var(g))` over the variables of rank >= 2 (all
    variables when there is none); `largest` and `smallest` are the
    `VariableRecord`s reaching the extremes. NaN (and `None`s) when a
    variance is not finite.
    """
    kernels = [r for r in records if len(r.shape) >= 2] or list(records)
    if not kernels:
        return math.nan, None, None
    floored = [max(r.variance, VARIANCE_FLOOR) for r in kernels]
    high, low = max(floored), min(floored)
    if not (math.isfinite(high) and math.isfinite(low)):
        return math.nan, None, None
    return (
        math.log10(high / low),
        kernels[floored.index(high)],
        kernels[floored.index(low)],
    )
