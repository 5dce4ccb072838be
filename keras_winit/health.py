"""Rules that mean "this will not train", shared by `diagnose` and the logger.

Each rule looks at what makes training fail, not at raw scales that do not
matter:

- A kernel followed by a normalization layer is scale-invariant
  (`BN(c·Wx) = BN(Wx)`): its raw pre-norm scale and its raw gradient are
  never judged; the signal after the norm and the effective step
  `‖g‖/‖w‖` are.
- A residual stream is judged by its growth per block, compounded along
  the stream until a normalization resets it; zero-initialized branch
  ends (Fixup, SkipInit, zero-γ) are healthy.
- An all-zero init is flagged: no ratio is taken against a zero reference.
- Biases whose gradient is exactly zero by construction (the key bias of
  attention: softmax ignores a constant per query) are ignored.

Every finding comes with a sentence a user can act on.

References:
    - Ioffe & Szegedy, 2015, arXiv:1502.03167 (BatchNorm).
    - Zhang, Dauphin & Ma, 2019, "Fixup Initialization",
      arXiv:1901.09321.
    - He et al., 2015, arXiv:1502.01852.
"""

import dataclasses
import math
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

#: Kinds of per-variable records taken by `gradient_warnings`.
VARIABLE_KINDS = (
    "kernel",
    "bias",
    "norm_scale",
    "norm_bias",
    "embedding",
    "other",
)

#: What to do about each kind of finding.
ADVICE = {
    "nonfinite_input": (
        "the batch holds NaN or inf values: clean the data (or its "
        "preprocessing) before training."
    ),
    "nonfinite": (
        "the signal becomes NaN or inf here: the init (or the inputs) are "
        "far too large; use the recommended initializer."
    ),
    "zero_signal": (
        "this kernel layer outputs the same value for every example (an "
        "all-zero init, or dead units before it): nothing after it can "
        "learn from the input. Use a random initializer (the recommended "
        "one)."
    ),
    "zero_gradients": (
        "no gradient reaches the layers before this one (all-zero weights "
        "after it, or dead units): they will never change. Re-initialize "
        "with a random, variance-preserving initializer."
    ),
    "vanishing_activations": (
        "the signal shrinks through the layers before this one: deeper "
        "layers see almost nothing. Use the recommended initializer (e.g. "
        "He for ReLU) or add normalization."
    ),
    "exploding_activations": (
        "the signal grows through the layers before this one: use the "
        "recommended initializer or add normalization."
    ),
    "vanishing_gradients": (
        "the gradient shrinks on its way back to this layer: early layers "
        "will barely learn. Use the recommended initializer, a "
        "non-saturating activation or normalization."
    ),
    "exploding_gradients": (
        "the gradient grows on its way back to this layer: lower the init "
        "scale (recommended initializer) or add normalization."
    ),
    "exploding_stream": (
        "the residual stream has grown this much since the last "
        "normalization: scale the branch ends down (e.g. by 1/sqrt(2N) "
        "for N blocks, or zero-init them, Fixup/SkipInit) or normalize "
        "the stream."
    ),
    "saturated": (
        "most values sit at the asymptotes of the activation, where its "
        "gradient vanishes: lower the init scale of the layer before."
    ),
    "dead": (
        "most units are zero for the whole batch (dead ReLUs): lower the "
        "bias/initial scale or use a leaky activation."
    ),
}


@dataclasses.dataclass
class Finding:
    """One reason a model will not train, at one place.

    Attributes:
        where: Path of the layer (or `"input"`).
        kind: A key of `ADVICE`.
        value: The measured value.
        threshold: The threshold it crossed.
    """

    where: str
    kind: str
    value: float
    threshold: float

    @property
    def advice(self) -> str:
        return ADVICE[self.kind]


