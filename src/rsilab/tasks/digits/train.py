"""Digit classification with a small MLP, written as a user writes their own script: its own
config file, its own seeding, its own evaluation and log line. rsilab reads the last
`val loss X` line of the log (metric.pattern) and tunes config.toml through [knobs]."""

import os
import signal
import time
import tomllib

# Wrap up when told: rsilab sends SIGUSR1 when the budget is up (wrap_up_signal). Installed
# first, before the slow imports: a signal that came before its handler would end the run.
stop = False


def wrap_up(signum, frame):
    global stop
    stop = True


signal.signal(signal.SIGUSR1, wrap_up)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from data import load  # noqa: E402

with open("config.toml", "rb") as f:
    cfg = tomllib.load(f)

# Seeding: rsilab gives each run its own seed; run by hand, the script uses seed 0.
seed = int(os.environ.get("RSILAB_SEED", "0"))
torch.manual_seed(seed)
np.random.seed(seed % 2**32)
torch.set_num_threads(int(os.environ.get("RSILAB_THREADS", "1")))

(xt, yt), (xv, yv) = load()
xt, yt, xv, yv = map(torch.from_numpy, (xt, yt, xv, yv))

act = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}[cfg["model"]["activation"]]
blocks, width = [], xt.shape[1]
for _ in range(cfg["model"]["layers"]):
    blocks += [nn.Linear(width, cfg["model"]["hidden"]), act(), nn.Dropout(cfg["model"]["dropout"])]
    width = cfg["model"]["hidden"]
model = nn.Sequential(*blocks, nn.Linear(width, 10))

opt_cfg = cfg["optim"]
if opt_cfg["name"] == "adam":
    opt = torch.optim.AdamW(model.parameters(), lr=opt_cfg["lr"], weight_decay=opt_cfg["weight_decay"])
else:
    opt = torch.optim.SGD(
        model.parameters(), lr=opt_cfg["lr"], momentum=opt_cfg["momentum"], weight_decay=opt_cfg["weight_decay"]
    )


def evaluate():
    model.eval()
    with torch.no_grad():
        logits = model(xv)
        loss = nn.functional.cross_entropy(logits, yv).item()
        acc = (logits.argmax(1) == yv).float().mean().item()
    model.train()
    return loss, acc


t0 = time.time()
batch = cfg["train"]["batch_size"]
for epoch in range(cfg["train"]["epochs"]):
    perm = torch.randperm(len(xt))
    for i in range(0, len(xt), batch):
        idx = perm[i : i + batch]
        loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if stop:
            break
    val_loss, val_acc = evaluate()
    print(f"epoch {epoch + 1} train loss {loss.item():.4f} val loss {val_loss:.4f} val acc {val_acc:.4f}")
    if stop:
        print("stopped early: the budget is up")
        break
print(f"done in {time.time() - t0:.1f} s")
