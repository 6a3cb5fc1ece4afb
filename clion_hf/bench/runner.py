"""Run a benchmark matrix: one ``accelerate launch`` subprocess per run, resumable.

Layout of an output directory ``DIR``:

* ``DIR/bench.json``: the matrix (preset, workloads, optimizers, grids), for the record;
* ``DIR/results/<workload>-<run id>.json``: one file per finished run, written atomically,
  holding the run's full config, command, status and the recipe's metrics and log history;
* ``DIR/logs/<workload>-<run id>.log``: the child's stdout and stderr;
* ``DIR/work/<run id>/``: the recipe's ``--output_dir`` while it runs (removed afterwards
  unless ``keep_outputs``).

The run id is a hash of everything that defines the run (workload, optimizer, lr, weight
decay, seed, steps, recipe flags, accelerate config), so an existing result file means the
run is done: the next call skips it. A run is only recorded once its child exited on its
own; on Ctrl-C/SIGTERM the children's process groups are terminated and nothing is
written for them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from ..workloads import recipes_dir as installed_recipes_dir
from .specs import (
    COMMON_RECIPE_ARGS,
    WORKLOADS,
    OptimizerSpec,
    Preset,
    fmt_float,
    weight_decay_for,
)

SCHEMA = 1
LOG_TAIL_CHARS = 4000
KILL_GRACE_S = 10.0
LOSS_KEYS = ("loss", "eval_loss", "train_loss")
# A NaN/inf loss printed by the Trainer, for children that died before writing their state
_NONFINITE_LOSS = re.compile(r"""['"](?:eval_|train_)?loss['"]: ['"]?-?(?:nan|inf)""", re.I)


class Interrupted(Exception):
    """Raised in the main thread by SIGTERM (Ctrl-C raises KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


# ------------------------------------------------------------------------------ files


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory + ``os.replace``,
    so a reader (or a killed writer) never sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def read_json(path: Path) -> Any | None:
    """The parsed file, or None if it is missing or not valid JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def find_recipes_dir(explicit: str | None = None) -> Path | None:
    """``explicit``, else the installation's recipes (the wheel's copy or the checkout's)."""
    if explicit:
        path = Path(explicit)
        return path if path.is_dir() else None
    return installed_recipes_dir()


def launcher() -> list[str]:
    """``accelerate`` of this interpreter's environment (falls back to ``python -m``)."""
    exe = Path(sys.executable).with_name("accelerate")
    if exe.is_file():
        return [str(exe)]
    return [sys.executable, "-m", "accelerate.commands.launch"]


# ------------------------------------------------------------------------------ runs


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one run; its hash is the run id."""

    workload: str
    optimizer: str  # canonical spec label
    lr: float
    weight_decay: float
    seed: int
    max_steps: int
    accelerate_config: str
    recipe_args: tuple[str, ...]  # the optimizer's and the preset's flags
    phase: str = field(default="tune", compare=False)  # tune / confirm (not part of the id)
    preset: str = field(default="", compare=False)

    @property
    def run_id(self) -> str:
        key = {
            "workload": self.workload, "optimizer": self.optimizer, "lr": self.lr,
            "weight_decay": self.weight_decay, "seed": self.seed, "max_steps": self.max_steps,
            "accelerate_config": self.accelerate_config, "recipe_args": list(self.recipe_args),
        }  # fmt: skip
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return digest[:12]

    @property
    def stem(self) -> str:
        return f"{self.workload}-{self.run_id}"

    @property
    def title(self) -> str:
        return (
            f"{self.workload} {self.optimizer} lr={fmt_float(self.lr)} "
            f"wd={fmt_float(self.weight_decay)} seed={self.seed}"
        )

    def command(self, recipes_dir: Path, output_dir: Path) -> list[str]:
        config = recipes_dir / "accelerate_configs" / f"{self.accelerate_config}.yaml"
        recipe = recipes_dir / WORKLOADS[self.workload].recipe
        return [
            *launcher(), "launch", "--config_file", str(config), str(recipe),
            "--output_dir", str(output_dir),
            "--learning_rate", fmt_float(self.lr), "--weight_decay", fmt_float(self.weight_decay),
            "--seed", str(self.seed), "--max_steps", str(self.max_steps),
            *self.recipe_args,
        ]  # fmt: skip


def make_run(
    preset: Preset,
    workload: str,
    spec: OptimizerSpec,
    lr: float,
    seed: int,
    max_steps: int | None,
    phase: str,
) -> RunConfig:
    ws = preset.settings(workload, max_steps)
    args = (*spec.recipe_args(), *COMMON_RECIPE_ARGS, *preset.extra_args, *ws.extra_args)
    return RunConfig(
        workload=workload, optimizer=spec.label, lr=lr, weight_decay=weight_decay_for(lr, ws),
        seed=seed, max_steps=ws.max_steps, accelerate_config=preset.accelerate_config,
        recipe_args=tuple(args), phase=phase, preset=preset.name,
    )  # fmt: skip


def _finite(value: Any) -> bool:
    return not isinstance(value, int | float) or math.isfinite(value)


def nonfinite_loss(all_results: dict, log_history: list[dict]) -> bool:
    """Whether any logged loss (train, eval, final) is NaN or inf."""
    entries = [all_results, *log_history]
    return any(not _finite(e.get(k)) for e in entries for k in LOSS_KEYS if k in e)


def classify(returncode: int, all_results: dict | None, log_history: list[dict], log_tail: str
             ) -> tuple[str, str]:  # fmt: skip
    """``(status, reason)`` of a child that exited on its own: ok, diverged or failed."""
    if nonfinite_loss(all_results or {}, log_history):
        return "diverged", "a logged loss is NaN/inf"
    if returncode != 0:
        if _NONFINITE_LOSS.search(log_tail):
            return "diverged", f"exit status {returncode} after a NaN/inf loss in the log"
        return "failed", f"exit status {returncode}"
    if all_results is None:
        return "failed", "exit status 0 but no all_results.json"
    return "ok", ""


_ENV_CACHE: dict[str, Any] = {}


def environment_info(recipes_dir: Path) -> dict[str, Any]:
    """Host, package versions and the checkout's commit, recorded with every run."""
    if not _ENV_CACHE:
        versions = {}
        for pkg in ("clion-hf", "torch", "transformers", "accelerate", "datasets"):
            try:
                versions[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                versions[pkg] = None
        try:
            commit = subprocess.run(
                ["git", "-C", str(recipes_dir), "rev-parse", "HEAD"],
                capture_output=True, text=True, timeout=10,
            ).stdout.strip() or None  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            commit = None
        _ENV_CACHE.update(
            host=platform.node(), platform=platform.platform(), cpus=os.cpu_count(),
            python=platform.python_version(), versions=versions, git_commit=commit,
        )  # fmt: skip
    return dict(_ENV_CACHE)


# ------------------------------------------------------------------------------ the runner


@dataclass
class Matrix:
    """A preset restricted to some workloads/optimizers/seeds, ready to run."""

    preset: Preset
    workloads: list[str]
    optimizers: list[OptimizerSpec]
    seeds: int
    max_steps: int | None = None

    def grid(self, workload: str, spec: OptimizerSpec) -> list[float]:
        return self.preset.lr_grid(spec, self.preset.settings(workload, self.max_steps))

    def tune_runs(self) -> list[RunConfig]:
        """Phase 1: every grid point of every optimizer on seed 0."""
        return [
            make_run(self.preset, w, s, lr, 0, self.max_steps, "tune")
            for w in self.workloads
            for s in self.optimizers
            for lr in self.grid(w, s)
        ]

    def confirm_runs(self, chosen: dict[tuple[str, str], float | None]) -> list[RunConfig]:
        """Phase 2: seeds 1..N-1 at each (workload, optimizer)'s chosen lr."""
        runs = []
        for w in self.workloads:
            for s in self.optimizers:
                lr = chosen.get((w, s.label))
                if lr is not None:
                    runs += [
                        make_run(self.preset, w, s, lr, seed, self.max_steps, "confirm")
                        for seed in range(1, self.seeds)
                    ]
        return runs

    def n_confirm(self) -> int:
        return len(self.workloads) * len(self.optimizers) * max(self.seeds - 1, 0)

    def describe(self) -> dict[str, Any]:
        return {
            "preset": self.preset.name,
            "workloads": self.workloads,
            "optimizers": [s.label for s in self.optimizers],
            "seeds": self.seeds,
            "max_steps": {
                w: self.preset.settings(w, self.max_steps).max_steps for w in self.workloads
            },  # fmt: skip
            "lr_grid": {
                w: {s.label: self.grid(w, s) for s in self.optimizers} for w in self.workloads
            },  # fmt: skip
            "protocol": "lr tuned on seed 0 (best final validation metric), then seeds "
            "1..N-1 at the chosen lr; wd = adamw_lr*adamw_wd/lr keeps lr*wd equal",
        }


class Runner:
    """Runs a :class:`Matrix` into ``out_dir`` (see the module doc for the layout)."""

    def __init__(
        self,
        matrix: Matrix,
        out_dir: Path,
        recipes_dir: Path,
        jobs: int = 1,
        threads_per_job: int | None = None,
        retry_failed: bool = False,
        keep_outputs: bool = False,
        progress: bool = True,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.matrix = matrix
        # absolute: children run with cwd=out_dir so that stray files stay out of the user's cwd
        self.out = out_dir.resolve()
        self.recipes_dir = recipes_dir.resolve()
        self.jobs = max(1, jobs)
        self.threads = threads_per_job
        self.retry_failed = retry_failed
        self.keep_outputs = keep_outputs
        self.progress = progress
        self.echo = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._lock = threading.Lock()
        self._live: dict[int, subprocess.Popen] = {}
        self._stop = threading.Event()
        self.launched = 0
        self.counts = {"ok": 0, "diverged": 0, "failed": 0, "skipped": 0}

    # -------------------------------------------------------------- paths and results

    def result_path(self, run: RunConfig) -> Path:
        return self.out / "results" / f"{run.stem}.json"

    def existing(self, run: RunConfig) -> dict | None:
        """The recorded result of ``run`` if it counts as done (failed ones are redone
        with ``retry_failed``)."""
        data = read_json(self.result_path(run))
        if not isinstance(data, dict) or data.get("run_id") != run.run_id:
            return None
        if self.retry_failed and data.get("status") == "failed":
            return None
        return data

    # -------------------------------------------------------------- one run

    def _env(self) -> dict[str, str]:
        env = {**os.environ, **self.matrix.preset.env}
        # the recipes' `import clion_hf` must find this package even from a bare checkout
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        env["PYTHONUNBUFFERED"] = "1"
        if self.threads:
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                env[var] = str(self.threads)
        return env

    def _kill(self, proc: subprocess.Popen) -> None:
        """Terminate the child's whole process group (accelerate and the recipe under it)."""
        for sig, grace in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            try:
                proc.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue

    def execute(self, run: RunConfig) -> dict | None:
        """Run one child to its end and record it; None if the matrix was interrupted."""
        if self._stop.is_set():
            return None
        work = self.out / "work" / run.run_id
        log_path = self.out / "logs" / f"{run.stem}.log"
        shutil.rmtree(work, ignore_errors=True)  # left over from an interrupted call
        log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = run.command(self.recipes_dir, work)
        started = time.time()
        with open(log_path, "w") as log:
            log.write(f"# {shlex.join(cmd)}\n")
            log.flush()
            with self._lock:
                if self._stop.is_set():
                    return None
                # own session: a terminal's Ctrl-C reaches only us, and we end the group
                proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=self._env(), start_new_session=True, cwd=self.out,
                )  # fmt: skip
                self._live[proc.pid] = proc
                self.launched += 1
            try:
                returncode = proc.wait()
            finally:
                with self._lock:
                    self._live.pop(proc.pid, None)
        if self._stop.is_set():
            # killed by us: leave no result, the next call redoes this run
            shutil.rmtree(work, ignore_errors=True)
            return None
        wall = time.time() - started
        all_results = read_json(work / "all_results.json")
        state = read_json(work / "trainer_state.json") or {}
        log_history = state.get("log_history") or []
        tail = log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        status, reason = classify(returncode, all_results, log_history, tail)
        workload = WORKLOADS[run.workload]
        result = {
            "schema": SCHEMA,
            "run_id": run.run_id,
            "status": status,
            "reason": reason,
            **asdict(run),
            "recipe_args": list(run.recipe_args),
            "metric": workload.metric,
            "greater_is_better": workload.greater_is_better,
            "command": cmd,
            "command_line": shlex.join(cmd),
            "threads_per_job": self.threads,
            "jobs": self.jobs,
            "returncode": returncode,
            "wall_s": round(wall, 3),
            "started_at": datetime.fromtimestamp(started, timezone.utc).isoformat(),
            "finished_at": datetime.now(timezone.utc).isoformat(),
            "log": str(log_path.relative_to(self.out)),
            "all_results": all_results or {},
            "log_history": log_history,
            "log_tail": tail if status != "ok" else "",
            "environment": environment_info(self.recipes_dir),
        }
        atomic_write_json(self.result_path(run), result)
        if not self.keep_outputs:
            shutil.rmtree(work, ignore_errors=True)
        return result

    # -------------------------------------------------------------- the matrix

    def _stop_all(self) -> None:
        self._stop.set()
        with self._lock:
            live = list(self._live.values())
        for proc in live:
            self._kill(proc)

    def _run_batch(self, runs: list[RunConfig], bar) -> dict[str, dict]:
        """Run what is not done yet (``jobs`` at a time); returns results by run id."""
        results: dict[str, dict] = {}
        todo = []
        for run in runs:
            done = self.existing(run)
            if done is not None:
                results[run.run_id] = done
                self.counts["skipped"] += 1
                bar.update(1)
            else:
                todo.append(run)
        if not todo:
            return results
        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="clion-bench")
        futures: dict[Future, RunConfig] = {pool.submit(self.execute, r): r for r in todo}
        pending = set(futures)
        try:
            while pending:
                # a short timeout keeps the main thread responsive to signals
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in done:
                    result = fut.result()
                    if result is None:
                        continue
                    run = futures[fut]
                    results[run.run_id] = result
                    self.counts[result["status"]] += 1
                    extra = f" ({result['reason']})" if result["reason"] else ""
                    bar.write(f"[{result['status']}] {run.title} {result['wall_s']:.1f}s{extra}")
                    bar.set_postfix(self._postfix(), refresh=False)
                    bar.update(1)
        except BaseException:
            # a second Ctrl-C/SIGTERM must not cut the clean-up of the children short
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self._stop_all()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return results

    def _postfix(self) -> dict[str, int]:
        return {k: v for k, v in self.counts.items() if v}

    def prepare(self) -> None:
        """Build the cached offline checkpoints the finetune recipes start from, once, before
        the matrix: otherwise the first finetune run's time would include pretraining."""
        families = sorted(
            {WORKLOADS[w].family for w in self.matrix.workloads if WORKLOADS[w].finetune}
        )
        offline = [
            f for f in families
            if not any("--model_name_or_path" in self.matrix.preset.settings(w).extra_args
                       for w in self.matrix.workloads if WORKLOADS[w].family == f)
        ]  # fmt: skip
        if not offline:
            return
        from clion_hf.workloads.models import offline_pretrained_checkpoint

        for family in offline:
            t0 = time.time()
            self.echo(f"clion-bench: preparing the offline {family} checkpoint for finetuning")
            try:
                path = offline_pretrained_checkpoint(family)
            except Exception as err:
                # the finetune runs will fail and be recorded with their logs; others go on
                self.echo(f"clion-bench: warning: {family} checkpoint failed: {err}")
                continue
            self.echo(f"clion-bench: {family} checkpoint ready in {time.time() - t0:.1f}s: {path}")

    def run(self) -> dict[str, int]:
        """Run (or resume) the whole matrix; returns the status counts."""
        from tqdm.auto import tqdm

        from .report import choose_lr

        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / "bench.json", self.matrix.describe())
        tune = self.matrix.tune_runs()
        total = len(tune) + self.matrix.n_confirm()
        previous = {
            signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_interrupted),
            signal.SIGINT: signal.getsignal(signal.SIGINT),
        }
        try:
            self.prepare()
            with tqdm(total=total, desc="clion-bench", unit="run", disable=not self.progress,
                      dynamic_ncols=True, file=sys.stderr) as bar:  # fmt: skip
                tuned = self._run_batch(tune, bar)
                chosen: dict[tuple[str, str], float | None] = {}
                for w in self.matrix.workloads:
                    for s in self.matrix.optimizers:
                        cands = [tuned[r.run_id] for r in tune
                                 if r.workload == w and r.optimizer == s.label
                                 and r.run_id in tuned]  # fmt: skip
                        chosen[(w, s.label)] = choose_lr(cands)
                confirm = self.matrix.confirm_runs(chosen)
                # pairs whose every grid point diverged/failed have no lr to confirm
                bar.total = len(tune) + len(confirm)
                bar.refresh()
                self._run_batch(confirm, bar)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return dict(self.counts)


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def dry_run_lines(matrix: Matrix, recipes_dir: Path, out_dir: Path) -> Iterable[str]:
    """The commands of the tuning phase, and what the confirmation phase will run."""
    yield f"# preset {matrix.preset.name}: {matrix.preset.description}"
    for run in matrix.tune_runs():
        yield shlex.join(run.command(recipes_dir, out_dir / "work" / run.run_id))
    if matrix.seeds > 1:
        yield (
            f"# then seeds 1..{matrix.seeds - 1} of every (workload, optimizer) at the lr "
            f"chosen on seed 0 ({matrix.n_confirm()} runs, same flags)"
        )
