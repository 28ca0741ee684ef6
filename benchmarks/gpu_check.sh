#!/bin/bash
# The GPU path of the bundled gpt task, end to end, on one CUDA machine; prints figures.
#
#   bash benchmarks/gpu_check.sh [TRAIN_BUDGET=60] [LOOP_BUDGET=30] [LOOP_SECONDS=300]
#
# 1. one run of the unmodified train.py (gpu preset) through the real runner: steps,
#    tokens/s, MFU, val_bpb, GPU and host memory, wall times (TRAIN_BUDGET=0 skips it);
#    then the same run with the model under torch.compile (a patched copy of the task; the
#    compile time is total_seconds - training_seconds beyond step 1's, and the runner calls
#    the run invalid when compiling outlasts handover_slack): whether compiling pays;
# 2. `rsilab run` in a fresh workspace (/tmp/rsilab-gpu-check) at LOOP_BUDGET seconds per
#    run with two baseline seeds, interrupted with SIGINT (Ctrl-C) after LOOP_SECONDS;
# 3. status, report (into $OUT) and audit of that workspace (git and ledger must agree after
#    the interrupt), then each run's memory and throughput from the ledger.
#
# Needs `rsilab` on PATH and the data prepared (`rsilab prepare`, or RSILAB_HOME pointing at
# a cache that has it: the machine may have no network). Writes to $OUT (default
# /tmp/gpu-check-out). The "On a GPU" figures of docs/quickstart.md come from this script on an H200.
set -u
TB=${1:-60}; LB=${2:-30}; LS=${3:-300}
OUT=${OUT:-/tmp/gpu-check-out}; WS=/tmp/rsilab-gpu-check
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "=== [$(( $(date +%s) - t0 )) s] $*"; }
stamp setup
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
rsilab doctor
stamp "1. one run of the unmodified train.py, budget $TB s"
[ "$TB" = 0 ] || timeout $((TB * 4 + 60)) rsilab train --task gpt --seed 0 --set budget="$TB"
stamp "1b. the same with torch.compile, budget $TB s"
CT=/tmp/rsilab-gpu-check-compile
rm -rf "$CT"
PYTHON=$(dirname "$(command -v rsilab)")/python; [ -x "$PYTHON" ] || PYTHON=python3
"$PYTHON" - "$CT" <<'PY' || rm -rf "$CT"
import shutil, sys
from pathlib import Path
from rsilab.paths import bundled_tasks_dir
dst = Path(sys.argv[1])
shutil.copytree(bundled_tasks_dir() / "gpt", dst, ignore=shutil.ignore_patterns("__pycache__"))
src = (dst / "train.py").read_text()
anchor, call = "    batches = harness.train_batches(", "            logits = model(x)"
if src.count(anchor) != 1 or src.count(call) != 1:
    sys.exit("train.py changed shape: skipping the torch.compile run")
src = src.replace(anchor, "    compiled = torch.compile(model)\n" + anchor)
(dst / "train.py").write_text(src.replace(call, call.replace("model(x)", "compiled(x)")))
PY
[ "$TB" = 0 ] || [ ! -f "$CT/train.py" ] || timeout $((TB * 4 + 240)) rsilab train --task "$CT" --seed 0 --set budget="$TB" --set overhead=600
stamp "2. the research loop, budget $LB s, SIGINT after $LS s"
rm -rf "$WS"
timeout -s INT "$LS" rsilab run "$WS" --max-experiments 100 --set budget="$LB" --set judge.noise_runs=2
echo "rsilab run: rc $?"
stamp "3. status, report, audit"
rsilab status "$WS"
rsilab report "$WS" --out "$OUT"
rsilab audit "$WS"
python3 - "$WS/.rsilab/ledger.db" <<'PY'
import json, sqlite3, sys
keys = ("peak_gpu_memory_gb", "peak_rss_gb", "tokens_per_second", "mfu_percent", "num_steps")
print("experiment  val_bpb  " + "  ".join(keys))
for exp, metric, summary in sqlite3.connect(sys.argv[1]).execute("SELECT experiment_id, metric, summary FROM runs"):
    s = json.loads(summary)
    print(exp, metric, *(f"{s[k]:.4g}" if isinstance(s.get(k), (int, float)) else "-" for k in keys))
PY
stamp done
