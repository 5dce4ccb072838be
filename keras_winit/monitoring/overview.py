"""An overview of all layers at once: TensorBoard layout and depth profiles.

The gradient logger writes one scalar per statistic and variable
(`<statistic>/<variable path>`), so TensorBoard's Scalars dashboard shows
one chart per variable (158 for MobileNetV2). The two summaries built here
show every layer of the model at once:

- `layout_summary`: a custom-scalars layout (TensorBoard's "Custom
  Scalars" dashboard) with one category and one multi-line chart per
  statistic, each holding the curves of all variables, listed in forward
  (depth) order. Written once per run.
- `depth_profile_summary`: one PNG image per statistic of the statistic
  against layer depth at one step (log10 scale), as in the figures of
  Glorot & Bengio (2010); written at the logger's `histogram_freq`, the
  Images dashboard's step slider replays it over training. NaN, +-inf
  and zero values have bands of their own, so they are seen, not dropped.

Pure functions: they return `summary_pb2.Summary` protos and hold no
writer or state; the caller writes them at a step. The PNG is drawn with
NumPy and `zlib` alone (lines, markers and a built-in 5 x 8 bitmap font),
so no plotting library is needed and the picture is the same everywhere.

Reference:
    - [Glorot & Bengio, 2010](
        https://proceedings.mlr.press/v9/glorot10a.html): Understanding
        the difficulty of training deep feedforward neural networks.
"""

import functools
import math
import numbers
import struct
import zlib
from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np
from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.proto import tensor_pb2
from tensorboard.compat.proto import tensor_shape_pb2
from tensorboard.compat.proto import types_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as custom_scalar_metadata
from tensorboard.plugins.image import metadata as image_metadata

# The statistics the gradient logger writes as `<statistic>/<variable path>`.
STATISTICS = (
    "grad_variance",
    "grad_mean",
    "grad_norm",
    "grad_nonfinite",
    "weight_variance",
    "update_ratio",
    "grad_weight_ratio",
)
# Title of the custom-scalars category that holds the charts.
LAYOUT_CATEGORY = "all layers by depth (keras_winit)"
# Depth profiles are written as `depth_profile/<statistic>`.
DEPTH_PROFILE_PREFIX = "depth_profile"

# Characters with a meaning in regular expressions, in Python's `re` and in
# JavaScript's `RegExp` alike. Only these are escaped: Python's `re.escape`
# also escapes `-`, `#`, `&`, `~` and space, which a JavaScript `RegExp`
# in unicode mode rejects.
_REGEX_SYNTAX = frozenset("\\^$.|?*+()[]{}")


def tag_regex(tag: str) -> str:
    """The regular expression that matches exactly `tag`.

    Anchored with `^` and `$` (TensorBoard's custom-scalars plugin matches
    a chart's regexes with `re.match`, which anchors only the start, so
    `dense_1/kernel` would otherwise also match `dense_1/kernel_2`).
    Only the characters `\\^$.|?*+()[]{}` are escaped, so the result means
    the same in Python's `re` (the server) and in JavaScript's `RegExp`
    (the dashboard, which joins a chart's regexes with `|`).

    Examples:

    >>> from keras_winit.monitoring import overview
    >>> overview.tag_regex("grad_norm/mlp/dense_1/kernel")
    '^grad_norm/mlp/dense_1/kernel$'
    >>> overview.tag_regex("grad_norm/net/conv2d.1/kernel")
    '^grad_norm/net/conv2d\\\\.1/kernel$'

    Args:
        tag: The tag, a string.

    Returns:
        The regular expression, a string.
    """
    if not isinstance(tag, str):
        raise TypeError(
            f"Argument `tag` must be a string. Received: tag={tag!r} "
            f"of type {type(tag).__name__}"
        )
    escaped = "".join("\\" + c if c in _REGEX_SYNTAX else c for c in tag)
    return f"^{escaped}$"


