"""The Lion / CLion update math, as functions over lists of tensors.

One place for the arithmetic, shared by the optimizer classes (``lion.py``, ``clion.py``)
and checked against the float64 reference in the tests. Two implementations follow the
``torch.optim`` pattern: ``_single_tensor_*`` (a Python loop over tensors) and
``_foreach_*`` (``torch._foreach_*`` kernels over the whole list). They are written to
give the same bits on the same inputs.

Notation (``../shared/CLION.md``): for parameter ``p``, gradient ``g`` and momentum ``m``

    c = beta1 * m + (1 - beta1) * g           # update direction
    p = p * (1 - lr * wd) - lr * h(c)         # Lion: h = sign; CLion: h depends on mode
    m = beta2 * m + (1 - beta2) * g

All arithmetic runs in ``compute_dtype(p)``: fp32 for fp16/bf16 parameters (so low
precision storage does not decide branches), otherwise the parameter's own dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MODES = ("global", "tensor", "element", "soft")
"""CLion modes: where the "no tiny entries" test is taken (see CLION.md)."""


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the update math runs in for parameters stored as ``dtype``."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _as_real(t: Tensor) -> Tensor:
    # Complex tensors are updated as pairs of reals (sign of real and imaginary parts),
    # the convention of torch.optim and timm.
    return torch.view_as_real(t) if t.is_complex() else t


def min_nonzero_abs(c: Tensor) -> Tensor:
    """Smallest non-zero ``abs(c)`` as a 0-d fp32 tensor on ``c``'s device; +inf if none.

    Stays on the device (no host sync), so CLion's decision can be fused or captured.
    """
    if c.numel() == 0:
        return torch.full((), math.inf, dtype=torch.float32, device=c.device)
    return _min_nonzero_of_abs(c.abs())


_BITS = {torch.float32: (torch.int32, 0x7FFFFFFF), torch.float64: (torch.int64, 2**63 - 1)}


def _min_nonzero_of_abs(a: Tensor) -> Tensor:
    """Min non-zero entry of ``a = abs(c)``, a temporary of the caller that is overwritten.

    In place, because on CPU a fresh allocation costs a page-faulting pass. On CPU (where
    reading a value is no device sync) the plain ``amin`` answers unless it is 0; only
    then do zeros get masked, through the integer view: for non-negative floats the order
    of the bit patterns is the order of the values, and ``(bits - 1) & max`` sends 0 to the
    largest integer. Elsewhere: one masked fill, no sync.
    """
    if a.device.type != "cpu" or torch.compiler.is_compiling() or a.dtype not in _BITS:
        return a.masked_fill_(a == 0, math.inf).amin().float()
    low = a.amin()  # NaN if any entry is NaN, as the masked path
    if bool(low != 0):
        return low.float()
    int_dtype, top = _BITS[a.dtype]
    key = a.view(int_dtype).sub_(1).bitwise_and_(top).amin()
    if int(key) == top:  # every entry is 0
        return torch.full((), math.inf)
    return (key + 1).view(a.dtype).float()


def _direction(m: Tensor, g: Tensor, beta1: float) -> Tensor:
    # lerp is beta1 * m + (1 - beta1) * g with one rounding; the same kernel is used by
    # the single-tensor and foreach paths, so they agree bitwise.
    return torch.lerp(m, g, 1.0 - beta1)


def _upcast(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _prepare(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], maximize: bool
) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
    """Real views, compute-dtype copies of p/g/m as needed, and ``-g`` for ``maximize``.

    Returns ``(p_c, g_c, m_c, p_store)``: ``p_c``/``m_c`` are the tensors the math runs on;
    when they are upcast copies, the caller writes them back with :func:`_write_back`.
    """
    p_store = [_as_real(p) for p in params]
    p_c, g_c, m_c = [], [], []
    for p, g, m in zip(p_store, grads, exp_avgs, strict=True):
        dt = compute_dtype(p.dtype)
        g = _upcast(_as_real(g), dt)
        p_c.append(_upcast(p, dt))
        g_c.append(-g if maximize else g)
        m_c.append(_upcast(_as_real(m), dt))
    return p_c, g_c, m_c, p_store


def _write_back(src: list[Tensor], dst: list[Tensor]) -> None:
    for s, d in zip(src, dst, strict=True):
        if s is not d and s.data_ptr() != d.data_ptr():
            d.copy_(s)


# --------------------------------------------------------------------------------------
# Pass 1 (CLion global/tensor modes): the per-tensor min |c| that decides the branch.
# --------------------------------------------------------------------------------------


def direction_min_abs(
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    beta1: float,
    maximize: bool,
    foreach: bool = False,
) -> Tensor:
    """Per-tensor smallest non-zero ``abs(c)``, a 1-d fp32 tensor (``inf`` where ``c == 0``).

    Sign flips from ``maximize`` do not change ``abs(c)``, so it is accepted and ignored.
    """
    del maximize
    if not grads:
        return torch.empty(0, dtype=torch.float32)
    device = grads[0].device
    gs = [_as_real(g) for g in grads]
    ms = [_as_real(m) for m in exp_avgs]
    dts = [compute_dtype(g.dtype) for g in gs]
    gs = [_upcast(g, dt) for g, dt in zip(gs, dts, strict=True)]
    ms = [_upcast(m, dt) for m, dt in zip(ms, dts, strict=True)]
    if foreach:
        cs = torch._foreach_lerp(ms, gs, 1.0 - beta1)
    else:
        cs = [_direction(m, g, beta1) for m, g in zip(ms, gs, strict=True)]
    return torch.stack([
        _min_nonzero_of_abs(c.abs_()).to(device) if c.numel() else min_nonzero_abs(c)
        for c in cs
    ])  # fmt: skip


# --------------------------------------------------------------------------------------
# The update pass.
# --------------------------------------------------------------------------------------


def _h_and_stats(
    c: Tensor, mode: str, nu: float, take_sign: Tensor | None, stats: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``h(c)`` and, with ``stats``, (sign-branch count, min non-zero ``abs(c)``) of a tensor.

    ``c`` is the caller's temporary and is overwritten (``h`` may be ``c`` itself): buffers
    are shared between ``h`` and the statistics, because on CPU every fresh allocation
    costs a page-faulting pass. Global/tensor modes get NaN for the min (their caller has
    it from pass 1); counts are fp32.
    """
    count = mn = None
    if mode in ("global", "tensor"):
        assert take_sign is not None
        if stats:
            count = take_sign.float() * c.numel()
            mn = torch.full((), math.nan, device=c.device)
        if take_sign.device.type == "cpu" and not torch.compiler.is_compiling():
            # Reading a CPU bool is no device sync: skip the select and its temporaries.
            return (c.sign_() if bool(take_sign) else c), count, mn
        return torch.where(take_sign, c.sign(), c), count, mn
    if mode not in ("lion", "element", "soft"):
        raise ValueError(f"unknown mode {mode!r}; allowed: {', '.join(MODES)}")
    if mode == "lion" and not stats:
        return c.sign_(), None, None
    a = c.abs()
    if mode == "lion":
        count = torch.full((), float(c.numel()), device=c.device)
    else:  # soft saturates exactly where abs(c) >= nu: there it equals sign(c)
        mask = a >= nu
        if stats:
            count = torch.count_nonzero(mask).float()  # a bool .sum() is slow on CPU
    if stats:
        mn = _min_nonzero_of_abs(a) if c.numel() else min_nonzero_abs(c)
    if mode == "lion":
        return c.sign_(), count, mn
    if mode == "soft":
        return c.div_(nu).clamp_(-1.0, 1.0), count, mn
    # element: sign(c) where abs(c) >= nu, else c; the sign goes into a's buffer
    return torch.where(mask, torch.sign(c, out=a), c, out=c), count, mn


