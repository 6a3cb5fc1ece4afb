"""``clion-bench``: run a fair AdamW / Lion / CLion comparison and report it.

    clion-bench run --preset smoke --out bench-out
    clion-bench report bench-out
    clion-bench study gen-gap --preset cpu --tuned docs/benchmarks/cpu-2026-11-29 --out gap-out
    clion-bench study stability --preset convex --out stability-out
    clion-bench steps ...          (time one optimizer step on real model shapes)
    clion-bench throughput ...     (samples/s of whole Trainer steps per optimizer)

Bad arguments (and an output directory that cannot be used, is in use by another ``run``
or holds another kind of experiment) exit with one line on stderr and status 2; an
interrupted ``run`` exits with 128 + the signal number and resumes on the next call; a disk
that fills up on the way, or runs killed from outside, end it with one line and status 1
(the next call resumes, redoing the killed runs).

argparse (with :class:`~clion_hf.bench.argtypes.OneLineParser`), not a CLI framework: the
standard library serves, and transformers' scripts spell their options the same way.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .argtypes import OneLineParser, bounded_int, positive_int
from .progress import ticker

if TYPE_CHECKING:
    from .protocol import Experiment

FINAL_SEED_BASE = 100  # final seeds are 100, 101, ...: never a tuning seed (0, 1, ...)
# Upper bounds of the counts that size the plan (every run is planned up front: a count of
# 10^9 filled memory until the OOM killer came) and of what runs at once.
MAX_SEEDS = 1000
MAX_TUNING_SEEDS = 100
MAX_JOBS = 256
MAX_THREADS = 1024
MAX_SIZES = 30  # N_max / 2^29 is below one example for every workload


def _add_experiment_arguments(p: argparse.ArgumentParser, out: str, launches: bool = True
                              ) -> None:  # fmt: skip
    """The flags of every experiment that runs (and resumes) into ``--out``; ``launches``:
    its runs are recipes launched by the runner (``run``, ``study gen-gap``)."""
    p.add_argument("--out", default=out, help=f"output directory (default: {out})")
    if launches:
        p.add_argument("--jobs", type=bounded_int(MAX_JOBS),
                       help="runs at a time (default: the preset's)")
        p.add_argument(
            "--threads", type=bounded_int(MAX_THREADS),
            help="torch threads per run (default: all cores with --jobs 1, else cores // jobs)",
        )  # fmt: skip
        p.add_argument("--recipes_dir", help="directory with the recipes (default: the "
                       "installed package's, or the checkout's)")  # fmt: skip
    p.add_argument("--dry_run", action="store_true", help="print the plan, run nothing")
    p.add_argument("--retry_failed", action="store_true", help="rerun runs recorded as failed")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")


def _add_study_arguments(p: argparse.ArgumentParser, presets: Iterable[str]) -> None:
    p.add_argument("--preset", help=f"one of: {', '.join(presets)} (not needed with "
                   "--report_only)")  # fmt: skip
    p.add_argument("--report_only", action="store_true",
                   help="write the report from the results already in --out, run nothing")


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    from .specs import PRESETS, WORKLOADS

    p.add_argument("--preset", required=True, help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--workloads", help=f"comma list (default: preset's): {', '.join(WORKLOADS)}")
    p.add_argument(
        "--optimizers",
        help="comma list of specs NAME[:KEY=VALUE,...], e.g. "
        "'adamw,lion:caution=true,clion:mode=element,nu=1e-4' (default: the preset's); "
        "lr=X pins an optimizer's lr instead of its grid",
    )
    p.add_argument("--seeds", type=bounded_int(MAX_SEEDS),
                   help="final (reported) seeds per optimizer (default: the preset's)")
    p.add_argument("--tuning_seeds", type=bounded_int(MAX_TUNING_SEEDS),
                   help="seeds each tried configuration runs on (default: the preset's)")
    p.add_argument("--max_steps", type=positive_int, help="override every workload's steps")
    p.add_argument("--keep_outputs", action="store_true", help="keep each run's output_dir")
    _add_experiment_arguments(p, "bench-out")


def _add_gen_gap_arguments(p: argparse.ArgumentParser) -> None:
    from .study import STUDY_PRESETS

    _add_study_arguments(p, STUDY_PRESETS)
    p.add_argument("--tuned", help="a `clion-bench run` output directory whose chosen "
                   "hyper-parameters the optimizers use (its bench.json and results/ or "
                   "results.csv); not needed for specs that pin lr=")  # fmt: skip
    p.add_argument("--workloads", help="comma list (default: the study preset's)")
    p.add_argument("--optimizers", help="comma list of specs as for `run` (default: the "
                   "study preset's); each must be in --tuned's run or pin lr=")  # fmt: skip
    p.add_argument("--seeds", type=bounded_int(MAX_SEEDS),
                   help="seeds per size (default: the preset's)")
    p.add_argument("--sizes", type=bounded_int(MAX_SIZES),
                   help="number of nested sizes N_max/2^k (default: the preset's: 5, cpu-v2 8)")
    p.add_argument("--no_nu_sweep", action="store_true", help="skip the ν sweep")
    _add_experiment_arguments(p, "gen-gap-out")


def _add_stability_arguments(p: argparse.ArgumentParser) -> None:
    from .stability import STABILITY_PRESETS

    _add_study_arguments(p, STABILITY_PRESETS)
    p.add_argument("--pairs", type=positive_int, help="pairs per arm (default: the preset's)")
    _add_experiment_arguments(p, "stability-out", launches=False)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="clion-bench", description="Fair AdamW / Lion / CLion comparison on the recipes.",
        epilog="Options are spelled with underscores (--max_steps), as in transformers' "
        "scripts; the hyphenated spelling (--max-steps) is accepted too.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run_arguments(sub.add_parser(
        "run", help="train every optimizer on every workload: tune each one's learning rate, "
        "then train the final seeds (resumes where it stopped)",
    ))  # fmt: skip
    rep = sub.add_parser(
        "report", help="write report.md, results.csv and plots from a run's results"
    )
    rep.add_argument("dir", help="a `clion-bench run` output directory")
    rep.add_argument("--no_progress", action="store_true", help="no elapsed-time line")
    study = sub.add_parser(
        "study", help="experiments that reuse a run's tuned settings (gen-gap: the "
        "generalization gap against training-set size and ν)",
    )  # fmt: skip
    studies = study.add_subparsers(dest="study", required=True)
    _add_gen_gap_arguments(studies.add_parser(
        "gen-gap", help="generalization gap against training-set size N and against ν: "
        "runs (or resumes) the study, then writes report.md, results.csv and plots",
    ))  # fmt: skip
    _add_stability_arguments(studies.add_parser(
        "stability", help="drift between runs on neighbouring training sets (the quantity the "
        "paper's bounds are about): runs (or resumes) the study, then writes the report",
    ))  # fmt: skip
    steps = sub.add_parser(
        "steps", help="time one optimizer step (AdamW, Lion, CLion, other Lions) on the "
        "parameter shapes of GPT-2, BERT and ViT",
    )  # fmt: skip
    throughput = sub.add_parser(
        "throughput", help="samples/s of whole Trainer training steps (forward, backward, "
        "optimizer) per optimizer, on a recipe's model",
    )  # fmt: skip
    # steps.py is imported only when asked for: run/report must work without it
    if argv[:1] == ["steps"]:
        try:
            from . import steps as steps_module
        except ImportError as err:
            parser.error(f"the steps subcommand is unavailable: {err}")
        steps_module.add_arguments(steps)
    if argv[:1] == ["throughput"]:
        from . import throughput as throughput_module

        throughput_module.add_arguments(throughput)
    return parser


def _cmd_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .protocol import Matrix
    from .specs import SpecError, get_preset, parse_optimizers, parse_workloads

    try:
        preset = get_preset(args.preset)
        # `--workloads ''` is an error, not "the preset's": only a missing flag means that
        workloads = (parse_workloads(args.workloads, preset.workloads)
                     if args.workloads is not None
                     else list(preset.workloads))  # fmt: skip
        optimizers = parse_optimizers(args.optimizers if args.optimizers is not None
                                      else ",".join(preset.optimizers))  # fmt: skip
    except SpecError as err:
        parser.error(str(err))
    tuning = tuple(range(args.tuning_seeds)) if args.tuning_seeds else preset.tuning_seeds
    final = (tuple(FINAL_SEED_BASE + i for i in range(args.seeds)) if args.seeds
             else preset.final_seeds)  # fmt: skip
    matrix = Matrix(preset, workloads, optimizers, tuning, final, args.max_steps)
    code = _run_experiment(matrix, args, parser, keep_outputs=args.keep_outputs)
    if code == 0 and not args.dry_run:
        print(f"clion-bench: next: clion-bench report {args.out}")
    return code


def _recipes_dir(args: argparse.Namespace, parser: argparse.ArgumentParser,
                 experiment: Experiment) -> Path:  # fmt: skip
    """The recipes directory, with the accelerate config and every recipe ``experiment``
    launches; a usage error naming what is missing otherwise."""
    from .runner import find_recipes_dir
    from .specs import WORKLOADS

    recipes_dir = find_recipes_dir(args.recipes_dir)
    if recipes_dir is None:
        parser.error(
            f"recipes directory not found: {args.recipes_dir}" if args.recipes_dir else
            "this clion-hf installation has no recipes (neither clion_hf/recipes/ of a wheel "
            "nor a checkout's recipes/); reinstall clion-hf or pass --recipes_dir"
        )
    config = recipes_dir / "accelerate_configs" / f"{experiment.preset.accelerate_config}.yaml"
    needed = [config, *(recipes_dir / WORKLOADS[w].recipe for w in experiment.workloads)]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        parser.error(f"missing recipe file(s): {', '.join(missing)}")
    return recipes_dir


def _run_experiment(experiment: Experiment, args: argparse.Namespace,
                    parser: argparse.ArgumentParser, keep_outputs: bool = False) -> int:
    """``--dry_run``'s plan, or run (resume) ``experiment`` into ``--out``."""
    from .runner import Runner

    recipes_dir = _recipes_dir(args, parser, experiment)
    out = Path(args.out)
    if args.dry_run:
        for line in experiment.dry_run_lines(recipes_dir, out.resolve()):
            print(line)
        return 0
    jobs = args.jobs or experiment.jobs
    threads = args.threads or (max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None)
    runner = Runner(experiment, out, recipes_dir, jobs=jobs, threads_per_job=threads,
                    retry_failed=args.retry_failed, keep_outputs=keep_outputs,
                    progress=not args.no_progress)  # fmt: skip
    return _drive(runner, out, parser)


