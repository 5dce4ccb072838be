"""Do `diagnose` and the gradient warning predict which inits won't train?

A zoo of (model, init) pairs, each trained for a fixed budget to get its
ground truth ("trains" / "fails", with the numbers), cached with the seeds
and versions in `benchmarks/trainability.json`. The prediction side runs
`keras_winit.diagnostics.diagnose` on the *untrained* model (a batch of
256), and the real `GradientVarianceLogger` for one step of `fit` of it
(compiled and batched as its training: batch 64; its warning judges the
first batch by `diagnose`'s rule and the first step's gradients), and
reports their precision and recall at predicting "fails".

    python -m benchmarks.trainability             # table + precision/recall
    python -m benchmarks.trainability --retrain   # recompute ground truth
    python -m benchmarks.trainability --cost      # diagnose vs a train step

Ground truth: MLPs, CNNs and ResNets on scikit-learn's digits (1437
training, 360 held-out examples, standardized), trained with SGD +
momentum 0.9 (lr 0.01, batch 64, 15 epochs; 30 for the MLPs), as in He et
al. (2015) and Glorot & Bengio (2010); transformers on a synthetic copy
task (tokens from 16, length 8, label = the first token; attention is
needed to solve it), trained with Adam (lr 1e-3, batch 64, 15 epochs).
"trains": every loss finite and the best epoch's training loss <= 1.0
(chance: ln 10 = 2.30, ln 16 = 2.77); a best loss in (0.5, 2.0) is
"edge", shown but left out of precision/recall. Every case is seeded.
TensorFlow backend.
"""

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, "trainability.json")
SEED = 0
EPOCHS = 15
# Deep MLPs learn slower per epoch than the CNNs here (He et al.'s 30-layer
# net needs ~10 epochs at width 256): they get twice the budget.
MLP_EPOCHS = 30
# "trains": a finite training loss, below this at the end of some epoch of
# the budget (the best epoch: the last one of a deep net trained with
# momentum is noisy). Chance is
# ln 10 = 2.30 on digits, ln 16 = 2.77 on the copy task). The training
# loss, not held-out accuracy: an init is about optimization, and a
# BatchNorm net's held-out accuracy also depends on its moving statistics.
THRESHOLD = 1.0


# Cases whose best loss lies in this band neither clearly learned nor
# stayed at chance within the budget: they are shown as "edge" and left
# out of precision/recall (a longer budget could turn them either way).
EDGE = (0.5, 2.0)


def outcome(case):
    """ "trains", "fails" or "edge" from a case's cached numbers."""
    if not case["finite"]:
        return "fails"
    best = case["best_train_loss"]
    if EDGE[0] < best < EDGE[1]:
        return "edge"
    return "trains" if best <= THRESHOLD else "fails"


# ----------------------------------------------------------------------
# Data.


def digits():
    import numpy as np
    from sklearn.datasets import load_digits

    data = load_digits()
    x = data.data.astype("float32")
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = data.target.astype("int32")
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    return (x[:1437], y[:1437]), (x[1437:], y[1437:])


def copy_task(n=3072, vocab=16, length=8):
    import numpy as np

    rng = np.random.default_rng(SEED)
    x = rng.integers(0, vocab, (n, length)).astype("int32")
    y = x[:, 0].copy()
    split = n * 4 // 5
    return (x[:split], y[:split]), (x[split:], y[split:])


# ----------------------------------------------------------------------
# Models.


def _init(name, scale=1.0, seed=0):
    import keras

    import keras_winit

    if name == "zeros":
        return keras.initializers.Zeros()
    if name == "uniform1":
        return keras.initializers.RandomUniform(-1.0, 1.0, seed=seed)
    base = {
        "glorot": keras_winit.GlorotUniform,
        "he": keras_winit.HeNormal,
        "lecun": keras_winit.LecunNormal,
    }
    if name == "kumar":
        init = keras_winit.ActivationScaling(
            "sigmoid", method="kumar", seed=seed
        )
    else:
        init = base[name](seed=seed)
    if scale == 1.0:
        return init
    return _Scaled(init, scale)


class _Scaled:
    """An initializer times a constant (for the "100x too small" cases)."""

    def __init__(self, init, scale):
        self.init, self.scale = init, scale

    def __call__(self, shape, dtype=None):
        return self.init(shape, dtype=dtype) * self.scale


