"""TensorFlow statistics: in the training graph, fused, kept in variables.

The callback's train function wraps `model.optimizer.apply` while a
recording train function is traced, so that the trace computes the sums
the statistics of the applied gradients are made of (`fused_stats`) and
stores them in non-trainable `tf.Variable`s (not tracked by the model:
saving is unaffected). No summary op is traced into `train_step`, which is
why `jit_compile=True` works. Between steps, a group of records is read
from the ring buffer, its statistics derived on the host
(`stats_from_sums`) and written from Python.

Unrecorded steps cost nothing: when the optimizer step of each call is
known in Python (Keras' own `train_step`, no loss scaling, no gradient
accumulation), two train functions are made, Keras' unmodified one and a
recording one, and each call of `fit`'s train function runs the recording
one only if one of its `steps_per_execution` steps is due; a record's row
is then given by its step. Otherwise one recording function decides in
the graph (a functional `tf.cond`), and a small header variable counts
the records.
"""

import collections
import math
import time
import warnings

import numpy as np

from keras_winit import _compat
from keras_winit.monitoring import records as records_module
from keras_winit.monitoring.records import HISTOGRAM_BINS
from keras_winit.monitoring.records import MEAN
from keras_winit.monitoring.records import NONFINITE
from keras_winit.monitoring.records import NORM
from keras_winit.monitoring.records import NUM_STATS
from keras_winit.monitoring.records import UPDATE_NORM
from keras_winit.monitoring.records import VARIANCE
from keras_winit.monitoring.records import WEIGHT_NORM

# The fields of `Hook.header` (float64), in order: records stored,
# histograms stored, steps skipped (loss scaling), the latest step seen.
_RECORDS, _HISTOGRAMS, _SKIPPED, _LATEST = range(4)


def _header(records=0.0, histograms=0.0, skipped=0.0, latest=0.0):
    """The header's fields in order (numbers or scalar tensors)."""
    return [records, histograms, skipped, latest]


def _is_keras_train_step(model):
    step = getattr(type(model), "train_step", None)
    return getattr(step, "__qualname__", "") == "TensorFlowTrainer.train_step"


