"""The research loop. Owns nothing itself: supervisor (the loop and its decisions), scheduler
(who proposes next), judge (keep / discard), ladder (longer-budget gate), merge, resume,
controls (human actions)."""
