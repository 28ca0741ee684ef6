"""The data (frozen): scikit-learn's bundled copy of the UCI handwritten digits, 1797 8x8
images of 10 classes, split once into a training and a validation part (a fixed split, so
every run and every experiment is scored on the same 360 images)."""

import numpy as np

SPLIT_SEED = 0  # the split never moves with the run's seed
VAL_FRACTION = 0.2


def load():
    """((x_train, y_train), (x_val, y_val)): float32 pixels scaled to [0, 1], int64 labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit(
            "the digits task needs scikit-learn: pip install scikit-learn (or rsilab's 'examples' extra)"
        ) from None
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    n_val = int(len(x) * VAL_FRACTION)
    val, train = order[:n_val], order[n_val:]
    return (x[train], y[train]), (x[val], y[val])
