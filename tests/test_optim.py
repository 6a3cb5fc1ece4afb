"""clion_hf.CLion / clion_hf.Lion against an independent float64 reference of the update."""

from __future__ import annotations

import copy
import logging
import math

import _reference as reference
import pytest
import torch

from clion_hf import CLion, Lion

MODES = ["global", "tensor", "element", "soft"]
SHAPES = [(7,), (5, 3), (2, 3, 4), (1,)]


# --------------------------------------------------------------------------- reference
# tests/_reference.py: float64, from the definitions alone, sharing no code with clion_hf.


def make_problem(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).to(dtype) for s in SHAPES]
    return params, gen


def grads_for_step(params, gen, step):
    grads = []
    for i, p in enumerate(params):
        if i == 3 and step % 4 == 1:
            grads.append(None)  # a parameter without grad this step
            continue
        g = torch.randn(p.shape, generator=gen)
        if i == 2 and step % 5 == 0:
            g.zero_()  # an all-zero gradient
        if i == 1:
            g[0] = 0.0  # always-zero coordinates: m stays 0, so c == 0 there
        grads.append(g.to(p.dtype))
    return grads


def run_ours(params, dtype, mode, nu, steps, foreach, opt_cls=CLion, **kw):
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    groups = [
        {"params": ps[:2], "lr": 0.01, "weight_decay": 0.1},
        {"params": ps[2:], "lr": 0.02, "weight_decay": 0.0, "betas": (0.8, 0.95)},
    ]
    if opt_cls is CLion:
        opt = CLion(groups, mode=mode, nu=nu, foreach=foreach, **kw)
    else:
        opt = opt_cls(groups, foreach=foreach, **kw)
    gen = torch.Generator().manual_seed(123)
    for step in range(steps):
        for p, g in zip(ps, grads_for_step(ps, gen, step), strict=True):
            p.grad = g
        opt.step()
    return ps, opt


def run_ref(params, dtype, mode, nu, steps, caution=False):
    ps = [p.double().clone() for p in params]
    ms = [torch.zeros_like(p) for p in ps]
    mdt = torch.float64 if dtype == torch.float64 else torch.float32

    def store(i, p, m):  # parameters in their dtype, momentum in fp32/fp64
        p.copy_(p.to(dtype).double())
        m.copy_(m.to(mdt).double())

    groups = [reference.Group([0, 1], 0.01, (0.9, 0.99), 0.1, mode, nu, caution),
              reference.Group([2, 3], 0.02, (0.8, 0.95), 0.0, mode, nu, caution)]  # fmt: skip
    gen = torch.Generator().manual_seed(123)
    mins = []
    for step in range(steps):
        gs = grads_for_step([p.to(dtype) for p in ps], gen, step)
        grads = [None if g is None else g.double() for g in gs]
        mins.append(reference.step(ps, ms, grads, groups, store))
    return ps, mins


