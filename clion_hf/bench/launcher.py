"""How ``clion-bench`` starts its runs: a launcher process that forks one child per run.

Why not one ``accelerate launch`` subprocess per run: on 2 CPU cores a tiny run spends
about 6 s importing torch and transformers, and ``accelerate launch`` spends as long again
in its own interpreter before starting the recipe's; with several hundred runs that is
most of a preset's time. The launcher imports them once; each run is a ``fork()`` of it
that runs the recipe as ``__main__`` in the environment ``accelerate launch`` would give it
(computed with accelerate's own functions, see :func:`accelerate_env`). Configurations
that need more than one process (DDP, FSDP, DeepSpeed) are not forked: the child
``exec``s ``accelerate launch`` itself. Nothing is imported that touches a GPU before the
fork, so forked children may use CUDA.

It also owns the lifetime of what it starts, the part the runner cannot guarantee alone:

* every child is the leader of its own process group (``setsid``), so stopping a run
  stops everything under it (``killpg``);
* the launcher dies with the runner (Linux ``PR_SET_PDEATHSIG``: the kernel sends it
  SIGTERM when the runner exits, even by SIGKILL), and on SIGTERM, or when the runner
  closes its end of the pipe, it stops every child's group before exiting; children die
  with the launcher the same way (SIGKILL);
* every process carries ``CLION_BENCH_OUT=<output dir>`` in its environment, so a new
  runner can find and stop anything an earlier one left behind (:func:`leftover_pids`).

The protocol is JSON lines: requests on the launcher's stdin, ``{"id", "pid"}`` when a
child started and ``{"id", "status", "cpu_s"}`` when it ended (``cpu_s``: the CPU time the
child and its children used, from ``wait4``; on a shared host it says what a run costs
where its wall time cannot) on its own fd.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

MARKER = "CLION_BENCH_OUT"
KILL_GRACE_S = 10.0
# What a forked child would otherwise import itself: the recipes' heavy dependencies.
PRELOAD = (
    "torch", "transformers", "datasets", "accelerate", "evaluate", "clion_hf",
    "clion_hf.workloads.args", "clion_hf.workloads.data", "clion_hf.workloads.metrics",
    "clion_hf.workloads.models", "clion_hf.workloads.run_stats",
)  # fmt: skip
PRELOAD_ATTRS = (
    ("transformers", ("Trainer", "TrainingArguments", "HfArgumentParser", "AutoTokenizer",
                      "AutoImageProcessor", "AutoModelForCausalLM", "AutoModelForMaskedLM",
                      "AutoModelForSequenceClassification", "AutoModelForImageClassification",
                      "GPT2LMHeadModel", "BertForMaskedLM", "BertForSequenceClassification",
                      "ViTForImageClassification", "DataCollatorForLanguageModeling")),
)  # fmt: skip


def _set_pdeathsig(sig: int) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux only)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(sig))  # PR_SET_PDEATHSIG


# ------------------------------------------------------------------------------ accelerate


def accelerate_env(config_file: Path, threads: int | None) -> dict[str, str] | None:
    """The variables ``accelerate launch --config_file config_file`` would add for a
    single-process run, or None when the config needs ``accelerate launch`` itself
    (more than one process, DeepSpeed, FSDP, TPU, SageMaker) or accelerate's internals
    differ from what this was written against (accelerate 1.x)."""
    try:
        from accelerate.commands import launch as acc
        from accelerate.utils import ComputeEnvironment
    except ImportError:
        return None
    argv = ["--config_file", str(config_file)]
    if threads:
        argv += ["--num_cpu_threads_per_process", str(threads)]
    try:
        args = acc.launch_command_parser().parse_args([*argv, "x.py"])
        args, defaults, _ = acc._validate_launch_command(args)
        if (args.use_deepspeed or args.use_fsdp or args.use_megatron_lm or args.multi_gpu
                or args.tpu or (args.num_processes or 1) > 1):  # fmt: skip
            return None
        local = ComputeEnvironment.LOCAL_MACHINE
        if defaults is not None and defaults.compute_environment != local:
            return None
        _, env = acc.prepare_simple_launcher_cmd_env(args)
    except (AttributeError, TypeError, ValueError, SystemExit):
        return None
    return {k: v for k, v in env.items() if os.environ.get(k) != v}


# ------------------------------------------------------------------------------ launcher side


def _child(request: dict[str, Any], close_fd: int, ready_fd: int) -> int:
    """Body of a forked child (never returns to the launcher's loop)."""
    os.close(close_fd)  # the protocol pipe: only the launcher writes there
    os.setsid()
    _set_pdeathsig(signal.SIGKILL)
    # Default dispositions before the pid is reported: a SIGTERM sent as soon as the runner
    # knows the pid would otherwise reach the launcher's own handler (which only sets a
    # flag), be lost at exec, and leave the child to the SIGKILL after the grace period.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    os.close(ready_fd)  # now a process group of its own: the launcher may report the pid
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.chdir(request["cwd"])
    argv = request["argv"]
    if request["mode"] == "exec":
        os.execvp(argv[0], argv)
    if request["mode"] == "call":  # "module:function", args
        module, _, name = argv[0].partition(":")
        print(getattr(importlib.import_module(module), name)(*argv[1:]), flush=True)
        return 0
    sys.argv = list(argv)
    sys.path[0] = str(Path(argv[0]).resolve().parent)  # as `python recipe.py` would
    runpy.run_path(argv[0], run_name="__main__")
    return 0


def _fork(request: dict[str, Any], close_fd: int) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(ready_w)
        os.read(ready_r, 1)  # EOF once the child has its own process group (or died)
        os.close(ready_r)
        return pid
    code = 1
    try:
        os.close(ready_r)
        code = _child(request, close_fd, ready_w)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int | None):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    return 0  # not reached


