"""Frozen evaluator of the toy task: validation MSE of the saved weights, plus seeded noise.

The noise (sd from TOY_NOISE) stands in for the run-to-run variance of real training, so
the judge can be tested against noise of a known size.
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np

import toydata

p = argparse.ArgumentParser()
p.add_argument("--artifact", type=Path, required=True)
p.add_argument("--val", default="")
p.add_argument("--out", type=Path, required=True)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--threads", type=int, default=1)
args = p.parse_args()

w = np.load(args.artifact / "weights.npy", allow_pickle=False)
if w.shape != (toydata.DIM,) or not np.all(np.isfinite(w)):
    args.out.write_text(json.dumps({"refused": f"weights must be {toydata.DIM} finite numbers, got shape {w.shape}"}))
    raise SystemExit(3)
x, y = toydata.val_split()
mse = float(np.mean((x @ w - y) ** 2))
noise = float(os.environ.get("TOY_NOISE", "0")) * np.random.default_rng(args.seed).normal()
args.out.write_text(json.dumps({"val_loss": mse + noise, "mse": mse}))
