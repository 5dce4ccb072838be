"""The logger's check of the initialization: `diagnose` on `fit`'s first batch.

Gradients alone cannot see every initialization that will not train: a
residual stream that grows ~1.5x per block (loss inf after a few steps) or
a deep sigmoid net whose units saturate show healthy kernel gradients on
the first step. `diagnose` sees them in the activations. So, on the first
call of its train function, `GradientVarianceLogger` takes the first batch
of `fit` and judges the model with `diagnose`'s rule
(`keras_winit.health.judge`), before that step, between steps, outside the
train function.

Taking the batch, per backend (Keras 3 trainers):

- PyTorch: the train function receives the batch itself (a list of one
  batch).
- JAX: it receives `(state, iterator)`; the first batch is taken with
  `next(iterator)` and put back in front of it. During `fit` Keras
  detaches the model's variables from their values (`_purge_model_variables`)
  and passes them in `state`: they are attached for the probe and
  detached again after it.
- TensorFlow: it receives a `tf.data.Iterator`, which cannot be peeked.
  The call's batches (`steps_per_execution` of them) are taken eagerly
  and handed on as an iterator of a `tf.data.Dataset.from_generator` with
  the same `element_spec`, so the traced train function is reused (no
  retrace). Under a `tf.distribute` strategy (a distributed iterator), the
  batch is not taken: the logger judges the gradients only.

The probe does not change training: the model's non-trainable variables
(BatchNorm moving statistics, seed generators) and metric variables are
restored after it, it runs with `training=False` (no dropout draws) and
never reads a buffer the train step donated (it runs before the step).
"""

import itertools
from collections.abc import Sequence
from typing import Any

import keras

from keras_winit import _compat
from keras_winit import diagnostics


def take(model: keras.Model, args: tuple) -> tuple[Any, tuple]:
    """The first batch of a train-function call, and the call's arguments.

    Args:
        model: The model being fitted.
        args: The positional arguments `fit` passed to the train function.

    Returns:
        `(data, args)`: `data` is the batch as `fit` gives it to
        `train_step` (`x`, `(x, y)` or `(x, y, sample_weight)`), or `None`
        when it cannot be taken; `args` are the arguments to call the
        train function with (the batch put back).
    """
    backend = keras.backend.backend()
    if backend == "torch":
        if len(args) == 1 and isinstance(args[0], (list, tuple)) and args[0]:
            return args[0][0], args
        return None, args
    if backend == "jax":
        if len(args) != 2:
            return None, args
        state, iterator = args
        try:
            data = next(iterator)
        except StopIteration:
            return None, (state, iter(()))
        return data, (state, itertools.chain([data], iterator))
    return _take_tensorflow(model, args)


def _take_tensorflow(model, args):
    import tensorflow as tf

    if len(args) != 1:
        return None, args
    iterator = args[0]
    if not isinstance(iterator, tf.data.Iterator) or isinstance(
        iterator, tf.distribute.DistributedIterator
    ):
        return None, args
    strategy = getattr(model, "distribute_strategy", None)
    if getattr(strategy, "num_replicas_in_sync", 1) != 1:
        return None, args
    spec = iterator.element_spec
    batches = []
    for _ in range(max(1, int(getattr(model, "steps_per_execution", 1)))):
        optional = iterator.get_next_as_optional()
        if not optional.has_value():
            break
        batches.append(optional.get_value())
    if not batches:
        # The data is exhausted: Keras' function raises as without us.
        return None, args
    try:
        replay = iter(
            tf.data.Dataset.from_generator(
                lambda: iter(batches), output_signature=spec
            )
        )
    except (TypeError, ValueError):
        # Keras' train function runs a list of batches step by step (one
        # more trace of the step).
        replay = batches
    return batches[0], (replay,)


class attached:
    """Gives the model's variables their values during a JAX `fit`.

    Keras' JAX trainer detaches them (`_value = None`) and passes them in
    `state`; inside the context they hold `state`'s arrays (read, never
    donated: the step has not run), after it exactly what they held
    before. Elsewhere, it saves the non-trainable and metric variables
    and restores them after the probe.
    """

    def __init__(self, model, state=None):
        self.model = model
        self.state = state
        self.saved = []

    def _groups(self):
        model = self.model
        return [
            list(model.trainable_variables),
            list(model.non_trainable_variables),
            list(model.metrics_variables),
        ]

    def __enter__(self):
        trainable, non_trainable, metrics = self._groups()
        if keras.backend.backend() == "jax":
            state = self.state
            # Keras' JAX `fit`: (trainable, non-trainable, optimizer,
            # metrics) values, in the order of the model's lists.
            if state is not None and len(state) == 4:
                values = [state[0], state[1], state[3]]
            else:
                values = [[], [], []]
            for variables, arrays in zip(
                (trainable, non_trainable, metrics), values, strict=True
            ):
                for i, v in enumerate(variables):
                    stored = _compat.variable_storage(v)
                    self.saved.append((v, stored))
                    if stored is None and i < len(arrays):
                        _compat.set_variable_storage(v, arrays[i])
            return self
        for v in non_trainable + metrics:
            self.saved.append((v, keras.ops.convert_to_numpy(v.value)))
        return self

    def __exit__(self, *exc):
        if keras.backend.backend() == "jax":
            for v, value in self.saved:
                _compat.set_variable_storage(v, value)
        else:
            for v, value in self.saved:
                v.assign(value)
        self.saved = []
        return False


def check(
    model: keras.Model, data: Any, state: Any = None
) -> list[diagnostics.Flag]:
    """`diagnose`'s flags on one batch of `fit`, the model unchanged.

    Args:
        model: The compiled model, between steps.
        data: The batch (`x`, `(x, y)` or `(x, y, sample_weight)`); with
            `y`, the backward pass uses the model's compiled loss; sample
            weights are ignored.
        state: On JAX, the `state` tuple `fit` passes to the train
            function.

    Returns:
        The list of `keras_winit.diagnostics.Flag`s.
    """
    x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
    with attached(model, state):
        return diagnostics.diagnose(model, x, y).flags


def summary(flags: Sequence[diagnostics.Flag], limit: int = 4) -> str:
    """One sentence per kind of flag: where first, how many, the advice.

    Examples:

    >>> from keras_winit.diagnostics import Flag
    >>> flags = [Flag(f"mlp/dense_{i}", "vanishing_activations", 0.05, 0.1)
    ...          for i in (3, 4)]
    >>> summary(flags)[:66]
    'vanishing activations in 2 layers, first mlp/dense_3 (0.05 < 0.1):'
    """
    kinds: list[str] = []
    by_kind: dict[str, list[diagnostics.Flag]] = {}
    for f in flags:
        if f.kind not in by_kind:
            kinds.append(f.kind)
            by_kind[f.kind] = []
        by_kind[f.kind].append(f)
    parts = []
    for kind in kinds[:limit]:
        found = by_kind[kind]
        first = found[0]
        where = (
            f"in {len(found)} layers, first {first.layer}"
            if len(found) > 1
            else f"at {first.layer}"
        )
        sentence = f"{kind.replace('_', ' ')} {where}"
        if not kind.startswith(("zero", "nonfinite")):
            side = "<" if kind.startswith("vanishing") else ">"
            sentence += f" ({first.value:.3g} {side} {first.threshold:g})"
        parts.append(f"{sentence}: {first.advice}")
    if len(kinds) > limit:
        parts.append(f"and {len(kinds) - limit} more kind(s) of flag.")
    return " ".join(parts)
