"""``clion-bench study stability``: the neighbouring-set design, the lockstep pair, a tiny
study end to end in-process (run, resume, report, findings recomputed from its CSV), the
growth fits, errors, and that the committed report says what its CSV gives. Fast except the
end-to-end study (marked slow)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _paths import REPO

from clion_hf._files import read_json
from clion_hf.bench import render
from clion_hf.bench.cli import main
from clion_hf.bench.neighbours import NU_BELOW_TAU, Arm, draw_pair, sample_order
from clion_hf.bench.specs import SpecError
from clion_hf.bench.stability import (
    PAIR_SEED_BASE,
    StabilityPreset,
    StabilityStudy,
    StabRun,
    build_stability,
    digits_split,
    execute_run,
    log_steps,
    make_runner,
    stability_result_problem,
)
from clion_hf.bench.stability_report import (
    CSV_COLUMNS,
    MIN_PAIRS_VERDICT,
    _fit,
    _parse,
    analyze,
    ctext,
    findings_block,
    findings_from_csv,
    write_stability_report,
)

COMMITTED = REPO / "docs" / "benchmarks" / "stability-2026-12-06"
COMMITTED_VIT = REPO / "docs" / "benchmarks" / "stability-vit-2026-12-06"

TINY = StabilityPreset(
    name="tiny", description="test", n_main=32, t_max=24, t_fixed=12, sizes=(16, 32),
    pairs=MIN_PAIRS_VERDICT, batch=8, log_points=6, nus=(1e-7, 1e-2),
    arms=(  # the convex preset's arms with two-point grids (same kinds of lr sources)
        Arm("adamw", "adamw", grid=(3e-3, 3e-2)),
        Arm("sgd:momentum=0.9", "sgd", (("momentum", 0.9),), grid=(3e-2, 3e-1)),
        Arm("lion", "lion", scale_of="adamw", scales=(1 / 3, 1 / 10)),
        Arm("clion", "clion", (("mode", "global"), ("nu", 1e-4)), grid=(0.3, 3.0)),
        Arm(f"clion:nu={NU_BELOW_TAU:g}", "clion", (("mode", "global"), ("nu", NU_BELOW_TAU)),
            lr_of="lion"),
        *(Arm(f"clion:mode=element,nu={nu:g}", "clion", (("mode", "element"), ("nu", nu)),
              lr_of="lion") for nu in (1e-7, 1e-2)),
    ),
)  # fmt: skip


def _pair(arm: Arm, lr: float, n: int = 32, steps: int = 24, seed: int = PAIR_SEED_BASE,
          batch: int = 8) -> StabRun:  # fmt: skip
    return StabRun("pair", arm.label, lr, n, steps, seed, "T", "tiny", batch, 500, 300, 0.01,
                   tuple(log_steps(steps, 24)))  # fmt: skip


# ------------------------------------------------------------------------------ the design


def test_neighbouring_sets_differ_in_exactly_one_example():
    pool = len(digits_split(500, 300)["pool"][1])
    for seed in range(20):
        d = draw_pair(seed, 64, pool)
        assert len(set(d.indices.tolist())) == 64
        assert d.replacement not in set(d.indices.tolist())
        s2 = d.indices.copy()
        s2[d.pos] = d.replacement
        assert int((s2 != d.indices).sum()) == 1
    with pytest.raises(SpecError, match="below the training pool"):
        draw_pair(0, pool, pool)


def test_lockstep_drift_is_zero_until_the_replaced_example_is_drawn():
    """Same init and order: the runs agree exactly until the replaced position enters a
    batch, and differ from that step on (SGD: any difference in the gradient moves θ)."""
    arm = Arm("sgd", "sgd", (("momentum", 0.9),))
    run = _pair(arm, 0.1)
    order = sample_order(run.seed, run.n, run.steps, run.batch)
    pos = draw_pair(run.seed, run.n, len(digits_split(500, 300)["pool"][1])).pos
    first = 1 + next(t for t in range(run.steps) if pos in order[t])
    res = execute_run(run, arm)
    assert res["status"] == "ok" and res["replaced_position"] == pos
    for h in res["history"]:
        if h["step"] < first:
            assert h["drift"] == 0.0 and h["loss_diff"] == 0.0
        else:
            assert h["drift"] > 0.0


def test_global_control_below_tau_is_lion_and_global_at_large_nu_never_signs():
    lion = Arm("lion", "lion")
    control = Arm("c", "clion", (("mode", "global"), ("nu", NU_BELOW_TAU)))
    a, b = execute_run(_pair(lion, 0.01), lion), execute_run(_pair(control, 0.01), control)
    assert [h["drift"] for h in a["history"]] == [h["drift"] for h in b["history"]]
    assert all(h["sign_fraction"] == 1.0 for h in b["history"])
    glob = Arm("g", "clion", (("mode", "global"), ("nu", 1e-4)))
    g = execute_run(_pair(glob, 0.3), glob)
    assert all(h["sign_fraction"] == 0.0 for h in g["history"])
    assert all(h["tau"] < 1e-4 for h in g["history"])  # why: τ_t is below ν at every step


def test_growth_fit_recovers_power_law_and_exponential():
    t = np.array([10, 20, 50, 100, 200, 500, 1000], dtype=float)
    assert _fit(list(np.log(t)), list(np.log(3 * t**0.7))) == pytest.approx(0.7)
    assert _fit(list(t / 1000), list(np.log(2 * np.exp(1.5 * t / 1000)))) == pytest.approx(1.5)
    assert _fit([1.0, 2.0], [1.0, 2.0]) is None  # fewer than 3 points: no fit


# ------------------------------------------------------------------------------ the study


@pytest.mark.slow  # ~20 s on a loaded 2-core machine: 92 runs, then the report
def test_tiny_study_end_to_end_in_process(tmp_path):
    study = StabilityStudy(TINY, TINY.pairs)
    out = tmp_path / "stab"
    counts = make_runner(study, out, progress=False).run()
    total, _ = study.run_counts()
    assert counts["ok"] == total and counts["failed"] == 0
    # resumption: a second call finds every run done
    again = make_runner(study, out, progress=False)
    assert again.run()["skipped"] == total and again.launched == 0
    paths = write_stability_report(out, plots=False)
    report = paths["report"].read_text()
    csv_text = paths["csv"].read_text()
    meta = read_json(out / "bench.json")
    assert findings_from_csv(csv_text, meta) == findings_block(report)
    an = analyze(_parse(csv_text), meta)
    # every arm has its pairs, the tuned lrs are the validation minima of the CSV's tune rows
    assert all(len(a.end) == TINY.pairs for a in an.arms.values())
    for label, tried in an.tuning.items():
        best = min((v, lr) for lr, v, st in tried if st == "ok")[1]
        assert an.chosen[label] == best
    assert sorted(lr for lr, _, _ in an.tuning["lion"]) == pytest.approx(
        sorted(an.chosen["adamw"] * s for s in (1 / 3, 1 / 10)))  # AdamW/3, /10
    assert an.chosen["clion:mode=element,nu=1e-07"] == an.chosen["lion"]
    # verdicts agree with their intervals, and "no difference detected" is said exactly
    # when the interval contains 0
    for comps in an.vs_lion.values():
        for c in comps:
            assert c.detected == (c.lo > 0 or c.hi < 0)
    lines = findings_block(report)
    text = next(ln for ln in lines if ln.startswith("- Lion minus each arm, exponent"))
    for c in an.vs_lion["exponent"]:
        assert f"{c.b}: {ctext(c)}" in text
        assert ("no difference detected" in ctext(c)) == (c.lo <= 0 <= c.hi)
    # the control is Lion: same drift on every pair
    control = an.arms[f"clion:nu={NU_BELOW_TAU:g}"]
    assert all(control.end[s]["drift"] == an.arms["lion"].end[s]["drift"] for s in control.end)


def test_csv_round_trips_the_numbers(tmp_path):
    arm = Arm("lion", "lion")
    res = execute_run(_pair(arm, 0.01), arm)
    from clion_hf.bench.stability_report import csv_text_of

    rows = _parse(csv_text_of([res]))
    # 7 significant digits (fp32 runs)
    assert [r["drift"] for r in rows] == pytest.approx([h["drift"] for h in res["history"]],
                                                       rel=1e-6)  # fmt: skip
    assert [r["tau"] for r in rows] == pytest.approx([h["tau"] for h in res["history"]], rel=1e-6)
    assert set(rows[0]) == set(CSV_COLUMNS)


def test_bad_input_is_one_line(capsys):
    with pytest.raises(SpecError, match="unknown stability preset 'nope'; allowed: convex"):
        build_stability("nope")
    with pytest.raises(SystemExit) as err:
        main(["study", "stability", "--preset", "nope", "--dry_run"])
    assert err.value.code == 2
    assert "unknown stability preset 'nope'" in capsys.readouterr().err
    assert main(["study", "stability", "--preset", "convex", "--dry_run"]) == 0
    assert "241 runs" in capsys.readouterr().out


# ------------------------------------------------------------------------------ committed


@pytest.mark.parametrize(("study", "marker"), [
    (COMMITTED, "stability-findings"),  # the convex regime
    (COMMITTED_VIT, "stability-vit-findings"),  # the tiny ViT
])  # fmt: skip
def test_committed_report_findings_follow_from_its_csv(study, marker):
    """A committed study's Findings are what its results.csv gives, and README's copy of
    them (between its markers) is the report's, line for line."""
    meta = read_json(study / "bench.json")
    csv_text = (study / "results.csv").read_text()
    report = (study / "report.md").read_text()
    assert findings_from_csv(csv_text, meta) == findings_block(report)
    readme = (REPO / "README.md").read_text()
    quoted = render.findings_block(readme, f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->")
    assert quoted == findings_block(report)


def test_pair_counts_meet_the_issue_floor():
    assert build_stability("convex").pairs >= 10
    assert math.isclose(NU_BELOW_TAU, float(torch.tensor(NU_BELOW_TAU)), rel_tol=0.5)


@pytest.mark.parametrize("study", [COMMITTED, COMMITTED_VIT], ids=["convex", "vit"])
def test_committed_plots_follow_the_plot_rules(tmp_path, study):
    """The reports' colour per optimizer, y-labels, readable legends, ν drawn where τ_t is,
    sign-branch fraction on [0, 1] (README's plot rules), on each committed study's data."""
    from matplotlib.colors import to_hex

    from clion_hf.bench.plotstyle import colour
    from clion_hf.bench.stability_report import _parse, analyze, make_plots

    an = analyze(_parse((study / "results.csv").read_text()),
                 json.loads((study / "bench.json").read_text()))  # fmt: skip
    figures: dict = {}
    plots, errors = make_plots(an, tmp_path, figures)
    assert not errors and set(figures) == {"drift-vs-t", "drift-vs-nu", "drift-vs-n"}
    expected = {"adamw": colour("adamw"), "lion": colour("lion"),
                "clion global ν=1e-4 (identity branch)": colour("clion")}  # fmt: skip
    seen = set()
    for name, fig in figures.items():
        for ax in fig.axes:
            assert ax.get_ylabel(), name
            for line in ax.get_lines():
                label = line.get_label()
                if label in expected:
                    seen.add(label)
                    assert to_hex(line.get_color()) == expected[label], (name, label)
            if "sign-branch" in ax.get_ylabel():
                assert ax.get_ylim() == (0, 1)
            legend = ax.get_legend()
            if legend is not None:
                assert min(t.get_fontsize() for t in legend.get_texts()) >= 8, name
    assert seen == set(expected)
    tau = next(ax for ax in figures["drift-vs-t"].axes if "τ_t" in ax.get_ylabel())
    flat = [ln.get_ydata()[0] for ln in tau.get_lines() if len(set(ln.get_ydata())) == 1]
    assert 1e-4 in flat and 1e-7 in flat  # global's ν and the smallest element ν


@pytest.mark.parametrize("bench", [{"search": {}}, {"study": "gen-gap"}, {"study": "stability"}])
def test_report_only_on_a_foreign_or_broken_directory_is_one_line(tmp_path, capsys, bench):
    """A run's or a gen-gap study's directory is refused by name; a stability bench.json
    that the report cannot read is one line too (it was a ReportError traceback)."""
    from clion_hf.bench.cli import main

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "x.json").write_text("{}")
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    with pytest.raises(SystemExit) as exc:
        main(["study", "stability", "--report_only", "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err


def test_a_hand_edited_result_is_listed_and_redone(tmp_path):
    """A result file with a wrong-typed field neither crashes the report nor blocks resume:
    it is listed in the report and its run is done again."""
    from clion_hf.bench.stability import stability_result_problem

    study = StabilityStudy(TINY, 2)
    out = tmp_path / "stab"
    counts = make_runner(study, out, progress=False).run()
    assert counts["failed"] == 0
    victim = sorted((out / "results").glob("*.json"))[0]
    data = json.loads(victim.read_text())
    data["history"] = {"step": "abc"}
    victim.write_text(json.dumps(data))
    assert "history" in stability_result_problem(data)
    report = write_stability_report(out, plots=False)["report"].read_text()
    assert victim.name in report
    again = make_runner(study, out, progress=False)
    again.run()
    assert again.launched == 1
    assert stability_result_problem(json.loads(victim.read_text())) is None


# ------------------------------------------------------------------------------ model regime
# The tiny GPT-2 and ViT of the recipes (drift_models.py), at width 16 and a few steps.

SGD = Arm("sgd", "sgd", (("momentum", 0.9),))
LION = Arm("lion", "lion")
MODEL_WORKLOADS = ["gpt2-w16", "vit-w16"]


def _model_pair(workload: str, arm: Arm, lr: float, seed: int = PAIR_SEED_BASE,
                steps: int = 8) -> StabRun:  # fmt: skip
    return StabRun("pair", arm.label, lr, 16, steps, seed, "T", "tiny", 4, 8, 8, 0.02,
                   tuple(range(1, steps + 1)), workload)  # fmt: skip


def _late_seed(workload: str) -> tuple[int, int]:
    """A pair seed whose replaced position first enters a batch after step 1 (so that the
    test sees steps before and after it), and that step."""
    from clion_hf.bench.drift_models import model_data, parse_workload

    pool = len(model_data(parse_workload(workload)[0], 8, 8)["pool"][1])
    for seed in range(PAIR_SEED_BASE, PAIR_SEED_BASE + 50):
        pos = draw_pair(seed, 16, pool).pos
        order = sample_order(seed, 16, 8, 4)
        first = 1 + next(t for t in range(8) if pos in order[t])
        if 3 <= first <= 6:
            return seed, first
    raise AssertionError("no seed found")


@pytest.mark.parametrize("workload", MODEL_WORKLOADS)
def test_model_pair_sets_differ_in_one_example_and_start_from_one_init(workload):
    from clion_hf.bench.drift_models import build_model, model_data, pair_indices, parse_workload

    family, width = parse_workload(workload)
    data = model_data(family, 8, 8)
    x = data["pool"][0]
    run = _model_pair(workload, SGD, 0.05)
    draw, (s, s2) = pair_indices(run, len(x))
    assert int((s != s2).sum()) == 1 and s2[draw.pos] == draw.replacement
    assert draw.replacement not in set(s.tolist())
    # the examples themselves (blocks / images) differ at the replaced position only
    differ = [i for i in range(run.n) if not torch.equal(x[s[i]], x[s2[i]])]
    assert differ == [draw.pos]
    a, b = (build_model(family, width, run.seed, 0.02, data) for _ in range(2))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))  # fmt: skip
    c = build_model(family, width, run.seed + 1, 0.02, data)
    assert not all(torch.equal(p, q)
                   for p, q in zip(a.state_dict().values(), c.state_dict().values(), strict=True))
    # dropout off: the replaced example is the runs' only difference
    drop = [m.p for m in a.modules() if isinstance(m, torch.nn.Dropout)]
    assert all(p == 0.0 for p in drop)
    assert all(getattr(a.config, k, 0.0) == 0.0 for k in ("resid_pdrop", "embd_pdrop",
               "attn_pdrop", "hidden_dropout_prob", "attention_probs_dropout_prob"))  # fmt: skip