def _stop_children(children: dict[int, Any], grace: float = KILL_GRACE_S) -> None:
    for sig, wait_s in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
        deadline = time.monotonic() + wait_s
        while children and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                pid, _ = os.waitpid(-1, os.WNOHANG)
                if pid:
                    children.pop(pid, None)
                    continue
            time.sleep(0.05)
        if not children:
            return


def serve(parent: int, preload: bool) -> None:
    """The launcher's main loop (``python -m clion_hf.bench.launcher``)."""
    _set_pdeathsig(signal.SIGTERM)
    if os.getppid() != parent:  # the runner died before we could ask to die with it
        return
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints of imported modules must not reach the protocol pipe
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner decides what a Ctrl-C means
    if preload:
        for name in PRELOAD:
            importlib.import_module(name)
        for module, attrs in PRELOAD_ATTRS:
            for attr in attrs:
                getattr(importlib.import_module(module), attr)
    out.write(json.dumps({"ready": os.getpid()}) + "\n")
    children: dict[int, Any] = {}
    try:
        _loop(out, stop, children)
    finally:  # whatever ended the loop (a signal, EOF, a broken pipe), nothing stays behind
        _stop_children(children)


def _loop(out, stop: threading.Event, children: dict[int, Any]) -> None:
    buffer = b""
    stdin = sys.stdin.fileno()
    while not stop.is_set():
        try:
            readable, _, _ = select.select([stdin], [], [], 0.1)
        except InterruptedError:
            continue
        if readable:
            chunk = os.read(stdin, 65536)
            if not chunk:  # the runner closed the pipe (or died)
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                try:
                    pid = _fork(request, out.fileno())
                except OSError as err:
                    out.write(json.dumps({"id": request["id"], "error": str(err)}) + "\n")
                    continue
                children[pid] = request["id"]
                out.write(json.dumps({"id": request["id"], "pid": pid}) + "\n")
        while children:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if not pid:
                break
            code = os.waitstatus_to_exitcode(status)
            cpu = round(usage.ru_utime + usage.ru_stime, 3)  # the child and its children
            out.write(json.dumps({"id": children.pop(pid), "status": code, "cpu_s": cpu}) + "\n")


# ------------------------------------------------------------------------------ runner side


class LauncherDied(RuntimeError):
    """The launcher process ended while runs were in flight."""


