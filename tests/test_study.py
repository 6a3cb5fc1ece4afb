"""``clion-bench study gen-gap``: planning, resumption, the slope math, errors, GPU dry run,
and that the committed report and README say what the committed CSV gives. Fast."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from _paths import REPO, recipe_exit_status
from scipy import stats as scipy_stats

from clion_hf._files import read_json
from clion_hf.bench import render
from clion_hf.bench.cli import main
from clion_hf.bench.specs import SpecError, parse_optimizer, parse_optimizers
from clion_hf.bench.study import build_study, sizes_of
from clion_hf.bench.study_report import (
    CSV_COLUMNS,
    FINDINGS_BEGIN,
    Estimate,
    analyze,
    findings,
    findings_block,
    findings_from_csv,
    matched_point,
    seed_slope,
)

TUNED = str(REPO / "docs" / "benchmarks" / "cpu-2026-11-29")
COMMITTED = REPO / "docs" / "benchmarks" / "gen-gap-cpu-2026-11-29"


# ------------------------------------------------------------------------------ the math


def test_seed_slope_recovers_a_power_law_and_matches_scipy():
    from scipy.stats import linregress

    sizes = [2048, 1024, 512, 256, 128]
    assert seed_slope({n: 3.0 / n for n in sizes}) == pytest.approx(-1.0, abs=1e-12)
    assert seed_slope({n: 0.5 * n**-0.5 for n in sizes}) == pytest.approx(-0.5, abs=1e-12)
    rng = np.random.default_rng(1)
    gaps = {n: 2.0 * n**-0.7 * math.exp(rng.normal(0, 0.2)) for n in sizes}
    ref = linregress(np.log(sizes), np.log([gaps[n] for n in sizes])).slope
    assert seed_slope(gaps) == pytest.approx(ref, rel=1e-10)
    # non-positive gaps are left out; fewer than 3 usable sizes: no slope
    assert seed_slope({2048: -0.1, 1024: 1 / 1024, 512: 1 / 512, 256: 1 / 256}) == pytest.approx(-1)
    assert seed_slope({2048: -0.1, 1024: 0.0, 512: 1 / 512, 256: 1 / 256}) is None


def test_slope_interval_over_seeds_covers_the_true_slope():
    """Known case: gap = C·N^-1 with multiplicative noise per (seed, N); the mean per-seed
    slope's 95% t interval covers -1 and is as wide as the noise makes it."""
    rng = np.random.default_rng(0)
    sizes = [1024, 512, 256, 128, 64]
    slopes = [seed_slope({n: 5.0 / n * math.exp(rng.normal(0, 0.1)) for n in sizes})
              for _ in range(20)]  # fmt: skip
    est = Estimate([s for s in slopes if s is not None])
    assert est.lo < -1.0 < est.hi
    assert est.hi - est.lo < 0.15
    # the interval is the t interval of the mean (scipy's)
    lo, hi = scipy_stats.t.interval(0.95, len(est.values) - 1, loc=np.mean(est.values),
                                    scale=scipy_stats.sem(est.values))  # fmt: skip
    assert (est.lo, est.hi) == (pytest.approx(lo), pytest.approx(hi))


def test_matched_point_is_the_first_evaluation_at_or_below_the_target():
    row = {"curve": "10:2.0:2.1;20:1.5:1.8;30:1.2:1.7;40:1.1:1.75"}
    assert matched_point(row, 1.5) == (20, pytest.approx(0.3))
    assert matched_point(row, 1.19) == (40, pytest.approx(0.65))
    assert matched_point(row, 1.0) is None


def _rows(meta: dict, gap, train=lambda n, s: 1.0) -> list[dict]:
    """Synthetic CSV rows of a study: gap(label, n, seed), final train loss train(n, s)."""
    rows = []
    w = meta["workloads"][0]
    for r in meta["rows"][w]:
        spec = parse_optimizer(r["spec"])
        mode, nu = (spec.get("mode"), spec.get("nu")) if spec.name == "clion" else ("", None)
        for n in meta["sizes"][w]:
            for s in meta["seeds"]:
                g, t = gap(r["label"], n, s), train(n, s)
                rows.append({
                    "run_id": f"{r['label']}-{n}-{s}", "workload": w, "optimizer": r["label"],
                    "stage": "size", "mode": mode, "nu": nu, "n": n, "seed": s, "lr": r["lr"],
                    "max_steps": meta["settings"][w]["max_steps"],
                    "status": "ok", "reason": "", "final_gap": g, "final_train_loss": t,
                    "final_eval_loss": t + g,
                    "tau_min": None, "tau_median": None, "sign_fraction_mean": None,
                    "curve": f"5:{t + 1!r}:{t + 1 + g / 2!r};10:{t!r}:{t + g!r}",
                })  # fmt: skip
    return rows


