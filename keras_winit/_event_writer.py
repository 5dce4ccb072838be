"""Compatibility module: the event writer lives in
`keras_winit.monitoring.writer`."""

from keras_winit.monitoring.writer import DEFAULT_BUCKETS
from keras_winit.monitoring.writer import EventWriter as Writer
from keras_winit.monitoring.writer import histogram_buckets

__all__ = ["DEFAULT_BUCKETS", "Writer", "histogram_buckets"]