class Child:
    """A run started by the :class:`Launcher`: its pid (= process group) and exit status."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.error: str | None = None
        self.status: int | None = None
        self.cpu_s: float | None = None  # CPU seconds it used (user + system, with children)
        self.started = threading.Event()
        self.ended = threading.Event()

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status (negative: killed by that signal); None on timeout or if the
        launcher died (then :attr:`error` says so)."""
        self.ended.wait(timeout)
        return self.status

    def kill(self, grace: float = KILL_GRACE_S) -> None:
        """SIGTERM the child's process group, then SIGKILL after ``grace`` seconds."""
        if self.pid is None:
            return
        for sig, wait_s in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if self.ended.is_set():  # reaped: its pid may belong to someone else by now
                return
            try:
                os.killpg(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            if self.ended.wait(wait_s):
                return


class Launcher:
    """Starts and talks to the launcher process (see the module doc)."""

    def __init__(self, env: dict[str, str], preload: bool, stderr_path: Path) -> None:
        self.preload = preload
        self._lock = threading.Lock()
        self._children: dict[int, Child] = {}
        self._next = 0
        self._dead = False
        stderr_path.parent.mkdir(parents=True, exist_ok=True)
        with open(stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "clion_hf.bench.launcher", "--parent", str(os.getpid()),
                 *(["--preload"] if preload else [])],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env,
                start_new_session=True,
            )  # fmt: skip
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, name="clion-bench-launcher",
                                        daemon=True)  # fmt: skip
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            msg = json.loads(line)
            if "ready" in msg:
                self._ready.set()
                continue
            with self._lock:
                child = self._children.get(msg["id"])
            if child is None:
                continue
            if "pid" in msg:
                child.pid = msg["pid"]
                child.started.set()
            elif "error" in msg:
                child.error = msg["error"]
                child.started.set()
                child.ended.set()
            elif "status" in msg:
                child.status = msg["status"]
                child.cpu_s = msg.get("cpu_s")
                child.ended.set()
                with self._lock:
                    self._children.pop(msg["id"], None)
        # EOF: the launcher is gone; nothing it started can still be waited for
        with self._lock:
            self._dead = True
            orphaned = list(self._children.values())
            self._children.clear()
        self._ready.set()
        for child in orphaned:
            child.error = child.error or "the launcher process died"
            child.started.set()
            child.ended.set()

    def wait_ready(self, timeout: float = 600.0) -> None:
        """Block until the launcher has imported what it preloads."""
        self._ready.wait(timeout)
        if self._dead or not self._ready.is_set():
            raise LauncherDied("the launcher process did not start (see logs/launcher.log)")

    def start(self, argv: list[str], cwd: Path, log: Path, mode: str) -> Child:
        """Start ``argv`` (``mode``: ``run`` a Python script forked from the launcher,
        ``exec`` a program, ``call`` a ``module:function``) with stdout/stderr to ``log``."""
        child = Child()
        with self._lock:
            if self._dead:
                raise LauncherDied("the launcher process died")
            self._next += 1
            self._children[self._next] = child
            request = {"id": self._next, "argv": argv, "cwd": str(cwd), "log": str(log),
                       "mode": mode}  # fmt: skip
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write((json.dumps(request) + "\n").encode())
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self._dead = True
                raise LauncherDied("the launcher process died") from None
        child.started.wait()
        if child.error:
            raise LauncherDied(child.error)
        return child

    def close(self, timeout: float = KILL_GRACE_S + 10) -> None:
        """Ask the launcher to stop what still runs and exit (closing its stdin)."""
        with contextlib.suppress(OSError):
            if self.proc.stdin:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def leftover_pids(out_dir: Path) -> list[int]:
    """Processes (of this user) whose environment marks them as started for ``out_dir``.

    Linux only (reads ``/proc/<pid>/environ``); elsewhere, an empty list.
    """
    needle = f"{MARKER}={Path(out_dir).resolve()}".encode()
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def stop_leftovers(out_dir: Path, grace: float = 5.0) -> int:
    """Stop (SIGTERM, then SIGKILL) what :func:`leftover_pids` finds; returns how many."""
    pids = leftover_pids(out_dir)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
        if not any(_alive(p) for p in pids):
            break
    return len(pids)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie is dead, just not reaped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--preload", action="store_true")
    args = parser.parse_args(argv)
    serve(args.parent, args.preload)


if __name__ == "__main__":
    main()
