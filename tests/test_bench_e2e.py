"""clion-bench end to end: real runs, kills at random moments, two runners, a signal while
the checkpoints are prepared. Slow (training subprocesses); part of CI."""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _paths import REPO

from clion_hf.bench.launcher import MARKER, leftover_pids
from clion_hf.bench.report import load_results

BENCH = [sys.executable, "-m", "clion_hf.bench.cli"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(offline_env) -> dict[str, str]:
    return offline_env


def _bench(env, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*BENCH, *args], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=timeout)  # fmt: skip


def _start(env, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*BENCH, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _launched(stdout: str) -> int:
    return int(stdout.split(" launched")[0].rsplit("; ", 1)[1])


def _wait_for(predicate, timeout: float, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _outcome(out: Path) -> dict[str, tuple]:
    """run id -> (status, final validation loss, test loss): what must not depend on kills."""
    results, problems = load_results(out)
    assert not problems, problems
    return {r["run_id"]: (r["status"], r["all_results"].get("eval_loss"),
                          r["all_results"].get("test_loss")) for r in results}  # fmt: skip


SMALL = ("--preset", "smoke", "--workloads", "gpt2-pretrain,vit-finetune", "--optimizers",
         "adamw,lion", "--max_steps", "6", "--no_progress")  # fmt: skip


def test_end_to_end_search_divergence_report_resume(env, tmp_path):
    out = tmp_path / "bench"
    # adamw: one tuning run and two final seeds; lion at an absurd lr explodes (a finite
    # loss far above its start, or NaN): diverged, no choice, no final runs; the matrix goes on
    args = ("run", "--preset", "smoke", "--workloads", "gpt2-pretrain", "--optimizers",
            "adamw,lion:lr=1e6", "--seeds", "2", "--max_steps", "8", "--out", str(out),
            "--no_progress")  # fmt: skip
    # a process an earlier runner of this directory left behind
    out.mkdir()
    leftover = subprocess.Popen(["sleep", "600"], env={**env, MARKER: str(out.resolve())})
    proc = _bench(env, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stopped 1 process(es) left running by an earlier run" in proc.stderr
    assert leftover.wait(timeout=10) == -signal.SIGTERM
    assert _launched(proc.stdout) == 4
    results, _ = load_results(out)
    status = {(r["optimizer"], r["seed"]): r["status"] for r in results}
    assert status == {("adamw", 0): "ok", ("adamw", 100): "ok", ("adamw", 101): "ok",
                      ("lion:lr=1e6", 0): "diverged"}  # fmt: skip
    for r in results:
        assert r["command"][1:3] == ["launch", "--config_file"] and r["launch"] == "fork"
        assert (out / r["log"]).is_file() and r["cpu_s"] > 0
    adamw = [r for r in results if r["optimizer"] == "adamw"]
    assert {r["phase"] for r in adamw} == {"tune", "final"}
    assert all(math.isfinite(r["all_results"]["test_loss"]) for r in adamw)
    assert all("train_s" in e and "optimizer_s" in e for r in adamw for e in r["log_history"])
    assert not (out / "work").exists() or not any((out / "work").iterdir())

    rep = _bench(env, "report", str(out))
    assert rep.returncode == 0, rep.stderr
    report = (out / "report.md").read_text()
    assert "## gpt2-pretrain (8 steps)" in report and "<!-- findings:begin -->" in report
    assert "lion:lr=1e6: no configuration finished ok" in report
    assert (out / "plots" / "loss-gpt2-pretrain-8.png").is_file()

    again = _bench(env, *args)
    assert again.returncode == 0 and _launched(again.stdout) == 0, again.stdout


def test_kills_at_random_moments_and_a_second_runner_lose_nothing(env, tmp_path):
    """SIGKILL/SIGTERM a smoke-sized runner at random moments, resume, and get the results
    of an uninterrupted run, with no process left behind; and a second runner started on a
    directory in use (were both to run, every result could end up `failed`) is refused
    while the first finishes with nothing lost.

    The interrupted run goes first, on a fresh checkpoint key, so that kills also land
    while the finetune checkpoint and the data caches are being built."""
    faulty_env = {**env, "CLION_HF_CHECKPOINT_MAX_STEPS": "11"}
    out = tmp_path / "faulty"
    rng = random.Random(1234)
    schedule = []
    for k in range(4):
        sig = (signal.SIGKILL, signal.SIGTERM)[k % 2]
        delay = rng.uniform(2.0, 16.0)
        proc = _start(faulty_env, "run", *SMALL, "--out", str(out))
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(sig)
            proc.wait(timeout=60)
        schedule.append((sig.name, round(delay, 1), proc.returncode))
        if proc.returncode == 0:
            break
        assert proc.returncode in (-signal.SIGKILL, 128 + signal.SIGTERM), schedule
        # children die with the runner: the launcher gets SIGTERM from the kernel and stops
        # its children's process groups
        _wait_for(lambda: not leftover_pids(out), 30, f"no process left after {schedule}")
        assert not list(out.glob("results/*.tmp")) and not list(out.glob("results/.*.tmp"))
    final = _bench(faulty_env, "run", *SMALL, "--out", str(out))
    assert final.returncode == 0, final.stderr[-3000:]
    assert not leftover_pids(out)

    # the uninterrupted reference, with a second runner knocking while it runs
    reference = tmp_path / "reference"
    first = _start(faulty_env, "run", *SMALL, "--out", str(reference))
    _wait_for(lambda: (reference / "bench.json").is_file(), 60, "the first runner to start")
    second = _bench(faulty_env, "run", *SMALL, "--out", str(reference), timeout=120)
    assert second.returncode == 2
    assert second.stderr.count("\n") == 1
    assert "is in use by another clion-bench run" in second.stderr
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    expected = _outcome(reference)
    assert len(expected) == 8 and all(v[0] == "ok" for v in expected.values())
    assert _outcome(out) == expected, schedule
    again = _bench(faulty_env, "run", *SMALL, "--out", str(reference))
    assert again.returncode == 0 and _launched(again.stdout) == 0
    assert _outcome(reference) == expected


def test_sigterm_while_preparing_checkpoints_stops_the_runner(env, tmp_path):
    """SIGTERM during checkpoint preparation stops the run (it is not an ordinary error
    after which the matrix runs to its end and exits 0)."""
    prep_env = {**env, "CLION_HF_CHECKPOINT_MAX_STEPS": "40"}  # a fresh key: built now
    out = tmp_path / "bench"
    proc = _start(prep_env, "run", "--preset", "smoke", "--workloads", "vit-finetune",
                  "--optimizers", "adamw", "--max_steps", "4", "--out", str(out),
                  "--no_progress")  # fmt: skip
    log = out / "logs" / "checkpoint-vit.log"
    _wait_for(lambda: log.is_file() and log.stat().st_size > 0, 120, "checkpoint preparation")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "terminated; finished runs are kept" in stderr
    assert time.monotonic() - t0 < 30
    assert not list((out / "results").glob("*.json")) if (out / "results").exists() else True
    _wait_for(lambda: not leftover_pids(out), 15, "the checkpoint build to stop")


def test_a_child_killed_from_outside_is_redone_by_the_next_run(env, tmp_path):
    """A recipe child killed by a signal is not recorded (not `failed` for good, with its
    row choosing nothing): the matrix goes on without that row's later stages, the call
    exits 1 saying so, and the next `run` redoes it."""
    out = tmp_path / "bench"
    args = ("run", "--preset", "smoke", "--workloads", "gpt2-pretrain", "--optimizers",
            "adamw,lion", "--max_steps", "20", "--jobs", "1", "--threads", "1", "--out",
            str(out), "--no_progress")  # fmt: skip
    proc = _start(env, *args)
    launcher_children: list[int] = []

    def recipe_running() -> bool:
        marked = set(leftover_pids(out))
        launcher_children[:] = [p for p in marked if _parent(p) in marked]
        return bool(launcher_children)

    _wait_for(recipe_running, 120, "the first run")
    os.kill(launcher_children[0], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1, stderr[-3000:]
    assert "[killed] gpt2-pretrain adamw" in stdout
    assert "killed by SIGKILL from outside; not recorded" in stdout
    assert "1 run(s) were killed by a signal from outside" in stderr
    results = {(r["optimizer"], r["phase"]): r for r in load_results(out)[0]}
    assert ("adamw", "tune") not in results and ("adamw", "final") not in results
    assert results[("lion", "tune")]["status"] == "ok"
    assert results[("lion", "final")]["status"] == "ok"
    again = _bench(env, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _launched(again.stdout) == 2 and "skipped 2" in again.stdout
    results = {(r["optimizer"], r["phase"]): r for r in load_results(out)[0]}
    assert results[("adamw", "tune")]["status"] == "ok"
    assert results[("adamw", "final")]["status"] == "ok"


def _parent(pid: int) -> int | None:
    """The parent of ``pid``: a forked run's parent is the launcher (itself marked)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