TOL = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-12, 1e-12), torch.bfloat16: (2e-2, 2e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("mode,nu", [("global", 2e-3), ("global", 1e-12), ("tensor", 0.01),
                                     ("element", 0.3), ("soft", 0.5)])
@pytest.mark.parametrize("foreach", [False, True])
def test_matches_float64_reference(dtype, mode, nu, foreach):
    params, _ = make_problem(dtype)
    ours, _ = run_ours(params, dtype, mode, nu, 20, foreach)
    ref, mins = run_ref(params, dtype, mode, nu, 20)
    rtol, atol = TOL[dtype]
    for o, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(o.detach().double(), r, rtol=rtol, atol=atol)
    if mode == "global":
        # The two nus exercise both branches of the global decision.
        taken = [m >= nu for m in mins]
        assert all(taken) if nu == 1e-12 else (any(taken) and not all(taken))


def test_tensor_mode_takes_both_branches():
    # With nu = 0.01 some tensors take the sign branch and some do not, on some steps.
    params, _ = make_problem(torch.float64)
    _, opt = run_ours(params, torch.float64, "tensor", 0.01, 3, False)
    fracs = [t["sign_fraction"] for t in opt.last_step_stats(per_tensor=True)["tensors"]]
    assert 0.0 < opt.last_step_stats()["sign_fraction"] < 1.0
    assert set(fracs) <= {0.0, 1.0}


@pytest.mark.parametrize("mode,nu", [("global", 2e-3), ("global", 1e-12), ("tensor", 0.01),
                                     ("element", 0.3), ("soft", 0.5)])
def test_single_tensor_and_foreach_agree_bitwise(mode, nu):
    params, _ = make_problem(torch.float32)
    a, oa = run_ours(params, torch.float32, mode, nu, 20, foreach=False)
    b, ob = run_ours(params, torch.float32, mode, nu, 20, foreach=True)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert oa.last_step_stats(per_tensor=True) == ob.last_step_stats(per_tensor=True)


@pytest.mark.parametrize("foreach", [False, True])
def test_element_mode_with_tiny_nu_equals_lion(foreach):
    params, _ = make_problem(torch.float32)
    a, _ = run_ours(params, torch.float32, "element", 1e-30, 20, foreach)
    b, _ = run_ours(params, torch.float32, None, None, 20, foreach, opt_cls=Lion)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("foreach", [False, True])
def test_lion_and_cautious_lion_match_reference(foreach):
    params, _ = make_problem(torch.float64)
    for caution in (False, True):
        ours, _ = run_ours(params, torch.float64, None, None, 20, foreach, opt_cls=Lion,
                           caution=caution)
        ref, _ = run_ref(params, torch.float64, "lion", 1.0, 20, caution=caution)
        for o, r in zip(ours, ref, strict=True):
            torch.testing.assert_close(o.detach(), r, rtol=1e-12, atol=1e-12)
    plain, _ = run_ours(params, torch.float64, None, None, 20, foreach, opt_cls=Lion)
    cautious, _ = run_ours(params, torch.float64, None, None, 20, foreach, opt_cls=Lion,
                           caution=True)
    assert not torch.equal(plain[0], cautious[0])


def test_global_decision_spans_param_groups():
    # Group A alone would take the sign branch; group B has a tiny |c|, which must veto it.
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(3))
    opt = CLion([{"params": [a]}, {"params": [b]}], lr=0.1, nu=1e-3, betas=(0.0, 0.0))
    a.grad = torch.tensor([1.0, -2.0, 3.0])
    b.grad = torch.tensor([1e-6, 0.0, 2.0])
    opt.step()
    torch.testing.assert_close(a.detach(), torch.tensor([-0.1, 0.2, -0.3]))
    assert opt.last_step_stats()["sign_fraction"] == 0.0
    assert opt.last_step_stats()["min_abs_c"] == pytest.approx(1e-6)


def test_complex_parameters_update_as_real_pairs():
    z = torch.nn.Parameter(torch.randn(4, dtype=torch.complex64))
    r = torch.nn.Parameter(torch.view_as_real(z.detach()).clone())
    oz, orr = CLion([z], lr=0.1, mode="element", nu=0.5), CLion([r], lr=0.1, mode="element", nu=0.5)
    for _ in range(3):
        g = torch.randn(4, dtype=torch.complex64)
        z.grad, r.grad = g, torch.view_as_real(g).clone()
        oz.step()
        orr.step()
    assert torch.equal(torch.view_as_real(z.detach()), r.detach())


@pytest.mark.parametrize("opt_cls", [CLion, Lion])
def test_maximize_equals_minimizing_the_negated_gradient(opt_cls):
    p1 = torch.nn.Parameter(torch.randn(6))
    p2 = torch.nn.Parameter(p1.detach().clone())
    o1, o2 = opt_cls([p1], lr=0.1, maximize=True), opt_cls([p2], lr=0.1)
    for _ in range(3):
        g = torch.randn(6)
        p1.grad, p2.grad = g, -g
        o1.step()
        o2.step()
    assert torch.equal(p1, p2)


