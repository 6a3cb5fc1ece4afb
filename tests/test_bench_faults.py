"""clion-bench on bad result files, mixed directories, killed children,
a damaged checkpoint cache, oversized counts and a full disk. Fast unless marked slow."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from _paths import REPO
from test_bench import write_synthetic

from clion_hf._files import read_json
from clion_hf.bench import cli
from clion_hf.bench.protocol import Matrix
from clion_hf.bench.report import load_results
from clion_hf.bench.runner import OutDirError, Runner, load_result_files
from clion_hf.bench.specs import get_preset, parse_optimizers
from clion_hf.bench.study import build_study


def _matrix() -> Matrix:
    return Matrix(get_preset("cpu"), ["gpt2-pretrain"], parse_optimizers("adamw,lion"), (0,),
                  (100, 101), 40)  # fmt: skip


def _run_dir(out: Path) -> tuple[Matrix, dict[str, dict]]:
    m = _matrix()
    return m, write_synthetic(out, m, lambda run: 3 + abs(math.log2(run.lr * 1000)) / 10, {})


def _study_dir(out: Path):
    """A finished smoke gen-gap study (pinned lrs: no --tuned needed) with made-up gaps."""
    study = build_study("smoke", None, parse_optimizers("lion:lr=1e-3,clion:mode=element,"
                                                        "lr=1e-3"), None)  # fmt: skip
    (out / "results").mkdir(parents=True)
    (out / "bench.json").write_text(json.dumps(study.describe()))
    for run in study.all_runs():
        n = float(run.second[1]) if run.second and run.second[0] == "N" else 16.0
        history = [{"step": s, "train_subset_loss": 1 / s, "eval_loss": 1 / s + 1 / n,
                    "optim/min_abs_c": 1e-9} for s in (5, 10, 15, 20)]  # fmt: skip
        result = {"schema": 2, "run_id": run.run_id, "status": "ok", "reason": "",
                  **run.__dict__, "recipe_args": list(run.recipe_args),
                  "second": list(run.second), "log_history": history,
                  "all_results": {"train_subset_loss": 0.05, "eval_loss": 0.05 + 1 / n,
                                  "gen_gap": 1 / n}}  # fmt: skip
        (out / "results" / f"{run.stem}.json").write_text(json.dumps(result))
    return study


def _one_line_exit(argv: list[str], capsys, code: int = 2) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------- bad result files

EDITS = {
    "step is text": lambda r: r["log_history"][0].update(step="abc"),
    "all_results a list": lambda r: r.update(all_results=[1]),
    "log_history an object": lambda r: r.update(log_history={}),
    "log entry a number": lambda r: r.update(log_history=[1]),
    "optimizer a number": lambda r: r.update(optimizer=5),
    "lr text": lambda r: r.update(lr="x"),
    "seed fractional": lambda r: r.update(seed=1.5),
    "max_steps null": lambda r: r.update(max_steps=None),
    "status unknown": lambda r: r.update(status="great"),
    "stage null": lambda r: r.update(stage=None),
    "second text": lambda r: r.update(second="x"),
    "recipe_args numbers": lambda r: r.update(recipe_args=[1, 2]),
    "started_at not a time": lambda r: r.update(started_at="yesterday", finished_at="x"),
    "versions a list": lambda r: r.update(environment={"versions": ["torch"]}),
    "jobs text": lambda r: r.update(jobs="two"),
    "cpu_s text": lambda r: r.update(cpu_s="1s"),
    "weight_decay missing": lambda r: r.pop("weight_decay"),
}


def _edit(path: Path, edit: str) -> None:
    data = json.loads(path.read_text())
    data.setdefault("log_history", [{"step": 5}])
    data.setdefault("environment", None)
    data.setdefault("started_at", None)
    EDITS[edit](data)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Matrix, dict[str, dict]]:
    out = tmp_path_factory.mktemp("finished")
    return (out, *_run_dir(out))


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_hand_edited_result_is_refused_on_read_and_rerun_on_resume(finished, tmp_path, edit):
    """Wrong-typed fields once crashed `run` resume (`AttributeError: 'list'
    object has no attribute 'get'`) and the reports."""
    import shutil

    shutil.copytree(finished[0], tmp_path, dirs_exist_ok=True)
    m, results = finished[1], finished[2]
    victim = next(r for r in results.values() if r["phase"] == "final")
    path = tmp_path / "results" / f"{victim['workload']}-{victim['run_id']}.json"
    _edit(path, edit)
    loaded = load_result_files(tmp_path)  # what `run` resumes from
    assert victim["run_id"] not in loaded and len(loaded) == len(results) - 1
    assert [r.run_id for p in m.plan(loaded) for r in p.needed] == [victim["run_id"]]
    good, problems = load_results(tmp_path)  # what the reports read
    assert len(good) == len(results) - 1 and len(problems) == 1
    assert problems[0].startswith(f"`{path.name}`: ")


def test_hand_edited_results_are_listed_in_the_reports(tmp_path, capsys):
    """`report` and `study --report_only` survive every variant (once: 11 of 29 crashed)."""
    _, results = _run_dir(tmp_path)
    runs = sorted(results.values(), key=lambda r: r["run_id"])
    for edit, run in zip(EDITS, runs, strict=False):
        _edit(tmp_path / "results" / f"{run['workload']}-{run['run_id']}.json", edit)
    assert cli.main(["report", str(tmp_path)]) == 0
    listed = (tmp_path / "report.md").read_text().split("## Missing or unreadable")[1]
    for run in runs[: len(EDITS)]:
        assert f"`{run['workload']}-{run['run_id']}.json`: " in listed
    study_dir = tmp_path / "study"
    study = _study_dir(study_dir)
    for edit, run in zip(EDITS, study.all_runs(), strict=False):
        _edit(study_dir / "results" / f"{run.stem}.json", edit)
    capsys.readouterr()
    assert cli.main(["study", "gen-gap", "--out", str(study_dir), "--report_only"]) == 0
    report = (study_dir / "report.md").read_text()
    for run in study.all_runs()[: len(EDITS)]:
        assert f"`{run.stem}.json`: " in report


def test_a_hand_edited_bench_json_is_reported_not_a_crash(tmp_path):
    """bench.json `max_steps_override = "x"` does not crash `report`."""
    _run_dir(tmp_path)
    for bad in ("x", 0, [40]):
        meta = json.loads((tmp_path / "bench.json").read_text())
        meta["max_steps_override"] = bad
        (tmp_path / "bench.json").write_text(json.dumps(meta))
        assert cli.main(["report", str(tmp_path)]) == 0
        report = (tmp_path / "report.md").read_text()
        assert "`bench.json` is from another version or unreadable" in report


def test_a_recorded_bad_result_does_not_block_its_rerun(tmp_path):
    """Once, the runner kept an unusable "ok" file over the rerun's result (and
    then planned from it)."""
    m = _matrix()
    run = m.plan({})[0].needed[0]
    runner = Runner(m, tmp_path, REPO / "recipes", echo=lambda msg: None)
    runner.result_path(run).parent.mkdir(parents=True)
    runner.result_path(run).write_text(json.dumps(
        {"run_id": run.run_id, "workload": run.workload, "status": "ok", "all_results": [1]}))
    assert runner.record(run, {"run_id": run.run_id, "status": "failed", "marker": 1})
    assert read_json(runner.result_path(run))["marker"] == 1


# ------------------------------------------------------------------------------ items 2, 3


def test_a_directory_holds_one_kind_of_experiment(tmp_path, capsys):
    """Once, `study gen-gap --out D` on a `run` directory overwrote its
    bench.json and report and mixed its results into the run's reports."""
    run_dir, study_dir = tmp_path / "run", tmp_path / "study"
    _run_dir(run_dir)
    study = _study_dir(study_dir)
    # the reports first (before the old code would start real runs below)
    err = _one_line_exit(["report", str(study_dir)], capsys)
    assert "--report_only" in err
    assert not (study_dir / "report.md").exists()
    err = _one_line_exit(["study", "gen-gap", "--out", str(run_dir), "--report_only"], capsys)
    assert f"`clion-bench report {run_dir}`" in err
    before = (run_dir / "bench.json").read_text()
    n_results = len(list((run_dir / "results").glob("*.json")))
    with pytest.raises(OutDirError, match="holds a `clion-bench run` benchmark, not a "
                                          "`clion-bench study gen-gap`"):  # fmt: skip
        Runner(study, run_dir, REPO / "recipes", progress=False).run()
    assert (run_dir / "bench.json").read_text() == before
    assert len(list((run_dir / "results").glob("*.json"))) == n_results
    err = _one_line_exit(["study", "gen-gap", "--preset", "smoke", "--optimizers",
                          "lion:lr=1e-3", "--out", str(run_dir), "--no_progress"], capsys)
    assert "use another --out" in err
    err = _one_line_exit(["run", "--preset", "smoke", "--out", str(study_dir),
                          "--no_progress"], capsys)  # fmt: skip
    assert "holds a `clion-bench study gen-gap`, not a `clion-bench run` benchmark" in err
    # bench.json lost: the results still say which kind the directory is
    (run_dir / "bench.json").unlink()
    with pytest.raises(OutDirError, match="holds a `clion-bench run` benchmark"):
        Runner(study, run_dir, REPO / "recipes", progress=False).run()
    assert not (run_dir / "bench.json").exists()


