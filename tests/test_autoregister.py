"""The start-up hook: a script that never imports clion_hf accepts ``--optim clion``.

Checked from a non-editable install of the built wheel into a fresh virtual environment
(the heavy dependencies come from the test's own environment through a ``.pth`` path).
"""

from __future__ import annotations

import os
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
