"""Data, model and per-layer statistics of the demo and the tutorials.

`keras-winit demo` and the tutorials (`tutorials/*.py`) run the same kind of
experiment: a deep multilayer perceptron on scikit-learn's digits data,
whose per-layer signals and back-propagated gradients are measured at
initialization, before it is trained. This module holds those three
pieces, once, on every backend with gradients (TensorFlow, JAX, PyTorch):

- `load_digits_split`: the 1797 8×8 digits (shipped inside scikit-learn,
  nothing is downloaded), split and standardized;
- `build_mlp`: a `Sequential` of `Dense` layers with a softmax output;
- `layer_statistics`: one forward and backward pass, per `Dense` layer,
  measured by `keras_winit`'s own layer-by-layer probe (the pass of
  `keras_winit.diagnose`, `keras_winit.lsuv` and
  `keras_winit.ActivationHistogramLogger`).

Imports go one way: this module builds on the probe; `keras_winit.demo`
(the command) and `tutorials/_common.py` build on this module.

Reference:
    - [Glorot & Bengio, 2010](
      https://proceedings.mlr.press/v9/glorot10a.html): Understanding the
      difficulty of training deep feedforward neural networks (figures 6
      and 7: per-layer activations and back-propagated gradients).
    - [He et al., 2015](https://arxiv.org/abs/1502.01852): Delving Deep into
      Rectifiers.
"""

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from keras_winit import _signal

_SKLEARN_MISSING = (
    "The demo needs scikit-learn for its data (sklearn.datasets.load_digits, "
    "shipped inside the scikit-learn package). Install it with: "
    "pip install 'keras-winit[tutorials]'"
)


