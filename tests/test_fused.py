"""Fused paths: the C++ CPU kernel and the Triton kernels, against foreach and float64 refs."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _paths import REPO as ROOT
from test_optim import TOL, make_problem, run_ours, run_ref

from clion_hf import CLion, Lion
from clion_hf.optim.functional import choose_impl, compute_dtype
from clion_hf.optim.kernels import cpu as fused_cpu
from clion_hf.optim.kernels import default_fused

MODES = [("global", 2e-3), ("global", 1e-12), ("tensor", 0.01), ("element", 0.3), ("soft", 0.5)]


def _step_pair(opt_cls, shapes, pdt, mdt, steps=4, grads=None, **kw):
    """A foreach and a fused optimizer over equal parameters, ``steps`` equal steps each."""
    gen = torch.Generator().manual_seed(7)
    ps = [torch.nn.Parameter(torch.randn(s, generator=gen).to(pdt)) for s in shapes]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt = opt_cls(ps, foreach=True, momentum_dtype=mdt, **kw)
    opt_f = opt_cls(qs, fused=True, momentum_dtype=mdt, **kw)
    for step in range(steps):
        for p, q in zip(ps, qs, strict=True):
            g = grads(p, step) if grads else torch.randn(p.shape, generator=gen).to(pdt)
            p.grad, q.grad = g, g.clone()
        opt.step()
        opt_f.step()
    return ps, opt, qs, opt_f


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _assert_same(ps, opt, qs, opt_f):
    """Parameters, momenta and (CLion) statistics equal bit for bit (NaN equal to NaN)."""
    exact = dict(rtol=0, atol=0, equal_nan=True)
    for p, q in zip(ps, qs, strict=True):
        torch.testing.assert_close(q.detach(), p.detach(), **exact)
        torch.testing.assert_close(opt_f.state[q]["exp_avg"], opt.state[p]["exp_avg"], **exact)
    if isinstance(opt, CLion):
        a, b = opt.last_step_stats(per_tensor=True), opt_f.last_step_stats(per_tensor=True)
        assert a["sign_fraction"] == b["sign_fraction"]
        assert _same(a["min_abs_c"], b["min_abs_c"])
        for x, y in zip(a["tensors"], b["tensors"], strict=True):
            assert x["sign_fraction"] == y["sign_fraction"]
            assert _same(x["min_abs_c"], y["min_abs_c"])
        a, b = opt.consume_stats(), opt_f.consume_stats()
        assert a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)


# (70000,): several kernel chunks (32768 elements each) in one tensor
SHAPES = [(64, 48), (1000,), (3, 5, 8), (2,), (70000,)]
CASES = [("lion", {}), ("lion-caution", {"caution": True})] + [
    (f"clion-{m}", {"mode": m, "nu": nu}) for m, nu in MODES
]
DTYPES = [(torch.float32, None), (torch.bfloat16, None), (torch.float32, torch.bfloat16),
          (torch.bfloat16, torch.bfloat16), (torch.float16, None), (torch.float64, None)]


@pytest.mark.parametrize("pdt,mdt", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
def test_fused_cpu_equals_foreach_bitwise(name, kw, pdt, mdt):
    # The kernel replays the foreach path's operations, fma where ATen's vector kernels
    # have one and no other contraction, so the results are the same bits.
    opt_cls = Lion if name.startswith("lion") else CLion
    run = _step_pair(opt_cls, SHAPES, pdt, mdt, lr=0.01, weight_decay=0.1, **kw)
    _assert_same(*run)
    assert run[3].state[run[2][0]]["exp_avg"].dtype == (mdt or compute_dtype(pdt))


@pytest.mark.parametrize("name,kw", [("lion", {}), ("clion-element", {"mode": "element",
                                      "nu": 0.3}), ("clion-global", {"mode": "global",
                                      "nu": 1e-9})], ids=["lion", "element", "global"])
def test_fused_cpu_equals_foreach_maximize_tensor_lr_complex(name, kw):
    opt_cls = Lion if name == "lion" else CLion
    for extra in ({"maximize": True}, {"lr": torch.tensor(0.01)}):
        _assert_same(*_step_pair(opt_cls, SHAPES, torch.float32, None, weight_decay=0.1,
                                 **{"lr": 0.01, **kw, **extra}))  # fmt: skip
    _assert_same(*_step_pair(opt_cls, [(40, 3), (7,)], torch.complex64, None, lr=0.01, **kw))


@pytest.mark.parametrize("mode", ["element", "soft"])
def test_fused_cpu_without_statistics_equals_foreach_bitwise(mode):
    # track_stats=False runs the kernel instantiation that keeps no min |c|
    for pdt in (torch.float32, torch.bfloat16, torch.float64):
        ps, opt, qs, opt_f = _step_pair(CLion, SHAPES, pdt, None, lr=0.01, weight_decay=0.1,
                                        mode=mode, nu=0.3, track_stats=False)  # fmt: skip
        for p, q in zip(ps, qs, strict=True):
            torch.testing.assert_close(q.detach(), p.detach(), rtol=0, atol=0)
            torch.testing.assert_close(opt_f.state[q]["exp_avg"], opt.state[p]["exp_avg"],
                                       rtol=0, atol=0)  # fmt: skip


@pytest.mark.parametrize("pdt", [torch.float32, torch.bfloat16, torch.float64],
                         ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("nu", [1e-50, 1e-40], ids=["rounds-to-0", "subnormal"])
def test_fused_cpu_element_with_an_nu_below_the_compute_precision(pdt, nu):
    # The kernel's element branch writes sign(c) as copysign(1, c), which needs nu > 0 in
    # the compute dtype; 1e-50 is 0 in fp32, so c = 0 takes the sign branch there, where
    # sign(0) = 0 (the kernel's general instantiation). Exact zeros in c: zero gradients
    # on a zero momentum, at every step.
    def grads(p, step):
        g = torch.randn(p.shape)
        g.view(-1)[::3] = 0.0
        return g.to(p.dtype)

    run = _step_pair(CLion, SHAPES, pdt, None, grads=grads, lr=0.01, weight_decay=0.1,
                     mode="element", nu=nu)  # fmt: skip
    _assert_same(*run)
    fraction = run[3].last_step_stats()["sign_fraction"]
    assert fraction == 1.0 if (pdt != torch.float64 and nu == 1e-50) else fraction < 1.0


def test_fused_cpu_nan_and_strided_grads_follow_foreach():
    def grads(p, step):
        g = torch.randn(tuple(reversed(p.shape))).t() if p.dim() == 2 else torch.randn(p.shape)
        if step == 2 and p.numel() == 1000:
            g[17] = float("nan")  # NaN propagates into p, m and the min statistic alike
        return g

    for mode in ("element", "global", "tensor"):
        run = _step_pair(CLion, SHAPES, torch.float32, None, grads=grads, lr=0.01,
                         mode=mode, nu=1e-3)  # fmt: skip
        assert not run[2][0].grad.is_contiguous()  # taken by the eager fallback
        _assert_same(*run)


@pytest.mark.parametrize("mode", ["global", "tensor"])
@pytest.mark.parametrize("nu", [1e-30, 1e-4, 10.0], ids=["sign", "mixed", "identity"])
def test_early_exit_of_the_reduction_keeps_decisions_and_exact_statistics(mode, nu):
    # Pass 1 stops at the first |c| below nu; decisions, updates and the reported min |c|
    # must still equal the foreach path's (which reads everything). 300000 elements:
    # ten chunks, so later chunks are really skipped. "mixed": with tensor mode some
    # tensors take the sign branch (the tiny one has no |c| below 1e-4), others do not.
    shapes = [(300000,), (5,), (1000,)]
    gen = torch.Generator().manual_seed(3)

    def grads(p, step):
        if p.numel() == 5:
            return torch.full(p.shape, 0.5)
        g = torch.randn(p.shape, generator=gen)
        g[-1] = 1e-8  # so "mixed" has |c| below nu in these tensors, at every step
        return g

    run = _step_pair(CLion, shapes, torch.float32, None, grads=grads, lr=0.01, mode=mode,
                     nu=nu)  # fmt: skip
    _assert_same(*run)
    fractions = [t["sign_fraction"] for t in run[3].last_step_stats(per_tensor=True)["tensors"]]
    if nu == 1e-4 and mode == "tensor":
        assert fractions == [0.0, 1.0, 0.0]


def test_reduction_stop_returns_a_witness_below_nu():
    gs = [torch.randn(200000), torch.randn(100000), torch.full((10,), 2.0)]
    ms = [torch.zeros_like(g) for g in gs]
    exact = fused_cpu.min_abs_c(gs, ms, 0.9)
    ref = torch.stack([torch.where(g == 0, math.inf, (0.1 * g).abs()).amin() for g in gs])
    ref = ref.double()
    torch.testing.assert_close(exact, ref, rtol=0, atol=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # chunks in order: the first one decides
    try:
        per_tensor = fused_cpu.min_abs_c(gs, ms, 0.9, mode="tensor", below=1e-3)
        everything = fused_cpu.min_abs_c(gs, ms, 0.9, mode="global", below=1e-3)
    finally:
        torch.set_num_threads(threads)
    assert per_tensor[0] < 1e-3 and per_tensor[1] < 1e-3  # witnesses, maybe not the min
    assert per_tensor[2] == exact[2] == pytest.approx(0.2)  # no |c| below nu: exact
    assert everything[0] < 1e-3 and everything[1:].isinf().all()  # the rest was skipped
    with pytest.raises(ValueError, match="mode='element'"):
        fused_cpu.min_abs_c(gs, ms, 0.9, mode="element", below=1e-3)


NO_COMPILER = textwrap.dedent("""
    import torch
    from clion_hf import CLion
    p = torch.nn.Parameter(torch.ones(3))
    opt = CLion([p], mode="element")
    p.grad = torch.ones(3)
    opt.step()  # default: falls back to the eager path
    from clion_hf.optim.functional import choose_impl
    assert choose_impl([p]) == "single"
    try:
        CLion([p], fused=True)
    except ValueError as e:
        print("ERROR", e)
