"""Where clion_hf keeps its caches (a leaf module: the optimizers import it too)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of clion_hf's caches: ``$CLION_HF_CACHE`` or ``~/.cache/clion_hf``."""
    root = os.environ.get("CLION_HF_CACHE") or Path.home() / ".cache" / "clion_hf"
    return Path(root)


def cache_key(*parts: object) -> str:
    """A short key (16 hex digits of SHA-256) of ``parts``' reprs, for cache file names."""
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode())
    return h.hexdigest()[:16]
