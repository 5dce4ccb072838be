"""The one TensorBoard event writer of keras_winit.

`EventWriter` writes TensorBoard `Event` protos (`tensorboard.compat.proto`)
to an event file, framed as TensorBoard's own `RecordWriter` frames them
(the TFRecord format: length, masked CRC-32C of the length, data, masked
CRC-32C of the data). Every summary keras_winit writes goes through it:
`GradientVarianceLogger`'s scalars and histograms,
`ActivationHistogramLogger`'s histograms, and any `Summary` proto passed to
`EventWriter.write_summary` (e.g. a custom_scalars layout or an image).

What it writes is what `tf.summary.scalar` and `tf.summary.histogram` write
(TF2-style tensor summaries carrying the `scalars` / `histograms` plugin
metadata): a scalar is a `float32` tensor of shape `()`; a histogram a
`float64` tensor of shape `(buckets, 3)`, rows `[left_edge, right_edge,
count]`, computed by `histogram_buckets`, TensorBoard's rule.

Framing: here, with `google_crc32c`'s CRC-32C (hardware or C, ~1 µs per
record; tested byte for byte against TensorBoard's `RecordWriter`, whose
CRC-32C in pure Python cost 306 µs per record of the project MLP's 48
scalars and 3.7 ms per record of MobileNetV2's 632: the framing this
module used when TensorFlow was not installed). Local files are written
with Python's buffered I/O; paths of other file systems (`gs://`, ...)
with TensorFlow's `GFile`. Writes are synchronous (no thread).

Faults never stop training: a failing write or flush (disk full,
permission denied, the directory deleted) is reported once with a
`EventWriterWarning`; the events are kept in memory (up to
`MAX_BACKLOG_BYTES`) and written to a new event file as soon as the
directory can be (re-)created; when the event file was deleted while open,
its content is recovered from the still-open file and written back.
Whatever cannot be saved by `close` is reported in a last warning.
"""

import atexit
import numbers
import os
import socket
import struct
import sys
import time
import warnings
import weakref
from typing import Any

import google_crc32c
import numpy as np

#: Number of histogram buckets of `tf.summary.histogram` (its default).
DEFAULT_BUCKETS = 30
#: Largest size, in bytes, of the events kept in memory after a fault.
MAX_BACKLOG_BYTES = 64 * 2**20

# Set to False to use no TensorFlow file system even when TensorFlow is
# installed (tests: environments without TensorFlow).
use_tensorflow = True

_files = 0
_open_writers: weakref.WeakSet[Any] = weakref.WeakSet()


class EventWriterWarning(UserWarning):
    """An event file could not be written; training goes on."""


def _tensorflow():
    """The `tensorflow` module if it may be used for the file systems it
    knows (paths with a scheme, `gs://...`), else `None`."""
    if not use_tensorflow:
        return None
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        return None
    import tensorflow as tf

    return tf


def _errors():
    """The exceptions of a failed write: TensorFlow's too once it is
    imported (it raises them for the file systems it writes)."""
    tf = sys.modules.get("tensorflow") if use_tensorflow else None
    if tf is None:
        return (OSError,)
    return (OSError, tf.errors.OpError)


def _is_local(path):
    return "://" not in path


def makedirs(path):
    """Creates `path` and its parents (any file system TensorFlow knows)."""
    tf = None if _is_local(path) else _tensorflow()
    if tf is not None:
        tf.io.gfile.makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def check_writable(run_dir, who, log_dir):
    """Creates `run_dir`; raises a `ValueError` naming `log_dir` otherwise.

    Called before the first step, so that an unwritable directory fails
    early, not after epochs of training.
    """
    try:
        makedirs(run_dir)
        if _is_local(run_dir) and not os.access(run_dir, os.W_OK | os.X_OK):
            raise PermissionError(f"Permission denied: {run_dir!r}")
    except _errors() as e:
        raise ValueError(
            f"{who} cannot write to `log_dir`: {run_dir!r} cannot be created "
            f"or is not writable ({e}). Received: log_dir={log_dir!r}"
        ) from e


