"""Turn a results directory into ``report.md``, ``results.csv`` and PNG plots.

The report is a function of the results: every number and every sentence of its
"Findings" is computed here (nothing is typed in by hand), and the Findings can be
recomputed from ``results.csv`` and ``bench.json`` alone (:func:`findings_from_csv`), which
is how the committed reports are checked. Definitions are written into the report itself
(:data:`PROTOCOL_TEXT`). The report never refuses to be written: whatever is missing
(unreadable result files, runs still to do, rows without a choice, a plot that cannot be
drawn) is listed in it with the reason.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clion_hf._files import atomic_path, atomic_write_text, probe_writable, read_json

from .protocol import Matrix, RowPlan, final_metric, matrix_from, result_problem, test_metric
from .specs import MODES, WORKLOADS, SpecError, fmt_float, parse_optimizer, removal_fraction
from .stats import Comparison, compare_family, performance_profile

SIGN_KEY = "optim/sign_fraction"
MINC_KEY = "optim/min_abs_c"
ALPHA = 0.05
REFERENCES = ("adamw", "lion")  # every other row is compared with these, paired by seed
PROFILE_TAUS = (1.0, 1.25, 1.5, 2.0, 3.0, 4.0)
FINDINGS_BEGIN = "<!-- findings:begin -->"
FINDINGS_END = "<!-- findings:end -->"


class ReportError(Exception):
    """The report cannot be written (e.g. a read-only directory); one-line message."""


# ------------------------------------------------------------------------------ per run


def load_results(out_dir: Path) -> tuple[list[dict], list[str]]:
    """Every readable result file under ``out_dir/results`` (sorted), and one line per file
    that could not be used, saying why."""
    results, problems = [], []
    for path in sorted((out_dir / "results").glob("*.json")):
        data = read_json(path)
        problem = result_problem(data)
        if problem is None:
            results.append(data)
        else:
            problems.append(f"`{path.name}`: {problem}")
    return results, problems


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def curve(result: dict, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every log entry that has ``key``, last one per step."""
    points: dict[int, float] = {}
    for entry in result.get("log_history") or []:
        value = _num(entry.get(key))
        if value is not None and "step" in entry:
            points[int(entry["step"])] = value
    return sorted(points.items())


def better(a: float, b: float, greater_is_better: bool) -> bool:
    return a > b if greater_is_better else a < b


def reaches(value: float, target: float, greater_is_better: bool) -> bool:
    return value == target or better(value, target, greater_is_better)


def summarize(result: dict, target: float | None = None) -> dict[str, Any]:
    """The numbers of one run that go into the tables and ``results.csv``."""
    w = WORKLOADS[result["workload"]]
    res = result.get("all_results") or {}
    history = result.get("log_history") or []
    final = final_metric(result)
    evals = [(s, w.curve_to_metric(v)) for s, v in curve(result, w.curve_key)]
    evals = [(s, v) for s, v in evals if math.isfinite(v)]
    candidates = [v for _, v in evals] + ([final] if final is not None else [])
    best = (max if w.greater_is_better else min)(candidates) if candidates else None
    train_losses = curve(result, "loss")
    train_end = train_losses[-1][1] if train_losses else None
    eval_loss = _num(res.get("eval_loss"))
    gap = eval_loss - train_end if eval_loss is not None and train_end is not None else None
    train_s = dict(curve(result, "train_s"))
    opt_s = curve(result, "optimizer_s")

    def column_max(key: str) -> float | None:
        values = [v for e in history if (v := _num(e.get(key))) is not None]
        return max(values) if values else None

    signs = [v for _, v in curve(result, SIGN_KEY)]
    mins = [v for _, v in curve(result, MINC_KEY)]
    steps_to = seconds_to = None
    if target is not None and result.get("status") == "ok":
        points = evals + ([(int(result["max_steps"]), final)] if final is not None else [])
        for step, value in sorted(points):
            if reaches(value, target, w.greater_is_better):
                steps_to, seconds_to = step, train_s.get(step)
                break
    second = result.get("second") or [None, None]
    steps_done = opt_s[-1][0] if opt_s else None
    return {
        "run_id": result["run_id"],
        "workload": result["workload"],
        "optimizer": result["optimizer"],
        "phase": result.get("phase", ""),
        "stage": result.get("stage", ""),
        "second": second[0] or "",
        "second_value": second[1],
        "lr": result["lr"],
        "weight_decay": result.get("weight_decay"),
        "seed": result["seed"],
        "max_steps": result.get("max_steps"),
        "status": result["status"],
        "reason": result.get("reason", ""),
        "metric": w.metric,
        "final_metric": final,
        "best_metric": best,
        "test_metric": test_metric(result),
        "eval_loss": eval_loss,
        "test_loss": _num(res.get("test_loss")),
        "train_loss_end": train_end,
        "gen_gap": gap,
        "train_samples": _num(res.get("train_samples")),
        "eval_samples": _num(res.get("eval_samples")),
        "test_samples": _num(res.get("test_samples")),
        "wall_s": result.get("wall_s"),
        "cpu_s": result.get("cpu_s"),
        "train_s": max(train_s.values()) if train_s else None,
        "optimizer_ms_per_step": (1000 * opt_s[-1][1] / steps_done
                                  if opt_s and steps_done else None),  # fmt: skip
        "steps_to_target": steps_to,
        "train_s_to_target": seconds_to,
        "optimizer_state_mb": column_max("optimizer_state_mb"),
        "peak_mem_mb": column_max("peak_mem_mb"),
        "sign_fraction_mean": statistics.fmean(signs) if signs else None,
        "sign_fraction_max": max(signs) if signs else None,
        "min_abs_c_min": min(mins) if mins else None,
        "min_abs_c_median": statistics.median(mins) if mins else None,
        "returncode": result.get("returncode"),
    }