@pytest.mark.parametrize("opt_cls,kw", [(CLion, {"mode": "element"}), (CLion, {}), (Lion, {})])
def test_state_dict_round_trip_is_bit_identical(opt_cls, kw):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    data = [(torch.randn(16, 5), torch.randn(16, 2)) for _ in range(8)]

    def train(m, opt, batches):
        for x, y in batches:
            opt.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            opt.step()

    full = copy.deepcopy(model)
    opt_full = opt_cls(full.parameters(), lr=1e-2, weight_decay=0.1, **kw)
    train(full, opt_full, data)

    half = copy.deepcopy(model)
    opt_half = opt_cls(half.parameters(), lr=1e-2, weight_decay=0.1, **kw)
    train(half, opt_half, data[:4])
    saved_model = copy.deepcopy(half.state_dict())
    saved_opt = copy.deepcopy(opt_half.state_dict())

    resumed = copy.deepcopy(model)
    resumed.load_state_dict(saved_model)
    opt_resumed = opt_cls(resumed.parameters(), lr=1e-2, weight_decay=0.1, **kw)
    opt_resumed.load_state_dict(saved_opt)
    train(resumed, opt_resumed, data[4:])
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("make_opt", [
    lambda ps: Lion(ps, lr=3e-3),
    lambda ps: CLion(ps, lr=3e-3, mode="element", nu=1e-5),
], ids=["lion", "clion-element"])
def test_mlp_regression_trains(make_opt):
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    teacher = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    with torch.no_grad():
        y = teacher(x)  # a realizable regression target
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    opt = make_opt(model.parameters())
    losses = []
    for _ in range(200):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_global_mode_warns_at_its_first_step_on_a_transformers_model(caplog):
    # The paper's rule at its defaults never takes the sign branch on a real model: say so
    # at step 1 (short runs never reach step 100), once, at WARNING (shown by default).
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64,
                                       n_positions=32))
    opt = CLion(model.parameters())  # the defaults: mode="global", nu=1e-4
    ids = torch.randint(0, 64, (4, 16))
    with caplog.at_level(logging.WARNING, logger="clion_hf"):
        for step in range(100):
            opt.zero_grad()
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            if step == 0:
                (record,) = [r for r in caplog.records if r.name.startswith("clion_hf")]
                assert record.levelno == logging.WARNING
    warnings = [r for r in caplog.records if r.name.startswith("clion_hf")]
    assert warnings == [record]  # once, not again at step 100
    msg = record.getMessage()
    assert "first step took the sign branch on no coordinate" in msg
    assert "mode='global'" in msg and "nu=0.0001" in msg and "momentum SGD at lr=0.0001" in msg
    assert "SGD-sized learning rate" in msg and "mode='element'" in msg
    low = float(msg.split("smallest non-zero abs(c) was ")[1].split(",")[0])
    assert 0 < low < 1e-4


def test_element_mode_does_not_warn(caplog):
    p = torch.nn.Parameter(torch.randn(10))
    opt = CLion([p], mode="element", nu=1e-8)
    with caplog.at_level(logging.WARNING, logger="clion_hf"):
        for _ in range(101):
            p.grad = torch.randn(10)
            opt.step()
    assert not [r for r in caplog.records if r.name.startswith("clion_hf")]


