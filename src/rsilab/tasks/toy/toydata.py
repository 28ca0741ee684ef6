"""Frozen data of the toy task: a fixed linear problem. Training code gets only the train split."""

import numpy as np

DIM = 16
_rng = np.random.default_rng(1234)
TRUE_W = _rng.normal(size=DIM)
_X = _rng.normal(size=(1200, DIM))
_Y = _X @ TRUE_W + 0.5 * _rng.normal(size=1200)


def train_split():
    return _X[:1000], _Y[:1000]


def val_split():
    return _X[1000:], _Y[1000:]
