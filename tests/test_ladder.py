"""The scale ladder and the local search: equal spend, beta2 tuned for everyone,
edges, the presets' dry-run estimate, rungs' model presets and the plateau levels.

The search tests drive the real planner (:meth:`Matrix.plan`) to its end with made-up
validation losses that are a known function of the configuration."""

from __future__ import annotations

import math
import re

import pytest
from _paths import REPO
from _plans import drive_plan

from clion_hf.bench import cli
from clion_hf.bench.ladder import (
    bigram_nats,
    chance_levels,
    ladder_csv,
    ladder_markdown,
    ladder_points,
    unigram_nats,
)
from clion_hf.bench.protocol import Matrix, RunConfig
from clion_hf.bench.specs import (
    BASE_WORKLOADS,
    PRESETS,
    WORKLOADS,
    SpecError,
    get_preset,
    parse_optimizer,
    parse_optimizers,
    rung_args,
)

ALL_MODES = "adamw,lion,clion,clion:mode=tensor,clion:mode=element,clion:mode=soft"


def _drive(matrix: Matrix, loss_of) -> dict:
    return drive_plan(matrix, loss_of, max_rounds=100)[0]


def _ladder(opts: str = ALL_MODES, workload: str = "gpt2-pretrain@64") -> Matrix:
    preset = get_preset("cpu-ladder")
    return Matrix(preset, [workload], parse_optimizers(opts), preset.tuning_seeds,
                  preset.final_seeds)  # fmt: skip


def _bowl(lr_best: dict[str, float], beta2_best: float | None = None, scale_best: float = 0.25,
          nu_best: float = 1e-5):  # fmt: skip
    """A loss with one minimum per optimizer, in grid steps of every dimension; beta2's
    (default) one step below the optimizer's default (AdamW 0.998, the others 0.98)."""

    def loss(run: RunConfig) -> float:
        p = dict(run.params)
        opt = run.optimizer.split(":")[0]
        opt = "element" if "element" in run.optimizer or "soft" in run.optimizer else opt
        value = 3 + math.log2(run.lr / lr_best[opt]) ** 2
        b2 = beta2_best or (0.998 if opt == "adamw" else 0.98)
        value += 0.1 * abs(math.log(1 - p["beta2"]) - math.log(1 - b2))
        index = {0.0: -2, 0.25: -1}  # weight-decay scales: 0, then 4**k
        step = [index.get(x, round(math.log(x, 4)) if x else -2) for x in (p["wd_scale"],
                                                                           scale_best)]
        value += 0.01 * abs(step[0] - step[1])
        if "nu" in p:
            value += 0.01 * abs(math.log10(p["nu"] / nu_best))
        return value

    return loss


def test_local_search_spends_the_same_trials_and_tunes_beta2_for_everyone():
    m = _ladder()
    lrs = {"adamw": 0.003, "lion": 0.001, "clion": 0.2, "element": 0.001}
    results = _drive(m, _bowl(lrs))
    plans = m.plan(results)
    preset = get_preset("cpu-ladder")
    assert len(plans) == 6
    for row in plans:
        dims = [d.name for d in row.search.dims]
        assert dims[:3] == ["lr", "beta2", "wd_scale"], row.optimizer
        assert ("nu" in dims) == (row.optimizer in ("clion:mode=element", "clion:mode=soft"))
        # the spend: exactly the same number of configurations, each on every tuning seed
        assert row.trials_used == preset.trials_per_row == row.search.budget == 9
        assert all(len(t.runs) == len(preset.tuning_seeds) >= 2 for t in row.trials)
        assert len({t.point for t in row.trials}) == 9
        # beta2 was varied and reaches the recipe (AdamW's flag, the others' optim_args)
        beta2s = {dict(t.params)["beta2"] for t in row.trials}
        assert len(beta2s) >= 3, (row.optimizer, beta2s)
        chosen = dict(row.chosen.params)
        b2 = 0.998 if row.optimizer == "adamw" else 0.98
        assert chosen["beta2"] == b2 and chosen["wd_scale"] == 0.25, row.optimizer
        args = " ".join(row.finals[0].recipe_args)
        assert (f"--adam_beta2 {b2}" if row.optimizer == "adamw" else f"beta2={b2}") in args
        assert len(row.finals) == 10 and not row.inconclusive and row.edges == []
    element = next(p for p in plans if p.optimizer == "clion:mode=element")
    assert dict(element.chosen.params)["nu"] == 1e-5
    assert "nu=1e-5" in " ".join(element.finals[0].recipe_args)


