"""Toy training script (the file the agent edits): linear regression by minibatch SGD."""

import numpy as np

import toydata
from rsilab import harness

LR = 0.01            # learning rate
STEPS = 300          # SGD steps
BATCH_SIZE = 8       # examples per step
L2 = 0.1             # weight decay
INIT_SCALE = 1.0     # std of the initial weights
MOMENTUM = 0.0       # heavy-ball momentum

rng = np.random.default_rng(harness.seed())
x, y = toydata.train_split()
w = rng.normal(scale=INIT_SCALE, size=x.shape[1])
v = np.zeros_like(w)
for step in range(STEPS):
    idx = rng.integers(0, len(x), BATCH_SIZE)
    grad = 2 * x[idx].T @ (x[idx] @ w - y[idx]) / BATCH_SIZE + 2 * L2 * w
    v = MOMENTUM * v - LR * grad
    w = w + v
np.save(harness.artifact_dir() / "weights.npy", w)
harness.print_summary({"num_steps": STEPS, "train_mse": float(np.mean((x @ w - y) ** 2))})
