"""The gen-gap study end to end (real runs, an interruption, the report), and the matched
stopping rule checked against a run that really stops. Slow (training subprocesses)."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _paths import REPO

from clion_hf._files import read_json
from clion_hf.bench.study_report import findings_block, findings_from_csv

BENCH = [sys.executable, "-m", "clion_hf.bench.cli"]
TUNED = str(REPO / "docs" / "benchmarks" / "cpu-2026-11-29")
pytestmark = pytest.mark.slow


def test_smoke_study_interrupted_resumed_and_reported(offline_env, tmp_path):
    out = tmp_path / "gap"
    args = [*BENCH, "study", "gen-gap", "--preset", "smoke", "--tuned", TUNED, "--out", str(out),
            "--no_progress"]  # fmt: skip
    proc = subprocess.Popen(args, cwd=REPO, env=offline_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and len(list((out / "results").glob("*.json"))) < 3:
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    kept = len(list((out / "results").glob("*.json")))
    # smoke: 2 optimizers x 3 sizes x 2 seeds at fixed steps, 2 x 2 x 2 more at fixed epochs
    # (N_max's runs are both designs'), 2 ν-sweep points x 1 seed
    assert 3 <= kept < 22
    done = subprocess.run(args, cwd=REPO, env=offline_env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    launched = int(re.search(r"(\d+) launched", done.stdout).group(1))
    assert launched == 22 - kept  # only what was missing ran again
    assert len(list((out / "results").glob("*.json"))) == 22
    report = (out / "report.md").read_text()
    for name in ("gap-steps", "gap-steps-matched", "gap-epochs", "gap-epochs-matched", "tau",
                 "nu"):
        assert (out / "plots" / f"{name}-vit-pretrain.png").is_file(), report
    block = findings_block(report)
    meta = read_json(out / "bench.json")
    assert findings_from_csv((out / "results.csv").read_text(), meta) == block
    assert meta["plateau"]["vit-pretrain"]["level"] == pytest.approx(math.log(5))  # chance
    assert sum("slope of log(gap)" in ln for ln in block) == 4  # 2 designs x 2 readings
    assert "Fixed epochs" in report and "| epochs |" in report
    assert any("lion τ" in ln for ln in block)  # Lion's tau_t was recorded
    assert any("ν sweep" in ln for ln in block)
    assert "Problems" not in report, report


def _recipe(env, out: Path, *extra: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "vit_pretrain.py"), "--output_dir", str(out),
         "--max_steps", "20", "--eval_steps", "5", "--logging_steps", "5", "--seed", "3",
         "--optim", "lion", "--optim_args", "track_stats=true", "--learning_rate", "1e-3",
         "--train_subset_size", "32", "--eval_train_subset", "true", "--max_test_samples", "16",
         "--report_to", "none", "--disable_tqdm", "true", *extra],
        capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    return {"history": state["log_history"],
            "results": json.loads((out / "all_results.json").read_text())}  # fmt: skip


def _evals(history: list[dict]) -> dict[int, tuple[float, float]]:
    held = {e["step"]: e["eval_loss"] for e in history if "eval_loss" in e}
    train = {e["step"]: e["train_subset_loss"] for e in history if "train_subset_loss" in e}
    return {s: (train[s], held[s]) for s in train if s in held}


def test_stop_at_train_loss_stops_where_the_full_run_is_read(offline_env, tmp_path):
    """The study reads the matched rule off a full run; a run with --stop_at_train_loss
    must stop at that evaluation with the same numbers."""
    full = _recipe(offline_env, tmp_path / "full")
    evals = _evals(full["history"])
    assert sorted(evals) == [5, 10, 15, 20]
    assert any("optim/min_abs_c" in e for e in full["history"])  # Lion's tau_t
    target = evals[10][0]
    assert evals[5][0] > target  # the loss goes down: the first crossing is at step 10
    stopped = _recipe(offline_env, tmp_path / "stop", "--stop_at_train_loss", repr(target))
    assert stopped["results"]["stopped_at_train_loss_step"] == 10
    steps = [e["step"] for e in stopped["history"] if "loss" in e]
    assert max(steps) == 10
    got = _evals(stopped["history"])[10]
    assert got == pytest.approx(evals[10], rel=1e-6)
    assert full["results"]["gen_gap"] == pytest.approx(evals[20][1] - evals[20][0])
