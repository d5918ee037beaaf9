"""Fuzzing harness for the input readers (pipeline.io): mutated real DICOM and NIfTI files, one case per
subprocess request, with a wall-clock and an address-space limit per case.

``python -m tests.fuzz --cases 10000 --seed 0`` is the dedicated run; ``test_fuzz_sample.py`` runs a small
sample in the default suite. Every case is rebuilt from ``(seed, case id)`` alone, so a failure found in a
long run is replayed with ``python -m tests.fuzz --seed S --replay ID``.
"""
