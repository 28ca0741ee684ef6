"""Studies built on the loop. Owns nothing itself: score (against human references),
strategy (research on the research strategy, `rsilab meta`), collapse (model collapse)."""
