"""What the ledger shows to people. Owns: the progress chart, the HTML report, the dashboard.

Every module here reads the ledger (or a results.tsv) and never writes it; matplotlib and
the web stack are imported inside the functions that draw or serve.
"""
