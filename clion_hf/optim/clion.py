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
    check_fused,
    check_lr,
    check_momentum_dtype,
    check_weight_decay,
)
from .functional import MODES, direction_min_abs, lion_clion_update
from .fused import fused_direction_min_abs, fused_update, stops_early

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
        lr, betas, weight_decay, maximize, foreach, momentum_dtype, fused: as for
            :class:`clion_hf.Lion`. The fused paths produce the same statistics.
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
        fused: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_fused(fused, foreach)
        check_betas(betas)
        check_weight_decay(weight_decay)
        check_nu(nu)
        check_mode(mode)
        check_momentum_dtype(momentum_dtype)
        defaults = dict(
            lr=lr, betas=tuple(betas), weight_decay=weight_decay, nu=float(nu), mode=mode,
            maximize=bool(maximize), foreach=foreach, momentum_dtype=momentum_dtype,
            fused=fused,
        )  # fmt: skip
        self.track_stats = track_stats
        super().__init__(params, defaults)
        self._check_groups()
        self._check_fused_devices()
        self.warned = False
        self._eager_steps = 0
        self._stats: dict[str, Tensor] = {}
        self._alloc_stats()

    # ---------------------------------------------------------------------- validation

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key, check in (("mode", check_mode), ("nu", check_nu), ("lr", check_lr),
                           ("weight_decay", check_weight_decay), ("betas", check_betas)):
            if key in param_group:
                check(param_group[key])
        super().add_param_group(param_group)
        if hasattr(self, "track_stats"):  # not during __init__'s own calls
            self._check_groups()
            self._alloc_stats()

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
        min_in_pass2 = False
        # Single-process fused CPU steps stop pass 1 at the first |c| below nu (the
        # decision is then known); the exact min for the statistics comes from pass 2.
        stop_early = (
            mode in ("global", "tensor") and not sharded and not _distributed()
            and all(self._use_fused(g, x[1]) and stops_early(x[1]) for g, x in groups)
        )  # fmt: skip
        if mode in ("global", "tensor"):
            per_group = [
                fused_direction_min_abs(
                    x[2], x[3], beta1=g["betas"][0], maximize=g["maximize"],
                    stop_below=g["nu"] if stop_early else None,
                    stop=("all" if mode == "global" else "tensor") if stop_early else None,
                )  # fmt: skip
                if self._use_fused(g, x[1])
                else direction_min_abs(
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
            # After an early exit the pass-1 values below nu are witnesses, not minima:
            # then pass 2 takes the exact ones (on CPU this check costs no sync).
            min_in_pass2 = (
                stop_early and self.track_stats and bool((mins < groups[0][0]["nu"]).any())
            )

        counts, stat_mins, offset = [], [], 0
        for g, (_, params, grads, exp_avgs) in groups:
            n = len(params)
            kw = dict(
                lr=g["lr"], beta1=g["betas"][0], beta2=g["betas"][1],
                weight_decay=g["weight_decay"], mode=g["mode"], nu=g["nu"],
                take_sign=None if take is None else take[offset : offset + n],
                maximize=g["maximize"], stats=self.track_stats,
            )  # fmt: skip
            if min_in_pass2:
                out = fused_update(params, grads, exp_avgs, min_stats=True, **kw)
            elif self._use_fused(g, params):
                out = fused_update(params, grads, exp_avgs, **kw)
            else:
                out = lion_clion_update(
                    params, grads, exp_avgs, foreach=self._use_foreach(g, params), **kw
                )
            offset += n
            if out is not None:
                counts.append(out[0].to(mins.device if mins is not None else out[0].device))
                stat_mins.append(out[1])
        if self.track_stats:
            owners = [p for _, x in groups for p in x[0]]
            numels = [p.numel() for _, x in groups for p in x[1]]
            sign_count = torch.cat(counts)
            # Under sharding, element/soft statistics describe this rank's shard.
            tensor_min = torch.cat(stat_mins) if min_in_pass2 or mins is None else mins
            if min_in_pass2 and gmin is not None:
                gmin = tensor_min.amin()  # pass 1 gave a witness below nu, not the min
            self._record(owners, numels, sign_count, tensor_min.to(sign_count.device), gmin)
        return loss

    # ---------------------------------------------------------------------- statistics

    def _alloc_stats(self) -> None:
        """Statistics buffers, allocated up front and only ever updated in place.

        torch.compile drops attribute assignments made inside a compiled ``step`` on an
        optimizer, but keeps in-place updates of tensors the optimizer holds: so the
        statistics live in preallocated tensors (on the parameters' device).
        """
        params = [p for g in self.param_groups for p in g["params"]]
        device = params[0].device if params else torch.device("cpu")
        n, inf = len(params), math.inf
        self._stat_index = {id(p): i for i, p in enumerate(params)}
        self._stat_params = params
        # (indices of the parameters with a gradient) -> those indices and their numels as
        # device tensors: built once, since a host-to-device copy per step would be a sync
        # (and would break CUDA-graph capture of the step)
        self._stat_slots: dict[tuple[int, ...], tuple[Tensor, Tensor]] = {}
        f32 = dict(dtype=torch.float32, device=device)
        self._stats = dict(
            # last step, per parameter (in param-group order) and overall
            sign_count=torch.zeros(n, **f32), numel=torch.ones(n, **f32),
            tensor_min=torch.full((n,), inf, **f32),
            had_grad=torch.zeros(n, dtype=torch.bool, device=device),
            fraction=torch.zeros((), **f32), min=torch.full((), inf, **f32),
            # since the last consume_stats()
            acc_fraction=torch.zeros((), **f32), acc_min=torch.full((), inf, **f32),
            acc_steps=torch.zeros((), **f32),
            # the first WARN_AFTER_STEPS steps, for the never-took-the-sign-branch warning
            steps=torch.zeros((), **f32), warn_signed=torch.zeros((), **f32),
            warn_lo=torch.full((), inf, **f32), warn_hi=torch.full((), -inf, **f32),
        )  # fmt: skip

    def _record(
        self,
        owners: list[Tensor],
        numels: list[int],
        sign_count: Tensor,
        tensor_min: Tensor,
        global_min: Tensor | None,
    ) -> None:
        st = self._stats
        device = st["fraction"].device
        sign_count = sign_count.to(device)
        tensor_min = tensor_min.to(device)
        key = tuple(self._stat_index[id(p)] for p in owners)
        if key not in self._stat_slots:
            self._stat_slots[key] = (
                torch.tensor(key, dtype=torch.long).to(device),
                torch.tensor(numels, dtype=torch.float32).to(device),
            )
        idx, numel = self._stat_slots[key]
        fraction = sign_count.sum() / max(sum(numels), 1)
        if global_min is not None:  # already reduced across ranks
            step_min = global_min.to(st["min"].device)
        else:
            step_min = (
                tensor_min.amin() if tensor_min.numel() else torch.full_like(st["min"], math.inf)
            )
        # index_fill_/index_copy_ with device indices: no host-to-device copies per step
        st["had_grad"].fill_(False).index_fill_(0, idx, True)
        st["sign_count"].zero_().index_copy_(0, idx, sign_count)
        st["numel"].index_copy_(0, idx, numel)
        st["tensor_min"].fill_(math.inf).index_copy_(0, idx, tensor_min)
        st["fraction"].copy_(fraction)
        st["min"].copy_(step_min)
        st["acc_fraction"].add_(fraction)
        st["acc_min"].copy_(torch.minimum(st["acc_min"], step_min))
        st["acc_steps"].add_(1)
        in_window = st["steps"] < WARN_AFTER_STEPS
        st["warn_signed"].add_(torch.where(in_window, sign_count.sum(), 0.0))
        st["warn_lo"].copy_(torch.where(in_window, torch.minimum(st["warn_lo"], step_min),
                                        st["warn_lo"]))  # fmt: skip
        st["warn_hi"].copy_(torch.where(in_window, torch.maximum(st["warn_hi"], step_min),
                                        st["warn_hi"]))  # fmt: skip
        st["steps"].add_(1)
        if not torch.compiler.is_compiling():
            # The only host sync CLion makes in eager steps: once, at step WARN_AFTER_STEPS.
            self._eager_steps += 1
            if self._eager_steps == WARN_AFTER_STEPS:
                self._maybe_warn()

    def _maybe_warn(self) -> None:
        """One warning if none of the first WARN_AFTER_STEPS steps took the sign branch.

        Called at that step in eager mode, and by the statistics readers (so compiled
        training loops, whose steps cannot sync, still get it at their next log).
        """
        st = self._stats
        if self.warned or float(st["steps"]) < WARN_AFTER_STEPS:
            return
        self.warned = True  # checked once, whatever the outcome
        if float(st["warn_signed"]) == 0:
            g = self.param_groups[0]
            logger.warning(
                "CLion took the sign branch on none of its first %d steps (mode=%r, nu=%g): "
                "the per-step min abs(c) ranged %.3g..%.3g, below nu, so every update was "
                "momentum SGD at lr=%g. Try mode='element' (nu ~1e-4..1e-5), a smaller nu, "
                "or an SGD-sized learning rate.",
                WARN_AFTER_STEPS, g["mode"], g["nu"], float(st["warn_lo"]),
                float(st["warn_hi"]), float(g["lr"]),
            )  # fmt: skip

    def last_step_stats(self, per_tensor: bool = False) -> dict[str, Any]:
        """Statistics of the last step, as Python floats (one host sync).

        ``sign_fraction``: fraction of coordinates that took the sign branch;
        ``min_abs_c``: smallest non-zero ``abs(c)`` over the step (``inf`` if ``c == 0``).
        With ``per_tensor``, also ``tensors``: a list of per-parameter dicts (in param
        group order, parameters that had a gradient) with ``shape``, ``sign_fraction``
        and ``min_abs_c``. Empty before the first step.
        """
        st = self._stats
        if not st or float(st["steps"]) == 0:
            return {}
        self._maybe_warn()
        out: dict[str, Any] = {
            "sign_fraction": float(st["fraction"]),
            "min_abs_c": float(st["min"]),
        }
        if per_tensor:
            frac = (st["sign_count"] / st["numel"].clamp_min(1)).tolist()
            mins, had = st["tensor_min"].tolist(), st["had_grad"].tolist()
            out["tensors"] = [
                {"shape": tuple(p.shape), "sign_fraction": f, "min_abs_c": m}
                for p, f, m, h in zip(self._stat_params, frac, mins, had, strict=True)
                if h
            ]
        return out

    def last_step_stats_tensors(self) -> dict[str, Tensor]:
        """``sign_fraction`` and ``min_abs_c`` of the last step as 0-d device tensors."""
        return {"sign_fraction": self._stats["fraction"], "min_abs_c": self._stats["min"]}

    def consume_stats(self) -> dict[str, float]:
        """Mean sign fraction and min ``abs(c)`` over the steps since the last call; resets.

        Meant for loggers (the Trainer callback calls it at each logging step).
        """
        st = self._stats
        if not st or float(st["acc_steps"]) == 0:
            return {}
        self._maybe_warn()
        out = {
            "sign_fraction": float(st["acc_fraction"] / st["acc_steps"]),
            "min_abs_c": float(st["acc_min"]),
        }
        st["acc_fraction"].zero_()
        st["acc_min"].fill_(math.inf)
        st["acc_steps"].zero_()
        return out


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_min(t: Tensor) -> Tensor:
    if not _distributed():
        return t
    t = t.clone()
    # inf is a valid operand for MIN; gloo (CPU) and NCCL both support ReduceOp.MIN.
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t
