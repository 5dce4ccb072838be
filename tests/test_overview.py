"""Tests for `keras_winit.monitoring.overview` (layout and depth profiles)."""

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from PIL import Image
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from keras_winit.callbacks import GradientVarianceLogger
from keras_winit.monitoring import overview

# Paths in forward order, with the traps of regex matching: a path that is a
# prefix of another, regex metacharacters, characters Python's `re.escape`
# escapes but a unicode JavaScript RegExp rejects escaped (`-`, space).
PATHS = [
    "net/dense_1/kernel",
    "net/dense_1/bias",
    "net/dense_10/kernel",
    "net/conv.1/kernel",
    "net/a+b (x)/kernel",
    "net/block-2/bn/gamma",
    "net/block-2/bn/beta",
    "net/head[0]/kernel",
]

STATISTIC_SETS = {
    "all": overview.STATISTICS,
    "one": ("grad_norm",),
    "reordered": ("weight_variance", "grad_variance"),
}


def _layout(summary):
    summary = summary_pb2.Summary.FromString(summary.SerializeToString())
    (value,) = summary.value
    assert value.tag == "custom_scalars__config__"
    assert value.metadata.plugin_data.plugin_name == "custom_scalars"
    return layout_pb2.Layout.FromString(value.tensor.string_val[0])


@pytest.mark.parametrize("name", sorted(STATISTIC_SETS))
def test_layout_has_one_chart_per_statistic_in_depth_order(name):
    statistics = STATISTIC_SETS[name]
    proto = _layout(overview.layout_summary(statistics, PATHS))
    (category,) = proto.category
    assert category.title == overview.LAYOUT_CATEGORY
    assert [chart.title for chart in category.chart] == list(statistics)
    all_tags = [f"{s}/{p}" for s in overview.STATISTICS for p in PATHS]
    for statistic, chart in zip(statistics, category.chart, strict=True):
        regexes = list(chart.multiline.tag)
        assert len(regexes) == len(PATHS)
        # Each regex matches exactly its own tag, in the order of PATHS,
        # the way the server matches them (`re.match`).
        for path, regex in zip(PATHS, regexes, strict=True):
            assert [t for t in all_tags if re.match(regex, t)] == [
                f"{statistic}/{path}"
            ]
        # The dashboard joins a chart's regexes into one.
        joined = re.compile("|".join(f"({r})" for r in regexes))
        assert [t for t in all_tags if joined.match(t)] == [
            f"{statistic}/{p}" for p in PATHS
        ]


def test_layout_category_title():
    proto = overview.layout(["grad_norm"], PATHS, category="mine")
    assert [c.title for c in proto.category] == ["mine"]


def test_regex_escapes_only_regex_syntax():
    assert overview.tag_regex("a-b c/d_e") == "^a-b c/d_e$"
    assert overview.tag_regex("a.b+c(d)") == r"^a\.b\+c\(d\)$"


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20))
def test_regex_matches_its_tag_only(tag, other):
    regex = overview.tag_regex(tag)
    assert re.match(regex, tag)
    assert re.match(regex, tag + "x") is None
    assert bool(re.match(regex, other)) == (other == tag)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(statistics="grad_norm"), TypeError, "statistics"),
        (dict(statistics=[]), ValueError, "must not be empty"),
        (dict(statistics=["grad/norm"]), ValueError, "without '/'"),
        (dict(statistics=["a", "a"]), ValueError, "'a' twice"),
        (dict(statistics=[3]), TypeError, "element 3"),
        (dict(paths=[]), ValueError, "Received: paths=[]"),
        (dict(paths=["m/d/kernel", "m/d/kernel"]), ValueError, "twice"),
        (dict(paths=["m/d/kernel", ""]), TypeError, "element ''"),
        (dict(category=""), ValueError, "Received: category=''"),
    ],
)
def test_layout_validates_arguments(kwargs, error, message):
    arguments = dict(statistics=["grad_norm"], paths=["m/d/kernel"])
    arguments.update(kwargs)
    with pytest.raises(error, match=re.escape(message)):
        overview.layout_summary(
            arguments.pop("statistics"), arguments.pop("paths"), **arguments
        )


@pytest.mark.parametrize(
    "call, error, message",
    [
        (dict(values=[1.0]), ValueError, "one number per path (2)"),
        (dict(values=["a", "b"]), TypeError, "values"),
        (dict(width=100), ValueError, "Received: width=100"),
        (dict(height=True), ValueError, "Received: height=True"),
        (dict(title=3), TypeError, "Received: title=3"),
    ],
)
def test_render_validates_arguments(call, error, message):
    arguments = dict(values=[1.0, 2.0], paths=["m/a/kernel", "m/b/kernel"])
    arguments.update(call)
    with pytest.raises(error, match=re.escape(message)):
        overview.render_depth_profile(
            arguments.pop("values"), arguments.pop("paths"), **arguments
        )


