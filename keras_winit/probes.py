"""Compatibility module: `ActivationHistogramLogger` lives in
`keras_winit.monitoring`."""

from keras_winit.monitoring.probes import STEP_UNITS
from keras_winit.monitoring.probes import ActivationHistogramLogger

__all__ = ["STEP_UNITS", "ActivationHistogramLogger"]