def test_study_report_only_without_a_study_bench_json_is_one_line(tmp_path, capsys):
    """One line and status 2, not an uncaught ReportError, a traceback and status 1."""
    _study_dir(tmp_path)
    meta = json.loads((tmp_path / "bench.json").read_text())
    argv = ["study", "gen-gap", "--out", str(tmp_path), "--report_only"]
    (tmp_path / "bench.json").unlink()
    assert "bench.json is not a gen-gap study's" in _one_line_exit(argv, capsys)
    (tmp_path / "bench.json").write_text('{"study": "gen-g')
    assert "bench.json is not a gen-gap study's" in _one_line_exit(argv, capsys)
    for key, bad in (("seeds", "x"), ("rows", {}), ("settings", {"vit-pretrain": {}}),
                     ("workloads", ["gpt3"])):  # fmt: skip
        (tmp_path / "bench.json").write_text(json.dumps({**meta, key: bad}))
        assert f"bad field {key!r}" in _one_line_exit(argv, capsys)
    (tmp_path / "bench.json").write_text(json.dumps(meta))
    assert cli.main(argv) == 0


# ------------------------------------------------------------- truncated tuning results


def test_resume_summary_counts_every_reused_result(tmp_path):
    """Truncate one tuning result and rerun -> "ok 1, skipped 0" although
    the final seeds' results were reused. The child is replaced by replaying the result it
    wrote the first time; the scheduling and counting are the runner's own."""
    from tqdm import tqdm

    m, results = _run_dir(tmp_path)
    victim = next(r for r in results.values() if r["phase"] == "tune" and r["optimizer"] ==
                  m.plan(results)[0].chosen.runs[0].optimizer and r["lr"] ==
                  m.plan(results)[0].chosen.lr)  # fmt: skip
    path = tmp_path / "results" / f"{victim['workload']}-{victim['run_id']}.json"
    path.write_text(path.read_text()[:100])

    class Replay(Runner):
        def execute(self, run):  # noqa: ANN001, ANN202
            self.launched += 1
            self.record(run, results[run.run_id])
            return results[run.run_id]

    runner = Replay(m, tmp_path, REPO / "recipes", progress=False, echo=lambda msg: None)
    with tqdm(disable=True) as bar:
        runner._schedule(bar)
    assert runner.launched == 1
    assert runner.counts["ok"] == 1 and runner.counts["skipped"] == len(results) - 1