@pytest.mark.parametrize(
    "values, kwargs, error, message",
    [
        ([1.0], {}, TypeError, "must be a mapping"),
        ({"a": [1.0], "b": [1, 2]}, {}, ValueError, "`values['b']` must"),
        ({"a": [1.0]}, dict(width=10), ValueError, "Received: width=10"),
        ({"a/b": [1.0]}, {}, ValueError, "without '/'"),
        ({"a": [1.0]}, dict(step=1.5), TypeError, "Received: step=1.5"),
        ({"a": [1.0]}, dict(step=True), TypeError, "Received: step=True"),
    ],
)
def test_depth_profile_summary_validates_arguments(
    values, kwargs, error, message
):
    with pytest.raises(error, match=re.escape(message)):
        overview.depth_profile_summary(values, ["m/a/kernel"], **kwargs)


def _decode(png):
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.mode == "P"  # a palette PNG
    return np.asarray(image.convert("RGB"))


def _profile_values(n=None, seed=0):
    rng = np.random.default_rng(seed)
    return 10.0 ** rng.uniform(-9, -1, len(PATHS) if n is None else n)


def _bands(pixels):
    """Row ranges of the two out-of-scale bands (their fill color)."""
    rows = np.flatnonzero((pixels == (246, 246, 246)).all(axis=2).any(axis=1))
    gaps = np.flatnonzero(np.diff(rows) > 1)
    assert len(gaps) == 1, rows
    top = rows[: gaps[0] + 1]
    bottom = rows[gaps[0] + 1 :]
    return slice(top[0], top[-1] + 1), slice(bottom[0], bottom[-1] + 1)


def _count(pixels, color):
    return int((pixels == color).all(axis=-1).sum())


RED = (214, 39, 40)
BLUE = (31, 119, 180)  # the first series ("kernel")


@pytest.mark.parametrize("size", [(800, 440), (400, 240), (1200, 700)])
def test_image_decodes_with_its_size(size):
    width, height = size
    png = overview.render_depth_profile(
        _profile_values(), PATHS, title="grad_norm", width=width, height=height
    )
    assert _decode(png).shape == (height, width, 3)


def test_image_is_deterministic_and_changes_with_the_data():
    values = _profile_values()
    first = overview.render_depth_profile(values, PATHS)
    assert overview.render_depth_profile(values.copy(), PATHS) == first
    changed = values.copy()
    changed[2] *= 1000.0
    pixels = _decode(overview.render_depth_profile(changed, PATHS))
    assert (pixels != _decode(first)).any(axis=-1).sum() > 50
    # The title is drawn.
    titled = overview.render_depth_profile(values, PATHS, title="abc")
    assert (_decode(titled) != _decode(first)).any()


def test_nonfinite_and_zero_values_are_drawn_in_their_bands():
    values = _profile_values()
    plain = _decode(overview.render_depth_profile(values, PATHS))
    top, bottom = _bands(plain)
    for bad in (np.nan, np.inf, -np.inf):
        changed = values.copy()
        changed[2] = bad  # a kernel
        pixels = _decode(overview.render_depth_profile(changed, PATHS))
        assert _count(pixels[top], RED) > _count(plain[top], RED) + 20
    changed = values.copy()
    changed[2] = 0.0
    pixels = _decode(overview.render_depth_profile(changed, PATHS))
    assert _count(pixels[bottom], BLUE) > _count(plain[bottom], BLUE) + 20
    assert _count(pixels[top], RED) == _count(plain[top], RED)
    # The marks sit at the layer's depth: first layer left of the last.
    for band, bad, color in ((top, np.nan, RED), (bottom, 0.0, BLUE)):
        marks = []
        for i in (0, len(PATHS) - 1):  # first and last layer's kernel
            changed = values.copy()
            changed[i] = bad
            image = _decode(overview.render_depth_profile(changed, PATHS))
            marks.append((image[band] == color).all(axis=-1))
        first = np.flatnonzero((marks[0] & ~marks[1]).any(axis=0))
        last = np.flatnonzero((marks[1] & ~marks[0]).any(axis=0))
        assert first.size and last.size
        assert first.max() < last.min()


def test_negative_values_are_drawn_hollow():
    values = _profile_values()
    negative = values.copy()
    negative[2] = -negative[2]
    pixels = _decode(overview.render_depth_profile(negative, PATHS))
    plain = _decode(overview.render_depth_profile(values, PATHS))
    # Same position (|value|), fewer filled pixels of the series color.
    assert 0 < _count(pixels, BLUE) < _count(plain, BLUE)


