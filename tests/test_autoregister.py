"""The start-up hook in this environment's install: a script that never imports clion_hf
accepts ``--optim clion``, and the ``.pth`` file never runs code found on ``sys.path``.

The same hook from an installed wheel (non-editable, in a fresh virtual environment) is
checked in test_wheel_install.py, with that module's one wheel build.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from _paths import REPO
from _startup import PROBE, SCRIPT, plant


def test_pth_runs_the_startup_file_beside_it_never_one_on_sys_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What `site` does with the .pth at interpreter start, in-process: a
    # `_clion_hf_startup.py` in a directory before site-packages on sys.path (the current
    # directory with PYTHONPATH=: or .) must not run, even with the hook turned off.
    site_dir = tmp_path / "site-packages"
    site_dir.mkdir()
    for name in ("clion_hf-autoregister.pth", "_clion_hf_startup.py"):
        shutil.copy(REPO / "clion_hf" / "integrations" / "startup" / name, site_dir / name)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    ran = plant(cwd)
    monkeypatch.syspath_prepend(str(cwd))
    monkeypatch.delitem(sys.modules, "_clion_hf_startup", raising=False)
    monkeypatch.setenv("CLION_HF_AUTOREGISTER", "0")
    site.addpackage(str(site_dir), "clion_hf-autoregister.pth", set())
    assert not ran.exists(), f"planted start-up module ran: {ran.read_text()}"
    loaded = sys.modules["_clion_hf_startup"]  # the one beside the .pth ran instead
    assert Path(loaded.__file__) == site_dir / "_clion_hf_startup.py"


@pytest.mark.slow
def test_editable_install_ignores_the_current_directory_too(tmp_path: Path) -> None:
    # This environment's install (CI: editable, the hook in the checkout). Its .pth file
    # is a copy made at install time (the start-up module beside it is checked with the
    # wheel in test_wheel_install.py), so only the hook module that it finds in the
    # checkout is planted.
    ran = plant(tmp_path, startup=False)
    env = {k: v for k, v in os.environ.items() if k != "CLION_HF_AUTOREGISTER"}
    r = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=tmp_path,
        env={**env, "PYTHONPATH": ":"},
    )  # fmt: skip
    assert not ran.exists() and r.returncode == 0, r.stderr
    assert "FINDER True" in r.stdout


@pytest.mark.slow
def test_this_environments_install_registers_too():
    # Whatever install this test runs from (CI: editable, where clion_hf/integrations/hook.py is in
    # the checkout rather than in site-packages), a script that never imports clion_hf
    # accepts --optim clion.
    env = {k: v for k, v in os.environ.items() if k != "CLION_HF_AUTOREGISTER"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, "--output_dir", "unused", "--optim", "clion"],
        capture_output=True, text=True, env=env, cwd=REPO.parent,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OPTIM clion" in proc.stdout and "HELP_HAS_CLION True" in proc.stdout
