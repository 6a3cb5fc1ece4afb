"""Write the embedded text corpus of the recipes (``clion_hf/workloads/embedded/``).

The corpus is Python 3.11.7's own documentation: the ``help()`` topics
(``pydoc_data.topics``, one document per topic) and the docstrings of the standard
library (one document per module file, parsed with ``ast``: nothing is imported). Test
suites, IDLE, tkinter, lib2to3 and the turtle demos are left out; docstrings under 40
characters are dropped. This is what the recipes built at run time from the running
Python until the corpus was frozen, so the committed benchmark reports (run on 3.11.7)
used exactly this text.

    python tools/freeze_corpus.py           # write the file (needs CPython 3.11.7)
    python tools/freeze_corpus.py --check   # rebuild and compare with the shipped file

Writing prints the SHA-256 of the uncompressed file: it goes into
``clion_hf.workloads.corpus.CORPUS_SHA256`` (the loader checks it).
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import json
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

VERSION = (3, 11, 7)
ROOT = Path(__file__).resolve().parents[1]
# clion_hf.workloads.corpus.CORPUS_FILE (not imported: that would import torch)
CORPUS_FILE = ROOT / "clion_hf" / "workloads" / "embedded" / "python-3.11.7-docs.jsonl.gz"

# Test suites (their docstrings describe test cases, not the library) and the IDLE /
# tkinter / 2to3 / turtle demo code.
STDLIB_SKIP = ("test", "tests", "idlelib", "lib2to3", "tkinter", "turtledemo", "ensurepip",
               "site-packages", "dist-packages", "__pycache__")  # fmt: skip
MIN_DOCSTRING = 40  # characters: drops one-liners such as "Return self==value."


def pydoc_documents() -> dict[str, str]:
    """The topic documents of the running Python's ``help()``."""
    from pydoc_data.topics import topics

    return dict(topics)


def _docstrings(tree: ast.AST) -> Iterator[str]:
    """Docstrings of a module, its classes and functions, in source order."""
    if isinstance(tree, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
        doc = ast.get_docstring(tree)
        if doc and len(doc) >= MIN_DOCSTRING:
            yield doc
    for child in ast.iter_child_nodes(tree):
        yield from _docstrings(child)


def stdlib_documents() -> dict[str, str]:
    """Docstrings of the running Python's standard library, one document per module file."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(p in STDLIB_SKIP or p.startswith("test") for p in rel.parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):  # a file of another Python version
            continue
        text = "\n\n".join(_docstrings(tree))
        if text:
            docs[rel.as_posix()] = text
    return docs


def corpus_bytes() -> bytes:
    """The uncompressed file: one JSON object ``{"name", "text"}`` per line, UTF-8."""
    docs = {f"pydoc:{name}": text for name, text in pydoc_documents().items()}
    docs.update({f"stdlib:{name}": text for name, text in stdlib_documents().items()})
    lines = (json.dumps({"name": n, "text": t}, ensure_ascii=False) + "\n" for n, t in docs.items())
    return "".join(lines).encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare a rebuild with the shipped file instead of writing it")
    args = parser.parse_args()
    if sys.implementation.name != "cpython" or sys.version_info[:3] != VERSION:
        print(f"error: the corpus is Python {'.'.join(map(str, VERSION))}'s documentation; "
              f"this is {sys.implementation.name} {sys.version.split()[0]}", file=sys.stderr)
        return 2
    raw = corpus_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if args.check:
        shipped = hashlib.sha256(gzip.decompress(CORPUS_FILE.read_bytes())).hexdigest()
        print(f"rebuilt {digest}\nshipped {shipped}")
        return 0 if digest == shipped else 1
    # mtime=0: the same text gives the same file
    CORPUS_FILE.write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
    print(f"{CORPUS_FILE.relative_to(ROOT)}: {len(raw)} bytes, {CORPUS_FILE.stat().st_size} "
          f"compressed; sha256 (uncompressed) {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
