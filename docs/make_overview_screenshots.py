"""Makes the pictures of docs/monitoring_overview.md (docs/overview_*.png).

TensorBoard screenshots of the overview of all layers at once
(`keras_winit/monitoring/overview.py`): the Custom Scalars dashboard, one
chart per statistic with every layer on it (y axes switched to log scale,
the depth-ordered list of one chart's curves opened), and the depth
profiles in the Images dashboard at their actual size; and one depth
profile as written, the weights' variance at initialization.

The run: an 8-layer tanh MLP on scikit-learn's bundled digits with the
classic "standard" init U(-1/sqrt(n), 1/sqrt(n)) of Glorot & Bengio (2010),
logged by `GradientVarianceLogger`; then, as the logger will do, the layout
once and depth profiles every 20 steps (its `histogram_freq`), from the
values the logger wrote (read back from its event file).

Needs the package's virtualenv (keras, tensorboard, scikit-learn) and
Debian's chromium (`apt-get install -y chromium`). Chromium is driven over
its DevTools protocol (a small websocket client below, standard library
only) to click TensorBoard's buttons. Only 127.0.0.1 is used; nothing is
downloaded. CI never runs this script.

Usage: python docs/make_overview_screenshots.py [output_dir]
"""

import base64
import collections
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

WINDOW = (1600, 1150)


def write_logs(log_dir, out_dir):
    """Trains the MLP with the logger, then writes the overview summaries."""
    import keras
    from sklearn.datasets import load_digits
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from tensorboard.util import tensor_util

    from keras_winit.callbacks import GradientVarianceLogger
    from keras_winit.monitoring import overview

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    keras.utils.set_random_seed(0)
    layers = [keras.Input((64,))]
    for i in range(8):
        layers.append(
            keras.layers.Dense(
                64,
                activation="tanh",
                # "standard" init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
                kernel_initializer=keras.initializers.RandomUniform(
                    -(64**-0.5), 64**-0.5
                ),
                name=f"dense_{i + 1}",
            )
        )
    layers.append(keras.layers.Dense(10, name="logits"))
    model = keras.Sequential(layers, name="mlp")
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    logger = GradientVarianceLogger(
        log_dir, update_freq=5, weights_freq=5, warn=False
    )
    model.fit(x, y, batch_size=32, epochs=4, verbose=0, callbacks=[logger])

    paths = [v.path for v in model.trainable_variables]
    run_dir = os.path.join(log_dir, "gradients")
    acc = event_accumulator.EventAccumulator(
        run_dir, size_guidance={event_accumulator.TENSORS: 0}
    )
    acc.Reload()
    # statistic -> step -> path -> value
    logged = collections.defaultdict(lambda: collections.defaultdict(dict))
    for tag in acc.Tags()["tensors"]:
        statistic, _, path = tag.partition("/")
        for event in acc.Tensors(tag):
            value = float(tensor_util.make_ndarray(event.tensor_proto))
            logged[statistic][event.step][path] = value
    statistics = [s for s in overview.STATISTICS if s in logged]

    writer = EventFileWriter(run_dir, filename_suffix=".overview")

    def write(step, summary):
        writer.add_event(
            event_pb2.Event(wall_time=time.time(), step=step, summary=summary)
        )

    write(0, overview.layout_summary(statistics, paths))
    shown = ["grad_variance", "grad_norm", "weight_variance"]
    for step in sorted(logged["grad_variance"]):
        if step % 20:
            continue
        values = {
            s: [logged[s][step].get(p, float("nan")) for p in paths]
            for s in shown
            if step in logged[s]
        }
        write(step, overview.depth_profile_summary(values, paths, step=step))
    writer.close()
    # The picture itself at initialization: the zero biases in their band.
    png = overview.render_depth_profile(
        [logged["weight_variance"][0][p] for p in paths],
        paths,
        title="weight_variance by layer depth, step 0",
    )
    with open(
        os.path.join(out_dir, "overview_depth_profile_step0.png"), "wb"
    ) as f:
        f.write(png)
    print(f"logged {statistics} for {len(paths)} variables")


