"""Evaluation metrics through ``evaluate``, usable with no network.

``evaluate.load("accuracy")`` fetches a script from the Hub, so the scripts ship in
``clion_hf/workloads/evaluate_metrics/`` and are loaded from there by path. ``evaluate``
is imported on first use: it pulls in scikit-learn and SciPy (about 2 s), which the
language-model recipes, needing only :func:`perplexity`, should not pay for.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import evaluate

METRICS_DIR = Path(__file__).parent / "evaluate_metrics"
LOCAL_METRICS = ("accuracy", "f1")


def load_metric(name: str) -> evaluate.EvaluationModule:
    """Load a metric shipped with clion_hf (``accuracy`` or ``f1``)."""
    import evaluate

    if name not in LOCAL_METRICS:
        raise ValueError(f"unknown metric {name!r}; allowed: {', '.join(LOCAL_METRICS)}")
    # keep_in_memory: no cache files, so several DDP processes never share an arrow file
    return evaluate.load(str(METRICS_DIR / f"{name}.py"), keep_in_memory=True)


def classification_metrics(with_f1: bool = False) -> Callable[[tuple], dict[str, float]]:
    """A ``compute_metrics`` for Trainer: ``accuracy``, plus binary ``f1`` for pair tasks."""
    accuracy = load_metric("accuracy")
    f1 = load_metric("f1") if with_f1 else None

    def compute(eval_pred) -> dict[str, float]:
        logits, labels = eval_pred
        logits = logits[0] if isinstance(logits, tuple) else logits
        preds = np.argmax(logits, axis=-1)
        out = accuracy.compute(predictions=preds, references=labels)
        if f1 is not None:
            out.update(f1.compute(predictions=preds, references=labels))
        return out

    return compute


def perplexity(eval_loss: float) -> float:
    """exp(mean token cross-entropy); ``inf`` where that overflows (as run_clm.py)."""
    try:
        return math.exp(eval_loss)
    except OverflowError:
        return float("inf")