def mlp(depth, activation, init, width=64):
    import keras

    layers = [keras.Input((64,))]
    for i in range(depth):
        layers.append(
            keras.layers.Dense(
                width,
                activation=activation,
                kernel_initializer=_init(init, seed=i),
            )
        )
    layers.append(
        keras.layers.Dense(10, kernel_initializer=_init(init, seed=999))
    )
    return keras.Sequential(layers)


def cnn(depth, norm, init, scale=1.0):
    import keras

    x = inputs = keras.Input((64,))
    x = keras.layers.Reshape((8, 8, 1))(x)
    for i in range(depth):
        x = keras.layers.Conv2D(
            32,
            3,
            padding="same",
            use_bias=not norm,
            kernel_initializer=_init(init, scale, seed=i),
        )(x)
        if norm:
            x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, kernel_initializer=_init("glorot"))(x)
    return keras.Model(inputs, outputs)


def resnet(blocks, mode, width=64):
    """Dense residual blocks `h + W2 relu(W1 h)` on digits.

    mode: "plain" (He on both layers: the stream std grows ~1.5x per
    block on digits, at most sqrt(3)), "fixup" (last layer of each branch
    zero), "bn" (BatchNorm in each branch), "scaled" (branch end x
    1/sqrt(2N)).
    """
    import keras

    x = inputs = keras.Input((64,))
    h = keras.layers.Dense(width, kernel_initializer=_init("he", seed=0))(x)
    for b in range(blocks):
        f = h
        if mode == "bn":
            f = keras.layers.BatchNormalization()(f)
        f = keras.layers.ReLU()(f)
        f = keras.layers.Dense(
            width, kernel_initializer=_init("he", seed=10 * b + 1)
        )(f)
        if mode == "bn":
            f = keras.layers.BatchNormalization()(f)
        f = keras.layers.ReLU()(f)
        if mode == "fixup":
            end = keras.initializers.Zeros()
        elif mode == "scaled":
            end = _init("he", 1 / math.sqrt(2 * blocks), seed=10 * b + 2)
        else:
            end = _init("he", seed=10 * b + 2)
        f = keras.layers.Dense(width, kernel_initializer=end)(f)
        h = keras.layers.Add()([h, f])
    h = keras.layers.ReLU()(h)
    outputs = keras.layers.Dense(10, kernel_initializer=_init("glorot"))(h)
    return keras.Model(inputs, outputs)