CSV_COLUMNS = [
    "run_id", "workload", "optimizer", "phase", "stage", "second", "second_value", "lr",
    "weight_decay", "seed", "max_steps", "status", "reason", "metric", "final_metric",
    "best_metric", "test_metric", "eval_loss", "test_loss", "train_loss_end", "gen_gap",
    "train_samples", "eval_samples", "test_samples", "wall_s", "cpu_s", "train_s",
    "optimizer_ms_per_step", "steps_to_target", "train_s_to_target", "optimizer_state_mb",
    "peak_mem_mb", "sign_fraction_mean", "sign_fraction_max", "min_abs_c_min",
    "min_abs_c_median", "returncode",
]  # fmt: skip
_TEXT_COLUMNS = {"run_id", "workload", "optimizer", "phase", "stage", "second", "status",
                 "reason", "metric"}  # fmt: skip


def rows_csv(rows: list[dict], columns: list[str] = CSV_COLUMNS) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return buf.getvalue()


def rows_from_csv(text: str, columns: list[str] = CSV_COLUMNS,
                  text_columns: set[str] = _TEXT_COLUMNS) -> list[dict]:  # fmt: skip
    """The rows :func:`rows_csv` wrote, with numbers parsed back (repr round-trips floats)."""
    rows = []
    for raw in csv.DictReader(io.StringIO(text)):
        row: dict[str, Any] = {}
        for k in columns:
            v = raw.get(k, "")
            if k in text_columns:
                row[k] = v
            elif v == "":
                row[k] = None
            else:
                row[k] = float(v) if any(c in v for c in ".eEn") else int(v)
        for k in ("seed", "max_steps"):
            if row[k] is not None:
                row[k] = int(row[k])
        rows.append(row)
    return rows


def _as_result(row: dict) -> dict:
    """The part of a result :meth:`Matrix.plan` reads, rebuilt from a summary row."""
    w = WORKLOADS[row["workload"]]
    res: dict[str, Any] = {}
    if row.get("eval_loss") is not None:
        res["eval_loss"] = row["eval_loss"]
    if row.get("final_metric") is not None:
        res[w.metric] = row["final_metric"]
    return {"run_id": row["run_id"], "workload": row["workload"], "status": row["status"],
            "all_results": res}  # fmt: skip


# ------------------------------------------------------------------------------ analysis


def describe_optimizer(label: str) -> str:
    """``clion:mode=element`` -> ``clion element``; unparsable labels as they are."""
    try:
        spec = parse_optimizer(label)
    except SpecError:
        return label
    if spec.name != "clion":
        return label
    extra = [f"{k}={fmt_float(v) if isinstance(v, float) else v}" for k, v in spec.options
             if k != "mode"]  # fmt: skip
    return " ".join([f"clion {spec.get('mode')}", *extra])


def optimizer_order(label: str) -> tuple:
    """Tables list AdamW, then Lion, then CLion by mode (global … soft)."""
    try:
        spec = parse_optimizer(label)
    except SpecError:
        return (9, 0, label)
    rank = ("adamw", "lion", "clion").index(spec.name)
    mode = MODES.index(spec.get("mode")) if spec.name == "clion" else 0
    return (rank, mode, label)


@dataclass
class Row:
    """One (workload, optimizer) row: its search and its final runs."""

    optimizer: str
    plan: RowPlan | None
    tune: list[dict]  # summary rows of its tuning runs
    finals: list[dict]  # summary rows of its final runs (at the chosen configuration)

    @property
    def chosen(self) -> dict | None:
        """lr, weight decay and second hyper-parameter of the final runs."""
        if self.finals:
            f = self.finals[0]
            return {"lr": f["lr"], "weight_decay": f["weight_decay"], "second": f["second"],
                    "second_value": f["second_value"]}  # fmt: skip
        if self.plan is not None and self.plan.chosen is not None:
            run = self.plan.chosen.runs[0]
            second = run.second or ("", None)
            return {"lr": run.lr, "weight_decay": run.weight_decay, "second": second[0],
                    "second_value": second[1]}  # fmt: skip
        return None

    def ok_finals(self) -> list[dict]:
        return [r for r in self.finals if r["status"] == "ok" and r["test_metric"] is not None]


@dataclass
class WorkloadAnalysis:
    name: str
    max_steps: int
    rows: dict[str, Row]
    target: float | None = None
    target_rule: str = ""
    comparisons: list[Comparison] = field(default_factory=list)
    uses_test: bool = True  # False: no run had a test metric, validation is compared

    @property
    def workload(self):
        return WORKLOADS[self.name]


def comparison_value(row: dict) -> float | None:
    """The per-run number the paired comparison uses: test loss (nats) for language models
    (differences are log perplexity ratios), test accuracy for classifiers."""
    if WORKLOADS[row["workload"]].metric == "perplexity":
        if row.get("test_loss") is not None:
            return row["test_loss"]
        return math.log(row["test_metric"]) if row.get("test_metric") else None
    return row.get("test_metric")