def _masked_crc32c(data):
    """The TFRecord format's masked CRC-32C of `data`."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _frame(record):
    """`record` framed as a TFRecord: its length, the length's masked
    CRC-32C, the record, the record's masked CRC-32C (tested byte for byte
    against TensorBoard's `RecordWriter`)."""
    length = struct.pack("<Q", len(record))
    return b"".join(
        (
            length,
            struct.pack("<I", _masked_crc32c(length)),
            record,
            struct.pack("<I", _masked_crc32c(record)),
        )
    )


class _Sink:
    """One event file: framed records appended to it (a local file, or,
    for a path of another file system, TensorFlow's `GFile`)."""

    def __init__(self, path):
        self.path = path
        self.reader = None
        tf = None if _is_local(path) else _tensorflow()
        if tf is not None:
            self._file = tf.io.gfile.GFile(path, "wb")
        else:
            self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        if _is_local(path):
            # Kept open to recover the content if the file is deleted.
            try:
                self.reader = os.open(path, os.O_RDONLY)
            except OSError:
                self.reader = None

    def write(self, records):
        """Writes `records` (a list) in order, in one call to the file."""
        self._file.write(b"".join([_frame(record) for record in records]))

    def flush(self):
        self._file.flush()

    def exists(self):
        if _is_local(self.path):
            return os.path.exists(self.path)
        return True  # Not checked: a remote exists() is a request.

    def recover(self):
        """The bytes written so far, read through the kept descriptor."""
        if self.reader is None:
            return b""
        chunks: list[bytes] = []
        offset = 0
        while True:
            chunk = os.pread(self.reader, 2**20, offset)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            offset += len(chunk)

    def close(self):
        try:
            self._file.close()
        finally:
            if self.reader is not None:
                os.close(self.reader)
                self.reader = None


