"""The ``--optim`` values this package adds beside transformers' own and the log keys its
callback writes: a leaf, so that the Trainer glue (:mod:`.transformers`), its callback
(:mod:`._callback`) and the benchmark report read the same names without importing each
other (or transformers)."""

from __future__ import annotations

from enum import Enum
from typing import Any

OPTIM_VALUES = ("clion", "lion")

# What the Trainer callback adds to each training log (the benchmark report reads them back)
SIGN_FRACTION_KEY = "optim/sign_fraction"
MIN_ABS_C_KEY = "optim/min_abs_c"


def optim_value(optim: Any) -> str:
    """``TrainingArguments.optim`` as its string (an ``OptimizerNames`` member or a str)."""
    return optim.value if isinstance(optim, Enum) else str(optim)
