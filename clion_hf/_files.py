"""Writing files so that nothing half-written is ever seen (a leaf module: imports stdlib only).

Every writer in clion_hf that must survive a kill or a concurrent reader goes through
here: the benchmark's result files, reports and plots, and the data/model caches. The
pattern is always the same: write into a temporary sibling, then ``os.replace`` (files) or
``os.rename`` (directories) it into place, so a reader sees the old content or the new,
never a mix, and a killed writer leaves at most a ``.tmp`` sibling that nobody reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    For writers that want a file name (``fig.savefig(tmp)``, ``torch.save(obj, tmp)``).
    On an exception (or a signal raising one) the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


PROBE_BYTES = 1 << 20


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks (caches verify what they serve)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def probe_writable(directory: Path, nbytes: int = PROBE_BYTES) -> None:
    """Write ``nbytes`` into a temporary file in ``directory`` (synced), then remove it.

    Raises ``OSError`` (read-only, no permission, a full disk) before any real work: an
    empty file passes on a full disk, so the probe writes bytes, and syncs them so that a
    filesystem that allocates late (ext4's delayed allocation, NFS) reports it now.
    """
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".write-probe.", suffix=".tmp")
    try:
        chunk = b"\0" * min(nbytes, 1 << 16)
        left = nbytes
        while left > 0:
            left -= os.write(fd, chunk[:left])
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see the module doc)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def read_json(path: Path) -> Any | None:
    """The parsed file, or None if it is missing, unreadable or not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def atomic_dir(final: Path, build: Callable[[Path], None]) -> Path:
    """Return the directory ``final``, creating it first with ``build(tmp_dir)`` if missing.

    ``build`` fills a temporary sibling that is then renamed into place, so a killed build
    or two processes racing never leave a half-written directory behind (the loser of a
    race discards its copy and uses the winner's).
    """
    final = Path(final)
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # a real failure, not another process winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def discard_dir(path: Path) -> None:
    """Remove the directory ``path``: first renamed aside (atomic, so that a reader sees it
    whole or not at all, and :func:`atomic_dir` can build a new one at once), then deleted.
    Nothing happens if it is already gone (another process discarded it first)."""
    path = Path(path)
    trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".discarded", dir=path.parent))
    try:
        with contextlib.suppress(FileNotFoundError):
            os.rename(path, trash / path.name)
    finally:
        shutil.rmtree(trash, ignore_errors=True)
