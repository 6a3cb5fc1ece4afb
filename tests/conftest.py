"""Fixtures shared by the end-to-end test modules."""

from __future__ import annotations

import os

import pytest
from _paths import REPO


@pytest.fixture(scope="session")
def offline_env(tmp_path_factory) -> dict[str, str]:
    """An environment for recipe and benchmark subprocesses: no Hub, caches of its own
    (shared by the whole session: the kernel, corpus, tokenizers and checkpoints are built
    once; tests that need a fresh checkpoint use their own CLION_HF_CHECKPOINT_MAX_STEPS,
    which is part of its cache key), fast offline finetune checkpoints.

    Under pytest-xdist the workers share one cache, as two users' processes would: the
    package's caches are built under a lock and read by everyone."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        cache = tmp_path_factory.getbasetemp().parent / "shared-cache"
        cache.mkdir(exist_ok=True)
    else:
        cache = tmp_path_factory.mktemp("cache")
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(cache / "datasets"),
        "CLION_HF_CACHE": str(cache / "clion_hf"),
        "CLION_HF_CHECKPOINT_MAX_STEPS": "10",  # finetune recipes build their checkpoint fast
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
