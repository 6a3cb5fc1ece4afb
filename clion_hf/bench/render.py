"""What every report writes the same way: markdown tables, PNG figures, findings blocks and
the host's facts (``clion-bench report``, ``study``, ``steps`` and ``throughput``).

Hand-written: pandas' ``DataFrame.to_markdown`` needs ``tabulate`` (not a dependency) and
pads the cells, which would reformat every committed report; the rest are a few lines each.
"""

from __future__ import annotations

import csv
import io
import os
import platform
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from clion_hf._files import atomic_path


def table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    """A markdown table's lines."""
    header = list(header)
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]  # fmt: skip


def records_table(records: Iterable[Mapping[str, str]], headers: Mapping[str, str]) -> str:
    """A markdown table of ``records`` (dicts of cells), columns ``headers`` (key -> title)."""
    return "\n".join(table(headers.values(), ([r[k] for k in headers] for r in records)))


def csv_text(rows: Iterable[Mapping[str, Any]], columns: Iterable[str]) -> str:
    """``rows`` as CSV with a header, ``columns`` in order; a missing or None cell is blank
    (floats as ``repr``, so that reading them back gives the same numbers)."""
    columns = list(columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if row.get(k) is None else row[k] for k in columns} for row in rows)
    return buf.getvalue()


def findings_block(text: str, begin: str, end: str) -> list[str]:
    """The lines of a written report between the markers ``begin`` and ``end``."""
    start = text.index(begin) + len(begin)
    return text[start:text.index(end)].strip("\n").splitlines()


def save_figure(fig: Any, path: Path) -> None:
    """Write ``fig`` as a PNG, atomically (a reader never sees half a file)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


class Figures:
    """Draws a report's figures into ``plot_dir``: a figure that fails to draw becomes a
    line in :attr:`errors`, never a lost report. With ``keep``, every drawn figure is also
    kept there, open, under the key the caller gives (for inspection by tests)."""

    def __init__(self, plot_dir: Path, keep: dict[str, Any] | None = None) -> None:
        import matplotlib

        matplotlib.use("Agg")
        plot_dir.mkdir(parents=True, exist_ok=True)
        self.plot_dir, self.keep = plot_dir, keep
        self.errors: list[str] = []

    def draw(self, fname: str, draw: Callable[[], Any], keep_as: str | None = None
             ) -> str | None:  # fmt: skip
        """``plots/FNAME`` once ``draw()``'s figure is written; None if it drew nothing."""
        import matplotlib.pyplot as plt

        fig = None
        try:
            fig = draw()
            if fig is None:
                return None
            save_figure(fig, self.plot_dir / fname)
            if self.keep is not None:
                self.keep[keep_as or fname], fig = fig, None  # kept open for the caller
            return f"plots/{fname}"
        except Exception as err:  # a plot must never cost the report
            self.errors.append(f"plot `{fname}` not drawn: {type(err).__name__}: {err}")
            return None
        finally:
            if fig is not None:
                plt.close(fig)


def label_axes(ax: Any, title: str, x: str, y: str, size: float | None = None,
               title_size: float | None = None, grid: bool = False) -> None:  # fmt: skip
    """Title and axis labels of a plot (at font ``size``; the title at ``title_size`` if
    given), and a light grid if asked."""
    kw = {} if size is None else {"fontsize": size}
    ax.set_title(title, **({"fontsize": title_size} if title_size is not None else kw))
    ax.set_xlabel(x, **kw)
    ax.set_ylabel(y, **kw)
    if grid:
        ax.grid(alpha=0.3)


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """``AMD EPYC (family 25, model 17, stepping 1)`` from /proc/cpuinfo where it is readable
    (a VM's model name alone often hides which CPU generation it is), else what
    :mod:`platform` knows."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    ids = [f"{label} {fields[key]}" for label, key in
           (("family", "cpu family"), ("model", "model"), ("stepping", "stepping"))
           if fields.get(key)]  # fmt: skip
    return f"{name} ({', '.join(ids)})" if ids else name


def host_facts() -> dict[str, str]:
    """This machine now, for the header of a timing table: time, processor, torch threads,
    versions, ``OMP_WAIT_POLICY`` and the load average."""
    import torch

    load = (" ".join(Path("/proc/loadavg").read_text().split()[:3])
            if os.path.exists("/proc/loadavg") else "n/a")  # fmt: skip
    return {
        "now": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_model(),
        "threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "omp": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "load": load,
    }


def run_environment_line(env: Mapping[str, Any]) -> str | None:
    """``Host: NAME (N CPUs), torch X, transformers Y, Python Z, commit C.`` from what the
    runner records with every run (:func:`clion_hf.bench.runner.environment_info`)."""
    versions = env.get("versions") or {}
    facts = {"host": env.get("host"), "cpus": env.get("cpus"), "python": env.get("python"),
             "torch": versions.get("torch"), "transformers": versions.get("transformers"),
             "commit": env.get("git_commit")}  # fmt: skip
    if not any(facts.values()):
        return None
    commit = f", commit {str(facts['commit'])[:10]}" if facts["commit"] else ""
    return (f"Host: {facts['host'] or '?'} ({facts['cpus'] or '?'} CPUs), torch "
            f"{facts['torch'] or '?'}, transformers {facts['transformers'] or '?'}, Python "
            f"{facts['python'] or '?'}{commit}.")
