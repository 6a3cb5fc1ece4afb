"""Fused paths: compiled CPU kernels and Triton kernels, against foreach and float64 refs."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_optim import TOL, make_problem, run_ours, run_ref

from clion_hf import CLion, Lion
from clion_hf.optim.fused import default_fused

ROOT = Path(__file__).resolve().parents[1]
MODES = [("global", 2e-3), ("global", 1e-12), ("tensor", 0.01), ("element", 0.3), ("soft", 0.5)]
EPS32 = torch.finfo(torch.float32).eps


def _one_step_pair(opt_cls, shapes, pdt, mdt, **kw):
    """Two optimizers from the same state (after 3 foreach steps), then one step each."""
    gen = torch.Generator().manual_seed(7)
    ps = [torch.nn.Parameter(torch.randn(s, generator=gen).to(pdt)) for s in shapes]
    opt = opt_cls(ps, foreach=True, fused=False, momentum_dtype=mdt, **kw)
    for _ in range(3):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen).to(pdt)
        opt.step()
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen).to(pdt)
    ps_f = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    for a, b in zip(ps_f, ps, strict=True):
        a.grad = b.grad.clone()
    opt_f = opt_cls(ps_f, fused=True, momentum_dtype=mdt, **kw)
    opt_f.load_state_dict(copy.deepcopy(opt.state_dict()))
    m_before = [opt.state[p]["exp_avg"].clone() for p in ps]
    opt.step()
    opt_f.step()
    return ps, opt, ps_f, opt_f, m_before


def _assert_within_one_ulp(a, b, *scales):
    """|a - b| <= one fp32 ulp of the largest operand (fma vs mul+add in lerp)."""
    bound = torch.stack([s.detach().abs().float() for s in (a, *scales)]).amax(0) * EPS32
    diff = (a.detach().float() - b.detach().float()).abs()
    assert bool((diff <= bound).all()), float((diff - bound).max())


SHAPES = [(64, 48), (1000,), (3, 5, 8), (2,)]
CASES = [("lion", {}), ("lion-caution", {"caution": True})] + [
    (f"clion-{m}", {"mode": m, "nu": nu}) for m, nu in MODES
]


@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
def test_fused_cpu_matches_foreach_one_step_fp32(name, kw):
    opt_cls = Lion if name.startswith("lion") else CLion
    kw = {**kw, "lr": 0.01, "weight_decay": 0.1}
    ps, opt, ps_f, opt_f, m_before = _one_step_pair(opt_cls, SHAPES, torch.float32, None, **kw)
    for p, q, m0 in zip(ps, ps_f, m_before, strict=True):
        _assert_within_one_ulp(p, q, m0, p.grad)
        _assert_within_one_ulp(opt.state[p]["exp_avg"], opt_f.state[q]["exp_avg"], m0, p.grad)
    if opt_cls is CLion:
        a, b = opt.last_step_stats(per_tensor=True), opt_f.last_step_stats(per_tensor=True)
        assert a["sign_fraction"] == pytest.approx(b["sign_fraction"])
        for x, y in zip(a["tensors"], b["tensors"], strict=True):
            assert x["sign_fraction"] == y["sign_fraction"]
            assert x["min_abs_c"] == pytest.approx(y["min_abs_c"], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("pdt,mdt", [(torch.bfloat16, None), (torch.float32, torch.bfloat16),
                                     (torch.bfloat16, torch.bfloat16)])
@pytest.mark.parametrize("name,kw", CASES[:2] + CASES[3:],
                         ids=[c[0] for c in CASES[:2] + CASES[3:]])
def test_fused_cpu_matches_foreach_low_precision(name, kw, pdt, mdt):
    opt_cls = Lion if name.startswith("lion") else CLion
    kw = {**kw, "lr": 0.01, "weight_decay": 0.1}
    ps, opt, ps_f, opt_f, _ = _one_step_pair(opt_cls, SHAPES, pdt, mdt, **kw)
    for p, q in zip(ps, ps_f, strict=True):
        assert p.dtype == q.dtype == pdt
        assert opt_f.state[q]["exp_avg"].dtype == (mdt or torch.float32)
        # Math is fp32 on both paths; storage rounding may differ by one unit of bf16.
        torch.testing.assert_close(q, p, rtol=2 ** -7, atol=1e-6)
        torch.testing.assert_close(opt_f.state[q]["exp_avg"], opt.state[p]["exp_avg"],
                                   rtol=2 ** -7, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode,nu", MODES)
def test_fused_cpu_matches_float64_reference(dtype, mode, nu):
    # The core tests' problem: groups, None grads, all-zero grads, c == 0 entries.
    params, _ = make_problem(dtype)
    ours, _ = run_ours(params, dtype, mode, nu, 20, None, fused=True)
    ref, _ = run_ref(params, dtype, mode, nu, 20)
    rtol, atol = TOL[dtype]
    for o, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(o.detach().double(), r, rtol=rtol, atol=atol)


def test_lion_fused_matches_reference_with_caution():
    params, _ = make_problem(torch.float32)
    for caution in (False, True):
        ours, _ = run_ours(params, torch.float32, None, None, 20, None, opt_cls=Lion,
                           caution=caution, fused=True)
        ref, _ = run_ref(params, torch.float32, "lion", 1.0, 20, caution=caution)
        for o, r in zip(ours, ref, strict=True):
            torch.testing.assert_close(o.detach().double(), r, rtol=1e-5, atol=1e-5)


def test_loaded_momentum_keeps_its_dtype():
    # torch.optim would cast loaded state to the parameter's dtype (bf16 here).
    p = torch.nn.Parameter(torch.randn(4).bfloat16())
    opt = Lion([p])
    p.grad = torch.randn(4).bfloat16()
    opt.step()
    fresh = Lion([p])
    fresh.load_state_dict(opt.state_dict())
    assert fresh.state[p]["exp_avg"].dtype == torch.float32


def test_fused_argument_validation_and_default():
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="exclusive"):
        CLion([p], fused=True, foreach=True)
    with pytest.raises(ValueError, match="fused=True is not available.*meta"):
        Lion([torch.nn.Parameter(torch.zeros(3, device="meta"))], fused=True)
    with pytest.raises(ValueError, match="fused='yes'"):
        Lion([p], fused="yes")
    # Automatic choice: CPU stays on the eager paths (compiling costs seconds up front).
    assert not default_fused([p])
    assert not CLion([p])._use_fused(CLion([p]).param_groups[0], [p])


@pytest.mark.slow
@pytest.mark.parametrize("make", [
    lambda ps: Lion(ps, lr=1e-2, weight_decay=0.1),
    lambda ps: Lion(ps, lr=1e-2, caution=True, fused=True),
    lambda ps: CLion(ps, lr=1e-2, mode="element", nu=1e-3),
    lambda ps: CLion(ps, lr=1e-2, mode="global", nu=1e-6, fused=True),
], ids=["lion", "lion-caution-fused", "clion-element", "clion-global-fused"])
def test_compiled_step_has_no_graph_break_and_matches_eager(make):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    twin = copy.deepcopy(model)
    opt, opt_eager = make(model.parameters()), make(twin.parameters())

    @torch.compile(fullgraph=True)  # any graph break raises
    def compiled_step():
        opt.step()

    for _ in range(4):
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        for m, step in ((model, compiled_step), (twin, opt_eager.step)):
            torch.nn.functional.mse_loss(m(x), y).backward()
            step()
            m.zero_grad()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


TRITON_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    sys.path.insert(0, {tests!r})
    from test_optim import TOL, make_problem, run_ours, run_ref
    from clion_hf import CLion, Lion
    import clion_hf.optim.triton_kernels as tk
    assert tk.BLOCK == 32, "the interpreter's small blocks"
    out = {{}}
    for dtype in (torch.float32, torch.bfloat16):
        for mode, nu in {modes!r}:
            params, _ = make_problem(dtype, seed=1)
            # longer tensors: several programs per tensor, so the atomics combine chunks
            params[0] = torch.randn(300).to(dtype)
            ours, opt = run_ours(params, dtype, mode, nu, 6, None, fused=True)
            ref, mins = run_ref(params, dtype, mode, nu, 6)
            rtol, atol = TOL[dtype]
            err = None
            for o, r in zip(ours, ref):
                try:
                    torch.testing.assert_close(o.detach().double(), r, rtol=rtol, atol=atol)
                except AssertionError as e:
                    err = str(e)[:300]
            stats = opt.last_step_stats()
            out[f"{{mode}}-{{nu}}-{{dtype}}"] = [err, stats["min_abs_c"], mins[-1]]
        for caution in (False, True):
            params, _ = make_problem(dtype, seed=2)
            ours, _ = run_ours(params, dtype, None, None, 6, None, opt_cls=Lion,
                               caution=caution, fused=True)
            ref, _ = run_ref(params, dtype, "lion", 1.0, 6, caution=caution)
            rtol, atol = TOL[dtype]
            err = None
            for o, r in zip(ours, ref):
                try:
                    torch.testing.assert_close(o.detach().double(), r, rtol=rtol, atol=atol)
                except AssertionError as e:
                    err = str(e)[:300]
            out[f"lion-{{caution}}-{{dtype}}"] = [err, 0.0, 0.0]
    # bf16 momentum through the kernels
    p = torch.nn.Parameter(torch.randn(200)); q = torch.nn.Parameter(p.detach().clone())
    a = CLion([p], mode="element", nu=1e-3, fused=True, momentum_dtype=torch.bfloat16)
    b = CLion([q], mode="element", nu=1e-3, foreach=True, momentum_dtype=torch.bfloat16)
    for _ in range(3):
        g = torch.randn(200); p.grad, q.grad = g, g.clone(); a.step(); b.step()
    ok = torch.allclose(p, q, rtol=0, atol=1e-6) and a.state[p]["exp_avg"].dtype == torch.bfloat16
    out["bf16-momentum"] = [None if ok else "bf16 momentum differs", 0.0, 0.0]
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow
def test_triton_kernels_match_float64_reference_under_interpreter():
    script = TRITON_SCRIPT.format(tests=str(ROOT / "tests"), modes=MODES)
    env = {**os.environ, "TRITON_INTERPRET": "1", "CLION_HF_FORCE_TRITON": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    results = json.loads(line[0][len("RESULT"):])
    assert len(results) == 2 * len(MODES) + 2 * 2 + 1
    for key, (err, got_min, ref_min) in results.items():
        assert err is None, (key, err)
        if key.startswith(("element", "soft")):  # min |c| produced by the update kernel
            assert got_min == pytest.approx(ref_min, rel=1e-2), key
        if key.startswith(("global", "tensor")):  # min |c| from the reduction kernel
            assert got_min == pytest.approx(ref_min, rel=1e-2), key


@pytest.mark.slow
def test_bench_steps_smoke(tmp_path):
    out = tmp_path / "steps.md"
    cmd = [sys.executable, "-m", "clion_hf.bench.steps", "--models", "tiny", "--repeats", "2",
           "--optimizers", "adamw-fused,lion-pytorch-foreach,timm-lion,lion-fused,"
           "clion-element-fused,clion-global-foreach", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = out.read_text()
    assert table == proc.stdout.split("\n", 0)[0] or "| tiny | lion-fused |" in table
    for name in ("adamw-fused", "lion-pytorch-foreach", "lion-fused", "clion-element-fused",
                 "clion-global-foreach"):
        row = next(r for r in table.splitlines() if f"| tiny | {name} |" in r)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[3]) > 0 and float(cells[4]) > 0, row  # median ms, ratio
    timm = next(r for r in table.splitlines() if "| timm-lion |" in r)
    assert "not installed" in timm or float(timm.split("|")[4]) > 0
    assert "measured copy bandwidth" in table
    bad = subprocess.run([sys.executable, "-m", "clion_hf.bench.steps", "--models", "nope"],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert bad.returncode == 2 and "unknown models" in bad.stderr