# -------------------------------------------------------------------- oversized counts


@pytest.mark.parametrize("argv, message", [
    (["run", "--preset", "smoke", "--dry_run", "--seeds", "1000000000"], "must be <= 1000"),
    (["run", "--preset", "smoke", "--dry_run", "--tuning_seeds", "1000000000"], "<= 100"),
    (["run", "--preset", "smoke", "--dry_run", "--jobs", "100000"], "must be <= 256"),
    (["run", "--preset", "smoke", "--dry_run", "--threads", "100000"], "must be <= 1024"),
    (["study", "gen-gap", "--preset", "smoke", "--dry_run", "--seeds", "1000000000"], "<= 1000"),
    (["study", "gen-gap", "--preset", "smoke", "--dry_run", "--sizes", "1000000000"], "<= 30"),
])  # fmt: skip
def test_counts_that_size_memory_are_bounded(argv, message, capsys):
    """`run --dry_run --seeds 1000000000` is refused (it once grew to 23 GB: OOM killer)."""
    assert message in _one_line_exit(argv, capsys)


# --------------------------------------------------------------------------- full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (root only; skips elsewhere) and a function that fills it up."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("cannot mount a tmpfs here (needs root)")

    def fill(leave: int = 0) -> None:
        """Fill the disk, then free ``leave`` bytes."""
        with open(disk / "filler", "ab", buffering=0) as fh:
            try:
                while True:
                    fh.write(b"\0" * 4096)
            except OSError:
                pass
            fh.truncate(max(0, fh.tell() - leave))

    yield disk, fill
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_full_disk_is_one_line_in_run_and_report(small_disk, capsys):
    """Once, `OSError: [Errno 28]` tracebacks; the writability probe wrote 0
    bytes and passed on a full disk."""
    disk, fill = small_disk
    _run_dir(disk / "done")
    fill()
    err = _one_line_exit(["run", "--preset", "smoke", "--out", str(disk / "new"),
                          "--no_progress"], capsys)  # fmt: skip
    assert "is not writable: No space left on device" in err
    err = _one_line_exit(["report", str(disk / "done")], capsys)
    assert "cannot write the report into" in err and "No space left on device" in err
    assert not list(disk.rglob("*.tmp"))


