"""Human reference for the toy task: closed-form ridge regression, the penalty chosen by
leave-one-out cross-validation on the training split (a replacement for train.py).

What a person does with a 16-dimensional linear problem and 1000 examples: skip SGD and
solve the normal equations. The penalty is picked on the training data alone (the
closed-form leave-one-out error of ridge regression, Hastie, Tibshirani and Friedman, The
Elements of Statistical Learning, eq. 7.52 for linear smoothers); validation data is not
read. The solution does not depend on the harness seed (a closed form has no randomness);
the evaluator's seeded noise still varies between runs.
"""

import numpy as np

import toydata
from rsilab import harness

PENALTIES = (0.0, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # candidate ridge penalties (sum of squares scale)

x, y = toydata.train_split()
u, s, vt = np.linalg.svd(x, full_matrices=False)
best = None
for lam in PENALTIES:
    shrink = s**2 / (s**2 + lam)                    # eigenvalues of the hat matrix
    fitted = u @ (shrink * (u.T @ y))
    leverage = np.einsum("ij,j,ij->i", u, shrink, u)  # diagonal of the hat matrix
    loo = float(np.mean(((y - fitted) / (1 - leverage)) ** 2))
    if best is None or loo < best[0]:
        best = (loo, lam)
loo, lam = best
w = vt.T @ ((s / (s**2 + lam)) * (u.T @ y))
np.save(harness.artifact_dir() / "weights.npy", w)
harness.print_summary({"penalty": lam, "loo_mse": loo, "train_mse": float(np.mean((x @ w - y) ** 2))})