@pytest.mark.parametrize("kwargs,match", [
    ({"lr": -1.0}, "lr=-1.0"),
    ({"weight_decay": -0.1}, "weight_decay=-0.1"),
    ({"betas": (1.0, 0.99)}, r"betas\[0\]=1.0"),
    ({"betas": (0.9, -0.1)}, r"betas\[1\]=-0.1"),
    ({"nu": 0.0}, "nu=0.0"),
    ({"nu": float("inf")}, "nu=inf"),
    ({"nu": float("nan")}, "nu=nan"),
    ({"mode": "layer"}, "mode='layer'.*global, tensor, element, soft"),
])
def test_bad_hyper_parameters_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CLion([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_lion_bad_hyper_parameters_raise_value_error():
    with pytest.raises(ValueError, match="lr=-0.5"):
        Lion([torch.nn.Parameter(torch.zeros(2))], lr=-0.5)


def test_global_mode_groups_must_agree():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="disagree on"):
        CLion([{"params": [a]}, {"params": [b], "nu": 1e-3}], mode="global")
    opt = CLion([{"params": [a]}], mode="global")
    with pytest.raises(ValueError, match="disagree on"):
        opt.add_param_group({"params": [b], "mode": "element"})
    # Non-global groups may differ.
    CLion([{"params": [a], "mode": "element"}, {"params": [b], "mode": "tensor"}])


def test_sparse_gradients_are_refused():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        CLion(emb.parameters()).step()


def test_bf16_momentum_halves_state_and_trains():
    p32 = torch.nn.Parameter(torch.randn(100))
    p16 = torch.nn.Parameter(p32.detach().clone())
    o32 = CLion([p32], mode="element", nu=1e-5)
    o16 = CLion([p16], mode="element", nu=1e-5, momentum_dtype=torch.bfloat16)
    for _ in range(5):
        g = torch.randn(100)
        p32.grad, p16.grad = g, g.clone()
        o32.step()
        o16.step()
    assert o16.state[p16]["exp_avg"].dtype == torch.bfloat16
    assert o16.state_bytes() * 2 == o32.state_bytes()
    torch.testing.assert_close(p16, p32, rtol=0, atol=1e-3)


def test_statistics_and_warning_survive_torch_compile(caplog):
    # Attribute writes inside a compiled optimizer step are dropped by dynamo: the
    # statistics live in tensors updated in place, and the warning comes at the next read.
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    opt = CLion(model.parameters(), lr=1e-3, nu=1.0)  # global mode; nu far above |c|
    x = torch.randn(16, 8)
    compiled_step = torch.compile(opt.step, fullgraph=True)
    with caplog.at_level(logging.WARNING, logger="clion_hf"):
        for _ in range(100):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            compiled_step()
        # compiled steps cannot sync to check
        assert not [r for r in caplog.records if r.name.startswith("clion_hf")]
        stats = opt.consume_stats()
    assert stats["sign_fraction"] == 0.0 and 0 < stats["min_abs_c"] < 1.0
    assert len([r for r in caplog.records if "sign branch on none" in r.getMessage()]) == 1
    assert opt.consume_stats() == {}  # reset by the first read


@pytest.mark.slow
@pytest.mark.parametrize("make", [
    lambda ps: CLion(ps, lr=1e-2, mode="element", nu=1e-3),
    lambda ps: CLion(ps, lr=1e-2, mode="global", nu=1e-3),
    lambda ps: Lion(ps, lr=1e-2, track_stats=True),
], ids=["clion-element", "clion-global", "lion"])
def test_compiled_statistics_equal_eager_ones(make):
    # Under torch.compile, CLion's min abs(c) once stayed at step 1's value
    # (consume_stats gave inf) and Lion's consume_stats() gave {}. Each step starts from
    # the same parameters and momenta on both sides, so the statistics must agree (fp64:
    # Inductor rounds c = lerp(m, g) its own way, and c is a difference of near values).
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    model.double()
    twin = copy.deepcopy(model)
    opt, eager = make(model.parameters()), make(twin.parameters())

    @torch.compile(fullgraph=True)
    def compiled_step():
        opt.step()

    gen = torch.Generator().manual_seed(1)
    per_tensor = isinstance(opt, CLion)
    for step in range(4):
        x = torch.randn(16, 4, generator=gen, dtype=torch.float64)
        y = torch.randn(16, 1, generator=gen, dtype=torch.float64)
        with torch.no_grad():  # the eager twin starts this step where the compiled one is
            for p, q in zip(model.parameters(), twin.parameters(), strict=True):
                q.copy_(p)
                if opt.state[p]:
                    eager.state[q]["exp_avg"].copy_(opt.state[p]["exp_avg"])
        for m, step_fn in ((model, compiled_step), (twin, eager.step)):
            torch.nn.functional.mse_loss(m(x), y).backward()
            step_fn()
            m.zero_grad()
        if per_tensor:
            got, want = opt.last_step_stats(per_tensor=True), eager.last_step_stats(True)
            assert got["sign_fraction"] == want["sign_fraction"]
            assert got["min_abs_c"] == pytest.approx(want["min_abs_c"], rel=1e-9)
            for a, b in zip(got["tensors"], want["tensors"], strict=True):
                assert a["min_abs_c"] == pytest.approx(b["min_abs_c"], rel=1e-9)
                assert a["sign_fraction"] == b["sign_fraction"]
        if step % 2 == 1:
            got, want = opt.consume_stats(), eager.consume_stats()
            assert set(got) == set(want) and want and math.isfinite(want["min_abs_c"])
            assert got == pytest.approx(want, rel=1e-9)


# --------------------------------------------------------------------------- regressions

IMPLS = [{"fused": True}, {"foreach": True}, {"foreach": False}, {}]
IMPL_IDS = ["fused", "foreach", "single", "default"]


def _groups_step(groups, impl, grad=0.5):
    """One CLion step on one-element parameters (value 1, lr 0.1, grad ``grad``)."""
    ps = [torch.nn.Parameter(torch.ones(1)) for _ in groups]
    opt = CLion([{"params": [p], **g} for p, g in zip(ps, groups, strict=True)], lr=0.1, **impl)
    for p in ps:
        p.grad = torch.full((1,), grad)
    opt.step()
    return [p.item() for p in ps]


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_each_param_group_is_decided_with_its_own_mode_and_nu(impl):
    # Each group's own mode/nu decide (not the first group's). c = 0.1 * 0.5 =
    # 0.05: the sign branch gives 1 - 0.1 = 0.9, the identity 1 - 0.1 * 0.05 = 0.995.
    sign, identity = pytest.approx(0.9), pytest.approx(0.995)
    tensor_small, tensor_big = {"mode": "tensor", "nu": 1e-6}, {"mode": "tensor", "nu": 10.0}
    assert _groups_step([tensor_small, tensor_big], impl) == [sign, identity]
    assert _groups_step([tensor_big, tensor_small], impl) == [identity, sign]
    # an element group before a tensor group (foreach=True raised a bare AssertionError)
    element, tensor = {"mode": "element", "nu": 1e-4}, {"mode": "tensor", "nu": 1e-4}
    assert _groups_step([element, tensor], impl) == [sign, sign]
    assert _groups_step([{"mode": "soft", "nu": 0.1}, tensor], impl) == [pytest.approx(0.95),
                                                                          sign]  # fmt: skip


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
@pytest.mark.parametrize("mode", ["global", "tensor", "element"])
def test_fp64_minimum_is_compared_with_nu_in_fp64(mode, impl):
    # A min of 1e-4 * (1 - 1e-9) is compared with nu in fp64 (in fp32 it rounds to nu,
    # and took the sign branch); element mode decided the same data right.
    c = 1e-4 * (1 - 1e-9)
    p = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = CLion([p], lr=0.1, nu=1e-4, mode=mode, betas=(0.0, 0.0), **impl)
    p.grad = torch.tensor([c, 1.0], dtype=torch.float64)
    opt.step()
    assert p[0].item() == 1 - 0.1 * c  # identity branch for the small coordinate
    assert opt.last_step_stats()["min_abs_c"] == c
    # fp32 parameters compare in fp32, where the same value is nu itself: sign branch
    q = torch.nn.Parameter(torch.ones(2))
    opt32 = CLion([q], lr=0.1, nu=1e-4, mode=mode, betas=(0.0, 0.0), **impl)
    q.grad = torch.tensor([c, 1.0])
    opt32.step()
    assert q[0].item() == pytest.approx(0.9)


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_fp64_minimum_below_fp32_range_is_reported(impl):
    # a non-zero fp64 min below fp32's range is reported as it is, not as 0
    p = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = CLion([p], lr=0.1, nu=1e-4, betas=(0.0, 0.0), **impl)
    p.grad = torch.tensor([1e-50, 1.0], dtype=torch.float64)
    opt.step()
    stats = opt.last_step_stats(per_tensor=True)
    assert stats["min_abs_c"] == 1e-50 and stats["tensors"][0]["min_abs_c"] == 1e-50
    assert opt.consume_stats()["min_abs_c"] == 1e-50


@pytest.mark.parametrize("opt_cls", [CLion, Lion])
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_step_between_forward_and_backward_is_caught_by_autograd(opt_cls, impl):
    # An in-place step on a parameter autograd still needs raises, as torch's optimizers
    # do (the fused CPU path once wrote behind autograd's back, silently).
    w = torch.nn.Parameter(torch.randn(5))
    opt = opt_cls([w], lr=0.1, **impl)
    w.grad = torch.randn(5)
    loss = (w * w).sum()  # saves w for the backward
    version = w._version
    opt.step()
    assert w._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("opt_cls,kw", [(CLion, {}), (CLion, {"mode": "element"}), (Lion, {})])
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_deepcopy_and_pickle_round_trips_keep_stepping(opt_cls, kw, how):
    # step() works after copy.deepcopy(opt) and pickling (once: AttributeError: '_stats')
    import pickle

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = opt_cls(model.parameters(), lr=0.01, **kw)
    x = torch.randn(8, 4)
    model(x).pow(2).sum().backward()
    opt.step()
    twin_model, twin = (copy.deepcopy((model, opt)) if how == "deepcopy"
                        else pickle.loads(pickle.dumps((model, opt))))  # fmt: skip
    for m, o in ((model, opt), (twin_model, twin)):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()
    for a, b in zip(model.parameters(), twin_model.parameters(), strict=True):
        assert torch.equal(a, b)
    if opt_cls is CLion:  # statistics are rebuilt (fresh) and then kept as before
        assert twin.track_stats and twin.last_step_stats() == opt.last_step_stats()


def test_statistics_cache_stays_bounded_when_the_set_of_grads_changes():
    # The statistics cache stays bounded when the set of parameters with a gradient
    # changes (mixture-of-experts routing, frozen layers toggled)
    from clion_hf.optim._stats import SLOTS

    ps = [torch.nn.Parameter(torch.randn(3)) for _ in range(12)]
    opt = CLion(ps, mode="element", nu=1e-3)
    gen = torch.Generator().manual_seed(0)
    for step in range(200):
        chosen = torch.randperm(12, generator=gen)[: 1 + step % 11].tolist()
        for i, p in enumerate(ps):
            p.grad = torch.randn(3, generator=gen) if i in chosen else None
        opt.step()
        stats = opt.last_step_stats(per_tensor=True)
        assert len(stats["tensors"]) == len(chosen)
    assert len(opt._stats.slots) <= SLOTS


def test_docstrings_do_not_point_outside_the_package():
    # a file outside the repository and the wheel is nothing a reader can open
    from pathlib import Path

    import clion_hf

    root = Path(clion_hf.__file__).parent
    for path in root.rglob("*.py"):
        assert "shared/CLION.md" not in path.read_text(), path


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
@pytest.mark.parametrize("mode", ["global", "tensor"])
def test_maximize_decides_on_the_direction_of_the_negated_gradient(mode, impl):
    # Found while building the matrix tests: pass 1 (the min |c| that decides the branch)
    # ignored maximize, as if |beta1 * m + (1 - beta1) * g| did not depend on g's sign
    # once m != 0. With beta1 = beta2 = 0.5 and g = 1, then -0.4: the true c at step 2 is
    # 0.5 * (-0.5) + 0.5 * 0.4 = -0.05 (identity at nu = 0.1), the wrong one -0.45 (sign).
    p = torch.nn.Parameter(torch.zeros(1))
    q = torch.nn.Parameter(torch.zeros(1))
    kw = dict(lr=0.1, betas=(0.5, 0.5), nu=0.1, mode=mode, **impl)
    maximizing, minimizing = CLion([p], maximize=True, **kw), CLion([q], **kw)
    for g in (1.0, -0.4):
        p.grad, q.grad = torch.full((1,), g), torch.full((1,), -g)
        maximizing.step()
        minimizing.step()
        assert torch.equal(p, q)
        assert maximizing.last_step_stats() == minimizing.last_step_stats()
    assert maximizing.last_step_stats()["sign_fraction"] == 0.0


@pytest.mark.parametrize("impl", ["single", "foreach", "fused"])
def test_functional_entry_points_match_the_optimizers(impl):
    from clion_hf.optim import functional as F

    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=gen) for s in SHAPES]
    gs = [torch.randn(s, generator=gen) for s in SHAPES]
    for mode in ("lion", "tensor", "element"):
        qs = [torch.nn.Parameter(p.clone()) for p in ps]
        ms = [torch.zeros_like(p) for p in ps]
        kw = dict(lr=0.01, beta1=0.9, beta2=0.99, weight_decay=0.1)
        if mode == "lion":
            opt = Lion(qs, lr=0.01, weight_decay=0.1, foreach=False)
            F.lion(ps, gs, ms, impl=impl, **kw)
            out = None
        else:
            opt = CLion(qs, lr=0.01, weight_decay=0.1, mode=mode, nu=0.05, foreach=False)
            out = F.clion(ps, gs, ms, nu=0.05, mode=mode, stats=True, impl=impl, **kw)
        for q, g in zip(qs, gs, strict=True):
            q.grad = g
        opt.step()
        for p, q, m in zip(ps, qs, ms, strict=True):
            assert torch.equal(p, q) and torch.equal(m, opt.state[q]["exp_avg"])
        if out is not None:
            tensors = opt.last_step_stats(per_tensor=True)["tensors"]
            assert out.min_abs_c.tolist() == [t["min_abs_c"] for t in tensors]
            counts = (out.count / torch.tensor([p.numel() for p in ps])).tolist()
            assert counts == pytest.approx([t["sign_fraction"] for t in tensors])
    with pytest.raises(ValueError, match="mode='layer'"):
        F.clion(ps, gs, ms, lr=0.01, beta1=0.9, beta2=0.99, nu=0.1, mode="layer")
    with pytest.raises(ValueError, match=r"exp_avgs\[0\]|params\[0\]: exp_avg has shape"):
        F.lion(ps, gs, [torch.zeros(3)] + ms[1:], lr=0.01, beta1=0.9, beta2=0.99)


