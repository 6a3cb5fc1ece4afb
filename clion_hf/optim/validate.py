"""The one set of validators: optimizer arguments, param groups, and option text.

Every place that accepts a Lion/CLion hyper-parameter checks it here: the optimizer
constructors, :meth:`~torch.optim.Optimizer.add_param_group` and ``load_state_dict`` (each
group, before anything is changed), transformers' ``--optim_args`` and the benchmark's
optimizer specs (through :func:`parse_option`). A bad value raises :class:`ValueError`
with one line that names the argument, the value and what is allowed.

Numbers may be Python or numpy scalars (as torch's AdamW accepts them) and are stored as
Python floats; ``lr`` may also be a 1-element tensor of any shape (schedulers that keep lr
on device; the update uses it as a 0-d scalar).

Why by hand: torch.optim checks the constructor's arguments only (a param group added or
loaded later is taken as it is), and argparse-style libraries would check the text but
not a value passed in Python; one function per value serves all of them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

MODES = ("global", "tensor", "element", "soft")
"""CLion modes: over what the minimum of ``abs(c)`` is taken (see :class:`clion_hf.CLion`)."""

LR_MAX = float(torch.finfo(torch.float32).max)
"""The largest ``lr`` accepted: the update runs in fp32 for fp32/bf16/fp16 parameters, where
a larger one is inf (the fused kernel wrote -inf, the eager paths raised).
One bound for every dtype and path, so that an lr is valid or not whatever the parameters."""

MOMENTUM_DTYPES = (None, torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _real(name: str, value: Any, *, low: float, strict: bool) -> float:
    """``value`` as a float, finite and ``> low`` (``strict``) or ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"invalid {name}={value!r}: not a number")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"invalid {name}={value!r}: not finite; must be a finite number")
    if x < low or (strict and x == low):
        raise ValueError(f"invalid {name}={value!r}: must be {'>' if strict else '>='} {low:g}")
    return x


def check_lr(lr: Any) -> float | Tensor:
    """``0 <= lr <= LR_MAX``: a number, or a 1-element tensor (kept as a tensor)."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1 or lr.is_complex() or not lr.is_floating_point():
            raise ValueError(
                f"invalid lr: a tensor lr must be a real floating 1-element tensor, got shape "
                f"{tuple(lr.shape)} and dtype {lr.dtype}"
            )
        check_lr(lr.detach().cpu().item())
        return lr
    x = _real("lr", lr, low=0.0, strict=False)
    if x > LR_MAX:
        raise ValueError(f"invalid lr={lr!r}: must be at most {LR_MAX:.6g}, the largest "
                         "fp32 value (the update runs in fp32 for fp32/bf16/fp16 parameters)")
    return x


def check_betas(betas: Any) -> tuple[float, float]:
    """A pair ``(beta1, beta2)``, each in ``[0, 1)``."""
    if isinstance(betas, str | bytes) or not isinstance(betas, Iterable):
        raise ValueError(f"invalid betas={betas!r}: must be a pair (beta1, beta2) in [0, 1)")
    pair = list(betas)
    if len(pair) != 2:
        raise ValueError(f"invalid betas={betas!r}: must be a pair (beta1, beta2) in [0, 1)")
    out = []
    for i, b in enumerate(pair):
        x = _real(f"betas[{i}]", b, low=0.0, strict=False)
        if x >= 1.0:
            raise ValueError(f"invalid betas[{i}]={b!r}: must be in [0, 1)")
        out.append(x)
    return out[0], out[1]


def check_weight_decay(weight_decay: Any) -> float:
    """A finite ``weight_decay >= 0`` (decoupled, as ``lr * weight_decay`` per step)."""
    return _real("weight_decay", weight_decay, low=0.0, strict=False)


def check_nu(nu: Any) -> float:
    """CLion's threshold: a finite ``nu > 0``."""
    return _real("nu", nu, low=0.0, strict=True)


def check_mode(mode: Any) -> str:
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"invalid mode={mode!r}: allowed are {', '.join(MODES)}")
    return mode


def check_momentum_dtype(momentum_dtype: Any) -> torch.dtype | None:
    if momentum_dtype not in MOMENTUM_DTYPES:
        raise ValueError(
            f"invalid momentum_dtype={momentum_dtype!r}: allowed are None (fp32, or the "
            "parameter's dtype if wider), torch.float32, torch.bfloat16, torch.float16, "
            "torch.float64"
        )
    return momentum_dtype


