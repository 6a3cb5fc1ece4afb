"""clion-bench: specs, the declared search, statistics, reports, the CLI's one-line errors.

The end-to-end runs (training subprocesses, kills, two runners) are in test_bench_e2e.py.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _paths import REPO
from _plans import drive_plan

from clion_hf.bench import cli
from clion_hf.bench.protocol import Matrix, classify, matrix_from
from clion_hf.bench.report import (
    findings_block,
    findings_from_csv,
    load_results,
    write_report,
)
from clion_hf.bench.runner import Interrupted, Runner, owned
from clion_hf.bench.specs import (
    BASE_WORKLOADS,
    PRESETS,
    WORKLOADS,
    SpecError,
    fmt_float,
    get_preset,
    parse_optimizer,
    parse_optimizers,
    removal_fraction,
    spec_from_recipe_args,
    weight_decay_for,
)
from clion_hf.bench.stats import (
    Comparison,
    compare_family,
    holm,
    performance_profile,
)

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
    assert spec.with_option("nu", 1e-5).recipe_args()[-1] == "mode=element,nu=1e-5"
    assert spec.with_option("nu", 1e-4) == spec
    # plain clion is the paper's global mode, passed explicitly
    assert parse_optimizer("clion").recipe_args()[-1] == "mode=global,nu=1e-4"
    assert parse_optimizer("adamw:beta2=0.95").recipe_args() == [
        "--optim", "adamw_torch", "--adam_beta2", "0.95",
    ]  # fmt: skip
    # lr pins the grid and is the runner's, not the optimizer's
    pinned = parse_optimizer("lion:lr=3e-4,beta1=0.95")
    assert pinned.pinned_lr == 3e-4
    assert pinned.recipe_args() == ["--optim", "lion", "--optim_args", "beta1=0.95"]


@pytest.mark.parametrize("text", [
    "adamw", "adamw:beta1=0.8,beta2=0.95", "lion", "lion:caution=true,beta2=0.9",
    "lion:track_stats=true", "clion", "clion:mode=element,nu=1e-5,beta2=0.95",
    "clion:mode=soft,beta1=0.95", "clion:mode=tensor,nu=1e-7",
])  # fmt: skip
def test_recipe_flags_read_back_as_the_spec(text):
    spec = parse_optimizer(text)
    flags = ["--learning_rate", "1e-3", *spec.recipe_args(), "--seed", "3"]
    assert spec_from_recipe_args(flags) == spec
    assert spec_from_recipe_args(["--optim", "sgd"]) is None
    assert spec_from_recipe_args([]) is None


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
        ("lion:beta1", "is not key=value"),
        ("adamw:mode=element", "unknown option 'mode' for adamw"),
        ("lion:beta1=0.8,beta1=0.9", "given twice"),
        ("adamw,adamw", "optimizer given twice"),
        ("", "no optimizer given in ''; allowed: adamw, lion, clion"),
        (" , ", "no optimizer given"),
    ],
)
def test_bad_optimizer_specs(text, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_optimizers(text)


def test_run_id_is_stable_and_covers_the_run():
    m = Matrix(get_preset("smoke"), ["gpt2-pretrain"], parse_optimizers("lion"), (0,), (100,))
    spec = parse_optimizer("lion")
    a = m.make_run("gpt2-pretrain", spec, 3e-4, None, 0, "lr")
    assert a.run_id == m.make_run("gpt2-pretrain", spec, 3e-4, None, 0, "final").run_id
    others = [
        m.make_run("gpt2-pretrain", spec, 3e-4, None, 1, "lr"),
        m.make_run("gpt2-pretrain", spec, 1e-4, None, 0, "lr"),
        m.make_run("bert-pretrain", spec, 3e-4, None, 0, "lr"),
        m.make_run("gpt2-pretrain", parse_optimizer("lion:caution=true"), 3e-4, None, 0, "lr"),
        Matrix(get_preset("smoke"), ["gpt2-pretrain"], [spec], (0,), (100,), 7)
        .make_run("gpt2-pretrain", spec, 3e-4, None, 0, "lr"),
    ]  # fmt: skip
    assert len({a.run_id, *(o.run_id for o in others)}) == 6
    assert fmt_float(1e-4) == "1e-4" and fmt_float(0.003) == "0.003"


# ------------------------------------------------------------------------------ the search


def test_cpu_searches_are_declared_equal_and_2x_apart():
    preset = get_preset("cpu")
    specs = parse_optimizers(",".join(preset.optimizers))
    assert len(preset.final_seeds) >= 5 and len(preset.tuning_seeds) >= 2
    assert not set(preset.final_seeds) & set(preset.tuning_seeds)  # fresh final seeds
    for w in BASE_WORKLOADS:
        ws = preset.settings(w)
        searches = {s.label: preset.search(s, ws) for s in specs}
        assert len({s.budget for s in searches.values()}) == 1, w  # same trial budget
        for label, search in searches.items():
            lrs = search.lrs
            assert len(lrs) >= 3 and search.lr_extend >= 2
            assert all(b / a <= 2.0 + 1e-9 for a, b in zip(lrs, lrs[1:], strict=False))
            expected = "nu" if label in ("clion:mode=element", "clion:mode=soft") else "wd_scale"
            assert search.second == expected, label
        # global/tensor: a real sweep of SGD-sized learning rates
        for label in ("clion", "clion:mode=tensor"):
            assert min(searches[label].lrs) >= 0.05 and len(searches[label].lrs) >= 3
        # weight decay acts: at scale 1 it removes 10% of a weight over the run, any lr
        k = preset.coupling(ws)
        for lr in (*searches["adamw"].lrs, *searches["clion"].lrs):
            wd = weight_decay_for(lr, 1.0, k)
            assert removal_fraction(lr, wd, ws.max_steps) == pytest.approx(0.1, rel=0.01)
    # gpu-short gives the paper's rule its SGD-sized points too
    short = get_preset("gpu-short")
    assert min(short.search(parse_optimizer("clion"), short.settings("gpt2-pretrain")).lrs) >= 0.05


def _drive(matrix: Matrix, loss_of) -> tuple[dict, list[int]]:
    """Run the plan to its end with made-up results; returns results and runs per round."""
    return drive_plan(matrix, loss_of, max_rounds=50)


def _matrix(opts: str = "adamw", workloads=("gpt2-pretrain",)) -> Matrix:
    preset = get_preset("cpu")
    return Matrix(preset, list(workloads), parse_optimizers(opts), (0, 1), (100, 101, 102))


def test_search_extends_an_edge_optimum_and_stops_inside():
    m = _matrix()
    # validation loss is a parabola in log2(lr) with its minimum at 0.012 (= 0.003 * 4),
    # beyond the initial grid's upper edge (0.006); wd scale: best at 0.25
    def loss(run):
        scale = dict([run.second]).get("wd_scale", 1.0) if run.second else 1.0
        return 3 + (math.log2(run.lr / 0.012)) ** 2 + (0.1 if scale != 0.25 else 0.0)

    results, _ = _drive(m, loss)
    (row,) = m.plan(results)
    assert row.lr_extensions == [0.012, 0.024] and not row.lr_on_edge
    assert row.best_lr_trial is not None and row.best_lr_trial.lr == 0.012
    assert [t.second for t in row.trials if t.stage == "second"] == [0.0, 0.25]
    assert row.chosen is not None and (row.chosen.lr, row.chosen.second) == (0.012, 0.25)
    assert not row.inconclusive and not row.needed
    assert [r.seed for r in row.finals] == [100, 101, 102]
    assert {(r.lr, r.second) for r in row.finals} == {(0.012, ("wd_scale", 0.25))}
    assert row.trials_used <= row.search.budget
    # the same results planned again (a resumed runner, the report) give the same answers
    again = m.plan(dict(results))[0]
    assert [t.key for t in again.trials] == [t.key for t in row.trials]


def test_search_flags_an_optimum_still_on_the_edge():
    m = _matrix("lion")
    results, _ = _drive(m, lambda run: 3 - math.log2(run.lr))  # higher lr always better
    (row,) = m.plan(results)
    assert len(row.lr_extensions) == row.search.lr_extend and row.lr_on_edge
    assert row.inconclusive and row.chosen is not None
    # no decay at all is the bound of the wd space, not an edge: not flagged
    m2 = _matrix("adamw")
    results, _ = _drive(m2, lambda run: 3 + (math.log2(run.lr / 0.003)) ** 2
                        - (0.5 if run.second == ("wd_scale", 0.0) else 0))  # fmt: skip
    (row2,) = m2.plan(results)
    assert row2.chosen.second == 0.0 and not row2.second_on_edge and not row2.second_extensions


def test_search_nu_for_element_and_nothing_chosen_when_all_diverge():
    m = _matrix("clion:mode=element,lion:lr=1e6")

    def loss(run):
        if run.optimizer.startswith("lion"):
            return None  # diverges at any lr
        nu = dict([run.second])["nu"] if run.second else 1e-4
        return 3 + (math.log2(run.lr / 0.001)) ** 2 + abs(math.log10(nu / 1e-5))

    results, _ = _drive(m, loss)
    element, lion = m.plan(results)
    assert element.search.second == "nu" and element.chosen.second == 1e-5
    assert "nu=1e-5" in element.finals[0].recipe_args[-1] or any(
        "nu=1e-5" in a for a in element.finals[0].recipe_args)
    assert lion.chosen is None and not lion.finals  # a pinned lr that diverged: no choice


def test_presets_dry_run_counts_and_time(capsys):
    assert cli.main(["run", "--preset", "cpu", "--dry_run"]) == 0
    out = capsys.readouterr().out
    lo, hi = map(int, re.search(r"# runs: (\d+) to (\d+)", out).groups())
    m = Matrix(get_preset("cpu"), list(BASE_WORKLOADS), parse_optimizers(",".join(CPU)), (0, 1),
               (100, 101, 102, 103, 104))  # fmt: skip
    assert (lo, hi) == m.run_counts() and lo < hi
    assert re.search(r"# estimated device time: \d+ min to \d+ min \(cost model: ", out)
    assert "budget 9 trials" in out


CPU = PRESETS["cpu"].optimizers


def test_gpu_dry_run_prints_valid_recipe_commands():
    """Every first-round command of the online preset parses with the recipes' own parser."""
    from transformers import HfArgumentParser, TrainingArguments

    from clion_hf.workloads.args import DataTrainingArguments, ModelArguments

    proc = subprocess.run([*BENCH, "run", "--preset", "gpu", "--dry_run"],
                          capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if not ln.startswith("#")]
    preset = PRESETS["gpu"]
    specs = parse_optimizers(",".join(preset.optimizers))
    assert len(lines) == sum(len(preset.search(s, preset.settings(w)).lrs) * 2
                             for w in BASE_WORKLOADS for s in specs)  # fmt: skip
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
        if "mrpc" in args:  # MRPC's test labels are hidden: a labelled test split is carved
            assert args[args.index("--test_split_percentage") + 1] == "10"
    assert seen == {w.recipe for w in WORKLOADS.values()}
    assert "mode=element,nu=1e-4" in proc.stdout