def judge(
    rows: Sequence[Any],
    residuals: Sequence[Any],
    thresholds: Mapping[str, float],
    input_nonfinite: int = 0,
) -> list[tuple[Any, Finding]]:
    """Findings of `diagnose` from its per-call rows, in forward order.

    Args:
        rows: Objects with the `LayerStats` attributes of
            `keras_winit.diagnostics` (`name`, `has_kernel`, `pre_std`,
            `grad_std`, `saturated`, `dead`, `norm_after`, `branch`,
            `branch_end`, `nonfinite`, `kind`).
        residuals: `keras_winit.walker.Residual`s of the pass, each with
            `normalized` (whether the sum is normalized right after).
        thresholds: Dict with `vanishing`, `exploding`, `saturation`,
            `dead`, `stream`.
        input_nonfinite: Number of non-finite values in the batch.

    Returns:
        A list of `(row or None, Finding)`, in forward order.
    """
    found: list[tuple[Any, Finding]] = []
    if input_nonfinite:
        found.append(
            (None, Finding("input", "nonfinite_input", input_nonfinite, 0))
        )
    low, high = thresholds["vanishing"], thresholds["exploding"]
    for s in rows:
        if s.nonfinite:
            found.append((s, Finding(s.name, "nonfinite", s.nonfinite, 0)))
            return found
    kernels = [s for s in rows if s.has_kernel]
    # Zero signal: a kernel (not a zero-initialized branch end) whose
    # output is identically zero; nothing to take ratios against.
    for s in kernels:
        if s.pre_std == 0 and not s.branch_end:
            found.append((s, Finding(s.name, "zero_signal", 0.0, 0.0)))
            break
    # Plain chains: kernels neither normalized, nor in a residual branch,
    # nor a shortcut, judged against the first (activations) and last
    # (gradients) kernel of their chain; a normalization layer or a
    # residual add ends a chain (it resets the scale). The model's last
    # kernel gets its gradient from the loss, not by propagation.
    plain_ids, first_of, grad_ref_of, hidden_ids = _chains(rows, kernels)
    # Gradient reaching the input side: the first row with a gradient.
    first_grad = next((s for s in rows if s.grad_std is not None), None)
    if (
        first_grad is not None
        and first_grad.grad_std == 0
        and any(s.grad_std for s in rows)
    ):
        last_zero = max(
            (i for i, s in enumerate(rows) if s.grad_std == 0), default=0
        )
        where = rows[min(last_zero + 1, len(rows) - 1)]
        found.append((where, Finding(where.name, "zero_gradients", 0.0, 0.0)))
    for s in rows:
        here = []
        ref = first_of.get(id(s))
        if ref and id(s) in plain_ids:
            ratio = s.pre_std / ref
            if ratio < low:
                here.append(("vanishing_activations", ratio, low))
            elif ratio > high:
                here.append(("exploding_activations", ratio, high))
        grad_ref = grad_ref_of.get(id(s))
        if id(s) in hidden_ids and grad_ref and s.grad_std:
            ratio = s.grad_std / grad_ref
            if ratio < low:
                here.append(("vanishing_gradients", ratio, low))
            elif ratio > high:
                here.append(("exploding_gradients", ratio, high))
        if s.saturated is not None and s.saturated > thresholds["saturation"]:
            here.append(("saturated", s.saturated, thresholds["saturation"]))
        if s.dead is not None and s.dead > thresholds["dead"]:
            here.append(("dead", s.dead, thresholds["dead"]))
        found.extend(
            (s, Finding(s.name, k, float(v), float(t))) for k, v, t in here
        )
    found.extend(_judge_residuals(residuals, thresholds))
    return found


def _chains(rows, kernels):
    last_kernel = kernels[-1] if kernels else None
    chains: list[list[Any]] = [[]]
    for s in rows:
        if s.kind in ("norm", "add"):
            chains.append([])
        elif s.has_kernel and not (
            s.norm_after or s.branch is not None or s.shortcut
        ):
            chains[-1].append(s)
    plain_ids: set[int] = set()
    first_of: dict[int, Any] = {}
    grad_ref_of: dict[int, Any] = {}
    hidden_ids: set[int] = set()
    for chain in chains:
        ref = next((s.pre_std for s in chain if s.pre_std), None)
        hidden = [s for s in chain if s is not last_kernel]
        grad_ref = next(
            (s.grad_std for s in reversed(hidden) if s.grad_std), None
        )
        for s in chain:
            plain_ids.add(id(s))
            first_of[id(s)] = ref
            grad_ref_of[id(s)] = grad_ref
        hidden_ids.update(id(s) for s in hidden)
    return plain_ids, first_of, grad_ref_of, hidden_ids


def _judge_residuals(residuals, thresholds):
    found = []
    growth = 1.0
    for r in residuals:
        g = r.growth
        if math.isfinite(g) and g > 0:
            growth *= g
        if growth > thresholds["stream"]:
            found.append(
                (
                    None,
                    Finding(
                        r.at, "exploding_stream", growth, thresholds["stream"]
                    ),
                )
            )
            growth = 1.0
        if getattr(r, "normalized", False):
            growth = 1.0
    return found