def transformer(pre_ln, embedding_scale=1.0, blocks=2, dim=32, vocab=16):
    import keras

    inputs = keras.Input((8,), dtype="int32")
    std = 0.02 * embedding_scale
    tok = keras.layers.Embedding(
        vocab,
        dim,
        embeddings_initializer=keras.initializers.RandomNormal(
            stddev=std, seed=1
        ),
    )(inputs)
    import keras_hub

    pos = keras_hub.layers.PositionEmbedding(
        8,
        initializer=keras.initializers.RandomNormal(stddev=std, seed=2),
    )(tok)
    h = keras.layers.Add()([tok, pos])
    for b in range(blocks):
        f = keras.layers.LayerNormalization()(h) if pre_ln else h
        f = keras.layers.MultiHeadAttention(
            2, dim // 2, kernel_initializer=_init("glorot", seed=b)
        )(f, f)
        h = keras.layers.Add()([h, f])
        if not pre_ln:
            h = keras.layers.LayerNormalization()(h)
        f = keras.layers.LayerNormalization()(h) if pre_ln else h
        f = keras.layers.Dense(
            2 * dim,
            activation="gelu",
            kernel_initializer=_init("glorot", seed=100 + b),
        )(f)
        f = keras.layers.Dense(
            dim, kernel_initializer=_init("glorot", seed=200 + b)
        )(f)
        h = keras.layers.Add()([h, f])
        if not pre_ln:
            h = keras.layers.LayerNormalization()(h)
    if pre_ln:
        h = keras.layers.LayerNormalization()(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    outputs = keras.layers.Dense(vocab)(h)
    return keras.Model(inputs, outputs)


# name -> (builder, task)
def zoo():
    return {
        "mlp30-relu-glorot": (
            lambda: mlp(30, "relu", "glorot", width=128),
            "digits",
        ),
        "mlp30-relu-he": (lambda: mlp(30, "relu", "he", width=128), "digits"),
        "mlp10-relu-uniform1": (
            lambda: mlp(10, "relu", "uniform1"),
            "digits",
        ),
        "mlp10-relu-zeros": (lambda: mlp(10, "relu", "zeros"), "digits"),
        "mlp10-tanh-glorot": (lambda: mlp(10, "tanh", "glorot"), "digits"),
        "mlp10-tanh-lecun": (lambda: mlp(10, "tanh", "lecun"), "digits"),
        "mlp10-tanh-uniform1": (
            lambda: mlp(10, "tanh", "uniform1"),
            "digits",
        ),
        "mlp10-sigmoid-lecun": (
            lambda: mlp(10, "sigmoid", "lecun"),
            "digits",
        ),
        "mlp10-sigmoid-kumar": (
            lambda: mlp(10, "sigmoid", "kumar"),
            "digits",
        ),
        "cnn6-he": (lambda: cnn(6, False, "he"), "digits"),
        "cnn6-he-x0.01": (lambda: cnn(6, False, "he", 0.01), "digits"),
        "cnn6-bn-he": (lambda: cnn(6, True, "he"), "digits"),
        "cnn6-bn-he-x0.01": (lambda: cnn(6, True, "he", 0.01), "digits"),
        "resnet8-plain": (lambda: resnet(8, "plain"), "digits"),
        "resnet16-plain": (lambda: resnet(16, "plain"), "digits"),
        "resnet16-fixup": (lambda: resnet(16, "fixup"), "digits"),
        "resnet16-bn": (lambda: resnet(16, "bn"), "digits"),
        "resnet16-scaled": (lambda: resnet(16, "scaled"), "digits"),
        "transformer-preln": (lambda: transformer(True), "copy"),
        "transformer-postln": (lambda: transformer(False), "copy"),
        "transformer-preln-emb100": (
            lambda: transformer(True, 100.0),
            "copy",
        ),
    }


def _data(task):
    return digits() if task == "digits" else copy_task()


def build(name):
    import keras

    keras.utils.set_random_seed(SEED)
    builder, task = zoo()[name]
    return builder(), task


# ----------------------------------------------------------------------
# Ground truth.


def train(name):
    """Trains one case; returns its ground-truth record."""
    import numpy as np

    model, task = build(name)
    (x, y), (xv, yv) = _data(task)
    compile_case(model, task)
    start = time.perf_counter()
    epochs = MLP_EPOCHS if name.startswith("mlp") else EPOCHS
    history = model.fit(
        x, y, batch_size=64, epochs=epochs, verbose=0, shuffle=True
    )
    seconds = time.perf_counter() - start
    loss, accuracy = model.evaluate(xv, yv, verbose=0)
    finite = bool(
        np.isfinite(loss) and np.all(np.isfinite(history.history["loss"]))
    )
    return {
        "task": task,
        "final_train_loss": float(history.history["loss"][-1]),
        "best_train_loss": float(np.nanmin(history.history["loss"] + [np.inf])),
        "heldout_loss": float(loss),
        "heldout_accuracy": float(accuracy),
        "finite": finite,
        "epochs": epochs,
        "seconds": round(seconds, 1),
    }


def retrain(names=None, path=CACHE):
    import keras

    names = names or list(zoo())
    results = {}
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f).get("cases", {})
    for name in names:
        results[name] = train(name)
        print(f"{name}: {results[name]}", flush=True)
    payload = {
        "seed": SEED,
        "epochs": EPOCHS,
        "threshold": THRESHOLD,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "backend_version": _backend_version(),
        "cases": results,
    }
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, sort_keys=True)
        f.write("\n")
    return payload


def _backend_version():
    import keras

    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
    name = module.get(keras.backend.backend())
    if name is None:
        return None
    return __import__(name).__version__


def load(path=CACHE):
    with open(path) as f:
        return json.load(f)


# ----------------------------------------------------------------------
# Predictions from the untrained model.


def predict(name, batch=256):
    """`(diagnose_says_fails, warning_says_fails, details)` for one case."""
    by_diagnose, flags = predict_diagnose(name, batch)
    by_warning, messages = predict_warning(name)
    return (
        by_diagnose,
        by_warning,
        {"flags": flags, "warnings": [m[:80] for m in messages[:2]]},
    )


