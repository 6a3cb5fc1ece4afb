"""What ``clion-bench`` shows while it works: duration estimates and elapsed-time tickers.

A leaf module (standard library and tqdm only), shared by the subcommands and the runner.
The bars are tqdm's; only the wording of the estimates is written here.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterator


def duration_text(low: float, high: float) -> str:
    """``about 40 s .. 2 min`` (``about 5 s`` when both ends read the same)."""

    def one(x: float) -> str:
        return f"{x:.0f} s" if x < 90 else f"{x / 60:.0f} min" if x < 5400 else f"{x / 3600:.1f} h"

    return f"about {one(low)}" if one(low) == one(high) else f"about {one(low)} .. {one(high)}"


@contextlib.contextmanager
def quiet_optimizer_warnings() -> Iterator[None]:
    """Silence clion_hf's optimizer warnings: the benchmarks build CLion's global mode on
    purpose and report its sign-branch fraction themselves."""
    log = logging.getLogger("clion_hf.optim")
    before = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(before)


@contextlib.contextmanager
def ticker(desc: str, *, enabled: bool = True, every: float = 1.0) -> Iterator[None]:
    """A line on stderr that counts the seconds while the block runs (a tqdm bar with no
    total: the work inside reports no progress of its own). Shown from the first tick on,
    so a block that ends (or fails) at once prints nothing."""
    if not enabled:
        yield
        return
    from tqdm.auto import tqdm

    done = threading.Event()
    with tqdm(desc=desc, bar_format="{desc}: {elapsed} elapsed", file=sys.stderr,
              mininterval=every / 2, delay=every, dynamic_ncols=True) as bar:  # fmt: skip

        def tick() -> None:
            while not done.wait(every):
                bar.update(0)  # redraws (elapsed time) once the delay has passed

        thread = threading.Thread(target=tick, name="clion-bench-ticker", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()


__all__ = ["duration_text", "quiet_optimizer_warnings", "ticker"]
