"""Tests for keras_winit.monitoring.writer, the one event writer."""

import importlib.util
import os

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from keras_winit import _event_writer
from keras_winit.monitoring import writer as writer_module

HAS_TF = importlib.util.find_spec("tensorflow") is not None

# Data sets for the histograms: spread, constant, a single value, integer,
# with the maximum repeated, and empty.
HISTOGRAM_DATA = {
    "normal": np.random.default_rng(0).standard_normal((40, 25)),
    "uniform_f32": np.random.default_rng(1)
    .uniform(-3, 7, size=1000)
    .astype("float32"),
    "constant": np.full((7, 3), 2.5),
    "single": np.array([4.0]),
    "integers": np.arange(-5, 20),
    "max_repeated": np.array([0.0, 1.0, 1.0, 1.0, 0.5]),
    "empty": np.zeros((0,)),
}
BUCKETS = (1, 5, 30)


def _read(logdir):
    acc = event_accumulator.EventAccumulator(
        os.fspath(logdir), size_guidance={event_accumulator.TENSORS: 0}
    )
    acc.Reload()
    return acc


def _events(acc, tag):
    out = []
    for event in acc.Tensors(tag):
        out.append((event.step, tensor_util.make_ndarray(event.tensor_proto)))
    return out


def _plugin(acc, tag):
    meta = acc.SummaryMetadata(tag)
    return meta.plugin_data.plugin_name, meta.plugin_data.content


def _reference_buckets(data, buckets):
    """TensorBoard's own NumPy bucketing (`histogram_pb`)."""
    from tensorboard.plugins.histogram import summary_v2

    summary = summary_v2.histogram_pb("t", data, buckets=buckets)
    return tensor_util.make_ndarray(summary.value[0].tensor)


def test_scalars_read_back(tmp_path):
    with _event_writer.Writer(tmp_path) as writer:
        for step, value in enumerate([0.5, 2, np.float64(-1.25), True]):
            writer.scalar("loss", value, step=step)
        writer.scalar("other/metric", np.array(3.0, dtype="float16"), step=7)
    acc = _read(tmp_path)
    assert sorted(acc.Tags()["tensors"]) == ["loss", "other/metric"]
    loss = _events(acc, "loss")
    assert [s for s, _ in loss] == [0, 1, 2, 3]
    for (_, got), want in zip(loss, [0.5, 2.0, -1.25, 1.0], strict=True):
        assert got.dtype == np.float32 and got.shape == ()
        assert float(got) == want
    assert _events(acc, "other/metric")[0][0] == 7
    assert _plugin(acc, "loss")[0] == "scalars"


@pytest.mark.parametrize("name", sorted(HISTOGRAM_DATA))
@pytest.mark.parametrize("buckets", BUCKETS)
def test_histogram_buckets_match_tensorboard(name, buckets):
    data = HISTOGRAM_DATA[name]
    got = _event_writer.histogram_buckets(data, buckets)
    want = _reference_buckets(data, buckets)
    assert got.shape == (buckets, 3) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    if data.size:
        assert got[:, 2].sum() == data.size
        assert got[-1, 1] == data.max()


def test_histogram_non_finite_values_fall_in_no_bucket():
    data = np.array([0.0, 1.0, 2.0, np.nan])
    table = _event_writer.histogram_buckets(data, 4)
    assert table.shape == (4, 3)
    assert np.isnan(table[:, :2]).all()
    assert table[:, 2].sum() == 0


@pytest.mark.parametrize("name", sorted(HISTOGRAM_DATA))
def test_histograms_read_back(tmp_path, name):
    data = HISTOGRAM_DATA[name]
    with _event_writer.Writer(tmp_path) as writer:
        writer.histogram("h", data, step=3, buckets=5)
        writer.histogram("h", data * 2, step=4)
    acc = _read(tmp_path)
    (step3, first), (step4, second) = _events(acc, "h")
    assert (step3, step4) == (3, 4)
    assert first.dtype == np.float64 and first.shape == (5, 3)
    assert second.shape == (30, 3)
    np.testing.assert_allclose(first, _reference_buckets(data, 5))
    np.testing.assert_allclose(second, _reference_buckets(data * 2, 30))
    assert _plugin(acc, "h")[0] == "histograms"


def test_backend_tensors_are_accepted(tmp_path):
    import keras

    values = keras.random.normal((50,), seed=1)
    with _event_writer.Writer(tmp_path) as writer:
        writer.histogram("h", values, step=0, buckets=4)
        writer.scalar("s", keras.ops.mean(values), step=0)
    acc = _read(tmp_path)
    expected = keras.ops.convert_to_numpy(values)
    np.testing.assert_allclose(
        _events(acc, "h")[0][1], _reference_buckets(expected, 4)
    )
    np.testing.assert_allclose(
        _events(acc, "s")[0][1], expected.mean(), rtol=1e-6
    )