def test_local_search_follows_an_edge_and_marks_an_optimum_it_cannot_reach():
    m = _ladder("lion")
    # Lion's optimum 8x above the grid's top: the search walks up the lr axis first
    results = _drive(m, _bowl({"lion": 0.016}))
    (row,) = m.plan(results)
    assert row.trials_used == 9
    assert row.lr_extensions[:2] == [0.004, 0.008]
    assert row.chosen.lr == 0.016 and "lr" not in row.edges
    # 1000x above: 9 trials cannot get there; the row says so and is inconclusive
    far = _drive(m, _bowl({"lion": 1.0}))
    (row,) = m.plan(far)
    assert row.trials_used == 9 and row.lr_on_edge and "lr" in row.edges and row.inconclusive


def test_local_search_treats_the_declared_bounds_as_bounds_not_edges():
    # beta2's lowest value (0.9) and no weight decay (scale 0) are bounds of the space:
    # optima beyond them end there, and the row is not inconclusive for it
    m = _ladder("lion")
    results = _drive(m, _bowl({"lion": 0.001}, beta2_best=0.5, scale_best=0.0))
    (row,) = m.plan(results)
    assert dict(row.chosen.params) == {"beta2": 0.9, "wd_scale": 0.0}
    assert row.edges == [] and not row.inconclusive and row.trials_used == 9
    # AdamW starts at 0.999, six steps above 0.9: walking there spends the trials before
    # the weight-decay scale is tried, which leaves that dimension on an edge
    m = _ladder("adamw")
    (row,) = m.plan(_drive(m, _bowl({"adamw": 0.003}, beta2_best=0.5, scale_best=0.0)))
    assert dict(row.chosen.params)["beta2"] == 0.9 and row.edges == ["wd_scale"]
    assert row.inconclusive


def test_local_search_with_nothing_ok_steps_down_the_lr():
    m = _ladder("lion")
    results = _drive(m, lambda run: None if run.lr > 1e-4 else 3.0)
    (row,) = m.plan(results)
    assert row.trials_used == 9 and row.chosen is not None and row.chosen.lr <= 1e-4


def test_old_presets_keep_the_coordinate_search():
    # cpu-2026-11-29 was planned with these: its report must read the same
    cpu = get_preset("cpu")
    m = Matrix(cpu, ["gpt2-pretrain"], parse_optimizers(ALL_MODES), (0, 1), (100,))
    for row in m.plan({}):
        assert not row.search.local and row.search.budget == 9
    assert not cpu.tuned and "gpt2-pretrain@64" not in cpu.workloads


def test_ladder_cost_model_is_the_committed_ladder_run_time():
    """The rungs' costs are scaled to what the cpu-ladder run measured: each rung's median
    CPU seconds per run in its results.csv, and so the whole plan's estimate is its 8.45 h
    of CPU time on 2 cores (the first cost model said 6 h for it)."""
    import pandas as pd

    from clion_hf.bench.specs import LADDER_MEASURED_CPU_S

    frame = pd.read_csv(REPO / "docs" / "benchmarks" / "ladder-cpu-2026-12-06" / "results.csv")
    preset = get_preset("cpu-ladder")
    for (base, width), seconds in LADDER_MEASURED_CPU_S.items():
        runs = frame[frame.workload == f"{base}@{width}"]
        assert len(runs) >= 100 and set(runs.max_steps) == {600}
        assert round(runs.cpu_s.median(), 1) == seconds, (base, width)
        cost = preset.workloads[f"{base}@{width}"].cost
        assert cost.run_s(600) == pytest.approx(seconds)
    m = Matrix(preset, list(preset.workloads), parse_optimizers(",".join(preset.optimizers)),
               preset.tuning_seeds, preset.final_seeds)  # fmt: skip
    measured = frame.cpu_s.sum() / preset.jobs
    assert m.estimated_seconds()[0] == pytest.approx(measured, rel=0.05)