""")


@pytest.mark.slow
def test_without_a_compiler_the_default_falls_back_and_fused_true_explains(tmp_path):
    env = {**os.environ, "CXX": str(tmp_path / "no-such-c++"), "CLION_HF_CACHE": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", NO_COMPILER], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ERROR fused=True is not available for parameters on cpu: C++ compiler" in proc.stdout
    assert "no-such-c++" in proc.stdout and proc.stdout.count("\n") == 1


def test_kernel_is_built_once_into_the_cache_and_reused(tmp_path):
    env = {**os.environ, "CLION_HF_CACHE": str(tmp_path)}
    code = ("from clion_hf.optim.kernels import cpu as f; assert f.available(); "
            "print(f._load()[0]._name)")
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    built = Path(first.stdout.strip())
    assert built.parent == tmp_path / "kernels" and built.exists()
    stamp = built.stat().st_mtime_ns
    again = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert Path(again.stdout.strip()) == built and built.stat().st_mtime_ns == stamp
    assert not list((tmp_path / "kernels").glob("*.tmp"))


@pytest.mark.slow
def test_concurrent_first_use_builds_once(tmp_path):
    # Several ranks of one job start at once on an empty cache: one builds, the others
    # wait on the lock and load the same file. A compiler wrapper counts the builds.
    real = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    log, cxx = tmp_path / "builds.log", tmp_path / "cxx"
    cxx.write_text(f'#!/bin/sh\ncase " $* " in *" -o "*) echo build >> "{log}";; esac\n'
                   f'exec "{real}" "$@"\n')  # fmt: skip
    cxx.chmod(0o755)
    env = {**os.environ, "CLION_HF_CACHE": str(tmp_path), "CXX": str(cxx)}
    code = ("import time; from clion_hf.optim.kernels import cpu as f; t = time.time(); "
            "assert f.available(); print(f._load()[0]._name, time.time() - t)")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1000:] for o in outs]
    paths = {o[0].split()[0] for o in outs}
    assert len(paths) == 1 and Path(paths.pop()).exists()
    assert len(list((tmp_path / "kernels").glob("*.so"))) == 1
    assert not list((tmp_path / "kernels").glob("*.tmp"))
    assert log.read_text().splitlines() == ["build"]


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
    # Automatic choice: the C++ kernel on CPU (built here), unless foreach is chosen.
    assert default_fused([p])
    assert choose_impl([p]) == "fused"
    for foreach in (True, False):
        assert choose_impl([p], foreach=foreach) == ("foreach" if foreach else "single")
    meta = torch.nn.Parameter(torch.zeros(3, device="meta"))
    assert not default_fused([meta])


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
    import clion_hf.optim.kernels.cuda as tk
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
    # the rule for non-finite values, the fp64 decision and version counters, as on CPU
    for rule, kw in (("lion", dict(caution=True)), ("clion", dict(mode="element", nu=1e-3))):
        for bad in (float("nan"), float("inf")):
            p = torch.nn.Parameter(torch.randn(100))
            opt = (Lion if rule == "lion" else CLion)([p], fused=True, **kw)
            g = torch.randn(100); g[7] = bad; p.grad = g
            version = p._version
            opt.step()
            ok = bool(p[7].isnan()) and int(p.isfinite().sum()) == 99 and p._version > version
            out[f"nonfinite-{{rule}}-{{bad}}"] = [None if ok else str(p[5:9]), 0.0, 0.0]
    c = 1e-4 * (1 - 1e-9)
    p = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = CLion([p], lr=0.1, nu=1e-4, betas=(0.0, 0.0), fused=True)
    p.grad = torch.tensor([c, 1.0], dtype=torch.float64)
    opt.step()
    ok = p[0].item() == 1 - 0.1 * c and opt.last_step_stats()["min_abs_c"] == c
    out["fp64-decision"] = [None if ok else str(p), 0.0, 0.0]
    # soft with an nu that rounds to 0 in fp32: Lion's update, not 0/0 = NaN where c == 0
    p = torch.nn.Parameter(torch.randn(100)); q = torch.nn.Parameter(p.detach().clone())
    a, b = CLion([p], mode="soft", nu=1e-46, fused=True), Lion([q], fused=True)
    g = torch.randn(100); g[:5] = 0; p.grad, q.grad = g, g.clone(); a.step(); b.step()
    ok = bool(p.isfinite().all()) and torch.equal(p, q)
    out["tiny-nu-soft"] = [None if ok else str(p[:6]), 0.0, 0.0]
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
    assert len(results) == 2 * len(MODES) + 2 * 2 + 1 + 4 + 1 + 1
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
           "--optimizers", "adamw-fused,lion-pytorch-foreach,timm-lion,deepspeed-cpu-lion,"
           "lion-fused,"
           "clion-element-fused,clion-global-foreach", "--out", str(out)]  # fmt: skip
    tmp = tmp_path / "tmp"  # its fresh kernel/Triton caches go here, and must go away
    tmp.mkdir()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TMPDIR": str(tmp)}  # no spin-wait
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(tmp.iterdir())  # no temporary directory is left behind
    table = out.read_text()
    assert table in proc.stdout  # --out holds exactly the report printed on stdout
    for name in ("adamw-fused", "lion-pytorch-foreach", "lion-fused", "clion-element-fused",
                 "clion-global-foreach"):
        row = next(r for r in table.splitlines() if f"| tiny | {name} |" in r)
        cells = [c.strip() for c in row.strip("|").split("|")]
        # median ms, the ratio to AdamW fused with its interval, the ratio to lion-pytorch
        # foreach (a ratio prints as 0.00 when a peer stalls for a while on a loaded machine)
        assert float(cells[3]) > 0 and float(cells[4]) >= 0 and float(cells[6]) >= 0, row
        low, high = (float(x) for x in re.fullmatch(r"\[(\S+), (\S+)\]", cells[5]).groups())
        assert low <= high, row
    deepspeed = next(r for r in table.splitlines() if "| deepspeed-cpu-lion |" in r)
    assert "not installed" in deepspeed or float(deepspeed.split("|")[4]) > 0
    timm = next(r for r in table.splitlines() if "| timm-lion |" in r)
    assert "not installed" in timm or float(timm.split("|")[4]) > 0
    assert "measured copy bandwidth" in table
    bad = subprocess.run([sys.executable, "-m", "clion_hf.bench.steps", "--models", "nope"],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert bad.returncode == 2 and "unknown models" in bad.stderr


# --------------------------------------------------------------------------- custom ops


def _op_args(n: int = 3, device: str = "cpu"):
    ps = [torch.randn(5, device=device) for _ in range(n)]
    gs = [torch.randn(5, device=device) for _ in range(n)]
    ms = [torch.zeros(5, device=device) for _ in range(n)]
    return ps, gs, ms


def test_custom_ops_have_shapes_under_fake_and_meta_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    for mode in (FakeTensorMode(), torch.device("meta")):
        with mode:
            ps, gs, ms = _op_args(device="meta" if isinstance(mode, torch.device) else "cpu")
            count, min_abs_c = torch.ops.clion_hf.fused_update_(
                ps, gs, ms, None, None, 0.1, 0.9, 0.99, 0.0, None, 1.0, False, False, True
            )
            mins = torch.ops.clion_hf.fused_min_abs_c(gs, ms, 0.9, False, "tensor", None)
        assert count.shape == min_abs_c.shape == mins.shape == (3,)
        assert count.dtype == torch.float32 and min_abs_c.dtype == mins.dtype == torch.float64


def test_custom_op_declares_its_mutations_and_the_profiler_sees_it():
    schema = str(torch.ops.clion_hf.fused_update_.default._schema)
    assert "Tensor(a0!)[] params" in schema and "Tensor(a2!)[] exp_avgs" in schema
    assert "Tensor[] grads" in schema  # read only
    p = torch.nn.Parameter(torch.randn(100))
    opt = Lion([p], fused=True)
    p.grad = torch.randn(100)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    assert "clion_hf::fused_update_" in {e.name for e in prof.events()}


@pytest.mark.slow
def test_fused_custom_op_runs_inside_a_compiled_function():
    # The op has a fake kernel and declared mutations, so Dynamo/Inductor can put it in a
    # graph (auto-functionalized, then re-inplaced): same bits as calling it eagerly.
    ps, gs, ms = _op_args(n=4)
    qs, ns = [p.clone() for p in ps], [m.clone() for m in ms]

    def step(ps, gs, ms):
        return torch.ops.clion_hf.fused_update_(
            ps, gs, ms, None, None, 0.1, 0.9, 0.99, 0.1, "element", 0.3, False, False, True
        )

    compiled = torch.compile(step, fullgraph=True)
    for _ in range(3):
        a = compiled(ps, gs, ms)
        b = step(qs, gs, ns)
    for x, y in zip(ps + ms + list(a), qs + ns + list(b), strict=True):
        assert torch.equal(x, y)