def _drive(runner: Any, out: Path, parser: argparse.ArgumentParser) -> int:
    """Run (or resume) ``runner``'s runs; the exit status (interruptions: 128 + signal)."""
    from .launcher import LauncherDied
    from .runner import Interrupted, OutDirError

    try:
        counts = runner.run()
    except OutDirError as err:
        parser.error(str(err))
    except LauncherDied as err:
        print(f"clion-bench: {err}; finished runs are kept, rerun to resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("clion-bench: interrupted; finished runs are kept, rerun to resume",
              file=sys.stderr)  # fmt: skip
        return 130
    except Interrupted as err:
        print("clion-bench: terminated; finished runs are kept, rerun to resume", file=sys.stderr)
        return 128 + err.signum
    except OSError as err:  # a full disk (results, logs, bench.json), or one gone read-only
        where = f": {err.filename}" if err.filename else ""
        print(f"clion-bench: error: {err.strerror or err}{where}; finished runs are kept, "
              "rerun to resume", file=sys.stderr)  # fmt: skip
        return 1
    summary = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "killed" or v)
    print(f"clion-bench: done ({summary}; {runner.launched} launched); results in {out}/results")
    if counts.get("killed"):
        print(f"clion-bench: {counts['killed']} run(s) were killed by a signal from outside "
              "(not recorded, see their logs); rerun to redo them", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _cmd_report(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .report import write_report

    out = Path(args.dir)
    if not out.is_dir():
        parser.error(f"no such directory: {out}")
    _check_kind(out, parser, "run")
    has_runs = (out / "results").is_dir() and any((out / "results").glob("*.json"))
    # a committed report keeps results.csv (and bench.json), not the per-run files
    if not has_runs and not (out / "results.csv").is_file():
        parser.error(f"no results in {out}/results (run `clion-bench run --out {out}` first)")
    n = len(list((out / "results").glob("*.json")))
    with ticker(f"clion-bench report: reading {n} results, drawing plots",
                enabled=not args.no_progress):  # fmt: skip
        return _write_report(out, parser, write_report)


def _check_kind(out: Path, parser: argparse.ArgumentParser, want: str) -> None:
    """A usage error naming the right command unless ``out`` is new or holds the kind of
    experiment ``want`` (``run``, ``study gen-gap``, ...; ``study``: a study whose
    bench.json is lost, is accepted by every study)."""
    from .runner import experiment_kind, kind_text

    kind = experiment_kind(out)
    if kind is not None and kind != want and not (kind == "study" and want != "run"):
        how = (f"`clion-bench report {out}`" if kind == "run" else
               f"`clion-bench {kind} --report_only --out {out}`")  # fmt: skip
        parser.error(f"{out} holds {kind_text(kind)}, not {kind_text(want)}: write its report "
                     f"with {how}")  # fmt: skip


def _write_report(out: Path, parser: argparse.ArgumentParser,
                  write: Callable[[Path], dict[str, Path]]) -> int:
    """Write ``out``'s report with ``write`` and print the files written."""
    from .report import ReportError

    try:
        written = write(out)
    except ReportError as err:
        parser.error(str(err))
    for path in written.values():
        print(path)
    return 0


def _study(args: argparse.Namespace, parser: argparse.ArgumentParser, name: str,
           build: Callable[[], Any], write: Callable[[Path], dict[str, Path]]) -> int:
    """``clion-bench study NAME``: run (resume) the study, then write its report; with
    ``--report_only``, only the report."""
    from .specs import SpecError

    out = Path(args.out)
    if args.report_only:
        if not (out / "results").is_dir() or not any((out / "results").glob("*.json")):
            parser.error(f"no results in {out}/results (run `clion-bench study {name} --out "
                         f"{out}` first)")  # fmt: skip
        _check_kind(out, parser, f"study {name}")
        return _write_report(out, parser, write)
    if args.preset is None:
        parser.error("the following arguments are required: --preset")
    try:
        study = build()
    except SpecError as err:
        parser.error(str(err))
    if name == "stability":  # its runs train in this process: no recipes, no launcher
        from .stability import dry_run_lines, make_runner

        if args.dry_run:
            for line in dry_run_lines(study):
                print(line)
            return 0
        code = _drive(make_runner(study, out, progress=not args.no_progress,
                                  retry_failed=args.retry_failed), out, parser)  # fmt: skip
    else:
        code = _run_experiment(study, args, parser)
    if code != 0 or args.dry_run:
        return code
    _check_kind(out, parser, f"study {name}")
    return _write_report(out, parser, write)


def _cmd_study(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .specs import parse_optimizers, parse_workloads

    if args.study == "stability":
        from .stability import build_stability
        from .stability_report import write_stability_report

        return _study(args, parser, "stability", lambda: build_stability(args.preset, args.pairs),
                      write_stability_report)  # fmt: skip
    from .study import build_study
    from .study_report import write_study_report

    def build() -> Any:
        return build_study(
            args.preset,
            parse_workloads(args.workloads) if args.workloads is not None else None,
            parse_optimizers(args.optimizers) if args.optimizers is not None else None,
            args.tuned, args.seeds, args.sizes, not args.no_nu_sweep,
        )  # fmt: skip

    return _study(args, parser, "gen-gap", build, write_study_report)


def main(argv: list[str] | None = None) -> int:
    # SIGTERM means "stop, keep what finished" from the first instant: the runner installs
    # its own handler (which also stops the children) only once the plan is built, after
    # torch has loaded (seconds on a loaded host); before and after that, nothing runs.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_terminated) if in_main_thread else None
    try:
        return _main(argv)
    except BrokenPipeError:  # `clion-bench run --dry_run | head`: the reader left, fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        if in_main_thread and argv is not None:
            signal.signal(signal.SIGTERM, previous)
        elif in_main_thread:
            # As a program (the console script, `python -m`) the work is done and saved:
            # ignore SIGTERM from here to the exit. Interpreter shutdown resets Python-level
            # handlers to the default action before torch's teardown ends, so a SIGTERM
            # there would kill the process (-15) instead of letting it exit with its code.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _exit_terminated(signum: int, frame: Any) -> None:
    print("clion-bench: terminated; finished runs are kept, rerun to resume", file=sys.stderr)
    raise SystemExit(128 + signum)


def _main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command == "run":
        return _cmd_run(args, parser)
    if args.command == "report":
        return _cmd_report(args, parser)
    if args.command == "study":
        return _cmd_study(args, parser)
    if args.command == "throughput":
        from . import throughput

        return throughput.run(args)
    from . import steps as steps_module

    return int(steps_module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
