"""`initialize` on keras_hub's GPT-2 124M: time and peak memory vs Keras.

Issue 16 item 4: `keras_winit.initialize(model, "he_normal")` on
`GPT2Backbone(50257, 12, 12, 768, 3072, max_sequence_length=1024)` (built
from config, nothing downloaded) should take no longer than Keras' own
build-and-initialize of the same model, and its process should peak at no
more than the parameters' bytes + 1 GB.

Each measurement runs in a fresh subprocess (`MALLOC_MMAP_THRESHOLD_=
131072`, so large freed buffers go back to the system), on the backend of
`KERAS_BACKEND`:

- `keras`: the time of the `GPT2Backbone(...)` call (Keras creates and
  initializes every variable: its build-and-init), after the imports.
- `initialize ...`: the model is built first (untimed), the kernel's
  peak-RSS counter is reset (`echo 5 > /proc/self/clear_refs`), then
  `initialize(model, scheme, seed=0, ...)` is timed.

Each child reports its wall time, process CPU time, the process's peak
RSS (`VmHWM`) during the timed part, and the RSS before it. The rounds
alternate the configurations so that load from other processes hits all
alike; medians are printed. Targets: median time of `initialize
he_normal` ≤ median of `keras`; its peak RSS ≤ parameter bytes + 1 GB.

Usage:
    python benchmarks/initialize_speed.py [--repeats 3] [--quick]
        [--baseline DIR]

`--quick` uses a 2-layer GPT-2 of width 64 (a smoke test, not a
measurement). `--baseline DIR` also times the two `initialize he_normal`
configurations with the `keras_winit` of another checkout (e.g. the main
branch before a change), in the same alternating rounds: a before/after
comparison under the same load.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

FULL = dict(
    vocabulary_size=50257,
    num_layers=12,
    num_heads=12,
    hidden_dim=768,
    intermediate_dim=3072,
    max_sequence_length=1024,
)
QUICK = dict(
    vocabulary_size=500,
    num_layers=2,
    num_heads=2,
    hidden_dim=64,
    intermediate_dim=128,
    max_sequence_length=32,
)
#: Configurations: name -> keyword arguments of `initialize` (None: Keras).
CONFIGS = {
    "keras": None,
    "initialize he_normal": {"scheme": "he_normal"},
    "initialize he_normal, embeddings_stddev=0.02": {
        "scheme": "he_normal",
        "embeddings_stddev": 0.02,
    },
    "initialize auto, residual=gpt2": {"scheme": "auto", "residual": "gpt2"},
}
GIB = 1024**3

_CHILD = """
import json, math, os, sys, time
import keras
import keras_hub
import keras_winit

def status():
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

SIZES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
config, kwargs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
keras.utils.set_random_seed(0)
imports = status()["VmRSS"]
if kwargs is None:
    reset_peak()
    before = status()["VmRSS"]
    wall, cpu = time.perf_counter(), time.process_time()
    model = keras_hub.models.GPT2Backbone(**config)
else:
    model = keras_hub.models.GPT2Backbone(**config)
    reset_peak()
    before = status()["VmRSS"]
    wall, cpu = time.perf_counter(), time.process_time()
    keras_winit.initialize(model, seed=0, **kwargs)
# Wait for every variable (asynchronous backends).
for v in model.weights:
    keras.ops.convert_to_numpy(keras.ops.ravel(v.value)[:1])
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
params = sum(
    math.prod(v.shape) * SIZES[keras.backend.standardize_dtype(v.dtype)]
    for v in model.weights
)
print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak": status()["VmHWM"],
                  "before": before, "imports": imports,
                  "param_bytes": params}))
