"""Benchmarks for keras_winit, run with `python -m benchmarks`.

Sections (pick with `--only`):

- `initializers`: throughput and peak memory of keras_winit's initializers
  against Keras' built-in class of the same name and distribution (and
  `torch.nn.init` / NumPy when installed), see `benchmarks.initializers`.
- `monitoring`: CPU overhead per training step of
  `keras_winit.callbacks.GradientVarianceLogger`, see
  `benchmarks.monitoring`.
- `import`: the time `import keras_winit` adds after `import keras`, see
  `benchmarks.import_cost`.

Every comparison is made within one run of one process (interleaved
repeats, medians), so the ratios are meaningful on a shared machine even
when the absolute times are not. `--quick` uses tiny sizes: a smoke test,
not a measurement.
"""
