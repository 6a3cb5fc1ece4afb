"""The Lion / CLion update math over lists of tensors: the leaf that every path imports.

What is here: :class:`Hyper` (the hyper-parameters of one update, the record the fused
kernels receive too), :class:`Stats` (what a CLion update reports per tensor), the dtype
rules, CLion's pass 1 and decision, and the single-tensor and foreach implementations.
It imports nothing of ``clion_hf``: :mod:`.functional` (the entry points and the choice
of implementation) and :mod:`.kernels` (the fused paths, which fall back to the
single-tensor math for the tensors they cannot take) both import it; it imports neither.

For parameter ``p``, gradient ``g`` and momentum ``m``::

    c = beta1 * m + (1 - beta1) * g           # update direction
    p = p * (1 - lr * wd) - lr * h(c)         # Lion: h = sign; CLion: h depends on mode
    m = beta2 * m + (1 - beta2) * g

CLion's ``h`` (Huang, Zhang & Chen, arXiv:2604.14587): ``sign(c)`` if the smallest non-zero
``abs(c)`` is at least ``nu``, else ``c``; ``mode`` says over what the minimum is taken
(``global``: all parameters; ``tensor``: each tensor; ``element``: each coordinate;
``soft``: ``clamp(c / nu, -1, 1)``).

All arithmetic runs in ``compute_dtype(p)``: fp32 for fp16/bf16 parameters, otherwise the
parameter's own dtype; the ``global``/``tensor`` minimum is compared with ``nu`` rounded
to that dtype, as ``element`` mode compares each coordinate.

Non-finite values: wherever ``c`` is NaN or infinite (a NaN/inf gradient, or a momentum
that already is), ``h(c)`` is NaN, so the parameter coordinate becomes NaN (and stays so):
divergence shows in the loss at once, on every path, instead of a coordinate silently
freezing behind a NaN momentum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal, NamedTuple

import torch
from torch import Tensor

Impl = Literal["single", "foreach", "fused"]
TensorList = list[Tensor]


@dataclass(frozen=True)
class Hyper:
    """The hyper-parameters of one update (one param group), shared by every implementation.

    The fused kernels receive this record: the custom op carries its fields as arguments
    of the same names, and the C++ kernel gets it as ``ClionHyper``
    (:meth:`clion_hf.optim.kernels.cpu.CHyper.of`, the one conversion).
    """

    lr: float | Tensor
    beta1: float
    beta2: float
    weight_decay: float = 0.0
    mode: str | None = None  # a CLion mode; None: Lion (the sign everywhere)
    nu: float = 1.0  # CLion's threshold (unused by Lion)
    maximize: bool = False
    caution: bool = False


MODE_CODE: dict[str | None, int] = {None: 0, "global": 1, "tensor": 1, "element": 2, "soft": 3}
"""The fused kernels' form of ``h`` for each :attr:`Hyper.mode` (the C++ ``Mode`` enum,
Triton's ``MODE``): 0 sign (Lion), 1 the per-tensor decision ``take``, 2 element, 3 soft."""


