#!/usr/bin/env bash
# The one prepared GPU check (written for an H200; any CUDA GPU with Triton works).
# 1. correctness of the Triton kernels on the GPU: every mode, fp32 / bf16 parameters /
#    bf16 momentum, against the foreach path on the GPU and a float64 CPU run, plus the
#    diagnostics, "no host sync" (sync debug mode = error) and CUDA-graph capture;
# 2. `clion-bench steps --device cuda` on GPT-2-small, BERT-base and ViT-B/16 shapes.
# Budget: < 5 minutes. Results land in $OUT (default gpu-check-out/).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
OUT="${OUT:-gpu-check-out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
  | tee -a "$OUT/gpu.txt"

timeout 150 "$PY" - <<'PYEOF' 2>&1 | tee "$OUT/correctness.txt"
import copy, math, sys, time
import torch
from clion_hf import CLion, Lion

assert torch.cuda.is_available(), "no CUDA device"
dev = torch.device("cuda")
torch.manual_seed(0)
SHAPES = [(3000, 700), (768,), (5, 3), (1,), (2**20 + 3,), (4, 0)]  # chunks, tails, empty
MODES = [("global", 1e-12), ("global", 1e-3), ("tensor", 1e-2), ("element", 1e-3), ("soft", 1e-3)]
failures = []

def make(opt_cls, ps, **kw):
    return opt_cls(ps, lr=1e-2, weight_decay=0.1, **kw)

def run(opt_cls, pdt, mdt, device, steps, fused, **kw):
    gen = torch.Generator().manual_seed(1)
    ps = [torch.nn.Parameter((torch.randn(s, generator=gen) * 0.1).to(device, pdt)) for s in SHAPES]
    extra = dict(fused=True) if fused else dict(foreach=True, fused=False)
    opt = make(opt_cls, ps, momentum_dtype=mdt, **extra, **kw)
    for _ in range(steps):
        for p in ps:
            g = torch.randn(p.shape, generator=gen) * 1e-2
            g.view(-1)[::7] = 0.0  # zeros in g (and, early on, in c)
            p.grad = g.to(device, pdt)
        opt.step()
    torch.cuda.synchronize() if device.type == "cuda" else None
    return ps, opt

def check(name, got, want, rtol, atol):
    for a, b in zip(got, want):
        try:
            torch.testing.assert_close(a.detach().cpu().double(), b.detach().cpu().double(),
                                       rtol=rtol, atol=atol)
        except AssertionError as e:
            failures.append(f"{name}: {str(e)[:200]}")
            print("FAIL", name, str(e)[:200]); return
    print("ok  ", name)

cases = [("lion", Lion, {}), ("lion-caution", Lion, {"caution": True})]
cases += [(f"clion-{m}-{nu}", CLion, {"mode": m, "nu": nu}) for m, nu in MODES]
t0 = time.time()
for name, cls, kw in cases:
    for pdt, mdt, tol in [(torch.float32, None, 2e-5), (torch.bfloat16, None, 2e-2),
                          (torch.float32, torch.bfloat16, 2e-2)]:
        tag = f"{name} p={str(pdt)[6:]} m={str(mdt)[6:] if mdt else 'fp32'}"
        fused, of = run(cls, pdt, mdt, dev, 10, True, **kw)
        ref, orf = run(cls, pdt, mdt, dev, 10, False, **kw)
        check(tag + " fused vs foreach (GPU)", fused, ref, tol, tol)
        if pdt == torch.float32 and mdt is None:
            f64, _ = run(cls, torch.float64, None, torch.device("cpu"), 10, False, **kw)
            check(tag + " fused vs float64 (CPU)", fused, f64, 1e-4, 1e-5)
        if cls is CLion:
            a, b = of.last_step_stats(per_tensor=True), orf.last_step_stats(per_tensor=True)
            same = all(x["sign_fraction"] == y["sign_fraction"] and
                       math.isclose(x["min_abs_c"], y["min_abs_c"], rel_tol=1e-3, abs_tol=1e-7)
                       for x, y in zip(a["tensors"], b["tensors"]))
            (print("ok  ", tag, "stats") if same else
             (failures.append(tag + " stats"), print("FAIL", tag, "stats", a, b)))

# No host sync in steady state, and CUDA-graph capture of the step (lr as a device tensor).
for name, cls, kw in [("lion", Lion, {}), ("clion-global", CLion, {"mode": "global", "nu": 1e-6}),
                      ("clion-element", CLion, {"mode": "element", "nu": 1e-3})]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s, device=dev, generator=gen)) for s in SHAPES[:5]]
    for p in ps:
        p.grad = torch.randn(p.shape, device=dev, generator=gen)
    twin = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    for a, b in zip(twin, ps):
        a.grad = b.grad.clone()
    lr = torch.tensor(1e-2, device=dev)
    opt = cls(ps, lr=lr, fused=True, **kw)
    ref = cls(twin, lr=1e-2, foreach=True, fused=False, **kw)
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            opt.step()  # warm-up: compiles kernels, builds the pointer tables
    torch.cuda.current_stream().wait_stream(s)
    for _ in range(3):
        ref.step()
    try:
        torch.cuda.set_sync_debug_mode("error")
        opt.step(); ref.step()
        torch.cuda.set_sync_debug_mode(0)
        print("ok  ", name, "no host sync in a fused step")
    except RuntimeError as e:
        torch.cuda.set_sync_debug_mode(0)
        failures.append(f"{name} host sync: {e}"); print("FAIL", name, "host sync", e)
        ref.step()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            opt.step()
        for _ in range(3):
            graph.replay()
        for _ in range(3):
            ref.step()
        torch.cuda.synchronize()
        check(name + " CUDA graph replay vs eager", ps, twin, 2e-5, 2e-5)
    except Exception as e:  # capture errors are results, reported as failures
        failures.append(f"{name} CUDA graph: {e}"); print("FAIL", name, "CUDA graph", e)

print(f"{len(failures)} failure(s) in {time.time() - t0:.0f} s")
sys.exit(1 if failures else 0)
PYEOF

# Cold caches for the compile column (the correctness step compiled the same kernels).
export TRITON_CACHE_DIR="$(mktemp -d)"
timeout 240 "$PY" -m clion_hf.bench.steps --device cuda --models gpt2,bert,vit --repeats 20 \
  --out "$OUT/steps-cuda.md" 2>&1 | tee "$OUT/steps-cuda.log"
echo "done: $OUT"