def test_flush_makes_events_visible_before_close(tmp_path):
    writer = _event_writer.Writer(tmp_path)
    writer.scalar("a", 1.0, step=0)
    writer.flush()
    assert [s for s, _ in _events(_read(tmp_path), "a")] == [0]
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        writer.scalar("a", 2.0, step=1)
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].startswith("events.out.tfevents.")
    assert files[0].endswith(".v2")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda w: w.scalar("", 1.0, step=0), "`tag`"),
        (lambda w: w.scalar(3, 1.0, step=0), "`tag`"),
        (lambda w: w.scalar("t", 1.0, step=-1), "`step`"),
        (lambda w: w.scalar("t", 1.0, step=1.5), "`step`"),
        (lambda w: w.scalar("t", 1.0, step=True), "`step`"),
        (lambda w: w.scalar("t", [1.0, 2.0], step=0), "`value`"),
        (lambda w: w.scalar("t", "x", step=0), "`value`"),
        (lambda w: w.histogram("t", [1.0], step=0, buckets=0), "`buckets`"),
        (lambda w: w.histogram("t", [1.0], step=0, buckets=2.0), "`buckets`"),
        (lambda w: w.histogram("t", ["a"], step=0), "`values`"),
    ],
)
def test_invalid_arguments(tmp_path, call, match):
    with _event_writer.Writer(tmp_path) as writer:
        with pytest.raises(ValueError, match=match):
            call(writer)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"logdir": ""}, "`logdir`"),
        ({"logdir": None}, "`logdir`"),
        ({"logdir": "x", "flush_secs": 0}, "`flush_secs`"),
    ],
)
def test_invalid_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _event_writer.Writer(**kwargs)


@pytest.mark.skipif(not HAS_TF, reason="compares with tf.summary output")
def test_same_as_tf_summary(tmp_path):
    import tensorflow as tf

    data = HISTOGRAM_DATA["normal"]
    tf_dir = tmp_path / "tf"
    ours_dir = tmp_path / "ours"
    tf_writer = tf.summary.create_file_writer(str(tf_dir))
    with tf_writer.as_default(), tf.summary.record_if(True):
        for step in range(3):
            tf.summary.scalar("loss", 1.5 / (step + 1), step=step)
            tf.summary.histogram("kernel", data * (step + 1), step=step)
            tf.summary.histogram("few", data[:2], step=step, buckets=4)
    tf_writer.close()
    with _event_writer.Writer(ours_dir) as writer:
        for step in range(3):
            writer.scalar("loss", 1.5 / (step + 1), step=step)
            writer.histogram("kernel", data * (step + 1), step=step)
            writer.histogram("few", data[:2], step=step, buckets=4)
    theirs = _read(tf_dir)
    ours = _read(ours_dir)
    assert sorted(ours.Tags()["tensors"]) == sorted(theirs.Tags()["tensors"])
    for tag in ("loss", "kernel", "few"):
        assert _plugin(ours, tag) == _plugin(theirs, tag)
        mine = _events(ours, tag)
        reference = _events(theirs, tag)
        assert [s for s, _ in mine] == [s for s, _ in reference]
        for (_, a), (_, b) in zip(mine, reference, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-12)


def _records(path):
    """The payloads of the TFRecord file at `path`."""
    import struct

    with open(path, "rb") as f:
        data = f.read()
    out, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        out.append(data[offset + 12 : offset + 12 + length])
        offset += 16 + length
    return data, out


@pytest.mark.parametrize("use_tf", [True, False])
def test_framing_is_byte_identical_to_tensorboard(
    tmp_path, monkeypatch, use_tf
):
    # The records are framed here (google_crc32c), with or without
    # TensorFlow: byte for byte what TensorBoard's own RecordWriter (its
    # CRC-32C in pure Python) writes.
    import io

    from tensorboard.summary.writer import record_writer

    monkeypatch.setattr(writer_module, "use_tensorflow", use_tf)
    with writer_module.EventWriter(tmp_path) as writer:
        for step in range(5):
            writer.scalars(step, [(f"t{i}", i / (step + 1)) for i in range(50)])
            writer.histogram("h", np.arange(10.0) * step, step=step)
        path = writer.path
    data, payloads = _records(path)
    assert len(payloads) == 11
    reference = io.BytesIO()
    framing = record_writer.RecordWriter(reference)
    for payload in payloads:
        framing.write(payload)
    assert data == reference.getvalue()


