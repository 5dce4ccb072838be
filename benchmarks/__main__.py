"""`python -m benchmarks`: runs the benchmarks, prints markdown tables.

Usage:
    python -m benchmarks [--quick] [--only initializers,monitoring,import]
        [--repeats N] [--memory subprocess|inprocess|off] [--json PATH]
"""

import argparse
import importlib
import json
import os
import platform
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SECTIONS = ("initializers", "monitoring", "import")

_FAMILY_NAMES = {
    "truncated_normal": "truncated normal",
    "normal": "normal",
    "uniform": "uniform",
}


def machine():
    """A dict describing the machine and the software versions."""
    import keras
    import numpy as np

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "numpy": np.__version__,
    }
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
    if hasattr(os, "getloadavg"):
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    return info


def _fmt_shape(shape):
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _fmt(value, spec, missing="–"):
    return missing if value is None else format(value, spec)


def initializers_table(rows):
    """Markdown table of `benchmarks.initializers.run` rows."""
    lines = [
        "| shape | dtype | distribution | initializer | median s "
        "| M values/s | CPU s | speedup vs Keras (wall) | speedup (CPU) "
        "| peak mem / output | target |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r["family"] == "calibration":
            lines.append(
                f"| {_fmt_shape(r['shape'])} | {r['dtype']} | – "
                f"| {r['name']} | | | | | "
                f"| {_fmt(r['peak_memory_ratio'], '.2f')} | ≈ 1.00 |"
            )
            continue
        target = ""
        if r["provider"] == "keras_winit":
            speed_ok = r["speedup_wall"] >= r["target_speedup"]
            peak = r["peak_memory_ratio"]
            # 1% for the method's resolution (see the calibration rows).
            peak_ok = peak is None or peak <= r["target_peak"] * 1.01
            target = (
                f"≥ {r['target_speedup']:g}×, ≤ {r['target_peak']:g}× mem: "
                + ("met" if speed_ok and peak_ok else "MISSED")
            )
        lines.append(
            f"| {_fmt_shape(r['shape'])} | {r['dtype']} "
            f"| {_FAMILY_NAMES[r['family']]} | {r['name']} "
            f"| {r['median_wall_s']:.4f} | {r['values_per_s'] / 1e6:.1f} "
            f"| {r['median_cpu_s']:.4f} | {r['speedup_wall']:.2f}× "
            f"| {_fmt(r['speedup_cpu'], '.2f')}× "
            f"| {_fmt(r['peak_memory_ratio'], '.2f')} | {target} |"
        )
    return "\n".join(lines)


def monitoring_table(rows):
    """Markdown table of `benchmarks.monitoring.run` rows."""
    lines = [
        "| configuration | wall ms/step | overhead (wall) "
        "| CPU ms/step | overhead (CPU) | CPU quartiles | CPU 95% CI |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        low, high = r.get("cpu_overhead_quartiles", (r["cpu_overhead"],) * 2)
        interval = r.get("cpu_overhead_interval")
        ci = "-"
        if interval:
            ci = f"{100 * interval[0]:+.1f}..{100 * interval[1]:+.1f}%"
        lines.append(
            f"| {r['name']} | {r['ms_per_step']:.3f} "
            f"| {100 * r['overhead']:+.1f}% "
            f"| {r['cpu_ms_per_step']:.3f} "
            f"| {100 * r['cpu_overhead']:+.1f}% "
            f"| {100 * low:+.1f}..{100 * high:+.1f}% | {ci} |"
        )
    return "\n".join(lines)


def import_table(rows):
    """Markdown table of `benchmarks.import_cost.run` rows."""
    lines = [
        "| measurement | median wall s | median CPU s | repeats | target |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        verdict = "met" if r["meets_target"] else "MISSED"
        lines.append(
            f"| {r['name']} | {r['median_wall_s']:.4f} "
            f"| {r['median_cpu_s']:.4f} | {r['repeats']} "
            f"| ≤ {r['target_s']:g} s: {verdict} |"
        )
    return "\n".join(lines)


def _load_monitoring():
    try:
        return importlib.import_module("benchmarks.monitoring")
    except ImportError as error:
        if getattr(error, "name", None) == "benchmarks.monitoring":
            return None
        raise


def _parse_only(text):
    sections = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise argparse.ArgumentTypeError(
            f"Invalid `--only` argument: {text!r}. Expected a comma-separated "
            f"subset of {', '.join(SECTIONS)}."
        )
    return sections


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"Argument `--repeats` must be a positive int. Received: {text}"
        )
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="keras_winit benchmarks: initializer throughput and "
        "memory, monitoring overhead, import cost.",
    )
    parser.add_argument(
        "--only",
        type=_parse_only,
        default=list(SECTIONS),
        help="comma-separated sections to run (default: all): "
        + ",".join(SECTIONS),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes and 1-2 repeats: a smoke test, not a measurement",
    )
    parser.add_argument(
        "--repeats",
        type=_positive_int,
        default=None,
        help="timed repeats per measurement (default 7, quick 2)",
    )
    parser.add_argument(
        "--memory",
        choices=("subprocess", "inprocess", "off"),
        default=None,
        help="peak-memory method (default subprocess, quick off)",
    )
    parser.add_argument("--json", default=None, help="write results here")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from benchmarks import import_cost
    from benchmarks import initializers

    repeats = args.repeats or (2 if args.quick else 7)
    results = {"machine": machine(), "quick": args.quick, "sections": {}}
    started = time.perf_counter()

    # In quick mode the import subprocess (mostly `import keras`) runs in
    # the background, beside the other sections.
    import_result = {}
    import_thread = None
    if "import" in args.only:

        def measure_import():
            import_result["rows"] = import_cost.run(
                repeats=1 if args.quick else max(5, repeats)
            )

        import_thread = threading.Thread(target=measure_import)
        if args.quick:
            import_thread.start()
        else:
            import_thread.run()

    info = results["machine"]
    print(
        f"Machine: {info['cpu']}, {info['nproc']} CPUs, load average "
        f"{info.get('loadavg')}; Python {info['python']}, Keras "
        f"{info['keras']} ({info['backend']}"
        + (f" {info['tensorflow']}" if "tensorflow" in info else "")
        + f"), NumPy {info['numpy']}."
    )
    print(f"Command: python -m benchmarks {' '.join(argv or sys.argv[1:])}")

    if "initializers" in args.only:
        rows = initializers.run(
            shapes=(
                initializers.QUICK_SHAPES if args.quick else initializers.SHAPES
            ),
            repeats=repeats,
            memory=args.memory or ("off" if args.quick else "subprocess"),
        )
        results["sections"]["initializers"] = rows
        print("\n## Initializers\n")
        print(initializers_table(rows))

    if "monitoring" in args.only:
        monitoring = _load_monitoring()
        print("\n## Monitoring overhead\n")
        if monitoring is None:
            print("(benchmarks/monitoring.py is not there: skipped)")
        else:
            rows = monitoring.run(
                steps=10 if args.quick else 100,
                repeats=1 if args.quick else max(15, repeats),
            )
            results["sections"]["monitoring"] = rows
            print(monitoring_table(rows))

    if import_thread is not None:
        if import_thread.is_alive() or args.quick:
            import_thread.join()
        results["sections"]["import"] = import_result["rows"]
        print("\n## Import cost\n")
        print(import_table(import_result["rows"]))

    results["total_s"] = time.perf_counter() - started
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
