"""Scoring: token-budget batches (scoring.py) on a runner (torch_runner.py with prepack.py, or
onnx_runner.py), held by one scorer replica per actor (replica.py)."""