# ------------------------------------------------------------------------------ outcomes


def test_classify_statuses():
    hist_ok = [{"loss": 2.0, "step": 1}, {"eval_loss": 1.9, "step": 1}, {"loss": 1.5, "step": 2}]
    assert classify(0, {"eval_loss": 1.9}, hist_ok, "")[0] == "ok"
    assert classify(0, {"eval_loss": math.nan}, hist_ok, "")[0] == "diverged"
    assert classify(0, {"eval_loss": 1.0}, [{"loss": math.inf}], "")[0] == "diverged"
    assert classify(1, None, [], "{'loss': 'nan', 'grad_norm': 'nan'}\nTraceback")[0] == "diverged"
    assert classify(-9, None, [], "killed")[0] == "failed"
    assert classify(0, None, [], "")[0] == "failed"


def test_finite_explosions_count_as_divergence():
    """A run whose loss explodes (CLion at lr=1e6: loss ~5e13, perplexity inf) is not
    recorded ok."""
    exploded = [{"loss": 6.2, "step": 10}, {"loss": 5.1e13, "step": 20}]
    status, reason = classify(0, {"eval_loss": 4.9e13}, exploded, "")
    assert status == "diverged" and "exploded" in reason
    status, reason = classify(0, {"eval_loss": 800.0, "perplexity": math.inf},
                              [{"loss": 6.0, "step": 1}, {"loss": 7.0, "step": 2}], "")
    assert status == "diverged" and "perplexity" in reason
    # a loss that rises a little (a noisy or overfitting run) is still a result
    assert classify(0, {"eval_loss": 1.0}, [{"loss": 0.7, "step": 1}, {"loss": 1.9, "step": 2}],
                    "")[0] == "ok"  # fmt: skip


