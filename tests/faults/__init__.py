"""Fault injection: kill pipeline stages with SIGKILL at seeded-random points and check what is left.

`python -m tests.faults --kills 20 --seed 0` for a dedicated run; `test_fault_injection.py` is the short one.
"""