def test_no_sign_branch_warning_names_the_set_lr_not_the_warmup_one(caplog):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(512, 512))
    opt = CLion([w], lr=0.1)  # global mode, nu=1e-4: min abs(c) of 262k random entries is below
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 1000))
    with caplog.at_level(logging.WARNING, logger="clion_hf"):
        for _ in range(100):
            w.grad = torch.randn_like(w)
            opt.step()
            warmup.step()
    (record,) = [r for r in caplog.records if r.name.startswith("clion_hf")]
    assert "lr=0.1 (scheduled now: 0.0001)" in record.getMessage(), record.getMessage()


def test_no_sign_branch_warning_after_100_steps_names_the_set_lr(caplog):
    # element mode is not checked at step 1; its 100-step check names the lr the user set
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(64, 64))
    opt = CLion([w], lr=0.1, mode="element", nu=1e3)  # nu above every |c|
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 1000))
    with caplog.at_level(logging.WARNING, logger="clion_hf"):
        for _ in range(100):
            w.grad = torch.randn_like(w)
            opt.step()
            warmup.step()
    (record,) = [r for r in caplog.records if "sign branch on none" in r.getMessage()]
    assert "lr=0.1 (scheduled now: 0.01)" in record.getMessage(), record.getMessage()


def test_element_mode_does_not_warn_at_its_first_step(caplog):
    # the same model and defaults as the global-mode test above, mode="element": no warning
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64,
                                       n_positions=32))
    opt = CLion(model.parameters(), mode="element")
    ids = torch.randint(0, 64, (4, 16))
    with caplog.at_level(logging.WARNING, logger="clion_hf"):
        for _ in range(3):
            opt.zero_grad()
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
    assert 0 < opt.last_step_stats()["sign_fraction"] < 1
    assert not [r for r in caplog.records if r.name.startswith("clion_hf")]


