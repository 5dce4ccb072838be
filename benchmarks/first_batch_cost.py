"""Cost of the logger's first-batch check, next to one training step.

`GradientVarianceLogger(warn=True)` runs `diagnose` once per `fit`, on the
first batch, before its step (`keras_winit.monitoring.first_batch`). This
prints, side by side in one run on MobileNetV2 (`tests/_real_models.py`,
32x32, `weights=None`): the median of one compiled training step, of the
check alone, and of the first `fit` call with the logger (trace included)
with `warn=False` and `warn=True`, plus the traces of the train step
(TensorFlow: the batch is replayed without a retrace).

    python -m benchmarks.first_batch_cost [--batch 16] [--repeats 5]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _model(batch_size):
    import keras
    import numpy as np

    from tests import _real_models

    model, x = _real_models.build("MobileNetV2", batch_size=batch_size)
    y = np.arange(batch_size) % 10
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=False),
    )
    return model, x, y


def _first_fit(batch_size, warn):
    """Seconds of a one-step `fit` with the logger, of its check, traces."""
    from keras_winit.monitoring import GradientVarianceLogger
    from keras_winit.monitoring import first_batch

    model, x, y = _model(batch_size)
    check = first_batch.check
    checked = [0.0]

    def timed_check(*args, **kwargs):
        start = time.perf_counter()
        try:
            return check(*args, **kwargs)
        finally:
            checked[0] += time.perf_counter() - start

    first_batch.check = timed_check
    step = model.train_step
    traces = [0]

    def train_step(data):
        traces[0] += 1  # Python runs only while tracing (TensorFlow).
        return step(data)

    model.train_step = train_step
    try:
        with tempfile.TemporaryDirectory() as log_dir:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                start = time.perf_counter()
                model.fit(
                    x,
                    y,
                    batch_size=batch_size,
                    epochs=1,
                    verbose=0,
                    callbacks=[GradientVarianceLogger(log_dir, warn=warn)],
                )
                seconds = time.perf_counter() - start
    finally:
        first_batch.check = check
    return seconds, checked[0], traces[0]


def run(batch_size=16, repeats=5, out=sys.stdout):
    import keras

    from keras_winit.monitoring import first_batch

    model, x, y = _model(batch_size)
    model.train_on_batch(x, y)  # compiles
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        first_batch.check(model, (x, y))  # warm-up
        cold = time.perf_counter() - t
        step, check = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            model.train_on_batch(x, y)
            step.append(time.perf_counter() - t)
            t = time.perf_counter()
            first_batch.check(model, (x, y))
            check.append(time.perf_counter() - t)
    # Alternated, so that load from other processes hits both alike.
    fits = {False: [], True: []}
    for warn in (False, True, True, False):
        fits[warn].append(_first_fit(batch_size, warn))
    s, c = statistics.median(step), statistics.median(check)
    backend = keras.backend.backend()
    print(f"| MobileNetV2 32x32, batch {batch_size}, {backend} | s |", file=out)
    print("|---|---|", file=out)
    print(
        f"| one training step (`train_on_batch`), median of {repeats} "
        f"| {s:.3f} |",
        file=out,
    )
    print(
        f"| first-batch check (diagnose), median of {repeats} | {c:.3f} |",
        file=out,
    )
    print(f"| check / step | {c / s:.1f}x |", file=out)
    print(
        f"| first check of the process (cold: JAX compiles each op) "
        f"| {cold:.3f} |",
        file=out,
    )
    for warn in (False, True):
        runs = fits[warn]
        seconds = statistics.mean(r[0] for r in runs)
        inside = statistics.mean(r[1] for r in runs)
        traces = [r[2] for r in runs]
        print(
            f"| one-step `fit` with the logger, warn={warn}, mean of 2 "
            f"(trace included; `train_step` Python calls {traces}, on "
            f"TensorFlow its traces; of which the "
            f"check: {inside:.2f} s) | {seconds:.2f} |",
            file=out,
        )
    return s, c, fits


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.first_batch_cost"
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    run(args.batch, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
