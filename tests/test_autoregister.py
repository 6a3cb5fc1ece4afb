"""The start-up hook: a script that never imports clion_hf accepts ``--optim clion``.

Checked from a non-editable install of the built wheel into a fresh virtual environment
(the heavy dependencies come from the test's own environment through a ``.pth`` path).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import sys
    from transformers import HfArgumentParser, TrainingArguments

    parser = HfArgumentParser(TrainingArguments)
    (args,) = parser.parse_args_into_dataclasses()
    print("OPTIM", args.optim.value, type(args.optim).__name__)
    print("HELP_HAS_CLION", "clion" in parser.format_help())
    """
)

PROBE = textwrap.dedent(
    """
    import sys
    print("FINDER", any(getattr(f, "_clion_hf_hook", False) for f in sys.meta_path))
    print("HEAVY", sorted(m for m in ("torch", "transformers", "clion_hf") if m in sys.modules))
    import clion_hf
    print("FROM", clion_hf.__file__)
    """
)


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("autoreg")
    wheels = tmp / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(wheels)],
        check=True,
    )
    (wheel,) = wheels.glob("clion_hf-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    # torch/transformers from this environment; a plain path line, so the .pth files
    # there (the editable install of clion_hf among them) are not processed.
    (site / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
         str(wheel)],
        check=True,
    )  # fmt: skip
    assert (site / "clion_hf-autoregister.pth").is_file()
    return py


