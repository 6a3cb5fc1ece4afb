"""Distributed CLion on CPU (gloo, 2 processes): DDP via the Trainer, FSDP2 via fully_shard.

Each worker script runs once for the whole module, every case of its tests in that one
launch (starting torchrun and two ranks is most of a case's time); the tests read each
case's report.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

WORKERS = Path(__file__).parent / "dist_workers"


def _torchrun(script: str, *argv: str, cwd: Path) -> None:
    # --standalone: a free rendezvous port on localhost, so parallel runs cannot collide.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(WORKERS / script), *argv]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # a hung run is killed whole, workers included
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=300)  # several cases per launch
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{script} timed out: {err[-3000:]}")
    assert proc.returncode == 0, out[-3000:] + err[-6000:]


DDP_MODES = ["global", "element"]
FSDP2_RUNS = ["global", "tensor", "lion:offload", "global:offload", "element:offload"]
NO_GRAD_IMPLS = ["fused", "foreach", "single"]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    _torchrun("ddp_trainer_worker.py", ",".join(DDP_MODES), str(out / "out"), cwd=out)
    return out / "out"


@pytest.fixture(scope="module")
def fsdp2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fsdp2")
    _torchrun("fsdp2_worker.py", ",".join(FSDP2_RUNS), str(out / "out"), cwd=out)
    return out / "out"


@pytest.fixture(scope="module")
def no_grad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("no_grad")
    _torchrun("global_no_grad_worker.py", ",".join(NO_GRAD_IMPLS), str(out / "out"), cwd=out)
    return out / "out"


@pytest.mark.slow
@pytest.mark.parametrize("mode", DDP_MODES)
def test_ddp_trainer_ranks_stay_identical(ddp: Path, mode: str) -> None:
    report = json.loads(Path(f"{ddp}.{mode}").read_text())
    assert report["wrapped"] == "DistributedDataParallel"
    assert report["checks"] == [True] * 6  # after every one of the 6 steps
    logs = [e for e in report["log_history"] if "loss" in e]
    assert len(logs) == 3
    for e in logs:
        assert 0.0 <= e["optim/sign_fraction"] <= 1.0 and e["optim/min_abs_c"] > 0
    if mode == "element":
        assert all(e["optim/sign_fraction"] > 0.5 for e in logs)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["global", "tensor"])
def test_fsdp2_takes_the_unsharded_branch(fsdp2: Path, mode: str) -> None:
    report = json.loads(Path(f"{fsdp2}.{mode}").read_text())
    assert not report["offload"]
    steps = report["steps"]
    assert len(steps) == 4
    for s in steps:
        assert s["decisions"] == s["ref_decisions"], report["why"]
        assert s["max_param_diff"] < 1e-12
        assert s["min_abs_c"] == pytest.approx(s["ref_min_abs_c"], rel=1e-9)
        assert s["tensor_mins"] == pytest.approx(s["ref_tensor_mins"], rel=1e-9)
    if mode == "tensor":  # nu was picked so that the first step mixes both branches
        assert set(steps[0]["decisions"]) == {True, False}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["lion", "global", "element"])
def test_fsdp2_cpu_offload_trains_on_the_fused_cpu_kernel(fsdp2: Path, mode: str) -> None:
    # CPU offload (CPUOffloadPolicy): sharded parameters and optimizer state on the CPU,
    # the step in the C++ kernel, the same results as the unsharded run.
    report = json.loads(Path(f"{fsdp2}.{mode}:offload").read_text())
    assert report["offload"] and report["state_devices"] == report["param_devices"] == ["cpu"]
    assert report["kernel_calls"] >= 4  # every step on the fused CPU path
    for s in report["steps"]:
        assert s["decisions"] == s["ref_decisions"]
        assert s["max_param_diff"] < 1e-12
        if mode == "global":  # reduced across ranks (element: each rank's own shard)
            assert s["min_abs_c"] == pytest.approx(s["ref_min_abs_c"], rel=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("impl", NO_GRAD_IMPLS)
def test_global_mode_rank_without_gradients_joins_the_reduction(no_grad: Path, impl: str) -> None:
    # A rank with no gradients joins the MIN all-reduce with +inf (had it returned before
    # the reduction, the other ranks would wait for it until gloo's timeout).
    out = f"{no_grad}.{impl}"
    r0 = json.loads(Path(f"{out}.rank0").read_text())
    r1 = json.loads(Path(f"{out}.rank1").read_text())
    assert r0["step0"]["params"] == r0["reference_step0"]  # +inf changed nothing
    assert r0["step0"]["stats"]["sign_fraction"] == 1.0
    assert r1["step0"]["params"] == [[1.0, 1.0], [1.0, 1.0]]  # no gradient: untouched
    # step 2: rank 1's tiny |c| (1e-7 < nu) vetoes the sign branch on both ranks
    assert r0["step1"]["stats"]["sign_fraction"] == r1["step1"]["stats"]["sign_fraction"] == 0
    assert r0["step1"]["stats"]["min_abs_c"] == r1["step1"]["stats"]["min_abs_c"]
    assert r0["step1"]["stats"]["min_abs_c"] == pytest.approx(1e-7)
