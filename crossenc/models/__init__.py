"""The model: what it is (describe.py), how it is found and loaded (load.py), and how pairs become
token ids for it (tokenize.py)."""