@pytest.mark.skipif(not HAS_TF, reason="TensorFlow's file systems")
def test_other_file_systems_are_written_through_tensorflow():
    # A path with a scheme (gs://, s3://, ...) goes through TensorFlow's
    # GFile; its in-memory file system stands in for a remote one.
    import uuid

    import tensorflow as tf

    logdir = f"ram://keras_winit_{uuid.uuid4().hex}/run"
    with writer_module.EventWriter(logdir) as writer:
        writer.scalar("a", 0.5, step=3)
        path = writer.path
    assert path.startswith(logdir)
    with tf.io.gfile.GFile(path, "rb") as f:
        payloads = writer_module._payloads(f.read())
    from tensorboard.compat.proto import event_pb2

    events = [event_pb2.Event.FromString(p) for p in payloads]
    assert events[0].file_version == "brain.Event:2"
    assert events[1].step == 3
    assert events[1].summary.value[0].tag == "a"


def _proto_scalars(step, wall_time, tags_and_values, with_metadata):
    """The `Event` bytes of `EventWriter.scalars`, built with the protos
    (as `tf.summary.scalar` writes them)."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.scalar import metadata

    summary = summary_pb2.Summary()
    for tag, value in tags_and_values:
        item = summary.value.add(tag=tag)
        item.tensor.dtype = 1  # DT_FLOAT
        item.tensor.float_val.append(float(value))
        item.tensor.tensor_shape.SetInParent()
        if tag in with_metadata:
            item.metadata.CopyFrom(
                metadata.create_summary_metadata(
                    display_name=None, description=None
                )
            )
    event = event_pb2.Event(wall_time=wall_time, step=step)
    event.summary.CopyFrom(summary)
    return event.SerializeToString()


def test_scalars_are_byte_identical_to_the_protos(tmp_path):
    # The cached per-tag prefixes against the protos, byte for byte: first
    # values (with metadata), later ones, a new tag among known ones,
    # values out of float32 range, not finite, negative zero, step 0 and a
    # multi-byte step.
    from tensorboard.compat.proto import event_pb2

    special = [np.nan, np.inf, -np.inf, 1e300, -1e300, 1e-50, -0.0, 1 / 3]
    calls = [
        (0, [("a/x", 0.5), ("b/y", special[0])]),
        (1, [("a/x", v) for v in special[:1]] + [("b/y", 2.0)]),
        (300, [("a/x", s) for s in special] + [("b/y", -7.25)]),
        (300, [("a/x", s) for s in special] + [("b/y", -7.25)]),
        (2**40, [("c/new", 1.0), ("a/x", 3.0), ("b/y", np.float32(4.5))]),
        (5, []),
    ]
    with writer_module.EventWriter(tmp_path) as writer:
        for step, pairs in calls:
            writer.scalars(step, pairs)
        path = writer.path
    payloads = _records(path)[1][1:]  # After the file version event.
    assert len(payloads) == len(calls)
    seen = set()
    for payload, (step, pairs) in zip(payloads, calls, strict=True):
        wall_time = event_pb2.Event.FromString(payload).wall_time
        first = {t for t, _ in pairs if t not in seen}
        assert payload == _proto_scalars(step, wall_time, pairs, first)
        seen |= first


@pytest.mark.parametrize("wall_time", [1.7e9 + 0.123456, 0.5, 0.0])
@pytest.mark.parametrize("step", [0, 1, 127, 128, 300, 2**40, 2**63 - 1])
def test_event_head_is_the_protos(wall_time, step):
    from tensorboard.compat.proto import event_pb2

    expected = event_pb2.Event(wall_time=wall_time, step=step)
    assert writer_module._event_head(wall_time, step) == (
        expected.SerializeToString()
    )


def test_scalar_arrays_with_a_tag_tuple_per_row(tmp_path):
    # Rows of two tag tuples, interleaved (a record with and without a
    # signal), some tag's first value among them: the events, in order,
    # are those of writing each row alone.
    from tensorboard.compat.proto import event_pb2

    short, long = ("a/x", "b/y"), ("a/x", "r/z", "b/y")
    steps = [3, 4, 5, 6, 7]
    tags = [short, long, short, short, long]
    values = [[1.0, 2.0], [3.0, np.nan, 4.0], [5.0, 6.0], [7, 8], [9, 1, 2]]

    def payloads(name, write):
        with writer_module.EventWriter(tmp_path / name) as writer:
            writer.scalar("a/x", 0.0, step=0)  # A template for `short`...
            writer.scalar("b/y", 0.0, step=0)  # ...not for `long` yet.
            write(writer)
            path = writer.path
        out = []
        for payload in _records(path)[1][1:]:
            event = event_pb2.Event.FromString(payload)
            event.wall_time = 0
            out.append(event.SerializeToString())
        return out

    def one_by_one(writer):
        for step, row_tags, row in zip(steps, tags, values, strict=True):
            writer.scalar_array(step, row_tags, row)

    at_once = payloads(
        "at_once", lambda writer: writer.scalar_arrays(steps, tags, values)
    )
    assert at_once == payloads("one_by_one", one_by_one)
    assert len(at_once) == 2 + len(steps)
    # A list of tag strings is one set of tags for every row.
    listed = payloads(
        "listed",
        lambda writer: writer.scalar_arrays([3, 4], list(short), values[:3:2]),
    )
    assert listed == payloads(
        "as_tuple",
        lambda writer: writer.scalar_arrays([3, 4], short, values[:3:2]),
    )
    with writer_module.EventWriter(tmp_path / "bad") as writer:
        with pytest.raises(ValueError, match="Argument `tags`"):
            writer.scalar_arrays(steps, tags[:2], values[:2])


def test_without_tensorflow_same_events(tmp_path, monkeypatch):
    for name, use_tf in (("tf", True), ("tb", False)):
        monkeypatch.setattr(writer_module, "use_tensorflow", use_tf)
        with writer_module.EventWriter(tmp_path / name) as writer:
            writer.scalar("a", 0.5, step=1)
            writer.histogram("h", np.arange(5.0), step=2, buckets=3)
    tf_acc, tb_acc = _read(tmp_path / "tf"), _read(tmp_path / "tb")
    for tag in ("a", "h"):
        assert _plugin(tf_acc, tag) == _plugin(tb_acc, tag)
        (s1, v1), (s2, v2) = _events(tf_acc, tag)[0], _events(tb_acc, tag)[0]
        assert s1 == s2
        np.testing.assert_array_equal(v1, v2)


def test_write_summary_writes_any_summary_proto(tmp_path):
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.custom_scalar import summary as cs_summary

    layout = layout_pb2.Layout(
        category=[
            layout_pb2.Category(
                title="gradients",
                chart=[
                    layout_pb2.Chart(
                        title="variance",
                        multiline=layout_pb2.MultilineChartContent(
                            tag=[r"grad_variance/.*"]
                        ),
                    )
                ],
            )
        ]
    )
    # TensorFlow's Summary class when TensorFlow is installed.
    summary = cs_summary.pb(layout)
    assert summary.DESCRIPTOR.full_name == "tensorflow.Summary"
    with writer_module.EventWriter(tmp_path) as writer:
        writer.write_summary(summary, step=0)
        with pytest.raises(TypeError, match="`summary`"):
            writer.write_summary("not a summary", step=0)
        with pytest.raises(ValueError, match="`step`"):
            writer.write_summary(summary, step=-1)
    acc = _read(tmp_path)
    from tensorboard.plugins.custom_scalar import metadata

    tags = acc.Tags()["tensors"]
    assert metadata.CONFIG_SUMMARY_TAG in tags
    with writer_module.EventWriter(tmp_path / "tb") as writer:
        writer.write_summary(
            summary_pb2.Summary.FromString(summary.SerializeToString()), 3
        )
    assert _read(tmp_path / "tb").Tensors(metadata.CONFIG_SUMMARY_TAG)


def test_deleted_file_is_recovered_and_reported_once(tmp_path):
    import shutil

    from keras_winit.monitoring import EventWriterWarning

    logdir = tmp_path / "run"
    writer = writer_module.EventWriter(logdir)
    writer.scalar("a", 1.0, step=0)
    writer.flush()
    shutil.rmtree(logdir)
    writer.scalar("a", 2.0, step=1)
    with pytest.warns(EventWriterWarning, match="deleted"):
        writer.flush()
    writer.scalar("a", 3.0, step=2)
    shutil.rmtree(logdir)
    writer.flush()  # Reported once only.
    writer.close()
    assert [s for s, _ in _events(_read(logdir), "a")] == [0, 1, 2]


def test_failing_writes_are_kept_and_written_later(tmp_path, monkeypatch):
    import errno

    from keras_winit.monitoring import EventWriterWarning

    writer = writer_module.EventWriter(tmp_path)
    write = writer_module._Sink.write

    def full(sink, record):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_module._Sink, "write", full)
    with pytest.warns(EventWriterWarning, match="No space"):
        writer.scalar("a", 1.0, step=0)
    writer.scalar("a", 2.0, step=1)  # Kept; no second warning.
    writer.flush()
    monkeypatch.setattr(writer_module._Sink, "write", write)
    writer.scalar("a", 3.0, step=2)
    writer.close()
    assert [s for s, _ in _events(_read(tmp_path), "a")] == [0, 1, 2]


def test_backlog_is_bounded_and_the_loss_reported(tmp_path, monkeypatch):
    import errno

    from keras_winit.monitoring import EventWriterWarning

    monkeypatch.setattr(writer_module, "MAX_BACKLOG_BYTES", 200)
    writer = writer_module.EventWriter(tmp_path)

    def denied(sink, record):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(writer_module._Sink, "write", denied)
    with pytest.warns(EventWriterWarning) as caught:
        for step in range(20):
            writer.scalar("a", 1.0, step=step)
        writer.close()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "Permission denied" in messages[0]
    assert "20 event(s)" in messages[1]
