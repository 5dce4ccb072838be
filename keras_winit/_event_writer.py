"""TensorBoard event files without TensorFlow.

`Writer` writes scalar and histogram summaries with the `tensorboard`
package alone, so that the callbacks can log on the JAX and PyTorch
backends, where TensorFlow may not be installed. What it writes is what
`tf.summary.scalar` and `tf.summary.histogram` write (TF2-style tensor
summaries carrying the `scalars` / `histograms` plugin metadata):

- a scalar is a `float32` tensor of shape `()`;
- a histogram is a `float64` tensor of shape `(buckets, 3)`, one row
  `[left_edge, right_edge, count]` per bucket, computed as
  `tensorboard.plugins.histogram.summary_v2` does: `buckets` equal-width
  buckets from the minimum to the maximum, the last one closed; all
  counts in the last bucket, with both edges at the value, when every
  value is the same; all zeros when there are no values.

TensorBoard's dashboards and `EventAccumulator(...).Tensors(tag)` read them
exactly like the output of `tf.summary`.
"""

import numbers
import os
import time

import numpy as np

DEFAULT_BUCKETS = 30


class Writer:
    """Writes scalar and histogram summaries to a TensorBoard event file.

    A new event file (`events.out.tfevents.*.v2`) is created in `logdir`
    on construction. Events are written by a background thread; `flush`
    makes them visible on disk and `close` ends the file.

    Examples:

    >>> import tempfile
    >>> from keras_winit._event_writer import Writer
    >>> logdir = tempfile.mkdtemp()
    >>> with Writer(logdir) as writer:
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
        flush_secs: How often, in seconds, pending events are flushed to
            disk by the background thread. Defaults to `120`.
    """

    def __init__(self, logdir, flush_secs=120):
        from tensorboard.summary.writer import event_file_writer

        if not isinstance(logdir, (str, os.PathLike)) or not os.fspath(logdir):
            raise ValueError(
                "Argument `logdir` must be a non-empty path. "
                f"Received: logdir={logdir!r}"
            )
        if (
            not isinstance(flush_secs, numbers.Real)
            or isinstance(flush_secs, bool)
            or not flush_secs > 0
        ):
            raise ValueError(
                "Argument `flush_secs` must be a positive number. "
                f"Received: flush_secs={flush_secs!r}"
            )
        self.logdir = os.fspath(logdir)
        self._writer = event_file_writer.EventFileWriter(
            self.logdir, flush_secs=flush_secs, filename_suffix=".v2"
        )
        self._closed = False

    def scalar(self, tag, value, step):
        """Writes a scalar, as `tf.summary.scalar(tag, value, step)` does.

        Args:
            tag: The summary's tag, a non-empty string.
            value: A real number, or an array (any backend's tensor) of
                shape `()`; written as `float32`.
            step: The step, an integer `>= 0`.
        """
        from tensorboard.plugins.scalar import metadata
        from tensorboard.util import tensor_util

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
        tensor = tensor_util.make_tensor_proto(array.astype(np.float32))
        self._write(
            tag, step, tensor, metadata.create_summary_metadata(None, None)
        )

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
        from tensorboard.plugins.histogram import metadata
        from tensorboard.util import tensor_util

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
        table = histogram_buckets(array, int(buckets))
        tensor = tensor_util.make_tensor_proto(table, dtype=np.float64)
        self._write(
            tag, step, tensor, metadata.create_summary_metadata(None, None)
        )

    def flush(self):
        """Writes every pending event to disk."""
        if not self._closed:
            self._writer.flush()

    def close(self):
        """Flushes and closes the event file; later writes raise."""
        if not self._closed:
            self._writer.close()
            self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _write(self, tag, step, tensor, summary_metadata):
        from tensorboard.compat.proto import event_pb2
        from tensorboard.compat.proto import summary_pb2

        if self._closed:
            raise RuntimeError(
                f"The writer of {self.logdir!r} is closed. Received a "
                f"summary for tag={tag!r}."
            )
        if not isinstance(tag, str) or not tag:
            raise ValueError(
                "Argument `tag` must be a non-empty string. "
                f"Received: tag={tag!r}"
            )
        if (
            not isinstance(step, numbers.Integral)
            or isinstance(step, bool)
            or step < 0
        ):
            raise ValueError(
                "Argument `step` must be an integer >= 0. "
                f"Received: step={step!r}"
            )
        summary = summary_pb2.Summary()
        summary.value.add(tag=tag, metadata=summary_metadata, tensor=tensor)
        event = event_pb2.Event(
            wall_time=time.time(), step=int(step), summary=summary
        )
        self._writer.add_event(event)


def histogram_buckets(values, buckets=DEFAULT_BUCKETS):
    """The `(buckets, 3)` table `tf.summary.histogram` computes.

    Rows are `[left_edge, right_edge, count]`: `buckets` equal-width
    buckets over `[min, max]` (a value falls in bucket
    `floor((v - min) / width)`, the maximum in the last one); when all
    values are equal, both edges of every bucket are that value and the
    last bucket holds them all; with no values, all zeros. Values that
    are not finite fall in no bucket (as in TensorFlow's one-hot count).

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