# ------------------------------------------------------------------------------ statistics


def test_holm_step_down_and_interval_levels():
    rejected, levels = holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    # sorted: 0.005 <= .05/4, 0.01 <= .05/3, 0.03 > .05/2: stop
    assert rejected == [True, False, False, True]
    assert levels[3] == pytest.approx(1 - 0.05 / 4) and levels[0] == pytest.approx(1 - 0.05 / 3)
    assert levels[1] == levels[2] == pytest.approx(1 - 0.05 / 2)


def test_verdicts_agree_with_intervals():
    big = Comparison("a", "ref", [1.0, 1.2, 0.9, 1.1, 1.05])
    zero = Comparison("b", "ref", [0.5, -0.4, 0.1, -0.2, 0.05])
    one = Comparison("c", "ref", [1.0])
    compare_family([big, zero, one])
    assert big.detected and big.lo > 0 and big.level == pytest.approx(1 - 0.05 / 2)
    assert not zero.detected and zero.lo <= 0 <= zero.hi
    assert not one.detected and math.isnan(one.lo)  # too few pairs: no interval, no verdict


def test_performance_profile():
    measures = {"w1": {"a": 100, "b": 200}, "w2": {"a": math.inf, "b": 50}, "w3": {"a": 10}}
    rho = performance_profile(measures, [1.0, 2.0, 10.0])
    assert rho["a"] == pytest.approx([2 / 3, 2 / 3, 2 / 3])
    assert rho["b"] == pytest.approx([1 / 3, 2 / 3, 2 / 3])