def test_analysis_detects_a_slope_difference_and_not_an_absent_one():
    meta, _ = _v2_meta("lion:lr=1e-3,clion:mode=element,lr=1e-3", seeds=5)
    for key in ("designs", "plateau"):  # a study of one design, as the committed one
        meta.pop(key)
    rng = np.random.default_rng(2)
    noise = {(n, s): math.exp(rng.normal(0, 0.05)) for n in (16, 32, 64) for s in range(99, 106)}

    def gap(label, n, s):
        return (1 / n if label.startswith("lion") else 1 / math.sqrt(n)) * noise[(n, s)]

    ws = analyze(_rows(meta, gap), meta)[0]
    lion = ws.slopes["fixed"]["lion:lr=0.001"]
    assert lion.lo < -1 < lion.hi
    (c,) = ws.comparisons["fixed"]
    assert c.detected and c.lo > 0  # clion's -0.5 minus lion's -1
    # a ν-sweep run with a row's label but another ν is not one of the row's runs; the sweep
    # point equal to the row's configuration is (whatever stage it was recorded under)
    label = "clion:mode=element,lr=0.001"
    element = [r for r in _rows(meta, gap) if r["optimizer"] == label]
    stray = {**element[0], "run_id": "stray", "stage": "nu", "nu": 1e-2, "final_gap": 1e3}
    same_point = [{**r, "stage": "nu"} if r["seed"] == 100 else r for r in _rows(meta, gap)]
    for extra in ([stray], []):
        got = analyze([*same_point, *extra], meta)[0]
        assert got.slopes["fixed"][label].values == ws.slopes["fixed"][label].values
        assert len(got.slopes["fixed"][label].values) == 5
    same = analyze(_rows(meta, lambda lb, n, s: noise[(n, s)] / n), meta)[0]
    (c,) = same.comparisons["fixed"]
    assert c.mean == pytest.approx(0) and not c.detected
    assert "no difference detected" in "\n".join(
        findings_from_csv(_csv(_rows(meta, lambda lb, n, s: noise[(n, s)] / n)), meta))


def _csv(rows: list[dict]) -> str:
    from clion_hf.bench.report import rows_csv

    return rows_csv([{**{k: None for k in CSV_COLUMNS}, "max_steps": 20, "weight_decay": 0.0,
                      **r} for r in rows], CSV_COLUMNS)  # fmt: skip


# ------------------------------------------------------------------------------ planning


def test_study_plans_every_run_and_resumes_from_results():
    study = build_study("cpu", None, None, TUNED)
    runs = study.all_runs()
    # 2 workloads x 4 optimizers x 5 sizes x 3 seeds, plus the sweeps (8 points x 2 seeds),
    # less the sweep points that are the tuned element run itself
    assert len(runs) == 2 * 4 * 5 * 3 + 2 * 8 * 2 - 4 == study.run_counts()[0]
    assert len({r.run_id for r in runs}) == len(runs)
    assert sizes_of(2048, 5) == (2048, 1024, 512, 256, 128)
    plans = study.plan({})
    assert sum(len(p.needed) for p in plans) == len(runs)
    done = {r.run_id: {"run_id": r.run_id} for r in runs[::2]}
    left = [r for p in study.plan(done) for r in p.needed]
    assert {r.run_id for r in left} == {r.run_id for r in runs[1::2]}
    # run ids are stable: a second build (a resumed call) plans the same runs
    again = build_study("cpu", None, None, TUNED)
    assert [r.run_id for r in again.all_runs()] == [r.run_id for r in runs]
    lion = next(r for r in runs if r.optimizer == "lion")
    assert "track_stats=true" in lion.recipe_args
    args = list(runs[0].recipe_args)
    assert args[args.index("--train_subset_size") + 1] == "2048"
    assert args.count("--eval_steps") == 1 and "--eval_train_subset" in args