def predict_diagnose(name, batch=256):
    """`diagnose` on the untrained model: `(says_fails, first flags)`."""
    from keras_winit import diagnostics

    model, task = build(name)
    (x, y), _ = _data(task)
    result = diagnostics.diagnose(model, x[:batch], y[:batch])
    flags = [f"{f.layer}: {f.kind}" for f in result.flags[:3]]
    return bool(result.flags), flags


def compile_case(model, task):
    """Compiles a case as its training does (optimizer, loss, metrics)."""
    import keras

    if task == "digits":
        optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    else:
        optimizer = keras.optimizers.Adam(1e-3)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def predict_warning(name, batch_size=64):
    """What the real logger says: `(warned, GradientVarianceWarning texts)`.

    One step of `fit` of the untrained case, compiled and batched as its
    training (`train`), with a `GradientVarianceLogger` (defaults:
    `warn=True`); the warnings it raises are collected.
    """
    import tempfile
    import warnings

    from keras_winit.monitoring import GradientVarianceLogger
    from keras_winit.monitoring import GradientVarianceWarning

    model, task = build(name)
    (x, y), _ = _data(task)
    compile_case(model, task)
    with tempfile.TemporaryDirectory() as log_dir:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(
                x[:batch_size],
                y[:batch_size],
                batch_size=batch_size,
                epochs=1,
                verbose=0,
                shuffle=False,
                callbacks=[GradientVarianceLogger(log_dir)],
            )
    messages = [
        str(w.message)
        for w in caught
        if issubclass(w.category, GradientVarianceWarning)
    ]
    return bool(messages), messages


def score(truth, predicted):
    """Precision and recall at predicting "fails"."""
    tp = sum(1 for t, p in zip(truth, predicted, strict=True) if t and p)
    fp = sum(1 for t, p in zip(truth, predicted, strict=True) if not t and p)
    fn = sum(1 for t, p in zip(truth, predicted, strict=True) if t and not p)
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    return precision, recall


def report(names=None, path=CACHE, out=sys.stdout):
    """Prints the zoo table and precision/recall; returns the rows."""
    from keras_winit import _signal

    cached = load(path)
    cases = cached["cases"]
    names = names or [n for n in zoo() if n in cases]
    rows, truth, by_diag, by_warn = [], [], [], []
    for name in names:
        gt = cases[name]
        d, w, details = predict(name)
        if outcome(gt) != "edge":
            truth.append(outcome(gt) == "fails")
            by_diag.append(d)
            by_warn.append(w)
        rows.append(
            [
                name,
                outcome(gt),
                f"{gt['heldout_accuracy']:.2f}",
                _signal.fmt(gt["best_train_loss"], ".3g"),
                "fails" if d else "trains",
                "fails" if w else "trains",
                "; ".join(details["flags"][:1]) or "-",
            ]
        )
    headers = [
        "case",
        "truth",
        "acc",
        "best loss",
        "diagnose",
        "warning",
        "first flag",
    ]
    print(_signal.format_table(headers, rows), file=out)
    p_d, r_d = score(truth, by_diag)
    p_w, r_w = score(truth, by_warn)
    print(
        f"\n{len(names)} cases, {len(names) - len(truth)} edge, "
        f"{sum(truth)} fail "
        f"(seed {cached['seed']}, {cached['epochs']} epochs, Keras "
        f"{cached['keras']}, {cached['backend']} "
        f"{cached['backend_version']})",
        file=out,
    )
    print(
        f"diagnose: precision {p_d:.2f}, recall {r_d:.2f}\n"
        f"warning:  precision {p_w:.2f}, recall {r_w:.2f}",
        file=out,
    )
    return rows, (p_d, r_d), (p_w, r_w)


# ----------------------------------------------------------------------
# Cost of diagnose against one training step.


