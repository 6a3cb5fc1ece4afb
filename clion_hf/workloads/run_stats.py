"""Trainer callbacks that record what the benchmark compares besides the loss."""

from __future__ import annotations

import resource
import sys
import time

import torch
from transformers import TrainerCallback


def peak_memory_mb() -> float:
    """Peak CUDA memory allocated by this process, else its peak resident set size, in MiB."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def optimizer_state_mb(optimizer) -> float:
    """Bytes of every tensor held in ``optimizer.state`` (this process's shard), in MiB."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                total += value.numel() * value.element_size()
    return total / 2**20


def _now() -> float:
    """A timestamp after the device finished queued work (CUDA kernels run asynchronously)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


class RunStatsCallback(TrainerCallback):
    """Adds to every log entry ``elapsed_s`` (wall time since training began, evaluations
    included), ``train_s`` (time inside training steps: forward, backward, clipping,
    optimizer and scheduler; evaluation, logging and data loading excluded),
    ``optimizer_s`` (time inside ``optimizer.step()`` alone) and ``peak_mem_mb``; and
    ``optimizer_state_mb`` to the first entry logged once the optimizer holds state.

    The values land in ``trainer_state.json``'s ``log_history`` (train and eval entries).
    On CUDA the step and optimizer timers synchronize the device, so they measure the work,
    not its launch.
    """

    def __init__(self) -> None:
        self.start: float | None = None
        self.state_recorded = False
        self.train_s = 0.0
        self.optimizer_s = 0.0
        self._step_t: float | None = None
        self._opt_t: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_t = _now()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._opt_t = _now()

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self._opt_t is not None:
            self.optimizer_s += _now() - self._opt_t
            self._opt_t = None

    def on_step_end(self, args, state, control, **kwargs):
        if self._step_t is not None:
            self.train_s += _now() - self._step_t
            self._step_t = None

    def on_log(self, args, state, control, logs=None, optimizer=None, **kwargs):
        stats: dict[str, float] = {"peak_mem_mb": round(peak_memory_mb(), 2)}
        if self.start is not None:
            stats["elapsed_s"] = round(time.perf_counter() - self.start, 3)
            stats["train_s"] = round(self.train_s, 4)
            stats["optimizer_s"] = round(self.optimizer_s, 4)
        if not self.state_recorded and optimizer is not None and len(optimizer.state) > 0:
            stats["optimizer_state_mb"] = round(optimizer_state_mb(optimizer), 4)
            self.state_recorded = True
        # Trainer.log appended a copy of `logs` to log_history before calling us. `logs`
        # itself is left alone: it is also the train() result, and log_metrics() would
        # misformat a float "*_mem_*" key.
        if state.log_history:
            state.log_history[-1].update(stats)

    def on_train_end(self, args, state, control, optimizer=None, **kwargs):
        # An optimizer without state (e.g. plain SGD) still gets its 0 MB recorded
        if not self.state_recorded and optimizer is not None and state.log_history:
            state.log_history[-1]["optimizer_state_mb"] = round(optimizer_state_mb(optimizer), 4)
            self.state_recorded = True
