"""Synthetic dataset export: sampling per seed, NIfTI/DICOM writers, memorisation gate, dataset card."""
