"""CPU cost of monitoring gradients during `fit`.

Measures the process CPU time per training step of a 64 -> 5 x 256 tanh -> 10
MLP (batch 64, synthetic data) with no callback, with
`keras_winit.callbacks.GradientVarianceLogger` at several frequencies, and
with `keras.callbacks.TensorBoard(update_freq=1)` as a reference (when
TensorFlow is installed: it writes with `tf.summary`). Each configuration is
timed `repeats` times, interleaved, and the median is reported; overheads are
ratios to the plain fit of the same run.

The Keras backend is the one of `KERAS_BACKEND` (one per process); run the
script once per backend to compare:

    for b in tensorflow jax torch; do
        KERAS_BACKEND=$b python benchmarks/monitoring.py
    done

Usage:
    python benchmarks/monitoring.py [--steps 300] [--repeats 5] [--threads 1]
        [--json out]
"""

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_winit.callbacks import GradientVarianceLogger  # noqa: E402

BATCH = 64
# Untimed first steps (tracing). 20 keeps steps 100, 200, ... inside the
# timed window in proportion: 300 timed steps hold 3 records at freq 100.
WARMUP_STEPS = 20


def _configs(log_dir):
    def logger(update_freq, histogram_freq=0):
        return lambda: [
            GradientVarianceLogger(
                log_dir,
                update_freq=update_freq,
                histogram_freq=histogram_freq,
                warn_log10_ratio=None,
            )
        ]

    configs = [
        ("plain fit", lambda: []),
        ("GradientVarianceLogger(update_freq=1)", logger(1)),
        ("GradientVarianceLogger(update_freq=10)", logger(10)),
        ("GradientVarianceLogger(update_freq=100)", logger(100)),
        (
            "GradientVarianceLogger(update_freq=100, histogram_freq=100)",
            logger(100, 100),
        ),
    ]
    if importlib.util.find_spec("tensorflow") is not None:
        configs.append(
            (
                "keras.callbacks.TensorBoard(update_freq=1)",
                lambda: [keras.callbacks.TensorBoard(log_dir, update_freq=1)],
            )
        )
    return configs


def _model():
    keras.utils.set_random_seed(0)
    layers = [keras.Input((64,))]
    layers += [keras.layers.Dense(256, activation="tanh") for _ in range(5)]
    layers += [keras.layers.Dense(10)]
    model = keras.Sequential(layers)
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


class _Timer(keras.callbacks.Callback):
    """CPU time from the end of batch `warmup - 1` to the last batch end."""

    def __init__(self, warmup):
        super().__init__()
        self.warmup = warmup
        self.start = self.end = None
        self.last = None

    def on_train_batch_end(self, batch, logs=None):
        now = time.process_time()
        if batch == self.warmup - 1:
            self.start = now
        self.end, self.last = now, batch


def _time_fit(make_callbacks, x, y, warmup):
    # The first batches trace the train function (with the callbacks'
    # hooks): they are not timed.
    model = _model()
    timer = _Timer(warmup)
    model.fit(
        x,
        y,
        batch_size=BATCH,
        verbose=0,
        shuffle=False,
        callbacks=[*make_callbacks(), timer],
    )
    return (timer.end - timer.start) / (timer.last + 1 - warmup)


def _limit_threads(backend, threads):
    """Limits the backend's compute threads (before it runs any op)."""
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    elif backend == "torch":
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(threads)
    elif backend == "jax" and threads == 1:
        # Read when XLA's CPU client starts, at the first JAX operation.
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_cpu_multi_thread_eigen=false "
            "intra_op_parallelism_threads=1"
        ).strip()


def run(steps=300, repeats=5, threads=None):
    """Times every configuration; returns one dict per configuration.

    Keys: `name`, `backend` (the Keras backend), `ms_per_step` (median CPU
    milliseconds per step), `overhead` (ratio to the plain fit minus 1),
    `samples_ms`, `steps`, `repeats`, `threads`. `threads` limits the
    backend's thread pools (TensorFlow's intra- and inter-op pools,
    `torch.set_num_threads`, XLA's CPU Eigen threads on JAX; it must be set
    before the backend runs any op; `None` keeps the defaults): with one
    thread, CPU time counts work only, not idle pool threads spinning,
    which makes it far less noisy on a shared machine.
    """
    backend = keras.backend.backend()
    if threads is not None:
        _limit_threads(backend, threads)
    warmup = WARMUP_STEPS
    total = steps + warmup
    rng = np.random.default_rng(0)
    x = rng.normal(size=(total * BATCH, 64)).astype("float32")
    y = rng.integers(0, 10, size=(total * BATCH,))
    with tempfile.TemporaryDirectory() as log_dir:
        configs = _configs(log_dir)
        samples = {name: [] for name, _ in configs}
        for _ in range(repeats):
            for name, make_callbacks in configs:
                samples[name].append(_time_fit(make_callbacks, x, y, warmup))
    base = statistics.median(samples["plain fit"])
    rows = []
    for name, _ in configs:
        median = statistics.median(samples[name])
        rows.append(
            {
                "name": name,
                "backend": backend,
                "ms_per_step": 1e3 * median,
                "overhead": median / base - 1.0,
                "samples_ms": [1e3 * s for s in samples[name]],
                "steps": steps,
                "repeats": repeats,
                "threads": threads,
            }
        )
    return rows


def _table(rows):
    width = max(len(r["name"]) for r in rows)
    lines = [
        f"Keras backend: {rows[0]['backend']}",
        f"{'configuration':<{width}}  CPU ms/step  overhead",
        "-" * (width + 23),
    ]
    for r in rows:
        lines.append(
            f"{r['name']:<{width}}  {r['ms_per_step']:11.3f}  "
            f"{100 * r['overhead']:+7.1f}%"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="backend compute threads; 0 keeps the backend's defaults",
    )
    parser.add_argument("--json", default=None, help="write results here")
    args = parser.parse_args(argv)
    rows = run(
        steps=args.steps, repeats=args.repeats, threads=args.threads or None
    )
    print(_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
