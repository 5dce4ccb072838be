"""Cost of monitoring gradients during `fit`.

Measures the time per training step of a model with no callback, with
`keras_winit.monitoring.GradientVarianceLogger` at several frequencies,
and with `keras.callbacks.TensorBoard(update_freq=1)` as a reference (when
TensorFlow is installed: it writes with `tf.summary`). Models (`--models`),
with their number of trainable variables, so that a cost per variable
shows:

- `mlp`: the project's MLP, 64 -> 5 x 256 tanh -> 10, batch 64
  (12 variables);
- `mobilenetv2`: `keras.applications.MobileNetV2(weights=None)` on 32x32x3
  inputs, 10 classes, batch 16 (158 variables), built as
  `tests/_real_models.py` builds its nets (no download);
- `mlp500`: 64 -> 249 x 32 tanh -> 10, batch 64 (500 variables).

The logger runs with its default signals (all on, `update_ratio` every
10 steps at `update_freq=1`), and at `update_freq=1` also with every
signal at every step (`signals=SIGNALS`) and without `update_ratio` (its
most expensive signal: a copy of the weights before each recorded update),
to show that signal's cost.

Configurations take turns: each trains in its own thread, one `fit` of
`WARMUP_STEPS + repeats * steps` steps, and only the thread holding the
turn runs; after its warm-up (tracing, untimed) and after each window of
`steps` timed steps, it hands the turn to the next configuration. Each
round gives every configuration one window, in a random order. Load from
other processes on a shared machine thus falls on all configurations
alike, within seconds of each other. Per window: wall time
(`time.perf_counter`) and process CPU time (`time.process_time`, all
threads; the other configurations' threads are idle, waiting for the turn)
per step. Reported: medians over the windows, and overheads: the median,
over the rounds, of the ratio to the plain fit's window of the same round
(load on a shared machine drifts over minutes; pairs within a round see
nearly the same load), with the first and third quartiles of the CPU
ratios: overheads that differ by less than that spread are not told
apart on this machine, and a 95% confidence interval of the median (order
statistics; 6 rounds or more): how precisely the run places it. Pairing
removes drift in time, not what differs between two instances of one
configuration (where their memory lies, their thread): a second plain
fit, "plain fit again (A/A control)", measures that, and overheads within
its distance of 0 are noise. A window of 100 steps or a multiple holds
the same number of recorded steps (one at
`update_freq=100`) wherever it starts.

The Keras backend is the one of `KERAS_BACKEND` (one per process); run the
script once per backend to compare:

    for b in tensorflow jax torch; do
        KERAS_BACKEND=$b python benchmarks/monitoring.py
    done

Usage:
    python benchmarks/monitoring.py [--steps 100] [--repeats 15] [--threads 1]
        [--models mlp,mobilenetv2,mlp500] [--configs "defaults|all"]
        [--json out]
"""

import argparse
import importlib.util
import json
import math
import os
import random
import statistics
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_winit.monitoring import GradientVarianceLogger  # noqa: E402
from keras_winit.monitoring.records import SIGNALS  # noqa: E402

#: Names of the models the benchmark can train (see the module docstring).
MODELS = ("mlp", "mobilenetv2", "mlp500")
#: A second plain fit, run as a configuration (an A/A control).
AA_CONTROL = "plain fit again (A/A control)"
# Untimed first steps (tracing and compiling), under the configuration's
# turn.
WARMUP_STEPS = 20


