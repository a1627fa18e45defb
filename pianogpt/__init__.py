"""The libraries the programs share (prepare.py, train.py, sample.py, evaluate.py, bench.py, ablate.py)."""