@pytest.mark.parametrize("cls", [CLion, Lion])
def test_lr_zero_gets_a_warning(cls, caplog):
    p = torch.nn.Parameter(torch.randn(4))
    with caplog.at_level(logging.WARNING, logger="clion_hf"):
        cls([p], lr=0.1)
        assert not caplog.records
        cls([{"params": [p], "lr": 0.0}], lr=0.1)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith(f"clion_hf: {cls.__name__} got lr=0 (param group 0)")


@pytest.mark.parametrize("impl", [{"foreach": False}, {"foreach": True}, {"fused": None}])
def test_lion_track_stats_records_the_min_abs_direction_per_step(impl):
    """Lion's opt-in tau_t: the smallest non-zero abs(c) over the steps since the last
    read, c = beta1*m + (1-beta1)*g before the update; the same bits with it on or off."""
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt = Lion([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.02}], lr=0.01,
               weight_decay=0.1, track_stats=True, **impl)  # fmt: skip
    plain = Lion([{"params": twins[:1]}, {"params": twins[1:], "lr": 0.02}], lr=0.01,
                 weight_decay=0.1, **impl)  # fmt: skip
    assert opt.consume_stats() == {} and plain.consume_stats() == {}
    expected = math.inf
    for step in range(3):
        grads = [torch.randn_like(p) for p in ps]
        grads[0][0, 0] = 0.0  # a zero of c (m = 0 at the first step) is not the minimum
        for p, t, g in zip(ps, twins, grads, strict=True):
            p.grad, t.grad = g.clone(), g.clone()
        cs = [0.9 * opt.state[p]["exp_avg"] + 0.1 * p.grad if opt.state[p] else 0.1 * p.grad
              for p in ps]  # fmt: skip
        expected = min(expected, min(float(c.abs()[c != 0].min()) for c in cs))
        opt.step()
        plain.step()
        if step == 1:
            assert opt.consume_stats() == {"min_abs_c": pytest.approx(expected, rel=1e-6)}
            expected = math.inf
    assert opt.consume_stats()["min_abs_c"] == pytest.approx(expected, rel=1e-6)
    assert opt.consume_stats() == {}
    for p, t in zip(ps, twins, strict=True):
        assert torch.equal(p, t)
    assert plain.consume_stats() == {}


