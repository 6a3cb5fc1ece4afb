"""Run a benchmark matrix: the protocol's runs, two at a time or as asked, resumable.

Layout of an output directory ``DIR``:

* ``DIR/bench.json``: the matrix (preset, workloads, optimizers, seeds, searches);
* ``DIR/results/<workload>-<run id>.json``: one file per finished run, written atomically,
  holding the run's full config, command, status and the recipe's metrics and log history;
* ``DIR/logs/<workload>-<run id>.log``: the run's stdout and stderr; ``logs/launcher.log``;
* ``DIR/work/<run id>-<attempt>/``: the recipe's ``--output_dir`` while it runs (removed
  afterwards unless ``keep_outputs``); a fresh one per attempt, so a run never shares a
  directory with a process left over from an earlier attempt;
* ``DIR/.clion-bench.lock``: held (``flock``) by the one runner that owns ``DIR``.

The run id is a hash of everything that defines the run (workload, optimizer, lr, weight
decay, seed, steps, recipe flags, accelerate config), so an existing result file means the
run is done: the next call skips it. Which runs the matrix needs is decided by
:meth:`Matrix.plan <clion_hf.bench.protocol.Matrix.plan>` from the results alone, so an
interrupted call resumes exactly where it stopped. A run is only recorded once its child
exited on its own; on Ctrl-C/SIGTERM the children's process groups are stopped and
nothing is written for them. A recorded ``ok`` result is never replaced by a worse one.

Hand-written: a sweep tool (Optuna, Ray Tune, W&B sweeps) decides the next trial itself and
keeps its state in a database or a service; here the next runs are a pure function of the
result files (:meth:`~clion_hf.bench.protocol.Experiment.plan`), so that resuming, a second
machine and the report all reach the same decisions, and no new dependency is needed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from clion_hf._files import atomic_write_json, probe_writable, read_json

from ..workloads import recipes_dir as installed_recipes_dir
from .launcher import MARKER, Child, Launcher, LauncherDied, accelerate_env, stop_leftovers
from .progress import ticker
from .protocol import SCHEMA, Experiment, RunConfig, classify, load_results, result_problem
from .render import cpu_model
from .specs import WORKLOADS

LOG_TAIL_CHARS = 4000
LOCK_NAME = ".clion-bench.lock"
STATUS_RANK = {"failed": 0, "diverged": 1, "ok": 2}
# Signals a process gets for its own fault (a crash, an abort, a limit it ran into); a run
# ended by any other signal was killed from outside (the OOM killer, a user's `kill`): that
# says nothing about the run, so it is not recorded and the next `run` redoes it.
OWN_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT,
               signal.SIGTRAP, signal.SIGSYS, signal.SIGXCPU, signal.SIGXFSZ}  # fmt: skip
# `accelerate launch` (exec'd runs) reports a recipe killed by a signal this way
_DIED_WITH = re.compile(r"died with <Signals\.SIG\w+: (\d+)>")
_NO_SPACE = os.strerror(errno.ENOSPC)


def outside_signal(returncode: int | None, log_tail: str = "", forked: bool = True) -> str | None:
    """The name of the signal that killed a run from outside, or None (it exited, or
    crashed by itself)."""
    num = -returncode if returncode is not None and returncode < 0 else None
    if num is None and returncode and not forked:
        found = _DIED_WITH.findall(log_tail)
        num = int(found[-1]) if found else None
    if num is None or num in OWN_SIGNALS:
        return None
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


class Interrupted(BaseException):
    """Raised in the main thread by SIGTERM (Ctrl-C raises KeyboardInterrupt).

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way
    (checkpoint preparation, a library) mistakes it for an ordinary error.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


class OutDirError(Exception):
    """The output directory cannot be used (one-line message)."""


def find_recipes_dir(explicit: str | None = None) -> Path | None:
    """``explicit``, else the installation's recipes (the wheel's copy or the checkout's)."""
    if explicit:
        path = Path(explicit)
        return path if path.is_dir() else None
    return installed_recipes_dir()


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
        commit = None
        try:
            # only when git tracks the recipes themselves: a wheel's copy inside a venv
            # that sits in some other repository must not record that repository's commit
            git = ["git", "-C", str(recipes_dir)]
            run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=10)
            if run([*git, "ls-files", "--", "."]).stdout.strip():
                commit = run([*git, "rev-parse", "HEAD"]).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            pass
        _ENV_CACHE.update(
            host=platform.node(), platform=platform.platform(), cpu=cpu_model(),
            cpus=os.cpu_count(),
            python=platform.python_version(), versions=versions, git_commit=commit,
        )  # fmt: skip
    return dict(_ENV_CACHE)