@pytest.mark.parametrize(
    "values",
    [
        [np.nan] * len(PATHS),
        [0.0] * len(PATHS),
        [1e-3] * len(PATHS),
        [1e300, 1e-300] * (len(PATHS) // 2),
    ],
    ids=["all_nan", "all_zero", "constant", "huge_range"],
)
def test_degenerate_values_render(values):
    pixels = _decode(overview.render_depth_profile(values, PATHS))
    assert pixels.shape == (440, 800, 3)


def test_many_layers_and_one_layer():
    paths = [f"m/layer_{i}/{n}" for i in range(300) for n in ("kernel", "b")]
    values = np.geomspace(1e-8, 1.0, len(paths))
    assert _decode(overview.render_depth_profile(values, paths)).shape[0]
    one = overview.render_depth_profile([2.0], ["kernel"])
    assert _decode(one).shape == (440, 800, 3)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 5),
            st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=14),
            st.floats(allow_nan=True, allow_infinity=True),
        ),
        min_size=1,
        max_size=25,
    ),
    st.sampled_from([(240, 160), (559, 319), (560, 320), (800, 440)]),
)
def test_any_values_render(rows, size):
    paths, values = [], []
    for i, (layer, name, value) in enumerate(rows):
        paths.append(f"m/l{layer}/{name}{i}")
        values.append(value)
    width, height = size
    png = overview.render_depth_profile(
        values, paths, width=width, height=height
    )
    assert _decode(png).shape == (height, width, 3)


def test_many_series_names_fit_in_two_legend_rows():
    paths = [f"m/l{i}/{name}_{i}" for i in range(40) for name in ("w", "v")]
    values = np.geomspace(1e-6, 1.0, len(paths))
    for width, height in [(240, 160), (800, 440)]:
        png = overview.render_depth_profile(
            values, paths, width=width, height=height
        )
        assert _decode(png).shape == (height, width, 3)


def test_depth_profile_summary_holds_one_image_per_statistic():
    values = {s: _profile_values(seed=i) for i, s in enumerate(["b", "a"])}
    summary = overview.depth_profile_summary(
        values, PATHS, step=7, width=400, height=240
    )
    summary = summary_pb2.Summary.FromString(summary.SerializeToString())
    assert [v.tag for v in summary.value] == [
        "depth_profile/b",
        "depth_profile/a",
    ]
    for value, statistic in zip(summary.value, ["b", "a"], strict=True):
        assert value.metadata.plugin_data.plugin_name == "images"
        width, height, png = value.tensor.string_val
        assert (width, height) == (b"400", b"240")
        assert png == overview.render_depth_profile(
            values[statistic],
            PATHS,
            title=f"{statistic} by layer depth, step 7",
            width=400,
            height=240,
        )


# -- A real TensorBoard server --------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def _get_json(url):
    return json.loads(_get(url))


# The `tensorboard` command, as TensorBoard runs where TensorFlow is not
# installed (its own stub of the TF API; `tensorboard.compat.notf` is the
# switch it provides): the same server and plugins, started in about 2 s
# instead of 13 s on the CI machine, most of which is importing TensorFlow.
_TENSORBOARD_WITHOUT_TF = (
    "import sys, types; "
    "sys.modules['tensorboard.compat.notf'] = types.ModuleType('notf'); "
    "from tensorboard.main import run_main; "
    "sys.argv[0] = 'tensorboard'; "
    "run_main()"
)


