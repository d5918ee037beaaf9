"""Patient-level train/val/test split that stays stable when cases are added."""

from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test")


def assign_split(patient_id: str, seed: int, train: float, val: float) -> str:
    """Split of one patient from a hash of (seed, pseudonymous id): adding or removing other patients never
    moves this one, and all of a patient's cases land in the same split."""
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    if u < train:
        return "train"
    if u < train + val:
        return "val"
    return "test"