def load_result_files(out_dir: Path, problem: Callable[[Any], str | None] = result_problem
                      ) -> dict[str, dict]:  # fmt: skip
    """:func:`~clion_hf.bench.protocol.load_results` by run id (a bad file is as good as
    none: the run is redone)."""
    return {r["run_id"]: r for r in load_results(out_dir, problem)[0]}


def _kind_of(description: Any) -> str | None:
    """``run`` or ``study NAME`` for a ``bench.json``'s content; None if it is neither."""
    if not isinstance(description, dict):
        return None
    if "study" in description:
        return f"study {description['study']}"
    return "run" if "search" in description else None


def experiment_kind(out_dir: Path) -> str | None:
    """What ``out_dir`` holds: ``run`` (a ``clion-bench run`` matrix), ``study NAME`` (a
    ``clion-bench study NAME``), ``study`` (a study whose bench.json is lost) or None (new)."""
    kind = _kind_of(read_json(out_dir / "bench.json"))
    if kind is None and (out_dir / "results").is_dir():  # bench.json lost: ask the results
        phases = {r.get("phase") for r in load_result_files(out_dir).values()}
        kind = "run" if phases & {"tune", "final"} else "study" if "study" in phases else None
    return kind


def kind_text(kind: str) -> str:
    return "a `clion-bench run` benchmark" if kind == "run" else f"a `clion-bench {kind}`"


def check_kind(out_dir: Path, description: dict) -> None:
    """:class:`OutDirError` unless ``out_dir`` is new or holds the experiment ``description``
    (a ``bench.json``) is of: one directory, one kind, so that neither overwrites the
    other's ``bench.json`` and report, nor mixes its results into the other's."""
    have, want = experiment_kind(out_dir), _kind_of(description) or "run"
    if have is not None and have != want and not want.startswith(f"{have} "):
        raise OutDirError(f"--out {out_dir} holds {kind_text(have)}, not {kind_text(want)}; "
                          "use another --out")  # fmt: skip


