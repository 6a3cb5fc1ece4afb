"""clion-bench: spec parsing, the runner end to end, kill-and-resume, divergence, reports."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clion_hf.bench import cli
from clion_hf.bench.report import choose_lr, load_results, write_report
from clion_hf.bench.runner import Matrix, RunConfig, classify, make_run
from clion_hf.bench.specs import (
    PRESETS,
    WORKLOADS,
    SpecError,
    fmt_float,
    get_preset,
    parse_optimizer,
    parse_optimizers,
    weight_decay_for,
)

REPO = Path(__file__).resolve().parents[1]
BENCH = [sys.executable, "-m", "clion_hf.bench.cli"]


# ------------------------------------------------------------------------------ specs


def test_optimizer_specs_map_to_recipe_flags():
    assert parse_optimizer("adamw").recipe_args() == ["--optim", "adamw_torch"]
    assert parse_optimizer("lion").recipe_args() == ["--optim", "lion"]
    assert parse_optimizer("lion:caution=true").recipe_args() == [
        "--optim", "lion", "--optim_args", "caution=true",
    ]  # fmt: skip
    spec = parse_optimizer("clion:mode=element,nu=1e-4")
    assert spec.label == "clion:mode=element"  # nu=1e-4 is the default, dropped from the label
    assert spec.recipe_args() == ["--optim", "clion", "--optim_args", "mode=element,nu=1e-4"]
    # plain clion is the paper's global mode, passed explicitly
    assert parse_optimizer("clion").recipe_args()[-1] == "mode=global,nu=1e-4"
    assert parse_optimizer("adamw:beta2=0.95").recipe_args() == [
        "--optim", "adamw_torch", "--adam_beta2", "0.95",
    ]  # fmt: skip
    # lr pins the grid and is the runner's, not the optimizer's
    pinned = parse_optimizer("lion:lr=3e-4,beta1=0.95")
    assert pinned.pinned_lr == 3e-4
    assert pinned.recipe_args() == ["--optim", "lion", "--optim_args", "beta1=0.95"]


def test_equivalent_specs_share_a_label():
    labels = {parse_optimizer(t).label for t in ("clion", "clion:mode=global", "clion:nu=0.0001")}
    assert labels == {"clion"}
    assert parse_optimizer("clion:nu=0.00001,mode=soft").label == "clion:mode=soft,nu=1e-5"
    assert parse_optimizer("LION:caution=1").label == "lion:caution=true"


def test_optimizer_list_splits_on_names_only():
    specs = parse_optimizers("adamw,lion:caution=true,clion:mode=element,nu=1e-3;clion")
    assert [s.label for s in specs] == [
        "adamw", "lion:caution=true", "clion:mode=element,nu=0.001", "clion",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "text, message",
    [
        ("sgd", "unknown optimizer 'sgd'"),
        ("clion:mode=row", "invalid mode='row': allowed are global"),
        ("clion:nu=0", "must be > 0"),
        ("clion:nu=nan", "not finite"),
        ("clion:caution=true", "unknown option 'caution' for clion"),
        ("lion:caution=maybe", "not a boolean"),
        ("lion:beta1=1.5", "must be in [0, 1)"),
        ("lion:beta1", "expected KEY=VALUE"),
        ("adamw:mode=element", "unknown option 'mode' for adamw"),
        ("lion:beta1=0.8,beta1=0.9", "given twice"),
        ("adamw,adamw", "optimizer given twice"),
    ],
)
def test_bad_optimizer_specs(text, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_optimizers(text)


def test_grid_keeps_lr_times_wd_equal():
    preset = get_preset("cpu")
    ws = preset.settings("gpt2-pretrain")
    grids = {
        t: preset.lr_grid(parse_optimizer(t), ws)
        for t in ("adamw", "lion", "clion", "clion:mode=tensor", "clion:mode=element")
    }
    c = ws.adamw_lr
    assert grids["adamw"] == pytest.approx([c / 3, c, 3 * c, 10 * c], rel=1e-2)
    assert grids["lion"] == pytest.approx([c / 10, c / 3, c, 3 * c], rel=1e-2)
    assert grids["clion:mode=element"] == grids["lion"]
    # global/tensor also get the SGD-sized point (they rarely take the sign branch)
    assert grids["clion"] == grids["clion:mode=tensor"] == sorted([*grids["lion"], ws.sgd_lr])
    for lr in {x for g in grids.values() for x in g}:
        assert lr * weight_decay_for(lr, ws) == pytest.approx(c * ws.adamw_wd, rel=1e-2)
    assert preset.lr_grid(parse_optimizer("lion:lr=1e6"), ws) == [1e6]


def test_run_id_is_stable_and_covers_the_run():
    preset = get_preset("smoke")
    spec = parse_optimizer("lion")
    a = make_run(preset, "gpt2-pretrain", spec, 3e-4, 0, None, "tune")
    assert a.run_id == make_run(preset, "gpt2-pretrain", spec, 3e-4, 0, None, "confirm").run_id
    others = [
        make_run(preset, "gpt2-pretrain", spec, 3e-4, 1, None, "tune"),
        make_run(preset, "gpt2-pretrain", spec, 1e-4, 0, None, "tune"),
        make_run(preset, "gpt2-pretrain", spec, 3e-4, 0, 7, "tune"),
        make_run(preset, "bert-pretrain", spec, 3e-4, 0, None, "tune"),
        make_run(preset, "gpt2-pretrain", parse_optimizer("lion:caution=true"), 3e-4, 0, None,
                 "tune"),
    ]  # fmt: skip
    assert len({a.run_id, *(o.run_id for o in others)}) == 6
    assert (
        fmt_float(1e-4) == "1e-4"
        and fmt_float(0.003) == "0.003"
        and fmt_float(3.33e-4) == ("3.33e-4")
    )


def test_matrix_sizes_of_presets():
    for name, preset in PRESETS.items():
        specs = parse_optimizers(",".join(preset.optimizers))
        matrix = Matrix(preset, list(preset.workloads), specs, preset.seeds)
        tune = matrix.tune_runs()
        assert len({r.run_id for r in tune}) == len(tune), name
        assert set(preset.workloads) == set(WORKLOADS), name
    smoke = PRESETS["smoke"]
    m = Matrix(smoke, list(WORKLOADS), parse_optimizers("adamw,lion,clion"), 1)
    assert len(m.tune_runs()) == 18 and m.n_confirm() == 0


def test_classify_statuses():
    hist_ok = [{"loss": 2.0, "step": 1}, {"eval_loss": 1.9, "step": 1}]
    assert classify(0, {"eval_loss": 1.9}, hist_ok, "")[0] == "ok"
    assert classify(0, {"eval_loss": math.nan}, hist_ok, "")[0] == "diverged"
    assert classify(0, {"eval_loss": 1.0}, [{"loss": math.inf}], "")[0] == "diverged"
    assert classify(1, None, [], "{'loss': 'nan', 'grad_norm': 'nan'}\nTraceback")[0] == "diverged"
    assert classify(-9, None, [], "killed")[0] == "failed"
    assert classify(0, None, [], "")[0] == "failed"


# ------------------------------------------------------------------------------ the CLI


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--preset", "huge"], "unknown preset 'huge'"),
        (["run", "--preset", "smoke", "--workloads", "gpt3-pretrain"], "unknown workload"),
        (["run", "--preset", "smoke", "--optimizers", "adam"], "unknown optimizer 'adam'"),
        (["run", "--preset", "smoke", "--optimizers", "clion:tau=1"], "unknown option 'tau'"),
        (["run", "--preset", "smoke", "--optimizers", "clion:mode=hard"], "mode='hard'"),
        (["run", "--preset", "smoke", "--seeds", "0"], "must be >= 1"),
        (["run", "--preset", "smoke", "--recipes_dir", "/nonexistent/r"], "recipes directory"),
        (["report", "/nonexistent/bench-out"], "no such directory"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_report_on_dir_without_results_exits_2(tmp_path):
    proc = subprocess.run([*BENCH, "report", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "no results" in proc.stderr


def test_gpu_dry_run_prints_valid_recipe_commands():
    """Every command of the online preset parses with the recipes' own argument parser."""
    from transformers import HfArgumentParser, TrainingArguments

    from clion_hf.workloads.args import DataTrainingArguments, ModelArguments

    proc = subprocess.run([*BENCH, "run", "--preset", "gpu", "--dry_run"],
                          capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if not ln.startswith("#")]
    preset = PRESETS["gpu"]
    n_tune = sum(
        len(preset.lr_grid(s, preset.settings(w)))
        for w in WORKLOADS
        for s in parse_optimizers(",".join(preset.optimizers))
    )
    assert len(lines) == n_tune
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    known = set(parser._option_string_actions)
    seen = set()
    for line in lines:
        args = line.split()
        assert args[1:4] == ["launch", "--config_file", str(REPO / "recipes/accelerate_configs/"
                                                             "single_gpu.yaml")]  # fmt: skip
        recipe = Path(args[4])
        assert recipe.is_file() and recipe.parent == REPO / "recipes"
        flags = [a for a in args[5:] if a.startswith("--")]
        assert set(flags) <= known, set(flags) - known
        assert "--dataset_name" in flags and "--bf16" in flags
        seen.add(recipe.name)
        if "finetune" in recipe.name:
            assert "--model_name_or_path" in flags
    assert seen == {w.recipe for w in WORKLOADS.values()}
    assert "mode=element,nu=1e-4" in proc.stdout and "# then seeds 1..2" in proc.stdout