def test_lion_track_stats_survives_load_state_dict_and_pickle():
    # accelerate's optimizer wrapper reloads the state dict on prepare(): torch's
    # load_state_dict calls __setstate__ without track_stats, which must not reset it
    import pickle

    p = torch.nn.Parameter(torch.randn(4))
    opt = Lion([p], lr=0.01, track_stats=True)
    p.grad = torch.randn(4)
    opt.step()
    opt.load_state_dict(opt.state_dict())
    assert opt.track_stats
    twin = pickle.loads(pickle.dumps(opt))
    assert twin.track_stats and not Lion([p]).track_stats
    clion = CLion([p], track_stats=False)
    clion.load_state_dict(clion.state_dict())
    assert not clion.track_stats
    with pytest.raises(ValueError, match="track_stats"):
        Lion([p], track_stats="yes")


@pytest.mark.parametrize("signed", [1, 10])
def test_element_mode_warns_when_it_is_effectively_momentum_sgd(signed, caplog):
    # 1 of 10_000 coordinates above nu (1e-4 < ELEMENT_SGD_FRACTION): a warning after 100
    # steps; 10 of 10_000 (1e-3): none
    from clion_hf.optim.clion import ELEMENT_SGD_FRACTION

    assert 1 / 10_000 < ELEMENT_SGD_FRACTION < 10 / 10_000
    p = torch.nn.Parameter(torch.zeros(10_000))
    opt = CLion([p], lr=1e-3, mode="element", nu=1e-2)
    grad = torch.full((10_000,), 1e-4)
    grad[:signed] = 1.0  # |c| = 0.1 there (step 1), above nu; 1e-5 elsewhere, below
    with caplog.at_level(logging.WARNING, logger="clion_hf"):
        for _ in range(100):
            p.grad = grad.clone()
            opt.step()
    records = [r for r in caplog.records if r.name.startswith("clion_hf")]
    if signed == 10:
        assert not records
        return
    (record,) = records
    assert "mode='element', nu=0.01) took the sign branch on 0.01% of coordinates" in (
        record.getMessage()
    ), record.getMessage()
    assert "momentum SGD at lr=0.001" in record.getMessage()