@contextlib.contextmanager
def owned(out_dir: Path):
    """Hold ``out_dir``'s lock for the duration; :class:`OutDirError` if another runner has it.

    The lock file is opened without following a symlink; the lock dies with the process
    (``flock``), so a killed runner never leaves ``DIR`` locked.
    """
    path = out_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise OutDirError(f"cannot open {path}: {err.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise OutDirError(
                f"{out_dir} is in use by another clion-bench run (pid {owner}); wait for it "
                "to finish or use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def prepare_out_dir(out: Path) -> None:
    """Create ``out`` (and check it is a writable directory) or raise :class:`OutDirError`."""
    if out.exists() and not out.is_dir():
        raise OutDirError(f"--out {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe_writable(out)  # bytes, not an empty file: that passes on a full disk
    except OSError as err:
        raise OutDirError(f"--out {out} is not writable: {err.strerror}") from None


class Runner:
    """Runs an :class:`~clion_hf.bench.protocol.Experiment` (a ``clion-bench run`` matrix, a
    study) into ``out_dir`` (see the module doc for the layout)."""

    # why a result file cannot be used (None if it can); a study with results of its own
    # shape sets its own
    result_problem = staticmethod(result_problem)

    def __init__(
        self,
        matrix: Experiment,
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
        self._live: dict[str, Child] = {}
        self._stop = threading.Event()
        self._launcher: Launcher | None = None
        self.launched = 0
        self.counts = {"ok": 0, "diverged": 0, "failed": 0, "skipped": 0, "killed": 0}
        self._deferred: set[str] = set()  # killed from outside: redone by the next `run`

    # -------------------------------------------------------------- paths and results

    def result_path(self, run: RunConfig) -> Path:
        return self.out / "results" / f"{run.stem}.json"

    def record(self, run: RunConfig, result: dict) -> bool:
        """Write ``result`` unless the file already holds a better one (ok > diverged > failed)."""
        path = self.result_path(run)
        old = read_json(path)
        if (self.result_problem(old) is None and old.get("run_id") == run.run_id
                and STATUS_RANK.get(old.get("status"), -1) > STATUS_RANK[result["status"]]):
            self.echo(f"clion-bench: kept the recorded {old['status']} result of {run.title} "
                      f"over this attempt's {result['status']}")  # fmt: skip
            return False
        atomic_write_json(path, result)
        return True

    # -------------------------------------------------------------- one run

    def _env(self) -> dict[str, str]:
        env = {**os.environ, **self.matrix.preset.env}
        # the recipes' `import clion_hf` must find this package even from a bare checkout
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        env["PYTHONUNBUFFERED"] = "1"
        env[MARKER] = str(self.out)
        if self.threads:
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                env[var] = str(self.threads)
        return env

    def _start_launcher(self) -> None:
        config = (self.recipes_dir / "accelerate_configs"
                  / f"{self.matrix.preset.accelerate_config}.yaml")  # fmt: skip
        env = self._env()
        extra = accelerate_env(config, self.threads)
        if extra is not None:
            env.update(extra)
            if self.threads:  # ours win: accelerate's default is all cores per process
                env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        self._launcher = Launcher(env, preload=extra is not None,
                                  stderr_path=self.out / "logs" / "launcher.log")  # fmt: skip
        self._launcher.wait_ready()

    def execute(self, run: RunConfig) -> dict | None:
        """Run one child to its end and record it; None if the matrix was interrupted."""
        if self._stop.is_set() or self._launcher is None:
            return None
        work = self.out / "work" / f"{run.run_id}-{uuid.uuid4().hex[:8]}"
        log_path = self.out / "logs" / f"{run.stem}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        shown = run.launch_command(self.recipes_dir, work)
        forked = self._launcher.preload
        argv = run.recipe_command(self.recipes_dir, work) if forked else shown
        started = time.time()
        log_path.write_text(f"# {shlex.join(shown)}\n")
        with self._lock:
            if self._stop.is_set():
                return None
            child = self._launcher.start(argv, self.out, log_path, "run" if forked else "exec")
            self._live[run.run_id] = child
            self.launched += 1
        try:
            returncode = child.wait()
        finally:
            with self._lock:
                self._live.pop(run.run_id, None)
        if self._stop.is_set() or child.error:
            # stopped by us (or the launcher died): no result, the next call redoes this run
            shutil.rmtree(work, ignore_errors=True)
            if child.error and not self._stop.is_set():
                raise LauncherDied(child.error)
            return None
        wall = time.time() - started
        tail = log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        killer = outside_signal(returncode, tail, forked)
        if killer is not None:
            shutil.rmtree(work, ignore_errors=True)
            return {"run_id": run.run_id, "status": "killed", "wall_s": wall,
                    "reason": f"killed by {killer} from outside; not recorded, the next "
                              f"`run` redoes it (log: {log_path.relative_to(self.out)})"}
        all_results = read_json(work / "all_results.json")
        state = read_json(work / "trainer_state.json") or {}
        log_history = state.get("log_history") or []
        status, reason = classify(returncode, all_results, log_history, tail)
        if status == "failed" and _NO_SPACE in tail:
            # the disk, not the run: stop here rather than record a failure for good
            raise OSError(errno.ENOSPC, f"{_NO_SPACE} (the run {run.title} failed for it)",
                          str(log_path))
        workload = WORKLOADS[run.workload]
        result = {
            "schema": SCHEMA,
            "run_id": run.run_id,
            "status": status,
            "reason": reason,
            **asdict(run),
            "recipe_args": list(run.recipe_args),
            "second": list(run.second) if run.second else None,
            "metric": workload.metric,
            "greater_is_better": workload.greater_is_better,
            "command": shown,
            "command_line": shlex.join(shown),
            "launch": "fork" if forked else "exec",
            "threads_per_job": self.threads,
            "jobs": self.jobs,
            "returncode": returncode,
            "wall_s": round(wall, 3),
            "cpu_s": child.cpu_s,
            "load_avg_1m": round(os.getloadavg()[0], 2),  # the host's load as the run ended
            "started_at": datetime.fromtimestamp(started, timezone.utc).isoformat(),
            "finished_at": datetime.now(timezone.utc).isoformat(),
            "log": str(log_path.relative_to(self.out)),
            "all_results": all_results or {},
            "log_history": log_history,
            "log_tail": tail if status != "ok" else "",
            "environment": environment_info(self.recipes_dir),
        }
        self.record(run, result)
        if not self.keep_outputs:
            shutil.rmtree(work, ignore_errors=True)
        return result

    # -------------------------------------------------------------- the matrix

    def _stop_all(self) -> None:
        self._stop.set()
        with self._lock:
            live = list(self._live.values())
        threads = [threading.Thread(target=c.kill) for c in live]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _abort(self) -> None:
        """Stop every child; a second Ctrl-C/SIGTERM must not cut this clean-up short."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self._stop_all()

    def prepare(self) -> None:
        """Build the cached offline checkpoints the finetune recipes start from, once, before
        the matrix: otherwise the first finetune run's time would include pretraining. Runs
        in a child of the launcher, so a signal stops it like any run."""
        families = sorted(
            {WORKLOADS[w].family for w in self.matrix.workloads if WORKLOADS[w].finetune}
        )
        offline = [
            f for f in families
            if not any("--model_name_or_path" in self.matrix.preset.settings(w).extra_args
                       for w in self.matrix.workloads if WORKLOADS[w].family == f)
        ]  # fmt: skip
        assert self._launcher is not None
        for family in offline:
            t0 = time.time()
            self.echo(f"clion-bench: preparing the offline {family} checkpoint for finetuning "
                      "(cached afterwards; 40-65 s on 2 CPU cores); log: "
                      f"{self.out / 'logs' / f'checkpoint-{family}.log'}")  # fmt: skip
            log = self.out / "logs" / f"checkpoint-{family}.log"
            child = self._launcher.start(
                ["clion_hf.workloads.models:offline_pretrained_checkpoint", family], self.out,
                log, "call",
            )  # fmt: skip
            with self._lock:
                self._live[f"checkpoint-{family}"] = child
            try:
                with ticker(f"clion-bench: {family} checkpoint", enabled=self.progress):
                    code = child.wait()
            finally:
                with self._lock:
                    self._live.pop(f"checkpoint-{family}", None)
            if child.error:
                raise LauncherDied(child.error)
            if code != 0:
                # the finetune runs will fail and be recorded with their logs; others go on
                self.echo(f"clion-bench: warning: the {family} checkpoint failed (exit status "
                          f"{code}); see {log}")  # fmt: skip
                continue
            self.echo(f"clion-bench: {family} checkpoint ready in {time.time() - t0:.1f}s")

    def _load(self) -> dict[str, dict]:
        results = load_result_files(self.out, self.result_problem)
        if self.retry_failed:
            results = {k: v for k, v in results.items() if v.get("status") != "failed"}
        return results

    def _schedule(self, bar) -> None:
        """Run what the plan asks for, re-planning after every finished run."""
        results = self._load()
        known = set(results)
        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="clion-bench")
        in_flight: dict[Future, RunConfig] = {}
        first = True
        try:
            while True:
                plans = self.matrix.plan(results)
                flying = {r.run_id for r in in_flight.values()} | self._deferred
                needed = [r for p in plans for r in p.needed if r.run_id not in flying]
                if first:
                    done_runs = {r.run_id for p in plans for t in p.trials for r in t.runs}
                    done_runs |= {r.run_id for p in plans for r in p.finals}
                    self.counts["skipped"] = len(done_runs & known)
                    bar.update(self.counts["skipped"])
                    first = False
                for run in dict.fromkeys(needed):
                    in_flight[pool.submit(self.execute, run)] = run
                lo = bar.n + len(in_flight)
                if lo > (bar.total or 0):
                    bar.total = lo
                    bar.refresh()
                if not in_flight:
                    # every result the final plans use that was there before (a known run
                    # is never launched): the first plan cannot see the finals of a row
                    # whose search still has a run to redo
                    used = {r.run_id for p in plans for t in p.trials for r in t.runs}
                    used |= {r.run_id for p in plans for r in p.finals}
                    self.counts["skipped"] = len(used & known)
                    return
                # a short timeout keeps the main thread responsive to signals
                done, _ = wait(list(in_flight), timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in done:
                    run = in_flight.pop(fut)
                    result = fut.result()
                    if result is None:
                        continue
                    if result["status"] == "killed":
                        self._deferred.add(run.run_id)
                        self.counts["killed"] += 1
                        bar.write(f"[killed] {run.title} {result['wall_s']:.1f}s "
                                  f"({result['reason']})")  # fmt: skip
                        continue
                    kept = read_json(self.result_path(run))
                    results[run.run_id] = kept if self.result_problem(kept) is None else result
                    self.counts[result["status"]] += 1
                    extra = f" ({result['reason']})" if result["reason"] else ""
                    bar.write(f"[{result['status']}] {run.title} {result['wall_s']:.1f}s{extra}")
                    bar.set_postfix({k: v for k, v in self.counts.items() if v}, refresh=False)
                    bar.update(1)
        except BaseException:
            self._abort()  # before the pool's shutdown, which waits for the running children
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def run(self) -> dict[str, int]:
        """Run (or resume) the whole matrix; returns the status counts.

        Raises :class:`OutDirError` when ``out_dir`` is unusable or owned by another runner.
        """
        from tqdm.auto import tqdm

        prepare_out_dir(self.out)
        previous = {
            signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_interrupted),
            signal.SIGINT: signal.getsignal(signal.SIGINT),
        }
        try:
            with owned(self.out):
                check_kind(self.out, self.matrix.describe())
                stopped = stop_leftovers(self.out)
                if stopped:
                    self.echo(f"clion-bench: stopped {stopped} process(es) left running by an "
                              f"earlier run in {self.out}")  # fmt: skip
                shutil.rmtree(self.out / "work", ignore_errors=True)  # nothing live uses it
                atomic_write_json(self.out / "bench.json", self.matrix.describe())
                lo, _ = self.matrix.run_counts()
                self._start_launcher()
                assert self._launcher is not None
                try:
                    self.prepare()
                    with tqdm(total=lo, desc="clion-bench", unit="run", disable=not self.progress,
                              dynamic_ncols=True, file=sys.stderr) as bar:  # fmt: skip
                        self._schedule(bar)
                except BaseException:
                    self._abort()
                    raise
                finally:
                    self._launcher.close()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return dict(self.counts)


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)