def _check_names(name, values, allow_slash):
    """Validates a non-empty sequence of distinct non-empty strings."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(
            f"Argument `{name}` must be a sequence of strings. "
            f"Received: {name}={values!r}"
        )
    if not values:
        raise ValueError(
            f"Argument `{name}` must not be empty. Received: {name}={values!r}"
        )
    seen = set()
    for value in values:
        if not isinstance(value, str) or not value:
            raise TypeError(
                f"Argument `{name}` must hold non-empty strings. "
                f"Received: {name}={values!r} (element {value!r})"
            )
        if not allow_slash and "/" in value:
            raise ValueError(
                f"Argument `{name}` must hold tag prefixes without '/'. "
                f"Received: {name}={values!r} (element {value!r})"
            )
        if value in seen:
            raise ValueError(
                f"Argument `{name}` must not repeat a name. "
                f"Received: {name}={values!r} ({value!r} twice)"
            )
        seen.add(value)
    return list(values)


def layout(
    statistics: Sequence[str],
    paths: Sequence[str],
    *,
    category: str = LAYOUT_CATEGORY,
) -> layout_pb2.Layout:
    """The custom-scalars `Layout`: one multi-line chart per statistic.

    One category titled `category`; in it, for each statistic `s` (in the
    order given), a chart titled `s` whose tag regexes are
    `tag_regex(f"{s}/{path}")` for every path, in the order of `paths`
    (forward order: the first layer first). Each regex matches exactly one
    tag, so a chart shows exactly the model's variables, even when one
    path is a prefix of another.

    Examples:

    >>> from keras_winit.monitoring import overview
    >>> proto = overview.layout(["grad_norm"], ["mlp/a/kernel", "mlp/b/kernel"])
    >>> chart = proto.category[0].chart[0]
    >>> chart.title
    'grad_norm'
    >>> list(chart.multiline.tag)
    ['^grad_norm/mlp/a/kernel$', '^grad_norm/mlp/b/kernel$']

    Args:
        statistics: Sequence of distinct tag prefixes without `/`, e.g.
            `overview.STATISTICS`.
        paths: Sequence of distinct variable paths (Keras'
            `variable.path`) in forward order.
        category: Title of the category. Defaults to `LAYOUT_CATEGORY`.

    Returns:
        A `tensorboard.plugins.custom_scalar.layout_pb2.Layout`.
    """
    statistics = _check_names("statistics", statistics, allow_slash=False)
    paths = _check_names("paths", paths, allow_slash=True)
    if not isinstance(category, str) or not category:
        raise ValueError(
            "Argument `category` must be a non-empty string. "
            f"Received: category={category!r}"
        )
    charts = [
        layout_pb2.Chart(
            title=statistic,
            multiline=layout_pb2.MultilineChartContent(
                tag=[tag_regex(f"{statistic}/{path}") for path in paths]
            ),
        )
        for statistic in statistics
    ]
    return layout_pb2.Layout(
        category=[layout_pb2.Category(title=category, chart=charts)]
    )


def layout_summary(
    statistics: Sequence[str],
    paths: Sequence[str],
    *,
    category: str = LAYOUT_CATEGORY,
) -> summary_pb2.Summary:
    """A `Summary` that gives TensorBoard's Custom Scalars dashboard its layout.

    Write it once per run (at any step; TensorBoard reads the layout of
    each run and merges categories of the same title across runs). The
    dashboard then shows one chart per statistic with the curves of all
    variables, ordered by depth (see `layout`). Needs no TensorFlow.

    Examples:

    >>> from keras_winit.monitoring import overview
    >>> summary = overview.layout_summary(
    ...     overview.STATISTICS, ["mlp/dense/kernel", "mlp/dense/bias"])
    >>> summary.value[0].tag
    'custom_scalars__config__'
    >>> summary.value[0].metadata.plugin_data.plugin_name
    'custom_scalars'

    Args:
        statistics: Sequence of distinct tag prefixes without `/`, e.g.
            `overview.STATISTICS`.
        paths: Sequence of distinct variable paths in forward order.
        category: Title of the category. Defaults to `LAYOUT_CATEGORY`.

    Returns:
        A `tensorboard.compat.proto.summary_pb2.Summary` with one value.
    """
    proto = layout(statistics, paths, category=category)
    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(),
        string_val=[proto.SerializeToString()],
    )
    return summary_pb2.Summary(
        value=[
            summary_pb2.Summary.Value(
                tag=custom_scalar_metadata.CONFIG_SUMMARY_TAG,
                metadata=custom_scalar_metadata.create_summary_metadata(),
                tensor=tensor,
            )
        ]
    )


# ---------------------------------------------------------------------------
# Depth profile: a line chart drawn into a NumPy array and encoded as PNG.

# A 5 x 8 bitmap font drawn for this module: rows 0-6 hold the character,
# row 7 the descenders (g, j, p, q, y, _). Uppercase is drawn as
# lowercase, unknown characters as `?`.
_GLYPH_WIDTH = 5
_GLYPH_HEIGHT = 8
_GLYPHS = {
    " ": ".....|.....|.....|.....|.....|.....|.....|.....",
    "0": ".###.|#...#|#..##|#.#.#|##..#|#...#|.###.|.....",
    "1": "..#..|.##..|..#..|..#..|..#..|..#..|.###.|.....",
    "2": ".###.|#...#|....#|...#.|..#..|.#...|#####|.....",
    "3": "#####|...#.|..#..|...#.|....#|#...#|.###.|.....",
    "4": "...#.|..##.|.#.#.|#..#.|#####|...#.|...#.|.....",
    "5": "#####|#....|####.|....#|....#|#...#|.###.|.....",
    "6": "..##.|.#...|#....|####.|#...#|#...#|.###.|.....",
    "7": "#####|....#|...#.|..#..|.#...|.#...|.#...|.....",
    "8": ".###.|#...#|#...#|.###.|#...#|#...#|.###.|.....",
    "9": ".###.|#...#|#...#|.####|....#|...#.|.##..|.....",
    "a": ".....|.....|.###.|....#|.####|#...#|.####|.....",
    "b": "#....|#....|#.##.|##..#|#...#|#...#|####.|.....",
    "c": ".....|.....|.###.|#....|#....|#...#|.###.|.....",
    "d": "....#|....#|.##.#|#..##|#...#|#...#|.####|.....",
    "e": ".....|.....|.###.|#...#|#####|#....|.###.|.....",
    "f": "..##.|.#..#|.#...|###..|.#...|.#...|.#...|.....",
    "g": ".....|.....|.####|#...#|#...#|.####|....#|.###.",
    "h": "#....|#....|#.##.|##..#|#...#|#...#|#...#|.....",
    "i": "..#..|.....|.##..|..#..|..#..|..#..|.###.|.....",
    "j": "...#.|.....|..##.|...#.|...#.|...#.|#..#.|.##..",
    "k": "#....|#....|#..#.|#.#..|##...|#.#..|#..#.|.....",
    "l": ".##..|..#..|..#..|..#..|..#..|..#..|.###.|.....",
    "m": ".....|.....|##.#.|#.#.#|#.#.#|#...#|#...#|.....",
    "n": ".....|.....|#.##.|##..#|#...#|#...#|#...#|.....",
    "o": ".....|.....|.###.|#...#|#...#|#...#|.###.|.....",
    "p": ".....|.....|####.|#...#|#...#|####.|#....|#....",
    "q": ".....|.....|.####|#...#|#...#|.####|....#|....#",
    "r": ".....|.....|#.##.|##..#|#....|#....|#....|.....",
    "s": ".....|.....|.####|#....|.###.|....#|####.|.....",
    "t": ".#...|.#...|###..|.#...|.#...|.#..#|..##.|.....",
    "u": ".....|.....|#...#|#...#|#...#|#..##|.##.#|.....",
    "v": ".....|.....|#...#|#...#|#...#|.#.#.|..#..|.....",
    "w": ".....|.....|#...#|#...#|#.#.#|#.#.#|.#.#.|.....",
    "x": ".....|.....|#...#|.#.#.|..#..|.#.#.|#...#|.....",
    "y": ".....|.....|#...#|#...#|#...#|.####|....#|.###.",
    "z": ".....|.....|#####|...#.|..#..|.#...|#####|.....",
    "-": ".....|.....|.....|#####|.....|.....|.....|.....",
    "+": ".....|..#..|..#..|#####|..#..|..#..|.....|.....",
    "=": ".....|.....|#####|.....|#####|.....|.....|.....",
    ".": ".....|.....|.....|.....|.....|.##..|.##..|.....",
    ",": ".....|.....|.....|.....|.##..|..#..|.#...|.....",
    ":": ".....|.##..|.##..|.....|.##..|.##..|.....|.....",
    "_": ".....|.....|.....|.....|.....|.....|.....|#####",
    "/": "....#|....#|...#.|..#..|.#...|#....|#....|.....",
    "|": "..#..|..#..|..#..|..#..|..#..|..#..|..#..|.....",
    "(": "...#.|..#..|.#...|.#...|.#...|..#..|...#.|.....",
    ")": ".#...|..#..|...#.|...#.|...#.|..#..|.#...|.....",
    "<": "...#.|..#..|.#...|#....|.#...|..#..|...#.|.....",
    ">": ".#...|..#..|...#.|....#|...#.|..#..|.#...|.....",
    "?": ".###.|#...#|....#|...#.|..#..|.....|..#..|.....",
    "'": "..#..|..#..|.#...|.....|.....|.....|.....|.....",
}
_FONT = {
    char: np.array([[c == "#" for c in row] for row in rows.split("|")])
    for char, rows in _GLYPHS.items()
}

# The picture is a palette PNG: pixels are indices into `_COLORS`.
_COLORS = (
    (255, 255, 255),  # white
    (33, 33, 33),  # text, frame
    (224, 224, 224),  # grid
    (246, 246, 246),  # out-of-scale bands
    (110, 110, 110),  # secondary text, band borders
    # Non-finite values, and nothing else, are red.
    (214, 39, 40),
    # Series colors (Tableau 10 without its red).
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)
_WHITE, _BLACK, _GRID, _BAND, _MUTED, _RED = range(6)
_PALETTE = tuple(range(6, len(_COLORS)))
_MAX_LEGEND_SERIES = 12


class _Canvas:
    """An RGB image with the few drawing operations a line chart needs."""

    def __init__(self, width, height):
        self.width = width
        self.height = height
        self.pixels = np.full((height, width), _WHITE, np.uint8)

    def fill(self, x0, y0, x1, y1, color):
        """Fills the rectangle [x0, x1) x [y0, y1), clipped to the image."""
        x0, x1 = max(int(x0), 0), min(int(x1), self.width)
        y0, y1 = max(int(y0), 0), min(int(y1), self.height)
        if x0 < x1 and y0 < y1:
            self.pixels[y0:y1, x0:x1] = color

    def line(self, x0, y0, x1, y1, color, thickness):
        """Draws segments from (x0, y0) to (x1, y1) (scalars or arrays)."""
        x0, y0, x1, y1 = (
            np.atleast_1d(np.asarray(a, float)) for a in (x0, y0, x1, y1)
        )
        if not x0.size:
            return
        n = int(np.max(np.maximum(np.abs(x1 - x0), np.abs(y1 - y0)))) + 1
        t = np.linspace(0.0, 1.0, n)
        # Every point of every segment, thickened to a thickness^2 square.
        offsets = np.arange(thickness) - thickness // 2
        dx = np.repeat(offsets, thickness)
        dy = np.tile(offsets, thickness)
        x = np.rint(x0[:, None] + t * (x1 - x0)[:, None]).astype(np.int64)
        y = np.rint(y0[:, None] + t * (y1 - y0)[:, None]).astype(np.int64)
        x = (x[..., None] + dx).ravel()
        y = (y[..., None] + dy).ravel()
        keep = (x >= 0) & (x < self.width) & (y >= 0) & (y < self.height)
        self.pixels[y[keep], x[keep]] = color

    def dashed_hline(self, x0, x1, y, color, dash=6):
        for x in range(int(x0), int(x1), 2 * dash):
            self.fill(x, y, min(x + dash, x1), y + 1, color)

    def text(self, x, y, text, color, scale):
        """Draws `text`, top-left corner at (x, y); returns its width."""
        for i, char in enumerate(text):
            ink = _glyph(char, scale)
            gx = int(x) + i * (_GLYPH_WIDTH + 1) * scale
            gy = int(y)
            h, w = ink.shape
            # Clip the glyph to the image.
            cx0, cy0 = max(0, -gx), max(0, -gy)
            cx1 = min(w, self.width - gx)
            cy1 = min(h, self.height - gy)
            if cx0 >= cx1 or cy0 >= cy1:
                continue
            region = self.pixels[gy + cy0 : gy + cy1, gx + cx0 : gx + cx1]
            region[ink[cy0:cy1, cx0:cx1]] = color
        return _text_width(text, scale)

    def marker(self, x, y, color, size, hollow=False):
        half = size // 2
        x, y = int(round(x)), int(round(y))
        self.fill(x - half, y - half, x + half + 1, y + half + 1, color)
        if hollow and size >= 5:
            self.fill(
                x - half + 2, y - half + 2, x + half - 1, y + half - 1, _WHITE
            )

    def cross(self, x, y, color, size, thickness):
        half = size // 2
        self.line(x - half, y - half, x + half, y + half, color, thickness)
        self.line(x - half, y + half, x + half, y - half, color, thickness)

    def png(self):
        return _encode_png(self.pixels)


@functools.lru_cache(maxsize=512)
def _glyph(char, scale):
    """The ink of `char` (uppercase as lowercase, unknown as `?`), scaled."""
    glyph = _FONT.get(char, _FONT.get(char.lower(), _FONT["?"]))
    return np.kron(glyph, np.ones((scale, scale), bool))


def _text_width(text, scale):
    return max(len(text) * (_GLYPH_WIDTH + 1) * scale - scale, 0)


def _png_chunk(kind, data):
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _encode_png(pixels):
    """PNG bytes of a `[height, width]` array of indices into `_COLORS`."""
    height, width = pixels.shape
    rows = np.zeros((height, 1 + width), np.uint8)  # filter 0 per row
    rows[:, 1:] = pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    palette = bytes(np.asarray(_COLORS, np.uint8).ravel())
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"PLTE", palette)
        + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + _png_chunk(b"IEND", b"")
    )


def _nice_step(span, max_ticks, steps=(1, 2, 5)):
    """The smallest step of the form s * 10**k with at most `max_ticks`."""
    max_ticks = max(int(max_ticks), 1)
    k = 0
    while True:
        for s in steps:
            step = s * 10**k
            if span / step < max_ticks:
                return step
        k += 1


def _layers_and_series(paths):
    """Depth (layer index, first appearance) and series name per path."""
    layer_index: dict[str, int] = {}
    series_index: dict[str, int] = {}
    depths, series = [], []
    for path in paths:
        layer, _, name = path.rpartition("/")
        depths.append(layer_index.setdefault(layer, len(layer_index)))
        series.append(series_index.setdefault(name, len(series_index)))
    return depths, series, list(layer_index), list(series_index)


def _check_size(width, height):
    for name, value, low in (("width", width, 240), ("height", height, 160)):
        if (
            not isinstance(value, numbers.Integral)
            or isinstance(value, bool)
            or not low <= int(value) <= 4096
        ):
            raise ValueError(
                f"Argument `{name}` must be an integer in [{low}, 4096]. "
                f"Received: {name}={value!r}"
            )


def _check_values(name, values, n):
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"Argument `{name}` must be a sequence of numbers. "
            f"Received: {name}={values!r}"
        ) from e
    if array.shape != (n,):
        raise ValueError(
            f"Argument `{name}` must hold one number per path ({n}). "
            f"Received: {name} of shape {array.shape}"
        )
    return array


def render_depth_profile(
    values: Sequence[float],
    paths: Sequence[str],
    *,
    title: str = "",
    width: int = 800,
    height: int = 440,
) -> bytes:
    """PNG of one statistic against layer depth, on a log10 scale.

    The x axis is the layer depth: layers numbered from 1 in forward order,
    a layer being a variable path without its last component
    (`mlp/dense_2/kernel` -> `mlp/dense_2`). The y axis is
    `log10(|value|)`, with a gridline per decade. Variables of the same
    name (`kernel`, `bias`, `gamma`, ...) form one colored series, joined
    by lines across depth. Values that cannot go on a log scale are drawn
    in bands of their own rather than dropped: NaN and +-inf as red crosses
    in the top band (`inf/nan`), zeros as markers in the bottom band
    (`0`), their counts under the axis. Negative values (e.g. `grad_mean`)
    are plotted at `log10(|value|)` as hollow markers.

    Drawn with NumPy and `zlib` only (a built-in bitmap font, no plotting
    library), so it costs a few milliseconds and looks the same anywhere.

    Examples:

    >>> from keras_winit.monitoring import overview
    >>> png = overview.render_depth_profile(
    ...     [1e-4, 0.0, 1e-6, float("nan")],
    ...     ["mlp/d1/kernel", "mlp/d1/bias", "mlp/d2/kernel", "mlp/d2/bias"],
    ...     title="grad_variance")
    >>> png[:8]
    b'\\x89PNG\\r\\n\\x1a\\n'

    Args:
        values: One number per path (any sign, NaN, inf).
        paths: Distinct variable paths in forward order.
        title: Text at the top of the picture. Defaults to `""`.
        width: Width in pixels, an integer in [240, 4096]. Defaults to 800.
        height: Height in pixels, an integer in [160, 4096]. Defaults to
            440.

    Returns:
        The PNG file's bytes (8-bit palette colors).
    """
    paths = _check_names("paths", paths, allow_slash=True)
    data = _check_values("values", values, len(paths))
    _check_size(width, height)
    if not isinstance(title, str):
        raise TypeError(
            f"Argument `title` must be a string. Received: title={title!r}"
        )
    depths, series, layers, names = _layers_and_series(paths)
    scale = 2 if width >= 560 and height >= 320 else 1
    char_w = (_GLYPH_WIDTH + 1) * scale
    line_h = (_GLYPH_HEIGHT + 3) * scale
    canvas = _Canvas(width, height)

    # Title, then a legend: one colored square and name per series.
    pad = 4 * scale
    canvas.text(pad, pad, title, _BLACK, scale)
    legend_y = pad + line_h + scale
    # At most two rows of legend, so that any allowed size has room for
    # the chart; the names that do not fit are counted as "+N more".
    x = pad
    more_w = _text_width(f"+{len(names)} more", scale)
    drawn = 0
    for i, name in enumerate(names[:_MAX_LEGEND_SERIES]):
        label = name or "(no name)"
        item_w = line_h + _text_width(label, scale) + 3 * char_w // 2
        last_row = legend_y > pad + line_h + scale
        room = width - pad - (more_w if last_row else 0)
        if x + item_w > room and x > pad:
            if last_row:
                break
            x, legend_y = pad, legend_y + line_h
        color = _PALETTE[i % len(_PALETTE)]
        canvas.fill(x, legend_y, x + 6 * scale, legend_y + 6 * scale, color)
        canvas.text(x + 8 * scale, legend_y, label, _BLACK, scale)
        x += item_w
        drawn += 1
    if drawn < len(names):
        canvas.text(x, legend_y, f"+{len(names) - drawn} more", _MUTED, scale)

    # The frame: top band (non-finite), main area (log10), bottom band (0).
    label_w = _text_width("inf/nan", scale)
    left = pad + label_w + 3 * scale
    right = width - 6 * scale
    top = legend_y + line_h + 2 * scale
    bottom = height - 2 * line_h - pad
    band_h = line_h + 2 * scale
    main_top = top + band_h
    main_bottom = bottom - band_h
    # Sizes are checked (>= 240 x 160) and the legend has at most two rows.
    assert main_bottom - main_top >= 3 * line_h, (width, height)
    canvas.fill(left, top, right, main_top, _BAND)
    canvas.fill(left, main_bottom, right, bottom, _BAND)

    finite = np.isfinite(data)
    nonzero = finite & (data != 0)
    logs = np.full(data.shape, np.nan)
    logs[nonzero] = np.log10(np.abs(data[nonzero]))
    if nonzero.any():
        lo = math.floor(float(np.min(logs[nonzero])))
        hi = math.ceil(float(np.max(logs[nonzero])))
    else:
        lo, hi = -1, 1
    if hi - lo < 1:
        lo, hi = lo - 1, hi + 1
    inner = 4 * scale

    def y_of(log):
        span = main_bottom - main_top - 2 * inner
        return main_bottom - inner - (log - lo) / (hi - lo) * span

    x_inner = 6 * scale

    def x_of(depth):
        if len(layers) == 1:
            return (left + right) / 2
        span = right - left - 2 * x_inner
        return left + x_inner + depth / (len(layers) - 1) * span

    # Decade gridlines and labels.
    step = _nice_step(hi - lo, (main_bottom - main_top) / (1.5 * line_h))
    for decade in range(lo - lo % step, hi + 1, step):
        if decade < lo:
            continue
        y = int(round(y_of(decade)))
        canvas.fill(left, y, right, y + 1, _GRID)
        label = f"1e{decade}"
        canvas.text(
            left - 3 * scale - _text_width(label, scale),
            y - _GLYPH_HEIGHT * scale // 2,
            label,
            _BLACK,
            scale,
        )
    # Layer ticks (numbered from 1) and their labels.
    max_ticks = (right - left) / (char_w * (len(str(len(layers))) + 2))
    x_step = _nice_step(max(len(layers) - 1, 1), max_ticks)
    ticks = [0] + list(range(x_step - 1, len(layers), x_step))
    for depth in sorted(set(ticks)):
        x = int(round(x_of(depth)))
        canvas.fill(x, bottom, x + 1, bottom + 2 * scale, _BLACK)
        label = str(depth + 1)
        canvas.text(
            x - _text_width(label, scale) // 2,
            bottom + 3 * scale,
            label,
            _BLACK,
            scale,
        )
    # Below the ticks: the axis label, and the counts of the values drawn
    # in the bands, right-aligned (red: not finite).
    label_y = bottom + 3 * scale + line_h
    x = right
    for count, what, color in (
        (int((finite & ~nonzero).sum()), "zero", _BLACK),
        (int((~finite).sum()), "not finite", _RED),
    ):
        if count:
            text = f"{count} {what}"
            x -= _text_width(text, scale)
            canvas.text(x, label_y, text, color, scale)
            x -= 2 * char_w
    axis_label = f"layer depth (forward order), {len(layers)} layers"
    if left + _text_width(axis_label, scale) > x:
        axis_label = f"layer depth, {len(layers)} layers"
    canvas.text(left, label_y, axis_label, _MUTED, scale)

    # Band labels and the frame.
    small = scale
    band_text_y = (band_h - _GLYPH_HEIGHT * small) // 2
    for text, y0 in (("inf/nan", top), ("0", main_bottom)):
        canvas.text(
            left - 3 * scale - _text_width(text, small),
            y0 + band_text_y,
            text,
            _RED if y0 == top else _BLACK,
            small,
        )
    canvas.dashed_hline(left, right, main_top, _MUTED)
    canvas.dashed_hline(left, right, main_bottom, _MUTED)
    for x0, y0, x1, y1 in (
        (left, top, right, top + 1),
        (left, bottom, right + 1, bottom + 1),
        (left, top, left + 1, bottom),
        (right, top, right + 1, bottom),
    ):
        canvas.fill(x0, y0, x1, y1, _BLACK)

    # Series: lines between consecutive plotted points, then markers.
    xs = np.array([x_of(d) for d in depths])
    ys = np.where(nonzero, y_of(np.nan_to_num(logs)), np.nan)
    size = 2 * scale + 1
    for s in range(len(names)):
        color = _PALETTE[s % len(_PALETTE)]
        rows = np.flatnonzero(np.asarray(series) == s)
        # Segments join consecutive variables of the series, both plotted.
        joined = nonzero[rows[:-1]] & nonzero[rows[1:]]
        a, b = rows[:-1][joined], rows[1:][joined]
        canvas.line(xs[a], ys[a], xs[b], ys[b], color, scale)
        for k in rows:
            if nonzero[k]:
                canvas.marker(
                    xs[k], ys[k], color, size + 2 * scale, hollow=data[k] < 0
                )
            elif finite[k]:
                canvas.marker(
                    xs[k], (main_bottom + bottom) / 2, color, size + 2 * scale
                )
    for k in np.flatnonzero(~finite):
        canvas.cross(xs[k], (top + main_top) / 2, _RED, size + 4 * scale, scale)
    return canvas.png()


def depth_profile_summary(
    values: Mapping[str, Sequence[float]],
    paths: Sequence[str],
    *,
    step: int | None = None,
    width: int = 800,
    height: int = 440,
) -> summary_pb2.Summary:
    """A `Summary` with one depth-profile image per statistic.

    For each `statistic -> per-variable values` in `values`, an image
    `depth_profile/<statistic>` (`render_depth_profile`), for TensorBoard's
    Images dashboard, whose step slider then replays the profile over
    training. Needs no TensorFlow.

    Examples:

    >>> from keras_winit.monitoring import overview
    >>> summary = overview.depth_profile_summary(
    ...     {"grad_norm": [0.5, 0.1], "weight_variance": [0.02, 0.0]},
    ...     ["mlp/dense/kernel", "mlp/dense/bias"], step=100)
    >>> [value.tag for value in summary.value]
    ['depth_profile/grad_norm', 'depth_profile/weight_variance']
    >>> summary.value[0].tensor.string_val[:2]
    [b'800', b'440']

    Args:
        values: Mapping from statistic name (a tag prefix without `/`, e.g.
            `"grad_variance"`) to its values, one per path.
        paths: Distinct variable paths in forward order.
        step: The step the values belong to, shown in the title only (the
            caller writes the summary at its step). Defaults to `None`.
        width: Width in pixels. Defaults to 800.
        height: Height in pixels. Defaults to 440.

    Returns:
        A `tensorboard.compat.proto.summary_pb2.Summary` with one image
        value per statistic, in the order of `values`.
    """
    if not isinstance(values, Mapping):
        raise TypeError(
            "Argument `values` must be a mapping from statistic name to "
            f"per-variable values. Received: values={values!r}"
        )
    statistics = _check_names("values", list(values), allow_slash=False)
    if step is not None and (
        not isinstance(step, numbers.Integral) or isinstance(step, bool)
    ):
        raise TypeError(
            f"Argument `step` must be an integer or None. Received: "
            f"step={step!r}"
        )
    paths = _check_names("paths", paths, allow_slash=True)
    for statistic in statistics:
        _check_values(f"values[{statistic!r}]", values[statistic], len(paths))
    _check_size(width, height)
    summary = summary_pb2.Summary()
    for statistic in statistics:
        title = f"{statistic} by layer depth"
        if step is not None:
            title += f", step {step}"
        png = render_depth_profile(
            values[statistic], paths, title=title, width=width, height=height
        )
        tag = f"{DEPTH_PROFILE_PREFIX}/{statistic}"
        summary.value.add(
            tag=tag,
            metadata=image_metadata.create_summary_metadata(
                display_name=tag,
                description=(
                    f"log10 of {statistic} per variable against layer "
                    "depth (keras_winit)."
                ),
            ),
            tensor=tensor_pb2.TensorProto(
                dtype=types_pb2.DT_STRING,
                tensor_shape=tensor_shape_pb2.TensorShapeProto(
                    dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=3)]
                ),
                string_val=[str(width).encode(), str(height).encode(), png],
            ),
        )
    return summary
