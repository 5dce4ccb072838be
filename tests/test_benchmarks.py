"""Smoke test of `python -m benchmarks --quick` (run in-process).

Checks the tables' rows and columns and the JSON, not the speeds.
"""

import json
import sys
import threading
import types

import pytest

from benchmarks import __main__ as runner
from benchmarks import import_cost
from benchmarks import initializers

MONITORING_ROWS = [
    {
        "name": "plain fit",
        "ms_per_step": 2.0,
        "overhead": 0.0,
        "cpu_ms_per_step": 2.5,
        "cpu_overhead": 0.0,
    },
    {
        "name": "GradientVarianceLogger(update_freq=1)",
        "ms_per_step": 3.0,
        "overhead": 0.5,
        "cpu_ms_per_step": 3.5,
        "cpu_overhead": 0.4,
    },
]


@pytest.fixture
def fake_monitoring(monkeypatch):
    # The real monitoring benchmark trains six models (minutes); its own
    # module is tested elsewhere. Here only the runner's hook is checked.
    calls = []
    module = types.ModuleType("benchmarks.monitoring")

    def run(steps, repeats):
        calls.append((steps, repeats))
        return [dict(row) for row in MONITORING_ROWS]

    module.run = run
    monkeypatch.setitem(sys.modules, "benchmarks.monitoring", module)
    return calls


def test_quick_run_prints_every_table(tmp_path, capsys, fake_monitoring):
    path = tmp_path / "out.json"
    # The import section is left out: its subprocess spends its time in
    # `import keras` (seconds); test_import_cost_subprocess covers it.
    code = runner.main(
        [
            "--quick",
            "--only",
            "initializers,monitoring",
            "--memory",
            "inprocess",
            "--json",
            str(path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("Machine: ")
    assert "## Initializers" in out and "## Monitoring overhead" in out
    assert "## Import" not in out
    header = next(line for line in out.splitlines() if "| shape |" in line)
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns == [
        "shape",
        "dtype",
        "distribution",
        "initializer",
        "median s",
        "M values/s",
        "CPU s",
        "speedup vs Keras (wall)",
        "speedup (CPU)",
        "peak mem / output",
        "target",
    ]
    for name in (
        "keras_winit.HeNormal",
        "keras.initializers.HeNormal",
        "keras_winit.HeUniform",
        "keras.initializers.HeUniform",
        'keras_winit.VarianceScaling(distribution="untruncated_normal")',
        "np.ones (memory method check)",
        "GradientVarianceLogger(update_freq=1)",
    ):
        assert f"| {name} |" in out
    assert fake_monitoring == [(10, 1)]

    results = json.loads(path.read_text())
    assert results["quick"] is True
    assert results["machine"]["nproc"] >= 1
    rows = results["sections"]["initializers"]
    timed = [r for r in rows if r["family"] != "calibration"]
    groups = {(tuple(r["shape"]), r["dtype"], r["family"]) for r in timed}
    assert groups == {
        (shape, dtype, family)
        for shape in initializers.QUICK_SHAPES
        for dtype in initializers.DTYPES
        for family in initializers.FAMILIES
    }
    for r in timed:
        assert r["median_wall_s"] > 0 and r["values_per_s"] > 0
        assert len(r["samples_wall_s"]) == r["repeats"] or (
            r["name"] == "scipy.stats.truncnorm.rvs"
        )
        if r["provider"] == "keras":
            assert r["speedup_wall"] == 1.0
        if r["provider"] in ("keras", "keras_winit"):
            assert r["peak_memory_ratio"] is not None
    calibration = [r for r in rows if r["family"] == "calibration"]
    assert len(calibration) == len(initializers.QUICK_SHAPES) * 2
    assert results["sections"]["monitoring"][1]["overhead"] == 0.5


def test_missing_monitoring_module_is_skipped(monkeypatch, capsys):
    monkeypatch.setattr(runner, "_load_monitoring", lambda: None)
    assert runner.main(["--quick", "--only", "monitoring"]) == 0
    out = capsys.readouterr().out
    assert "benchmarks/monitoring.py is not there: skipped" in out
    assert "## Initializers" not in out and "## Import" not in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--only", "speed"],
        ["--only", ""],
        ["--repeats", "0"],
        ["--memory", "maybe"],
    ],
)
def test_rejects_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit):
        runner.main(argv)
    assert "argument" in capsys.readouterr().err