@dataclass
class Analysis:
    """Everything the report says, computed from summary rows (and the matrix, if known)."""

    rows: list[dict]
    matrix: Matrix | None
    meta: dict | None
    workloads: list[WorkloadAnalysis] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        by_w: dict[tuple[str, int], list[dict]] = defaultdict(list)
        for r in self.rows:
            by_w[(r["workload"], int(r["max_steps"] or 0))].append(r)
        plans: dict[tuple[str, str], RowPlan] = {}
        if self.matrix is not None:
            results = {r["run_id"]: _as_result(r) for r in self.rows}
            for p in self.matrix.plan(results):
                plans[(p.workload, p.optimizer)] = p
        order = list(WORKLOADS)
        for w, steps in sorted(by_w, key=lambda k: (order.index(k[0]), k[1])):
            runs = by_w[(w, steps)]
            labels = {r["optimizer"] for r in runs} | {o for (pw, o) in plans if pw == w}
            rows = {}
            for opt in sorted(labels, key=optimizer_order):
                mine = [r for r in runs if r["optimizer"] == opt]
                rows[opt] = Row(opt, plans.get((w, opt)),
                                [r for r in mine if r["phase"] != "final"],
                                sorted((r for r in mine if r["phase"] == "final"),
                                       key=lambda r: r["seed"]))  # fmt: skip
            wa = WorkloadAnalysis(w, steps, rows)
            self._target(wa)
            self._compare(wa)
            self.workloads.append(wa)
        for (w, opt), p in plans.items():
            if p.needed:
                kind = "tuning" if p.needed[0].phase == "tune" else "final"
                self.missing.append(f"{w} {describe_optimizer(opt)}: {len(p.needed)} {kind} "
                                    "run(s) not done yet (rerun `clion-bench run` to finish)")
            elif p.chosen is None:
                self.missing.append(f"{w} {describe_optimizer(opt)}: no configuration "
                                    "finished ok on every tuning seed, so nothing was chosen")

    @staticmethod
    def _target(wa: WorkloadAnalysis) -> None:
        ref = wa.rows.get("adamw")
        values = [r["final_metric"] for r in (ref.finals if ref else [])
                  if r["status"] == "ok" and r["final_metric"] is not None]  # fmt: skip
        if values:
            wa.target = statistics.median(values)
            wa.target_rule = "median final validation metric of tuned AdamW's final seeds"
        else:
            wa.target_rule = "none: no final AdamW run finished ok"

    @staticmethod
    def _compare(wa: WorkloadAnalysis) -> None:
        runs = [r for row in wa.rows.values() for r in row.tune + row.finals
                if r["status"] == "ok"]  # fmt: skip
        wa.uses_test = not runs or any(r["test_metric"] is not None for r in runs)
        family = []
        for ref in REFERENCES:
            if ref not in wa.rows:
                continue
            base = {r["seed"]: v for r in wa.rows[ref].ok_finals()
                    if (v := comparison_value(r)) is not None}  # fmt: skip
            for opt, row in wa.rows.items():
                if opt in REFERENCES[: REFERENCES.index(ref) + 1]:
                    continue  # adamw vs adamw, lion vs lion, lion vs adamw counted once
                mine = {r["seed"]: v for r in row.ok_finals()
                        if (v := comparison_value(r)) is not None}  # fmt: skip
                seeds = sorted(set(base) & set(mine))
                family.append(Comparison(opt, ref, [mine[s] - base[s] for s in seeds]))
        wa.comparisons = compare_family(family, ALPHA)


def analyze(rows: list[dict], meta: dict | None) -> Analysis:
    return Analysis(rows, matrix_from(meta) if isinstance(meta, dict) else None, meta)


# ------------------------------------------------------------------------------ wording