def test_tuned_hyper_parameters_come_from_the_run_directory():
    study = build_study("cpu", ["vit-pretrain"], None, TUNED)
    rows = {r.label: r for r in study.rows["vit-pretrain"]}
    from clion_hf.bench.report import rows_from_csv

    csv_rows = rows_from_csv((Path(TUNED) / "results.csv").read_text())
    finals = {(r["optimizer"], r["lr"], r["weight_decay"]) for r in csv_rows
              if r["workload"] == "vit-pretrain" and r["phase"] == "final"}  # fmt: skip
    for label, row in rows.items():
        assert (label, row.lr, row.weight_decay) in finals
    assert rows["clion:mode=element"].spec.get("nu") == 1e-5  # the tuned ν


def test_tuned_rows_are_what_the_tuned_run_s_final_runs_used(tmp_path):
    """--tuned re-plans the choice from the tuning runs; the committed ladder's final runs
    are that choice for every row the cpu-v2 study reads (this version's search agrees with
    the one that ran), and a directory whose final runs used another configuration is
    refused in one line instead of studied at hyper-parameters nobody tuned."""
    import shutil

    from clion_hf.bench.report import rows_csv, rows_from_csv

    ladder = REPO / "docs" / "benchmarks" / "ladder-cpu-2026-12-06"
    study = build_study("cpu-v2", None, None, str(ladder))
    rows = rows_from_csv((ladder / "results.csv").read_text())
    for w, study_rows in study.rows.items():
        for row in study_rows:
            finals = [r for r in rows if r["workload"] == w and r["optimizer"] == row.label
                      and r["phase"] == "final"]  # fmt: skip
            assert {(r["lr"], r["weight_decay"]) for r in finals} == {
                (row.lr, row.weight_decay)}, (w, row.label)
            for key in ("beta2", "nu"):  # the per-run columns: what the finals ran with
                if row.spec.name != "adamw" and (key != "nu" or row.spec.name == "clion"):
                    assert {r[key] for r in finals} == {row.spec.get(key)}, (w, row.label)
    # the same directory with Lion's final runs moved to another lr
    doctored = tmp_path / "ladder"
    doctored.mkdir()
    shutil.copy(ladder / "bench.json", doctored)
    for r in rows:
        if r["optimizer"] == "lion" and r["phase"] == "final":
            r["run_id"] = r["run_id"][::-1]
    (doctored / "results.csv").write_text(rows_csv(rows))
    with pytest.raises(SpecError, match="another configuration for lion on gpt2-pretrain@64"):
        build_study("cpu-v2", None, None, str(doctored))