@pytest.mark.parametrize("workload", MODEL_WORKLOADS)
def test_model_lockstep_drift_is_zero_until_the_replaced_example_is_drawn(workload):
    """Same init and same order: the two models agree bit for bit until the replaced
    position enters a batch, and differ from that step on."""
    seed, first = _late_seed(workload)
    res = execute_run(_model_pair(workload, SGD, 0.05, seed), SGD)
    assert res["status"] == "ok" and stability_result_problem(res) is None
    for h in res["history"]:
        if h["step"] < first:
            assert h["drift"] == 0.0 and h["loss_diff"] == 0.0 and h["any_diff"] == 0.0
        else:
            assert h["drift"] > 0.0


@pytest.mark.parametrize(("workload", "arm"), [
    ("gpt2-w16", LION), ("vit-w16", LION), ("vit-w16", Arm("adamw", "adamw")),
    ("gpt2-w16", Arm("e", "clion", (("mode", "element"), ("nu", 1e-5))))],
    ids=["gpt2-lion", "vit-lion", "vit-adamw", "gpt2-element"])  # fmt: skip
def test_model_pair_with_the_original_example_never_drifts(workload, arm):
    """S' = S (the replaced example put back): the lockstep pair gives a drift of exactly 0
    at every step, every coordinate's update agrees; with the drawn stand-in it drifts."""
    from clion_hf.bench.drift_models import execute_model_run, model_data, pair_indices

    seed, _ = _late_seed(workload)
    run = _model_pair(workload, arm, 1e-3, seed)
    pool = len(model_data(workload.split("-")[0], 8, 8)["pool"][1])
    draw, (s, _) = pair_indices(run, pool)
    same = execute_model_run(run, arm, replacement=int(s[draw.pos]))
    assert same["replacement"] == int(s[draw.pos])
    assert [h["drift"] for h in same["history"]] == [0.0] * run.steps
    assert all(h["any_diff"] == 0.0 and h["loss_diff"] == 0.0 for h in same["history"])
    moved = execute_model_run(run, arm)
    assert moved["history"][-1]["drift"] > 0.0