class Hook(records_module.Records):
    """In-graph statistics of one `fit` call on TensorFlow."""

    def __init__(self, callback, model, writer):
        import tensorflow as tf

        super().__init__(callback, model, writer)
        spe = int(getattr(model, "steps_per_execution", 1) or 1)
        self.steps_per_execution = spe
        # Room for the records of several executions.
        self.buffer_size = min(
            max(2 * spe, 2 * records_module.WRITE_EVERY),
            records_module.MAX_BUFFERED_RECORDS,
        )
        self.batch_ends = 0
        self.next_read = 1
        self.last_seen = None
        self.written = 0
        self.hist_written = 0
        self.lost_warned = False
        self.split = (
            _is_keras_train_step(model)
            and not self.is_loss_scaled
            and not self.inner.gradient_accumulation_steps
        )
        # Recording calls since the buffer was last read (split), and
        # whether the next batch end must read it (a histogram is due).
        self.recorded_since_read = 1
        self.must_read = False
        # When the first of those calls ran (`time.monotonic`).
        self.unread_since: float | None = None
        self.next_step: int | None = None
        # The first step whose record is not read yet (split).
        self.read_from: int | None = None
        # The first step at or after `next_step` that is recorded (split).
        self.next_due = 0
        self.traced_applies = 0
        self.sizes = _sizes(self.variables)
        # The variables whose update norms are fused (`_groups`), the
        # same whichever of them have a gradient at a step.
        self.fused_rows = set(_groups(self.shapes)[0])
        # Split, one step per call: `update_ratio` from the weights' reads
        # kept across the update (see `record`), no copy variables.
        self._reads_kept = self.split and spe == 1
        n = len(self.variables)
        on_read = dict(
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        # Created in the model's strategy scope so that each replica writes
        # its (identical, all-reduced) copy without a merge call.
        with model.distribute_strategy.scope():
            # The header: number of records, of histograms, of skipped
            # steps so far, and the latest step seen; read at each batch end
            # that may hold something new. The records: a ring buffer,
            # written one row at a time in place and never read in the
            # graph (a variable written by a scatter is copied by each read
            # of it: TensorFlow's copy-on-read mode).
            self.header = tf.Variable(
                tf.constant(_header(latest=-1.0), tf.float64),
                name="winit_records_header",
                **on_read,
            )
            # Split, a row holds a record's sums only (`fused_stats`,
            # float32, as computed): its step is known in Python (see
            # `_slot`). Otherwise the whole record (`Records.width`
            # columns, float64: its step, kind and skipped count too).
            if self.split:
                empty = tf.zeros([self.buffer_size, n * NUM_STATS])
            else:
                empty = tf.zeros([self.buffer_size, self.width], tf.float64)
            self.buf = tf.Variable(empty, name="winit_records", **on_read)
            if self.update_ratio and not self._reads_kept:
                # The weights before the update, on recorded steps, when a
                # call may hold several steps or is not split (a read kept
                # for a difference taken under a `tf.cond` would be held
                # at every step, the branch taken or not): the variables
                # reduced alone (`_groups`) each in a variable of their
                # own (no flattening copy), the fused ones in one flat
                # buffer.
                fused_size = sum(
                    int(np.prod(self.shapes[row])) for row in self.fused_rows
                )
                self.snapshot = tf.Variable(
                    tf.zeros([max(fused_size, 1)]),
                    name="winit_weights_before",
                    **on_read,
                )
                self.snapshot_large = {
                    row: tf.Variable(
                        tf.zeros(shape),
                        name=f"winit_weights_before_{row}",
                        **on_read,
                    )
                    for row, shape in enumerate(self.shapes)
                    if row not in self.fused_rows
                }
            if self.histogram_freq:
                self.hist = tf.Variable(
                    tf.zeros([n, HISTOGRAM_BINS, 3]),
                    name="winit_histograms",
                    **on_read,
                )
                self.hist_step = tf.Variable(
                    tf.constant(0, tf.int64), name="winit_hist_step", **on_read
                )

    # Train functions ------------------------------------------------------

    def install(self):
        """Makes this `fit`'s train function(s); returns the one to call.

        Split: Keras' own train function for the calls without a recorded
        step, a recording one, and, when `update_ratio` is logged, a third
        for the calls holding a step whose `update_ratio` is due, which
        also takes the update's norm: the one to run is chosen in Python,
        so no branch of the graph waits untaken. Each is traced on its
        first call.
        """
        model = self.model
        make = type(model).make_train_function
        hook = self
        optimizer = self.optimizer

        def new_function():
            make(model, force=True)
            return model.train_function

        plain = with_ratio = None
        recording = new_function()
        if self.split:
            plain = new_function()
            if self.update_ratio:
                with_ratio = new_function()

        def wrap_apply(method, ratio):
            def apply(grads, trainable_variables=None, *args, **kwargs):
                import tensorflow as tf

                hook.traced_applies += 1
                stored, after = hook.record(grads, trainable_variables, ratio)
                # The update waits for the statistics: they read the
                # weights before it, and a weight updated while a read of
                # it is still to be consumed is copied first (TensorFlow's
                # copy-on-write).
                with tf.control_dependencies(
                    [] if stored is None else [stored]
                ):
                    out = method(grads, trainable_variables, *args, **kwargs)
                if after is not None:
                    after()
                return out

            return apply

        def wrap_plain(method):
            return wrap_apply(method, None)

        def wrap_ratio(method):
            return wrap_apply(method, True)

        def wrap_no_ratio(method):
            return wrap_apply(method, False)

        # Split: the recording function never takes `update_ratio`
        # (`with_ratio` does, at the steps it is due); otherwise the graph
        # decides by the step.
        recording_wrapper = wrap_plain if plain is None else wrap_no_ratio

        spe = self.steps_per_execution

        def train_function(iterator):
            if plain is not None and not hook._due_now():
                hook.next_step = hook._step() + spe
                return plain(iterator)
            function, wrapper = recording, recording_wrapper
            if with_ratio is not None and hook._ratio_due_now():
                function, wrapper = with_ratio, wrap_ratio
            # The wrapper is seen by a trace (inside this call); it never
            # stays on the optimizer after the call, whatever happens.
            with records_module.patched(optimizer, "apply", wrapper):
                logs = function(iterator)
            if not hook.recorded_since_read:
                hook.unread_since = time.monotonic()
            hook.recorded_since_read += 1
            if hook.next_step is not None:
                if hook._histogram_due(hook.next_step):
                    hook.must_read = True  # One histogram is kept.
                hook.next_step += spe
                hook.next_due = hook._next_due(hook.next_step)
            return logs

        return train_function

    def sync_step(self):
        """Re-reads the optimizer step (start of `fit`, end of each epoch)."""
        if self.split:
            self.next_step = self.current_step()
            self.next_due = self._next_due(self.next_step)
            # Called after all records were read (or before any step).
            self.read_from = self.next_step

    def _next_due(self, s):
        """The first step at or after `s` that is recorded (a multiple of
        `update_freq` or `histogram_freq`)."""
        return min(
            -(-s // f) * f for f in (self.update_freq, self.histogram_freq) if f
        )

    def _histogram_due(self, s):
        """Whether the call starting at step `s` holds a histogram step."""
        f = self.histogram_freq
        last = s + self.steps_per_execution - 1
        return bool(f) and (last // f) * f >= s

    def _read_due(self):
        """Whether a batch end reads the record buffer (split).

        After the first recording call (the first records are judged
        early), then when half the ring buffer may be filled or the first
        unread recording call ran `records.WRITE_AFTER_SECONDS` ago, or
        when a histogram (one kept) was stored: a recorded step costs no
        read of its own.
        """
        if not self.recorded_since_read:
            return False
        if self.must_read or not self.written:
            return True
        filled = self.recorded_since_read * self.steps_per_execution
        return filled >= self.buffer_size // 2 or records_module.overdue(
            self.unread_since
        )

    def _due_now(self):
        """Whether the next call's steps hold a recorded one (split): one
        comparison per call (a call between steps costs more in Python
        than a tight loop of it measures)."""
        return self._step() + self.steps_per_execution > self.next_due

    def _ratio_due_now(self):
        """Whether the next call's steps hold one whose `update_ratio` is
        logged (split)."""
        return self._holds(self.update_ratio_freq)

    def _step(self) -> int:
        """The optimizer step of the next call (split: counted, set by
        `sync_step` before the first call)."""
        if self.next_step is None:
            raise RuntimeError("The step is not counted (not split).")
        return self.next_step

    def _holds(self, f):
        """Whether the next call's steps hold a multiple of `f` (split)."""
        s = self._step()
        last = s + self.steps_per_execution - 1
        return bool(f) and (last // f) * f >= s

    # In the training graph ----------------------------------------------

    @property
    def _ratio_every_record(self):
        """Whether `update_ratio` is logged at every recorded step."""
        return self.update_ratio_freq == self.update_freq

    def record(self, grads, trainable_variables, ratio=None):
        """Computes and stores the statistics (traced into `train_step`).

        `ratio`: whether the trace takes the update's norm (`update_ratio`)
        — `True`/`False` in the split recording functions, whose steps are
        chosen in Python; `None`: decided in the graph, by the step.

        Returns `(stored, after)`: a tensor computed once the statistics
        and the copy of the weights are (what the update must wait for),
        and the function to trace after the update (its norm), each `None`
        when there is none.
        """
        import tensorflow as tf

        grads = [None if g is None else tf.convert_to_tensor(g) for g in grads]
        rows, variables, grads, step, is_update, finite = (
            self.applied_gradients(
                grads, self._applied_variables(trainable_variables)
            )
        )
        if not rows:
            return None, None
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
        # `update_ratio` at every record, or only on some (defaults).
        take_ratio = self.update_ratio if ratio is None else ratio
        # A call of the split `with_ratio` function holds one step, whose
        # `update_ratio` is due, or several (`steps_per_execution`), some.
        ratio_every_record = self._ratio_every_record or (
            ratio is True and self.steps_per_execution == 1
        )
        ratio_due = tf.logical_and(due, step % self.update_ratio_freq == 0)
        # Split, one step per call, the `with_ratio` function: Python runs
        # it only at a step whose record and `update_ratio` are due, so
        # nothing is conditional, and the weights' reads before the update
        # are kept for the difference after it: TensorFlow copies a
        # variable's buffer before updating it in place while a read of it
        # is still to be consumed (copy-on-write), and frees the copy after
        # the step (no copy kept for the `fit`).
        certain = self._reads_kept and ratio is True
        before: list = []

        def store():
            # Read once: the statistics, the copy and the difference after
            # the update see the same values.
            values = [tf.convert_to_tensor(v.value) for v in variables]
            stats = fused_stats(grads, values)
            if certain:
                before.extend(values)
                done = [stats]
            elif take_ratio and not ratio_every_record:

                def snapshot():
                    return self._take_snapshot(rows, values)

                done = [stats, _cond(ratio_due, snapshot)]
            elif take_ratio:
                done = [stats, self._take_snapshot(rows, values)]
            else:
                done = [stats]
            if not all_rows:  # Each row of sums spread over all variables.
                stats = tf.scatter_nd(
                    self._positions(rows, range(NUM_STATS)),
                    stats,
                    [NUM_STATS * n],
                )
            if self.split:
                # Nothing is skipped (no loss scaling), and Python knows
                # the steps recorded: the row is given by the step and
                # holds the sums only, no count is kept in the graph (a
                # count's read and write, or the step's columns, cost ~1%
                # of an MLP step each).
                record = stats
                slot = self._slot(step)
            else:
                stats = tf.cast(stats, tf.float64)
                header = self.header.read_value()
                count = tf.cast(header[_RECORDS], tf.int64)
                skips = tf.cast(skipped, tf.float64)
                kind = tf.where(
                    skipped,
                    records_module.KIND_SKIPPED,
                    records_module.KIND_APPLIED,
                )
                record = tf.concat(
                    [
                        stats,
                        tf.cast(
                            tf.stack([step, tf.cast(kind, tf.int64)]),
                            tf.float64,
                        ),
                        (header[_SKIPPED] + skips)[None],
                    ],
                    0,
                )
                self.header.assign(
                    header + tf.stack(_header(records=1.0, skipped=skips))
                )
                slot = count % self.buffer_size
            _write_row(self.buf, slot, record)
            # Computed after the statistics and the copy of the weights.
            with tf.control_dependencies(done):
                return tf.constant(True)

        every_call = (
            self.update_freq == 1
            and not self.is_loss_scaled
            and not self.inner.gradient_accumulation_steps
        )
        if every_call or certain:
            stored = store()  # Every call is recorded: no tf.cond.
        else:
            stored = _cond(tf.logical_or(due, skipped), store)
        if self.update_freq > 1 and not self.split:
            # The latest step seen: lets the Python side skip reading the
            # variables on batch ends that cannot hold a record.
            self.header.assign(
                tf.tensor_scatter_nd_update(
                    self.header.read_value(),
                    [[_LATEST]],
                    tf.cast(step, tf.float64)[None],
                )
            )

        if self.histogram_freq:

            def store_histograms():
                hist = tf.stack([histogram(g) for g in grads])
                if not all_rows:
                    hist = tf.scatter_nd(
                        tf.constant(rows)[:, None],
                        hist,
                        [n, HISTOGRAM_BINS, 3],
                    )
                self.hist.assign(hist)
                self.hist_step.assign(step)
                self.header.assign_add(
                    tf.constant(_header(histograms=1.0), tf.float64)
                )
                return tf.constant(True)

            hist_due = tf.logical_and(
                tf.logical_and(is_update, finite),
                step % self.histogram_freq == 0,
            )
            _cond(hist_due, store_histograms)

        if not take_ratio:
            return stored, None

        def after():
            """After the update: `sum((w_after - w_before)**2)` into the
            record."""

            def update():
                new = [v.value for v in variables]
                squares = self._update_squares(
                    rows, new, before if certain else None
                )
                if self.split:
                    slot = self._slot(step)
                else:
                    count = tf.cast(self.header[_RECORDS], tf.int64)
                    slot = (count - 1) % self.buffer_size
                columns = self._positions(rows, [_UPDATE_SQUARES])[:, 0]
                indices = tf.stack(
                    [tf.fill([len(rows)], slot), columns], axis=1
                )
                _scatter(self.buf, indices, tf.cast(squares, self.buf.dtype))
                return tf.constant(True)

            if (every_call and ratio_every_record) or certain:
                update()  # As `store`: no tf.cond.
            else:
                _cond(ratio_due, update)

        return stored, after

    def _positions(self, rows, sums):
        """`[len(sums) * len(rows), 1]`: where the `sums` rows (`_SUMS`) of
        the variables `rows` lie in a record (`fused_stats`' layout, over
        all variables)."""
        n = len(self.variables)
        at = np.asarray(sums)[:, None] * n + np.asarray(rows)[None, :]
        return at.reshape(-1, 1)

    def _slot(self, step):
        """The buffer row of the record of `step` (split; traced, int64):
        each multiple of `update_freq` is recorded, its row given by its
        index among them (see `_stored_records`)."""
        if self.update_freq > 1:
            step = step // self.update_freq
        return step % self.buffer_size

    def _partition(self, rows):
        """`(fused, alone)`: the indices into `rows` of the variables whose
        update norms are fused, and of the others (`fused_rows`)."""
        fused = [i for i, row in enumerate(rows) if row in self.fused_rows]
        alone = [i for i, row in enumerate(rows) if row not in self.fused_rows]
        return fused, alone

    def _take_snapshot(self, rows, values):
        """Copies the weights before the update (traced, in `store`);
        returns a tensor computed after the copies."""
        import tensorflow as tf

        small, large = self._partition(rows)
        if small:
            # In the order of the size groups: each group's weights are one
            # slice, read back as a `[variables, size]` matrix.
            grouped = [i for g in _size_groups(values, small) for i in g]
            weights = _flatten([values[i] for i in grouped])
            size = weights.shape[0]
            total = self.snapshot.shape[0]
            if size < total:
                weights = tf.concat([weights, tf.zeros([total - size])], 0)
            copies = [self.snapshot.assign(weights)]
        else:
            copies = []
        for i in large:
            copies.append(
                self.snapshot_large[rows[i]].assign(
                    tf.cast(values[i], tf.float32)
                )
            )
        with tf.control_dependencies(copies):
            return tf.constant(True)

    def _update_squares(self, rows, new, before=None):
        """`[len(rows)]`: `sum((w_after - w_before)**2)` (traced, after
        `apply`; its square root is taken on the host).

        `before`: the weights' reads before the update, kept across it;
        `None`: the copy variables (`_take_snapshot`). The variables of
        `fused_rows` by size groups (as `fused_stats`), the others one by
        one.
        """
        import tensorflow as tf

        small, large = self._partition(rows)
        groups = _size_groups(new, small)
        parts = []
        if groups and before is None:
            snapshot = self.snapshot.read_value()
        start = 0
        for group in groups:
            if before is None:
                size = int(np.prod(new[group[0]].shape))
                end = start + size * len(group)
                old = tf.reshape(snapshot[start:end], [len(group), size])
                start = end
            else:
                old = _rows([before[i] for i in group])
            delta = _rows([new[i] for i in group]) - old
            parts.append(tf.reduce_sum(delta * delta, axis=1))
        halves = []
        for i in large:
            if before is None:
                old = self.snapshot_large[rows[i]].read_value()
            else:
                old = tf.cast(before[i], tf.float32)
            halves.append(tf.nn.l2_loss(tf.cast(new[i], tf.float32) - old))
        if halves:
            parts.append(2.0 * tf.stack(halves))
        return _in_order(parts, [i for g in groups for i in g] + large)

    # Between steps --------------------------------------------------------

    def write_pending(self, force=False):
        """Writes the records and histograms stored since the last read.

        Reading the variables costs more than the rest of a batch end, so
        it is skipped on batch ends that cannot hold a new record, unless
        `force`.
        """
        if not force:
            self.batch_ends += 1
            if self.split:
                if not self._read_due():
                    self._write_weights_if_due()
                    return
            elif self.batch_ends < self.next_read:
                return
        self.recorded_since_read = 0
        self.unread_since = None
        self.must_read = False
        # The header counts the histograms, and (not split) the records;
        # split, the records' rows are given by their steps.
        if self.split:
            lost = self._stored_records()
            header = (
                self.header.value().numpy() if self.histogram_freq else None
            )
        else:
            header = self.header.value().numpy()
            lost = self._counted_records(int(header[_RECORDS]))
            self._schedule(int(header[_LATEST]))
        if lost and not self.lost_warned:
            self.lost_warned = True
            warnings.warn(
                f"GradientVarianceLogger dropped {lost} records stored "
                "between two batch ends.",
                stacklevel=3,
            )
        if header is not None and header[_HISTOGRAMS] > self.hist_written:
            self.hist_written = int(header[_HISTOGRAMS])
            rows = sorted(self.present)
            table = self.hist.numpy().astype("float64")
            self.add_histograms(int(self.hist_step.numpy()), rows, table[rows])
        self.write_buffered()
        self._write_weights_if_due()

    def _counted_records(self, count):
        """Queues the records stored since the last read (not split), of
        the `count` stored so far; returns the number lost (overwritten in
        the ring buffer)."""
        if count <= self.written:
            return 0
        start = max(self.written, count - self.buffer_size)
        k = len(self.variables) * NUM_STATS
        rows = self.buf.value().numpy()[
            np.arange(start, count) % self.buffer_size
        ]
        self._queue(rows[:, :k], rows[:, k:])
        lost, self.written = start - self.written, count
        return lost

    def _queue(self, sums, tail):
        """Queues records: their statistics derived from the `sums` rows
        (`stats_from_sums`), then the `tail` columns (step, kind, skipped
        count)."""
        if not len(sums):
            return
        k = len(self.variables) * NUM_STATS
        records = np.empty([len(sums), self.width])
        records[:, :k] = stats_from_sums(sums, self.sizes).reshape(-1, k)
        records[:, k:] = tail
        self.pending.extend(records)

    def _stored_records(self):
        """Queues the records of the steps run since the last read (split).

        Every multiple of `update_freq` run is recorded, in the row of its
        index among them (`_slot`). The steps run: counted in Python for
        calls of one step; with several, the optimizer's count (a call
        stops early when the data runs out; its read costs ~100 µs in
        `fit`). Of more than a buffer of them, the earliest were
        overwritten (lost). Returns the number lost.
        """
        f = self.update_freq
        if self.read_from is None or self.next_step is None:  # No step yet.
            return 0
        start = self.read_from
        if self.steps_per_execution == 1:
            end = self.next_step
        else:
            end = self.current_step()
        self.read_from = end
        steps = np.arange(-(-start // f) * f, end, f)
        lost = max(0, len(steps) - self.buffer_size)
        steps = steps[lost:]
        if len(steps):
            sums = self.buf.value().numpy()[(steps // f) % self.buffer_size]
            tail = np.zeros([len(steps), 3])
            tail[:, 0] = steps
            tail[:, 1] = records_module.KIND_APPLIED
            self._queue(sums, tail)
            self.written += len(steps)
        return lost

    def _write_weights_if_due(self):
        if self.weights_freq:
            self.write_weights()

    def _schedule(self, latest):
        """Sets the next batch end that may hold a record after `latest`.

        `latest` is the last optimizer step seen (-1: none yet). Loss-scaled
        training records skipped steps at any time: read every batch end.
        Otherwise, at most `rate` optimizer steps pass per batch end:
        `steps_per_execution`, or more if observed (several `apply` calls
        per step in a custom `train_step`).
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
        skip = int((due - latest - 1) // rate)
        self.next_read = self.batch_ends + max(1, skip)


def _scatter(variable, indices, updates):
    """`variable[indices] = updates`: in place (the ring buffer is not
    copied at each record), or, for a variable of a `tf.distribute`
    strategy (whose replicas' copies have no in-place scatter), as a new
    value assigned."""
    import tensorflow as tf

    try:
        variable.scatter_nd_update(indices, updates)
    except NotImplementedError:
        variable.assign(
            tf.tensor_scatter_nd_update(variable.read_value(), indices, updates)
        )


def _write_row(variable, row, values):
    """`variable[row] = values` in place, for a scalar `row` (no op shapes
    it into indices); as `_scatter` for a `tf.distribute` variable."""
    import tensorflow as tf

    try:
        variable.scatter_update(tf.IndexedSlices(values, row))
    except NotImplementedError:
        _scatter(variable, tf.reshape(row, [1, 1]), values[None])


def _cond(pred, true_fn):
    """`tf.cond(pred, true_fn, no-op)` that costs ~nothing when not taken.

    Inside a `tf.function`, TensorFlow lowers `tf.cond` to Switch/Merge ops,
    so the executor visits every op of the branch not taken, on every
    step. Keeping the functional `If` op runs only the taken branch.
    """
    import tensorflow as tf

    return _cond_value(pred, true_fn, lambda: tf.constant(False))


def _flatten(tensors):
    """One float32 buffer of the entries of `tensors`, in order."""
    import tensorflow as tf

    return tf.concat(
        [tf.reshape(tf.cast(t, tf.float32), [-1]) for t in tensors], 0
    )


def _groups(shapes):
    """`(fused, alone)` indices of `shapes`: the variables smaller than
    `records.LARGE_VARIABLE` entries that share their size with another
    are fused (reduced as the rows of one matrix per size, see
    `fused_stats`); the others are reduced one by one (alone, a small one
    would only add a stacking copy and ops)."""
    sizes = [int(np.prod(shape)) for shape in shapes]
    counts = collections.Counter(sizes)
    fused: list[int] = []
    alone: list[int] = []
    for i, size in enumerate(sizes):
        small = size < records_module.LARGE_VARIABLE and counts[size] > 1
        (fused if small else alone).append(i)
    return fused, alone


def _in_order(parts, order):
    """`parts` (rows in `order`) concatenated, rows put back in index order."""
    import tensorflow as tf

    out = parts[0] if len(parts) == 1 else tf.concat(parts, 0)
    if order == sorted(order):
        return out
    return tf.gather(out, np.argsort(order))


def fused_stats(grads, weights):
    """`[6 * len(grads)]` float32: the sums the statistics are made of.

    In the graph, reductions only; the statistics are derived from these
    sums on the host, in float64, by `stats_from_sums` (a division or a
    square root is an op of its own in the graph, and a CPU op costs
    microseconds to launch). The vector holds six rows of `len(grads)`
    values, one per variable (`_SUMS` names them): `sum(g)`, `sum(g**2)`,
    `sum(w**2)`; the two-pass variance and the number of non-finite
    entries (`-1` and 0 where one pass is exact, below); and 0, the room
    for the update's `sum((w_after - w_before)**2)`, filled after the
    optimizer's update.

    Fused: the variables smaller than `records.LARGE_VARIABLE` entries that
    share their size with others are grouped by size (`_groups`), and each
    group's gradients and weights are reduced as the rows of one
    `[2 * variables, size]` matrix: one set of ops per distinct size,
    however many variables (a segment sum scatter-adds entry by entry:
    measured on the project MLP, its 7 small variables cost 8% of a step
    with segment sums). The others are reduced one by one (vectorized
    sums, no copy; a large one's launch is negligible next to its work, a
    small one alone costs three ops where a group of one would cost four
    and a stacking copy). Every sum lands in one vector, read in the
    variables' order by one gather per row. One pass over each gradient
    and weight (no temporary for the large ones: a CPU elementwise op
    costs more than a reduction); on the project MLP the large variables'
    reductions are most of what the statistics cost (3-9 µs each on one
    CPU core, the weights' the slowest: they have left the cache since
    the forward pass).

    `Var = sum(g**2) / n - mean**2` is exact to float32 rounding when
    `mean**2 <= Var`, that is `2 * sum(g)**2 / n <= sum(g**2)`: tested in
    the graph for every variable at once (a variable of one entry passes:
    its variance is 0). When it fails for some variable (the mean large
    against the spread, or a sum not finite), one functional `tf.cond`,
    taken only then, computes the variances in two passes (the mean, then
    the centred squares) and counts the non-finite entries.
    """
    import tensorflow as tf

    small, large = _groups([g.shape for g in grads])
    groups = _size_groups(grads, small)
    # `at[i]`: where variable i's `sum(g)`, `sum(g**2)`, `sum(w**2)` lie in
    # `flat`; `scale`: 2 for `l2_loss` (half the sum of squares), else 1.
    at = np.zeros([len(grads), 3], np.int64)
    scale: list[float] = []
    parts = []
    matrices = []
    for group in groups:
        k = len(group)
        # Rows: the group's gradients, then its weights.
        x = _rows([grads[i] for i in group] + [weights[i] for i in group])
        matrices.append((group, x))
        parts += [tf.reduce_sum(x, axis=1), tf.reduce_sum(x * x, axis=1)]
        at[group] = len(scale) + np.arange(k)[:, None] + [0, 2 * k, 3 * k]
        scale += [1.0] * 4 * k
    if large:
        m = len(large)
        parts.append(
            tf.stack(
                [tf.reduce_sum(grads[i]) for i in large]
                + [tf.nn.l2_loss(grads[i]) for i in large]
                + [
                    tf.nn.l2_loss(tf.cast(weights[i], tf.float32))
                    for i in large
                ]
            )
        )
        at[large] = len(scale) + np.arange(m)[:, None] + [0, m, 2 * m]
        scale += [1.0] * m + [2.0] * 2 * m
    flat = parts[0] if len(parts) == 1 else tf.concat(parts, 0)
    if large:
        flat = flat * tf.constant(scale)
    g_sum, g_squares, w_squares = (tf.gather(flat, at[:, c]) for c in range(3))
    sizes = _sizes(grads).astype(np.float32)
    n = len(grads)

    def two_pass_and_count():
        means = g_sum * (1.0 / sizes)
        parts, order = [], []
        for group, x in matrices:
            g = x[: len(group)]  # Sliced here: not on every step.
            centred = g - tf.reduce_mean(g, axis=1, keepdims=True)
            parts.append(
                tf.stack(
                    [
                        tf.reduce_sum(centred * centred, axis=1),
                        _count_nonfinite(g, axis=1),
                    ],
                    axis=1,
                )
            )
            order += group
        for i in large:
            g = grads[i]
            parts.append(
                tf.stack(
                    [
                        _sum_of_squares(g - means[i]),
                        _count_nonfinite(g, axis=None),
                    ]
                )[None]
            )
            order.append(i)
        exact = _in_order(parts, order)
        return tf.concat([exact[:, 0] / sizes, exact[:, 1]], 0)

    # `2 * sum(g)**2 / n <= sum(g**2)`, as `(sum(g) * root)**2`: no
    # overflow before `sum(g**2)`'s own. A NaN or inf fails it (inf - inf
    # is NaN), also for one entry (`NaN * 0`).
    root = np.where(sizes == 1, 0.0, np.sqrt(2.0 / sizes)).astype(np.float32)
    t = g_sum * root
    one_pass = tf.reduce_all(t * t - g_squares <= 0.0)
    one_pass_rows = np.concatenate([-np.ones(n), np.zeros(n)])
    rows = _cond_value(
        one_pass,
        lambda: tf.constant(one_pass_rows, tf.float32),
        two_pass_and_count,
    )
    return tf.concat([g_sum, g_squares, w_squares, rows, tf.zeros([n])], 0)


# The rows of `fused_stats`' vector, in order (one value per variable).
_SUMS = (
    "sum",
    "squares",
    "weight_squares",
    "two_pass_variance",
    "nonfinite",
    "update_squares",
)
_SUM, _SQUARES, _WEIGHT_SQUARES, _TWO_PASS, _NONFINITE, _UPDATE_SQUARES = range(
    len(_SUMS)
)
assert len(_SUMS) == NUM_STATS  # A record's width is the same either way.


def stats_from_sums(sums, sizes):
    """`[..., len(sizes), NUM_STATS]` float64: the statistics (`records`'
    columns) from `fused_stats`' sums `[..., NUM_STATS * len(sizes)]`,
    on the host: `mean = sum(g) / n`, `Var = sum(g**2) / n - mean**2`
    (0 for one entry) unless the two-pass variance was taken, the norms
    the square roots of the sums of squares.

    Args:
        sums: Array of one or more records' sums (float32 or float64).
        sizes: The number of entries of each variable.
    """
    sums = np.asarray(sums, np.float64)
    sizes = np.asarray(sizes, np.float64)
    rows = sums.reshape(*sums.shape[:-1], NUM_STATS, len(sizes))
    total, squares = rows[..., _SUM, :], rows[..., _SQUARES, :]
    two_pass = rows[..., _TWO_PASS, :]
    out = np.empty((*rows.shape[:-2], len(sizes), NUM_STATS))
    with np.errstate(invalid="ignore", over="ignore"):
        mean = total / sizes
        one_pass = np.where(sizes == 1, 0.0, squares / sizes - mean * mean)
        out[..., VARIANCE] = np.where(two_pass == -1.0, one_pass, two_pass)
        out[..., MEAN] = mean
        out[..., NORM] = np.sqrt(squares)
        out[..., NONFINITE] = rows[..., _NONFINITE, :]
        out[..., WEIGHT_NORM] = np.sqrt(rows[..., _WEIGHT_SQUARES, :])
        out[..., UPDATE_NORM] = np.sqrt(rows[..., _UPDATE_SQUARES, :])
    return out


def _sizes(tensors):
    """The number of entries of each tensor, float64."""
    return np.array([float(np.prod(t.shape)) for t in tensors])


def _count_nonfinite(g, axis):
    """Number of NaN/inf entries of `g` (along `axis`), float32."""
    import tensorflow as tf

    return tf.reduce_sum(tf.cast(~tf.math.is_finite(g), tf.float32), axis=axis)


def _size_groups(tensors, indices):
    """`indices` grouped by the size of their tensor, in first-seen order."""
    groups: dict[int, list[int]] = {}
    for i in indices:
        groups.setdefault(int(np.prod(tensors[i].shape)), []).append(i)
    return list(groups.values())


def _rows(tensors):
    """`[len(tensors), size]` float32: the tensors (of one size) as rows.

    Tensors of one shape are stacked as they are, then reshaped once (each
    op costs the executor about a microsecond)."""
    import tensorflow as tf

    tensors = [tf.cast(t, tf.float32) for t in tensors]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        return tf.stack([tf.reshape(t, [-1]) for t in tensors])
    rows = tf.stack(tensors)
    return (
        rows if rows.shape.rank == 2 else tf.reshape(rows, [len(tensors), -1])
    )


def _sum_of_squares(x):
    """`sum(x ** 2)` in one fused reduction (`l2_loss` is half of it)."""
    import tensorflow as tf

    return 2.0 * tf.nn.l2_loss(x)


def _cond_value(pred, true_fn, false_fn):
    """`tf.cond(pred, true_fn, false_fn)`, kept functional in a graph (the
    branch not taken costs nothing; see `_cond`)."""
    import tensorflow as tf

    out = tf.cond(pred, true_fn, false_fn)
    if not tf.executing_eagerly():
        op = out.op
        while op.type not in ("If", "StatelessIf") and op.inputs:
            op = op.inputs[0].op
        if op.type in ("If", "StatelessIf"):
            _compat.keep_functional_cond(op)
    return out


def histogram(g):
    """`[bins, 3]` histogram of the finite entries, TensorBoard's rule.

    As `keras_winit.monitoring.writer.histogram_buckets`: equal-width
    buckets over `[min, max]`, the maximum in the last one; a constant
    tensor puts every entry in the last bucket, with both edges at the
    value.
    """
    import tensorflow as tf

    bins = HISTOGRAM_BINS
    g = tf.reshape(g, [-1])
    finite = tf.math.is_finite(g)
    any_finite = tf.reduce_any(finite)
    low = tf.where(
        any_finite, tf.reduce_min(tf.where(finite, g, math.inf)), 0.0
    )
    high = tf.where(
        any_finite, tf.reduce_max(tf.where(finite, g, -math.inf)), 0.0
    )
    spread = high - low
    constant = spread <= 0.0
    width = tf.where(constant, 1.0, spread / bins)
    index = tf.floor((tf.where(finite, g, low) - low) / width)
    index = tf.cast(index, tf.int32)
    index = tf.where(constant, bins - 1, tf.clip_by_value(index, 0, bins - 1))
    counts = tf.math.unsorted_segment_sum(
        tf.cast(finite, tf.float32), index, bins
    )
    edges = low + (spread / bins) * tf.range(bins + 1, dtype=tf.float32)
    edges = tf.concat([edges[:-1], high[None]], 0)
    return tf.stack([edges[:-1], edges[1:], counts], axis=1)
