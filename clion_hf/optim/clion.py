"""CLion, "Cautious Lion" (Huang, Zhang, Chen, arXiv:2604.14587)."""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from . import functional as F
from . import kernels
from ._base import Batch, DTensor, LionFamily, ParamsT, run_closure
from .validate import check_flag, check_groups_agree

logger = logging.getLogger(__name__)

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

_SLOTS = 16
"""Statistics index tensors kept for this many distinct sets of parameters with grads."""


class CLion(LionFamily):
    """Lion whose sign is applied only "cautiously": ``h(c)`` replaces ``sign(c)``.

    ``h(c) = sign(c)`` if the smallest non-zero ``abs(c)`` is at least ``nu``, else ``c``.
    ``mode`` says over what that minimum is taken:

    * ``"global"``: every coordinate of every parameter in every param group (the paper's
      definition; reduced across processes in distributed runs).
    * ``"tensor"``: each parameter tensor on its own.
    * ``"element"``: each coordinate on its own: ``sign(c_j)`` if ``abs(c_j) >= nu``.
    * ``"soft"``: ``clamp(c / nu, -1, 1)`` (this project's continuous extension).

    The minimum is compared with ``nu`` in the compute dtype (fp64 for fp64 parameters,
    else fp32), as ``element`` compares each coordinate.

    Caveat, measured on a 2-layer GPT-2 before this package existed: the smallest
    ``abs(c)`` over a whole model is ~1e-15, so ``global`` (and usually ``tensor``) mode
    never takes the sign branch and CLion becomes momentum SGD at Lion's small learning
    rate (it did not train at lr=3e-4). Use ``mode="element"`` with ``nu`` ~1e-4..1e-5
    for Lion-like training, or an SGD-sized ``lr`` for ``global``. The optimizer warns
    (logging WARNING) at its first step when a ``global``/``tensor`` step took the sign
    branch nowhere, and after 100 steps without a sign branch in any mode (once).

    A NaN or infinite gradient makes the parameter's coordinate NaN (see
    :mod:`clion_hf.optim.functional`), on every implementation.

    Args:
        params: parameters or param groups. Each group may set its own ``lr``, ``betas``,
            ``weight_decay``, ``mode`` and ``nu`` and is decided with them; with
            ``mode="global"`` all groups must share ``mode`` and ``nu`` (one decision).
            Parameters must not share memory (overlapping views are refused).
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
        defaults = dict(
            lr=lr, betas=betas, weight_decay=weight_decay, nu=nu, mode=mode, maximize=maximize,
            foreach=foreach, momentum_dtype=momentum_dtype, fused=fused,
        )  # fmt: skip
        self.track_stats = check_flag("track_stats", track_stats)
        super().__init__(params, defaults)
        self._alloc_stats()

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "track_stats": self.track_stats}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # deepcopy/pickle: what torch.optim keeps, then the statistics rebuilt (fresh)
        # pickling passes track_stats; torch's load_state_dict calls this without it
        self.track_stats = state.pop("track_stats", getattr(self, "track_stats", True))
        super().__setstate__(state)
        self._alloc_stats()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if hasattr(self, "_stats"):  # not during __init__'s own calls
            self._alloc_stats()

    def _check_new_group(self, group: dict[str, Any]) -> None:
        check_groups_agree([*self.param_groups, group])

    def _check_loaded_groups(self, groups: list[dict[str, Any]]) -> None:
        check_groups_agree(groups)

    # ---------------------------------------------------------------------- the step

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimization step."""
        loss = run_closure(closure)
        batches = [b for b in map(self._gather, self.param_groups) if b.params]
        decisions, global_min = self._decide(batches)
        results = [
            F.clion(b.params, b.grads, b.exp_avgs, lr=b.group["lr"], beta1=b.group["betas"][0],
                    beta2=b.group["betas"][1], weight_decay=b.group["weight_decay"],
                    nu=b.group["nu"], mode=b.group["mode"], maximize=b.group["maximize"],
                    take=take, min_abs=min_abs, stats=self.track_stats, impl=b.impl)
            for b, (take, min_abs) in zip(batches, decisions, strict=True)
        ]  # fmt: skip
        if self.track_stats and batches:
            self._record(batches, results, global_min)
        return loss

    def _decide(
        self, batches: list[Batch]
    ) -> tuple[list[tuple[Tensor | None, Tensor | None]], Tensor | None]:
        """Per batch ``(take, exact pass-1 minima or None)``; global mode's reduced min.

        ``tensor`` groups decide each tensor with their own ``nu``; ``element``/``soft``
        need no pass 1. ``global`` takes one MIN over every group and, in distributed
        runs, every rank: a rank without gradients joins the all-reduce with +inf, so the
        others never wait for it. Single-process fused CPU steps stop pass 1 at the first
        ``abs(c)`` below ``nu`` (the decision is then known); the exact minima then come
        from the update pass (``min_abs=None``).
        """
        is_global = self.param_groups[0]["mode"] == "global"  # then every group is
        two_pass = [b for b in batches if b.group["mode"] in ("global", "tensor")]
        reduce = _distributed() and (is_global or any(isinstance(p, DTensor)
                                                      for b in two_pass for p in b.owners))
        if not two_pass and not (is_global and reduce):
            return [(None, None)] * len(batches), None
        early = not reduce and not torch.compiler.is_compiling() and all(
            b.impl == "fused" and kernels.stops_early(b.params[0].device) for b in two_pass
        )
        mins: dict[int, Tensor] = {}
        exact = True
        all_dtypes = {p.dtype for b in two_pass for p in b.params}
        for b in two_pass:
            # stop below the smallest threshold that a tensor of the decision compares with
            dtypes = all_dtypes if is_global else {p.dtype for p in b.params}
            stop_below = min(F.rounded(b.group["nu"], F.compute_dtype(d))
                             for d in dtypes) if early else None  # fmt: skip
            if early and is_global and not exact:  # a witness below nu: decision known
                mins[id(b)] = torch.full((len(b.params),), math.inf, dtype=torch.float64)
                continue
            mins[id(b)] = F.direction_min_abs(
                b.grads, b.exp_avgs, beta1=b.group["betas"][0], maximize=b.group["maximize"],
                impl=b.impl, stop_below=stop_below,
                stop=("all" if is_global else "tensor") if early else None,
            )  # fmt: skip
            if early:  # on CPU: reading the flag costs no sync
                exact = exact and not bool((mins[id(b)] < stop_below).any())
        global_min = None
        if is_global:
            device = self._stats["min"].device
            low = torch.full((), math.inf, dtype=F.stat_dtype(device), device=device)
            if mins:
                low = torch.cat([m.to(device) for m in mins.values()]).amin()
            if reduce:
                global_min = low = _all_reduce_min(low)
            take = F.take_sign(low.reshape(1), self.param_groups[0]["nu"], list(all_dtypes),
                               "global")  # fmt: skip
        out = []
        for b in batches:
            if id(b) not in mins:
                out.append((None, None))
                continue
            m = mins[id(b)]
            if is_global:
                t = take.to(m.device).expand(len(b.params))
            else:
                if reduce:  # FSDP2: each rank holds a shard of every tensor
                    m = _all_reduce_min(m)
                t = F.take_sign(m, b.group["nu"], [p.dtype for p in b.params], "tensor")
            out.append((t, m if exact else None))
        return out, global_min

    # ---------------------------------------------------------------------- statistics

    def _alloc_stats(self) -> None:
        """Statistics buffers, allocated up front and only ever updated in place.

        torch.compile drops attribute assignments made inside a compiled ``step`` on an
        optimizer, but keeps in-place updates of tensors the optimizer holds: so the
        statistics live in preallocated tensors (on the parameters' device). Minima are
        kept in fp64 (exact for every compute dtype; fp32 on MPS), in 1-element tensors of
        shape (1,): dynamo takes a 0-d fp64 CPU tensor for a Python float, and an in-place
        update of one was dropped from the compiled step (torch 2.13; issue 21 item 9).
        """
        params = [p for g in self.param_groups for p in g["params"]]
        device = params[0].device if params else torch.device("cpu")
        n, inf = len(params), math.inf
        self.warned = False
        self._eager_steps = 0
        self._stat_index = {id(p): i for i, p in enumerate(params)}
        self._stat_params = params
        # (indices of the parameters with a gradient) -> those indices and their numels as
        # device tensors, so that a step makes no host-to-device copy (a sync, which would
        # also break CUDA-graph capture). A few sets recur (frozen layers, routed experts):
        # the most recent _SLOTS are kept.
        self._stat_slots: OrderedDict[tuple[int, ...], tuple[Tensor, Tensor]] = OrderedDict()
        f32 = dict(dtype=torch.float32, device=device)
        f64 = dict(dtype=F.stat_dtype(device), device=device)
        one = (1,)  # the minima's shape: not 0-d (see above)
        self._stats = dict(
            # last step, per parameter (in param-group order) and overall
            sign_count=torch.zeros(n, **f32), numel=torch.ones(n, **f32),
            tensor_min=torch.full((n,), inf, **f64),
            had_grad=torch.zeros(n, dtype=torch.bool, device=device),
            fraction=torch.zeros((), **f32), min=torch.full(one, inf, **f64),
            # since the last consume_stats()
            acc_fraction=torch.zeros((), **f32), acc_min=torch.full(one, inf, **f64),
            acc_steps=torch.zeros((), **f32),
            # the first WARN_AFTER_STEPS steps, for the never-took-the-sign-branch warning
            steps=torch.zeros((), **f32), warn_signed=torch.zeros((), **f32),
            warn_numel=torch.zeros((), **f32),
            warn_lo=torch.full(one, inf, **f64), warn_hi=torch.full(one, -inf, **f64),
        )  # fmt: skip

    def _slots(self, owners: list[Tensor], numels: list[int]) -> tuple[Tensor, Tensor]:
        key = tuple(self._stat_index[id(p)] for p in owners)
        if key in self._stat_slots:
            self._stat_slots.move_to_end(key)
        else:
            device = self._stats["fraction"].device
            self._stat_slots[key] = (
                torch.tensor(key, dtype=torch.long).to(device),
                torch.tensor(numels, dtype=torch.float32).to(device),
            )
            if len(self._stat_slots) > _SLOTS:
                self._stat_slots.popitem(last=False)
        return self._stat_slots[key]

    def _record(self, batches: list[Batch], results: list[Any], global_min: Tensor | None) -> None:
        st = self._stats
        device = st["fraction"].device
        numels = [p.numel() for b in batches for p in b.params]
        idx, numel = self._slots([p for b in batches for p in b.owners], numels)
        sign_count = torch.cat([r.count.to(device) for r in results])
        tensor_min = torch.cat([r.min_abs.to(st["min"]) for r in results])
        fraction = sign_count.sum() / max(sum(numels), 1)
        # global: reduced across ranks already; else (element/soft under sharding: this
        # rank's shard) the min of the exact per-tensor minima
        step_min = tensor_min.amin() if global_min is None else global_min.to(st["min"])
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
        st["warn_numel"].add_(in_window.to(torch.float32) * float(sum(numels)))
        st["warn_lo"].copy_(torch.where(in_window, torch.minimum(st["warn_lo"], step_min),
                                        st["warn_lo"]))  # fmt: skip
        st["warn_hi"].copy_(torch.where(in_window, torch.maximum(st["warn_hi"], step_min),
                                        st["warn_hi"]))  # fmt: skip
        st["steps"].add_(1)
        if not torch.compiler.is_compiling():
            # The only host syncs CLion makes in eager steps: at step 1 (global/tensor
            # groups only) and once at step WARN_AFTER_STEPS.
            self._eager_steps += 1
            if self._eager_steps in (1, WARN_AFTER_STEPS) and _capturing():
                return  # a CUDA graph being captured cannot sync; the readers warn later
            if self._eager_steps == 1:
                self._check_first_step()
            elif self._eager_steps == WARN_AFTER_STEPS:
                self._maybe_warn()

    def _lr_text(self) -> str:
        """The lr the user set (LR schedulers keep it as initial_lr), not the warm-up's."""
        g = self.param_groups[0]
        lr_set, lr_now = float(g.get("initial_lr", g["lr"])), float(g["lr"])
        return f"{lr_set:g}" + (f" (scheduled now: {lr_now:g})" if lr_now != lr_set else "")

    def _check_first_step(self) -> None:
        """Warn at once if a global/tensor first step took the sign branch nowhere.

        That is the usual case, not an accident: the smallest non-zero abs(c) over a model
        is ~1e-15 (1e-20..1e-15 in every committed CPU run), far below any useful nu, so
        the step is momentum SGD at a Lion-sized lr, which barely trains. Waiting for
        WARN_AFTER_STEPS would say nothing in short runs. One host sync, at step 1 only.
        """
        st = self._stats
        if self.warned or not any(g["mode"] in ("global", "tensor") for g in self.param_groups):
            return
        if float(st["warn_signed"]) != 0 or not math.isfinite(float(st["min"])):
            return  # took the sign branch somewhere, or c == 0 everywhere: nothing to say
        self.warned = True  # once; the step-WARN_AFTER_STEPS check then stays silent
        g = self.param_groups[0]
        logger.warning(
            "clion_hf: CLion's first step took the sign branch on no coordinate (mode=%r, "
            "nu=%g): the smallest non-zero abs(c) was %.3g, below nu, so the update was "
            "momentum SGD at lr=%s, not Lion. With mode=%r this is the rule, not bad luck "
            "(min abs(c) over a model is ~1e-15), so at a Lion-sized lr training will barely "
            "move. Use an SGD-sized learning rate (0.025..3.2 were best in this package's "
            "benchmarks) or mode='element', which tests each coordinate (at nu = 1e-5 it signed "
            "55-85%% of coordinates there).",
            g["mode"], g["nu"], float(st["min"]), self._lr_text(), g["mode"],
        )  # fmt: skip

    def _maybe_warn(self) -> None:
        """One warning if none of the first WARN_AFTER_STEPS steps took the sign branch, or
        (element mode) fewer than ELEMENT_SGD_FRACTION of their coordinates did.

        Called at that step in eager mode, and by the statistics readers (so compiled
        training loops, whose steps cannot sync, still get it at their next log).
        """
        st = self._stats
        if self.warned or float(st["steps"]) < WARN_AFTER_STEPS:
            return
        self.warned = True  # checked once, whatever the outcome
        if float(st["warn_signed"]) == 0:
            g = self.param_groups[0]
            lr_text = self._lr_text()
            logger.warning(
                "CLion took the sign branch on none of its first %d steps (mode=%r, nu=%g): "
                "the per-step min abs(c) ranged %.3g..%.3g, below nu, so every update was "
                "momentum SGD at lr=%s. Try mode='element' (nu ~1e-4..1e-5), a smaller nu, "
                "or an SGD-sized learning rate.",
                WARN_AFTER_STEPS, g["mode"], g["nu"], float(st["warn_lo"]),
                float(st["warn_hi"]), lr_text,
            )  # fmt: skip
            return
        fraction = float(st["warn_signed"]) / max(float(st["warn_numel"]), 1.0)
        if fraction < ELEMENT_SGD_FRACTION and all(
            g["mode"] == "element" for g in self.param_groups
        ):
            g = self.param_groups[0]
            logger.warning(
                "clion_hf: CLion (mode='element', nu=%g) took the sign branch on %.2g%% of "
                "coordinates over its first %d steps, below %g%%: in this package's nu sweep "
                "element mode then trained like momentum SGD at lr=%s (like mode='global'), "
                "not like Lion. Use a smaller nu (1e-4..1e-5 signed 10-85%% there).",
                g["nu"], 100 * fraction, WARN_AFTER_STEPS, 100 * ELEMENT_SGD_FRACTION,
                self._lr_text(),
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
        return {"sign_fraction": self._stats["fraction"], "min_abs_c": self._stats["min"].view(())}

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


def _capturing() -> bool:
    """Whether a CUDA graph is being captured on the current stream."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_min(t: Tensor) -> Tensor:
    if not _distributed():
        return t
    t = t.clone()
    # inf is a valid operand for MIN; gloo (CPU) and NCCL both support ReduceOp.MIN.
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t
