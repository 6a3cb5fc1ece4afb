#!/usr/bin/env python
"""What the start-up hook costs every Python start in an environment with clion-hf.

    python benchmarks/hook_startup.py [--pairs 300]

Builds this checkout's wheel, installs it without dependencies into a fresh virtual
environment (the hook needs none) and times ``python -c pass`` there, interleaved with the
same interpreter (a) with ``CLION_HF_AUTOREGISTER=0`` and (b) in a bare virtual environment
without clion-hf. Prints the median of the paired differences with their interquartile
range, and the modules the hook adds (from ``-X importtime``). Wrap it in the shared
timing lock when others use the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    return path / "bin" / "python"


def _start(py: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(py), "-c", "pass"], env=env, cwd=tempfile.gettempdir(), check=True)
    return time.perf_counter() - t0


def _summary(name: str, a: list[float], b: list[float]) -> str:
    diffs = sorted((x - y) * 1e3 for x, y in zip(a, b, strict=True))
    n = len(diffs)
    return (f"{name}: median {statistics.median(diffs):.2f} ms (IQR {diffs[n // 4]:.2f} .. "
            f"{diffs[3 * n // 4]:.2f}; python -c pass itself {statistics.median(b) * 1e3:.1f} ms)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=300, help="paired starts (default 300)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clion-hook-bench-") as tmp:
        tmp_path = Path(tmp)
        subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q",
                        "-w", str(tmp_path / "dist")], check=True)  # fmt: skip
        (wheel,) = (tmp_path / "dist").glob("clion_hf-*.whl")
        with_hf, bare = _venv(tmp_path / "with"), _venv(tmp_path / "bare")
        subprocess.run([sys.executable, "-m", "pip", "--python", str(with_hf), "install",
                        "--no-deps", "-q", str(wheel)], check=True)  # fmt: skip
        on = {k: v for k, v in os.environ.items() if k not in ("CLION_HF_AUTOREGISTER",
                                                                "PYTHONPATH")}  # fmt: skip
        off = {**on, "CLION_HF_AUTOREGISTER": "0"}
        _start(with_hf, on)  # writes the bytecode caches
        t_on, t_off, t_bare = [], [], []
        for _ in range(args.pairs):
            t_on.append(_start(with_hf, on))
            t_off.append(_start(with_hf, off))
            t_bare.append(_start(bare, on))
        cumulative: dict[str, list[int]] = {}
        for _ in range(21):
            err = subprocess.run([str(with_hf), "-X", "importtime", "-c", "pass"], env=on,
                                 capture_output=True, text=True).stderr  # fmt: skip
            for line in err.splitlines():
                if "clion" in line:
                    _, cum, name = (part.strip() for part in line.split(":", 1)[1].split("|"))
                    cumulative.setdefault(name, []).append(int(cum))
    print(f"clion-hf start-up hook, {args.pairs} interleaved starts each; load average "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}")  # fmt: skip
    print(_summary("hook on - hook off (CLION_HF_AUTOREGISTER=0)", t_on, t_off))
    print(_summary("hook on - environment without clion-hf", t_on, t_bare))
    print("modules the hook imports (-X importtime, median of 21 starts, cumulative):")
    for name, values in cumulative.items():
        print(f"  {name}: {statistics.median(values)} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
