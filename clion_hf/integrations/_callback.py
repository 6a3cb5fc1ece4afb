"""The Trainer callback that reports what Lion / CLion do (added to every Trainer)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers.trainer_callback import TrainerCallback

from ..optim import CLion, Lion
from ..optim._base import LionFamily
from ._log import logger
from ._names import MIN_ABS_C_KEY, OPTIM_VALUES, SIGN_FRACTION_KEY, optim_value


def unwrap_optimizer(optimizer: Any) -> Any:
    """The optimizer inside accelerate's ``AcceleratedOptimizer`` (or DeepSpeed's) wrapper."""
    for _ in range(8):  # wrappers nest a few levels at most
        if optimizer is None or isinstance(optimizer, LionFamily):
            break
        inner = getattr(optimizer, "optimizer", None)
        if inner is None or inner is optimizer:
            break
        optimizer = inner
    return optimizer


def describe(optimizer: LionFamily) -> str:
    """One line with the effective settings of a Lion / CLion optimizer."""
    groups = optimizer.param_groups
    first = groups[0]
    skip = ("params", "weight_decay", "lr", "initial_lr", "differentiable")
    keys = [k for k in first if k not in skip]
    same = [k for k in keys if all(g.get(k) == first[k] for g in groups)]
    shared = ", ".join(f"{k}={first[k]!r}" for k in same)
    per_group = "; ".join(
        f"group {i}: {len(g['params'])} tensors, {_lr(g)}, weight_decay={g['weight_decay']}"
        for i, g in enumerate(groups)
    )
    extra = f", track_stats={optimizer.track_stats}" if hasattr(optimizer, "track_stats") else ""
    return f"clion_hf: {type(optimizer).__name__}({shared}{extra}) [{per_group}]"


def _num(x: Any) -> float:
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


def _lr(group: dict[str, Any]) -> str:
    """``lr=<set>``; with a scheduler that has moved it (warm-up, decay, a resumed run) also
    the value it has now, so the two are never confused."""
    lr = _num(group["lr"])
    initial = group.get("initial_lr")  # set by torch's LR schedulers: the lr the user set
    if initial is None or _num(initial) == lr:
        return f"lr={lr:g}"
    return f"lr={_num(initial):g} (scheduled now: {lr:g})"


RUN_WINS = ("mode", "nu", "betas", "weight_decay", "maximize", "caution", "foreach", "fused")
"""Settings a resumed run takes from its own arguments, not from the checkpoint: they are
not state (the momentum is). ``lr`` follows the restored LR scheduler, as for any Trainer
optimizer, and ``momentum_dtype`` stays the checkpoint's: the saved momentum has it."""


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return tuple(a) == tuple(b)  # betas: a tuple, or a list after some loaders
    return type(a) is type(b) and a == b  # 1 == 1.0 == True: still say it


def restore_run_settings(optimizer: LionFamily) -> list[str]:
    """After a Trainer resumed ``optimizer`` from a checkpoint: put back this run's settings
    (:data:`RUN_WINS`) that the checkpoint replaced; one line per value that differs."""
    before = optimizer.__dict__.pop("_settings_before_load", None)
    if before is None or len(before) != len(optimizer.param_groups):
        return []
    lines: list[str] = []
    for i, (run, group) in enumerate(zip(before, optimizer.param_groups, strict=True)):
        for key, value in run.items():
            if key not in group or _same(group[key], value):
                continue
            # weight_decay is per group (Trainer's decay / no-decay groups); the rest shared
            name = f"{key} of group {i}" if key == "weight_decay" and len(before) > 1 else key
            if key in RUN_WINS:
                line = f"this run's {name}={value!r} (checkpoint: {group[key]!r})"
                group[key] = value
            elif key == "momentum_dtype":
                line = (f"the checkpoint's {name}={group[key]!r} (this run: {value!r}; the "
                        "saved momentum has that dtype)")  # fmt: skip
            else:
                continue
            if line not in lines:
                lines.append(line)
    return lines


class LionFamilyCallback(TrainerCallback):
    """Logs Lion/CLion settings once (INFO, or WARNING where INFO is hidden: shown by
    default); adds CLion diagnostics to every training log.

    For a :class:`clion_hf.CLion` optimizer each log that carries ``loss`` gains
    ``optim/sign_fraction`` (mean over the optimizer steps since the last log of the
    fraction of coordinates that took the sign branch) and ``optim/min_abs_c`` (the
    smallest non-zero ``abs(c)`` over those steps; in ``global`` mode already reduced
    across processes). Both land in ``trainer_state.json``'s ``log_history`` and in every
    ``report_to`` integration. A :class:`clion_hf.Lion` created with ``track_stats=True``
    (``--optim_args track_stats=true``) gets ``optim/min_abs_c`` the same way (Lion's
    direction c is the same quantity; it always takes the sign). Does nothing for other
    optimizers.
    """

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):  # noqa: ANN001
        opt = unwrap_optimizer(optimizer)
        self._restore_run_settings(args, state, opt)
        if isinstance(opt, LionFamily) and not getattr(opt, "_clion_hf_described", False):
            opt._clion_hf_described = True  # once per optimizer, also across resumed train()s
            if state.is_world_process_zero:
                # It is information, but transformers' default verbosity (recipes, `trl sft`)
                # hides INFO: then WARNING, which its default format prints without a level
                # ("[transformers] clion_hf: CLion(...)"). Scripts at INFO (run_clm.py) get INFO.
                level = logging.INFO if logger.isEnabledFor(logging.INFO) else logging.WARNING
                logger.log(level, describe(opt))

    @staticmethod
    def _restore_run_settings(args: Any, state: Any, opt: Any) -> None:
        """A resumed run (the Trainer made the optimizer from ``--optim clion/lion`` and
        loaded the checkpoint's state into it) keeps its own settings; WARNING if any
        differed from the checkpoint's, naming each and which one is used."""
        if not isinstance(opt, LionFamily) or optim_value(args.optim) not in OPTIM_VALUES:
            return
        lines = restore_run_settings(opt)
        if lines and state.is_world_process_zero:
            logger.warning("clion_hf: resumed from a checkpoint whose optimizer settings "
                           "differ from this run's; using %s", "; ".join(lines))  # fmt: skip

    def on_log(self, args, state, control, logs=None, optimizer=None, **kwargs):  # noqa: ANN001
        opt = unwrap_optimizer(optimizer)
        if not isinstance(opt, CLion | Lion) or logs is None or "loss" not in logs:
            return  # eval / summary logs keep their own keys
        stats = opt.consume_stats()
        if not stats:
            return
        extra = {MIN_ABS_C_KEY: stats["min_abs_c"]}
        if "sign_fraction" in stats:
            extra = {SIGN_FRACTION_KEY: stats["sign_fraction"], **extra}
        logs.update(extra)
        # Trainer.log appended a copy of `logs` to log_history before calling callbacks.
        if state.log_history and state.log_history[-1].get("loss") == logs["loss"]:
            state.log_history[-1].update(extra)
