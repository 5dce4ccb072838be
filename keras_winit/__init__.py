"""keras_winit: weight initialization for Keras 3."""

__version__ = "0.1.0"
