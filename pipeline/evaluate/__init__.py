"""The evaluate stage: fidelity, diversity, privacy and usefulness of an exported synthetic dataset."""