# ------------------------------------------------------------------------------ reports


def _history(final_loss: float, steps: int = 40, sign: float | None = None) -> list[dict]:
    history = []
    for step in range(steps // 4, steps + 1, steps // 4):
        loss = final_loss + (1 - step / steps) * 2
        entry = {"step": step, "loss": loss - 0.1, "elapsed_s": step / 10, "train_s": step / 20,
                 "optimizer_s": step / 1000, "peak_mem_mb": 100.0}  # fmt: skip
        if step == steps // 4:
            entry["optimizer_state_mb"] = 1.0
        if sign is not None:
            entry.update({"optim/sign_fraction": sign, "optim/min_abs_c": 10.0 ** -(step / 2)})
        history.append(entry)
        history.append({"step": step, "eval_loss": loss, "train_s": step / 20})
    return history


def write_synthetic(out: Path, matrix: Matrix, loss_of, test_shift: dict[str, float],
                    diverge: set[str] = frozenset()) -> dict[str, dict]:  # fmt: skip
    """A results directory as the runner writes it, for ``matrix`` and made-up losses."""
    (out / "results").mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(matrix.describe()))
    results: dict[str, dict] = {}
    rng = np.random.default_rng(0)
    while True:
        needed = [r for p in matrix.plan(results) for r in p.needed]
        if not needed:
            return results
        for run in needed:
            loss = loss_of(run) + 0.01 * rng.standard_normal()
            status = "diverged" if run.optimizer in diverge else "ok"
            test_loss = loss + test_shift.get(run.optimizer, 0.0) + 0.001 * (run.seed % 7)
            res = {"eval_loss": loss, "perplexity": math.exp(loss), "test_loss": test_loss,
                   "test_perplexity": math.exp(test_loss), "eval_samples": 256,
                   "test_samples": 1000, "train_samples": 9000}  # fmt: skip
            if status == "diverged":
                res = {"eval_loss": math.nan}
            sign = 0.0 if run.optimizer == "clion" else 0.3
            result = {
                "schema": 2, "run_id": run.run_id, "status": status, "reason": "",
                **{k: v for k, v in run.__dict__.items()},
                "recipe_args": list(run.recipe_args),
                "second": list(run.second) if run.second else None,
                "all_results": res, "returncode": 0, "wall_s": 5.0,
                "log_history": _history(loss, run.max_steps,
                                        sign if run.optimizer.startswith("clion") else None),
                "environment": {"host": "test", "cpus": 2, "python": "3", "platform": "Linux-t",
                                "versions": {"torch": "x"}, "git_commit": "abc"},
            }  # fmt: skip
            results[run.run_id] = result
            (out / "results" / f"{run.stem}.json").write_text(json.dumps(result))


def test_report_findings_are_computed_and_recomputable_from_the_csv(tmp_path):
    m = Matrix(get_preset("cpu"), ["gpt2-pretrain"], parse_optimizers("adamw,lion,clion"),
               (0, 1), (100, 101, 102, 103, 104), 40)  # fmt: skip

    def loss(run):  # optimum inside every grid (lr, and weight-decay scale 1/4)
        centre = {"adamw": 0.003, "lion": 0.001, "clion": 0.2}[run.optimizer]
        scale = run.second[1] if run.second else 1.0
        return 3 + 0.1 * math.log2(run.lr / centre) ** 2 + 0.2 * abs(scale - 0.25)

    # lion 0.05 nats worse than adamw on test, clion (global) 0.5 worse
    write_synthetic(tmp_path, m, loss, {"lion": 0.05, "clion": 0.5})
    write_report(tmp_path)
    report = (tmp_path / "report.md").read_text()
    block = findings_block(report)
    text = "\n".join(block)
    # declared comparisons only (lion vs adamw, clion global vs adamw), in words
    assert "lion vs adamw: **lion is worse** (test perplexity ×1.05" in text
    assert "clion global vs adamw: **clion global is worse** (test perplexity ×1.6" in text
    assert "Best mean: **adamw**" in text
    section = report.split("## gpt2-pretrain")[1]
    assert "clion global vs lion: test perplexity ×1.5" in section  # an untested estimate
    assert "gen. gap" not in report and "commit None" not in report
    assert re.search(r"CLion `global` \(the paper's rule\): over \d+ runs that finished ok, "
                     "the fraction of coordinates that took the sign branch was 0 in every "
                     "run", text)
    assert "Tested against tuned adamw: worse on 1 (gpt2-pretrain)." in text
    # the Findings are a function of results.csv and bench.json alone
    meta = json.loads((tmp_path / "bench.json").read_text())
    assert findings_from_csv((tmp_path / "results.csv").read_text(), meta) == block
    assert matrix_from(meta) is not None
    for png in ("final-metric.png", "performance-profile.png", "loss-gpt2-pretrain-40.png",
                "clion-minc-gpt2-pretrain-40.png"):  # fmt: skip
        assert (tmp_path / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.rglob("*.tmp"))