@pytest.mark.slow
def test_a_disk_that_fills_up_during_run_is_one_line(small_disk, offline_env):
    """The disk fills up (another process) while `run` runs: a traceback
    before; now one line, status 1, and nothing recorded as failed for it."""
    import time

    disk, fill = small_disk
    out = disk / "out"
    proc = subprocess.Popen([sys.executable, "-m", "clion_hf.bench.cli", "run", "--preset",
                             "smoke", "--workloads", "gpt2-pretrain", "--optimizers", "adamw",
                             "--max_steps", "40", "--out", str(out), "--no_progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=offline_env)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(out.glob("logs/gpt2-pretrain-*.log")):  # the first run has started
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    fill()
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1, stdout[-2000:] + stderr[-3000:]
    assert stderr.count("\n") == 1 and "No space left on device" in stderr, stderr
    assert "finished runs are kept, rerun to resume" in stderr
    assert not list(out.glob("results/*.json"))
    # room again: the next call resumes
    (disk / "filler").unlink()
    again = subprocess.run(proc.args, capture_output=True, text=True, cwd=REPO,
                           env=offline_env, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert {r["status"] for r in load_results(out)[0]} == {"ok"}


def test_steps_refuses_a_full_disk_before_timing_and_keeps_results_it_cannot_write(
        small_disk, capsys):  # fmt: skip
    """Once, `steps --out` failed with a traceback after all the timing."""
    from clion_hf.bench import steps

    disk, fill = small_disk
    fill()
    parser = cli.build_parser(["steps"])
    args = parser.parse_args(["steps", "--models", "tiny", "--optimizers", "adamw-foreach",
                              "--repeats", "1", "--out", str(disk / "t.md")])  # fmt: skip
    assert steps.run(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not writable: No space left on device" in err
    # the disk fills up while timing: the table stays on stdout and in a spare file
    assert steps._write_out(str(disk / "t.md"), "| table |\n") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err
    spare = Path(err.rsplit("saved in ", 1)[1].strip())
    assert spare.read_text() == "| table |\n"
    spare.unlink()


# ----------------------------------------------------------------- killed by a signal


def test_only_a_signal_from_outside_makes_a_run_redone():
    """The rule (tests/test_bench_e2e.py kills a real child): SIGKILL,
    SIGTERM, SIGINT, SIGHUP came from outside; a crash (SIGSEGV, SIGABRT, ...) is the run's
    own and is recorded as failed."""
    import signal

    from clion_hf.bench.runner import outside_signal

    for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        assert outside_signal(-sig) == sig.name
    for sig in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE):
        assert outside_signal(-sig) is None
    assert outside_signal(0) is None and outside_signal(1) is None
    tail = "subprocess.CalledProcessError: Command '[...]' died with <Signals.SIGKILL: 9>."
    assert outside_signal(1, tail, forked=False) == "SIGKILL"
    assert outside_signal(1, tail, forked=True) is None  # a forked run reports it itself


# ------------------------------------------------------------- damaged checkpoint cache


@pytest.mark.slow
def test_a_damaged_checkpoint_cache_is_rebuilt(tmp_path, monkeypatch, capsys):
    """A damaged cached checkpoint is rebuilt, not used as it is (a truncated
    model.safetensors once gave "ready in 0.1s", then a SafetensorError in every finetune
    run)."""
    from safetensors.torch import load_file

    from clion_hf.workloads.models import offline_pretrained_checkpoint

    monkeypatch.setenv("CLION_HF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CLION_HF_CHECKPOINT_MAX_STEPS", "2")
    path = Path(offline_pretrained_checkpoint("vit"))
    weights = path / "model.safetensors"
    good = weights.read_bytes()
    assert offline_pretrained_checkpoint("vit") == str(path)  # verified, not rebuilt
    assert "is damaged" not in capsys.readouterr().err
    weights.write_bytes(good[: len(good) // 2])
    assert offline_pretrained_checkpoint("vit") == str(path)
    assert "is damaged (model.safetensors has" in capsys.readouterr().err
    assert weights.read_bytes() == good  # same recipe, seed and steps: the same weights
    assert load_file(weights)
    # the same size but other bytes: caught by the hash
    weights.write_bytes(good[:-8] + b"\0" * 8)
    offline_pretrained_checkpoint("vit")
    assert "does not match its SHA-256" in capsys.readouterr().err
    assert weights.read_bytes() == good