def _configs(log_dir):
    def logger(update_freq, histogram_freq=0, signals=None, name="defaults"):
        # One run per configuration: they train at the same time.
        return lambda: [
            GradientVarianceLogger(
                log_dir,
                update_freq=update_freq,
                histogram_freq=histogram_freq,
                warn=False,
                run_name=f"u{update_freq}_h{histogram_freq}_{name}",
                signals=signals,
            )
        ]

    without_update_ratio = [s for s in SIGNALS if s != "update_ratio"]
    # `signals=None`: the defaults (update_ratio every 10 steps at
    # update_freq=1); `list(SIGNALS)`: every signal at every recorded step.
    configs = [
        ("plain fit", lambda: []),
        # The same as "plain fit" in a model and thread of its own: its
        # overhead is what two identical configurations differ by (memory
        # placement, thread), the floor below which overheads are noise.
        (AA_CONTROL, lambda: []),
        ("GradientVarianceLogger(update_freq=1) (defaults)", logger(1)),
        (
            "GradientVarianceLogger(update_freq=1, all signals)",
            logger(1, signals=list(SIGNALS), name="all"),
        ),
        (
            "GradientVarianceLogger(update_freq=1, no update_ratio)",
            logger(1, signals=without_update_ratio, name="no_ratio"),
        ),
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


def _mlp(depth, width):
    layers = [keras.Input((64,))]
    layers += [
        keras.layers.Dense(width, activation="tanh") for _ in range(depth)
    ]
    layers += [keras.layers.Dense(10)]
    return keras.Sequential(layers)


def _mobilenetv2():
    return keras.applications.MobileNetV2(
        weights=None,
        input_shape=(32, 32, 3),
        classes=10,
        classifier_activation=None,  # Logits, for the loss.
    )


# name: (build, batch size, input shape)
_SPECS = {
    "mlp": (lambda: _mlp(5, 256), 64, (64,)),
    "mobilenetv2": (_mobilenetv2, 16, (32, 32, 3)),
    "mlp500": (lambda: _mlp(249, 32), 64, (64,)),
}


def _model(name="mlp"):
    keras.utils.set_random_seed(0)
    model = _SPECS[name][0]()
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


class _Turns:
    """Turns between threads, in rounds: one runs, the others wait.

    The first round goes in index order; each later round in a random order
    of the threads still active, so that no configuration always follows
    the same one (whose leftovers, such as a summary writer's flush
    thread, would always fall on it).
    """

    def __init__(self, count, seed=0):
        self.cond = threading.Condition()
        self.active = list(range(count))
        self.queue = list(range(count))  # This round's order; [0] runs.
        self.rng = random.Random(seed)

    def wait(self, i):
        with self.cond:
            self.cond.wait_for(lambda: self.queue and self.queue[0] == i)

    def _advance(self):
        self.queue.pop(0)
        if not self.queue and self.active:
            self.queue = self.rng.sample(self.active, len(self.active))
        self.cond.notify_all()

    def pass_on(self, i):
        """Hands the turn from `i` to the next thread."""
        with self.cond:
            if self.queue and self.queue[0] == i:
                self._advance()

    def leave(self, i):
        """Removes `i` (holding the turn or not) from the rotation."""
        with self.cond:
            if i not in self.active:
                return
            self.active.remove(i)
            if self.queue and self.queue[0] == i:
                self._advance()
            elif i in self.queue:
                self.queue.remove(i)
                self.cond.notify_all()


class _Windows(keras.callbacks.Callback):
    """Times windows of `steps` batches; hands the turn on between them."""

    def __init__(self, turns, index, warmup, steps, repeats):
        super().__init__()
        self.turns, self.index = turns, index
        self.warmup, self.steps, self.repeats = warmup, steps, repeats
        self.windows = []  # (wall s, CPU s) per step
        self.start = None

    def on_train_batch_end(self, batch, logs=None):
        done = batch + 1 - self.warmup
        if done < 0 or done % self.steps:
            return
        now = (time.perf_counter(), time.process_time())
        if done:
            self.windows.append(
                tuple(
                    (b - a) / self.steps
                    for a, b in zip(self.start, now, strict=True)
                )
            )
            if len(self.windows) == self.repeats:
                return  # The turn is left at the end of `fit`.
        self.turns.pass_on(self.index)
        self.turns.wait(self.index)
        self.start = (time.perf_counter(), time.process_time())


def _time_configs(configs, x, y, warmup, steps, repeats, model="mlp"):
    """`{name: [(wall, cpu) per step of each window]}`, taking turns."""
    turns = _Turns(len(configs))
    results, errors = {}, []

    def train(i, make_callbacks):
        try:
            turns.wait(i)
            net = _model(model)
            timer = _Windows(turns, i, warmup, steps, repeats)
            net.fit(
                x,
                y,
                batch_size=_SPECS[model][1],
                verbose=0,
                shuffle=False,
                callbacks=[*make_callbacks(), timer],
            )
            results[configs[i][0]] = timer.windows
        except BaseException as error:  # Re-raised in the main thread.
            errors.append(error)
        finally:
            turns.leave(i)

    threads = [
        threading.Thread(target=train, args=(i, make_callbacks))
        for i, (_, make_callbacks) in enumerate(configs)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


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


def _ratios(windows, plain, column):
    """Per round: `window / plain window of the round`."""
    return [w[column] / p[column] for w, p in zip(windows, plain, strict=True)]


def _paired_overhead(windows, plain, column):
    """Median over rounds of `window / plain window of the round`, minus 1."""
    return statistics.median(_ratios(windows, plain, column)) - 1.0


def _paired_quartiles(windows, plain, column):
    """`(first, third)` quartiles over rounds of the same ratios as
    `_paired_overhead`, minus 1: how much the overhead moves between
    rounds (the machine's noise), next to its median."""
    ratios = _ratios(windows, plain, column)
    if len(ratios) < 2:
        return ratios[0] - 1.0, ratios[0] - 1.0
    first, _, third = statistics.quantiles(ratios, n=4, method="inclusive")
    return first - 1.0, third - 1.0


def _median_interval(values, level=0.95):
    """Distribution-free confidence interval of the median of `values`:
    the order statistics `x_(j)` and `x_(n+1-j)` (1-based), `j` the
    largest with `P(Binomial(n, 1/2) < j) <= (1 - level) / 2` (for 100
    values at 95%: the 40th and the 61st). `None` for fewer than 6 values
    at 95% (no such `j`)."""
    x = sorted(values)
    n = len(x)
    tail = (1.0 - level) / 2.0
    below, j = 0.0, 0  # below = P(B < j)
    while j < n:
        p = math.comb(n, j) / 2.0**n
        if below + p > tail:
            break
        below += p
        j += 1
    if j == 0:
        return None
    return x[j - 1], x[n - j]


def _paired_interval(windows, plain, column):
    """95% confidence interval, minus 1, of the median of the same ratios
    as `_paired_overhead` (`None` for fewer than 6 rounds): how precisely
    this run places the overhead (a target of +1% is shown met when the
    interval's top is under it)."""
    interval = _median_interval(_ratios(windows, plain, column))
    if interval is None:
        return None
    return interval[0] - 1.0, interval[1] - 1.0


def run(steps=100, repeats=15, threads=None, models=("mlp",), configs=None):
    """Times every configuration; returns one dict per configuration.

    For each model of `models` (names of `MODELS`), each configuration
    trains `WARMUP_STEPS + repeats * steps` steps; `repeats` windows of
    `steps` steps are timed, taking turns with the other configurations
    (see the module docstring). Keys: `name`, `model`, `variables` (its
    number of trainable variables), `backend` (the Keras backend),
    `ms_per_step` and `cpu_ms_per_step` (medians over the windows, wall
    and process CPU milliseconds), `overhead` and `cpu_overhead` (median
    over the rounds of the ratio to the plain fit's window of the same
    round, minus 1), `overhead_quartiles` and `cpu_overhead_quartiles`
    (first and third quartiles of those ratios, minus 1: the noise),
    `overhead_interval` and `cpu_overhead_interval` (95% confidence
    interval of those medians, `None` with fewer than 6 rounds),
    `samples_ms` and `cpu_samples_ms` (wall and CPU ms per
    step of each window), `steps`, `repeats`, `threads`. `threads` limits
    the backend's thread pools (TensorFlow's intra- and inter-op pools,
    `torch.set_num_threads`, XLA's CPU Eigen threads on JAX; it must be
    set before the backend runs any op; `None` keeps the defaults): with
    one thread, CPU time counts work, not idle pool threads spinning.
    `configs`: parts of the configuration names to run (all if `None`;
    the plain fit and its A/A control, `AA_CONTROL`, always run).
    """
    if steps < 1 or repeats < 1:
        raise ValueError(
            "Arguments `steps` and `repeats` must be positive. "
            f"Received: steps={steps}, repeats={repeats}"
        )
    unknown = [m for m in models if m not in _SPECS]
    if unknown or not models:
        raise ValueError(
            f"Invalid `models` argument: {models!r}. Expected names among "
            f"{MODELS}."
        )
    backend = keras.backend.backend()
    if threads is not None:
        _limit_threads(backend, threads)
    warmup = WARMUP_STEPS
    total = warmup + repeats * steps
    rows = []
    for model in models:
        _, batch, shape = _SPECS[model]
        variables = len(_model(model).trainable_variables)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(total * batch, *shape)).astype("float32")
        y = rng.integers(0, 10, size=(total * batch,))
        with tempfile.TemporaryDirectory() as log_dir:
            chosen = [
                c
                for c in _configs(log_dir)
                if configs is None
                or c[0] in ("plain fit", AA_CONTROL)
                or any(part in c[0] for part in configs)
            ]
            samples = _time_configs(chosen, x, y, warmup, steps, repeats, model)
        plain = samples["plain fit"]
        for name, _ in chosen:
            windows = samples[name]
            rows.append(
                {
                    "name": name,
                    "model": model,
                    "variables": variables,
                    "backend": backend,
                    "ms_per_step": 1e3
                    * statistics.median(w for w, _ in windows),
                    "cpu_ms_per_step": 1e3
                    * statistics.median(c for _, c in windows),
                    # Window k of every configuration ran in round k,
                    # within seconds of the others: compare within rounds.
                    "overhead": _paired_overhead(windows, plain, 0),
                    "cpu_overhead": _paired_overhead(windows, plain, 1),
                    "overhead_quartiles": _paired_quartiles(windows, plain, 0),
                    "cpu_overhead_quartiles": _paired_quartiles(
                        windows, plain, 1
                    ),
                    "overhead_interval": _paired_interval(windows, plain, 0),
                    "cpu_overhead_interval": _paired_interval(
                        windows, plain, 1
                    ),
                    "samples_ms": [1e3 * w for w, _ in windows],
                    "cpu_samples_ms": [1e3 * c for _, c in windows],
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
        f"{'model':<11}  vars  {'configuration':<{width}}  wall ms/step  "
        "overhead  CPU ms/step  overhead  CPU quartiles  CPU 95% CI",
        "-" * (width + 95),
    ]
    for r in rows:
        low, high = r.get("cpu_overhead_quartiles", (r["cpu_overhead"],) * 2)
        lines.append(
            f"{r.get('model', 'mlp'):<11}  {r.get('variables', 12):4d}  "
            f"{r['name']:<{width}}  {r['ms_per_step']:12.3f}  "
            f"{100 * r['overhead']:+7.1f}%  {r['cpu_ms_per_step']:11.3f}  "
            f"{100 * r['cpu_overhead']:+7.1f}%  "
            f"{_span(low, high):<13}  "
            f"{_span(*(r.get('cpu_overhead_interval') or (None, None)))}"
        )
    return "\n".join(lines)


def _span(low, high):
    """`low..high` in percent, `-` when unknown."""
    if low is None:
        return "-"
    return f"{100 * low:+.1f}..{100 * high:+.1f}%"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=100, help="steps per timed window"
    )
    parser.add_argument("--repeats", type=int, default=15, help="timed windows")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="backend compute threads; 0 keeps the backend's defaults",
    )
    parser.add_argument(
        "--models",
        default=",".join(MODELS),
        help=f"comma-separated models among {', '.join(MODELS)}",
    )
    parser.add_argument(
        "--configs",
        default=None,
        help="'|'-separated parts of the configuration names to run "
        "(the plain fit and its A/A control always run); fewer "
        "configurations, less noise",
    )
    parser.add_argument("--json", default=None, help="write results here")
    args = parser.parse_args(argv)
    models = tuple(m for m in args.models.split(",") if m)
    if not models or any(m not in _SPECS for m in models):
        parser.error(
            f"argument --models: invalid value {args.models!r}; expected "
            f"names among {', '.join(MODELS)}"
        )
    rows = run(
        steps=args.steps,
        repeats=args.repeats,
        threads=args.threads or None,
        models=models,
        configs=args.configs.split("|") if args.configs else None,
    )
    print(_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
