"""Turn a results directory into ``report.md``, ``results.csv`` and PNG plots.

Definitions used in the report (also written into it):

* final metric: the recipe's final validation metric (``perplexity`` for language models,
  ``eval_accuracy`` for classifiers); best metric: the best over all evaluations of the run;
  validation chooses the lr, so the number to compare optimizers on is the
* held-out metric: the same metric on the recipe's ``test`` split (``test_perplexity``,
  ``test_accuracy``), data used neither for training nor for choosing the lr;
* generalization gap: final ``eval_loss`` minus the last logged training ``loss`` (a mean
  over the last logging window), i.e. validation minus training loss at the end;
* chosen lr: per (workload, optimizer), the lr whose seed-0 ("tune") run has the best final
  metric among runs that did not diverge or fail; mean ± std is over every seed at that lr;
* target: per workload, the worst final metric among AdamW's seeds at its chosen lr (what
  the baseline reliably reaches, as in AlgoPerf's time-to-target); without AdamW runs, the
  median final metric of the chosen-lr runs. Steps/seconds to target: the first evaluation
  that reaches it (mean over the seeds that reach it; "reached" counts them).
"""

from __future__ import annotations

import csv
import io
import math
import os
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .runner import atomic_write_text, read_json
from .specs import MODES, WORKLOADS, SpecError, fmt_float, parse_optimizer

SIGN_KEY = "optim/sign_fraction"
MINC_KEY = "optim/min_abs_c"


# ------------------------------------------------------------------------------ per run


def load_results(out_dir: Path) -> list[dict]:
    """Every readable result file under ``out_dir/results`` (sorted for stable output)."""
    results = []
    for path in sorted((out_dir / "results").glob("*.json")):
        data = read_json(path)
        if isinstance(data, dict) and "run_id" in data and data.get("workload") in WORKLOADS:
            results.append(data)
    return results


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def final_metric(result: dict) -> float | None:
    """The run's final validation metric, None if it has none (or it is not finite)."""
    workload = WORKLOADS[result["workload"]]
    res = result.get("all_results") or {}
    value = _num(res.get(workload.metric))
    if value is None and workload.metric == "perplexity" and _num(res.get("eval_loss")) is not None:
        value = workload.curve_to_metric(res["eval_loss"])
    return value if value is not None and math.isfinite(value) else None


def test_metric(result: dict) -> float | None:
    """The run's metric on the held-out test split, None if the recipe had none."""
    workload = WORKLOADS[result["workload"]]
    res = result.get("all_results") or {}
    if workload.metric == "perplexity":
        value = _num(res.get("test_perplexity"))
        if value is None and _num(res.get("test_loss")) is not None:
            value = workload.curve_to_metric(res["test_loss"])
    else:
        value = _num(res.get(workload.metric.replace("eval_", "test_", 1)))
    return value if value is not None and math.isfinite(value) else None


def better(a: float, b: float, greater_is_better: bool) -> bool:
    return a > b if greater_is_better else a < b


def choose_lr(results: Iterable[dict]) -> float | None:
    """The lr of the best final metric among ``results`` that finished ``ok``
    (ties: lower final eval_loss, then the smaller lr); None if none did."""
    scored = []
    for r in results:
        value = final_metric(r) if r.get("status") == "ok" else None
        if value is None:
            continue
        sign = -1.0 if r.get("greater_is_better", WORKLOADS[r["workload"]].greater_is_better) else 1
        loss = _num((r.get("all_results") or {}).get("eval_loss"))
        scored.append((sign * value, loss if loss is not None else math.inf, r["lr"]))
    return min(scored)[2] if scored else None


