"""The input: listing and footers (plan.py), row groups read with each row's identity (read.py),
and the scores earlier runs gave to the rows a match found (reuse.py)."""