@pytest.mark.parametrize("argv, message", [
    (["--preset", "nope"], "unknown study preset 'nope'"),
    (["--preset", "cpu", "--workloads", "bert-pretrain"], "not in study preset 'cpu'"),
    (["--preset", "cpu"], "pass --tuned DIR"),
    (["--preset", "cpu", "--tuned", "/nonexistent"], "--tuned /nonexistent: no such directory"),
    (["--preset", "cpu", "--tuned", TUNED, "--optimizers", "lion:caution=true"],
     "is not in --tuned"),
    (["--preset", "cpu", "--tuned", TUNED, "--sizes", "1"], "--sizes 1 must be >= 2"),
    (["--preset", "cpu", "--tuned", TUNED, "--sizes", "13"], "halves to below 1"),
    (["--preset", "cpu", "--tuned", TUNED, "--sizes", "2"], "ν sweep's N = 512"),
    (["--preset", "cpu", "--optimizers", "lion:lr=-1"], "invalid lr=-1.0"),
    (["--out", "/nonexistent-dir", "--report_only"], "no results in"),
    (["--out", "x"], "required: --preset"),
    # the run's recipe-directory check (one for run and study): it had none here
    (["--preset", "smoke", "--optimizers", "lion:lr=1e-3", "--recipes_dir", str(REPO / "docs"),
      "--dry_run"], "missing recipe file(s)"),
])  # fmt: skip
def test_bad_input_is_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["study", "gen-gap", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_gpu_preset_dry_run_sizes_and_estimates(capsys):
    code = main(["study", "gen-gap", "--preset", "gpu", "--optimizers",
                 "adamw:lr=6e-4,lion:lr=2e-4,clion:lr=0.2,clion:mode=element,lr=2e-4",
                 "--dry_run"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "# 148 runs (1 at a time)" in out and "estimated device time" in out
    assert "N in [65536, 32768, 16384, 8192, 4096]" in out
    assert "N in [32768, 16384, 8192, 4096, 2048]" in out
    commands = [ln for ln in out.splitlines() if not ln.startswith("#")]
    assert len(commands) == 148
    assert all("single_gpu.yaml" in c and "--bf16 true" in c for c in commands)
    assert any("wikitext-103-raw-v1" in c for c in commands)
    assert any("--dataset_name cifar10" in c for c in commands)


@pytest.mark.slow
@pytest.mark.parametrize("args, msg", [
    (("--stop_at_train_loss", "-1"), "--stop_at_train_loss -1.0 must be"),
    (("--train_subset_size", "0"), "--train_subset_size 0 must be >= 1"),
    (("--train_subset_size", "100000"), "larger than the training set"),
])  # fmt: skip
def test_recipe_refuses_bad_gen_gap_options(offline_env, tmp_path, monkeypatch, capsys, args,
                                            msg):  # fmt: skip
    """In-process, through the recipe's own main() and run() (the exit-status contract of a
    real launch is tested once, in test_recipes.py)."""
    argv = ["--output_dir", str(tmp_path / "o"), *args]
    assert recipe_exit_status("vit_pretrain", argv, offline_env, monkeypatch) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert msg in last, last


# ------------------------------------------------------------------------------ committed


@pytest.mark.skipif(not (COMMITTED / "report.md").is_file(), reason="no committed study yet")
def test_committed_report_findings_are_what_its_csv_gives_and_readme_copies_them():
    report = (COMMITTED / "report.md").read_text()
    block = findings_block(report)
    meta = read_json(COMMITTED / "bench.json")
    assert findings_from_csv((COMMITTED / "results.csv").read_text(), meta) == block
    # superseded by cpu-v2 (3 seeds could not carry its "detected"): README no longer quotes it
    assert len(block) >= 4 and FINDINGS_BEGIN not in (REPO / "README.md").read_text()


def test_readme_paper_claim_rests_on_ten_seeds_and_on_the_reports():
    """README's section on the paper's claim: every tested statement ("detected") is a line
    quoted from a committed report with 10 seeds or pairs, and every number of its prose is
    one those reports print (the summary; the subsections describe the designs)."""
    import re

    readme = (REPO / "README.md").read_text()
    section = readme.split("### The paper's claim, measured")[1].split("\n## ")[0]
    reports = "".join((REPO / "docs" / "benchmarks" / d / "report.md").read_text() for d in (
        "stability-2026-12-06", "stability-vit-2026-12-06", "gen-gap-v2-vit-2026-12-06",
        "gen-gap-v2-gpt2-2026-12-06"))
    quoted = re.findall(r"<!-- ([\w-]+):begin -->\n(.*?)\n<!-- \1:end -->", section, re.S)
    assert {name for name, _ in quoted} == {
        "stability-findings", "stability-vit-findings", "gen-gap-v2-vit-findings",
        "gen-gap-v2-gpt2-findings"}
    for _, block in quoted:
        for line in block.splitlines():
            assert line in reports
            if "detected)" in line:
                assert "n=10;" in line or "10 seeds" in line, line
    # the summary of what they show (the subsections after it describe the designs)
    prose = section.split("\n#### ")[0]
    assert "<!--" not in prose and "What they show" in prose
    number = r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w-])"
    printed = {float(x) for x in re.findall(number, reports.replace("−", "-"))}
    for x, percent in re.findall(f"({number})(%?)", prose.replace("−", "-")):
        if x.isdigit() and int(x) < 20:
            continue  # counts of the design (seeds, sizes, slopes), checked where it is built
        value = round(float(x) / 100, 6) if percent else float(x)  # 85.9% is 0.859
        assert value in printed or abs(value) in printed, x + percent


@pytest.mark.parametrize("half", ["vit", "gpt2"])
def test_committed_v2_findings_are_what_its_csv_gives_and_readme_copies_them(half):
    """Each half of the cpu-v2 study: Findings from its results.csv, 10 seeds per slope,
    and README's copy line for line."""
    study = REPO / "docs" / "benchmarks" / f"gen-gap-v2-{half}-2026-12-06"
    report = (study / "report.md").read_text()
    block = findings_block(report)
    meta = read_json(study / "bench.json")
    assert findings_from_csv((study / "results.csv").read_text(), meta) == block
    assert sum("10 seeds: slope" in line for line in block) == 4  # 2 designs x 2 readings
    readme = (REPO / "README.md").read_text()
    marker = f"gen-gap-v2-{half}-findings"
    assert render.findings_block(readme, f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
                                 ) == block  # fmt: skip


# ------------------------------------------------------------------------------ cpu-v2


def test_cpu_v2_sizes_span_two_decades_with_both_designs_and_ten_seeds():
    study = build_study("cpu-v2", None, parse_optimizers(
        "adamw:lr=3e-3,lion:lr=1e-3,clion:lr=0.2,clion:mode=element,lr=1e-3"), None)
    assert len(study.seeds) >= 10
    for w in study.workloads:
        sizes = study.sizes[w]
        assert len(sizes) >= 8 and max(sizes) / min(sizes) >= 100, (w, sizes)
        assert set(study.designs(w)) == {"steps", "epochs"}
    # the N_max run is one run of both designs: 2 workloads x 4 rows x 10 seeds x (8 + 7)
    runs = study.all_runs()
    assert len(runs) == 2 * 4 * 10 * (8 + 7) == study.run_counts()[0]
    assert {r.stage for r in runs} == {"size", "epochs"}
    lo, hi = study.estimated_seconds()
    assert lo == hi and 3600 < lo < 12 * 3600  # a few hours on 2 cores, not minutes or days
    # ladder rungs: the run selects the rung's model as the cpu-ladder preset does; the
    # width-128 rungs run when asked for
    assert study.workloads == ["gpt2-pretrain@64", "vit-pretrain@64"]
    wide = build_study("cpu-v2", ["gpt2-pretrain@128"], parse_optimizers("lion:lr=1e-3"), None)
    for run in (next(r for r in runs if r.workload == "gpt2-pretrain@64"), wide.all_runs()[0]):
        args = list(run.recipe_args)
        width = run.workload.split("@")[1]
        assert args[args.index("--config_name") + 1] == f"gpt2-w{width}"


def test_fixed_epoch_steps_per_size():
    from fractions import Fraction

    from clion_hf.bench.study import STUDY_PRESETS, epoch_steps

    gs = STUDY_PRESETS["cpu-v2"].workloads["gpt2-pretrain@64"]
    got = {n: epoch_steps(n, gs) for n in sizes_of(gs.n_max, 8)}
    assert got == {4096: 600, 2048: 300, 1024: 150, 512: 75, 256: 38, 128: 20, 64: 20, 32: 20}
    vit = STUDY_PRESETS["cpu-v2"].workloads["vit-pretrain@64"]
    # E = 600 steps / 14 batches of 32 at N = 448; below one batch an epoch is one step
    e = Fraction(vit.max_steps, math.ceil(vit.n_max / vit.batch))
    for n in sizes_of(vit.n_max, 8):
        assert epoch_steps(n, vit) == max(vit.min_steps, math.ceil(e * math.ceil(n / 32)))
    assert [epoch_steps(n, vit) for n in (448, 224, 112, 56, 28, 3)] == [600, 300, 172, 86,
                                                                        43, 43]
    # each run passes its batch and scales its evaluations (20 per run) with its steps
    study = build_study("cpu-v2", ["gpt2-pretrain@64"], parse_optimizers("lion:lr=1e-3"), None)
    for run in study.all_runs():
        args = list(run.recipe_args)
        n = int(args[args.index("--train_subset_size") + 1])
        assert args[args.index("--per_device_train_batch_size") + 1] == "16"
        assert run.max_steps == (600 if run.stage == "size" else got[n])
        assert run.max_steps / int(args[args.index("--eval_steps") + 1]) == pytest.approx(
            20, rel=0.35)


def _v2_meta(optimizers: str, seeds: int = 10) -> dict:
    """bench.json of a smoke study with both designs; the plateau is set here (ln 5, chance
    for 5 classes) rather than computed from the data, to keep the test fast."""
    from dataclasses import replace

    from clion_hf.bench.study import TRAIN_MARGIN

    study = build_study("smoke", None, parse_optimizers(optimizers), None, seeds=seeds,
                        nu_sweep=False)  # fmt: skip
    gs = study.study.workloads["vit-pretrain"]
    study.study = replace(study.study, workloads={"vit-pretrain": replace(gs, plateau="")})
    meta = study.describe()
    meta["plateau"] = {"vit-pretrain": {"kind": "chance", "level": math.log(5),
                                        "margin": TRAIN_MARGIN}}  # fmt: skip
    return meta, study


def _study_result(run, final_train: float, gap: float) -> dict:
    """A made-up result file of a study run: evaluations every --eval_steps whose training
    loss falls linearly from ln 5 to ``final_train``, held-out loss ``gap`` above it at the end
    (the gap grows linearly from 0)."""
    args = list(run.recipe_args)
    every = int(args[args.index("--eval_steps") + 1])
    history = []
    for step in range(every, run.max_steps + 1, every):
        t = step / run.max_steps
        train = math.log(5) + t * (final_train - math.log(5))
        history += [{"step": step, "eval_loss": train + t * gap},
                    {"step": step, "train_subset_loss": train, "gen_gap": t * gap}]
    last = history[-1]
    return {"run_id": run.run_id, "workload": run.workload, "optimizer": run.optimizer,
            "lr": run.lr, "weight_decay": run.weight_decay, "seed": run.seed,
            "max_steps": run.max_steps, "status": "ok", "stage": run.stage,
            "recipe_args": args, "log_history": history,
            "all_results": {"eval_loss": last["train_subset_loss"] + last["gen_gap"],
                            "train_subset_loss": last["train_subset_loss"],
                            "gen_gap": last["gen_gap"]}}  # fmt: skip


def _drive_study(study, outcome) -> dict[str, dict]:
    """Made-up results of every run the study plans (``outcome(run) -> (final train, gap)``),
    planned as the runner does (:mod:`tests._plans`' driver, for a study's results)."""
    results: dict[str, dict] = {}
    while needed := [r for p in study.plan(results) for r in p.needed]:
        for run in needed:
            results[run.run_id] = _study_result(run, *outcome(run))
    return results


def _n(run) -> int:
    return int(run.recipe_args[list(run.recipe_args).index("--train_subset_size") + 1])


def test_matched_rule_leaves_out_an_arm_that_does_not_train():
    from clion_hf.bench.report import rows_csv
    from clion_hf.bench.study_report import summarize_run

    meta, study = _v2_meta("lion:lr=1e-3,clion:mode=element,lr=1e-3", seeds=3)
    element = "clion:mode=element,lr=0.001"

    def outcome(run):
        if run.optimizer == element and _n(run) == 16:
            return 1.58, 0.01  # 1.8% below ln 5 = 1.609: does not train
        if run.optimizer == element and _n(run) == 64 and run.seed == 101:
            return 0.9, 0.2  # the highest final loss among the arms that train
        return 0.3 + 0.1 * (run.stage == "epochs"), 2 / _n(run)

    results = _drive_study(study, outcome)
    rows = [summarize_run(r) for r in results.values()]
    from clion_hf.bench.study_report import CSV_COLUMNS as cols

    ws = analyze(rows_from(rows_csv(rows, cols)), meta)[0]
    for design in ("steps", "epochs"):
        assert [(lb, n) for lb, n, _ in ws.excluded[design]] == [(element, 16)]
        assert ws.excluded[design][0][2] == pytest.approx(1.58)
    # without the exclusion the target would be 1.58 (the non-training arm's)
    assert ws.targets["steps"] == pytest.approx(0.9)
    assert "seed 101" in ws.target_froms["steps"] and "N = 64" in ws.target_froms["steps"]
    # the arm that set it reached it at the end of its run; the others earlier, in proportion
    fr = ws.fractions["steps-matched"]
    assert sorted(fr[element][64]) == [0.75, 0.75, 1.0]
    # lion's training loss falls linearly from ln 5 to 0.3: at or below 0.9 from 54% of its
    # run, read at its first evaluation there (every 25% of the run)
    assert fr["lion:lr=0.001"][64] == [0.75] * 3
    assert fr[element][16] == [] and not ws.gaps["steps-matched"][element][16]
    # the end-of-run gap keeps every arm, the non-training one too
    assert len(ws.gaps["steps"][element][16]) == 3
    text = "\n".join(findings(analyze(rows, meta)))
    assert "clion element lr=0.001 N=16 (1.580)" in text and "chance level 1.609" in text
    # no plateau declared: nothing left out, the target is the highest final loss of all
    bare = analyze(rows, {**meta, "plateau": {"vit-pretrain": None}})[0]
    assert bare.excluded["steps"] == [] and bare.targets["steps"] == pytest.approx(1.58)


def test_gap_plots_mark_the_plateau_level_on_the_held_out_panel(tmp_path):
    """A held-out loss read against N needs the level of a model that learned nothing."""
    from clion_hf.bench.study_report import make_plots, summarize_run

    meta, study = _v2_meta("lion:lr=1e-3", seeds=3)
    results = _drive_study(study, lambda run: (0.3, 2 / _n(run)))
    ws = analyze([summarize_run(r) for r in results.values()], meta)
    figures: dict = {}
    plots, _ = make_plots(ws, list(results.values()), tmp_path, figures)
    assert set(plots["vit-pretrain"]) >= {"gap-steps", "gap-steps-matched"}
    for name in ("gap-steps-vit-pretrain.png", "gap-epochs-matched-vit-pretrain.png"):
        gap_ax, held_ax = figures[name].axes
        levels = [ln for ln in held_ax.get_lines() if ln.get_label().startswith("chance level")]
        assert len(levels) == 1 and levels[0].get_ydata()[0] == pytest.approx(math.log(5))
        assert levels[0].get_label() == "chance level 1.61"
        assert not any("level" in ln.get_label() for ln in gap_ax.get_lines())


def rows_from(csv_text: str) -> list[dict]:
    from clion_hf.bench.report import rows_from_csv
    from clion_hf.bench.study_report import _INTS, _TEXT

    return rows_from_csv(csv_text, CSV_COLUMNS, _TEXT, _INTS)


def test_v2_findings_regenerate_from_results_csv():
    from clion_hf.bench.report import rows_csv
    from clion_hf.bench.study_report import summarize_run

    meta, study = _v2_meta("adamw:lr=1e-3,lion:lr=1e-3,clion:lr=0.2")
    rng = np.random.default_rng(4)

    def outcome(run):
        slope = {"adamw": -1.0, "lion": -0.5, "clion": -0.5}[run.optimizer.split(":")[0]]
        return 0.2, 3 * _n(run) ** slope * math.exp(rng.normal(0, 0.05))

    rows = [summarize_run(r) for r in _drive_study(study, outcome).values()]
    block = findings(analyze(rows, meta))  # what write_study_report computes, before the CSV
    assert findings_from_csv(rows_csv(rows, CSV_COLUMNS), meta) == block
    assert sum("slope of log(gap)" in ln for ln in block) == 4  # 2 designs x 2 readings
    assert all("held-out" in ln for ln in block if "slope of log(gap)" in ln)
    # fixed steps first, whatever order bench.json has its designs in (it sorts its keys)
    flipped = {**meta, "designs": {w: dict(sorted(d.items())) for w, d in meta["designs"].items()}}
    assert list(flipped["designs"]["vit-pretrain"]) == ["epochs", "steps"]
    assert findings(analyze(rows, flipped)) == block and ", fixed steps:" in block[0]
    ws = analyze(rows_from(rows_csv(rows, CSV_COLUMNS)), meta)[0]
    for key in ("steps", "steps-matched", "epochs", "epochs-matched"):
        c = next(c for c in ws.comparisons[key] if c.b.startswith("adamw"))
        assert c.n == 10 and c.detected and c.mean == pytest.approx(0.5, abs=0.1), key


def test_a_bad_designs_or_plateau_field_is_one_line():
    from clion_hf.bench.study_report import study_meta_problem

    meta, _ = _v2_meta("lion:lr=1e-3", seeds=2)
    assert study_meta_problem(meta) is None
    for key, bad in (("designs", {"steps": {"x": 20}}), ("designs", {"epochs": {"16": 5}}),
                     ("plateau", {"kind": "chance", "level": "high", "margin": 0.05})):
        assert study_meta_problem({**meta, key: {"vit-pretrain": bad}}) == (
            f"has a bad field {key!r} for vit-pretrain")
