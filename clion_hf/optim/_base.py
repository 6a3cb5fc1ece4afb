"""What Lion and CLion share: param-group validation, state, gathering, (de)serialization."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import kernels
from .functional import Impl, choose_impl
from .validate import check_group, check_no_overlap, state_problem

try:  # FSDP2 shards parameters as DTensors; the update runs on the local shards.
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - torch built without distributed
    DTensor = ()  # type: ignore[assignment,misc]

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]

logger = logging.getLogger(__name__)


def local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (FSDP2), or the tensor itself."""
    return t.to_local() if isinstance(t, DTensor) else t


@dataclass
class Batch:
    """The parameters of one param group that have a gradient this step."""

    group: dict[str, Any]
    owners: list[Tensor]  # the parameters themselves (DTensors under FSDP2)
    params: list[Tensor]  # their local tensors
    grads: list[Tensor]
    exp_avgs: list[Tensor]
    impl: Impl


def run_closure(closure: Callable[[], Any] | None) -> Any:
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class LionFamily(Optimizer):
    """Base class: one momentum buffer ``exp_avg`` per parameter, sign-like updates.

    Every param group is validated when it is added (constructor, ``add_param_group``) or
    loaded (``load_state_dict``), before anything changes: a bad group is refused whole.
    """

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        super().__init__(params, check_group(defaults))
        # lr = 0 is allowed (a schedule may start there) but a whole run at 0 trains
        # nothing, silently: say so once, when the optimizer is made
        zero = [i for i, g in enumerate(self.param_groups) if float(g["lr"]) == 0.0]
        if zero:
            logger.warning(
                "clion_hf: %s got lr=0 (param group%s %s): its steps leave the parameters "
                "unchanged (weight decay is scaled by lr too); set a learning rate > 0",
                type(self).__name__, "s" if len(zero) > 1 else "",
                ", ".join(map(str, zero)),
            )  # fmt: skip

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    # ---------------------------------------------------------------------- validation

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As torch.optim's, but the group is checked whole before it is appended."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        params = param_group.get("params")
        if isinstance(params, Tensor):
            params = [params]
        elif params is not None and not isinstance(params, set):
            params = list(params)  # a generator is read once: keep what was read
        group = {**self.defaults, **param_group, "params": params}
        group.pop("params")
        where = f"param_groups[{len(self.param_groups)}]"
        checked = check_group(group, where)
        self._check_new_group(checked)
        if isinstance(params, list):
            tensors = [p for p in params if isinstance(p, Tensor)]  # torch refuses the others
            check_no_overlap([p for g in self.param_groups for p in g["params"]] + tensors)
            if checked.get("fused"):
                for p in tensors:
                    self._check_fused_device(p.device)
        param_group.update({k: checked[k] for k in param_group if k != "params"})
        param_group["params"] = params
        super().add_param_group(param_group)

    def _check_new_group(self, group: dict[str, Any]) -> None:
        """Checks that involve the other groups (CLion: global mode's agreement)."""

    @staticmethod
    def _check_fused_device(device: torch.device) -> None:
        reason = kernels.unavailable_reason(device)
        if reason is not None:
            raise ValueError(f"fused=True is not available for parameters on {device}: "
                             f"{reason}; use fused=None or fused=False")  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch.optim's, after checking every group and momentum; momentum keeps its dtype.

        Nothing is changed if a loaded group or momentum is refused (one line naming it).
        torch.optim would cast loaded floating state to each parameter's dtype, which would
        turn the fp32 momentum of bf16 parameters into bf16 on resume (and lose precision).
        """
        saved_groups = state_dict["param_groups"]
        checked = [
            check_group({**self.defaults, **{k: v for k, v in g.items() if k != "params"}},
                        f"loaded param_groups[{i}]")  # fmt: skip
            for i, g in enumerate(saved_groups)
        ]
        self._check_loaded_groups(checked)
        ids = [i for g in saved_groups for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        saved = {k: v.get("exp_avg") for k, v in state_dict["state"].items()}
        if len(ids) == len(params):  # else torch.optim raises its own error below
            names = [f"param_groups[{gi}]['params'][{pi}]"
                     for gi, g in enumerate(self.param_groups) for pi in range(len(g["params"]))]
            for i, p, name in zip(ids, params, names, strict=True):
                if saved.get(i) is None:
                    continue
                problem = state_problem(p, saved[i], device=False)  # loading moves it to p's
                if problem is not None:
                    raise ValueError(f"loaded state of {name} (shape {tuple(p.shape)}): {problem}")
        before = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        super().load_state_dict(state_dict)
        # torch.optim restores each group's settings from the checkpoint; what they were
        # before lets a resumed Trainer give its command line's back (integrations._callback).
        self._settings_before_load = before
        for i, p in zip(ids, params, strict=True):
            m, state = saved.get(i), self.state.get(p)
            if isinstance(m, Tensor) and state and state["exp_avg"].dtype != m.dtype:
                state["exp_avg"] = m.to(device=state["exp_avg"].device, copy=True)

    def _check_loaded_groups(self, groups: list[dict[str, Any]]) -> None:
        """Checks across loaded groups (CLion: global mode's agreement)."""

    # ---------------------------------------------------------------------- the step

    def _momentum_dtype(self, p: Tensor, group: dict[str, Any]) -> torch.dtype:
        dt = group["momentum_dtype"]
        if dt is None:
            # Momentum is never stored coarser than fp32 unless asked for: bf16 momentum
            # drops small gradients (1 - beta2 = 0.01 of them) to nothing.
            dt = torch.float64 if p.dtype in (torch.float64, torch.complex128) else torch.float32
        if p.is_complex():
            dt = {torch.float64: torch.complex128}.get(dt, torch.complex64)
        return dt

    def _gather(self, group: dict[str, Any]) -> Batch:
        """Parameters of ``group`` with a gradient, their (local) tensors, grads and momenta."""
        owners, params, grads, exp_avgs = [], [], [], []
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients; "
                                   "use a dense embedding (sparse=False)")  # fmt: skip
            state = self.state[p]
            if len(state) == 0:
                state["exp_avg"] = torch.zeros_like(
                    p, dtype=self._momentum_dtype(p, group), memory_format=torch.preserve_format
                )
            owners.append(p)
            if isinstance(p, DTensor):  # FSDP2: its grad and momentum are DTensors too
                params.append(p.to_local())
                grads.append(local(grad))
                exp_avgs.append(local(state["exp_avg"]))
            else:
                params.append(p)
                grads.append(grad)
                exp_avgs.append(state["exp_avg"])
        impl = choose_impl(params, foreach=group["foreach"], fused=group["fused"])
        return Batch(group, owners, params, grads, exp_avgs, impl)

    def state_bytes(self) -> int:
        """Bytes held in optimizer state tensors (momentum buffers)."""
        return sum(
            t.numel() * t.element_size()
            for s in self.state.values()
            for t in s.values()
            if isinstance(t, Tensor)
        )