def curve(result: dict, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every log entry that has ``key``, last one per step."""
    points: dict[int, float] = {}
    for entry in result.get("log_history") or []:
        value = _num(entry.get(key))
        if value is not None and "step" in entry:
            points[int(entry["step"])] = value
    return sorted(points.items())


def summarize(result: dict, target: float | None = None) -> dict[str, Any]:
    """The numbers of one run that go into the tables and ``results.csv``."""
    workload = WORKLOADS[result["workload"]]
    res = result.get("all_results") or {}
    history = result.get("log_history") or []
    final = final_metric(result)
    evals = [(s, workload.curve_to_metric(v)) for s, v in curve(result, workload.curve_key)]
    evals = [(s, v) for s, v in evals if math.isfinite(v)]
    candidates = [v for _, v in evals] + ([final] if final is not None else [])
    best = None
    if candidates:
        best = max(candidates) if workload.greater_is_better else min(candidates)
    train_losses = curve(result, "loss")
    train_end = train_losses[-1][1] if train_losses else None
    eval_loss = _num(res.get("eval_loss"))
    gap = eval_loss - train_end if eval_loss is not None and train_end is not None else None

    def column_max(key: str) -> float | None:
        values = [v for e in history if (v := _num(e.get(key))) is not None]
        return max(values) if values else None

    signs = [v for _, v in curve(result, SIGN_KEY)]
    mins = [v for _, v in curve(result, MINC_KEY)]
    steps_to = seconds_to = None
    if target is not None and result.get("status") == "ok":
        elapsed = {int(e["step"]): _num(e.get("elapsed_s")) for e in history
                   if "step" in e and workload.curve_key in e}  # fmt: skip
        for step, value in evals:
            if value == target or better(value, target, workload.greater_is_better):
                steps_to, seconds_to = step, elapsed.get(step)
                break
    return {
        "run_id": result["run_id"],
        "workload": result["workload"],
        "optimizer": result["optimizer"],
        "lr": result["lr"],
        "weight_decay": result["weight_decay"],
        "seed": result["seed"],
        "max_steps": result["max_steps"],
        "phase": result.get("phase", ""),
        "status": result["status"],
        "reason": result.get("reason", ""),
        "metric": workload.metric,
        "final_metric": final,
        "best_metric": best,
        "test_metric": test_metric(result),
        "eval_loss": eval_loss,
        "train_loss_end": train_end,
        "gen_gap": gap,
        "eval_accuracy": _num(res.get("eval_accuracy")),
        "eval_f1": _num(res.get("eval_f1")),
        "train_runtime_s": _num(res.get("train_runtime")),
        "wall_s": result.get("wall_s"),
        "steps_to_target": steps_to,
        "seconds_to_target": seconds_to,
        "optimizer_state_mb": column_max("optimizer_state_mb"),
        "peak_mem_mb": column_max("peak_mem_mb"),
        "sign_fraction_mean": statistics.fmean(signs) if signs else None,
        "min_abs_c_min": min(mins) if mins else None,
        "returncode": result.get("returncode"),
    }


# ------------------------------------------------------------------------------ aggregation


def describe_optimizer(label: str) -> str:
    """``clion:mode=element`` -> ``clion element ν=1e-4``; unparsable labels as they are."""
    try:
        spec = parse_optimizer(label)
    except SpecError:
        return label
    if spec.name != "clion":
        return label
    extra = [f"{k}={fmt_float(v) if isinstance(v, float) else v}" for k, v in spec.options
             if k not in ("mode", "nu")]  # fmt: skip
    return " ".join([f"clion {spec.get('mode')} ν={fmt_float(spec.get('nu'))}", *extra])


def optimizer_order(label: str) -> tuple:
    """Tables and plots list AdamW, then Lion, then CLion by mode (global … soft)."""
    try:
        spec = parse_optimizer(label)
    except SpecError:
        return (9, 0, label)
    rank = ("adamw", "lion", "clion").index(spec.name)
    mode = MODES.index(spec.get("mode")) if spec.name == "clion" else 0
    return (rank, mode, label)


def _mean_std(values: list[float], digits: int = 4) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}g}"
    return f"{mean:.{digits}g} ± {statistics.stdev(values):.2g}"


def _mean(values: list[Any], fmt: str = "{:.3g}") -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return fmt.format(statistics.fmean(values)) if values else "–"


class Group:
    """All runs of one workload at one step budget, and the derived choices."""

    def __init__(self, workload: str, max_steps: int, results: list[dict]) -> None:
        self.workload = WORKLOADS[workload]
        self.max_steps = max_steps
        self.results = results
        self.optimizers = sorted({r["optimizer"] for r in results}, key=optimizer_order)
        self.chosen: dict[str, float | None] = {}
        for opt in self.optimizers:
            runs = [r for r in results if r["optimizer"] == opt]
            tune = [r for r in runs if r.get("phase") == "tune"] or runs
            self.chosen[opt] = choose_lr(tune)
        self.target, self.target_rule = self._target()
        self.rows = {r["run_id"]: summarize(r, self.target) for r in results}

    def at_chosen(self, opt: str) -> list[dict]:
        lr = self.chosen.get(opt)
        return [r for r in self.results if r["optimizer"] == opt and r["lr"] == lr]

    def _target(self) -> tuple[float | None, str]:
        gib = self.workload.greater_is_better
        adamw = [v for r in self.at_chosen("adamw") if (v := final_metric(r)) is not None]
        if adamw:
            return (min(adamw) if gib else max(adamw)), "worst final metric of AdamW's seeds"
        finals = [v for o in self.optimizers for r in self.at_chosen(o)
                  if (v := final_metric(r)) is not None]  # fmt: skip
        if finals:
            return statistics.median(finals), "median final metric of the chosen-lr runs"
        return None, "none (no run finished)"


def build_groups(results: list[dict]) -> list[Group]:
    by_key: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in results:
        by_key[(r["workload"], int(r["max_steps"]))].append(r)
    order = list(WORKLOADS)
    keys = sorted(by_key, key=lambda k: (order.index(k[0]), k[1]))
    return [Group(w, steps, by_key[(w, steps)]) for w, steps in keys]


# ------------------------------------------------------------------------------ outputs

CSV_COLUMNS = [
    "run_id", "workload", "optimizer", "lr", "weight_decay", "seed", "max_steps", "phase",
    "status", "reason", "metric", "final_metric", "best_metric", "test_metric", "eval_loss",
    "train_loss_end",
    "gen_gap", "eval_accuracy", "eval_f1", "train_runtime_s", "wall_s", "steps_to_target",
    "seconds_to_target", "optimizer_state_mb", "peak_mem_mb", "sign_fraction_mean",
    "min_abs_c_min", "returncode",
]  # fmt: skip


def results_csv(groups: list[Group]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for g in groups:
        for row in g.rows.values():
            writer.writerow({k: "" if row[k] is None else row[k] for k in CSV_COLUMNS})
    return buf.getvalue()


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def group_markdown(g: Group, plots: dict[str, str]) -> list[str]:
    w = g.workload
    direction = "higher" if w.greater_is_better else "lower"
    target = "–" if g.target is None else f"{g.target:.4g}"
    lines = [
        f"## {w.name} ({g.max_steps} steps)",
        "",
        f"Metric: `{w.metric}` ({direction} is better). Target: {target} ({g.target_rule}).",
        "",
    ]
    header = ["optimizer", "chosen lr", "wd", "seeds ok", f"held-out test {w.metric}",
              f"final {w.metric}", f"best {w.metric}", "gen. gap", "steps to target",
              "s to target", "reached",
              "opt. state MB", "peak mem MB", "sign-branch frac.", "min abs(c)",
              "diverged", "failed"]  # fmt: skip
    rows = []
    for opt in g.optimizers:
        runs = [g.rows[r["run_id"]] for r in g.at_chosen(opt)]
        every = [g.rows[r["run_id"]] for r in g.results if r["optimizer"] == opt]
        ok = [r for r in runs if r["status"] == "ok"]
        lr = g.chosen.get(opt)
        reached = [r for r in ok if r["steps_to_target"] is not None]
        mins = [r["min_abs_c_min"] for r in ok if r["min_abs_c_min"] is not None]
        rows.append([
            describe_optimizer(opt),
            "–" if lr is None else fmt_float(lr),
            _mean([r["weight_decay"] for r in runs], "{:.3g}"),
            f"{len(ok)}/{len(runs)}",
            _mean_std([r["test_metric"] for r in ok]),
            _mean_std([r["final_metric"] for r in ok]),
            _mean_std([r["best_metric"] for r in ok]),
            _mean_std([r["gen_gap"] for r in ok], 3),
            _mean([r["steps_to_target"] for r in reached], "{:.0f}"),
            _mean([r["seconds_to_target"] for r in reached], "{:.1f}"),
            f"{len(reached)}/{len(ok)}",
            _mean([r["optimizer_state_mb"] for r in ok], "{:.3g}"),
            _mean([r["peak_mem_mb"] for r in ok], "{:.0f}"),
            _mean([r["sign_fraction_mean"] for r in ok], "{:.3g}") if opt.startswith("clion")
            else "",
            (f"{min(mins):.2g}" if mins else "–") if opt.startswith("clion") else "",
            str(sum(r["status"] == "diverged" for r in every)),
            str(sum(r["status"] == "failed" for r in every)),
        ])  # fmt: skip
    lines += _table(header, rows)
    # the sweep behind each choice: every grid point's seed-0 result
    lrs = sorted({r["lr"] for r in g.results})
    sweep = []
    for opt in g.optimizers:
        cells = []
        for lr in lrs:
            runs = [g.rows[r["run_id"]] for r in g.results if r["optimizer"] == opt
                    and r["lr"] == lr and r.get("phase", "tune") == "tune"]  # fmt: skip
            if not runs:
                cells.append("")
                continue
            r = runs[0]
            cell = (f"{r['final_metric']:.4g}" if r["final_metric"] is not None
                    else r["status"])  # fmt: skip
            if r["status"] != "ok":
                cell = r["status"]
            cells.append(f"**{cell}**" if lr == g.chosen.get(opt) else cell)
        sweep.append([describe_optimizer(opt), *cells])
    lines += ["", f"LR sweep (seed 0, final {w.metric}; bold = chosen):", ""]
    lines += _table(["optimizer", *[fmt_float(lr) for lr in lrs]], sweep)
    edge = []
    for opt in g.optimizers:
        tried = sorted({r["lr"] for r in g.results if r["optimizer"] == opt
                        and r.get("phase", "tune") == "tune"})  # fmt: skip
        if len(tried) > 1 and g.chosen.get(opt) in (tried[0], tried[-1]):
            edge.append(describe_optimizer(opt))
    if edge:
        lines += ["", "Chosen lr on the edge of its grid (the optimum may lie outside it): "
                  + ", ".join(edge) + "."]  # fmt: skip
    failed = [g.rows[r["run_id"]] for r in g.results if r["status"] != "ok"]
    if failed:
        lines += ["", "Runs that did not finish ok:", ""]
        lines += [f"- `{r['run_id']}` {r['optimizer']} lr={fmt_float(r['lr'])} seed={r['seed']}: "
                  f"{r['status']} ({r['reason']})" for r in failed]  # fmt: skip
    for key in ("loss", "sign", "minc"):
        if f"{key}:{w.name}:{g.max_steps}" in plots:
            lines += ["", f"![{key}]({plots[f'{key}:{w.name}:{g.max_steps}']})"]
    lines.append("")
    return lines


def report_markdown(groups: list[Group], plots: dict[str, str], meta: dict | None) -> str:
    n = sum(len(g.results) for g in groups)
    counts = defaultdict(int)
    for g in groups:
        for r in g.results:
            counts[r["status"]] += 1
    env = next((r.get("environment") for g in groups for r in g.results
                if r.get("environment")), {}) or {}  # fmt: skip
    lines = ["# clion-bench report", ""]
    if meta:
        opts = ", ".join(f"`{o}`" for o in meta.get("optimizers", []))
        lines.append(
            f"Preset: `{meta.get('preset')}`; seeds: {meta.get('seeds')}; optimizers: {opts}."
        )
    lines += [
        f"Runs: {n} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}). "
        f"Host: {env.get('host', '?')} ({env.get('cpus', '?')} CPUs), "
        f"torch {env.get('versions', {}).get('torch', '?')}, "
        f"transformers {env.get('versions', {}).get('transformers', '?')}, "
        f"commit {str(env.get('git_commit') or '?')[:10]}.",
        "",
        "Protocol: each optimizer's lr is tuned on its own grid with seed 0 (best final "
        "validation metric among runs that neither diverged nor failed), then the other seeds "
        "run at that lr; mean ± std is over all seeds at the chosen lr. Weight decay is set "
        "so that lr·wd equals AdamW's reference lr·wd in every run.",
        "",
        "Columns: *gen. gap* = final eval_loss − last logged training loss; *target* = worst "
        "final metric among AdamW's seeds at its chosen lr (median of all chosen-lr runs "
        "without AdamW); *steps/s to target* = first evaluation reaching it, mean over the "
        "seeds that reach it (*reached*); *opt. state MB* = optimizer state of one process; "
        "*sign-branch frac.* = mean over logged steps of CLion's fraction of updates taking "
        "the sign branch (from `optim/sign_fraction`); *min abs(c)* = smallest logged "
        "`optim/min_abs_c`.",
        "",
    ]
    if any(p.startswith("final") for p in plots):
        lines += [f"![final metrics]({plots['final']})", ""]
    has_clion = any(o.startswith("clion") for g in groups for o in g.optimizers)
    has_diag = any(k.startswith("sign:") for k in plots)
    if has_clion and not has_diag:
        lines += ["CLion diagnostics: no run logged `optim/sign_fraction`/`optim/min_abs_c`, "
                  "so the sign-branch columns and plots are empty.", ""]  # fmt: skip
    for g in groups:
        lines += group_markdown(g, plots)
    return "\n".join(lines)


# ------------------------------------------------------------------------------ plots


def _save(fig, path: Path) -> None:
    """Atomic PNG write (tmp file + os.replace)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mean_curve(results: list[dict], key: str) -> tuple[list[int], list[float], list[float],
                                                         list[float]]:  # fmt: skip
    """Steps, mean, min and max of ``key`` over runs (steps common to at least one run)."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for r in results:
        for step, value in curve(r, key):
            if math.isfinite(value):
                by_step[step].append(value)
    steps = sorted(by_step)
    return (steps, [statistics.fmean(by_step[s]) for s in steps],
            [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps])  # fmt: skip


def make_plots(groups: list[Group], plot_dir: Path) -> dict[str, str]:
    """Write the PNGs; returns plot key -> path relative to the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, str] = {}
    for g in groups:
        name = f"{g.workload.name}-{g.max_steps}"
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        drawn = False
        for opt in g.optimizers:
            runs = [r for r in g.at_chosen(opt) if r["status"] == "ok"]
            if not runs:
                continue
            label = f"{describe_optimizer(opt)} (lr {fmt_float(g.chosen[opt])})"
            for ax, key in zip(axes, ("loss", "eval_loss"), strict=True):
                steps, mean, lo, hi = _mean_curve(runs, key)
                if steps:
                    (line,) = ax.plot(steps, mean, label=label, marker="." if key != "loss" else "")
                    ax.fill_between(steps, lo, hi, alpha=0.2, color=line.get_color())
                    drawn = True
        if drawn:
            for ax, title in zip(axes, ("training loss", "validation loss"), strict=True):
                ax.set_title(f"{g.workload.name}: {title}")
                ax.set_xlabel("step")
                ax.grid(alpha=0.3)
            axes[1].legend(fontsize=7)
            _save(fig, plot_dir / f"loss-{name}.png")
            plots[f"loss:{g.workload.name}:{g.max_steps}"] = f"plots/loss-{name}.png"
        plt.close(fig)

        clion = [o for o in g.optimizers if o.startswith("clion")]
        for key, diag, log in (("sign", SIGN_KEY, False), ("minc", MINC_KEY, True)):
            fig, ax = plt.subplots(figsize=(6, 4))
            drawn = False
            for i, opt in enumerate(clion):
                # one line style per mode, one colour per lr: tab10 repeats after 10 lines
                style = ("-", "--", ":", "-.")[i % 4]
                # every grid point: the branch taken depends on the lr through c's scale
                lrs = sorted({r["lr"] for r in g.results if r["optimizer"] == opt})
                for j, lr in enumerate(lrs):
                    runs = [r for r in g.results if r["optimizer"] == opt and r["lr"] == lr
                            and r["status"] != "failed"]  # fmt: skip
                    steps, mean, _, _ = _mean_curve(runs, diag)
                    if log:  # log scale: an exact 0 (no non-zero coordinate) is left out
                        kept = [(s, v) for s, v in zip(steps, mean, strict=True) if v > 0]
                        steps, mean = [s for s, _ in kept], [v for _, v in kept]
                    if steps:
                        ax.plot(steps, mean, style, color=f"C{j}",
                                label=f"{describe_optimizer(opt)} lr {fmt_float(lr)}")
                        drawn = True
            if drawn:
                ax.set_title(f"{g.workload.name}: CLion {diag}")
                ax.set_xlabel("step")
                if log:
                    ax.set_yscale("log")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=6)
                fname = f"clion-{key}-{name}.png"
                _save(fig, plot_dir / fname)
                plots[f"{key}:{g.workload.name}:{g.max_steps}"] = f"plots/{fname}"
            plt.close(fig)

    # final metric bars with std error bars, one panel per workload group
    if groups:
        fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups), 4), squeeze=False)
        for ax, g in zip(axes[0], groups, strict=True):
            labels, means, stds = [], [], []
            for opt in g.optimizers:
                # held-out test metric where the recipe has a test split, else validation
                values = [v for r in g.at_chosen(opt) if r.get("status") == "ok"
                          and (v := test_metric(r) or final_metric(r)) is not None]  # fmt: skip
                labels.append(describe_optimizer(opt))
                means.append(statistics.fmean(values) if values else math.nan)
                stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
            ax.bar(range(len(labels)), means, yerr=stds, capsize=4, color="C0")
            ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
            ax.set_title(f"{g.workload.name} ({g.max_steps} st.)", fontsize=9)
            ax.set_ylabel(f"held-out {g.workload.metric.removeprefix('eval_')}")
            if g.workload.metric == "perplexity":
                ax.set_yscale("log")
        fig.tight_layout()
        _save(fig, plot_dir / "final-metric.png")
        plots["final"] = "plots/final-metric.png"
        plt.close(fig)
    return plots


def write_report(out_dir: Path) -> dict[str, Path]:
    """Write ``report.md``, ``results.csv`` and ``plots/*.png`` into ``out_dir``."""
    results = load_results(out_dir)
    groups = build_groups(results)
    plots = make_plots(groups, out_dir / "plots")
    meta = read_json(out_dir / "bench.json")
    atomic_write_text(out_dir / "results.csv", results_csv(groups))
    atomic_write_text(out_dir / "report.md", report_markdown(groups, plots, meta))
    return {
        "report": out_dir / "report.md",
        "csv": out_dir / "results.csv",
        **{k: out_dir / v for k, v in plots.items()},
    }
