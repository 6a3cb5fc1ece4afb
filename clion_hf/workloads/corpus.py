"""The embedded text corpus: Python 3.11.7's own documentation, frozen and shipped.

557 documents, about 2 MB of English: the ~80 ``help()`` topics (``pydoc:<topic>``) and
the docstrings of the standard library, one document per module file
(``stdlib:<module path>``). ``tools/freeze_corpus.py`` extracted them once from CPython
3.11.7 (the Python of the committed benchmark reports) into
``embedded/python-3.11.7-docs.jsonl.gz`` (one JSON object ``{"name", "text"}`` per line;
the licence, PSF version 2, lies beside it), so the recipes train and evaluate on the same
text on every Python. :data:`CORPUS_SHA256` names that text: recipes record it in their
results (``data_sha256``). Standard library only.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
from pathlib import Path

CORPUS_FILE = Path(__file__).with_name("embedded") / "python-3.11.7-docs.jsonl.gz"
CORPUS_SHA256 = "0fcf4f690fc3ea3a03c00fd0fe60e02c2df7c29bb84ad4e1ec35fdc32d9ed7f8"
"""SHA-256 of the uncompressed :data:`CORPUS_FILE`; the loader checks it."""

# Held-out parts, as fractions of the corpus' characters (the rest is trained on)
_SPLIT_QUOTA = {"validation": 0.10, "test": 0.10, "finetune": 0.20}


@functools.cache
def _documents() -> tuple[tuple[str, str], ...]:
    try:
        raw = gzip.decompress(CORPUS_FILE.read_bytes())
    except (OSError, EOFError) as err:
        raise RuntimeError(f"cannot read the embedded corpus {CORPUS_FILE}: {err}; "
                           "reinstall clion-hf") from None  # fmt: skip
    digest = hashlib.sha256(raw).hexdigest()
    if digest != CORPUS_SHA256:
        raise RuntimeError(f"the embedded corpus {CORPUS_FILE} has SHA-256 {digest}, expected "
                           f"{CORPUS_SHA256}; reinstall clion-hf")  # fmt: skip
    rows = (json.loads(line) for line in raw.decode().splitlines())
    return tuple((row["name"], row["text"]) for row in rows)


def offline_documents() -> dict[str, str]:
    """The embedded corpus, by document name (a new dict each call; read once per process)."""
    return dict(_documents())


def document_split(documents: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Assign every document to one of ``pretrain``/``finetune``/``validation``/``test``.

    Documents are ordered by a hash of their name (deterministic, unlike ``hash()``, and
    unrelated to their content or source), then validation takes documents until it holds
    10% of the characters, test 10% and finetune 20%, and pretrain gets the rest, so the
    parts are disjoint at the document level and each held-out part is a random sample of
    many documents. Validation is for choosing hyper-parameters; test is reported on.
    """
    docs = offline_documents() if documents is None else documents
    total = sum(len(t) for t in docs.values())
    order = sorted(docs, key=lambda name: hashlib.sha256(name.encode()).hexdigest())
    parts: dict[str, list[str]] = {"validation": [], "test": [], "finetune": [], "pretrain": []}
    sizes = dict.fromkeys(_SPLIT_QUOTA, 0)
    for name in order:
        part = next((p for p in _SPLIT_QUOTA if sizes[p] < _SPLIT_QUOTA[p] * total), "pretrain")
        if part != "pretrain":
            sizes[part] += len(docs[name])
        parts[part].append(name)
    return parts
