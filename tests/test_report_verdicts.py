"""The report's verdicts: valid tests at few seeds,
Holm over the whole report, equivalence only after TOST, edge rows inconclusive, a smoke
report that says what to run next, and plots that follow the plot rules."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from _paths import REPO
from scipy import stats as st
from test_bench import write_synthetic

from clion_hf.bench.plotstyle import colour
from clion_hf.bench.protocol import Matrix
from clion_hf.bench.report import (
    CSV_COLUMNS,
    analyze,
    describe_optimizer,
    findings,
    findings_block,
    findings_from_csv,
    load_results,
    make_plots,
    rows_from_csv,
    summary_rows,
    verdict,
    write_report,
)
from clion_hf.bench.runner import find_recipes_dir
from clion_hf.bench.specs import BASE_WORKLOADS, PRIMARY, WORKLOADS, get_preset, parse_optimizers
from clion_hf.bench.stats import (
    PairedTest,
    holm,
    holm_tests,
    paired_t_p,
    tost_p,
)

COMMITTED = REPO / "docs" / "benchmarks" / "cpu-2026-11-29"

# ------------------------------------------------------------------------------ statistics


def test_paired_t_is_scipys_and_never_zero_at_five_seeds():
    a = np.array([3.10, 3.21, 3.05, 3.17, 3.12])
    b = a - np.array([0.02, 0.05, 0.01, 0.04, 0.03])  # five differences of one sign
    diffs = list(a - b)
    # the old test: a percentile bootstrap excludes 0 at every level (p = 0), which no
    # exact test allows
    boot = st.bootstrap((diffs,), np.mean, method="percentile", confidence_level=0.9999,
                        random_state=0).confidence_interval  # fmt: skip
    assert boot.low > 0
    p = paired_t_p(diffs)
    assert p == pytest.approx(st.ttest_rel(a, b).pvalue, rel=1e-12) and p > 0


def test_tost_is_two_one_sided_t_tests():
    rng = np.random.default_rng(3)
    for shift, sd in ((0.0, 0.003), (0.015, 0.003), (0.0, 0.05), (0.03, 0.003)):
        d = list(rng.normal(shift, sd, size=6))
        ref = max(st.ttest_1samp(d, -0.02, alternative="greater").pvalue,
                  st.ttest_1samp(d, 0.02, alternative="less").pvalue)  # fmt: skip
        assert tost_p(d, 0.02) == pytest.approx(ref, rel=1e-9)
    tight, wide, off = (PairedTest(n, "ref", d, 0.02) for n, d in (
        ("tight", [0.001, -0.002, 0.0, 0.001, 0.0]),
        ("wide", [0.05, -0.06, 0.01, 0.04, -0.03]),
        ("off", [0.05, 0.051, 0.049, 0.05, 0.052])))  # fmt: skip
    holm_tests([tight, wide, off])
    assert tight.equivalent and not tight.different
    assert not wide.equivalent and not wide.different
    assert off.different and not off.equivalent and off.lo > 0


def _rows(values: dict[str, dict[str, list[float]]]) -> list[dict]:
    """Final-seed summary rows: ``values[workload][optimizer]`` = comparison values by seed."""
    rows = []
    for w, per in values.items():
        lm = WORKLOADS[w].metric == "perplexity"
        for opt, vals in per.items():
            for seed, v in enumerate(vals, start=100):
                row = dict.fromkeys(CSV_COLUMNS)
                row.update(run_id=f"{w}-{opt}-{seed}", workload=w, optimizer=opt,
                           phase="final", stage="final", second="", seed=seed,
                           max_steps=100, status="ok", reason="", metric=WORKLOADS[w].metric,
                           lr=1e-3, weight_decay=0.0,
                           test_loss=v if lm else None, test_metric=math.exp(v) if lm else v,
                           final_metric=math.exp(v) if lm else v)  # fmt: skip
                rows.append(row)
    return rows


# lion's test loss is higher than adamw's on every seed: p about 0.008 on its own
BASE = [3.00, 3.10, 2.95, 3.05, 3.02]
LION = [3.013, 3.126, 2.958, 3.072, 3.032]
NOISE = [0.003, -0.004, 0.002, -0.001, 0.0]


def _workload(noise_scale: float = 1.0) -> dict[str, list[float]]:
    clion = [b + 0.3 * n * noise_scale + 0.001 for b, n in zip(BASE, NOISE, strict=True)]
    element = [x + n * noise_scale for x, n in zip(LION, NOISE, strict=True)]
    return {"adamw": BASE, "lion": LION, "clion": clion, "clion:mode=element": element}


def test_holm_runs_over_every_comparison_of_the_report():
    p = paired_t_p([x - y for x, y in zip(LION, BASE, strict=True)])
    assert 0.05 / 18 < p < 0.05 / 3  # detected alone, not among 18 tests
    one = analyze(_rows({"gpt2-pretrain": _workload()}), None)
    wa = one.workloads[0]
    assert [(t.a, t.b) for t in wa.tests] == [(a, b) for a, b in PRIMARY]
    assert verdict(wa, wa.tests[0]) == "worse"
    six = analyze(_rows({w: _workload() for w in BASE_WORKLOADS}), None)
    assert sum(len(x.tests) for x in six.workloads) == 18
    for wa in six.workloads:
        assert verdict(wa, wa.tests[0]) == "no difference detected", wa.name
        assert "**no difference detected**" in "\n".join(findings(six))
    # the other pairs are estimates without a verdict
    assert ("clion:mode=element", "adamw") in {(t.a, t.b) for t in six.workloads[0].estimates}


def test_the_same_only_after_an_equivalence_test_and_one_seed_compares_nothing():
    an = analyze(_rows({"gpt2-pretrain": _workload(0.1)}), None)
    wa = an.workloads[0]
    element = next(t for t in wa.tests if t.a == "clion:mode=element")
    assert verdict(wa, element) == "the same" and element.p_equiv < 0.05
    text = "\n".join(findings(an))
    assert "clion element vs lion: **the same** within the declared margin" in text
    single = analyze(_rows({"gpt2-pretrain": {k: v[:1] for k, v in _workload().items()}}), None)
    line = "\n".join(findings(single))
    assert "one seed: a check, not a comparison" in line and "not compared (1 paired seed" in line
    assert " is better**" not in line and " is worse**" not in line and "the same" not in line


def test_where_a_pair_differs_beyond_the_declared_margin():
    """"Beyond the margin" only when the whole Holm-level interval lies outside ±margin; a
    detected difference whose interval reaches into the margin is said to be less sure."""
    from clion_hf.bench.report import against_margin, margin_sentences

    def shifted(shift: float) -> list[float]:
        return [b + shift + 0.1 * n for b, n in zip(BASE, NOISE, strict=True)]

    an = analyze(_rows({"gpt2-pretrain": {"adamw": BASE, "lion": shifted(0.1)},
                        "gpt2-finetune": {"adamw": BASE, "lion": shifted(0.015)},
                        "bert-finetune": {"adamw": BASE, "lion": shifted(0.0)}}),
                 None)  # fmt: skip
    got = {}
    for wa in an.workloads:
        t = next(t for t in wa.tests if (t.a, t.b) == ("lion", "adamw"))
        got[wa.name] = against_margin(wa, t)
        assert t.different == (wa.name != "bert-finetune")
    assert got == {"gpt2-pretrain": "beyond the margin",
                   "gpt2-finetune": "detected, not shown beyond the margin",
                   "bert-finetune": "the same"}  # fmt: skip
    line = next(x for x in margin_sentences(an) if x.startswith("lion vs adamw"))
    assert "beyond the margin on gpt2-pretrain (worse, ×1.105 [" in line
    assert "a difference detected but not shown beyond the margin on gpt2-finetune" in line
    assert "the same on bert-finetune" in line and "×0.980 to ×1.020 in test perplexity" in line
    assert f"- {line}" in findings(an)


def test_a_row_on_a_grid_edge_is_inconclusive_never_worse(tmp_path):
    m = Matrix(get_preset("cpu"), ["gpt2-pretrain"], parse_optimizers("adamw,lion"),
               (0, 1), (100, 101, 102, 103, 104), 40)  # fmt: skip

    def loss(run):  # lion keeps improving with lr: its optimum leaves every extension
        scale = run.second[1] if run.second else 1.0
        if run.optimizer == "lion":
            return 3 - 0.1 * math.log2(run.lr) + 0.2 * abs(scale - 0.25)
        return 3 + 0.1 * math.log2(run.lr / 0.003) ** 2 + 0.2 * abs(scale - 0.25)

    write_synthetic(tmp_path, m, loss, {"lion": 0.5})
    write_report(tmp_path)
    report = (tmp_path / "report.md").read_text()
    block = "\n".join(findings_block(report))
    assert ("lion vs adamw: **inconclusive**: lion's tuned learning rate sat on the edge of "
            "the searched grid") in block
    assert " is worse**" not in block and " is better**" not in block
    assert "(on the grid's edge)" in report.split("## gpt2-pretrain")[1]


# ------------------------------------------------------------------------------ committed


def test_committed_report_verdicts_recomputed_from_its_csv():
    """The committed report's verdict section is what its results.csv gives, and its tests
    are the paired t-tests SciPy computes, Holm over all of them."""
    csv_text = (COMMITTED / "results.csv").read_text()
    meta = json.loads((COMMITTED / "bench.json").read_text())
    report = (COMMITTED / "report.md").read_text()
    assert findings_from_csv(csv_text, meta) == findings_block(report)
    assert "gen. gap" not in report and "commit None" not in report
    an = analyze(rows_from_csv(csv_text), meta)
    tests = [(wa, t) for wa in an.workloads for t in wa.tests]
    assert len(tests) == 18 and f"{len(tests)} tests in all" in report
    finals = [r for r in rows_from_csv(csv_text) if r["phase"] == "final" and r["status"] == "ok"]

    def values(w: str, opt: str) -> dict[int, float]:
        lm = WORKLOADS[w].metric == "perplexity"
        return {r["seed"]: r["test_loss"] if lm else r["test_metric"] for r in finals
                if r["workload"] == w and r["optimizer"] == opt}  # fmt: skip

    pvalues = []
    for wa, t in tests:
        a, b = values(wa.name, t.a), values(wa.name, t.b)
        seeds = sorted(a)
        pvalues.append(st.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
    rejected, _ = holm(pvalues)
    for (wa, t), p, rej in zip(tests, pvalues, rejected, strict=True):
        assert t.p == pytest.approx(p, rel=1e-9) and p > 0
        v = verdict(wa, t)
        edge = any(wa.rows[o].plan.inconclusive for o in (t.a, t.b))
        if edge:
            assert v == "inconclusive"
        elif rej:
            assert v in ("better", "worse")
        else:
            assert v in ("the same", "no difference detected")


LADDERS = [REPO / "docs" / "benchmarks" / name  # every finished ladder
           for name in ("ladder-cpu-2026-12-06", "ladder-cpu-v2-2026-12-06")]
LADDER = LADDERS[-1]  # the one README quotes


@pytest.mark.parametrize("ladder", LADDERS, ids=lambda p: p.name)
def test_committed_ladder_verdicts_recomputed_from_its_csv(ladder):
    """A committed ladder's verdicts are what its results.csv gives: every declared
    comparison on ≥10 paired seeds, paired t-tests and the width trends' Welch tests
    recomputed here with SciPy, Holm over all of them, no verdict on an edge row, and every
    row spending the same trials (its preset's)."""
    csv_text = (ladder / "results.csv").read_text()
    meta = json.loads((ladder / "bench.json").read_text())
    report = (ladder / "report.md").read_text()
    assert findings_from_csv(csv_text, meta) == findings_block(report)
    rows = rows_from_csv(csv_text)
    an = analyze(rows, meta)
    assert not an.missing, an.missing  # the matrix has finished
    tests = [(wa, t) for wa in an.workloads for t in wa.tests]
    assert len(tests) == 18 and len(an.trends) == 6
    assert f"{len(tests) + len(an.trends)} in all" in report
    assert all(t.n >= 10 for _, t in tests)
    finals = [r for r in rows if r["phase"] == "final" and r["status"] == "ok"]

    def values(w: str, opt: str) -> dict[int, float]:
        return {r["seed"]: (r["test_loss"] if WORKLOADS[w].metric == "perplexity"
                            else r["test_metric"])
                for r in finals if r["workload"] == w and r["optimizer"] == opt}  # fmt: skip

    def diffs(w: str, a: str, b: str) -> list[float]:
        va, vb = values(w, a), values(w, b)
        return [va[s] - vb[s] for s in sorted(set(va) & set(vb))]

    pvalues = [st.ttest_rel(*zip(*((values(wa.name, t.a)[s], values(wa.name, t.b)[s])
                                   for s in sorted(values(wa.name, t.a))), strict=True)).pvalue
               for wa, t in tests]  # fmt: skip
    for tr in an.trends:
        small = diffs(f"{tr.base}@{tr.small_width}", tr.a, tr.b)
        large = diffs(f"{tr.base}@{tr.large_width}", tr.a, tr.b)
        assert (tr.small_width, tr.large_width) == (64, 256)
        pvalues.append(st.ttest_ind(large, small, equal_var=False).pvalue)
    rejected, _ = holm(pvalues)
    for (wa, t), p, rej in zip(tests, pvalues, rejected, strict=False):
        assert t.p == pytest.approx(p, rel=1e-9) and p > 0
        v = verdict(wa, t)
        if any(wa.rows[o].plan.inconclusive for o in (t.a, t.b)):
            assert v == "inconclusive"
        elif rej:
            assert v in ("better", "worse")
        else:
            assert v in ("the same", "no difference detected")
    for tr, p in zip(an.trends, pvalues[len(tests):], strict=True):
        assert tr.p == pytest.approx(p, rel=1e-9)
    trials = get_preset(meta["preset"]).trials_per_row  # 9 in cpu-ladder, 12 in its v2
    for wa in an.workloads:  # equal spend, printed
        for row in wa.rows.values():
            spent = (row.plan.trials_used, row.plan.search.trials)
            assert spent == (trials, trials), (wa.name, row.optimizer, spent)
    assert report.count(f"| {trials} of {trials} |") == sum(len(wa.rows) for wa in an.workloads)


def test_readme_quotes_the_committed_ladder():
    """README's ladder verdicts are the committed report's, and every other number of its
    subsection is one the report prints."""
    import re

    readme = (REPO / "README.md").read_text()
    report = (LADDER / "report.md").read_text()
    begin, end = "<!-- ladder-findings:begin -->", "<!-- ladder-findings:end -->"
    quoted = readme[readme.index(begin) + len(begin):readme.index(end)].strip("\n")
    assert quoted.splitlines() == findings_block(report)
    section = readme.split("### What the scale ladder shows")[1].split("<!-- ladder-report:end")[0]
    outside = section.replace(quoted, "")
    for number in re.findall(r"(?<![\w.-])\d+(?:\.\d+)?(?![\w-])", outside):
        assert number in report, number


# ------------------------------------------------------------------------------ smoke


def test_smoke_runs_element_and_its_report_names_the_comparison_and_its_time(tmp_path):
    smoke = get_preset("smoke")
    assert "clion" in smoke.optimizers and "clion:mode=element" in smoke.optimizers
    m = Matrix(smoke, ["gpt2-pretrain"], parse_optimizers(",".join(smoke.optimizers)),
               smoke.tuning_seeds, smoke.final_seeds, 8)  # fmt: skip
    write_synthetic(tmp_path, m, lambda run: 3.0, {})
    write_report(tmp_path)
    head = (tmp_path / "report.md").read_text().split("## Verdict")[0]
    assert "this run checks that everything trains; it compares nothing" in head
    command = "clion-bench run --preset cpu --workloads gpt2-pretrain --out cpu-run"
    assert f"`{command}`" in head
    cpu = get_preset("cpu")
    full = Matrix(cpu, ["gpt2-pretrain"], parse_optimizers(",".join(cpu.optimizers)),
                  cpu.tuning_seeds, cpu.final_seeds)  # fmt: skip
    line = next(x for x in full.dry_run_lines(find_recipes_dir(), tmp_path / "o")
                if x.startswith("# estimated device time:"))
    estimate = line.removeprefix("# estimated device time: ").split(" (")[0]
    assert f"estimated {estimate} " in head


def test_an_unfinished_comparison_says_resume_not_smoke(tmp_path):
    """A comparison matrix (>= 2 final seeds declared) with no final run done yet: its
    report says it is not finished and how to resume, not that it is a check."""
    cpu = get_preset("cpu")
    m = Matrix(cpu, ["gpt2-pretrain"], parse_optimizers("adamw,lion"), cpu.tuning_seeds,
               cpu.final_seeds, 8)  # fmt: skip
    write_synthetic(tmp_path, m, lambda run: 3.0, {})
    for path in (tmp_path / "results").glob("*.json"):  # the finals have not run yet
        if json.loads(path.read_text()).get("phase") == "final":
            path.unlink()
    write_report(tmp_path)
    head = (tmp_path / "report.md").read_text().split("## Verdict")[0]
    assert "This run is not finished" in head and "compares nothing" not in head
    assert "`clion-bench run --preset cpu --out DIR`" in head


# ------------------------------------------------------------------------------ plots


def _figures(tmp_path: Path, final_seeds: tuple[int, ...]) -> tuple[dict, object]:
    m = Matrix(get_preset("cpu"), ["gpt2-pretrain"],
               parse_optimizers("adamw,lion,clion,clion:mode=element"), (0,), final_seeds, 40)
    write_synthetic(tmp_path, m, lambda run: 3.0 + 0.01 * math.log2(run.lr), {"lion": 0.1})
    results, _ = load_results(tmp_path)
    an = analyze(summary_rows(results), json.loads((tmp_path / "bench.json").read_text()))
    figures: dict = {}
    make_plots(an, results, tmp_path / "plots", figures)
    return figures, an


def test_plots_follow_the_plot_rules(tmp_path):
    from matplotlib.colors import to_hex
    from matplotlib.container import ErrorbarContainer

    figures, an = _figures(tmp_path, (100, 101))
    assert {"loss:gpt2-pretrain:40", "sign:gpt2-pretrain:40", "minc:gpt2-pretrain:40",
            "final", "diag", "profile"} <= set(figures)  # fmt: skip
    labels = {describe_optimizer(o): colour(o) for o in an.workloads[0].rows}
    assert len(set(labels.values())) == len(labels)  # one colour each
    for key, fig in figures.items():
        for ax in fig.axes:
            if not ax.get_visible():
                continue
            assert ax.get_ylabel(), (key, ax.get_title())
            assert ax.get_title() or fig.get_suptitle(), key
            for line in ax.get_lines():  # one colour per optimizer in every plot
                name = line.get_label().split(" (")[0]
                if name in labels:
                    assert to_hex(line.get_color()) == labels[name], (key, name)
            for coll in ax.collections:
                name = coll.get_label()
                if name in labels:
                    assert to_hex(coll.get_facecolor()[0], keep_alpha=False) == labels[name]
        for legend in [ax.get_legend() for ax in fig.axes] + fig.legends:
            if legend is not None:
                assert min(t.get_fontsize() for t in legend.get_texts()) >= 8, key
    loss = figures["loss:gpt2-pretrain:40"]
    assert [t.get_text() for t in loss.legends[0].get_texts()] == list(labels)
    assert all("nats per token" in ax.get_ylabel() for ax in loss.axes)
    assert all(line.get_marker() == "o" for line in loss.axes[1].get_lines())  # validation
    lo, hi = figures["sign:gpt2-pretrain:40"].axes[0].get_ylim()
    assert -0.05 <= lo <= 0 and 1 <= hi <= 1.05
    lo, hi = figures["diag"].axes[0].get_ylim()
    assert -0.05 <= lo <= 0 and 1 <= hi <= 1.05
    for key in ("minc:gpt2-pretrain:40", "diag"):
        ax = figures[key].axes[-1]
        flat = [ln for ln in ax.get_lines() if len(set(ln.get_ydata())) == 1]
        assert any(ln.get_ydata()[0] == pytest.approx(1e-4) for ln in flat), key  # ν
        assert "smallest" in ax.get_title() and "mean over runs" not in ax.get_title()
    final = figures["final"].axes[0]
    assert final.get_yscale() == "linear"
    bars = [p for p in final.patches]
    ticks = [t.get_text() for t in final.get_xticklabels()]
    assert [to_hex(b.get_facecolor(), keep_alpha=False) for b in bars] == [labels[t] for t in ticks]
    assert any(isinstance(c, ErrorbarContainer) for c in final.containers)
    assert "standard deviation" in figures["final"].get_suptitle()
    assert len(final.texts) == len(bars)  # the values printed on the bars


def test_no_error_bars_from_one_seed(tmp_path):
    from matplotlib.container import ErrorbarContainer

    figures, _ = _figures(tmp_path, (100,))
    final = figures["final"].axes[0]
    assert not any(isinstance(c, ErrorbarContainer) for c in final.containers)
    assert "no error bars" in figures["final"].get_suptitle()
    assert "1 final seed" in figures["loss:gpt2-pretrain:40"].axes[0].get_title()


def test_study_plots_use_the_same_colours_and_label_their_axes(tmp_path):
    from matplotlib.colors import to_hex
    from matplotlib.container import ErrorbarContainer

    from clion_hf.bench.study_report import _INTS, _TEXT
    from clion_hf.bench.study_report import CSV_COLUMNS as STUDY_COLUMNS
    from clion_hf.bench.study_report import analyze as analyze_study
    from clion_hf.bench.study_report import make_plots as study_plots

    study = REPO / "docs" / "benchmarks" / "gen-gap-cpu-2026-11-29"
    rows = rows_from_csv((study / "results.csv").read_text(), STUDY_COLUMNS, _TEXT, _INTS)
    studies = analyze_study(rows, json.loads((study / "bench.json").read_text()))
    figures: dict = {}
    study_plots(studies, [], tmp_path, figures)
    names = {describe_optimizer(o): colour(o)
             for o in ("adamw", "lion", "clion", "clion:mode=element")}  # fmt: skip
    assert figures
    seen = set()
    for fname, fig in figures.items():
        for ax in fig.axes:
            assert ax.get_ylabel(), fname
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                line = handle.lines[0] if isinstance(handle, ErrorbarContainer) else handle
                name = label.split(" (")[0]
                if name in names:
                    seen.add(name)
                    assert to_hex(line.get_color()) == names[name], (fname, name)
            if "sign" in ax.get_ylabel():
                lo, hi = ax.get_ylim()
                assert -0.05 <= lo <= 0 and 1 <= hi <= 1.05
    assert seen == set(names)
