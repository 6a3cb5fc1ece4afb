"""CLion's statistics: the sign-branch fraction and min ``abs(c)`` per step, on the device.

:class:`StepStats` keeps them for one optimizer: what the last step did (overall and per
parameter), what the steps since the last read did (for loggers), and what the first
:data:`WARN_AFTER_STEPS` steps did (for the one warning that CLion is acting as momentum
SGD). Reading them is the only host sync; recording is in-place tensor updates only, so
that a step stays free of syncs (CUDA graphs) and survives ``torch.compile``.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor

from ._base import local
from ._math import Stats, stat_dtype

logger = logging.getLogger("clion_hf.optim.clion")  # the name users filter on

WARN_AFTER_STEPS = 100
"""CLion warns once if none of its first this-many steps took the sign branch."""

ELEMENT_SGD_FRACTION = 2e-4
"""Element mode warns when fewer than this fraction of coordinates took the sign branch over
its first WARN_AFTER_STEPS steps: it is then momentum SGD at the given lr. From the ν sweep
of docs/benchmarks/gen-gap-cpu-2026-11-29 (200 steps, 2 seeds each): ViT at ν=1e-2 signed
1.4e-4 of its coordinates and ended at training loss 1.600, global mode's (no sign branch)
1.604, Lion's 0.075; every point above it trained measurably better than global mode (GPT-2
at ν=1e-2: 5.2e-4 signed, loss 5.49 vs global 6.05 and Lion 5.12; ViT at ν=1e-3: 2.2e-2,
1.21). One workload's point below the threshold: a conservative bound, not a sharp one."""

SLOTS = 16
"""Index tensors kept for this many distinct sets of parameters with grads."""