def _run(py: Path, code: str, *argv: str, env: dict[str, str] | None = None, cwd: Path):
    return subprocess.run(
        [str(py), "-c", code, *argv],
        capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.mark.slow
def test_unmodified_script_accepts_optim_clion(fresh_venv: Path, tmp_path: Path) -> None:
    r = _run(fresh_venv, SCRIPT, "--output_dir", str(tmp_path), "--optim", "clion", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "OPTIM clion OptimizerNames" in r.stdout
    assert "HELP_HAS_CLION True" in r.stdout
    # Argument-time validation comes with it: a clean parser error, no traceback.
    r = _run(
        fresh_venv, SCRIPT, "--output_dir", str(tmp_path), "--optim", "clion",
        "--optim_args", "mode=elementwise", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2
    assert "mode='elementwise' is not allowed" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_hook_is_cheap_and_non_editable(fresh_venv: Path, tmp_path: Path) -> None:
    r = _run(fresh_venv, PROBE, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "FINDER True" in r.stdout
    assert "HEAVY []" in r.stdout  # the hook imported neither torch nor transformers
    assert str(fresh_venv.parents[1]) in r.stdout.split("FROM", 1)[1]  # the wheel, not /work


MODULES = "import sys, json; print(json.dumps(sorted(sys.modules)))"

PLANTED_HOOK = """
import os
with open(os.path.join(os.path.dirname(__file__), "..", "RAN"), "w") as f:
    f.write(__file__)
def install_at_startup():
    pass
"""


PLANTED_STARTUP = """
import os
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "RAN"), "w") as f:
    f.write(__file__)
"""


def _plant(directory: Path, startup: bool = True) -> Path:
    """A ``clion_hf/_hook.py`` (and a ``_clion_hf_startup.py``) in ``directory`` that leave
    a file ``RAN`` when either runs."""
    (directory / "clion_hf").mkdir()
    (directory / "clion_hf" / "_hook.py").write_text(PLANTED_HOOK)
    if startup:
        (directory / "_clion_hf_startup.py").write_text(PLANTED_STARTUP)
    return directory / "RAN"


def test_pth_runs_the_startup_file_beside_it_never_one_on_sys_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What `site` does with the .pth at interpreter start, in-process: a
    # `_clion_hf_startup.py` in a directory before site-packages on sys.path (the current
    # directory with PYTHONPATH=: or .) must not run, even with the hook turned off.
    site_dir = tmp_path / "site-packages"
    site_dir.mkdir()
    for name in ("clion_hf-autoregister.pth", "_clion_hf_startup.py"):
        shutil.copy(ROOT / "hooks" / name, site_dir / name)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    ran = _plant(cwd)
    monkeypatch.syspath_prepend(str(cwd))
    monkeypatch.delitem(sys.modules, "_clion_hf_startup", raising=False)
    monkeypatch.setenv("CLION_HF_AUTOREGISTER", "0")
    site.addpackage(str(site_dir), "clion_hf-autoregister.pth", set())
    assert not ran.exists(), f"planted start-up module ran: {ran.read_text()}"
    loaded = sys.modules["_clion_hf_startup"]  # the one beside the .pth ran instead
    assert Path(loaded.__file__) == site_dir / "_clion_hf_startup.py"


@pytest.mark.slow
@pytest.mark.parametrize("pythonpath", [":", ".", "{cwd}"])
def test_hook_never_runs_code_from_the_current_directory(
    fresh_venv: Path, tmp_path: Path, pythonpath: str
) -> None:
    # PYTHONPATH=: puts '' (the current directory) on sys.path; the hook must still load
    # the installed clion_hf/_hook.py only, and never a planted one.
    ran = _plant(tmp_path)
    env = {"PYTHONPATH": pythonpath.format(cwd=tmp_path)}
    r = _run(fresh_venv, PROBE, env=env, cwd=tmp_path)
    assert not ran.exists(), f"planted hook ran: {ran.read_text()}"
    assert r.returncode == 0 and "FINDER True" in r.stdout, r.stderr
    r = _run(fresh_venv, "pass", env=env, cwd=tmp_path)
    assert r.returncode == 0 and not ran.exists() and not r.stderr, r.stderr


@pytest.mark.slow
def test_editable_install_ignores_the_current_directory_too(tmp_path: Path) -> None:
    # This environment's install (CI: editable, the hook in the checkout). Its .pth file
    # is a copy made at install time (the start-up module beside it is checked with the
    # wheel above), so only the hook module that it finds in the checkout is planted.
    ran = _plant(tmp_path, startup=False)
    env = {k: v for k, v in os.environ.items() if k != "CLION_HF_AUTOREGISTER"}
    r = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=tmp_path,
        env={**env, "PYTHONPATH": ":"},
    )  # fmt: skip
    assert not ran.exists() and r.returncode == 0, r.stderr
    assert "FINDER True" in r.stdout


@pytest.mark.slow
def test_hook_loads_one_cached_module_and_nothing_else(fresh_venv: Path, tmp_path: Path) -> None:
    # What the hook costs each interpreter: exactly one module more than with the hook off
    # (no importlib, no __future__, no warnings), loaded from its bytecode cache rather
    # than compiled from source each time.
    on = json.loads(_run(fresh_venv, MODULES, cwd=tmp_path).stdout)
    off = json.loads(
        _run(fresh_venv, MODULES, env={"CLION_HF_AUTOREGISTER": "0"}, cwd=tmp_path).stdout
    )
    assert sorted(set(on) - set(off)) == ["clion_hf._hook"]
    r = _run(fresh_venv, "import sys; print(sys.modules['clion_hf._hook'].__cached__)",
             cwd=tmp_path)  # fmt: skip
    cached = Path(r.stdout.strip())
    assert cached.is_file() and cached.suffix == ".pyc", r.stdout + r.stderr
    before = cached.stat().st_mtime_ns
    _run(fresh_venv, "pass", cwd=tmp_path)
    assert cached.stat().st_mtime_ns == before  # reused, not rewritten


@pytest.mark.slow
def test_env_var_turns_the_hook_off(fresh_venv: Path, tmp_path: Path) -> None:
    env = {"CLION_HF_AUTOREGISTER": "0"}
    r = _run(fresh_venv, PROBE, env=env, cwd=tmp_path)
    assert "FINDER False" in r.stdout, r.stderr
    r = _run(
        fresh_venv, SCRIPT, "--output_dir", str(tmp_path), "--optim", "clion", env=env,
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2 and "invalid choice: 'clion'" in r.stderr


@pytest.mark.slow
def test_this_environments_install_registers_too():
    # Whatever install this test runs from (CI: editable, where clion_hf/_hook.py lives in
    # the checkout rather than in site-packages), a script that never imports clion_hf
    # accepts --optim clion.
    env = {k: v for k, v in os.environ.items() if k != "CLION_HF_AUTOREGISTER"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, "--output_dir", "unused", "--optim", "clion"],
        capture_output=True, text=True, env=env, cwd=ROOT.parent,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OPTIM clion" in proc.stdout and "HELP_HAS_CLION True" in proc.stdout
