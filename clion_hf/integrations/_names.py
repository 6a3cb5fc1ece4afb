"""The ``--optim`` values this package adds beside transformers' own: a leaf, so that the
Trainer glue (:mod:`.transformers`) and its callback (:mod:`._callback`) read the same
names without importing each other."""

from __future__ import annotations

from enum import Enum
from typing import Any

OPTIM_VALUES = ("clion", "lion")


def optim_value(optim: Any) -> str:
    """``TrainingArguments.optim`` as its string (an ``OptimizerNames`` member or a str)."""
    return optim.value if isinstance(optim, Enum) else str(optim)