def gradient_warnings(
    records: Iterable[Mapping[str, Any]],
    *,
    min_step: float = 1e-4,
    max_step: float = 1e3,
) -> list[str]:
    """The gradient logger's warning: messages, or `[]` when healthy.

    A pure function of per-variable records in forward order (the order
    of `model.trainable_variables` is fine). Each record is a dict:

    - `path` (str): the variable's path.
    - `kind` (str): one of `VARIABLE_KINDS` (`"kernel"`, `"bias"`,
      `"norm_scale"`, `"norm_bias"`, `"embedding"`, `"other"`).
    - `grad_var` (float): variance of its gradient.
    - `grad_norm` (float): L2 norm of its gradient (of the training loss,
      as `fit` computes it: BatchNorm on batch statistics).
    - `weight_norm` (float): L2 norm of the variable.
    - `nonfinite` (int): number of non-finite gradient values.
    - `norm_follows` (bool): whether a normalization layer follows the
      variable's layer (its scale then does not matter).

    Rules, for kernels only (biases, norm parameters and embeddings are
    never judged: a bias can have an exactly-zero gradient by
    construction, e.g. attention's key bias):

    - any non-finite gradient;
    - every kernel zero (an all-zero init: nothing breaks the symmetry),
      or zero kernels that get exactly zero gradient (they stay zero);
    - kernels with an exactly-zero gradient while no kernel is zero (a
      zero-initialized layer after them, as in Fixup's branch ends, is
      healthy and exempts them);
    - the median effective step `grad_norm / weight_norm` of the kernels
      (a kernel followed by normalization is judged by it too; with
      zero-initialized kernels present, the kernels their zeros cut off
      are left out): a healthy update moves a weight by about 1e-3 of its norm
      per step (REFERENCE: ~1e-3), so with learning rates 1e-4..1 the
      effective step lies around 1e-3..10; below `min_step` (1e-4) the
      kernels will not move, above `max_step` (1e3) they explode. A
      ratio *across* layers is not used: it cancels exactly when every
      layer has the same gain error (30-layer Glorot ReLU).

    Examples:

    >>> from keras_winit.health import gradient_warnings
    >>> ok = [dict(path=f"d{i}/kernel", kind="kernel", grad_var=1e-4,
    ...            grad_norm=0.1, weight_norm=8.0, nonfinite=0,
    ...            norm_follows=False) for i in range(3)]
    >>> gradient_warnings(ok)
    []
    >>> key_bias = dict(path="mha/key/bias", kind="bias", grad_var=0.0,
    ...                 grad_norm=0.0, weight_norm=0.0, nonfinite=0,
    ...                 norm_follows=False)
    >>> gradient_warnings(ok + [key_bias])
    []
    >>> zeros = [dict(r, weight_norm=0.0, grad_norm=0.0) for r in ok]
    >>> gradient_warnings(zeros)[0][:34]
    'All kernels are zero (3 variables)'
    >>> tiny = [dict(r, grad_norm=1e-6) for r in ok]
    >>> gradient_warnings(tiny)[0][:40]
    'Kernels barely get a gradient: median |g'

    Args:
        records: List of dicts as above, in forward order.
        min_step: Median effective step below which the kernels are
            reported as not learning.
        max_step: Median effective step above which they are reported as
            exploding.

    Returns:
        A list of warning messages (str).
    """
    messages = []
    bad = [r for r in records if r.get("nonfinite", 0)]
    if bad:
        messages.append(
            f"Non-finite gradients in {len(bad)} variable(s), first "
            f"{bad[0]['path']}: lower the learning rate or the init "
            "scale, and check the inputs for NaN/inf."
        )
    kernels = [r for r in records if r.get("kind") == "kernel"]
    if kernels and all(r["weight_norm"] == 0 for r in kernels):
        messages.append(
            f"All kernels are zero ({len(kernels)} variables): no "
            "gradient can reach the early layers and nothing breaks the "
            "symmetry between units. Use a random initializer."
        )
        return messages
    zero_kernels = any(r["weight_norm"] == 0 for r in kernels)
    # A zero kernel that gets no gradient stays zero forever (a
    # zero-initialized branch end of Fixup/SkipInit gets one and learns).
    frozen = [
        r for r in kernels if r["weight_norm"] == 0 and r["grad_norm"] == 0
    ]
    if frozen:
        messages.append(
            f"{len(frozen)} kernel(s) are zero and get exactly zero "
            f"gradient, first {frozen[0]['path']}: they stay zero forever "
            "and nothing breaks the symmetry between their units. Use a "
            "random initializer."
        )
        return messages
    live = [
        r
        for r in kernels
        if r["weight_norm"] > 0 and math.isfinite(r["grad_norm"])
    ]
    stalled = [r for r in live if r["grad_norm"] == 0]
    if stalled and not zero_kernels and len(stalled) < len(live):
        messages.append(
            f"{len(stalled)} kernel(s) get exactly zero gradient, first "
            f"{stalled[0]['path']}: no gradient reaches them (dead units "
            "after them). Re-initialize with a random, "
            "variance-preserving initializer."
        )
    judged = live
    if zero_kernels:
        # Zero gradients explained by zero-initialized layers after them.
        judged = [r for r in live if r["grad_norm"] > 0]
    steps = sorted(r["grad_norm"] / r["weight_norm"] for r in judged)
    if not steps:
        return messages
    median = steps[len(steps) // 2]
    if median < min_step:
        messages.append(
            f"Kernels barely get a gradient: median |g|/|w| = "
            f"{median:.3g} < {min_step:g} over {len(steps)} kernels (the "
            "signal or the gradient vanishes through the layers). Use a "
            "variance-preserving initializer (see keras_winit.diagnose) "
            "or add normalization."
        )
    elif median > max_step:
        messages.append(
            f"Kernel gradients are huge relative to the weights: median "
            f"|g|/|w| = {median:.3g} > {max_step:g} over {len(steps)} "
            "kernels (the signal explodes). Lower the init scale (see "
            "keras_winit.diagnose) or add normalization."
        )
    return messages