class EventWriter:
    """Writes summaries to a new TensorBoard event file.

    A new event file (`events.out.tfevents.*.v2`) is created in `logdir`
    on construction. Each `write_summary` (or `scalar`, `histogram`) call
    writes one `Event`; `flush` makes them visible on disk; `close` ends the
    file. Faults (disk full, permission denied, deleted directory) do not
    raise: see the module docstring.

    Examples:

    >>> import tempfile
    >>> import numpy as np
    >>> from keras_winit.monitoring import EventWriter
    >>> logdir = tempfile.mkdtemp()
    >>> with EventWriter(logdir) as writer:
    ...     writer.scalar("loss", 0.25, step=1)
    ...     writer.histogram("kernel", np.arange(10.0), step=1, buckets=5)
    >>> from tensorboard.backend.event_processing import event_accumulator
    >>> acc = event_accumulator.EventAccumulator(
    ...     logdir, size_guidance={event_accumulator.TENSORS: 0})
    >>> _ = acc.Reload()
    >>> sorted(acc.Tags()["tensors"])
    ['kernel', 'loss']
    >>> from tensorboard.util import tensor_util
    >>> float(tensor_util.make_ndarray(acc.Tensors("loss")[0].tensor_proto))
    0.25
    >>> tensor_util.make_ndarray(acc.Tensors("kernel")[0].tensor_proto)[:, 2]
    array([2., 2., 2., 2., 2.])

    Args:
        logdir: Directory of the event file; created if missing.
        flush_secs: Largest time, in seconds, between a write and the next
            flush (checked at each write). Defaults to `120`.
    """

    def __init__(self, logdir, flush_secs=120):
        if not isinstance(logdir, (str, os.PathLike)) or not os.fspath(logdir):
            raise ValueError(
                "Argument `logdir` must be a non-empty path. "
                f"Received: logdir={logdir!r}"
            )
        if (
            not isinstance(flush_secs, numbers.Real)
            or isinstance(flush_secs, bool)
            or not float(flush_secs) > 0
        ):
            raise ValueError(
                "Argument `flush_secs` must be a positive number. "
                f"Received: flush_secs={flush_secs!r}"
            )
        self.logdir = os.fspath(logdir)
        self.flush_secs = float(flush_secs)
        self.paths = []
        self._closed = False
        self._warned = False
        self._backlog = []
        self._backlog_bytes = 0
        self._lost = 0
        self._sink = None
        self._tags_with_metadata = set()
        # Serialized `Summary.value` of a tag's scalars, but the float32.
        self._scalar_prefixes = {}
        self._scalar_templates = {}
        self._next_flush = time.monotonic() + self.flush_secs
        makedirs(self.logdir)
        self._sink = self._open()
        _open_writers.add(self)

    @property
    def path(self):
        """Path of the event file being written."""
        return self.paths[-1]

    # Public writes ------------------------------------------------------

    def write_summary(self, summary, step):
        """Writes a `tensorboard.compat.proto.summary_pb2.Summary` at `step`.

        Args:
            summary: A `Summary` proto (any plugin: scalars, histograms,
                images, custom_scalars...); TensorFlow's
                `tf.compat.v1.Summary` is accepted too.
            step: The step, an integer `>= 0`.
        """
        from tensorboard.compat.proto import event_pb2
        from tensorboard.compat.proto import summary_pb2

        self._check_open("a summary")
        if (
            not isinstance(summary, summary_pb2.Summary)
            and getattr(getattr(summary, "DESCRIPTOR", None), "full_name", "")
            == "tensorflow.Summary"
        ):
            # TensorFlow's own class of the same proto.
            summary = summary_pb2.Summary.FromString(
                summary.SerializeToString()
            )
        if not isinstance(summary, summary_pb2.Summary):
            raise TypeError(
                "Argument `summary` must be a "
                "`tensorboard.compat.proto.summary_pb2.Summary`. "
                f"Received: summary of type {type(summary).__name__}"
            )
        _check_step(step)
        event = event_pb2.Event(wall_time=time.time(), step=int(step))
        event.summary.CopyFrom(summary)
        self._write([event.SerializeToString()])

    def scalars(self, step, tags_and_values):
        """Writes float32 scalars, as `tf.summary.scalar` does, in one event.

        The bytes are those of the `Summary` proto of `tf.summary.scalar`'s
        values (tested byte for byte against it): a tag's first value
        carries the `scalars` plugin metadata and is built as a proto; its
        later values reuse the tag's serialized prefix, followed by the
        float32 value: 30 µs for 72 values instead of 115 µs (one core of
        the benchmark machine).

        Args:
            step: The step, an integer `>= 0`.
            tags_and_values: Iterable of `(tag, real number)` pairs.
        """
        pairs = list(tags_and_values)
        if not pairs:
            self._check_open("scalars")
            _check_step(step)
            self.write_summary(_summary_pb2().Summary(), step)
            return
        self.scalar_array(
            step, tuple(tag for tag, _ in pairs), [v for _, v in pairs]
        )

    def scalar_array(self, step, tags, values):
        """`scalars(step, zip(tags, values))` for a tuple of tags that
        repeats (a record's), without building the pairs.

        Args:
            step: The step, an integer `>= 0`.
            tags: Tuple of tags (not empty).
            values: Sequence or array of real numbers, one per tag.
        """
        self.scalar_arrays([step], tags, [values])

    def scalar_arrays(self, steps, tags, values):
        """`scalar_array(step, tags, row)` for each step and row of
        `values`, one event each, in order; the summaries of the rows of
        one tag tuple are filled at once (the same bytes).

        Args:
            steps: Sequence of steps, integers `>= 0`.
            tags: Tuple of tags (not empty), the same for every row; or a
                sequence of such tuples, one per row (a few distinct
                tuples, e.g. a record's tags with and without a signal).
            values: `[len(steps), len(tags)]` real numbers; or, with one
                tuple of tags per row, a sequence of rows.
        """
        self._check_open("scalars")
        for step in steps:
            _check_step(step)
        if all(isinstance(tag, str) for tag in tags):
            tags = tuple(tags)  # One tuple (or list) of tags for every row.
        if isinstance(tags, tuple):
            rows_of = {tags: list(range(len(steps)))}
            values = [values]
        else:
            if len(tags) != len(steps):
                raise ValueError(
                    "Argument `tags` must be one tuple of tags, or one per "
                    f"step ({len(steps)}). Received: {len(tags)} tuples"
                )
            rows_of = {}
            for i, row_tags in enumerate(tags):
                rows_of.setdefault(row_tags, []).append(i)
            values = [[values[i] for i in at] for at in rows_of.values()]
        summaries: list[Any] = [None] * len(steps)
        for (row_tags, at), rows in zip(rows_of.items(), values, strict=True):
            for i, summary in zip(
                at, self._summaries(row_tags, rows), strict=True
            ):
                summaries[i] = summary
        wall_time = time.time()
        self._write(
            [
                _event(wall_time, step, summary)
                for step, summary in zip(steps, summaries, strict=True)
            ]
        )

    def _summaries(self, tags, values):
        """The serialized summaries of the scalars `tags` of each row of
        `values`, filled at once from a template once every tag has been
        written (its metadata goes with its first value only)."""
        with np.errstate(over="ignore"):  # Out of float32 range: +-inf.
            floats = np.asarray(values, np.float64).astype(np.float32)
        template = self._scalar_templates.get(tags)
        if template is None and all(t in self._scalar_prefixes for t in tags):
            template = self._template(tags)
        if template is None:  # Some tag's first value: with metadata.
            out = []
            for row in floats:
                data = row.tobytes()
                parts = []
                for i, tag in enumerate(tags):
                    prefix = self._scalar_prefixes.get(tag)
                    if prefix is None:
                        parts.append(self._first_scalar(tag, float(row[i])))
                    else:
                        parts.append(prefix + data[4 * i : 4 * i + 4])
                out.append(b"".join(parts))
            return out
        summary, offsets = template
        buffer = np.tile(summary, (len(floats), 1))
        buffer[:, offsets] = floats.view(np.uint8).reshape(len(floats), -1, 4)
        return [row.tobytes() for row in buffer]

    def _template(self, tags):
        """`(bytes, [n, 4] offsets)`: the summary of the scalars of `tags`
        (each tag's prefix, then room for its float32), and where the
        float32s go."""
        if len(self._scalar_templates) >= 64:  # Bounded: tag sets vary.
            self._scalar_templates.clear()
        parts, offsets, position = [], [], 0
        for tag in tags:
            prefix = self._scalar_prefixes[tag]
            parts.append(prefix + bytes(4))
            position += len(prefix)
            offsets.append(position)
            position += 4
        summary = np.frombuffer(b"".join(parts), np.uint8)
        index = np.asarray(offsets)[:, None] + np.arange(4)
        template = (summary, index)
        self._scalar_templates[tags] = template
        return template

    def _first_scalar(self, tag, value):
        """The serialized `Summary.value` field of a tag's first scalar,
        with the plugin metadata; caches the prefix of its later ones."""
        from tensorboard.compat.proto import summary_pb2
        from tensorboard.plugins.scalar import metadata

        def encoded(value, with_metadata):
            summary = summary_pb2.Summary()
            item = summary.value.add(tag=tag)
            item.tensor.dtype = 1  # DT_FLOAT
            item.tensor.float_val.append(value)
            item.tensor.tensor_shape.SetInParent()
            if with_metadata:
                item.metadata.CopyFrom(
                    metadata.create_summary_metadata(
                        display_name=None, description=None
                    )
                )
            return summary.SerializeToString()

        # The tensor (float_val last) is the value's last field without
        # metadata: its last 4 bytes are the float32.
        self._scalar_prefixes[tag] = encoded(0.0, False)[:-4]
        if tag in self._tags_with_metadata:
            return encoded(value, False)
        # TensorBoard reads a tag's metadata from its first value only.
        self._tags_with_metadata.add(tag)
        return encoded(value, True)

    def histograms(self, step, tags_and_tables):
        """Writes `(buckets, 3)` tables of `histogram_buckets`, in one event.

        Args:
            step: The step, an integer `>= 0`.
            tags_and_tables: Iterable of `(tag, table)` pairs.
        """
        from tensorboard.compat.proto import summary_pb2
        from tensorboard.plugins.histogram import metadata
        from tensorboard.util import tensor_util

        summary = summary_pb2.Summary()
        hist_metadata = None
        for tag, table in tags_and_tables:
            item = summary.value.add(tag=tag)
            item.tensor.CopyFrom(
                tensor_util.make_tensor_proto(
                    np.asarray(table, np.float64), dtype=np.float64
                )
            )
            if tag not in self._tags_with_metadata:
                self._tags_with_metadata.add(tag)
                if hist_metadata is None:
                    hist_metadata = metadata.create_summary_metadata(
                        display_name=None, description=None
                    )
                item.metadata.CopyFrom(hist_metadata)
        self.write_summary(summary, step)

    def scalar(self, tag, value, step):
        """Writes a scalar, as `tf.summary.scalar(tag, value, step)` does.

        Args:
            tag: The summary's tag, a non-empty string.
            value: A real number, or an array (any backend's tensor) of
                shape `()`; written as `float32`.
            step: The step, an integer `>= 0`.
        """
        self._check_open(f"tag={tag!r}")
        _check_tag(tag)
        array = _to_numpy(value, "value")
        if array.shape != ():
            raise ValueError(
                "Argument `value` must be a scalar. "
                f"Received: value with shape {array.shape}"
            )
        if array.dtype.kind not in "biuf":
            raise ValueError(
                "Argument `value` must be a real number. "
                f"Received: value={value!r} of dtype {array.dtype}"
            )
        _check_step(step)
        self.scalars(step, [(tag, np.float32(array))])

    def histogram(self, tag, values, step, buckets=DEFAULT_BUCKETS):
        """Writes a histogram, as `tf.summary.histogram` does.

        Args:
            tag: The summary's tag, a non-empty string.
            values: An array of any shape (any backend's tensor), of real
                numbers; the histogram is over all its elements.
            step: The step, an integer `>= 0`.
            buckets: Number of buckets, a positive integer. Defaults to
                `30`, as `tf.summary.histogram`.
        """
        self._check_open(f"tag={tag!r}")
        _check_tag(tag)
        if (
            not isinstance(buckets, numbers.Integral)
            or isinstance(buckets, bool)
            or buckets < 1
        ):
            raise ValueError(
                "Argument `buckets` must be a positive integer. "
                f"Received: buckets={buckets!r}"
            )
        array = _to_numpy(values, "values")
        if array.dtype.kind not in "biuf":
            raise ValueError(
                "Argument `values` must hold real numbers. "
                f"Received: values of dtype {array.dtype}"
            )
        _check_step(step)
        self.histograms(step, [(tag, histogram_buckets(array, int(buckets)))])

    def flush(self):
        """Writes every pending event to disk (retrying after a fault)."""
        if self._closed:
            return
        self._next_flush = time.monotonic() + self.flush_secs
        if self._sink is not None:
            try:
                self._sink.flush()
                if not self._sink.exists():
                    self._recover_deleted()
            except _errors() as e:
                self._fault(e)
                self._drop_sink()
        if self._sink is None:
            self._retry()

    def close(self):
        """Flushes and closes the event file; later writes raise."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        _open_writers.discard(self)
        if self._sink is not None:
            try:
                self._sink.close()
            except _errors() as e:
                self._fault(e)
        self._sink = None
        lost = self._lost + len(self._backlog)
        if lost:
            warnings.warn(
                f"EventWriter could not write {lost} event(s) to "
                f"{self.logdir!r}; they are lost.",
                EventWriterWarning,
                stacklevel=2,
            )
        self._backlog = []

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # Internals ------------------------------------------------------------

    def _check_open(self, what):
        if self._closed:
            raise RuntimeError(
                f"The writer of {self.logdir!r} is closed. Received {what}."
            )

    def _open(self):
        """A new event file, with its version event."""
        global _files
        from tensorboard.compat.proto import event_pb2

        _files += 1
        name = (
            f"events.out.tfevents.{int(time.time()):010d}."
            f"{socket.gethostname()}.{os.getpid()}.{_files:06d}.v2"
        )
        sink = _Sink(os.path.join(self.logdir, name))
        self.paths.append(sink.path)
        try:
            sink.write(
                [
                    event_pb2.Event(
                        wall_time=time.time(), file_version="brain.Event:2"
                    ).SerializeToString()
                ]
            )
        except BaseException:
            _close_quietly(sink)
            raise
        return sink

    def _write(self, records):
        """Writes `records` (a list) in order, in one call to the file (32
        MLP records' events: 6.0 µs each one call per event, 4.4 µs in one
        call); kept in memory after a fault, all of them."""
        if self._sink is not None:
            try:
                self._sink.write(records)
                if time.monotonic() > self._next_flush:
                    self.flush()
                return
            except _errors() as e:
                self._fault(e)
                self._drop_sink()
        for record in records:
            self._keep(record)

    def _keep(self, record):
        self._backlog.append(record)
        self._backlog_bytes += len(record)
        while self._backlog_bytes > MAX_BACKLOG_BYTES and self._backlog:
            self._backlog_bytes -= len(self._backlog.pop(0))
            self._lost += 1

    def _fault(self, error):
        if self._warned:
            return
        self._warned = True
        warnings.warn(
            f"EventWriter cannot write to {self.logdir!r} ({error}). "
            "Training goes on; the events are kept in memory and written "
            "when the directory can be written again (reported once).",
            EventWriterWarning,
            stacklevel=4,
        )

    def _drop_sink(self):
        sink, self._sink = self._sink, None
        if sink is not None:
            _close_quietly(sink)

    def _recover_deleted(self):
        """The open event file was deleted: its events go to a new one."""
        sink = self._sink
        assert sink is not None
        self._fault(FileNotFoundError(f"{sink.path!r} was deleted"))
        # The first record is the file version event; a new file has its
        # own.
        records = _payloads(sink.recover())[1:]
        self._drop_sink()
        self._backlog[:0] = records
        self._backlog_bytes += sum(len(r) for r in records)

    def _retry(self):
        """Opens a new event file and writes the events kept in memory."""
        try:
            makedirs(self.logdir)
            sink = self._open()
        except _errors():
            return
        try:
            sink.write(self._backlog)
            sink.flush()
        except _errors():
            _close_quietly(sink)
            return
        self._sink = sink
        self._backlog = []
        self._backlog_bytes = 0


def _close_quietly(sink):
    """Closes a failed sink; a second fault is not reported (the first
    was)."""
    try:
        sink.close()
    except _errors():
        pass


def _event(wall_time, step, summary_bytes):
    """The serialized `Event(wall_time=wall_time, step=step, summary=...)`
    of the serialized `summary_bytes`: the fields in number order,
    `summary` (5) after `wall_time` (1) and `step` (2)."""
    return (
        _event_head(wall_time, int(step))
        + b"\x2a"
        + _varint(len(summary_bytes))
        + summary_bytes
    )


def _event_head(wall_time, step):
    """`Event(wall_time=wall_time, step=step).SerializeToString()`, encoded
    here (a proto message built per event cost 0.7 µs in a tight loop,
    half of what writing the record costs): field 1 a double, field 2 a
    varint, each left out when 0 (proto3); tested byte for byte against
    the proto's."""
    head = b"\x09" + struct.pack("<d", wall_time) if wall_time else b""
    return head + (b"\x10" + _varint(step) if step else b"")


