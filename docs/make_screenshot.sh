#!/usr/bin/env bash
# Makes docs/tensorboard_gradients.png: a TensorBoard screenshot of the
# per-layer gradient variance logged by keras_winit's GradientVarianceLogger.
#
# Needs: the package's virtualenv active (tensorflow, keras, tensorboard) and
# Debian's chromium (`apt-get install -y chromium`). Only 127.0.0.1 is used.
# Usage: bash docs/make_screenshot.sh [output.png]
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${1:-docs/tensorboard_gradients.png}"
WORK="$(mktemp -d)"
LOGDIR="$WORK/logs"
TB_PID=""
cleanup() {
  if [[ -n "$TB_PID" ]]; then kill "$TB_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# 1. A small fit: a 6-layer tanh MLP on sklearn's digits with the classic
#    "standard" init U(-1/sqrt(n), 1/sqrt(n)) (Glorot & Bengio 2010), so the
#    gradient variance visibly differs from layer to layer.
TF_CPP_MIN_LOG_LEVEL=3 python - "$LOGDIR" <<'PY'
import sys

import keras
from sklearn.datasets import load_digits

from keras_winit.callbacks import GradientVarianceLogger

log_dir = sys.argv[1]
x, y = load_digits(return_X_y=True)
x = (x / 16.0).astype("float32")
keras.utils.set_random_seed(0)
layers = [keras.Input((64,))]
for i in range(5):
    layers.append(
        keras.layers.Dense(
            128,
            activation="tanh",
            kernel_initializer=keras.initializers.RandomUniform(
                -(64 if i == 0 else 128) ** -0.5,
                (64 if i == 0 else 128) ** -0.5,
            ),
            name=f"dense_{i + 1}",
        )
    )
layers.append(keras.layers.Dense(10, name="logits"))
model = keras.Sequential(layers, name="mlp")
model.compile(
    optimizer=keras.optimizers.SGD(0.05),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
)
model.fit(
    x,
    y,
    batch_size=32,
    epochs=8,
    verbose=0,
    callbacks=[
        GradientVarianceLogger(log_dir, update_freq=5, warn_log10_ratio=None)
    ],
)
PY

# 2. A real TensorBoard server on 127.0.0.1, polled until it serves the tags.
PORT="$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
tensorboard --logdir "$LOGDIR" --host 127.0.0.1 --port "$PORT" \
  >"$WORK/tensorboard.log" 2>&1 &
TB_PID=$!
for _ in $(seq 1 120); do
  if curl -sf "http://127.0.0.1:$PORT/data/plugin/scalars/tags" \
    | grep -q "grad_variance"; then
    break
  fi
  sleep 0.5
done
curl -sf "http://127.0.0.1:$PORT/data/plugin/scalars/tags" | grep -q grad_variance

# 3. Headless Chromium: the Scalars dashboard, filtered to the gradient
#    variance of the kernels (one card per layer), without smoothing.
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$WORK/chromium" --window-size=1400,1000 \
  --virtual-time-budget=15000 --screenshot="$OUT" \
  "http://127.0.0.1:$PORT/#scalars&tagFilter=grad_variance%2F.*kernel&_smoothingWeight=0" \
  >"$WORK/chromium.log" 2>&1
echo "wrote $OUT"
