"""What finding residual branches costs next to `initialize`'s draws.

`residual_branches(model)` reads the Functional graph and the keras_hub
transformer table first and records one forward pass
(`keras_winit.walker`) only when they find nothing (a model without a
graph). This measures, side by side in one process on keras_hub's GPT-2
(124M from config, nothing downloaded; `--quick`: 2 layers, width 64), the
backend of `KERAS_BACKEND`:

- `initialize he_normal`: the draws of every variable (the reference);
- `residual_branches` as it runs on GPT-2 (graph + table, no pass);
- `recorded pass`: the walker's forward pass with the data flow
  (`walker.walk(model)` on `walker.built_batch(model)`: 2 × 8 tokens);
- `branches from the pass`: what `residual_branches` runs for a model
  without a graph (the pass, fed through an `Identity`, and the checks).

It also prints whether the branches found from the pass are the table's
for what a rule reads (the kernel stages and the last norm, in order;
names differ, and the pass's `layers` also hold the dropout layers): what
"always record the pass" would need. Rounds alternate the order;
medians of `--repeats`.

Usage:
    python -m benchmarks.residual_walk [--repeats 3] [--quick]
"""

import argparse
import statistics
import time

import keras

from benchmarks.initialize_speed import FULL
from benchmarks.initialize_speed import QUICK


def _wait(model):
    for v in model.weights:
        keras.ops.convert_to_numpy(keras.ops.ravel(v.value)[:1])


def _signature(branch):
    """What a residual rule reads: the kernel stages and the last norm."""
    return (
        [[layer.path for layer in stage] for stage in branch.stages],
        branch.last_norm.path if branch.last_norm is not None else None,
    )


def run(repeats=3, quick=False):
    """Medians (s) of each step, and whether the branches agree."""
    import keras_hub

    from keras_winit import layer_init
    from keras_winit import walker

    keras.utils.set_random_seed(0)
    model = keras_hub.models.GPT2Backbone(**(QUICK if quick else FULL))
    steps = {
        "initialize he_normal": lambda: (
            layer_init.initialize(model, "he_normal", seed=0),
            _wait(model),
        ),
        "residual_branches (graph + table)": lambda: (
            layer_init.residual_branches(model)
        ),
        "recorded pass (walker.walk)": lambda: walker.walk(
            model, walker.built_batch(model)
        ),
        "branches from the pass": lambda: layer_init._walked_branches(model),
    }
    samples = {name: [] for name in steps}
    for round_ in range(repeats):
        names = list(steps)
        names = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in names:
            start = time.perf_counter()
            steps[name]()
            samples[name].append(time.perf_counter() - start)
    table = layer_init.residual_branches(model)
    walked = layer_init._walked_branches(model)
    agree = [_signature(b) for b in table] == [_signature(b) for b in walked]
    return {n: statistics.median(s) for n, s in samples.items()}, (
        len(table),
        len(walked),
        agree,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    medians, (n_table, n_walked, agree) = run(args.repeats, args.quick)
    draws = medians["initialize he_normal"]
    print(
        f"backend {keras.backend.backend()}, GPT-2 "
        f"{'quick' if args.quick else '124M'}, {args.repeats} rounds"
    )
    print("| step | median s | / draws |")
    print("|---|---:|---:|")
    for name, value in medians.items():
        print(f"| {name} | {value:.3f} | {value / draws:.3f} |")
    print(
        f"\nbranches: table {n_table}, from the pass {n_walked}; same "
        f"stages and last norms: {agree}"
    )


if __name__ == "__main__":
    main()