def _apply_update(p: Tensor, h: Tensor, lr: float | Tensor) -> None:
    # add_(alpha=-lr) is one fused pass; a tensor lr (schedulers that keep lr on device)
    # cannot be an alpha, so it takes a multiply first.
    if isinstance(lr, Tensor):
        p.sub_(h * lr)
    else:
        p.add_(h, alpha=-lr)


def _caution(u: Tensor, g: Tensor) -> Tensor:
    """Cautious mask of Liang et al. (arXiv:2411.16085), Algorithm 2, applied to ``u``.

    Keeps coordinates where the update agrees with the gradient (``u * g > 0``, strict as
    in the authors' code) and rescales by ``d / (nnz + 1)`` so the update keeps its size.
    """
    mask = (u * g > 0).to(u.dtype)
    return u * mask * (mask.numel() / (mask.sum() + 1))


def lion_clion_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    mode: str,
    nu: float = 1.0,
    take_sign: Tensor | None = None,
    maximize: bool = False,
    caution: bool = False,
    foreach: bool = False,
    stats: bool = False,
) -> tuple[Tensor, Tensor] | None:
    """Apply one Lion (``mode="lion"``) or CLion update to every tensor, in place.

    ``take_sign`` (global/tensor modes): 1-d bool tensor, one decision per tensor, computed
    by the caller from :func:`direction_min_abs` (so the decision can span param groups
    and processes). With ``stats``, returns ``(sign_count, min_abs)``: per-tensor fp32
    counts of coordinates that took the sign branch and per-tensor min non-zero ``abs(c)``
    (``min_abs`` is only computed here for element/soft/lion; global/tensor callers
    already have it and get NaNs in its place).
    """
    if not params:
        return None
    impl = _foreach_update if foreach else _single_tensor_update
    return impl(
        params, grads, exp_avgs, lr=lr, beta1=beta1, beta2=beta2,
        weight_decay=weight_decay, mode=mode, nu=nu, take_sign=take_sign,
        maximize=maximize, caution=caution, stats=stats,
    )  # fmt: skip


