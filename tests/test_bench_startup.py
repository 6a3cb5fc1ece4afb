"""``clion-bench`` start-up: a SIGTERM at any moment exits 128 + 15 with its one line.

The runner's own handler (which also stops the children) is installed once the plan is
built, after torch has loaded: seconds on a loaded host. A SIGTERM in that window used to
kill the process by the default action (return code -15, no message).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_importing_the_command_does_not_load_torch():
    probe = "import json, sys, clion_hf.bench.cli; print(json.dumps('torch' in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=REPO, check=True)  # fmt: skip
    assert json.loads(proc.stdout) is False


def _loading_torch(pid: int) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_sigterm_while_torch_loads_exits_143(tmp_path):
    out = tmp_path / "bench"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "clion_hf.bench.cli", "run", "--preset", "smoke", "--out",
         str(out), "--no_progress"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    # the moment the old code had no handler: torch's shared library is being mapped
    while not (_loading_torch(proc.pid) or (out / "bench.json").exists()):
        assert proc.poll() is None and time.monotonic() < deadline, "start-up not seen"
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == (
        "clion-bench: terminated; finished runs are kept, rerun to resume")
