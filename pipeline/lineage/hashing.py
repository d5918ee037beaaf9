"""Content hashes used by lineage records and manifests (sha256, streamed)."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def combined_hash(hashes: dict[str, str]) -> str:
    """One hash over a set of (name, hash) pairs, independent of insertion order."""
    h = hashlib.sha256()
    for name in sorted(hashes):
        h.update(name.encode("utf-8") + b"\0" + hashes[name].encode("ascii") + b"\n")
    return h.hexdigest()


def keyed_pseudonym(key: str, value: str, prefix: str, length: int = 10) -> str:
    """A stable pseudonym for ``value`` (HMAC-SHA256 with ``key``): not reversible without the key."""
    digest = hmac.new(key.encode("utf-8"), value.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"{prefix}{digest[:length]}"