def _single_tensor_update(
    params, grads, exp_avgs, *, lr, beta1, beta2, weight_decay, mode, nu, take_sign,
    maximize, caution, stats,
):  # fmt: skip
    p_c, g_c, m_c, p_store = _prepare(params, grads, exp_avgs, maximize)
    counts, mins = [], []
    for i, (p, g, m) in enumerate(zip(p_c, g_c, m_c, strict=True)):
        c = _direction(m, g, beta1)
        t = None if take_sign is None else take_sign[i]
        h, count, mn = _h_and_stats(c, mode, nu, t, stats)
        if caution:
            h = _caution(h, g)
        if stats:
            counts.append(count)
            mins.append(mn)
        if weight_decay != 0:
            p.mul_(1.0 - lr * weight_decay)
        _apply_update(p, h, lr)
        m.lerp_(g, 1.0 - beta2)
    _write_back(p_c, p_store)
    _write_back(m_c, [_as_real(m) for m in exp_avgs])
    if stats:
        return torch.stack(counts), torch.stack(mins)
    return None


def _foreach_update(
    params, grads, exp_avgs, *, lr, beta1, beta2, weight_decay, mode, nu, take_sign,
    maximize, caution, stats,
):  # fmt: skip
    p_c, g_c, m_c, p_store = _prepare(params, grads, exp_avgs, maximize)
    cs = torch._foreach_lerp(m_c, g_c, 1.0 - beta1)
    # cs is a temporary: h(c) is computed in its buffers
    if mode == "lion" and not stats:
        torch._foreach_sign_(cs)
        hs, result = cs, None
    else:
        # No foreach "where": per-tensor selects (sharing buffers with the statistics).
        out = [
            _h_and_stats(c, mode, nu, None if take_sign is None else take_sign[i], stats)
            for i, c in enumerate(cs)
        ]
        hs = [o[0] for o in out]
        result = None
        if stats:
            result = torch.stack([o[1] for o in out]), torch.stack([o[2] for o in out])
    if caution:
        hs = [_caution(h, g) for h, g in zip(hs, g_c, strict=True)]
    if weight_decay != 0:
        torch._foreach_mul_(p_c, 1.0 - lr * weight_decay)
    if isinstance(lr, Tensor):  # as _apply_update
        torch._foreach_mul_(hs, lr)
        torch._foreach_sub_(p_c, hs)
    else:
        torch._foreach_add_(p_c, hs, alpha=-lr)
    torch._foreach_lerp_(m_c, g_c, 1.0 - beta2)
    _write_back(p_c, p_store)
    _write_back(m_c, [_as_real(m) for m in exp_avgs])
    return result
