"""Compatibility module: the callbacks live in `keras_winit.monitoring`."""

from keras_winit.monitoring.callback import GradientVarianceLogger
from keras_winit.monitoring.callback import GradientVarianceWarning
from keras_winit.monitoring.probes import ActivationHistogramLogger

__all__ = [
    "ActivationHistogramLogger",
    "GradientVarianceLogger",
    "GradientVarianceWarning",
]
