"""CLion, "Cautious Lion" (Huang, Zhang, Chen, arXiv:2604.14587)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ._base import (
    DTensor,
    LionFamily,
    ParamsT,
    check_betas,
    check_lr,
    check_momentum_dtype,
    check_weight_decay,
)
from .functional import MODES, direction_min_abs, lion_clion_update

logger = logging.getLogger(__name__)

WARN_AFTER_STEPS = 100
"""CLion warns once if none of its first this-many steps took the sign branch."""


def check_nu(nu: float) -> None:
    if not (isinstance(nu, int | float) and math.isfinite(nu) and nu > 0):
        raise ValueError(f"invalid nu={nu!r}: must be a finite number > 0")


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"invalid mode={mode!r}: allowed are {', '.join(MODES)}")


class CLion(LionFamily):
    """Lion whose sign is applied only "cautiously": ``h(c)`` replaces ``sign(c)``.

    ``h(c) = sign(c)`` if the smallest non-zero ``abs(c)`` is at least ``nu``, else ``c``.
    ``mode`` says over what that minimum is taken:

    * ``"global"``: every coordinate of every parameter in every param group (the paper's
      definition; reduced across processes in distributed runs).
    * ``"tensor"``: each parameter tensor on its own.
    * ``"element"``: each coordinate on its own: ``sign(c_j)`` if ``abs(c_j) >= nu``.
    * ``"soft"``: ``clamp(c / nu, -1, 1)`` (this project's continuous extension).

    Caveat measured on GPT-2 (``../shared/CLION.md``): the smallest ``abs(c)`` over a whole
    model is ~1e-15, so ``global`` (and usually ``tensor``) mode never takes the sign
    branch and CLion becomes momentum SGD at Lion's small learning rate. Use
    ``mode="element"`` with ``nu`` ~1e-4..1e-5 for Lion-like training, or an SGD-sized
    ``lr`` for ``global``. The optimizer warns after 100 steps without a sign branch.

    Args:
        params: parameters or param groups (groups may set their own ``lr``, ``betas``,
            ``weight_decay``; with ``mode="global"`` all groups must share ``mode``/``nu``).
        lr, betas, weight_decay, maximize, foreach, momentum_dtype: as for
            :class:`clion_hf.Lion`.
        nu: the threshold; must be finite and > 0.
        mode: ``"global"``, ``"tensor"``, ``"element"`` or ``"soft"``.
        track_stats: record the per-step sign-branch fraction and min ``abs(c)`` on the
            device (see :meth:`last_step_stats`, :meth:`consume_stats`). Costs two small
            reductions per tensor in element/soft modes; nothing extra in global/tensor.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        nu: float = 1e-4,
        mode: str = "global",
        maximize: bool = False,
        foreach: bool | None = None,
        *,
        momentum_dtype: torch.dtype | None = None,
        track_stats: bool = True,
    ) -> None:
        check_lr(lr)
        check_betas(betas)
        check_weight_decay(weight_decay)
        check_nu(nu)
        check_mode(mode)
        check_momentum_dtype(momentum_dtype)
        defaults = dict(
            lr=lr, betas=tuple(betas), weight_decay=weight_decay, nu=float(nu), mode=mode,
            maximize=bool(maximize), foreach=foreach, momentum_dtype=momentum_dtype,
        )  # fmt: skip
        self.track_stats = track_stats
        super().__init__(params, defaults)
        self._check_groups()
        self._last: dict[str, Any] | None = None
        self._acc: dict[str, Tensor] | None = None
        self._steps_seen = 0
        self._warn_acc: dict[str, Tensor] | None = None
        self.warned = False

    # ---------------------------------------------------------------------- validation

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key, check in (("mode", check_mode), ("nu", check_nu), ("lr", check_lr),
                           ("weight_decay", check_weight_decay), ("betas", check_betas)):
            if key in param_group:
                check(param_group[key])
        super().add_param_group(param_group)
        if hasattr(self, "track_stats"):  # not during __init__'s own calls
            self._check_groups()

    def _check_groups(self) -> None:
        modes = {(g["mode"], g["nu"]) for g in self.param_groups}
        if any(g["mode"] == "global" for g in self.param_groups) and len(modes) > 1:
            raise ValueError(
                f"param groups disagree on (mode, nu): {sorted(modes)}; mode='global' takes "
                "one decision over all groups, so every group must use the same mode and nu"
            )

    # ---------------------------------------------------------------------- the step

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimization step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        gathered = [self._gather(g) for g in self.param_groups]
        groups = [(g, x) for g, x in zip(self.param_groups, gathered, strict=True) if x[1]]
        if not groups:
            return loss
        mode = groups[0][0]["mode"]
        sharded = any(isinstance(p, DTensor) for _, x in groups for p in x[0])

        # Pass 1 (global/tensor): the min |c| that decides the branch, on the device.
        mins: Tensor | None = None
        take: Tensor | None = None
        gmin: Tensor | None = None
        if mode in ("global", "tensor"):
            per_group = [
                direction_min_abs(
                    x[2], x[3], beta1=g["betas"][0], maximize=g["maximize"],
                    foreach=self._use_foreach(g, x[1]),
                )  # fmt: skip
                for g, x in groups
            ]
            mins = torch.cat(per_group)
            if mode == "tensor":
                if sharded:
                    mins = _all_reduce_min(mins)
                take = mins >= groups[0][0]["nu"]
            else:
                gmin = mins.amin()
                if _distributed():
                    # Every rank must take the same branch: under FSDP/ZeRO each holds a
                    # different shard of c. (Under DDP this is redundant but harmless.)
                    gmin = _all_reduce_min(gmin)
                take = (gmin >= groups[0][0]["nu"]).expand(mins.numel())

        counts, stat_mins, offset = [], [], 0
        for g, (_, params, grads, exp_avgs) in groups:
            n = len(params)
            out = lion_clion_update(
                params, grads, exp_avgs, lr=g["lr"], beta1=g["betas"][0], beta2=g["betas"][1],
                weight_decay=g["weight_decay"], mode=g["mode"], nu=g["nu"],
                take_sign=None if take is None else take[offset : offset + n],
                maximize=g["maximize"], foreach=self._use_foreach(g, params),
                stats=self.track_stats,
            )  # fmt: skip
            offset += n
            if out is not None:
                counts.append(out[0].to(mins.device if mins is not None else out[0].device))
                stat_mins.append(out[1])
        if self.track_stats:
            owners = [p for _, x in groups for p in x[0]]
            numels = [p.numel() for _, x in groups for p in x[1]]
            sign_count = torch.cat(counts)
            # Under sharding, element/soft statistics describe this rank's shard.
            tensor_min = mins if mins is not None else torch.cat(stat_mins)
            self._record(owners, numels, sign_count, tensor_min.to(sign_count.device), gmin)
        return loss

    # ---------------------------------------------------------------------- statistics

    def _record(
        self,
        owners: list[Tensor],
        numels: list[int],
        sign_count: Tensor,
        tensor_min: Tensor,
        global_min: Tensor | None,
    ) -> None:
        device = sign_count.device
        numel = torch.tensor(numels, dtype=torch.float32, device=device)
        total = max(sum(numels), 1)
        fraction = sign_count.sum() / total
        if global_min is not None:  # already reduced across ranks
            step_min = global_min
        else:
            step_min = tensor_min.amin() if tensor_min.numel() else torch.tensor(math.inf)
        self._last = dict(
            params=owners, numel=numel, sign_count=sign_count, tensor_min=tensor_min,
            sign_fraction=fraction, min_abs_c=step_min,
        )  # fmt: skip
        if self._acc is None:
            self._acc = dict(
                fraction_sum=torch.zeros((), device=device),
                min=torch.full((), math.inf, device=device),
                steps=torch.zeros((), device=device),
            )
        self._acc["fraction_sum"] += fraction
        self._acc["min"] = torch.minimum(self._acc["min"], step_min)
        self._acc["steps"] += 1
        self._check_never_signed(sign_count.sum(), step_min)

    def _check_never_signed(self, signed: Tensor, step_min: Tensor) -> None:
        """One warning if none of the first WARN_AFTER_STEPS steps took the sign branch."""
        if self.warned or self._steps_seen >= WARN_AFTER_STEPS:
            return
        self._steps_seen += 1
        if self._warn_acc is None:
            self._warn_acc = dict(signed=signed.clone(), lo=step_min.clone(), hi=step_min.clone())
        else:
            self._warn_acc["signed"] += signed
            self._warn_acc["lo"] = torch.minimum(self._warn_acc["lo"], step_min)
            self._warn_acc["hi"] = torch.maximum(self._warn_acc["hi"], step_min)
        if self._steps_seen < WARN_AFTER_STEPS:
            return
        # The only host sync CLion makes: once, at step WARN_AFTER_STEPS.
        if self._warn_acc["signed"].item() == 0:
            self.warned = True
            g = self.param_groups[0]
            lo, hi = self._warn_acc["lo"].item(), self._warn_acc["hi"].item()
            logger.warning(
                "CLion took the sign branch on none of its first %d steps (mode=%r, nu=%g): "
                "the per-step min abs(c) ranged %.3g..%.3g, below nu, so every update was "
                "momentum SGD at lr=%g. Try mode='element' (nu ~1e-4..1e-5), a smaller nu, "
                "or an SGD-sized learning rate.",
                WARN_AFTER_STEPS, g["mode"], g["nu"], lo, hi,
                g["lr"].item() if isinstance(g["lr"], Tensor) else g["lr"],
            )  # fmt: skip

    def last_step_stats(self, per_tensor: bool = False) -> dict[str, Any]:
        """Statistics of the last step, as Python floats (one host sync).

        ``sign_fraction``: fraction of coordinates that took the sign branch;
        ``min_abs_c``: smallest non-zero ``abs(c)`` over the step (``inf`` if ``c == 0``).
        With ``per_tensor``, also ``tensors``: a list of per-parameter dicts (in param
        group order) with ``shape``, ``sign_fraction`` and ``min_abs_c``.
        """
        if self._last is None:
            return {}
        last = self._last
        out: dict[str, Any] = {
            "sign_fraction": float(last["sign_fraction"]),
            "min_abs_c": float(last["min_abs_c"]),
        }
        if per_tensor:
            frac = (last["sign_count"] / last["numel"].clamp_min(1)).tolist()
            mins = last["tensor_min"].tolist()
            out["tensors"] = [
                {"shape": tuple(p.shape), "sign_fraction": f, "min_abs_c": m}
                for p, f, m in zip(last["params"], frac, mins, strict=True)
            ]
        return out

    def last_step_stats_tensors(self) -> dict[str, Tensor]:
        """``sign_fraction`` and ``min_abs_c`` of the last step as 0-d device tensors."""
        if self._last is None:
            return {}
        return {k: self._last[k] for k in ("sign_fraction", "min_abs_c")}

    def consume_stats(self) -> dict[str, float]:
        """Mean sign fraction and min ``abs(c)`` over the steps since the last call; resets.

        Meant for loggers (the Trainer callback calls it at each logging step).
        """
        if self._acc is None or float(self._acc["steps"]) == 0:
            return {}
        acc, self._acc = self._acc, None
        return {
            "sign_fraction": float(acc["fraction_sum"] / acc["steps"]),
            "min_abs_c": float(acc["min"]),
        }


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_min(t: Tensor) -> Tensor:
    if not _distributed():
        return t
    t = t.clone()
    # inf is a valid operand for MIN; gloo (CPU) and NCCL both support ReduceOp.MIN.
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t
