"""The parts of benchmarks/speed.py (one benchmark, too large for one readable file): ``table`` (the plan, the
prepared inputs and the rows), ``workers`` (one process per measured side, and the gate between its units of
work) and ``sides`` (the measured code: supersub's and the plain PyTorch reference). Run ``speed.py``, not these."""