def test_run_rejects_bad_memory_method():
    with pytest.raises(ValueError, match="Invalid `memory` argument"):
        initializers.run(shapes=[(2, 2)], memory="rss")


def test_import_cost_subprocess():
    # A light module stands in for keras_winit: the mechanism is the same.
    (row,) = import_cost.run(repeats=2, base="json", module="benchmarks")
    assert row["name"] == "import benchmarks (after import json)"
    assert row["repeats"] == 2 and len(row["samples_wall_s"]) == 2
    assert 0 < row["median_wall_s"] < 5
    assert row["meets_target"] == (row["median_wall_s"] <= 0.1)
    table = runner.import_table([row])
    assert table.splitlines()[0] == (
        "| measurement | median wall s | median CPU s | repeats | target |"
    )
    assert "| import benchmarks (after import json) |" in table


def test_import_cost_rejects_zero_repeats():
    with pytest.raises(ValueError, match="repeats=0"):
        import_cost.run(repeats=0)


def test_monitoring_configurations_take_turns():
    from benchmarks import monitoring

    turns = monitoring._Turns(3)
    order = []
    rounds = {0: 3, 1: 1, 2: 3}

    def work(i):
        try:
            turns.wait(i)
            for k in range(rounds[i]):
                order.append(i)
                if k + 1 < rounds[i]:
                    turns.pass_on(i)
                    turns.wait(i)
        finally:
            turns.leave(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    # Round 1 in index order; 1 then leaves; rounds 2 and 3 give 0 and 2
    # one turn each, in a random order.
    assert order[:3] == [0, 1, 2]
    assert sorted(order[3:5]) == sorted(order[5:]) == [0, 2]


def test_monitoring_overhead_is_paired_by_round():
    from benchmarks import monitoring

    # Round 2 ran under load: both configurations are slow in it.
    plain = [(1.0, 1.0), (1.0, 2.0), (4.0, 4.0)]
    logged = [(1.1, 1.0), (1.1, 2.4), (4.4, 4.0)]
    overhead = monitoring._paired_overhead(logged, plain, 0)
    assert overhead == pytest.approx(0.1)
    assert monitoring._paired_overhead(logged, plain, 1) == 0.0
    low, high = monitoring._paired_quartiles(logged, plain, 1)
    assert (low, high) == pytest.approx((0.0, 0.1))
    assert monitoring._paired_quartiles(logged[:1], plain[:1], 0) == (
        pytest.approx(0.1),
        pytest.approx(0.1),
    )


def test_monitoring_median_interval():
    # Order statistics of the binomial(n, 1/2): for 100 values the 40th and
    # the 61st; for 6 the extremes (P(B < 1) = 1/64 <= 2.5%); none for 5.
    from benchmarks import monitoring

    values = list(range(100, 0, -1))  # 1..100, unsorted
    assert monitoring._median_interval(values) == (40, 61)
    assert monitoring._median_interval([3, 1, 2, 6, 5, 4]) == (1, 6)
    assert monitoring._median_interval([1, 2, 3, 4, 5]) is None
    plain = [(1.0, 1.0)] * 6
    logged = [(1.0, 1.0 + k / 100) for k in range(6)]
    low, high = monitoring._paired_interval(logged, plain, 1)
    assert (low, high) == pytest.approx((0.0, 0.05))
    assert monitoring._paired_interval(logged[:5], plain[:5], 1) is None
    rows = [dict(r, backend="jax") for r in MONITORING_ROWS]
    row = dict(rows[1], cpu_overhead_interval=(low, high))
    assert monitoring._table([row]).splitlines()[-1].endswith("+0.0..+5.0%")
    assert monitoring._table(rows).splitlines()[-1].endswith("-")


def test_monitoring_models_and_variables_column():
    from benchmarks import monitoring

    with pytest.raises(ValueError, match="Invalid `models` argument"):
        monitoring.run(models=("resnet",))
    assert monitoring.MODELS == ("mlp", "mobilenetv2", "mlp500")
    rows = [
        dict(row, model=model, variables=count, backend="tensorflow")
        for model, count in (("mlp", 12), ("mobilenetv2", 158))
        for row in MONITORING_ROWS
    ]
    table = monitoring._table(rows).splitlines()
    assert table[1].split()[:3] == ["model", "vars", "configuration"]
    assert table[5].split()[:2] == ["mobilenetv2", "158"]