# --------------------------------------------------------------------------- import graph


def _import_graph(package_dir, package: str) -> dict[str, set[str]]:
    """module -> the modules of ``package`` it imports (at the top or inside functions)."""
    import ast
    from pathlib import Path

    root = Path(package_dir)
    names = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        names[path] = (".".join([package, *parts]), is_pkg)
    modules = {name for name, _ in names.values()}
    graph: dict[str, set[str]] = {}
    for path, (name, is_pkg) in names.items():
        here = name if is_pkg else name.rpartition(".")[0]
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                # "from pkg import name": the submodule pkg.name where there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]  # fmt: skip
            else:
                continue
            edges.update(t for t in targets if t in modules and t != name)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a list of modules, the first repeated last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_optimizer_modules_import_one_another_without_a_cycle(tmp_path):
    """kernels import the math (_math), never functional; functional calls the kernels.

    Imports inside functions count: a lazy import hides a cycle, it does not remove it.
    Parent packages are not edges (every submodule import runs its package's __init__).
    """
    import clion_hf.optim

    root = clion_hf.optim.__path__[0]
    graph = _import_graph(root, "clion_hf.optim")
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    assert "clion_hf.optim.functional" not in set().union(
        *(graph[m] for m in graph if m.startswith("clion_hf.optim.kernels")))
    assert graph["clion_hf.optim._math"] == set()  # the leaf
    # the checker finds a cycle, lazy import included
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n")
    assert _cycle(_import_graph(pkg, "pkg")) == ["pkg.a", "pkg.b", "pkg.a"]


def test_no_module_of_the_package_imports_itself_back():
    """The whole package, lazy imports included (the Trainer callback once imported the
    Trainer glue that imports it)."""
    import clion_hf

    cycle = _cycle(_import_graph(clion_hf.__path__[0], "clion_hf"))
    assert cycle is None, " -> ".join(cycle)