def load_digits_split(
    seed: int = 0, validation_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Loads scikit-learn's digits, split and standardized.

    The 1797 8×8 images (64 features, 10 classes) ship with scikit-learn,
    so nothing is downloaded. The split is stratified and fixed by `seed`;
    every feature is standardized with the training set's mean and std
    (constant pixels keep std 1).

    Args:
        seed: Integer seed of the split.
        validation_fraction: Float in `(0, 1)`, the fraction of every class
            held out for validation. Defaults to `0.2`.

    Returns:
        `(x_train, y_train, x_val, y_val)`: float32 features of shape
        `(n, 64)` and int32 labels of shape `(n,)`.

    Raises:
        ImportError: when scikit-learn is not installed.

    Example:

    >>> x, y, x_val, y_val = keras_winit.experiments.load_digits_split(seed=0)
    >>> x.shape, x_val.shape
    ((1438, 64), (359, 64))
    """
    if not isinstance(validation_fraction, float) or not (
        0.0 < validation_fraction < 1.0
    ):
        raise ValueError(
            "Argument `validation_fraction` must be a float in (0, 1). "
            f"Received: validation_fraction={validation_fraction!r}"
        )
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(_SKLEARN_MISSING) from e
    digits = load_digits()
    x = digits.data.astype("float32")
    y = digits.target.astype("int32")
    rng = np.random.default_rng(seed)
    val = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        val[members[: int(round(validation_fraction * len(members)))]] = True
    train = rng.permutation(np.flatnonzero(~val))
    val = rng.permutation(np.flatnonzero(val))
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std[std == 0] = 1.0
    x = (x - mean) / std
    return x[train], y[train], x[val], y[val]


def build_mlp(
    depth: int,
    width: int,
    kernel_initializer: Any,
    activation: str | Callable[..., Any] = "relu",
    bias_initializer: Any = "zeros",
    input_dim: int = 64,
    num_classes: int = 10,
    name: str | None = None,
) -> keras.Sequential:
    """Builds a `depth`-layer MLP of `Dense(width, activation)` + softmax.

    Args:
        depth: Positive integer, the number of hidden layers.
        width: Positive integer, the units of every hidden layer.
        kernel_initializer: Initializer of every kernel (hidden and output
            layers), anything `keras.layers.Dense` accepts. One instance is
            shared by all layers: use an initializer that draws new values
            per call (a `keras_winit` initializer, or a Keras one with
            `seed=None` or a `keras.random.SeedGenerator`).
        activation: Activation of the hidden layers. Defaults to `"relu"`.
        bias_initializer: Initializer of the biases, or a plain function
            `fan_in -> initializer` for a per-layer initializer (PyTorch's
            default draws biases from `U(±1/sqrt(fan_in))`). Defaults to
            `"zeros"`.
        input_dim: Number of input features. Defaults to `64`.
        num_classes: Number of softmax outputs. Defaults to `10`.
        name: Optional model name.

    Returns:
        A built `keras.Sequential`; its `Dense` layers are `model.layers`.

    Example:

    >>> model = keras_winit.experiments.build_mlp(
    ...     3, 16, keras_winit.HeNormal(seed=0))
    >>> [layer.units for layer in model.layers]
    [16, 16, 16, 10]
    """
    for arg, value in (("depth", depth), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"Argument `{arg}` must be a positive integer. "
                f"Received: {arg}={value!r}"
            )
    per_layer_bias = callable(bias_initializer) and not isinstance(
        bias_initializer, keras.initializers.Initializer
    )
    layers = [keras.Input((input_dim,))]
    fan_in = input_dim
    for units, act in [(width, activation)] * depth + [
        (num_classes, "softmax")
    ]:
        bias = bias_initializer(fan_in) if per_layer_bias else bias_initializer
        layers.append(
            keras.layers.Dense(
                units,
                activation=act,
                kernel_initializer=kernel_initializer,
                bias_initializer=bias,
            )
        )
        fan_in = units
    return keras.Sequential(layers, name=name)


def layer_statistics(model: keras.Model, x: Any, y: Any) -> dict[str, Any]:
    """Per-layer forward and backward statistics of a Dense-only model.

    Runs one forward pass of `x` through the `Dense` layers of `model`
    (pre-activation `s = h W + b`, activation `h = f(s)`), the mean sparse
    categorical cross-entropy against `y` (the last layer must be softmax)
    and its gradients. The pass is `keras_winit`'s layer-by-layer probe:
    a `tf.GradientTape` on TensorFlow, `torch.autograd.grad` on PyTorch,
    `jax.value_and_grad` on JAX; the model's weights are not changed.

    Args:
        model: A built `keras.Sequential` whose layers are
            `keras.layers.Dense`, the last one with a softmax activation
            (what `build_mlp` returns).
        x: Float array `(n, features)`.
        y: Integer labels `(n,)`.

    Returns:
        A dict of NumPy arrays, one entry per Dense layer (index 0 is the
        first layer): `"activations"` (list of `h`), `"preactivations"`
        (list of `s`), `"preactivation_grads"` (list of `dC/ds`, the
        back-propagated gradients of Glorot & Bengio's figure 7),
        `"activation_std"`, `"preactivation_grad_std"`,
        `"kernel_grad_variance"` (variance of `dC/dW`), and the float
        `"loss"`.

    Raises:
        ValueError: when `model` is not a built `Sequential` of `Dense`
            layers, or `x` and `y` do not have the same number of rows.
        RuntimeError: on a backend without gradients (NumPy).

    Example:

    >>> model = keras_winit.experiments.build_mlp(
    ...     2, 8, keras_winit.HeNormal(seed=0))
    >>> stats = keras_winit.experiments.layer_statistics(
    ...     model, np.ones((4, 64), "float32"), np.zeros(4, "int32"))
    >>> stats["activation_std"].shape
    (3,)
    >>> round(stats["loss"], 4) > 0
    True
    """
    if not isinstance(model, keras.Sequential):
        raise ValueError(
            "Argument `model` must be a `keras.Sequential` of Dense layers. "
            f"Received: model={model!r}"
        )
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Dense):
            raise ValueError(
                "Argument `model` must contain only Dense layers. "
                f"Received: a layer {layer.name!r} of type "
                f"{type(layer).__name__}."
            )
    last = model.layers[-1] if model.layers else None
    if getattr(getattr(last, "activation", None), "__name__", None) != (
        "softmax"
    ):
        raise ValueError(
            "Argument `model` must end with a softmax Dense layer. "
            f"Received: last layer {getattr(last, 'name', None)!r} with "
            f"activation {getattr(last, 'activation', None)!r}."
        )
    _signal.check_backend("layer_statistics")
    _signal.check_model(model, "layer_statistics")
    x_t, n = _signal.to_tensors(np.asarray(x, dtype="float32"))
    labels = np.asarray(y, dtype="int32")
    if labels.shape != (n,):
        raise ValueError(
            "Argument `y` must hold one integer label per row of `x`. "
            f"Received: y.shape={labels.shape}, x.shape={tuple(x_t.shape)}"
        )
    records, _ = _signal.probe(
        model,
        x_t,
        y=keras.ops.convert_to_tensor(labels),
        loss="sparse_categorical_crossentropy",
    )
    if len(records) != len(model.layers):
        raise ValueError(
            "Argument `model` must call each Dense layer once. Received: "
            f"{len(records)} layer calls for {len(model.layers)} layers."
        )
    acts = [r.out for r in records]
    pre = [r.signal for r in records]
    pre_grads = [_zeros_if_none(r.grad, r.signal) for r in records]
    kernel_grads = [
        _zeros_if_none(r.kernel_grad, r.layer.kernel) for r in records
    ]
    # The cross-entropy from the logits `s`, exactly (float64 log-softmax,
    # no clipping of tiny probabilities: Keras clips them at 1e-7 on JAX
    # and PyTorch, and uses the logits on TensorFlow).
    logits = pre[-1]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return {
        "activations": acts,
        "preactivations": pre,
        "preactivation_grads": pre_grads,
        "activation_std": np.array([a.std() for a in acts]),
        "preactivation_grad_std": np.array([g.std() for g in pre_grads]),
        "kernel_grad_variance": np.array([g.var() for g in kernel_grads]),
        "loss": float(-log_probs[np.arange(n), labels].mean()),
    }


def _zeros_if_none(grad, like):
    """A gradient the loss does not depend on is zero (the probe: `None`)."""
    if grad is not None:
        return grad
    return np.zeros(tuple(like.shape), dtype=np.float64)