class Stats(NamedTuple):
    """Per-tensor statistics of a CLion update."""

    count: Tensor  # fp32: coordinates that took the sign branch
    min_abs_c: Tensor  # smallest non-zero abs(c) (stat_dtype); inf if c == 0, NaN if unknown


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the update math runs in for parameters stored as ``dtype``."""
    if dtype.is_complex:
        dtype = dtype.to_real()
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def stat_dtype(device: torch.device) -> torch.dtype:
    """The dtype of min ``abs(c)`` statistics: fp64 (exact for every compute dtype).

    MPS has no fp64: fp32 there.
    """
    return torch.float32 if device.type == "mps" else torch.float64


@lru_cache(maxsize=64)
def rounded(nu: float, dtype: torch.dtype) -> float:
    """``nu`` rounded to ``dtype`` (what ``c >= nu`` compares with in that dtype)."""
    return torch.tensor(nu, dtype=dtype).item()  # eager only (a constant under tracing)


_F32_ZERO_BELOW = 2.0**-150
"""The largest ``nu`` that rounds to 0 in fp32 (half the smallest subnormal; ties to even)."""


def for_dtype(hyper: Hyper, dtype: torch.dtype) -> Hyper:
    """``hyper`` as tensors stored as ``dtype`` apply it.

    ``soft`` with an ``nu`` that rounds to 0 in the compute dtype (below fp32's smallest
    subnormal, for fp32/bf16/fp16 parameters): ``clamp(c / nu, -1, 1)`` is ``sign(c)`` for
    every ``c != 0``, but ``0 / 0`` would make ``c == 0`` NaN. ``element``'s rule with that
    ``nu`` is the same ``sign(c)``, 0 at ``c == 0`` and the same count.
    """
    if (hyper.mode == "soft" and hyper.nu <= _F32_ZERO_BELOW
            and compute_dtype(dtype) == torch.float32):  # fmt: skip
        return replace(hyper, mode="element")
    return hyper


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def as_real(t: Tensor) -> Tensor:
    # Complex tensors are updated as pairs of reals (sign of real and imaginary parts),
    # the convention of torch.optim and timm.
    return torch.view_as_real(t) if t.is_complex() else t


# --------------------------------------------------------------------------------------
# Pass 1 (CLion global/tensor modes): the per-tensor min |c| that decides the branch.
# --------------------------------------------------------------------------------------


def min_abs_c(grads: TensorList, exp_avgs: TensorList, beta1: float, maximize: bool = False,
              foreach: bool = True) -> Tensor:  # fmt: skip
    """Per-tensor smallest non-zero ``abs(c)``, 1-d in :func:`stat_dtype` (inf where c == 0).

    ``maximize``: the momentum follows ``-g``, so ``c = beta1 * m - (1 - beta1) * g``.
    Exact in every compute dtype (fp64 holds every fp32/bf16/fp16 value). NaN where ``c``
    has a NaN. The single-tensor (``foreach=False``) and foreach loops.
    """
    if not grads:
        return torch.empty(0, dtype=torch.float64)
    device = grads[0].device
    gs = [as_real(g) for g in grads]
    ms = [as_real(m) for m in exp_avgs]
    dts = [compute_dtype(g.dtype) for g in gs]
    gs = [_upcast(g, dt) for g, dt in zip(gs, dts, strict=True)]
    gs = [-g for g in gs] if maximize else gs
    ms = [_upcast(m, dt) for m, dt in zip(ms, dts, strict=True)]
    if foreach:
        cs = torch._foreach_lerp(ms, gs, 1.0 - beta1)
    else:
        cs = [_direction(m, g, beta1) for m, g in zip(ms, gs, strict=True)]
    out = stat_dtype(device)
    return torch.stack([_min_nonzero_of_abs(c.abs_()).to(out) for c in cs])


def threshold(nu: float, dtypes: list[torch.dtype] | set[torch.dtype]) -> float:
    """The smallest value that ``nu`` takes in the compute dtypes of ``dtypes``: an
    ``abs(c)`` below it is below ``nu`` in every comparison of the decision."""
    return min(rounded(nu, compute_dtype(d)) for d in dtypes)


def take_sign(mins: Tensor, nu: float, dtypes: list[torch.dtype], mode: str) -> Tensor:
    """CLion's decision, 1-d bool per tensor: ``min >= nu`` in the compute dtype.

    ``mode="global"``: one decision from ``mins.amin()`` (already reduced across groups
    and ranks by the caller if needed), compared in the widest compute dtype present.
    """
    # A tensor compared with a Python number compares in the tensor's dtype: the minima
    # (exact in any compute dtype) are cast to it, and nu is rounded to it.
    cdts = [compute_dtype(d) for d in dtypes]
    if mode == "global":
        wide = torch.float64 if torch.float64 in cdts else torch.float32
        low = mins.amin() if mins.numel() else torch.full((), math.inf, device=mins.device)
        return (low.to(wide) >= nu).expand(mins.numel())
    if len(set(cdts)) <= 1:
        return mins.to(cdts[0] if cdts else torch.float32) >= nu
    return torch.stack([m.to(d) >= nu for m, d in zip(mins, cdts, strict=True)])


def _min_nonzero_of_abs(a: Tensor) -> Tensor:
    """Min non-zero entry of ``a = abs(c)`` (0-d, in ``a``'s dtype); +inf if none; NaN if any.

    ``a`` is the caller's temporary and is overwritten: on CPU a fresh allocation costs a
    page-faulting pass. On CPU (where reading a value is no device sync) the plain
    ``amin`` answers unless it is 0; only then do zeros get masked, through the integer
    view: for non-negative floats the order of the bit patterns is the order of the
    values, and ``(bits - 1) & max`` sends 0 to the largest integer. Elsewhere: one masked
    fill, no sync.
    """
    if a.numel() == 0:
        return torch.full((), math.inf, dtype=a.dtype, device=a.device)
    if a.device.type != "cpu" or _compiling() or a.dtype not in _BITS:
        return a.masked_fill_(a == 0, math.inf).amin()
    low = a.amin()  # NaN if any entry is NaN, as the masked path
    if bool(low != 0):
        return low
    int_dtype, top = _BITS[a.dtype]
    key = a.view(int_dtype).sub_(1).bitwise_and_(top).amin()
    if int(key) == top:  # every entry is 0
        return torch.full((), math.inf, dtype=a.dtype)
    return (key + 1).view(a.dtype)


_BITS = {torch.float32: (torch.int32, 0x7FFFFFFF), torch.float64: (torch.int64, 2**63 - 1)}


# --------------------------------------------------------------------------------------
# The single-tensor and foreach implementations.
# --------------------------------------------------------------------------------------


def _direction(m: Tensor, g: Tensor, beta1: float) -> Tensor:
    # lerp is beta1 * m + (1 - beta1) * g with one rounding; the same kernel is used by
    # the single-tensor and foreach paths, so they agree bitwise.
    return torch.lerp(m, g, 1.0 - beta1)


def _upcast(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _prepare(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], maximize: bool
) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
    """Real views, compute-dtype copies of p/g/m as needed, and ``-g`` for ``maximize``.

    Returns ``(p_c, g_c, m_c, p_store, m_store)``: the math runs on ``p_c``/``m_c``; where
    they are upcast copies, :func:`_write_back` stores them into ``p_store``/``m_store``.
    """
    p_store = [as_real(p) for p in params]
    m_store = [as_real(m) for m in exp_avgs]
    p_c, g_c, m_c = [], [], []
    for p, g, m in zip(p_store, grads, m_store, strict=True):
        dt = compute_dtype(p.dtype)
        g = _upcast(as_real(g), dt)
        p_c.append(_upcast(p, dt))
        g_c.append(-g if maximize else g)
        m_c.append(_upcast(m, dt))
    return p_c, g_c, m_c, p_store, m_store


def _write_back(src: list[Tensor], dst: list[Tensor]) -> None:
    for s, d in zip(src, dst, strict=True):
        if s is not d and s.data_ptr() != d.data_ptr():
            d.copy_(s)


def _nonfinite_masks(cs: list[Tensor]) -> list[Tensor | None]:
    """Per tensor: the mask of non-finite entries of ``c``, or None where all are finite.

    On CPU (where reading a value costs no device sync) one read-only pass shows that a
    tensor is finite, which it almost always is: its sum is finite (a sum that overflows
    only costs the exact mask). ``sum`` rather than an inf-norm: ATen's vectorised,
    multi-threaded reduction, about 7x faster here. Elsewhere, and while compiling
    (Inductor fuses it), every tensor gets its mask.
    """
    if cs and cs[0].device.type == "cpu" and not _compiling():
        return [None if math.isfinite(c.sum()) else ~torch.isfinite(c) for c in cs]
    return [~torch.isfinite(c) for c in cs]


def _h_and_stats(
    c: Tensor, hyper: Hyper, take: Tensor | None, bad: Tensor | None, stats: bool, want_min: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``h(c)`` and, with ``stats``, (sign-branch count, min non-zero ``abs(c)``) of a tensor.

    ``c`` is the caller's temporary and is overwritten (``h`` may be ``c`` itself): buffers
    are shared between ``h`` and the statistics, because on CPU every fresh allocation
    costs a page-faulting pass. ``bad``: mask of non-finite ``c`` (see
    :func:`_nonfinite_masks`), where ``h`` becomes NaN. Counts are fp32; a min not wanted
    is NaN.
    """
    mode, nu = for_dtype(hyper, c.dtype).mode, hyper.nu
    count = mn = None
    sd = stat_dtype(c.device)
    if mode in ("global", "tensor"):
        assert take is not None
        if stats:
            count = take.float() * c.numel()
            mn = (_min_nonzero_of_abs(c.abs()).to(sd) if want_min
                  else torch.full((), math.nan, dtype=sd, device=c.device))  # fmt: skip
        if take.device.type == "cpu" and not _compiling():
            # Reading a CPU bool is no device sync: skip the select and its temporaries.
            h = c.sign_() if bool(take) else c
        else:
            h = torch.where(take, c.sign(), c)
    elif mode is None and not stats:  # Lion
        h = c.sign_()
    else:
        a = c.abs()
        if mode is None:
            count = torch.full((), float(c.numel()), device=c.device)
        else:  # soft saturates exactly where abs(c) >= nu: there it equals sign(c)
            mask = a >= nu
            if stats:
                count = torch.count_nonzero(mask).float()  # a bool .sum() is slow on CPU
        if stats:
            mn = _min_nonzero_of_abs(a).to(sd)  # overwrites a
        if mode is None:
            h = c.sign_()
        elif mode == "soft":
            h = c.div_(nu).clamp_(-1.0, 1.0)
        else:  # element: sign(c) where abs(c) >= nu, else c; the sign goes into a's buffer
            h = torch.where(mask, torch.sign(c, out=a), c, out=c)
    if bad is not None:
        h = h.masked_fill_(bad, math.nan)
    return h, count, mn


def _caution(u: Tensor, g: Tensor) -> Tensor:
    """Cautious mask of Liang et al. (arXiv:2411.16085), Algorithm 2, applied to ``u``.

    Keeps coordinates where the update agrees with the gradient (``u * g > 0``, strict as
    in the authors' code) and rescales by ``d / (nnz + 1)`` so the update keeps its size.
    A NaN ``u`` stays NaN (``NaN * 0``), as the rule for non-finite values requires.
    """
    mask = (u * g > 0).to(u.dtype)
    return u * mask * (mask.numel() / (mask.sum() + 1))


def _apply_update(p: Tensor, h: Tensor, lr: float | Tensor) -> None:
    # add_(alpha=-lr) is one fused pass; a tensor lr (schedulers that keep lr on device)
    # cannot be an alpha, so it takes a multiply first.
    if isinstance(lr, Tensor):
        p.sub_(h * lr)
    else:
        p.add_(h, alpha=-lr)


def _stack_stats(out: list[tuple[Tensor, Tensor | None, Tensor | None]]) -> Stats:
    return Stats(torch.stack([o[1] for o in out]), torch.stack([o[2] for o in out]))


def single_tensor_update(params: TensorList, grads: TensorList, exp_avgs: TensorList,
                         hyper: Hyper, take: Tensor | None, stats: bool,
                         want_min: bool = True) -> Stats | None:  # fmt: skip
    """The update as a Python loop over tensors (also the fused paths' fallback for the
    tensors they cannot take). ``take``: the global/tensor decision, one bool per tensor;
    ``want_min``: with ``stats``, measure the min ``abs(c)`` (else NaN)."""
    lr, wd = hyper.lr, hyper.weight_decay
    p_c, g_c, m_c, p_store, m_store = _prepare(params, grads, exp_avgs, hyper.maximize)
    out = []
    for i, (p, g, m) in enumerate(zip(p_c, g_c, m_c, strict=True)):
        c = _direction(m, g, hyper.beta1)
        t = None if take is None else take[i]
        res = _h_and_stats(c, hyper, t, _nonfinite_masks([c])[0], stats, want_min)
        h = _caution(res[0], g) if hyper.caution else res[0]
        out.append(res)
        if wd != 0:
            p.mul_(1.0 - lr * wd)
        _apply_update(p, h, lr)
        m.lerp_(g, 1.0 - hyper.beta2)
    _write_back(p_c, p_store)
    _write_back(m_c, m_store)
    return _stack_stats(out) if stats else None


def foreach_update(params: TensorList, grads: TensorList, exp_avgs: TensorList, hyper: Hyper,
                   take: Tensor | None, stats: bool, want_min: bool = True) -> Stats | None:
    """The update with ``torch._foreach_*`` kernels over the whole list (arguments as
    :func:`single_tensor_update`'s)."""
    lr, wd = hyper.lr, hyper.weight_decay
    p_c, g_c, m_c, p_store, m_store = _prepare(params, grads, exp_avgs, hyper.maximize)
    cs = torch._foreach_lerp(m_c, g_c, 1.0 - hyper.beta1)
    bad = _nonfinite_masks(cs)
    # cs is a temporary: h(c) is computed in its buffers
    if hyper.mode is None and not stats:  # Lion
        torch._foreach_sign_(cs)
        hs = [h if b is None else h.masked_fill_(b, math.nan) for h, b in zip(cs, bad, strict=True)]
        result = None
    else:
        # No foreach "where": per-tensor selects (sharing buffers with the statistics).
        out = [
            _h_and_stats(c, hyper, None if take is None else take[i], bad[i], stats, want_min)
            for i, c in enumerate(cs)
        ]
        hs = [o[0] for o in out]
        result = _stack_stats(out) if stats else None
    if hyper.caution:
        hs = [_caution(h, g) for h, g in zip(hs, g_c, strict=True)]
    if wd != 0:
        torch._foreach_mul_(p_c, 1.0 - lr * wd)
    if isinstance(lr, Tensor):  # as _apply_update
        torch._foreach_mul_(hs, lr)
        torch._foreach_sub_(p_c, hs)
    else:
        torch._foreach_add_(p_c, hs, alpha=-lr)
    torch._foreach_lerp_(m_c, g_c, 1.0 - hyper.beta2)
    _write_back(p_c, p_store)
    _write_back(m_c, m_store)
    return result