# ------------------------------------------------------------------------------ reports


def _synthetic(workload: str, optimizer: str, lr: float, seed: int, final_loss: float,
               status: str = "ok", sign: float | None = None) -> dict:  # fmt: skip
    """A result file as the runner writes it, with a made-up loss curve ending at
    ``final_loss`` (eval) and ``final_loss - 0.1`` (train)."""
    run = RunConfig(workload, optimizer, lr, 1e-5 / lr, seed, 40, "cpu", ("--optim", "x"),
                    "tune" if seed == 0 else "confirm", "test")  # fmt: skip
    history = []
    for step in (10, 20, 30, 40):
        frac = step / 40
        loss = final_loss + (1 - frac) * 2
        entry = {"step": step, "loss": loss - 0.1, "elapsed_s": step / 10, "peak_mem_mb": 100.0}
        if step == 10:
            entry["optimizer_state_mb"] = 2.0 if optimizer == "adamw" else 1.0
        if sign is not None:
            entry.update({"optim/sign_fraction": sign, "optim/min_abs_c": 10.0 ** -(step / 2)})
        history.append(entry)
        history.append({"step": step, "eval_loss": loss, "elapsed_s": step / 10 + 0.05})
    if status == "diverged":
        history[-1]["eval_loss"] = math.nan
        final_loss = math.nan
    return {
        "schema": 1, "run_id": run.run_id, "status": status, "reason": "", **run.__dict__,
        "recipe_args": list(run.recipe_args), "returncode": 0 if status != "failed" else -9,
        "wall_s": 5.0, "all_results": {} if status == "failed" else
        {"eval_loss": final_loss, "perplexity": math.exp(final_loss), "train_runtime": 4.0,
         "test_loss": final_loss + 0.05, "test_perplexity": math.exp(final_loss + 0.05)},
        "log_history": [] if status == "failed" else history,
    }  # fmt: skip