def test_model_records_are_the_convex_records():
    """The model regime logs what the convex regime logs (the report reads both alike)."""
    convex = execute_run(_pair(LION, 0.01, steps=4), LION)
    model = execute_run(_model_pair("vit-w16", LION, 1e-3, steps=4), LION)
    assert stability_result_problem(model) is None
    assert set(model["history"][-1]) == set(convex["history"][-1])
    assert model["workload"] == "vit-w16" and model["parameters"] > 0
    assert model["history"][-1]["tau"] > 0  # Lion's τ_t (track_stats)
    assert 0.0 <= model["history"][-1]["any_diff"] <= 1.0


def test_model_presets_meet_the_floor_and_estimate_their_time(capsys):
    from clion_hf.bench.drift_models import parse_workload

    for name in ("gpt2", "vit"):
        study = build_stability(name)
        assert study.pairs >= 10 and study.workloads == [study.study.workload]
        labels = [a.label for a in study.study.arms]
        assert labels[:4] == ["adamw", "sgd:momentum=0.9", "lion", "clion"]
        assert labels[4] == f"clion:nu={NU_BELOW_TAU:g}"
        assert [a.get("nu") for a in study.study.arms[5:]] == [1e-7, 1e-6, 1e-5, 1e-4, 1e-3]
        assert all(a.grid for a in study.study.arms[:4])  # every tuned arm: its own grid
        assert main(["study", "stability", "--preset", name, "--dry_run"]) == 0
        out = capsys.readouterr().out
        assert "estimated" in out and "h of CPU time" in out
    with pytest.raises(SpecError, match="unknown stability workload 'gpt3-w64'"):
        parse_workload("gpt3-w64")


