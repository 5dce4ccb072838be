"""Import cost: the time `import keras_winit` adds after `import keras`.

Each repeat runs a fresh Python subprocess that imports Keras (and so the
backend), then times `import keras_winit` with `time.perf_counter` and
`time.process_time`. The median over the repeats is reported.

Usage:
    python -m benchmarks --only import
"""

import json
import os
import statistics
import subprocess
import sys

#: Target from issue 7: at most this many seconds.
TARGET_S = 0.1

_CHILD = """
import json, sys, time
import {base}
wall, cpu = time.perf_counter(), time.process_time()
import {module}
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({{"wall_s": wall, "cpu_s": cpu}}))
"""


def measure_once(base="keras", module="keras_winit"):
    """Times `import module` after `import base` in a fresh interpreter.

    Returns:
        A dict `{"wall_s": ..., "cpu_s": ...}`.
    """
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    out = subprocess.run(
        [sys.executable, "-c", _CHILD.format(base=base, module=module)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(repeats=5, base="keras", module="keras_winit"):
    """Measures the import `repeats` times; returns one row (a dict).

    Args:
        repeats: Number of fresh interpreters (the median is reported).
        base: Module imported first, untimed.
        module: Module whose import is timed.

    Returns:
        A one-element list: a dict with `name`, `median_wall_s`,
        `median_cpu_s`, `samples_wall_s`, `repeats`, `target_s`,
        `meets_target`.
    """
    if repeats < 1:
        raise ValueError(
            f"Argument `repeats` must be a positive int. Received: "
            f"repeats={repeats}"
        )
    samples = [measure_once(base, module) for _ in range(repeats)]
    wall = statistics.median(s["wall_s"] for s in samples)
    cpu = statistics.median(s["cpu_s"] for s in samples)
    return [
        {
            "name": f"import {module} (after import {base})",
            "median_wall_s": wall,
            "median_cpu_s": cpu,
            "samples_wall_s": [s["wall_s"] for s in samples],
            "repeats": repeats,
            "target_s": TARGET_S,
            "meets_target": wall <= TARGET_S,
        }
    ]
