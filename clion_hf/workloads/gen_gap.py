"""The generalization gap of a run, measured as the paper defines it (``clion-bench study``).

Three recipe options (``DataTrainingArguments``), shared by every recipe:

* ``--train_subset_size N``: train on ``N`` training examples (blocks for the language
  models, images for ViT), drawn after preprocessing by one fixed permutation
  (:data:`~clion_hf.workloads.data.SPLIT_SEED`), so a smaller subset is part of every
  larger one (nested subsets) and the tokenizer does not depend on ``N``;
* ``--eval_train_subset true``: at every evaluation also evaluate the loss on the whole
  training (sub)set, in eval mode (no dropout), logged as ``train_subset_loss`` with
  ``gen_gap = eval_loss - train_subset_loss`` (the running training loss is neither: it
  averages over a moving model, with dropout);
* ``--stop_at_train_loss L``: stop training at the first evaluation whose
  ``train_subset_loss`` is at most ``L`` (implies ``--eval_train_subset``): the
  matched-training-loss stopping rule.

Why a callback that calls ``trainer.evaluate`` again rather than a dict of eval datasets:
Trainer renames every eval key of a dict (``eval_validation_loss``), which would change the
metrics every consumer of these recipes reads.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import Trainer, TrainerCallback

from .data import sample
from .errors import RecipeError

TRAIN_SUBSET_PREFIX = "train_subset"
TRAIN_SUBSET_LOSS = f"{TRAIN_SUBSET_PREFIX}_loss"
GEN_GAP = "gen_gap"
STOPPED_AT = "stopped_at_train_loss_step"


def train_subset(dataset: Any, n: int | None) -> Any:
    """The first ``n`` examples of ``dataset`` under a fixed permutation (nested in ``n``).

    ``None``: the whole set. More than the set holds is an error (one line), not a silent
    smaller study.
    """
    if n is None:
        return dataset
    if n > len(dataset):
        raise RecipeError(f"--train_subset_size {n} is larger than the training set "
                          f"({len(dataset)} examples after preprocessing)")  # fmt: skip
    return sample(dataset, n) if n < len(dataset) else dataset


def check_gen_gap_args(data_args: Any) -> None:
    """One-line errors for the three options (called by ``args.check_args``)."""
    n = getattr(data_args, "train_subset_size", None)
    if n is not None and n < 1:
        raise RecipeError(f"--train_subset_size {n} must be >= 1")
    target = getattr(data_args, "stop_at_train_loss", None)
    if target is not None and not (math.isfinite(target) and target > 0):
        raise RecipeError(f"--stop_at_train_loss {target} must be a finite loss > 0")


class GenGapCallback(TrainerCallback):
    """After each evaluation, evaluates the loss on the training (sub)set; may stop training.

    Adds ``train_subset_loss`` and ``gen_gap`` to the evaluation's metrics (so the final
    ``eval_results.json`` / ``all_results.json`` hold them) and logs them as their own
    ``log_history`` entry at the same step. With ``stop_at`` it sets
    ``should_training_stop`` at the first evaluation reaching it, and records the step as
    ``stopped_at_train_loss_step``.
    """

    def __init__(self, trainer: Trainer, stop_at: float | None = None) -> None:
        self.trainer = trainer
        self.stop_at = stop_at
        self._inside = False
        self.stopped_step: int | None = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # noqa: ANN001
        if self._inside or metrics is None or "eval_loss" not in metrics:
            return  # our own evaluation, or the test split's (test_loss)
        self._inside = True
        try:
            sub = self.trainer.evaluate(self.trainer.train_dataset,
                                        metric_key_prefix=TRAIN_SUBSET_PREFIX)  # fmt: skip
        finally:
            self._inside = False
        loss = sub[TRAIN_SUBSET_LOSS]
        gap = metrics["eval_loss"] - loss
        metrics.update({TRAIN_SUBSET_LOSS: loss, GEN_GAP: gap})
        if state.log_history and TRAIN_SUBSET_LOSS in state.log_history[-1]:
            state.log_history[-1][GEN_GAP] = gap
        reached = self.stop_at is not None and math.isfinite(loss) and loss <= self.stop_at
        if reached and self.stopped_step is None and state.global_step < state.max_steps:
            self.stopped_step = state.global_step
            control.should_training_stop = True
            self.trainer.control.should_training_stop = True
            if state.log_history:
                state.log_history[-1][STOPPED_AT] = state.global_step
        if self.stopped_step is not None:
            metrics[STOPPED_AT] = self.stopped_step
        return control


def add_gen_gap(trainer: Trainer, data_args: Any) -> None:
    """Attach :class:`GenGapCallback` to ``trainer`` when the options ask for it."""
    stop_at = getattr(data_args, "stop_at_train_loss", None)
    if getattr(data_args, "eval_train_subset", False) or stop_at is not None:
        if trainer.args.eval_strategy == "no":
            raise RecipeError("--eval_train_subset/--stop_at_train_loss need periodic "
                              "evaluation (--eval_strategy steps)")  # fmt: skip
        trainer.add_callback(GenGapCallback(trainer, stop_at))