class DevTools:
    """The least websocket client that speaks Chrome's DevTools protocol."""

    def __init__(self, ws_url):
        url = urllib.parse.urlparse(ws_url)
        self.sock = socket.create_connection((url.hostname, url.port), 60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {url.path} HTTP/1.1\r\n"
                f"Host: {url.hostname}:{url.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(1)
        if b" 101 " not in response.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"No websocket: {response!r}")
        self.next_id = 0

    def _exact(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            data += chunk
        return data

    def _send(self, text):
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            header = struct.pack(">BB", 0x81, 0x80 | n)
        elif n < 1 << 16:
            header = struct.pack(">BBH", 0x81, 0x80 | 126, n)
        else:
            header = struct.pack(">BBQ", 0x81, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(header + mask + masked)

    def _receive(self):
        message = b""
        while True:
            first, second = self._exact(2)
            n = second & 0x7F
            if n == 126:
                (n,) = struct.unpack(">H", self._exact(2))
            elif n == 127:
                (n,) = struct.unpack(">Q", self._exact(8))
            message += self._exact(n)
            if first & 0x80:  # final fragment
                return json.loads(message)

    def call(self, method, **params):
        self.next_id += 1
        self._send(
            json.dumps({"id": self.next_id, "method": method, "params": params})
        )
        while True:
            message = self._receive()
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression):
        result = self.call(
            "Runtime.evaluate",
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(expression):
                return
            time.sleep(0.5)
        raise TimeoutError(expression)

    def screenshot(self, path):
        data = self.call("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        print(f"wrote {path}")


# querySelectorAll through the shadow roots of TensorBoard's Polymer parts.
DEEP_QUERY = """
function deepQuery(selector, root = document) {
  const found = [...root.querySelectorAll(selector)];
  for (const element of root.querySelectorAll("*")) {
    if (element.shadowRoot) {
      found.push(...deepQuery(selector, element.shadowRoot));
    }
  }
  return found;
}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def wait_until(predicate, what, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(what)


def take_screenshots(base, out_dir, work):
    port = free_port()
    chromium = subprocess.Popen(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={work}/chromium",
            f"--remote-debugging-port={port}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        targets = []

        def pages():
            targets[:] = [
                t
                for t in json.loads(get(f"http://127.0.0.1:{port}/json"))
                if t["type"] == "page"
            ]
            return targets

        wait_until(pages, "chromium's DevTools")
        tab = DevTools(targets[0]["webSocketDebuggerUrl"])
        tab.call("Page.enable")
        tab.call(
            "Emulation.setDeviceMetricsOverride",
            width=WINDOW[0],
            height=WINDOW[1],
            deviceScaleFactor=1,
            mobile=False,
        )

        # Custom Scalars: no smoothing; log y axes on the positive
        # statistics; the list of grad_variance's curves opened.
        tab.call(
            "Page.navigate", url=f"{base}/#custom_scalars&_smoothingWeight=0"
        )
        cards = DEEP_QUERY + (
            "deepQuery('tf-custom-scalar-multi-line-chart-card')"
        )
        tab.wait_for(f"{cards}.length >= 5")
        time.sleep(4)  # the charts' data
        tab.evaluate(
            cards
            + """.forEach(card => {
              if (["grad_variance", "grad_norm", "weight_variance"]
                    .includes(card.title)) {
                deepQuery('paper-icon-button[title="Toggle y-axis log scale"]',
                          card.shadowRoot)[0].click();
              }
              if (card.title === "grad_variance") {
                deepQuery('.toggle-matches-button', card.shadowRoot)[0].click();
              }
            }); true"""
        )
        time.sleep(3)
        tab.screenshot(os.path.join(out_dir, "overview_custom_scalars.png"))

        # Images: the depth profiles at their actual size.
        tab.call("Page.navigate", url=f"{base}/#images")
        images = DEEP_QUERY + "deepQuery('tf-image-loader')"
        tab.wait_for(f"{images}.length >= 3")
        tab.evaluate(
            DEEP_QUERY + "deepQuery('paper-checkbox').find(c => "
            "c.textContent.includes('actual image size')).click(); true"
        )
        time.sleep(4)
        tab.screenshot(os.path.join(out_dir, "overview_depth_profile.png"))
    finally:
        chromium.terminate()
        chromium.wait(timeout=30)


def main(out_dir):
    work = tempfile.mkdtemp()
    log_dir = os.path.join(work, "logs")
    server = None
    try:
        write_logs(log_dir, out_dir)
        port = free_port()
        tensorboard = shutil.which("tensorboard") or os.path.join(
            os.path.dirname(sys.executable), "tensorboard"
        )
        server = subprocess.Popen(
            [
                tensorboard,
                "--logdir",
                log_dir,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: (
                "depth_profile" in get(f"{base}/data/plugin/images/tags")
                and "chart" in get(f"{base}/data/plugin/custom_scalars/layout")
            ),
            "TensorBoard's layout and images",
        )
        take_screenshots(base, out_dir, work)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    # This checkout's keras_winit, not an installed one.
    sys.path.insert(
        0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main(sys.argv[1] if len(sys.argv) > 1 else "docs")