def check_flag(name: str, value: Any) -> bool:
    """A boolean switch (``maximize``, ``caution``, ``track_stats``); numpy bools accepted."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # numpy.bool_
        return bool(value)
    raise ValueError(f"invalid {name}={value!r}: must be True or False")


def check_impl(foreach: Any, fused: Any) -> tuple[bool | None, bool | None]:
    """``foreach``/``fused``: each None (automatic), True or False; not both True."""
    for name, value in (("foreach", foreach), ("fused", fused)):
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"invalid {name}={value!r}: allowed are None (automatic), True, False")
    if fused and foreach:
        raise ValueError("fused=True and foreach=True are exclusive; set at most one of them")
    return foreach, fused


# --------------------------------------------------------------------------- state

_STATE_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16,
                 torch.complex64, torch.complex128)  # fmt: skip


def state_problem(p: Tensor, exp_avg: Any, device: bool = True) -> str | None:
    """What is wrong with ``exp_avg`` as the momentum of parameter ``p`` (None: nothing).

    It must be a tensor of ``p``'s shape, floating (complex for a complex ``p``) and (with
    ``device``) on ``p``'s device: the fused kernels index it by ``p``'s element count.
    """
    if not isinstance(exp_avg, Tensor):
        return f"exp_avg is a {type(exp_avg).__name__}, not a tensor"
    if exp_avg.shape != p.shape:
        return f"exp_avg has shape {tuple(exp_avg.shape)}; the parameter has {tuple(p.shape)}"
    if exp_avg.dtype not in _STATE_DTYPES or exp_avg.is_complex() != p.is_complex():
        kind = "complex" if p.is_complex() else "floating"
        return f"exp_avg has dtype {exp_avg.dtype}; a {p.dtype} parameter needs a {kind} one"
    if device and exp_avg.device != p.device:
        return f"exp_avg is on {exp_avg.device}; the parameter is on {p.device}"
    return None


def check_update_lists(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor]) -> None:
    """Before any kernel runs: one gradient and one momentum per parameter, of its shape."""
    if not len(params) == len(grads) == len(exp_avgs):
        raise ValueError(f"{len(params)} params, {len(grads)} grads and {len(exp_avgs)} "
                         "exp_avgs: need one gradient and one momentum per parameter")  # fmt: skip
    for i, (p, g, m) in enumerate(zip(params, grads, exp_avgs, strict=True)):
        if g.shape != p.shape or g.device != p.device or g.is_complex() != p.is_complex():
            raise ValueError(
                f"grads[{i}] ({tuple(g.shape)}, {g.dtype}, {g.device}) does not match "
                f"params[{i}] ({tuple(p.shape)}, {p.dtype}, {p.device})"
            )
        if m.shape != p.shape or m.device != p.device or m.is_complex() != p.is_complex():
            problem = state_problem(p, m)
            raise ValueError(f"params[{i}]: {problem}")


# --------------------------------------------------------------------------- param groups

_GROUP_CHECKS: dict[str, Callable[[Any], Any]] = {
    "lr": check_lr,
    "betas": check_betas,
    "weight_decay": check_weight_decay,
    "nu": check_nu,
    "mode": check_mode,
    "momentum_dtype": check_momentum_dtype,
    "maximize": lambda v: check_flag("maximize", v),
    "caution": lambda v: check_flag("caution", v),
}


def check_group(group: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """A param group's hyper-parameters, checked and normalised (a new dict; ``params`` kept).

    Keys other than the optimizer's own (``initial_lr`` of schedulers, user tags) pass
    through unchanged. Raises :class:`ValueError` naming ``where`` and the key.
    """
    out = dict(group)
    try:
        for key, check in _GROUP_CHECKS.items():
            if key in out:
                out[key] = check(out[key])
        if "foreach" in out or "fused" in out:
            out["foreach"], out["fused"] = check_impl(out.get("foreach"), out.get("fused"))
    except ValueError as e:
        raise ValueError(f"{where}: {e}" if where else str(e)) from None
    return out


def check_groups_agree(groups: list[Mapping[str, Any]]) -> None:
    """CLion's ``global`` mode takes one decision over all groups: they must share mode and nu."""
    pairs = {(g["mode"], g["nu"]) for g in groups}
    if any(g["mode"] == "global" for g in groups) and len(pairs) > 1:
        raise ValueError(
            f"param groups disagree on (mode, nu): {sorted(pairs)}; mode='global' takes one "
            "decision over all groups, so every group must use the same mode and nu"
        )


