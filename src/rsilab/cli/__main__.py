"""`python -m rsilab.cli`. Owns nothing: runs the command line."""

from rsilab.cli import main

main()
