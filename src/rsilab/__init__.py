"""rsilab: a recursive self-improvement lab. Owns: the version; each module says what it owns.

AI agents (or the offline tuner) edit a real training script; the runner trains it for a
fixed budget; a sealed evaluator scores it; the supervisor keeps a change only when the
judge says it is a real improvement. This package import is cheap on purpose: torch,
optuna, matplotlib and friends are imported only by the modules that need them.
"""

__version__ = "0.1.0"
