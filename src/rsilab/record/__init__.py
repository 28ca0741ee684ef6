"""The research record. Owns nothing itself: ledger (SQLite), audit (ledger against git),
export (MLflow / W&B)."""