@pytest.mark.slow
def test_tensorboard_server_shows_layout_and_depth_profile(tmp_path):
    # The server starts first (its start-up overlaps the fit) on an empty
    # log directory; the finished run is moved in at once, so the server
    # never reads a half-written run.
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _TENSORBOARD_WITHOUT_TF,
            "--logdir",
            str(log_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--reload_interval",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _check_server(server, port, tmp_path, log_dir)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _check_server(server, port, tmp_path, log_dir):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, activation="tanh", name="hidden"),
            keras.layers.Dense(2, name="out"),
        ],
        name="mlp",
    )
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = rng.normal(size=(32, 2)).astype("float32")
    staging = tmp_path / "staging"
    logger = GradientVarianceLogger(
        str(staging), update_freq=2, weights_freq=2, warn=False
    )
    model.fit(x, y, batch_size=8, callbacks=[logger], verbose=0)
    paths = [v.path for v in model.trainable_variables]
    # What the logger will write: the layout once, profiles at some steps.
    writer = EventFileWriter(
        str(staging / "gradients"), filename_suffix=".overview"
    )

    def write(step, summary):
        writer.add_event(
            event_pb2.Event(wall_time=time.time(), step=step, summary=summary)
        )

    write(0, overview.layout_summary(overview.STATISTICS, paths))
    images = {}
    for step in (0, 2):
        values = {"grad_norm": _profile_values(len(paths), seed=step)}
        summary = overview.depth_profile_summary(values, paths, step=step)
        images[step] = summary.value[0].tensor.string_val[2]
        write(step, summary)
    writer.close()
    os.rename(staging / "gradients", log_dir / "gradients")

    base = f"http://127.0.0.1:{port}/data/plugin"
    deadline = time.monotonic() + 90
    layout, image_tags, scalar_tags = {}, {}, {}
    last = f"weight_variance/{paths[-1]}"
    while time.monotonic() < deadline:  # bounded polling
        assert server.poll() is None, "tensorboard exited"
        try:
            layout = _get_json(f"{base}/custom_scalars/layout")
            image_tags = _get_json(f"{base}/images/tags")
            scalar_tags = _get_json(f"{base}/scalars/tags")
        except (urllib.error.URLError, ConnectionError):
            layout, image_tags, scalar_tags = {}, {}, {}
        if (
            layout
            and "depth_profile/grad_norm" in image_tags.get("gradients", {})
            and last in scalar_tags.get("gradients", {})
        ):
            break
        time.sleep(0.5)
    assert layout and last in scalar_tags.get("gradients", {}), scalar_tags
    (category,) = layout["category"]
    assert category["title"] == overview.LAYOUT_CATEGORY
    charts = category["chart"]
    assert [c["title"] for c in charts] == list(overview.STATISTICS)
    # The server resolves each chart's regex (joined as the dashboard
    # does) to the tags of every variable that the logger wrote.
    for chart in charts:
        regexes = chart["multiline"]["tag"]
        joined = "|".join(f"({r})" for r in regexes)
        query = urllib.parse.urlencode({"run": "gradients", "tag": joined})
        answer = _get_json(f"{base}/custom_scalars/scalars?{query}")
        assert answer["regex_valid"]
        # The logger writes every statistic of the layout (all signals on,
        # weights_freq > 0).
        expected = {f"{chart['title']}/{p}" for p in paths}
        assert set(answer["tag_to_events"]) == expected
    assert "depth_profile/grad_norm" in image_tags["gradients"]
    query = urllib.parse.urlencode(
        {"run": "gradients", "tag": "depth_profile/grad_norm"}
    )
    entries = _get_json(f"{base}/images/images?{query}")
    assert [e["step"] for e in entries] == [0, 2]
    for entry in entries:
        png = _get(f"{base}/images/individualImage?{entry['query']}")
        assert png == images[entry["step"]]


def test_logger_writes_the_overview(tmp_path):
    # The logger writes the layout once (one chart per logged statistic,
    # every variable in forward order) and a depth profile per statistic
    # every `histogram_freq` steps.
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.custom_scalar import metadata as cs_metadata

    import keras_winit

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((6,))]
        + [keras.layers.Dense(8, activation="tanh") for _ in range(3)]
        + [keras.layers.Dense(2)]
    )
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).normal(size=(32, 6)).astype("float32")
    y = np.zeros((32, 2), "float32")
    logger = keras_winit.GradientVarianceLogger(
        str(tmp_path),
        update_freq=1,
        histogram_freq=2,
        signals=["grad_variance", "grad_norm", "grad_weight_ratio"],
    )
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[logger])
    acc = event_accumulator.EventAccumulator(
        str(tmp_path / "gradients"),
        size_guidance={
            event_accumulator.TENSORS: 0,
            event_accumulator.IMAGES: 0,
        },
    )
    acc.Reload()
    layouts = acc.PluginTagToContent(cs_metadata.PLUGIN_NAME)
    assert len(layouts) == 1
    layout = overview.layout_pb2.Layout()
    layout.ParseFromString(
        acc.Tensors(next(iter(layouts)))[0].tensor_proto.string_val[0]
    )
    charts = layout.category[0].chart
    assert [c.title for c in charts] == [
        "grad_variance",
        "grad_norm",
        "grad_weight_ratio",
    ]
    paths = [v.path for v in model.trainable_variables]
    assert list(charts[0].multiline.tag) == [
        overview.tag_regex(f"grad_variance/{p}") for p in paths
    ]
    images = acc.PluginTagToContent("images")
    assert sorted(images) == [
        "depth_profile/grad_norm",
        "depth_profile/grad_variance",
        "depth_profile/grad_weight_ratio",
    ]
    steps = [e.step for e in acc.Tensors("depth_profile/grad_norm")]
    assert steps == [0, 2]