def test_committed_convex_report_regenerates_unchanged():
    """The model regime left the convex report as it was: report.md regenerated from the
    committed CSV is the committed one (plots named, not drawn)."""
    from clion_hf.bench.stability_report import report_markdown

    meta = read_json(COMMITTED / "bench.json")
    an = analyze(_parse((COMMITTED / "results.csv").read_text()), meta)
    plots = {n: f"plots/{n}.png" for n in ("drift-vs-t", "drift-vs-nu", "drift-vs-n")}
    assert "\n".join(report_markdown(an, plots, [])) == (COMMITTED / "report.md").read_text()


@pytest.mark.slow  # ~60 s on a loaded 2-core host: 24 runs of a width-16 GPT-2, report, plots
def test_model_smoke_study_end_to_end(tmp_path):
    out = tmp_path / "gpt2-smoke"
    assert main(["study", "stability", "--preset", "gpt2-smoke", "--out", str(out),
                 "--no_progress"]) == 0  # fmt: skip
    results = [read_json(p) for p in (out / "results").glob("*.json")]
    total, _ = build_stability("gpt2-smoke").run_counts()
    assert len(results) == total and all(r["status"] == "ok" for r in results)
    meta = read_json(out / "bench.json")
    assert meta["workload"] == "gpt2-w16"
    report = (out / "report.md").read_text()
    lines = findings_block(report)
    assert findings_from_csv((out / "results.csv").read_text(), meta) == lines
    assert lines[0].startswith("- Model regime (tiny GPT-2 (width 16")
    assert {p.name for p in (out / "plots").glob("*.png")} == {
        "drift-vs-t.png", "drift-vs-nu.png", "drift-vs-n.png"}
    assert "## Problems" not in report
