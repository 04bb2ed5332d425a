"""Checksums of files, read in chunks so a large file never has to fit in memory twice. Used to
tie a run's cached scores to the exact weights they were computed from, and to verify dataset
files against their published checksums."""
from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of the file's bytes (``algorithm`` as named by ``hashlib``)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