class StepStats:
    """The statistics of one CLion optimizer, in buffers allocated once on its device.

    torch.compile drops attribute assignments made inside a compiled ``step`` on an
    optimizer, but keeps in-place updates of tensors the optimizer holds: so everything a
    step records lives in preallocated tensors, only ever updated in place. Minima are
    fp64 (exact for every compute dtype; fp32 on MPS), in tensors of shape (1,): dynamo
    takes a 0-d fp64 CPU tensor for a Python float, and an in-place update of one was
    dropped from the compiled step (torch 2.13).
    """

    def __init__(self, param_groups: list[dict[str, Any]]) -> None:
        self.groups = param_groups  # the optimizer's own list: warnings read mode, nu, lr
        self.params = [p for g in param_groups for p in g["params"]]
        device = self.params[0].device if self.params else torch.device("cpu")
        n, inf = len(self.params), math.inf
        self.warned = False
        self.eager_steps = 0
        self.index = {id(p): i for i, p in enumerate(self.params)}
        # (indices of the parameters with a gradient) -> those indices and their numels as
        # device tensors, so that a step makes no host-to-device copy (a sync, which would
        # also break CUDA-graph capture). A few sets recur (frozen layers, routed experts):
        # the most recent SLOTS are kept.
        self.slots: OrderedDict[tuple[int, ...], tuple[Tensor, float]] = OrderedDict()
        f32 = dict(dtype=torch.float32, device=device)
        f64 = dict(dtype=stat_dtype(device), device=device)
        one = (1,)  # the minima's shape: not 0-d (see above)
        # last step, per parameter (in param-group order) and overall
        self.sign_count = torch.zeros(n, **f32)
        # (local shards' element counts under FSDP2: what the update sees)
        self.numel = torch.tensor([float(local(p).numel()) for p in self.params], **f32)
        self.tensor_min_abs_c = torch.full((n,), inf, **f64)
        self.had_grad = torch.zeros(n, dtype=torch.bool, device=device)
        self.fraction, self.min = torch.zeros((), **f32), torch.full(one, inf, **f64)
        # since the last consume()
        self.acc_fraction, self.acc_steps = torch.zeros((), **f32), torch.zeros((), **f32)
        self.acc_min = torch.full(one, inf, **f64)
        # the first WARN_AFTER_STEPS steps, for the never-took-the-sign-branch warning
        self.steps, self.warn_signed = torch.zeros((), **f32), torch.zeros((), **f32)
        self.warn_numel = torch.zeros((), **f32)
        self.warn_lo, self.warn_hi = torch.full(one, inf, **f64), torch.full(one, -inf, **f64)

    def _slot(self, owners: list[Tensor], numels: list[int]) -> tuple[Tensor | None, float]:
        """The device index tensor of these parameters (None: all of them) and their size."""
        key = tuple(self.index[id(p)] for p in owners)
        hit = self.slots.get(key)
        if hit is not None:
            self.slots.move_to_end(key)
            return hit
        full = len(key) == len(self.params)  # every parameter, in order
        idx = None if full else torch.tensor(key, dtype=torch.long).to(self.fraction.device)
        hit = self.slots[key] = (idx, float(sum(numels)))
        if len(self.slots) > SLOTS:
            self.slots.popitem(last=False)
        return hit

    def record(self, owners: list[Tensor], numels: list[int], results: list[Stats],
               global_min: Tensor | None) -> None:  # fmt: skip
        """One step: ``results`` per batch of ``owners`` (parameters with a gradient, in
        param-group order); ``global_min``: global mode's minimum reduced across ranks."""
        idx, total = self._slot(owners, numels)
        device = self.fraction.device
        if len(results) == 1:
            sign_count = results[0].count.to(device)
            tensor_mins = results[0].min_abs_c.to(self.min)
        else:
            sign_count = torch.cat([r.count.to(device) for r in results])
            tensor_mins = torch.cat([r.min_abs_c.to(self.min) for r in results])
        signed = sign_count.sum()
        fraction = signed / max(total, 1.0)
        # global: reduced across ranks already; else (element/soft under sharding: this
        # rank's shard) the min of the exact per-tensor minima
        step_min = tensor_mins.amin() if global_min is None else global_min.to(self.min)
        if idx is None:
            self.had_grad.fill_(True)
            self.sign_count.copy_(sign_count)
            self.tensor_min_abs_c.copy_(tensor_mins)
        else:  # index_fill_/index_copy_ with device indices: no host-to-device copies
            self.had_grad.fill_(False).index_fill_(0, idx, True)
            self.sign_count.zero_().index_copy_(0, idx, sign_count)
            self.tensor_min_abs_c.fill_(math.inf).index_copy_(0, idx, tensor_mins)
        self.fraction.copy_(fraction)
        self.min.copy_(step_min)
        self.acc_fraction.add_(fraction)
        self.acc_min.copy_(torch.minimum(self.acc_min, step_min))
        self.acc_steps.add_(1)
        compiling = torch.compiler.is_compiling()
        # steps >= eager_steps: past the window, an eager step knows it and skips the ops
        if compiling or self.eager_steps < WARN_AFTER_STEPS:
            in_window = self.steps < WARN_AFTER_STEPS
            self.warn_signed.add_(torch.where(in_window, signed, 0.0))
            self.warn_numel.add_(in_window.to(torch.float32) * total)
            self.warn_lo.copy_(torch.where(in_window, torch.minimum(self.warn_lo, step_min),
                                           self.warn_lo))  # fmt: skip
            self.warn_hi.copy_(torch.where(in_window, torch.maximum(self.warn_hi, step_min),
                                           self.warn_hi))  # fmt: skip
        self.steps.add_(1)
        if not compiling:
            # The only host syncs CLion makes in eager steps: at step 1 (global/tensor
            # groups only) and once at step WARN_AFTER_STEPS.
            self.eager_steps += 1
            if self.eager_steps in (1, WARN_AFTER_STEPS) and _capturing():
                return  # a CUDA graph being captured cannot sync; the readers warn later
            if self.eager_steps == 1:
                self._check_first_step()
            elif self.eager_steps == WARN_AFTER_STEPS:
                self._maybe_warn()

    # ---------------------------------------------------------------------- readers

    def last_step(self, per_tensor: bool = False) -> dict[str, Any]:
        """See :meth:`clion_hf.CLion.last_step_stats`."""
        if float(self.steps) == 0:
            return {}
        self._maybe_warn()
        out: dict[str, Any] = {"sign_fraction": float(self.fraction),
                               "min_abs_c": float(self.min)}  # fmt: skip
        if per_tensor:
            frac = (self.sign_count / self.numel.clamp_min(1)).tolist()
            mins, had = self.tensor_min_abs_c.tolist(), self.had_grad.tolist()
            out["tensors"] = [
                {"shape": tuple(p.shape), "sign_fraction": f, "min_abs_c": m}
                for p, f, m, h in zip(self.params, frac, mins, had, strict=True)
                if h
            ]
        return out

    def last_step_tensors(self) -> dict[str, Tensor]:
        """See :meth:`clion_hf.CLion.last_step_stats_tensors`."""
        return {"sign_fraction": self.fraction, "min_abs_c": self.min.view(())}

    def consume(self) -> dict[str, float]:
        """See :meth:`clion_hf.CLion.consume_stats`."""
        if float(self.acc_steps) == 0:
            return {}
        self._maybe_warn()
        out = {"sign_fraction": float(self.acc_fraction / self.acc_steps),
               "min_abs_c": float(self.acc_min)}  # fmt: skip
        self.acc_fraction.zero_()
        self.acc_min.fill_(math.inf)
        self.acc_steps.zero_()
        return out

    # ---------------------------------------------------------------------- warnings

    def _lr_text(self) -> str:
        """The lr the user set (LR schedulers keep it as initial_lr), not the warm-up's."""
        g = self.groups[0]
        lr_set, lr_now = float(g.get("initial_lr", g["lr"])), float(g["lr"])
        return f"{lr_set:g}" + (f" (scheduled now: {lr_now:g})" if lr_now != lr_set else "")

    def _check_first_step(self) -> None:
        """Warn at once if a global/tensor first step took the sign branch nowhere.

        That is the usual case, not an accident: the smallest non-zero abs(c) over a model
        is ~1e-15 (1e-20..1e-15 in every committed CPU run), far below any useful nu, so
        the step is momentum SGD at a Lion-sized lr, which barely trains. Waiting for
        WARN_AFTER_STEPS would say nothing in short runs. One host sync, at step 1 only.
        """
        if self.warned or not any(g["mode"] in ("global", "tensor") for g in self.groups):
            return
        if float(self.warn_signed) != 0 or not math.isfinite(float(self.min)):
            return  # took the sign branch somewhere, or c == 0 everywhere: nothing to say
        self.warned = True  # once; the step-WARN_AFTER_STEPS check then stays silent
        g = self.groups[0]
        logger.warning(
            "clion_hf: CLion's first step took the sign branch on no coordinate (mode=%r, "
            "nu=%g): the smallest non-zero abs(c) was %.3g, below nu, so the update was "
            "momentum SGD at lr=%s, not Lion. With mode=%r this is the rule, not bad luck "
            "(min abs(c) over a model is ~1e-15), so at a Lion-sized lr training will barely "
            "move. Use an SGD-sized learning rate (0.025..3.2 were best in this package's "
            "benchmarks) or mode='element', which tests each coordinate (at nu = 1e-5 it signed "
            "55-85%% of coordinates there).",
            g["mode"], g["nu"], float(self.min), self._lr_text(), g["mode"],
        )  # fmt: skip

    def _maybe_warn(self) -> None:
        """One warning if none of the first WARN_AFTER_STEPS steps took the sign branch, or
        (element mode) fewer than ELEMENT_SGD_FRACTION of their coordinates did.

        Called at that step in eager mode, and by the readers (so compiled training loops,
        whose steps cannot sync, still get it at their next log).
        """
        if self.warned or float(self.steps) < WARN_AFTER_STEPS:
            return
        self.warned = True  # checked once, whatever the outcome
        g = self.groups[0]
        if float(self.warn_signed) == 0:
            logger.warning(
                "CLion took the sign branch on none of its first %d steps (mode=%r, nu=%g): "
                "the per-step min abs(c) ranged %.3g..%.3g, below nu, so every update was "
                "momentum SGD at lr=%s. Try mode='element' (nu ~1e-4..1e-5), a smaller nu, "
                "or an SGD-sized learning rate.",
                WARN_AFTER_STEPS, g["mode"], g["nu"], float(self.warn_lo),
                float(self.warn_hi), self._lr_text(),
            )  # fmt: skip
            return
        fraction = float(self.warn_signed) / max(float(self.warn_numel), 1.0)
        if fraction < ELEMENT_SGD_FRACTION and all(h["mode"] == "element" for h in self.groups):
            logger.warning(
                "clion_hf: CLion (mode='element', nu=%g) took the sign branch on %.2g%% of "
                "coordinates over its first %d steps, below %g%%: in this package's nu sweep "
                "element mode then trained like momentum SGD at lr=%s (like mode='global'), "
                "not like Lion. Use a smaller nu (1e-4..1e-5 signed 10-85%% there).",
                g["nu"], 100 * fraction, WARN_AFTER_STEPS, 100 * ELEMENT_SGD_FRACTION,
                self._lr_text(),
            )  # fmt: skip


def _capturing() -> bool:
    """Whether a CUDA graph is being captured on the current stream."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