def test_cpu_ladder_dry_run_estimate_fits_six_hours(capsys):
    preset = get_preset("cpu-ladder")
    m = Matrix(preset, list(preset.workloads), parse_optimizers(",".join(preset.optimizers)),
               preset.tuning_seeds, preset.final_seeds)  # fmt: skip
    lo, hi = m.estimated_seconds()
    assert lo == hi <= 6 * 3600
    # 10 paired final seeds on every primary comparison of every rung
    assert len(m.final_seeds) >= 10
    for w in preset.workloads:
        labels = {s.label for s in m.row_specs(w)}
        for a, b in preset.primary:
            a, b = (parse_optimizers(x)[0].label for x in (a, b))
            assert {a, b} <= labels, (w, a, b)
    # every mode on the smallest rung, the four of the primary comparisons above it
    assert len(m.row_specs("gpt2-pretrain@64")) == 6 and len(m.row_specs("vit-pretrain@256")) == 4
    assert cli.main(["run", "--preset", "cpu-ladder", "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"# estimated device time: 4 h \(cost model: ", out)
    assert f"# runs: {m.run_counts()[0]} (every row spends the same trials)" in out
    assert "out along lr, beta2, wd_scale, nu" in out


def test_probe_first_brackets_every_dimension_before_following_an_edge():
    """cpu-ladder's search followed edges in the order of its dimensions, so a far beta2
    optimum used the trials and left ν on an edge; cpu-ladder-v2 brackets every dimension
    (3 values each) first, and the same loss ends with no dimension on an edge."""
    far = _bowl({"element": 0.001}, beta2_best=0.9, nu_best=1e-5)
    old = _ladder("clion:mode=element")
    (row,) = old.plan(_drive(old, far))
    assert row.trials_used == 9 and "nu" in row.edges and row.inconclusive
    preset = get_preset("cpu-ladder-v2")
    new = Matrix(preset, ["gpt2-pretrain@64"], parse_optimizers("clion:mode=element"),
                 preset.tuning_seeds, preset.final_seeds)  # fmt: skip
    (row,) = new.plan(_drive(new, far))
    assert row.trials_used == row.search.budget == 12 and row.search.probe
    for name in ("beta2", "wd_scale", "nu"):
        assert len({dict(t.params)[name] for t in row.trials}) >= 3, name
    assert dict(row.chosen.params) == {"beta2": 0.9, "wd_scale": 0.25, "nu": 1e-5}
    assert row.chosen.lr == 0.001 and row.edges == [] and not row.inconclusive
    # the other rows spend the same 12
    both = Matrix(preset, ["gpt2-pretrain@64"], parse_optimizers("adamw,lion"),
                  preset.tuning_seeds, preset.final_seeds)  # fmt: skip
    for row in both.plan(_drive(both, _bowl({"adamw": 0.003, "lion": 0.001}))):
        assert row.trials_used == 12, row.optimizer


def test_cpu_ladder_v2_centres_each_lr_grid_where_the_first_run_tuned_it():
    """v2's first lr grids are centred on the lr each family chose in the committed
    cpu-ladder run, read back here from its results.csv; only the centres change."""
    import json

    from clion_hf.bench.report import analyze, rows_from_csv
    from clion_hf.bench.specs import LADDER_V1_LRS, lr_centre

    ladder = REPO / "docs" / "benchmarks" / "ladder-cpu-2026-12-06"
    an = analyze(rows_from_csv((ladder / "results.csv").read_text()),
                 json.loads((ladder / "bench.json").read_text()))  # fmt: skip
    v1, v2 = get_preset("cpu-ladder"), get_preset("cpu-ladder-v2")
    assert len(LADDER_V1_LRS) == len(an.workloads) == len(v2.workloads) == 6
    for wa in an.workloads:
        base, width = wa.name.split("@")
        chosen = tuple(wa.rows[o].chosen["lr"] for o in ("adamw", "lion", "clion"))
        assert LADDER_V1_LRS[(base, int(width))] == chosen, wa.name
        ws = v2.settings(wa.name, 600)
        for label, lr in zip(("adamw", "lion", "clion"), chosen, strict=True):
            spec = parse_optimizer(label)
            assert lr_centre(spec, ws) == lr and lr in v2.search(spec, ws).lrs
        for family in ("clion:mode=element", "clion:mode=tensor"):  # share Lion's / global's
            spec = parse_optimizer(family)
            assert lr_centre(spec, ws) == lr_centre(
                parse_optimizer("lion" if "element" in family else "clion"), ws)
        old = v1.settings(wa.name, 600)
        assert (ws.cost, ws.extra_args, ws.optimizers, ws.max_steps) == (
            old.cost, old.extra_args, old.optimizers, old.max_steps)


def test_each_results_row_records_the_beta2_and_nu_its_run_used():
    """The local search sets beta2 and ν per run, beside the spec; results.csv records what
    each run ran with (read back from its recipe flags), through a CSV round trip."""
    from dataclasses import asdict

    from clion_hf.bench.report import rows_csv, rows_from_csv, run_nu, summarize

    preset = get_preset("cpu-ladder-v2")
    m = Matrix(preset, ["gpt2-pretrain@64"], parse_optimizers("lion,clion:mode=element"),
               preset.tuning_seeds, preset.final_seeds)  # fmt: skip
    results = _drive(m, _bowl({"lion": 0.001, "element": 0.001}, beta2_best=0.9))
    runs = [r for p in m.plan(results) for t in p.trials for r in t.runs]
    runs += [r for p in m.plan(results) for r in p.finals]
    rows = [summarize({**results[r.run_id], **asdict(r), "recipe_args": list(r.recipe_args)})
            for r in runs]  # the fields the runner writes
    back = {row["run_id"]: row for row in rows_from_csv(rows_csv(rows))}
    seen = set()
    for run in runs:
        params, row = dict(run.params), back[run.run_id]
        assert row["beta2"] == params["beta2"], run.title
        if run.optimizer == "lion":
            assert row["nu"] is None and run_nu(row) is None
        else:
            assert row["nu"] == run_nu(row) == params["nu"], run.title
            seen.add(row["nu"])
    assert len(seen) >= 3  # the search moved ν, and each row says which
    # a results.csv written before these columns reads back with them blank
    old = rows_csv(rows).replace(",beta2,nu,", ",b,n,", 1)
    assert {r["beta2"] for r in rows_from_csv(old)} == {None}


@pytest.mark.parametrize("name", ["gpu", "gpu-ladder"])
def test_gpu_presets_follow_the_same_protocol(name, capsys):
    preset = PRESETS[name]
    v2 = PRESETS["cpu-ladder-v2"]
    assert (preset.tuned, preset.trials_per_row, preset.probe_first) == (
        v2.tuned, v2.trials_per_row, v2.probe_first) == (PRESETS["cpu-ladder"].tuned, 12, True)
    assert len(preset.final_seeds) >= 10 and len(preset.tuning_seeds) >= 2
    assert cli.main(["run", "--preset", name, "--dry_run"]) == 0
    assert "# estimated device time: " in capsys.readouterr().out


def test_rungs_select_their_model_presets():
    from clion_hf.workloads.models import LADDER_WIDTHS, ladder_config
    from clion_hf.workloads.models import PRESETS as MODELS

    assert len(BASE_WORKLOADS) == 6 and "gpt2-pretrain@256" in WORKLOADS
    assert rung_args("gpt2-pretrain@256") == ("--config_name", "gpt2-w256")
    assert rung_args("gpt2-pretrain") == ()
    for family, tiny in (("gpt2", "tiny-gpt2"), ("bert", "tiny-bert"), ("vit", "tiny-vit")):
        assert MODELS[f"{family}-w64"]().to_dict() == MODELS[tiny]().to_dict()
    assert ladder_config("gpt2", 256).n_embd == 256 and ladder_config("vit", 512).hidden_size == 512
    for w in WORKLOADS.values():
        if w.width:
            assert w.width in LADDER_WIDTHS and f"{w.family}-w{w.width}" in MODELS
    with pytest.raises(SpecError, match="unknown workload 'gpt2-pretrain@100'"):
        from clion_hf.bench.specs import parse_workloads

        parse_workloads("gpt2-pretrain@100")


def test_plateau_levels_of_a_known_text():
    # the predicted tokens alternate 1, 0, 1, 0: a unigram model's entropy is ln 2, and each
    # token determines the next, so the bigram entropy is 0
    blocks = [[0, 1, 0, 1, 0], [1, 0, 1]]
    assert unigram_nats(blocks, blocks, 2, alpha=0) == pytest.approx(math.log(2))
    assert bigram_nats(blocks, blocks, 2, alpha=0) == pytest.approx(0.0)
    # the first token of a block is never predicted, and pairs never cross blocks
    assert unigram_nats([[5, 0]], [[7, 0]], 8, alpha=0) == pytest.approx(0.0)
    # add-alpha smoothing: fitted on "0 -> 0" four times, scored on "0 -> 1" over 3 symbols
    assert unigram_nats([[0] * 5], [[0, 1]], 3, alpha=1) == pytest.approx(-math.log(1 / 7))
    assert bigram_nats([[0] * 5], [[0, 1]], 3, alpha=1) == pytest.approx(-math.log(1 / 7))
    assert chance_levels([0, 1, 1, 2]) == {"chance": pytest.approx(1 / 3), "majority": 0.5}


@pytest.mark.slow
def test_plateau_levels_of_the_offline_data(monkeypatch, tmp_path):
    """The levels the report draws, from the embedded data (a tokenizer is trained: slow).
    A broken import here once left them out of every ladder report, silently."""
    from clion_hf.bench.ladder import plateau_levels

    monkeypatch.setenv("CLION_HF_CACHE", str(tmp_path))
    gpt2 = plateau_levels("gpt2-pretrain")
    assert gpt2 == {"unigram": pytest.approx(5.3165, abs=1e-3),
                    "bigram": pytest.approx(3.7196, abs=1e-3)}  # fmt: skip
    vit = plateau_levels("vit-pretrain")
    assert set(vit) == {"chance", "majority"} and 0.19 < vit["chance"] <= vit["majority"] < 0.3


def _two_rungs(ref: dict[str, float], lion_noise: float = 0.0):
    """An analysis of AdamW and Lion on gpt2-pretrain@64 and @128, both tuned to their
    optimum, Lion ``ref[rung]`` nats worse (plus ``lion_noise`` · a per-seed pattern)."""
    from clion_hf.bench.report import analyze, summarize

    m = Matrix(get_preset("cpu-ladder"), ["gpt2-pretrain@64", "gpt2-pretrain@128"],
               parse_optimizers("adamw,lion"), (0, 1), tuple(range(100, 104)))  # fmt: skip

    def loss(run: RunConfig) -> float:
        ws = m.preset.settings(run.workload)  # the optimum at each rung's grid centre
        base = _bowl({"adamw": ws.adamw_lr, "lion": ws.lion_lr})(run)
        return base + (ref[run.workload] if run.optimizer == "lion" else 0.0)

    results = _drive(m, loss)
    rows = []
    for r in results.values():
        run = next(x for p in m.plan(results) for x in [*(y for t in p.trials for y in t.runs),
                                                          *p.finals] if x.run_id == r["run_id"])
        ev = r["all_results"]["eval_loss"] + (0.001 * run.seed if run.phase == "final" else 0)
        if run.phase == "final" and run.optimizer == "lion":
            ev += lion_noise * {100: 1, 101: -1, 102: 2, 103: -2}[run.seed]  # mean 0
        res = {**r, "optimizer": run.optimizer, "phase": run.phase, "stage": run.stage,
               "seed": run.seed, "lr": run.lr, "weight_decay": run.weight_decay,
               "max_steps": run.max_steps,
               "all_results": {"eval_loss": ev, "perplexity": math.exp(ev), "test_loss": ev,
                               "test_perplexity": math.exp(ev)}}  # fmt: skip
        rows.append(summarize(res))
    return analyze(rows, m.describe())


def test_plateau_exits_name_the_seeds_that_leave_late_or_never():
    from clion_hf.bench.ladder import exits_markdown, plateau_exits

    an = _two_rungs({"gpt2-pretrain@64": 0.5, "gpt2-pretrain@128": 0.1})
    levels = {"gpt2-pretrain": {"unigram": 5.0, "bigram": 3.7}}  # 5% below: 4.75 nats
    curves = {}
    for wa in an.workloads:
        for opt, row in wa.rows.items():
            for i, r in enumerate(row.finals):  # leaves at step 60 (i + 1); Lion's first: never
                leaves = None if opt == "lion" and i == 0 else 60 * (i + 1)
                curves[r["run_id"]] = [(s, 4.7 if leaves and s >= leaves else 4.8)
                                       for s in range(60, 601, 60)]  # fmt: skip
    exits = plateau_exits(an, curves, levels)
    assert {(e["optimizer"], e["width"]) for e in exits} == {
        (o, w) for o in ("adamw", "lion") for w in (64, 128)}
    lion = next(e for e in exits if e["optimizer"] == "lion" and e["width"] == 64)
    assert lion["steps"] == [None, 120, 180, 240] and lion["target"] == pytest.approx(4.75)
    text = "\n".join(exits_markdown(exits, "gpt2-pretrain"))
    assert "| adamw | 150 [60, 240] | 150 [60, 240] |" in text
    assert "| lion | 180 [120, 240]; 1 of 4 never | 180 [120, 240]; 1 of 4 never |" in text
    assert "(4.750 nats)" in text and exits_markdown(exits, "vit-pretrain") == []
    # no unigram level (a classifier, or the data could not be built): no table
    assert plateau_exits(an, curves, {}) == []


def test_ladder_points_are_ratios_to_adamw_per_width():
    ref = {"gpt2-pretrain@64": 0.5, "gpt2-pretrain@128": 0.1}  # Lion's extra nats per width
    points = ladder_points(_two_rungs(ref))
    assert [(p["width"], p["optimizer"]) for p in points] == [(64, "lion"), (128, "lion")]
    for p in points:
        assert p["value"] == pytest.approx(math.exp(ref[f"gpt2-pretrain@{p['width']}"]))
        assert p["n"] == 4
    # the report's section: one row per optimizer, one column per width, the levels
    text = "\n".join(ladder_markdown(points, {"gpt2-pretrain": {"unigram": 5.3, "bigram": 3.7}},
                                     {}))  # fmt: skip
    assert "| optimizer vs AdamW | width 64 | width 128 |" in text
    assert re.search(r"\| lion \| 1\.649 \[1\.649, 1\.649\] \(n=4\) \| 1\.105 ", text)
    assert "unigram 5.3, bigram 3.7" in text
    assert "gpt2-pretrain,,,plateau,,unigram,5.3" in ladder_csv(points, {"gpt2-pretrain":
                                                                        {"unigram": 5.3}})


@pytest.mark.parametrize(("extra", "word"), [
    ((0.5, 0.1), "moves toward parity"),
    ((0.1, 0.5), "moves away from parity"),
    ((0.3, 0.3), "no change with width detected"),
])  # fmt: skip
def test_the_change_with_width_is_tested_with_the_rest(extra, word):
    """Each declared comparison's change from the smallest to the largest width: Welch's t
    (SciPy's), in the same Holm family as the paired tests, worded toward/away/none."""
    from scipy import stats as st

    from clion_hf.bench.report import findings
    from clion_hf.bench.stats import holm, paired_t_p

    ref = {"gpt2-pretrain@64": extra[0], "gpt2-pretrain@128": extra[1]}
    an = _two_rungs(ref, lion_noise=0.01)
    [tr] = an.trends
    assert (tr.base, tr.a, tr.b, tr.small_width, tr.large_width) == (
        "gpt2-pretrain", "lion", "adamw", 64, 128)
    assert tr.delta == pytest.approx(extra[1] - extra[0], abs=1e-9)
    assert tr.p == pytest.approx(st.ttest_ind(tr.large, tr.small, equal_var=False).pvalue)
    tests = [t for wa in an.workloads for t in wa.tests]
    assert len(tests) == 2  # lion vs adamw at each width; Holm over those and the trend
    rejected, levels = holm([paired_t_p(t.diffs) for t in tests] + [tr.p])
    assert tr.level == levels[-1] and [t.level for t in tests] == levels[:2]
    [line] = [x for x in findings(an) if "against width" in x]
    assert word in line, line
    assert "from width 64 to 128 the ratio changes by" in line
    assert f"×{math.exp(extra[0]):.3f}" in line  # the ratio at width 64, as measured


def test_gen_gap_study_uses_the_local_search_choice():
    """A study tuned on a ladder run uses its tuned beta2, weight-decay scale and ν."""
    from clion_hf.bench.study import tuned_row

    m = _ladder("lion,clion:mode=element")
    results = _drive(m, _bowl({"lion": 0.001, "element": 0.001}))
    for label, extra in (("lion", ""), ("clion:mode=element", ",nu=1e-5")):
        spec = parse_optimizers(label)[0]
        row = m.plan_row("gpt2-pretrain@64", spec, results)
        study = tuned_row(spec, "gpt2-pretrain@64", (m, results), m.preset, 600, "tuned")
        assert study.lr == row.chosen.lr == 0.001
        assert study.weight_decay == row.finals[0].weight_decay  # wd scale 0.25, not 1
        assert study.spec.get("beta2") == 0.98, label
        if extra:
            assert study.spec.get("nu") == 1e-5
