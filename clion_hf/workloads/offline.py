"""The embedded datasets: no network, the same data on every machine.

Text (``pydoc-topics``, wikitext-like rows) and sentence pairs (``pydoc-paraphrase``,
MRPC-like) are built from the frozen corpus of :mod:`clion_hf.workloads.corpus` (Python
3.11.7's documentation, split by document); images (``sklearn-digits``, CIFAR-like) are
scikit-learn's digits, split by class.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import datasets
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

from clion_hf._cache import cache_dir, cache_key
from clion_hf._files import atomic_dir

from . import corpus
from .corpus import CORPUS_SHA256, document_split, offline_documents
from .errors import RecipeError

OFFLINE_TEXT = "pydoc-topics"
OFFLINE_PAIRS = "pydoc-paraphrase"
OFFLINE_IMAGES = "sklearn-digits"
OFFLINE_DATASETS = {"text": OFFLINE_TEXT, "pairs": OFFLINE_PAIRS, "images": OFFLINE_IMAGES}
_IMAGE_SIZE = 16  # offline digits: 8x8 upsampled, so a 4x4 patch ViT sees 16 patches


# ----------------------------------------------------------------------------------------
# Embedded text: Python's own documentation, split by document
# ----------------------------------------------------------------------------------------


def _paragraphs(text: str) -> list[str]:
    return [p.strip("\n") + "\n" for p in re.split(r"\n\s*\n", text) if p.strip()]


def _sentences(text: str) -> list[str]:
    """Prose sentences of a document (code blocks, doctests and grammar rules are dropped)."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        if para.startswith("   ") or "::=" in para or "*****" in para or ">>>" in para:
            continue
        flat = " ".join(para.split())
        for sent in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'(])", flat):
            if 30 <= len(sent) <= 200:
                out.append(sent)
    return out


def _cached_dataset(name: str, build: Callable[[], DatasetDict]) -> DatasetDict:
    """``build()`` once, saved under ``cache_dir()/data`` (atomically) and memory-mapped after.

    The key covers the corpus and the source of this module and of the split, so an edit
    rebuilds. A dataset loaded from disk also lets ``datasets`` cache the recipes'
    tokenization, which would otherwise be redone by every benchmark run.
    """
    sources = [Path(__file__).read_bytes(), Path(corpus.__file__).read_bytes()]
    key = cache_key(CORPUS_SHA256, sources)
    final = cache_dir() / "data" / f"{name}-{key}"
    return datasets.load_from_disk(
        str(atomic_dir(final, lambda tmp: build().save_to_disk(str(tmp))))
    )


def offline_text_dataset(part: str) -> DatasetDict:
    """Wikitext-like ``text`` rows (one paragraph each) from the embedded documents.

    ``part`` is ``pretrain`` or ``finetune``: the documents trained on; validation and
    test are always the held-out validation and test documents, seen by neither.
    """
    if part not in ("pretrain", "finetune"):
        raise RecipeError(f"unknown offline text part {part!r}; allowed: pretrain, finetune")

    def build() -> DatasetDict:
        docs, split = offline_documents(), document_split()
        features = Features({"text": Value("string")})

        def rows(names: list[str], exclude: frozenset[str] = frozenset()) -> Dataset:
            paras = [p for n in names for p in _paragraphs(docs[n]) if p not in exclude]
            return Dataset.from_dict({"text": paras}, features=features)

        # Documents quote each other (pydoc topics share paragraphs, docstrings are
        # inherited): no paragraph of a training document enters held-out text.
        trained = frozenset(
            p for n in split["pretrain"] + split["finetune"] for p in _paragraphs(docs[n])
        )
        return DatasetDict(
            train=rows(split[part]),
            validation=rows(split["validation"], trained),
            test=rows(split["test"], trained),
        )

    return _cached_dataset(f"text-{part}", build)


def _edit(sentence: str, rng) -> str:
    """A light paraphrase: drop about a fifth of the words and swap one adjacent pair."""
    words = sentence.split()
    kept = [w for w in words if rng.random() >= 0.2] or words[:1]
    if len(kept) > 2:
        i = rng.randrange(len(kept) - 1)
        kept[i], kept[i + 1] = kept[i + 1], kept[i]
    return " ".join(kept)


