"""Monitoring of training: gradient statistics and activation histograms.

- `GradientVarianceLogger` (`callback.py`): per-variable statistics of the
  applied gradients, computed in the training step by the module of the
  backend (`tensorflow.py`, `jax.py`, `torch.py`) behind one records
  interface (`records.py`).
- `ActivationHistogramLogger` (`probes.py`): per-layer histograms of
  activations and back-propagated gradients on a probe set.
- `EventWriter` (`writer.py`): the one TensorBoard event writer, used by
  both, with `histogram_buckets`, TensorBoard's histogram rule.
"""

from keras_winit.monitoring.callback import GradientVarianceLogger
from keras_winit.monitoring.callback import GradientVarianceWarning
from keras_winit.monitoring.callback import NonFiniteGradientWarning
from keras_winit.monitoring.probes import ActivationHistogramLogger
from keras_winit.monitoring.records import VariableRecord
from keras_winit.monitoring.writer import EventWriter
from keras_winit.monitoring.writer import EventWriterWarning
from keras_winit.monitoring.writer import histogram_buckets

__all__ = [
    "ActivationHistogramLogger",
    "EventWriter",
    "EventWriterWarning",
    "GradientVarianceLogger",
    "GradientVarianceWarning",
    "NonFiniteGradientWarning",
    "VariableRecord",
    "histogram_buckets",
]