def _varint(value):
    """Protobuf's base-128 varint encoding of a non-negative integer."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _summary_pb2():
    from tensorboard.compat.proto import summary_pb2

    return summary_pb2


def _payloads(data):
    """The records of TFRecord bytes (a truncated last one is dropped)."""
    records, offset = [], 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        end = offset + 12 + length + 4
        if end > len(data):
            break
        records.append(data[offset + 12 : end - 4])
        offset = end
    return records


class NullWriter:
    """A writer that writes nothing (non-chief workers of a cluster)."""

    paths = ()

    def write_summary(self, summary, step):
        pass

    def scalars(self, step, tags_and_values):
        pass

    def scalar_array(self, step, tags, values):
        pass

    def scalar_arrays(self, steps, tags, values):
        pass

    def histograms(self, step, tags_and_tables):
        pass

    def flush(self):
        pass

    def close(self):
        pass


@atexit.register
def _close_all():
    """Final flush of the writers left open (e.g. after an interrupt)."""
    for writer in list(_open_writers):
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - never fail at exit
            pass


def _check_tag(tag):
    if not isinstance(tag, str) or not tag:
        raise ValueError(
            f"Argument `tag` must be a non-empty string. Received: tag={tag!r}"
        )


def _check_step(step):
    if (
        not isinstance(step, numbers.Integral)
        or isinstance(step, bool)
        or step < 0
    ):
        raise ValueError(
            f"Argument `step` must be an integer >= 0. Received: step={step!r}"
        )


def histogram_buckets(values, buckets=DEFAULT_BUCKETS):
    """The `(buckets, 3)` table `tf.summary.histogram` computes.

    TensorBoard's rule (`tensorboard.plugins.histogram.summary_v2`), used
    for every histogram keras_winit writes. Rows are `[left_edge,
    right_edge, count]`: `buckets` equal-width buckets over `[min, max]`
    (a value falls in bucket `floor((v - min) / width)`, the maximum in
    the last one); when all values are equal, both edges of every bucket
    are that value and the last bucket holds them all; with no values, all
    zeros. Values that are not finite fall in no bucket (as in
    TensorFlow's one-hot count).

    Examples:

    >>> from keras_winit.monitoring import histogram_buckets
    >>> histogram_buckets([2.0, 2.0, 2.0], buckets=2)
    array([[2., 2., 0.],
           [2., 2., 3.]])

    Args:
        values: NumPy array of any shape.
        buckets: Positive number of buckets.

    Returns:
        A `float64` array of shape `(buckets, 3)`.
    """
    data = np.asarray(values, dtype=np.float64).reshape(-1)
    if data.size == 0:
        return np.zeros((buckets, 3), dtype=np.float64)
    low = data.min()
    high = data.max()
    size = float(data.size)
    if high - low == 0:
        edges = np.full(buckets, high)
        counts = np.zeros(buckets)
        counts[-1] = size
        return np.stack([edges, edges, counts], axis=1)
    width = (high - low) / buckets
    with np.errstate(invalid="ignore", over="ignore"):
        index = np.floor((data - low) / width)
    valid = np.isfinite(index) & (index >= 0)
    index = np.minimum(index[valid], buckets - 1).astype(np.int64)
    counts = np.bincount(index, minlength=buckets).astype(np.float64)
    edges = np.linspace(low, high, buckets + 1)
    edges[-1] = high
    return np.stack([edges[:-1], edges[1:], counts], axis=1)


def _to_numpy(value, name):
    import keras

    try:
        if keras.ops.is_tensor(value):
            return np.asarray(keras.ops.convert_to_numpy(value))
        return np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"Argument `{name}` must be a number or an array. "
            f"Received: {name} of type {type(value).__name__} ({e})"
        ) from e