def _f(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def effect_text(wa: WorkloadAnalysis, c: Comparison) -> str:
    """``test perplexity ×1.05 [1.02, 1.08]`` / ``test accuracy −2.1 pp [−3.0, −1.2]``."""
    if wa.workload.metric == "perplexity":
        return (f"test perplexity ×{math.exp(c.mean):.3f} "
                f"[{math.exp(c.lo):.3f}, {math.exp(c.hi):.3f}]")  # fmt: skip
    return (f"test accuracy {100 * c.mean:+.1f} pp "
            f"[{100 * c.lo:+.1f}, {100 * c.hi:+.1f}]")  # fmt: skip


def verdict(wa: WorkloadAnalysis, c: Comparison) -> str:
    if c.n < 2:
        return f"not compared ({c.n} paired seed{'s' if c.n != 1 else ''})"
    if not c.detected:
        return "no difference detected"
    lower_better = not wa.workload.greater_is_better
    good = (c.mean < 0) if lower_better else (c.mean > 0)
    return "better" if good else "worse"


def comparison_sentence(wa: WorkloadAnalysis, c: Comparison) -> str:
    v = verdict(wa, c)
    who = f"{describe_optimizer(c.a)} vs {describe_optimizer(c.b)}"
    if c.n < 2:
        return f"{who}: {v}."
    inconclusive = _inconclusive(wa.rows.get(c.a)) or _inconclusive(wa.rows.get(c.b))
    flag = " (a tuned optimum sat on a grid edge: inconclusive)" if inconclusive else ""
    return (f"{who}: {v}, {effect_text(wa, c)} ({100 * c.level:.2f}% CI, {c.n} paired "
            f"seeds){flag}.")  # fmt: skip


def _inconclusive(row: Row | None) -> bool:
    return bool(row and row.plan and row.plan.inconclusive)


def _global_findings(an: Analysis) -> list[str]:
    """Sentences about the sign branch of every CLion mode, from the runs' diagnostics, and
    what the paper's ``global`` rule amounts to against the references."""
    out = []
    for mode in MODES:
        label = "clion" if mode == "global" else f"clion:mode={mode}"
        runs = [r for wa in an.workloads for r in (wa.rows[label].tune + wa.rows[label].finals
                if label in wa.rows else []) if r["status"] == "ok"]  # fmt: skip
        logged = [r for r in runs if r["sign_fraction_mean"] is not None]
        if not logged:
            continue
        means = [r["sign_fraction_mean"] for r in logged]
        top = max(r["sign_fraction_max"] for r in logged)
        took = sum(r["sign_fraction_max"] > 0 for r in logged)
        name = "`global` (the paper's rule)" if mode == "global" else f"`{mode}`"
        span = (f"{_f(min(means), 2)} in every run" if min(means) == max(means) else
                f"{_f(min(means), 2)} to {_f(max(means), 2)} (mean per run; largest logged "
                f"{_f(top, 2)}; above 0 in {took} runs)")  # fmt: skip
        text = (f"CLion {name}: over {len(logged)} runs that finished ok, the fraction of "
                f"coordinates that took the sign branch was {span}")
        mins = [r["min_abs_c_min"] for r in logged if r["min_abs_c_min"] is not None]
        meds = [r["min_abs_c_median"] for r in logged if r["min_abs_c_median"] is not None]
        if mins and mode in ("global", "tensor"):
            nu = parse_optimizer(label).get("nu")
            text += (f"; the smallest non-zero abs(c) per run was {_f(min(mins), 2)} to "
                     f"{_f(max(mins), 2)} (median over logged steps {_f(min(meds), 2)} to "
                     f"{_f(max(meds), 2)}), against ν = {fmt_float(nu)}")
        text += "."
        if mode == "global":
            lrs = sorted({wa.rows[label].chosen["lr"] for wa in an.workloads
                          if label in wa.rows and wa.rows[label].chosen})  # fmt: skip
            if lrs and top == 0:
                text += (" Without the sign branch its update is the momentum c itself, i.e. "
                         "momentum SGD; its tuned lr: "
                         f"{', '.join(fmt_float(x) for x in lrs)}.")
            tally = defaultdict(list)
            for wa in an.workloads:
                for c in wa.comparisons:
                    if c.a == label and c.n >= 2:
                        tally[(c.b, verdict(wa, c))].append(wa.name)
            for ref in REFERENCES:
                parts = [f"{v} on {len(ws)} ({', '.join(ws)})" for (b, v), ws in
                         sorted(tally.items()) if b == ref]  # fmt: skip
                if parts:
                    text += f" Against tuned {ref}: {'; '.join(parts)}."
        out.append(text)
    return out


def findings(an: Analysis) -> list[str]:
    """The "Findings" section: one line per workload, then the global rule, the profile."""
    lines = []
    for wa in an.workloads:
        n = max((c.n for c in wa.comparisons), default=0)
        unit = "test perplexity" if wa.workload.metric == "perplexity" else "test accuracy"
        head = f"**{wa.name}** ({wa.max_steps} steps, {n} paired final seeds, {unit}"
        head += ")" if wa.uses_test else "; no test split: validation, which also chose)"
        parts = []
        for label, picked in (("Detected", [c for c in wa.comparisons if c.detected]),
                              ("No difference detected",
                               [c for c in wa.comparisons if not c.detected and c.n >= 2])):
            if picked:
                parts.append(f"{label}: " + "; ".join(_short(wa, c) for c in picked) + ".")
        broken = []
        for opt, row in wa.rows.items():
            bad = [r for r in row.finals if r["status"] != "ok"]
            if bad:
                kinds = ", ".join(sorted({r["status"] for r in bad}))
                broken.append(f"{describe_optimizer(opt)} {len(bad)} of {len(row.finals)} "
                              f"({kinds})")
        if broken:
            parts.append("Final seeds not ok: " + "; ".join(broken) + ".")
        flagged = [describe_optimizer(o) for o, r in wa.rows.items() if _inconclusive(r)]
        if flagged:
            parts.append("Optimum still on a grid edge (comparisons inconclusive): "
                         + ", ".join(flagged) + ".")
        unchosen = [describe_optimizer(o) for o, r in wa.rows.items()
                    if r.plan is not None and not r.plan.needed and r.plan.chosen is None]
        if unchosen:
            parts.append("Nothing chosen (every trial diverged or failed): "
                         + ", ".join(unchosen) + ".")
        if not parts:
            parts.append("nothing to compare yet.")
        lines.append(f"- {head}: " + " ".join(parts))
    lines += [f"- {t}" for t in _global_findings(an)]
    profile = _profile(an)
    if profile:
        measures, rho = profile
        order = sorted(rho, key=optimizer_order)
        k = PROFILE_TAUS.index(2.0)
        lines.append(
            f"- Performance profile over {len(measures)} workload"
            f"{'s' if len(measures) != 1 else ''} (median steps to tuned AdamW's median "
            "validation metric): fraction of workloads where fastest: "
            + ", ".join(f"{describe_optimizer(o)} {rho[o][0]:.2f}" for o in order)
            + "; within 2× of the fastest: "
            + ", ".join(f"{describe_optimizer(o)} {rho[o][k]:.2f}" for o in order) + "."
        )  # fmt: skip
    return lines


def _short(wa: WorkloadAnalysis, c: Comparison) -> str:
    """``clion element vs adamw worse ×1.05 [1.02, 1.08]`` (the verdict only if detected)."""
    v = f" {verdict(wa, c)}" if c.detected else ""
    if wa.workload.metric == "perplexity":
        effect = f"×{math.exp(c.mean):.3f} [{math.exp(c.lo):.3f}, {math.exp(c.hi):.3f}]"
    else:
        effect = f"{100 * c.mean:+.1f} pp [{100 * c.lo:+.1f}, {100 * c.hi:+.1f}]"
    flag = " (inconclusive)" if (_inconclusive(wa.rows.get(c.a))
                                 or _inconclusive(wa.rows.get(c.b))) else ""  # fmt: skip
    return f"{describe_optimizer(c.a)} vs {describe_optimizer(c.b)}{v} {effect}{flag}"


def _profile(an: Analysis) -> tuple[dict, dict] | None:
    measures: dict[str, dict[str, float]] = {}
    for wa in an.workloads:
        if wa.target is None:
            continue
        per = {}
        for opt, row in wa.rows.items():
            ok = [r for r in row.finals if r["status"] == "ok"]
            if not ok:
                continue
            # median_low: a median that is one of the runs' values (inf when most missed)
            per[opt] = statistics.median_low(
                r["steps_to_target"] if r["steps_to_target"] is not None else math.inf
                for r in ok
            )
        if per:
            measures[wa.name] = per
    if not measures:
        return None
    return measures, performance_profile(measures, PROFILE_TAUS)


# ------------------------------------------------------------------------------ markdown


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _mean_sd(values: Iterable[float | None], digits: int = 4) -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "–"
    mean = statistics.fmean(vals)
    if len(vals) == 1:
        return f"{mean:.{digits}g}"
    return f"{mean:.{digits}g} ± {statistics.stdev(vals):.2g}"


def _median(values: Iterable[float | None], fmt: str = "{:.3g}") -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return fmt.format(statistics.median(vals)) if vals else "–"


def _second_text(chosen: dict | None, steps: int) -> str:
    if not chosen:
        return "–"
    wd = chosen["weight_decay"] or 0.0
    removal = removal_fraction(chosen["lr"], wd, steps)
    text = f"wd {fmt_float(wd)} ({100 * removal:.0f}%)"
    if chosen["second"] == "nu":
        text += f", ν {fmt_float(chosen['second_value'])}"
    return text


def workload_markdown(an: Analysis, wa: WorkloadAnalysis, plots: dict[str, str]) -> list[str]:
    w = wa.workload
    direction = "higher" if w.greater_is_better else "lower"
    target = "–" if wa.target is None else f"{wa.target:.4g}"
    lines = [f"## {w.name} ({wa.max_steps} steps)", "",
             f"Metric: `{w.metric}` ({direction} is better). Target for steps-to-target: "
             f"{target} ({wa.target_rule}).", ""]  # fmt: skip
    sizes = [r for row in wa.rows.values() for r in row.finals + row.tune
             if r["test_samples"] is not None or r["eval_samples"] is not None]  # fmt: skip
    if sizes:
        r = sizes[0]
        lines += [f"Data: {_f(r['train_samples'], 6)} training rows, {_f(r['eval_samples'], 6)} "
                  f"validation rows per evaluation, {_f(r['test_samples'], 6)} test rows "
                  f"(blocks of tokens for language models, pairs, images).", ""]  # fmt: skip
    if not wa.uses_test:
        lines += ["**No test split**: the held-out columns below show the *validation* "
                  "metric, which also chose the configurations (optimistic).", ""]  # fmt: skip
    header = ["optimizer", "chosen lr", "decay (removed), ν", "trials / budget", "final ok",
              f"test {w.metric}", f"val. {w.metric}", "gen. gap", "steps to target",
              "train s to target", "opt. ms/step", "opt. state MB", "peak MB",
              "sign-branch frac.", "min abs(c)", "diverged", "failed"]  # fmt: skip
    table = []
    for opt, row in wa.rows.items():
        ok = [r for r in row.finals if r["status"] == "ok"]
        every = row.tune + row.finals
        chosen = row.chosen
        budget = f"{row.plan.trials_used} / {row.plan.search.budget}" if row.plan else "?"
        lr_text = "–" if not chosen else fmt_float(chosen["lr"])
        if _inconclusive(row):
            lr_text += " (edge)"
        reached = [r for r in ok if r["steps_to_target"] is not None]
        is_clion = opt.startswith("clion")
        table.append([
            describe_optimizer(opt), lr_text, _second_text(chosen, wa.max_steps), budget,
            f"{len(ok)}/{len(row.finals)}",
            _mean_sd(r["test_metric"] for r in ok), _mean_sd(r["final_metric"] for r in ok),
            _mean_sd((r["gen_gap"] for r in ok), 3),
            f"{_median((r['steps_to_target'] for r in reached), '{:.0f}')} "
            f"({len(reached)}/{len(ok)})",
            _median(r["train_s_to_target"] for r in reached),
            _median(r["optimizer_ms_per_step"] for r in ok),
            _median(r["optimizer_state_mb"] for r in ok),
            _median((r["peak_mem_mb"] for r in ok), "{:.0f}"),
            _median(r["sign_fraction_mean"] for r in ok) if is_clion else "",
            (f"{min(v)[0]:.2g}" if (v := [(r["min_abs_c_min"],) for r in ok
                                         if r["min_abs_c_min"] is not None]) else "–")
            if is_clion else "",
            str(sum(r["status"] == "diverged" for r in every)),
            str(sum(r["status"] == "failed" for r in every)),
        ])  # fmt: skip
    lines += _table(header, table)
    if wa.comparisons:
        lines += ["", "Paired comparisons (final seeds; A − B; Holm-corrected within this "
                  "workload):", ""]  # fmt: skip
        lines += [f"- {comparison_sentence(wa, c)}" for c in wa.comparisons]
    lines += ["", "Search (mean final validation metric over the tuning seeds; **bold** = "
              "chosen; trials in the order run):", ""]  # fmt: skip
    for opt, row in wa.rows.items():
        if not row.plan:
            continue
        cells = []
        for t in row.plan.trials:
            vals = [r for r in t.results if r is not None]
            metric = [final_metric_of(r, w) for r in vals]
            metric = [m for m in metric if m is not None]
            status = {r.get("status") for r in vals} - {"ok"}
            text = (f"{_f(statistics.fmean(metric))}" if metric and not status
                    else ("/".join(sorted(status)) if status else "pending"))  # fmt: skip
            sec = "" if t.second is None else f", {row.plan.search.second} {fmt_float(t.second)}"
            cell = f"lr {fmt_float(t.lr)}{sec}: {text}"
            if row.plan.chosen is t:
                cell = f"**{cell}**"
            cells.append(cell)
        ext = []
        if row.plan.lr_extensions:
            ext.append("lr extended to " + ", ".join(fmt_float(x) for x in row.plan.lr_extensions))
        if row.plan.second_extensions:
            ext.append(f"{row.plan.search.second} extended to "
                       + ", ".join(fmt_float(x) for x in row.plan.second_extensions))
        if row.plan.lr_on_edge:
            ext.append("**lr optimum still on an edge: inconclusive**")
        if row.plan.second_on_edge:
            ext.append(f"**{row.plan.search.second} optimum still on an edge: inconclusive**")
        tail = f" ({'; '.join(ext)})" if ext else ""
        lines.append(f"- {describe_optimizer(opt)}: " + "; ".join(cells) + tail)
    bad = [r for row in wa.rows.values() for r in row.tune + row.finals if r["status"] != "ok"]
    if bad:
        lines += ["", "Runs that did not finish ok:", ""]
        lines += [f"- `{r['run_id']}` {describe_optimizer(r['optimizer'])} "
                  f"lr={fmt_float(r['lr'])} seed={r['seed']} ({r['phase']}): {r['status']} "
                  f"({r['reason']})" for r in bad]  # fmt: skip
    for key in ("loss", "sign", "minc"):
        if f"{key}:{w.name}:{wa.max_steps}" in plots:
            lines += ["", f"![{key}]({plots[f'{key}:{w.name}:{wa.max_steps}']})"]
    lines.append("")
    return lines


def final_metric_of(result: dict, w) -> float | None:
    """A trial result's validation metric (works on full results and rebuilt ones)."""
    res = result.get("all_results") or {}
    value = _num(res.get(w.metric))
    if value is None and w.metric == "perplexity" and _num(res.get("eval_loss")) is not None:
        value = w.curve_to_metric(res["eval_loss"])
    return value


PROTOCOL_TEXT = """\
Protocol (AlgoPerf-style external tuning; the searches are in `bench.json`):
- *Search*: each optimizer has a declared search space and the same trial budget. A trial is
  one configuration run on every tuning seed; trials are compared on the mean final
  validation metric (validation loss for language models); a trial with a diverged or failed
  seed is out. First the learning rate on a grid 2x apart (AdamW around the workload's AdamW
  lr; Lion and CLion `element`/`soft` around the Lion lr, about AdamW/3; CLion
  `global`/`tensor` around an SGD-sized lr), extended one 2x step at a time while the best
  point is on an edge, up to the stated bound; then, at the best lr, one second
  hyper-parameter: the weight-decay scale for AdamW, Lion and CLion `global`/`tensor`, ν for
  CLion `element`/`soft`. A row whose optimum is still on an edge after the extensions is
  marked inconclusive.
- *Weight decay*: coupled to the lr (lr·wd, not wd, is the same for every lr, as the Lion
  paper advises), at a scale where it acts: at scale 1 decay alone removes 10% of a weight
  over the run (the "removed" column gives the chosen configuration's share); the second
  stage tries scales 0 and 1/4 (and 4 if 1 is best).
- *Seeds*: the chosen configuration runs on fresh final seeds that took no part in the
  choice; seed s of every optimizer has the same initialization and data order, so
  comparisons are paired by seed.
- *Statistics*: per workload, every optimizer is compared with AdamW and with Lion on the
  held-out test split: the mean of the per-seed differences, a 95% percentile bootstrap
  interval (20,000 resamples), Holm-corrected within the workload (the interval is given at
  the level its test used). "No difference detected" whenever the interval contains 0;
  otherwise better or worse. Language models are compared on test loss (the table gives the
  perplexity ratio exp(difference)); classifiers on test accuracy (percentage points).
- *Divergence*: a run whose logged loss or final metric is NaN/inf, or whose last training
  loss is above 3× its first, is "diverged" (a result, not a crash).
- *Efficiency*: the target is the median final validation metric of tuned AdamW's final
  seeds; steps to target = first evaluation reaching it (median over final seeds; reached
  count in brackets); train s to target = time inside training steps up to then
  (evaluation, logging and data loading excluded); opt. ms/step = time inside
  `optimizer.step()` alone. Time figures depend on the host's load (noted above).
- *Generalization gap*: final validation loss − last logged training loss.
- *CLion diagnostics*: sign-branch frac. = median over final runs of the mean fraction of
  coordinates that took the sign branch (`optim/sign_fraction`); min abs(c) = the smallest
  logged non-zero abs(c) (`optim/min_abs_c`); the plots show both over time for every trial.
"""


def timing_lines(results: list[dict], load_log: Path | None = None) -> list[str]:
    """How long the matrix took: CPU time, wall time, and the host's load while it ran."""
    cpu = [r["cpu_s"] for r in results if isinstance(r.get("cpu_s"), int | float)]
    starts = [r["started_at"] for r in results if r.get("started_at")]
    ends = [r["finished_at"] for r in results if r.get("finished_at")]
    lines = []
    if starts and ends:
        from datetime import datetime

        span = (datetime.fromisoformat(max(ends)) - datetime.fromisoformat(min(starts)))
        lines.append(f"Wall time from the first run's start to the last run's end: "
                     f"{span.total_seconds() / 60:.0f} min (interruptions included).")
    if cpu:
        jobs = max((r.get("jobs") or 1 for r in results), default=1)
        lines.append(f"CPU time of the {len(cpu)} runs: {sum(cpu) / 3600:.2f} h, i.e. "
                     f"{sum(cpu) / 60 / jobs:.0f} min on {jobs} dedicated cores running "
                     f"{jobs} at a time.")
    loads = [r["load_avg_1m"] for r in results if isinstance(r.get("load_avg_1m"), int | float)]
    source = "as runs ended"
    if not loads and load_log is not None and load_log.is_file():
        loads = [float(ln.split()[1]) for ln in load_log.read_text().splitlines()
                 if len(ln.split()) > 1]  # fmt: skip
        source = f"sampled each minute, `{load_log.name}`"
    if loads:
        lines.append(f"Host load average (1 min) during the runs: median "
                     f"{statistics.median(loads):.1f}, range {min(loads):.1f} to "
                     f"{max(loads):.1f} ({source}); time figures are inflated by it.")
    return lines


def report_markdown(an: Analysis, plots: dict[str, str], problems: list[str],
                    plot_errors: list[str], timing: list[str] = ()) -> str:  # fmt: skip
    n = len(an.rows)
    counts: dict[str, int] = defaultdict(int)
    for r in an.rows:
        counts[r["status"]] += 1
    env = an.meta.get("environment", {}) if an.meta else {}
    lines = ["# clion-bench report", ""]
    if an.meta:
        opts = ", ".join(f"`{o}`" for o in an.meta.get("optimizers", []))
        lines.append(f"Preset: `{an.meta.get('preset')}`; optimizers: {opts}; tuning seeds "
                     f"{an.meta.get('tuning_seeds')}, final seeds {an.meta.get('final_seeds')}.")
    else:
        lines.append("`bench.json` is missing or unreadable: the search (budgets, extensions, "
                     "edges) cannot be reconstructed; tables show the runs as found.")
    lines += [f"Runs: {n} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})."]
    if env:
        lines += [f"Host: {env.get('host', '?')} ({env.get('cpus', '?')} CPUs), "
                  f"torch {env.get('torch', '?')}, transformers {env.get('transformers', '?')}, "
                  f"Python {env.get('python', '?')}, commit {str(env.get('commit', '?'))[:10]}."]
    lines += list(timing)
    lines.append("")
    lines += ["## Findings", "",
              "Generated from the results by `clion-bench report`; each difference is paired "
              "by seed, with its Holm-corrected 95% bootstrap interval.", "", FINDINGS_BEGIN]
    lines += findings(an)
    lines += [FINDINGS_END, ""]
    if problems or an.missing or plot_errors:
        lines += ["## Missing or unreadable", ""]
        lines += [f"- {p}" for p in problems + an.missing + plot_errors]
        lines.append("")
    lines += ["## Protocol", "", PROTOCOL_TEXT]
    if "profile" in plots:
        lines += ["## Performance profile", "",
                  "Fraction of workloads on which each optimizer reaches the target within "
                  "τ times the steps of the fastest (median over final seeds; AlgoPerf-style, "
                  "on steps rather than time since the host is shared).", "",
                  f"![performance profile]({plots['profile']})", ""]  # fmt: skip
        prof = _profile(an)
        if prof:
            _, rho = prof
            lines += _table(["optimizer", *[f"τ={t:g}" for t in PROFILE_TAUS]],
                            [[describe_optimizer(o), *[f"{v:.2f}" for v in rho[o]]]
                             for o in sorted(rho, key=optimizer_order)])  # fmt: skip
            lines.append("")
    if "final" in plots:
        lines += [f"![held-out metric per workload]({plots['final']})", ""]
    for wa in an.workloads:
        lines += workload_markdown(an, wa, plots)
    return "\n".join(lines)


# ------------------------------------------------------------------------------ plots


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


def _mean_curve(results: list[dict], key: str) -> tuple[list[int], list[float], list[float],
                                                         list[float]]:  # fmt: skip
    by_step: dict[int, list[float]] = defaultdict(list)
    for r in results:
        for step, value in curve(r, key):
            by_step[step].append(value)
    steps = sorted(by_step)
    return (steps, [statistics.fmean(by_step[s]) for s in steps],
            [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps])  # fmt: skip


def make_plots(an: Analysis, results: list[dict], plot_dir: Path
               ) -> tuple[dict[str, str], list[str]]:  # fmt: skip
    """Write the PNGs; returns (plot key -> path relative to the report, errors)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, str] = {}
    errors: list[str] = []
    by_id = {r["run_id"]: r for r in results}

    def attempt(key: str, fname: str, draw) -> None:
        fig = None
        try:
            fig = draw()
            if fig is not None:
                _save(fig, plot_dir / fname)
                plots[key] = f"plots/{fname}"
        except Exception as err:  # a plot must never cost the report
            errors.append(f"plot `{fname}` not drawn: {type(err).__name__}: {err}")
        finally:
            if fig is not None:
                plt.close(fig)

    for wa in an.workloads:
        name = f"{wa.name}-{wa.max_steps}"

        def loss_plot(wa=wa):
            fig, axes = plt.subplots(1, 2, figsize=(11, 4))
            drawn = False
            for opt, row in wa.rows.items():
                runs = [by_id[r["run_id"]] for r in row.finals
                        if r["status"] == "ok" and r["run_id"] in by_id]  # fmt: skip
                for ax, key in zip(axes, ("loss", "eval_loss"), strict=True):
                    steps, mean, lo, hi = _mean_curve(runs, key)
                    if steps:
                        (line,) = ax.plot(steps, mean, label=describe_optimizer(opt))
                        ax.fill_between(steps, lo, hi, alpha=0.2, color=line.get_color())
                        drawn = True
            if not drawn:
                plt.close(fig)
                return None
            for ax, title in zip(axes, ("training loss", "validation loss"), strict=True):
                ax.set_title(f"{wa.name}: {title} (final seeds)")
                ax.set_xlabel("step")
                ax.grid(alpha=0.3)
            axes[1].legend(fontsize=7)
            return fig

        attempt(f"loss:{wa.name}:{wa.max_steps}", f"loss-{name}.png", loss_plot)
        for key, diag, log in (("sign", SIGN_KEY, False), ("minc", MINC_KEY, True)):

            def diag_plot(wa=wa, diag=diag, log=log):
                fig, ax = plt.subplots(figsize=(6, 4))
                drawn = False
                clion = [o for o in wa.rows if o.startswith("clion")]
                for i, opt in enumerate(clion):
                    row = wa.rows[opt]
                    runs = [by_id[r["run_id"]] for r in row.finals + row.tune
                            if r["status"] != "failed" and r["run_id"] in by_id]  # fmt: skip
                    steps, mean, _, _ = _mean_curve(runs, diag)
                    if log:  # an exact 0 (no non-zero coordinate) cannot be drawn on a log axis
                        kept = [(s, v) for s, v in zip(steps, mean, strict=True) if v > 0]
                        steps, mean = [s for s, _ in kept], [v for _, v in kept]
                    if steps:
                        ax.plot(steps, mean, ("-", "--", ":", "-.")[i % 4], color=f"C{i}",
                                label=f"{describe_optimizer(opt)} (all trials)")
                        drawn = True
                if not drawn:
                    plt.close(fig)
                    return None
                ax.set_title(f"{wa.name}: CLion {diag} (mean over runs)")
                ax.set_xlabel("step")
                if log:
                    ax.set_yscale("log")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=6)
                return fig

            attempt(f"{key}:{wa.name}:{wa.max_steps}", f"clion-{key}-{name}.png", diag_plot)

    def final_plot():
        shown = [wa for wa in an.workloads if any(r.ok_finals() for r in wa.rows.values())]
        if not shown:
            return None
        fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 4), squeeze=False)
        for ax, wa in zip(axes[0], shown, strict=True):
            labels, means, sds = [], [], []
            for opt, row in wa.rows.items():
                values = [r["test_metric"] for r in row.ok_finals()]
                labels.append(describe_optimizer(opt))
                means.append(statistics.fmean(values) if values else math.nan)
                sds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
            ax.bar(range(len(labels)), means, yerr=sds, capsize=4, color="C0")
            ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
            ax.set_title(f"{wa.name} ({wa.max_steps} st.)", fontsize=9)
            ax.set_ylabel(f"test {wa.workload.metric.removeprefix('eval_')}")
            if wa.workload.metric == "perplexity" and any(m > 0 for m in means
                                                          if math.isfinite(m)):  # fmt: skip
                ax.set_yscale("log")
        fig.tight_layout()
        return fig

    attempt("final", "final-metric.png", final_plot)

    def profile_plot():
        prof = _profile(an)
        if prof is None:
            return None
        measures, _ = prof
        taus = [1 + i * 0.01 for i in range(301)]
        rho = performance_profile(measures, taus)
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, opt in enumerate(sorted(rho, key=optimizer_order)):
            ax.step(taus, rho[opt], where="post", label=describe_optimizer(opt),
                    linestyle=("-", "--", ":", "-.")[i % 4])
        ax.set_xlabel("τ (steps to target / fastest's)")
        ax.set_ylabel("fraction of workloads")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title("performance profile (steps to target)")
        return fig

    attempt("profile", "performance-profile.png", profile_plot)
    return plots, errors


# ------------------------------------------------------------------------------ entry points


def summary_rows(results: list[dict]) -> list[dict]:
    """Summaries of every run, with steps-to-target against each workload's target."""
    first = [summarize(r) for r in results]
    an = Analysis(first, None, None)
    targets = {(wa.name, wa.max_steps): wa.target for wa in an.workloads}
    return [summarize(r, targets.get((r["workload"], int(r.get("max_steps") or 0))))
            for r in results]  # fmt: skip


def write_report(out_dir: Path) -> dict[str, Path]:
    """Write ``report.md``, ``results.csv`` and ``plots/*.png`` into ``out_dir``.

    Raises :class:`ReportError` only when ``out_dir`` cannot be written.
    """
    try:
        probe_writable(out_dir)
        return _write_report(out_dir)
    except OSError as err:  # read-only, or a disk that filled up on the way
        raise ReportError(f"cannot write the report into {out_dir}: "
                          f"{err.strerror or err}") from None


def _write_report(out_dir: Path) -> dict[str, Path]:
    results, problems = load_results(out_dir)
    meta = read_json(out_dir / "bench.json")
    if meta is not None and matrix_from(meta) is None:
        problems.append("`bench.json` is from another version or unreadable: the search "
                        "details are not shown")  # fmt: skip
        meta = None  # its fields are not what the report reads: show the runs as found
    rows = summary_rows(results)
    an = analyze(rows, meta if isinstance(meta, dict) else None)
    if an.meta is not None:
        env = next((r.get("environment") for r in results if r.get("environment")), None) or {}
        an.meta = {**an.meta, "environment": {
            "host": env.get("host"), "cpus": env.get("cpus"), "python": env.get("python"),
            "torch": (env.get("versions") or {}).get("torch"),
            "transformers": (env.get("versions") or {}).get("transformers"),
            "commit": env.get("git_commit"),
        }}  # fmt: skip
    plots, plot_errors = make_plots(an, results, out_dir / "plots")
    atomic_write_text(out_dir / "results.csv", rows_csv(rows))
    timing = timing_lines(results, out_dir / "host-load.log")
    atomic_write_text(out_dir / "report.md",
                      report_markdown(an, plots, problems, plot_errors, timing))  # fmt: skip
    return {
        "report": out_dir / "report.md",
        "csv": out_dir / "results.csv",
        **{k: out_dir / v for k, v in plots.items()},
    }


def findings_from_csv(csv_text: str, meta: dict | None) -> list[str]:
    """The Findings lines recomputed from ``results.csv`` and ``bench.json`` alone."""
    return findings(analyze(rows_from_csv(csv_text), meta))


def findings_block(report_text: str) -> list[str]:
    """The Findings lines of a written report (between the markers)."""
    begin = report_text.index(FINDINGS_BEGIN) + len(FINDINGS_BEGIN)
    end = report_text.index(FINDINGS_END)
    return [ln for ln in report_text[begin:end].strip("\n").splitlines()]