def check_no_overlap(params: list[Tensor]) -> None:
    """Refuse parameters that share memory (overlapping views, or one tensor twice).

    Updating the same memory twice in one step gives results that depend on the order and
    the implementation (single-tensor, foreach, multi-threaded fused), so it is refused.
    Views that share a storage without sharing elements (e.g. two columns) are allowed.
    """
    by_storage: dict[tuple[str, int], list[tuple[int, Tensor]]] = {}
    for i, p in enumerate(params):
        t = p.to_local() if hasattr(p, "to_local") else p
        if t.device.type == "meta" or t.numel() == 0:
            continue
        key = (str(t.device), t.untyped_storage().data_ptr())
        by_storage.setdefault(key, []).append((i, t))
    for entries in by_storage.values():
        if len(entries) < 2:
            continue
        spans = sorted(((_span(t), i, t) for i, t in entries), key=lambda e: e[0])
        for k, (a_span, i, a) in enumerate(spans):
            for b_span, j, b in spans[k + 1 :]:
                if b_span[0] >= a_span[1]:
                    break  # sorted by start: no later view meets this one
                if not _elements_overlap(a, b):
                    continue
                first, second = sorted((i, j))
                raise ValueError(
                    f"parameters {first} and {second} (shapes {tuple(params[first].shape)} and "
                    f"{tuple(params[second].shape)}) share memory; each element may belong to "
                    "one parameter only: pass the base tensor, or views that do not overlap"
                )


def _span(t: Tensor) -> tuple[int, int]:
    """Byte range ``[start, end)`` of ``t`` inside its storage."""
    size = t.element_size()
    start = t.storage_offset() * size
    extent = sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride(), strict=True))
    return start, start + (extent + 1) * size


def _elements_overlap(a: Tensor, b: Tensor) -> bool:
    """Whether two views of one storage share memory (exact; called only when spans meet)."""
    unit = math.gcd(a.element_size(), b.element_size())

    def units(t: Tensor) -> Tensor:  # every ``unit``-byte cell that ``t`` covers
        step = t.element_size() // unit
        n = t.untyped_storage().nbytes() // t.element_size()
        idx = torch.arange(n).as_strided(t.shape, t.stride(), t.storage_offset()).reshape(-1)
        return (idx[:, None] * step + torch.arange(step)).reshape(-1)

    return bool(torch.isin(units(a), units(b)).any())


# --------------------------------------------------------------------------- option text
# transformers' --optim_args ("nu=1e-4,mode=element") and clion-bench's optimizer specs
# ("clion:mode=element,nu=1e-4") give options as text: parse_option turns one into its
# value through the checks above.

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
    "fp64": torch.float64, "float64": torch.float64,
}  # fmt: skip


def parse_bool(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"invalid {name}={text!r}: not a boolean; allowed: true/false, 1/0, yes/no, "
                     "on/off")  # fmt: skip


def parse_number(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"invalid {name}={text!r}: not a number") from None


def _beta(name: str, text: str) -> float:
    value = _real(name, parse_number(name, text), low=0.0, strict=False)
    if value >= 1.0:
        raise ValueError(f"invalid {name}={text!r}: must be in [0, 1)")
    return value


def _dtype(name: str, text: str) -> torch.dtype:
    if text.strip().lower() not in _DTYPES:
        raise ValueError(f"invalid {name}={text!r}: allowed are fp32, bf16, fp16, fp64")
    return _DTYPES[text.strip().lower()]


TEXT_OPTIONS: dict[str, tuple[Callable[[str, str], Any], str]] = {
    "lr": (lambda n, t: check_lr(parse_number(n, t)), f"a number in [0, {LR_MAX:.6g}]"),
    "nu": (lambda n, t: check_nu(parse_number(n, t)), "a finite number > 0"),
    "weight_decay": (lambda n, t: check_weight_decay(parse_number(n, t)), "a finite number >= 0"),
    "beta1": (_beta, "a number in [0, 1)"),
    "beta2": (_beta, "a number in [0, 1)"),
    "mode": (lambda n, t: check_mode(t.strip()), "one of " + ", ".join(MODES)),
    "momentum_dtype": (_dtype, "fp32, bf16, fp16 or fp64"),
    **{flag: (parse_bool, "true or false")
       for flag in ("maximize", "foreach", "fused", "caution", "track_stats")},
}  # fmt: skip
"""Option name -> (parser of its text, what is allowed, in words)."""


def parse_option(name: str, text: str) -> Any:
    """The value of optimizer option ``name`` given as ``text``; :class:`ValueError` if bad."""
    if name not in TEXT_OPTIONS:
        raise ValueError(f"unknown option {name!r}; allowed: {', '.join(TEXT_OPTIONS)}")
    return TEXT_OPTIONS[name][0](name, text)