"""


#: Configurations also timed with `--baseline`'s checkout.
BASELINE_CONFIGS = (
    "initialize he_normal",
    "initialize he_normal, embeddings_stddev=0.02",
)
BASELINE = " (baseline)"


def measure(config, kwargs, root=None):
    """Runs one configuration in a fresh interpreter; returns its dict.

    `root`: the checkout whose `keras_winit` is imported (default: this
    one).
    """
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    if root is None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(config), json.dumps(kwargs)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(repeats=3, quick=False, baseline=None):
    """Measures every configuration `repeats` times, in alternating rounds.

    Args:
        repeats: Positive int.
        quick: Bool, the small GPT-2.
        baseline: Optional directory of another checkout: the
            `BASELINE_CONFIGS` are also measured with its `keras_winit`.

    Returns:
        A list of dicts, one per configuration: `name`, medians of
        `wall_s`, `cpu_s`, `peak` and `before` (bytes), `param_bytes`,
        and the samples.
    """
    if repeats < 1:
        raise ValueError(
            f"Argument `repeats` must be a positive int. Received: "
            f"repeats={repeats}"
        )
    if baseline is not None and not os.path.isdir(
        os.path.join(baseline, "keras_winit")
    ):
        raise ValueError(
            "Argument `baseline` must be a checkout holding `keras_winit/`. "
            f"Received: baseline={baseline!r}"
        )
    config = QUICK if quick else FULL
    runs = {name: (CONFIGS[name], None) for name in CONFIGS}
    if baseline is not None:
        for name in BASELINE_CONFIGS:
            runs[name + BASELINE] = (CONFIGS[name], baseline)
    samples = {name: [] for name in runs}
    for round_ in range(repeats):
        names = list(runs)
        names = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in names:
            kwargs, root = runs[name]
            samples[name].append(measure(config, kwargs, root))
    rows = []
    for name, runs in samples.items():
        rows.append(
            {
                "name": name,
                "wall_s": statistics.median(r["wall_s"] for r in runs),
                "cpu_s": statistics.median(r["cpu_s"] for r in runs),
                "peak": statistics.median(r["peak"] for r in runs),
                "before": statistics.median(r["before"] for r in runs),
                "imports": statistics.median(r["imports"] for r in runs),
                "param_bytes": runs[0]["param_bytes"],
                "samples_wall_s": [r["wall_s"] for r in runs],
            }
        )
    return rows


def table(rows):
    """The Markdown table of `run`'s rows, with the targets.

    `peak − imports` is the process's peak RSS less its RSS once Python,
    the backend, Keras, keras_hub and keras_winit are imported (before the
    model exists): what the model and the measured step cost.
    """
    keras_wall = next(r["wall_s"] for r in rows if r["name"] == "keras")
    lines = [
        "| configuration | wall s | CPU s | wall / Keras | peak RSS GiB "
        "| RSS before GiB | peak − imports GiB | wall samples |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | "
            f"{r['wall_s'] / keras_wall:.2f} | {r['peak'] / GIB:.2f} | "
            f"{r['before'] / GIB:.2f} | "
            f"{(r['peak'] - r['imports']) / GIB:.2f} | "
            + ", ".join(f"{s:.2f}" for s in r["samples_wall_s"])
            + " |"
        )
    target = next(r for r in rows if r["name"] == "initialize he_normal")
    limit = target["param_bytes"] + GIB
    used = target["peak"] - target["imports"]
    lines.append("")
    lines.append(
        f"parameters: {target['param_bytes'] / GIB:.3f} GiB; RSS after the "
        f"imports: {target['imports'] / GIB:.2f} GiB"
    )
    lines.append(
        f"time target (initialize he_normal ≤ Keras, wall): "
        f"{'met' if target['wall_s'] <= keras_wall else 'missed'}; "
        f"RSS target (peak − imports ≤ params + 1 GiB = {limit / GIB:.2f} "
        f"GiB): {'met' if used <= limit else 'missed'}; absolute peak "
        f"{target['peak'] / GIB:.2f} GiB "
        f"({'≤' if target['peak'] <= limit else '>'} params + 1 GiB)"
    )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--baseline", default=None)
    args = parser.parse_args(argv)
    import keras

    print(
        f"backend: {keras.backend.backend()}, repeats: {args.repeats}"
        + (f", baseline: {args.baseline}" if args.baseline else "")
    )
    print(table(run(args.repeats, args.quick, args.baseline)))


if __name__ == "__main__":
    main()