def test_report_from_synthetic_results(tmp_path):
    runs = [
        # adamw: lr 1e-3 wins on seed 0; seeds 1, 2 at that lr
        _synthetic("gpt2-pretrain", "adamw", 1e-3, 0, 2.0),
        _synthetic("gpt2-pretrain", "adamw", 3e-3, 0, 2.5),
        _synthetic("gpt2-pretrain", "adamw", 1e-3, 1, 2.2),
        _synthetic("gpt2-pretrain", "adamw", 1e-3, 2, 2.1),
        # clion: the larger lr diverged, so 1e-4 is chosen even though nothing beats it
        _synthetic("gpt2-pretrain", "clion:mode=element", 3e-4, 0, 0.0, "diverged", 0.5),
        _synthetic("gpt2-pretrain", "clion:mode=element", 1e-4, 0, 1.8, sign=0.25),
        _synthetic("gpt2-pretrain", "clion:mode=element", 1e-4, 1, 1.9, sign=0.75),
        _synthetic("gpt2-pretrain", "clion:mode=element", 1e-4, 2, 3.0, "failed"),
    ]
    (tmp_path / "results").mkdir()
    for r in runs:
        (tmp_path / "results" / f"{r['workload']}-{r['run_id']}.json").write_text(json.dumps(r))
    assert choose_lr([r for r in runs if r["optimizer"] == "adamw" and r["seed"] == 0]) == 1e-3
    assert choose_lr(runs[4:6]) == 1e-4
    assert choose_lr(runs[4:5]) is None

    written = write_report(tmp_path)
    report = (tmp_path / "report.md").read_text()
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == len(runs) == len(load_results(tmp_path))
    assert {r["status"] for r in rows} == {"ok", "diverged", "failed"}
    by = {(r["optimizer"], float(r["lr"]), int(r["seed"])): r for r in rows}
    ok = by[("clion:mode=element", 1e-4, 0)]
    assert float(ok["gen_gap"]) == pytest.approx(0.1)
    assert float(ok["final_metric"]) == pytest.approx(math.exp(1.8))
    assert float(ok["test_metric"]) == pytest.approx(math.exp(1.85))
    assert float(ok["sign_fraction_mean"]) == pytest.approx(0.25)
    assert float(ok["min_abs_c_min"]) == pytest.approx(1e-20)
    # target = worst AdamW seed at its chosen lr = exp(2.2); clion seed 0's eval losses are
    # 3.3, 2.8, 2.3, 1.8 at steps 10..40, so it first reaches the target at step 40
    assert "Target: 9.025" in report
    assert int(ok["steps_to_target"]) == 40 and float(ok["seconds_to_target"]) == 4.05
    adamw_row = next(ln for ln in report.splitlines() if ln.startswith("| adamw |"))
    cells = [c.strip() for c in adamw_row.strip("|").split("|")]
    assert cells[1] == "0.001" and cells[3] == "3/3"
    mean = (math.exp(2.0) + math.exp(2.2) + math.exp(2.1)) / 3
    test_mean = (math.exp(2.05) + math.exp(2.25) + math.exp(2.15)) / 3
    assert cells[4].startswith(f"{test_mean:.4g} ± ")  # held-out test metric
    assert cells[5].startswith(f"{mean:.4g} ± ")
    clion_row = next(ln for ln in report.splitlines() if ln.startswith("| clion element"))
    cells = [c.strip() for c in clion_row.strip("|").split("|")]
    assert cells[1] == "1e-4" and cells[3] == "2/3"
    assert cells[13] == "0.5"  # mean sign-branch fraction over the two ok seeds
    assert cells[-2:] == ["1", "1"]  # diverged, failed
    for key in ("loss:gpt2-pretrain:40", "sign:gpt2-pretrain:40", "minc:gpt2-pretrain:40", "final"):
        assert written[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({written[key].relative_to(tmp_path)})" in report
    assert not list(tmp_path.rglob("*.tmp"))


# ------------------------------------------------------------------------------ end to end


def _bench(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*BENCH, *args], capture_output=True, text=True, cwd=REPO, **kwargs)


