"""One run, and where it executes. Owns nothing itself: bench (the one way to run a
checkout), runner (a run's processes, budget, watchdogs), sandbox (isolation), executors
(local slots, Ray)."""