def cost(repeats=5, out=sys.stdout):
    """Median seconds of `diagnose` and of one compiled training step.

    Side by side in one process, alternated, `repeats` times: one compiled
    training step (`train_on_batch`), the same batch forward and backward
    through Keras eagerly with nothing recorded (the floor of an eager
    probe pass), `diagnose` with the eager pass (`jit_compile=False`) and
    with the compiled pass (`jit_compile=True`, TensorFlow; elsewhere the
    flag is ignored). The first call of each `diagnose` is reported on its
    own (the compiled one includes the trace), and from them the number of
    calls after which compiling pays (`keras_winit._compiled.AUTO_AFTER`).
    The load average is printed before and after: the machine is shared,
    and eager execution slows down more than a compiled step when the
    cores are busy.
    """
    import statistics

    import keras
    import numpy as np

    from keras_winit import diagnostics

    keras.utils.set_random_seed(SEED)
    model = keras.applications.ResNet50V2(
        weights=None, input_shape=(64, 64, 3), classes=10
    )
    rng = np.random.default_rng(SEED)
    x = rng.uniform(0, 255, (8, 64, 64, 3)).astype("float32")
    y = rng.integers(0, 10, (8,))
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=False),
    )
    load_before = os.getloadavg()
    model.train_on_batch(x, y)  # compiles

    def eager_diagnose():
        return diagnostics.diagnose(model, x, jit_compile=False)

    def compiled_diagnose():
        return diagnostics.diagnose(model, x, jit_compile=True)

    first = {}
    pair = (("eager", eager_diagnose), ("compiled", compiled_diagnose))
    for name, fn in pair:
        t = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - t
    floor = _eager_forward_backward(model, x)
    floor()  # warm-up
    times = {"step": [], "floor": [], "eager": [], "compiled": []}
    for _ in range(repeats):
        for name, fn in (
            ("step", lambda: model.train_on_batch(x, y)),
            ("floor", floor),
            ("eager", eager_diagnose),
            ("compiled", compiled_diagnose),
        ):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    load_after = os.getloadavg()
    med = {k: statistics.median(v) for k, v in times.items()}
    step = med["step"]
    rows = [
        ("one training step (train_on_batch)", step),
        ("forward + backward, eager, nothing recorded", med["floor"]),
        ("diagnose eager, first call in the process", first["eager"]),
        ("diagnose eager (jit_compile=False)", med["eager"]),
        ("diagnose compiled, first call (trace)", first["compiled"]),
        ("diagnose compiled (jit_compile=True)", med["compiled"]),
    ]
    backend = keras.backend.backend()
    print(
        f"| ResNet50V2 64x64, batch 8 ({backend}) | median s | x step |",
        file=out,
    )
    print("|---|---|---|", file=out)
    for label, seconds in rows:
        print(f"| {label} | {seconds:.3f} | {seconds / step:.1f}x |", file=out)
    saved = med["eager"] - med["compiled"]
    trace = first["compiled"] - med["compiled"]
    pays = f"{trace / saved:.1f}" if saved > 0 else "never"
    print(
        f"medians of {repeats}; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after; the trace costs {trace:.2f} s, "
        f"{trace / med['eager']:.1f} eager diagnose calls; compiling pays "
        f"after {pays} calls",
        file=out,
    )
    return step, med["compiled"]


def _eager_forward_backward(model, x):
    """A plain eager forward and backward pass (kernel gradients)."""
    import keras

    backend = keras.backend.backend()
    x = keras.ops.convert_to_tensor(x)
    if backend == "tensorflow":
        import tensorflow as tf

        def run():
            with tf.GradientTape() as tape:
                loss = keras.ops.sum(model(x, training=True))
            return tape.gradient(loss, model.trainable_weights)

        return run
    if backend == "torch":
        import torch

        def run():
            loss = keras.ops.sum(model(x, training=True))
            weights = [w.value for w in model.trainable_weights]
            return torch.autograd.grad(loss, weights)

        return run
    import jax

    def run():
        trainable = [w.value for w in model.trainable_weights]
        rest = [w.value for w in model.non_trainable_weights]

        def loss(values):
            out, _ = model.stateless_call(values, rest, x, training=True)
            return keras.ops.sum(out)

        return jax.grad(loss)(trainable)

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.trainability")
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--only", default=None, help="comma-separated cases")
    parser.add_argument("--cost", action="store_true")
    args = parser.parse_args(argv)
    if args.cost:
        cost()
        return 0
    names = args.only.split(",") if args.only else None
    if args.retrain or not os.path.exists(CACHE):
        retrain(names)
    report(names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
