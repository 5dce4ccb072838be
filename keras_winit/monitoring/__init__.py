"""Training monitoring: gradient and weight statistics in TensorBoard."""