def _launched(stdout: str) -> int:
    return int(stdout.split(" launched")[0].rsplit("; ", 1)[1])


@pytest.mark.slow
def test_end_to_end_tune_confirm_diverge_report_resume(tmp_path):
    out = tmp_path / "bench"
    # adamw: tune (1 lr) + confirm seed 1; lion at an absurd lr diverges, so it has no chosen
    # lr and no confirm run; the matrix goes on
    args = ("run", "--preset", "smoke", "--workloads", "gpt2-pretrain", "--optimizers",
            "adamw,lion:lr=1e6", "--seeds", "2", "--max_steps", "8", "--out", str(out),
            "--no_progress")  # fmt: skip
    proc = _bench(*args, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _launched(proc.stdout) == 3
    results = load_results(out)
    status = {(r["optimizer"], r["seed"]): r["status"] for r in results}
    assert status == {("adamw", 0): "ok", ("adamw", 1): "ok", ("lion:lr=1e6", 0): "diverged"}
    for r in results:
        assert r["command"][1:3] == ["launch", "--config_file"]
        assert (out / r["log"]).is_file()
        assert r["all_results"] and r["log_history"]
    adamw = [r for r in results if r["optimizer"] == "adamw"]
    assert {r["phase"] for r in adamw} == {"tune", "confirm"}
    assert all(math.isfinite(r["all_results"]["perplexity"]) for r in adamw)
    assert not (out / "work").exists() or not any((out / "work").iterdir())

    rep = _bench("report", str(out))
    assert rep.returncode == 0, rep.stderr
    report = (out / "report.md").read_text()
    assert "## gpt2-pretrain (8 steps)" in report and "| adamw | 0.001 |" in report
    assert (out / "plots" / "loss-gpt2-pretrain-8.png").is_file()

    again = _bench(*args, timeout=120)
    assert again.returncode == 0 and _launched(again.stdout) == 0, again.stdout


def _children_of(out: Path) -> list[int]:
    """Processes whose command line mentions ``out`` (the runner's children)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if f"{out}/work/" in cmdline and "clion_hf.bench.cli" not in cmdline:
                pids.append(int(proc.name))
    return pids


def _wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.slow
def test_sigterm_mid_matrix_then_resume(tmp_path):
    out = tmp_path / "bench"
    args = ["run", "--preset", "smoke", "--workloads", "gpt2-pretrain", "--optimizers",
            "adamw,lion,clion:mode=element", "--max_steps", "8", "--jobs", "1", "--out", str(out),
            "--no_progress"]  # fmt: skip
    proc = subprocess.Popen([*BENCH, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    results = out / "results"
    # wait for the first result, then for the second run's child to be up, and terminate
    _wait_for(lambda: results.is_dir() and len(list(results.glob("*.json"))) == 1, 120)
    _wait_for(lambda: bool(_children_of(out)), 60)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "rerun to resume" in stderr
    files = list(results.iterdir())
    assert len(files) == 1 and files[0].suffix == ".json"  # no partial or temporary file
    assert json.loads(files[0].read_text())["status"] == "ok"
    _wait_for(lambda: not _children_of(out), 15)  # the child's process group is gone

    # two at a time now: --jobs does not enter the run ids, so the finished run is still found
    again = _bench(*[a if a != "1" else "2" for a in args], timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _launched(again.stdout) == 2  # the finished run was skipped
    assert sorted(r["optimizer"] for r in load_results(out)) == [
        "adamw", "clion:mode=element", "lion",
    ]  # fmt: skip
    assert all(r["status"] == "ok" for r in load_results(out))


@pytest.mark.slow
def test_killed_child_is_recorded_as_failed_and_matrix_goes_on(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.Popen(
        [*BENCH, "run", "--preset", "smoke", "--workloads", "gpt2-pretrain", "--optimizers",
         "adamw,lion", "--max_steps", "8", "--jobs", "1", "--out", str(out), "--no_progress"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _wait_for(lambda: bool(_children_of(out)), 60)
    for pid in _children_of(out):  # accelerate and the recipe under it
        os.kill(pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    results = {r["optimizer"]: r for r in load_results(out)}
    assert results["adamw"]["status"] == "failed"
    assert results["adamw"]["returncode"] != 0 and results["adamw"]["log_tail"]
    assert results["lion"]["status"] == "ok"