def offline_pair_dataset(seed: int = 0) -> DatasetDict:
    """``pydoc-paraphrase``: an MRPC-shaped task built from the embedded documents.

    For every pair of adjacent sentences (a, b) of a document there are two rows:
    ``(a, edit(a))`` labelled ``equivalent`` (1), where edit drops about a fifth of the words
    and swaps two neighbours, and ``(a, b)`` labelled ``not_equivalent`` (0): the next
    sentence, on the same topic, so word overlap and not topic decides. Classes are
    balanced. Train pairs come from all training documents (the task is new, the text is
    the pretraining text, as GLUE's is for BERT); validation and test pairs only from the
    held-out validation and test documents, and no held-out first sentence occurs in
    training text.
    """
    import random

    def build() -> DatasetDict:
        docs, split = offline_documents(), document_split()
        features = Features(
            {
                "sentence1": Value("string"),
                "sentence2": Value("string"),
                "label": ClassLabel(names=["not_equivalent", "equivalent"]),
                "idx": Value("int32"),
            }
        )
        train_docs = split["pretrain"] + split["finetune"]
        seen = {sent for name in train_docs for sent in _sentences(docs[name])}

        def pairs(names: list[str], rng: random.Random, exclude: set[str]) -> Dataset:
            rows: dict[str, list] = {"sentence1": [], "sentence2": [], "label": [], "idx": []}
            for name in names:
                sents = _sentences(docs[name])
                for a, b in zip(sents, sents[1:], strict=False):
                    if a in exclude:
                        continue
                    for second, label in ((_edit(a, rng), 1), (b, 0)):
                        rows["sentence1"].append(a)
                        rows["sentence2"].append(second)
                        rows["label"].append(label)
                        rows["idx"].append(len(rows["idx"]))
            return Dataset.from_dict(rows, features=features)

        return DatasetDict(
            train=pairs(train_docs, random.Random(seed), set()),
            validation=pairs(split["validation"], random.Random(seed + 1), seen),
            test=pairs(split["test"], random.Random(seed + 2), seen),
        )

    return _cached_dataset(f"pairs-{seed}", build)


# ----------------------------------------------------------------------------------------
# Embedded images: scikit-learn digits, split by class
# ----------------------------------------------------------------------------------------


def sklearn_digits_sha256() -> str:
    """SHA-256 of scikit-learn's digits (images as float64, then targets as int64)."""
    import hashlib

    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    h = hashlib.sha256(np.ascontiguousarray(digits.images, dtype="<f8").tobytes())
    h.update(np.ascontiguousarray(digits.target, dtype="<i8").tobytes())
    return h.hexdigest()


def offline_image_dataset(part: str, seed: int = 0) -> DatasetDict:
    """CIFAR-shaped (``img``, ``label``) 16x16 RGB digits.

    ``pretrain`` holds digits 0-4 and ``finetune`` digits 5-9 (relabelled 0-4, label names
    ``"5"``..``"9"``), so finetuning is a new task; each is split 50/25/25 (stratified, a
    fixed seed: the same split for every run) into train, validation and a held-out test
    split, about 450 / 225 / 225 images.
    """
    import numpy as np
    from PIL import Image as PILImage
    from sklearn.datasets import load_digits

    if part not in ("pretrain", "finetune"):
        raise RecipeError(f"unknown offline image part {part!r}; allowed: pretrain, finetune")
    digits = load_digits()
    classes = list(range(5)) if part == "pretrain" else list(range(5, 10))
    images, labels = [], []
    for img, target in zip(digits.images, digits.target, strict=True):
        if target in classes:
            gray = (img * (255.0 / 16.0)).astype(np.uint8)
            pil = PILImage.fromarray(gray, mode="L").resize((_IMAGE_SIZE,) * 2, PILImage.BILINEAR)
            images.append(pil.convert("RGB"))
            labels.append(classes.index(int(target)))
    features = Features({"img": Image(), "label": ClassLabel(names=[str(c) for c in classes])})
    ds = Dataset.from_dict({"img": images, "label": labels}, features=features)
    split = ds.train_test_split(test_size=0.5, seed=seed, stratify_by_column="label")
    held = split["test"].train_test_split(test_size=0.5, seed=seed, stratify_by_column="label")
    return DatasetDict(train=split["train"], validation=held["train"], test=held["test"])