def test_report_compares_the_run_with_the_cost_model(tmp_path):
    """The report sets each workload's measured seconds per run (CPU seconds on a CPU
    preset, not wall) beside the cost model ``--dry_run`` estimates with, as a ratio."""
    m = Matrix(get_preset("cpu"), ["gpt2-pretrain", "vit-pretrain"],
               parse_optimizers("adamw,lion"), (0, 1), (100, 101), 40)  # fmt: skip
    results = write_synthetic(tmp_path, m, lambda run: 3.0, {})
    factor = {"gpt2-pretrain": 1.5, "vit-pretrain": 0.5}
    for run_id, result in results.items():
        ws = m.preset.settings(result["workload"], m.max_steps)
        result["cpu_s"] = factor[result["workload"]] * ws.cost.run_s(ws.max_steps)
        path = next((tmp_path / "results").glob(f"*{run_id}*.json"))
        path.write_text(json.dumps(result))
    write_report(tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert f"`--dry_run` estimated {m.estimate_text()} for the whole matrix" in report
    gpt2 = m.preset.settings("gpt2-pretrain", 40).cost.run_s(40)
    n = sum(r["workload"] == "gpt2-pretrain" for r in results.values())
    assert f"| gpt2-pretrain | {n} | {gpt2:.1f} | {1.5 * gpt2:.1f} | ×1.50 |" in report
    assert "| vit-pretrain |" in report and "| ×0.50 |" in report
    assert "median CPU s per run" in report
    total = next(x for x in report.splitlines() if x.startswith("Against the cost model"))
    vit = m.preset.settings("vit-pretrain", 40).cost.run_s(40)
    k = len(results) - n  # vit runs
    ratio = (1.5 * gpt2 * n + 0.5 * vit * k) / (gpt2 * n + vit * k)
    assert f"the {len(results)} runs here took ×{ratio:.2f} the model's time" in total
    platform = results[next(iter(results))]["environment"]["platform"]
    assert f"(`environment`: CPU, platform): `{platform}` ({len(results)} runs)." in total


def test_report_never_crashes_and_says_what_is_missing(tmp_path):
    """The report is written even when no perplexity run finished (once: a ValueError from
    the log scale, and no report.md), and an unreadable result file is listed, not dropped."""
    m = Matrix(get_preset("cpu"), ["gpt2-pretrain", "vit-pretrain"],
               parse_optimizers("adamw,lion"), (0,), (100, 101), 40)  # fmt: skip
    write_synthetic(tmp_path, m, lambda run: 3.0, {}, diverge={"adamw", "lion"})
    (tmp_path / "results" / "gpt2-pretrain-deadbeef0000.json").write_text('{"run_id": "dead')
    (tmp_path / "results" / "other.json").write_text('{"hello": 1}')
    assert cli.main(["report", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "## Missing or unreadable" in report
    assert "`gpt2-pretrain-deadbeef0000.json`: not readable as JSON" in report
    assert "`other.json`: not a clion-bench result" in report
    assert "gpt2-pretrain adamw: no configuration finished ok on every tuning seed" in report
    assert "diverged" in report
    # and without bench.json at all
    (tmp_path / "bench.json").unlink()
    assert cli.main(["report", str(tmp_path)]) == 0
    assert "`bench.json` is missing or unreadable" in (tmp_path / "report.md").read_text()
    assert len(load_results(tmp_path)[0]) == len(list((tmp_path / "results").glob("*.json"))) - 2


# ------------------------------------------------------------------------------ the runner


def test_a_recorded_ok_result_is_never_replaced_by_a_worse_one(tmp_path):
    """A second runner on one directory cannot turn ok results into failed ones."""
    m = _matrix("adamw")
    run = m.plan({})[0].needed[0]
    runner = Runner(m, tmp_path, REPO / "recipes", echo=lambda msg: None)
    # a whole result (an unusable file protects nothing, it is redone)
    ok = {**run.__dict__, "run_id": run.run_id, "status": "ok", "marker": 1}
    assert runner.record(run, ok)
    assert not runner.record(run, {"run_id": run.run_id, "status": "failed"})
    assert not runner.record(run, {"run_id": run.run_id, "status": "diverged"})
    assert json.loads(runner.result_path(run).read_text())["marker"] == 1
    assert runner.record(run, {**ok, "marker": 2})  # an equal one may replace it


def test_interrupted_is_not_an_ordinary_error():
    """SIGTERM during checkpoint preparation is not caught by `except Exception` (the
    matrix must not run on)."""
    assert issubclass(Interrupted, BaseException) and not issubclass(Interrupted, Exception)


def _writable(path: Path) -> bool:
    try:
        (path / ".probe").write_text("")
        (path / ".probe").unlink()
        return True
    except OSError:
        return False


@pytest.fixture
def make_readonly():
    """Make a directory unwritable for this process: mode 555, or for root (which ignores
    modes) a read-only bind mount of it onto itself; skips where neither works."""
    mounted: list[Path] = []

    def make(path: Path) -> Path:
        path.chmod(0o555)
        if _writable(path):
            ok = subprocess.run(["mount", "--bind", str(path), str(path)],
                                capture_output=True).returncode == 0  # fmt: skip
            if ok:
                mounted.append(path)
                subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], capture_output=True)
            if _writable(path):
                pytest.skip("cannot make a read-only directory here (root without mount)")
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", str(path)], capture_output=True)
        path.chmod(0o755)


def _one_line_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


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
        # empty lists are refused, not read as the preset's defaults
        (["run", "--preset", "smoke", "--optimizers", ""], "no optimizer given in ''"),
        (["run", "--preset", "smoke", "--workloads", ""], "no workload given in ''"),
        (["run", "--preset", "smoke", "--workloads", "gpt2-pretrain,"], "empty workload name"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    assert message in _one_line_error(argv, capsys)


def test_unusable_out_and_report_dirs_exit_2_with_one_line(tmp_path, make_readonly, capsys):
    """--out on an existing file / a read-only path, and report on a read-only directory:
    one line each, no traceback."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    err = _one_line_error(["run", "--preset", "smoke", "--out", str(afile), "--no_progress"],
                          capsys)  # fmt: skip
    assert "exists and is not a directory" in err
    done = tmp_path / "done"
    (done / "results").mkdir(parents=True)
    (done / "results" / "x.json").write_text("{}")
    make_readonly(done)
    err = _one_line_error(["run", "--preset", "smoke", "--out", str(done / "sub"),
                           "--no_progress"], capsys)  # fmt: skip
    assert "is not writable" in err
    err = _one_line_error(["run", "--preset", "smoke", "--out", str(done), "--no_progress"],
                          capsys)  # fmt: skip
    assert "is not writable" in err
    err = _one_line_error(["report", str(done)], capsys)
    assert "cannot write the report into" in err


def test_second_runner_on_a_locked_dir_exits_2_with_one_line(tmp_path):
    """The directory is owned by one runner at a time."""
    out = tmp_path / "out"
    out.mkdir()
    with owned(out.resolve()):
        proc = subprocess.run([*BENCH, "run", "--preset", "smoke", "--out", str(out),
                               "--no_progress"], capture_output=True, text=True, cwd=REPO,
                              timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "is in use by another clion-bench run" in proc.stderr
    assert f"(pid {os.getpid()})" in proc.stderr
    assert not (out / "results").exists()  # it touched nothing


def test_report_on_dir_without_results_exits_2(tmp_path):
    proc = subprocess.run([*BENCH, "report", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "no results" in proc.stderr


# ------------------------------------------------------------------------------ the code


def _imports(module: Path) -> set[str]:
    """clion_hf modules ``module`` imports (absolute or relative), at any depth."""
    package = ".".join(module.relative_to(REPO).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            if base.startswith("clion_hf"):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("clion_hf")}
    return found


def test_bench_and_workloads_import_downward_without_cycles():
    """No import cycle in bench/ or workloads/ (cli <-> steps, report <-> runner once)."""
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts): p
               for d in ("bench", "workloads") for p in (REPO / "clion_hf" / d).glob("*.py")}
    graph = {name: {i for i in _imports(path) if i in modules and i != name}
             for name, path in modules.items()}  # fmt: skip
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join([*stack, node, nxt])
            if nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])
    for name, path in modules.items():  # workloads never import bench
        if ".workloads." in name:
            assert not any(i.startswith("clion_hf.bench") for i in _imports(path)), name


def test_atomic_file_writing_exists_once():
    """One writer for bench and workloads (clion_hf/_files.py)."""
    writers = []
    for d in ("bench", "workloads"):
        for path in (REPO / "clion_hf" / d).glob("*.py"):
            text = path.read_text()
            if re.search(r"os\.replace\(|os\.rename\(|mkstemp\(", text):
                writers.append(path.name)
    assert writers == []


# ------------------------------------------------------------------------------ README


def test_readme_quotes_the_committed_cpu_report():
    """README's benchmark figures are the committed report's, and that report's Findings are
    what `clion-bench report` computes from its results.csv and bench.json."""
    readme = (REPO / "README.md").read_text()
    found = re.findall(r"\(docs/benchmarks/(cpu-[0-9-]+)/report\.md\)", readme)
    assert len(set(found)) == 1, found
    report_dir = REPO / "docs" / "benchmarks" / found[0]
    assert sorted(p.name for p in report_dir.parent.glob("cpu-*")) == [found[0]]
    report = (report_dir / "report.md").read_text()
    block = findings_block(report)
    assert findings_block(readme) == block and len(block) >= 7
    meta = json.loads((report_dir / "bench.json").read_text())
    assert findings_from_csv((report_dir / "results.csv").read_text(), meta) == block
    # every other number of the README's subsection appears in the report
    section = readme.split("### What the `cpu` preset shows")[1].split("\n## ")[0]
    outside = section.split("<!-- findings:begin -->")[0]
    for number in re.findall(r"(?<![\w.-])\d+(?:\.\d+)?(?![\w-])", outside):
        assert number in report, number


def test_readme_steps_tables_are_the_committed_reports():
    """README's CPU step tables are generated from the newest committed steps reports."""
    from clion_hf.bench import steps_readme

    readme = (REPO / "README.md").read_text()
    assert steps_readme.replace_block(readme, steps_readme.block(REPO)) == readme
    assert steps_readme.main(["--repo", str(REPO), "--check"]) == 0


def test_steps_readme_reads_a_report_and_notices_a_stale_readme(tmp_path):
    from clion_hf.bench import steps_readme
    from clion_hf.bench.steps import HEADERS, table_csv

    def report(lion_ratio: str) -> str:
        facts = {"when": "2026-01-02 03:04 UTC", "device": "cpu", "target": "x86-64-v4",
                 "rounds": "9", "load_before": "0.50", "load_after": "0.70"}
        rows = [("adamw-fused", "torch", "100.0", "1.00", "[1.00, 1.00]"),
                ("lion-fused", "clion_hf", "70.0", lion_ratio, "–"),
                ("clion-element-fused", "clion_hf", "75.0", "0.75", "[0.74, 0.77]")]
        table = [{**dict.fromkeys(HEADERS, "–"), "model": "gpt2", "optimizer": o, "impl": i,
                  "median_ms": ms, "vs_adamw_fused": r, "vs_adamw_fused_ci": ci}
                 for o, i, ms, r, ci in rows]
        return table_csv(table, HEADERS, facts)

    docs = tmp_path / "docs" / "benchmarks"
    docs.mkdir(parents=True)
    (docs / "steps-cpu-x86-64-v3-2026-01-01.csv").write_text(report("0.99"))
    (docs / "steps-cpu-x86-64-v3-2026-01-02.csv").write_text(report("0.70"))  # newest wins
    (docs / "steps-cpu-native-2026-01-02.csv").write_text(report("0.71"))
    (docs / "steps-cpu-native-2026-01-03.md").write_text("a report without its CSV: unread")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{steps_readme.BEGIN}\nold\n{steps_readme.END}\nrest\n")
    assert steps_readme.main(["--repo", str(tmp_path), "--check"]) == 1
    assert steps_readme.main(["--repo", str(tmp_path)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("\nrest\n") and "old" not in text
    assert "| Lion fused | 0.70 |" in text and "| Lion fused | 0.71 |" in text
    assert "[`steps-cpu-native-2026-01-02.md`](docs/benchmarks/steps-cpu-native-2026-01-02.md)" \
        in text  # the CSV's report is cited
    assert "| torch AdamW fused (ms) | 1.00 (100.0 ms) |" in text
    assert "| CLion element / soft fused | – |" in text  # soft missing: no half cell
    assert steps_readme.table(steps_readme.read_report(report("0.7"))[0]).count(
        "| Lion fused | 0.7 |") == 1  # no interval in the report: none shown
    element = {"vs_adamw_fused": "0.75", "vs_adamw_fused_ci": "[0.74, 0.77]"}
    assert steps_readme._ratio(element) == "0.75 [0.74, 0.77]"
    assert "native build (x86-64-v4)" in text and "median of 9 rounds" in text
    assert "0.50 before and 0.70 after" in text
    assert steps_readme.main(["--repo", str(tmp_path), "--check"]) == 0
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="steps-tables"):
        steps_readme.main(["--repo", str(tmp_path)])


# ------------------------------------------------------------------------------ the launcher


def test_launcher_runs_forks_execs_and_stops(tmp_path):
    from clion_hf.bench.launcher import MARKER, Launcher, leftover_pids, stop_leftovers

    env = {**os.environ, MARKER: str(tmp_path.resolve()),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    script = tmp_path / "script.py"
    script.write_text("import sys\nprint('hello', sys.argv[1:])\nsys.exit(3)\n")
    launcher = Launcher(env, preload=False, stderr_path=tmp_path / "launcher.log")
    try:
        launcher.wait_ready(60)
        run = launcher.start([str(script), "a", "b"], tmp_path, tmp_path / "run.log", "run")
        assert run.wait(60) == 3 and run.cpu_s is not None
        assert "hello ['a', 'b']" in (tmp_path / "run.log").read_text()
        call = launcher.start(["os.path:join", "x", "y"], tmp_path, tmp_path / "call.log", "call")
        assert call.wait(60) == 0 and (tmp_path / "call.log").read_text().strip() == "x/y"
        sleeper = launcher.start(["sleep", "60"], tmp_path, tmp_path / "sleep.log", "exec")
        deadline = time.monotonic() + 60  # the marked child is found (busy host: seconds)
        while sleeper.pid not in leftover_pids(tmp_path):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        sleeper.kill(grace=5)
        assert sleeper.wait(10) == -signal.SIGTERM
    finally:
        launcher.close()
    assert launcher.proc.returncode == 0
    # what an earlier runner left behind is found by its mark and stopped
    stray = subprocess.Popen(["sleep", "60"], env=env)
    # Popen returns once exec has begun; the kernel fills /proc/<pid>/environ a moment later
    deadline = time.monotonic() + 10
    while stray.pid not in leftover_pids(tmp_path):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert stop_leftovers(tmp_path) == 1 and stray.wait(10) == -signal.SIGTERM
    assert leftover_pids(tmp_path) == []


def test_commit_is_recorded_only_for_recipes_git_tracks(tmp_path, monkeypatch):
    from clion_hf.bench import runner

    def info(recipes: Path) -> dict:
        monkeypatch.setattr(runner, "_ENV_CACHE", {})
        return runner.environment_info(recipes)

    # a wheel's copy of the recipes in a venv inside some user's repository (venv ignored)
    repo = tmp_path / "project"
    recipes = repo / ".venv" / "site-packages" / "clion_hf" / "recipes"
    recipes.mkdir(parents=True)
    (recipes / "gpt2_pretrain.py").write_text("")
    (repo / ".gitignore").write_text(".venv/\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    assert info(recipes)["git_commit"] is None
    # this checkout's recipes: the commit they came from
    here = Path(__file__).resolve().parents[1] / "recipes"
    head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    assert info(here)["git_commit"] == head


def test_runs_record_the_cpu_generation_a_vm_model_name_hides(tmp_path, monkeypatch):
    """``AMD EPYC`` alone does not say which generation ran a result: family, model and
    stepping of the first processor are recorded with it (and a host without cpuinfo still
    gets a name)."""
    from clion_hf.bench import runner
    from clion_hf.bench.render import cpu_model

    info = tmp_path / "cpuinfo"
    block = "processor\t: {}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: {}\n" \
            "model name\t: AMD EPYC\nstepping\t: 1\n\n"
    info.write_text(block.format(0, 17) + block.format(1, 1))  # only the first block counts
    assert cpu_model(str(info)) == "AMD EPYC (family 25, model 17, stepping 1)"
    assert cpu_model(str(tmp_path / "absent"))  # platform's name, never empty
    monkeypatch.setattr(runner, "_ENV_CACHE", {})
    assert runner.environment_info(tmp_path)["cpu"] == cpu_model()


@pytest.mark.slow  # times real optimizer steps (~17 s on 2 cores)
def test_steps_writes_a_csv_next_to_its_markdown_that_steps_readme_reads(tmp_path, capsys):
    """`steps --out X.md` writes X.csv too: the table's cells and the run's facts, which the
    README generator reads instead of parsing the markdown back."""
    from clion_hf.bench import steps, steps_readme

    out = tmp_path / "steps-cpu-native-2026-01-01.md"
    assert steps.main(["--models", "tiny", "--repeats", "1", "--optimizers",
                       "adamw-fused,lion-fused", "--warm_cache", "--out", str(out)]) == 0
    rows, facts = steps_readme.read_report(out.with_suffix(".csv").read_text())
    assert set(rows) == {("tiny", "adamw-fused"), ("tiny", "lion-fused")}
    markdown = out.read_text()
    for row in rows.values():  # every CSV row is a row of the markdown table
        assert "| " + " | ".join(row[k] for k in steps.HEADERS) + " |" in markdown
    assert facts["rounds"] == "1" and facts["when"] in markdown
    assert f"kernel target {facts['target']} " in markdown
