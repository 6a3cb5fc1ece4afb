"""The optimizer matrix, in the spirit of PyTorch's ``OptimizerInfo`` tests.

Every update rule (Lion, cautious Lion, the four CLion modes, with param groups that mix
modes and thresholds) x every implementation (single-tensor, foreach, fused) x every
storage (fp32, fp64, bf16, fp16, bf16 momentum, complex) on one problem that holds the
awkward parameters at once (no gradient, zero-size, one element, non-contiguous,
channels-last, a tensor spanning several kernel chunks, all-zero gradients): against an
independent float64 reference, and the three implementations against each other, bit for
bit. Then non-finite gradients and state round trips on each path.
"""

from __future__ import annotations

import copy
import math
import pickle

import _reference as reference
import pytest
import torch

from clion_hf import CLion, Lion

# rule -> (class, constructor kwargs, per-group overrides [group 0, group 1])
RULES = {
    "lion": (Lion, {}, [{}, {}]),
    "lion-caution": (Lion, {"caution": True}, [{}, {}]),
    "clion-global": (CLion, {"mode": "global", "nu": 2e-3}, [{}, {}]),
    "clion-tensor": (CLion, {"mode": "tensor", "nu": 0.01}, [{}, {"nu": 0.05}]),
    "clion-element": (CLion, {"mode": "element", "nu": 0.3}, [{}, {"mode": "soft", "nu": 0.5}]),
    "clion-soft": (CLion, {"mode": "soft", "nu": 0.5}, [{}, {"mode": "tensor", "nu": 0.01}]),
}
# storage -> (parameter dtype, momentum_dtype)
STORAGE = {
    "fp32": (torch.float32, None),
    "fp64": (torch.float64, None),
    "bf16": (torch.bfloat16, None),
    "fp16": (torch.float16, None),
    "bf16-momentum": (torch.float32, torch.bfloat16),
    "complex64": (torch.complex64, None),
}
IMPLS = {"single": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
# Tolerances against the float64 reference. The implementations compute in fp32 (fp64 for
# fp64) and round to the storage dtype after every step, as the reference does; what
# remains is fp32 arithmetic error, and for bf16/fp16 a storage rounding that falls on the
# other side of a rounding boundary now and then (one unit in the last place of values
# up to ~4: 2^-6 for bf16, 2^-8 for fp16).
TOL = {"fp32": 1e-5, "fp64": 1e-12, "bf16": 2e-2, "fp16": 5e-3, "bf16-momentum": 1e-4,
       "complex64": 1e-5}  # fmt: skip
STEPS = 6
NAMES = ["matrix", "non-contiguous", "channels-last", "one-element", "zero-size", "no-grad",
         "long"]  # fmt: skip


def make_params(dtype: torch.dtype, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    grid = rnd(4, 6)
    tensors = [
        rnd(5, 3),
        grid[:, ::2],  # a non-contiguous view (its own storage: grid is not a parameter)
        rnd(2, 3, 4, 4).contiguous(memory_format=torch.channels_last),
        rnd(1),
        rnd(0, 3),
        rnd(7),
        rnd(33000),  # two chunks of the fused CPU kernel (32768 elements each)
    ]
    params = [torch.nn.Parameter(t) for t in tensors]
    assert not params[1].is_contiguous() and not params[2].is_contiguous()
    return params


def grads_for(params: list[torch.Tensor], step: int, seed: int = 1) -> list[torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed * 1000 + step)
    out: list[torch.Tensor | None] = []
    for name, p in zip(NAMES, params, strict=True):
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
        if name == "no-grad" or (name == "one-element" and step % 3 == 1):
            g = None
        elif name == "matrix" and step % 4 == 2:
            g.zero_()  # an all-zero gradient
        elif name == "long":
            g[:5] = 0  # coordinates whose momentum stays 0: c == 0 there
        out.append(g)
    return out


def groups_of(params, overrides, variant):
    lr0 = torch.tensor(0.01, dtype=torch.float64) if variant == "tensor-lr" else 0.01
    return [
        {"params": params[:3], "lr": lr0, "weight_decay": 0.1, **overrides[0]},
        {"params": params[3:], "lr": 0.02, "weight_decay": 0.0, "betas": (0.8, 0.95),
         **overrides[1]},
    ]  # fmt: skip


def run(rule: str, storage: str, impl: str, variant: str = "", steps: int = STEPS):
    opt_cls, kw, overrides = RULES[rule]
    pdt, mdt = STORAGE[storage]
    params = make_params(pdt)
    opt = opt_cls(groups_of(params, overrides, variant), momentum_dtype=mdt,
                  maximize=variant == "maximize", **kw, **IMPLS[impl])  # fmt: skip
    for step in range(steps):
        for p, g in zip(params, grads_for(params, step), strict=True):
            p.grad = g
        opt.step()
    return params, opt


# --------------------------------------------------------------------------- reference
# tests/_reference.py: float64, from the definitions alone, sharing no code with clion_hf.


def reference_run(rule: str, storage: str, variant: str = "", steps: int = STEPS):
    opt_cls, kw, overrides = RULES[rule]
    pdt, mdt = STORAGE[storage]
    real = pdt.to_real() if pdt.is_complex else pdt
    mreal = mdt or (torch.float64 if real == torch.float64 else torch.float32)
    params = make_params(pdt)
    ps = [_real(p).double() for p in params]
    ms = [torch.zeros_like(p) for p in ps]
    sign = -1.0 if variant == "maximize" else 1.0
    groups = []
    for gi, (members, lr, betas, wd) in enumerate([(range(0, 3), 0.01, (0.9, 0.99), 0.1),
                                                   (range(3, 7), 0.02, (0.8, 0.95), 0.0)]):
        group = {**kw, **overrides[gi]}
        groups.append(reference.Group(list(members), lr, betas, wd, group.get("mode", "lion"),
                                      group.get("nu", 1.0), group.get("caution", False)))

    def store(i, p, m):  # parameters in their dtype, momentum in its storage dtype
        p.copy_(p.to(real).double())
        m.copy_(m.to(mreal).double())

    for step in range(steps):
        grads = [None if g is None else sign * _real(g).double()
                 for g in grads_for(params, step)]  # fmt: skip
        reference.step(ps, ms, grads, groups, store)
    return ps


def _real(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    return torch.view_as_real(t) if t.is_complex() else t


def _assert_bitwise(a_params, a_opt, b_params, b_opt) -> None:
    exact = dict(rtol=0, atol=0, equal_nan=True)
    for name, p, q in zip(NAMES, a_params, b_params, strict=True):
        torch.testing.assert_close(q.detach(), p.detach(), **exact, msg=name)
        if p in a_opt.state:
            torch.testing.assert_close(b_opt.state[q]["exp_avg"], a_opt.state[p]["exp_avg"],
                                       **exact, msg=name)  # fmt: skip
    if isinstance(a_opt, CLion):
        a, b = a_opt.last_step_stats(per_tensor=True), b_opt.last_step_stats(per_tensor=True)
        torch.testing.assert_close(b, a, **exact)


CASES = [(r, s, "") for r in RULES for s in STORAGE] + [
    (r, "fp32", v) for r in RULES for v in ("maximize", "tensor-lr")
] + [(r, "fp64", "tensor-lr") for r in RULES]  # fmt: skip


@pytest.mark.parametrize("rule,storage,variant", CASES,
                         ids=["-".join(filter(None, c)) for c in CASES])  # fmt: skip
def test_every_path_matches_the_reference_and_each_other(rule, storage, variant):
    ref = reference_run(rule, storage, variant)
    runs = {impl: run(rule, storage, impl, variant) for impl in IMPLS}
    tol = TOL[storage]
    for name, r, p in zip(NAMES, ref, runs["single"][0], strict=True):
        off = ~torch.isclose(_real(p).double(), r, rtol=tol, atol=tol)
        # With 8- or 11-bit gradients, c can cancel to (almost) 0 exactly, and sign(c)
        # then comes out differently in fp32 than in fp64 arithmetic: a few coordinates
        # of the 33000-element tensor may differ by some lr. Elsewhere: none.
        allowed = 1e-3 * off.numel() if storage in ("bf16", "fp16") else 0
        assert off.sum() <= allowed, (name, off.sum().item(), (_real(p).double() - r).abs().max())
    assert runs["single"][0][5].grad is None and len(runs["single"][1].state) == 6
    for impl in ("foreach", "fused"):
        _assert_bitwise(*runs["single"], *runs[impl])
    momentum = runs["fused"][1].state[runs["fused"][0][0]]["exp_avg"]
    pdt, mdt = STORAGE[storage]
    default = torch.complex64 if pdt.is_complex else (
        torch.float64 if pdt == torch.float64 else torch.float32)  # fmt: skip
    assert momentum.dtype == (mdt or default)


# --------------------------------------------------------------------------- non-finite


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_gradient_makes_the_coordinate_nan_on_every_path(rule, bad):
    # A non-finite c: once, with fused=True the parameter became NaN; foreach/single kept
    # it and its momentum was NaN forever (the coordinate silently stopped training); with
    # inf, sign(c) = 1 moved it on as if nothing had happened. One rule now, everywhere:
    # where c is not finite, h(c) is NaN, so the coordinate becomes (and stays) NaN.
    opt_cls, kw, overrides = RULES[rule]
    runs = {}
    for impl in IMPLS:
        params = make_params(torch.float32)
        opt = opt_cls(groups_of(params, overrides, ""), **kw, **IMPLS[impl])
        for step in range(3):
            grads = grads_for(params, step)
            if step == 1:
                grads[6][7] = bad  # "long", in group 1
                grads[0][1, 2] = bad  # "matrix", in group 0
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            opt.step()
            if step >= 1:
                for p, coord in ((params[6], (7,)), (params[0], (1, 2))):
                    assert p[coord].isnan(), (impl, step)
        runs[impl] = (params, opt)
    params = runs["single"][0]
    for p, coord in ((params[6], 7), (params[0], 5)):
        flat = p.detach().reshape(-1)
        assert flat.isfinite().sum() == flat.numel() - 1 and flat[coord].isnan()
    for impl in ("foreach", "fused"):
        _assert_bitwise(*runs["single"], *runs[impl])


# --------------------------------------------------------------------------- round trips


def _continue(params, opt, start: int, stop: int) -> None:
    for step in range(start, stop):
        for p, g in zip(params, grads_for(params, step), strict=True):
            p.grad = g
        opt.step()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rule", ["lion-caution", "clion-global", "clion-element"])
@pytest.mark.parametrize("how", ["state_dict", "deepcopy", "pickle"])
def test_round_trips_continue_bit_for_bit(how, rule, impl):
    full = run(rule, "bf16-momentum", impl, steps=6)
    params, opt = run(rule, "bf16-momentum", impl, steps=3)
    if how == "state_dict":
        opt_cls, kw, overrides = RULES[rule]
        resumed = [torch.nn.Parameter(p.detach().clone()) for p in params]
        saved = copy.deepcopy(opt.state_dict())
        opt = opt_cls(groups_of(resumed, overrides, ""), momentum_dtype=torch.bfloat16, **kw,
                      **IMPLS[impl])  # fmt: skip
        opt.load_state_dict(saved)
        params = resumed
    else:
        clone = copy.deepcopy if how == "deepcopy" else lambda x: pickle.loads(pickle.dumps(x))
        params, opt = clone((params, opt))
    assert opt.state[params[0]]["exp_avg"].dtype == torch.bfloat16
    _continue(params, opt, 3, 6)
    for p, q in zip(full[0], params, strict=True):
        assert torch.equal(p, q)


# --------------------------------------------------------------------------- lr tensors


@pytest.mark.parametrize("rule", RULES)
def test_one_element_lr_tensor_of_any_shape_steps_as_a_0d_one_on_every_path(rule):
    # An lr of shape (1,) or (1, 1): once accepted and working fused, while
    # foreach=True raised "scalar tensor expected to be 0 dim" and, with shape (1, 1),
    # foreach=False broadcast the 1-d parameters' update to 2-d and failed. Every
    # 1-element shape now steps as the 0-d lr does, in both groups, on every path.
    opt_cls, kw, overrides = RULES[rule]
    runs = {}
    for impl in IMPLS:
        for shape in ((), (1,), (1, 1)):
            params = make_params(torch.float32)
            groups = groups_of(params, overrides, "")
            for g in groups:
                g["lr"] = torch.full(shape, g["lr"], dtype=torch.float64)
            opt = opt_cls(groups, **kw, **IMPLS[impl])
            _continue(params, opt, 0, 3)
            assert opt.param_groups[0]["lr"].shape == shape  # the user's tensor, kept
            runs[impl, shape] = (params, opt)
    for key, got in runs.items():
        if key != ("single", ()):
            _assert_bitwise(*runs["single", ()], *got)


# --------------------------------------------------------------------------- tiny nu


@pytest.mark.parametrize("storage", ["fp32", "bf16", "fp16", "complex64", "fp64"])
@pytest.mark.parametrize("impl", IMPLS)
def test_soft_mode_with_nu_below_fp32_subnormals_is_lion_not_nan(impl, storage):
    # An nu that rounds to 0 in fp32 (1e-46, 1e-300) once made soft's c / nu
    # 0 / 0 = NaN wherever c == 0 (a zero gradient on a zero momentum), on every path.
    # clamp(c / nu, -1, 1) with such an nu is sign(c) for every c != 0 and 0 at c == 0:
    # Lion's update, bit for bit.
    pdt, _ = STORAGE[storage]
    for nu in (1e-46, 1e-300):
        lion_params, clion_params = make_params(pdt), make_params(pdt)
        lion = Lion(groups_of(lion_params, [{}, {}], ""), **IMPLS[impl])
        clion = CLion(groups_of(clion_params, [{}, {}], ""), mode="soft", nu=nu, **IMPLS[impl])
        _continue(lion_params, lion, 0, 3)
        _continue(clion_params, clion, 0, 3)
        assert (clion_params[6].grad[:5] == 0).all()  # where c == 0 ("long")
        assert all(_real(p).isfinite().all() for p in clion_params), nu
        _assert_bitwise(lion_params, lion, clion_params, clion)
