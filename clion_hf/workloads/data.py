"""Datasets and tokenizers for the recipes.

Three sources, in order of precedence:

1. local files: ``--train_file``/``--validation_file`` (csv, json, jsonl, txt) for text, and
   ``--train_dir``/``--validation_dir`` (an image folder) for images;
2. ``--dataset_name``: a Hub dataset (``wikitext``, ``glue``, ``cifar10``, ...), a directory
   written by ``Dataset(Dict).save_to_disk``, or one of the embedded offline datasets;
3. nothing: the embedded offline default of the recipe's family.

The embedded datasets need no network. Their text is the running Python's own
documentation: the ``help()`` topics (``pydoc_data.topics``) and the docstrings of the
standard library (what ``pydoc`` shows for each module), split by document into training,
validation and test parts; their images are scikit-learn's digits.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import sys
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import Any

import datasets
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

from clion_hf._cache import cache_dir
from clion_hf._files import atomic_dir, atomic_write_json, read_json

OFFLINE_TEXT = "pydoc-topics"
OFFLINE_PAIRS = "pydoc-paraphrase"
OFFLINE_IMAGES = "sklearn-digits"
OFFLINE_DATASETS = {"text": OFFLINE_TEXT, "pairs": OFFLINE_PAIRS, "images": OFFLINE_IMAGES}

# Which two text columns a GLUE config uses (as in transformers' run_glue.py).
GLUE_TASK_TO_KEYS: dict[str, tuple[str, str | None]] = {
    "cola": ("sentence", None),
    "mnli": ("premise", "hypothesis"),
    "mrpc": ("sentence1", "sentence2"),
    "qnli": ("question", "sentence"),
    "qqp": ("question1", "question2"),
    "rte": ("sentence1", "sentence2"),
    "sst2": ("sentence", None),
    "wnli": ("sentence1", "sentence2"),
}
_FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".txt": "text"}
_IMAGE_SIZE = 16  # offline digits: 8x8 upsampled, so a 4x4 patch ViT sees 16 patches


class RecipeError(ValueError):
    """Bad user input; recipes print it as a single line and exit with status 2."""


def _sha(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------
# Embedded text: Python's own documentation, split by document
# ----------------------------------------------------------------------------------------

# Parts of the standard library left out of the corpus: test suites (their docstrings
# describe test cases, not the library) and the IDLE / tkinter / 2to3 / turtle demo code.
_STDLIB_SKIP = ("test", "tests", "idlelib", "lib2to3", "tkinter", "turtledemo", "ensurepip",
                "site-packages", "dist-packages", "__pycache__")  # fmt: skip
_MIN_DOCSTRING = 40  # characters: drops one-liners such as "Return self==value."
# Bump when the corpus or its split changes: it is part of every offline cache key.
CORPUS_VERSION = 2
# Held-out parts, as fractions of the corpus' characters (the rest is trained on)
_SPLIT_QUOTA = {"validation": 0.10, "test": 0.10, "finetune": 0.20}


def pydoc_documents() -> dict[str, str]:
    """The ~80 topic documents of the running Python's ``help()`` (about 0.5 MB of English)."""
    from pydoc_data.topics import topics

    return dict(topics)


def _docstrings(tree: ast.AST) -> Iterator[str]:
    """Docstrings of a module, its classes and functions, in source order."""
    if isinstance(tree, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
        doc = ast.get_docstring(tree)
        if doc and len(doc) >= _MIN_DOCSTRING:
            yield doc
    for child in ast.iter_child_nodes(tree):
        yield from _docstrings(child)


def stdlib_documents() -> dict[str, str]:
    """Docstrings of the running Python's standard library, one document per module file.

    The source files are parsed with ``ast`` (nothing is imported, so no module runs; the
    text is what ``pydoc``/``inspect.getdoc`` show). Test suites, IDLE, tkinter, lib2to3
    and the turtle demos are left out; docstrings under 40 characters are dropped. About
    1.4 MB of English on CPython 3.11. Cached per Python version under ``cache_dir()``.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    key = _sha(CORPUS_VERSION, sys.version, str(root))
    cached = cache_dir() / "data" / f"stdlib-docstrings-{key}.json"
    docs = read_json(cached)
    if isinstance(docs, dict):
        return docs
    docs = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(p in _STDLIB_SKIP or p.startswith("test") for p in rel.parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):  # a file of another Python version
            continue
        text = "\n\n".join(_docstrings(tree))
        if text:
            docs[rel.as_posix()] = text
    atomic_write_json(cached, docs)
    return docs


def offline_documents() -> dict[str, str]:
    """The embedded corpus: ``pydoc:<topic>`` and ``stdlib:<module path>`` documents."""
    docs = {f"pydoc:{name}": text for name, text in pydoc_documents().items()}
    docs.update({f"stdlib:{name}": text for name, text in stdlib_documents().items()})
    return docs


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

    The key covers this module's source and the Python version (the corpus comes from it),
    so an edit rebuilds. A dataset loaded from disk also lets ``datasets`` cache the
    recipes' tokenization, which would otherwise be redone by every benchmark run.
    """
    key = _sha(CORPUS_VERSION, sys.version, Path(__file__).read_bytes())
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


# ----------------------------------------------------------------------------------------
# Loading: local files, Hub / saved datasets, offline defaults
# ----------------------------------------------------------------------------------------


def _check_file(path: str, what: str) -> str:
    if not Path(path).is_file():
        raise RecipeError(f"{what} {path!r} does not exist (expected a csv/json/jsonl/txt file)")
    return path


def _load_files(
    train_file: str | None, validation_file: str | None, test_file: str | None = None
) -> DatasetDict:
    files = {}
    if train_file:
        files["train"] = _check_file(train_file, "--train_file")
    if validation_file:
        files["validation"] = _check_file(validation_file, "--validation_file")
    if test_file:
        files["test"] = _check_file(test_file, "--test_file")
    suffix = Path(files.get("train", files.get("validation", ""))).suffix.lower()
    if suffix not in _FILE_BUILDERS:
        raise RecipeError(
            f"unsupported data file extension {suffix!r}; allowed: {', '.join(_FILE_BUILDERS)}"
        )
    for split, path in files.items():
        if Path(path).stat().st_size == 0:
            raise RecipeError(f"--{split}_file {path!r} is empty")
    return _read_local(lambda: datasets.load_dataset(_FILE_BUILDERS[suffix], data_files=files),
                       f"{', '.join(files.values())} as {_FILE_BUILDERS[suffix]}")  # fmt: skip


def _read_local(load: Callable[[], DatasetDict], what: str) -> DatasetDict:
    """``load()`` a user's local files; any failure there is about the files: one line."""
    try:
        return load()
    except RecipeError:
        raise
    except Exception as err:  # datasets wraps the parser's error (JSON, CSV, UTF-8, Arrow)
        cause = err
        while cause.__cause__ is not None or cause.__context__ is not None:
            cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        raise RecipeError(f"cannot read {what}: {type(cause).__name__}"
                          + (f": {detail[:200]}" if detail else "")) from None


def hub_offline() -> bool:
    """True when the environment forbids Hub access (``HF_HUB_OFFLINE=1`` and friends)."""
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(f, "").lower() in ("1", "true", "yes", "on") for f in flags)


def _load_named(name: str, config: str | None, family: str, part: str) -> DatasetDict:
    """A Hub dataset by name, or a ``save_to_disk`` directory."""
    if Path(name).is_dir() and (
        (Path(name) / "dataset_dict.json").is_file() or (Path(name) / "state.json").is_file()
    ):
        loaded = datasets.load_from_disk(name)
        return loaded if isinstance(loaded, DatasetDict) else DatasetDict(train=loaded)
    if hub_offline() and not Path(name).exists():
        raise RecipeError(
            f"unknown dataset {name!r} in offline mode; allowed: {OFFLINE_DATASETS[family]!r} "
            "(the embedded default), a save_to_disk directory, or local files"
        )
    short = name.rsplit("/", 1)[-1]  # "Salesforce/wikitext" and "wikitext" alike
    return datasets.load_dataset(name, config or DEFAULT_CONFIGS.get((short, part)))


# Seed of every split and sample this module draws from a dataset (validation carved from
# train, a labelled test split carved from train, random eval subsets): fixed, not the
# run's seed, so every run of a comparison, whatever its seed, sees the same held-out data.
SPLIT_SEED = 0


def _ensure_validation(raw: DatasetDict, percentage: int, test_percentage: int = 0
                       ) -> DatasetDict:  # fmt: skip
    """Use the dataset's validation split, or hold out ``percentage`` % of train.

    A ``test`` split is kept when it has labels (GLUE hides its test labels as -1: dropped).
    Without a labelled one, ``test_percentage`` > 0 carves a labelled test split out of
    train first (as MRPC needs). All carving uses :data:`SPLIT_SEED`.
    """
    if "train" not in raw:
        raise RecipeError(f"dataset has no 'train' split (splits: {', '.join(raw)})")
    if len(raw["train"]) == 0:
        raise RecipeError("the training data is empty (0 rows)")
    train = raw["train"]
    test = raw["test"] if "test" in raw and _has_labels(raw["test"]) else None
    if test is None and test_percentage:
        carved = train.train_test_split(test_size=test_percentage / 100, seed=SPLIT_SEED)
        train, test = carved["train"], carved["test"]
    out = None
    for name in ("validation", "validation_matched"):
        if name in raw:
            out = DatasetDict(train=train, validation=raw[name])
            break
    if out is None:
        if len(train) < 2:
            raise RecipeError(
                f"the training data has {len(train)} row(s): too few to hold out a validation "
                "split; give --validation_file or more data"
            )
        split = train.train_test_split(test_size=percentage / 100, seed=SPLIT_SEED)
        out = DatasetDict(train=split["train"], validation=split["test"])
    if test is not None:
        out["test"] = test
    return out


def _has_labels(ds: Dataset) -> bool:
    for col in ("label", "fine_label", "labels"):
        if col in ds.column_names:
            return len(ds) > 0 and min(ds[col][:100]) >= 0
    return True  # language-modelling text: the text is its own label


def sample(ds: Dataset, n: int | None) -> Dataset:
    """At most ``n`` rows of ``ds`` drawn at random (:data:`SPLIT_SEED`), not its first ``n``:
    held-out rows are often ordered by document, and the first ``n`` would be few documents."""
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=SPLIT_SEED).select(range(n))


def _select(raw: DatasetDict, max_train: int | None, max_eval: int | None,
            max_test: int | None = None) -> DatasetDict:  # fmt: skip
    out = {}
    for split, ds in raw.items():
        if split == "train":  # the first rows, as the HF examples' --max_train_samples
            out[split] = ds.select(range(min(max_train, len(ds)))) if max_train else ds
        else:
            out[split] = sample(ds, max_test if split == "test" else max_eval)
    return DatasetDict(out)


_FILE_ARGS = ("train_file", "validation_file", "train_dir", "validation_dir")
# Hub datasets that need a config, and the one each recipe part uses when none is given
DEFAULT_CONFIGS = {
    ("wikitext", "pretrain"): "wikitext-103-raw-v1",
    ("wikitext", "finetune"): "wikitext-2-raw-v1",
    ("glue", "finetune"): "sst2",
}


def uses_offline_default(data_args) -> bool:
    """True when the recipe runs on its embedded dataset (no data arguments, or its name)."""
    return not any(getattr(data_args, k, None) for k in _FILE_ARGS) and (
        data_args.dataset_name is None or data_args.dataset_name in OFFLINE_DATASETS.values()
    )


def is_hub_dataset(data_args) -> bool:
    """True when ``--dataset_name`` names a Hub dataset (not embedded, not a local directory).

    Recipes use the full-size online defaults (model, tokenizer) only in this case.
    """
    name = data_args.dataset_name
    return (
        name is not None
        and name not in OFFLINE_DATASETS.values()
        and not Path(name).exists()
        and not any(getattr(data_args, k, None) for k in _FILE_ARGS)
    )


def _test_percentage(data_args) -> int:
    return getattr(data_args, "test_split_percentage", 0) or 0


def _offline_name_check(name: str | None, family: str) -> None:
    if name is not None and name != OFFLINE_DATASETS[family]:
        raise RecipeError(
            f"embedded dataset {name!r} does not fit this recipe; allowed: "
            f"{OFFLINE_DATASETS[family]!r}, a Hub dataset, or local files"
        )


def load_text_datasets(data_args, part: str) -> tuple[DatasetDict, str]:
    """Raw text for language modelling and the name of its text column.

    ``part`` picks the embedded documents (``pretrain`` or ``finetune``) for the offline default.
    """
    if uses_offline_default(data_args):
        _offline_name_check(data_args.dataset_name, "text")
        raw = offline_text_dataset(part)
    elif data_args.train_file or data_args.validation_file:
        raw = _load_files(
            data_args.train_file, data_args.validation_file, data_args.test_file
        )
    else:
        raw = _load_named(data_args.dataset_name, data_args.dataset_config_name, "text", part)
    raw = _select(
        _ensure_validation(raw, data_args.validation_split_percentage, _test_percentage(data_args)),
        data_args.max_train_samples,
        None,  # max_eval_samples caps blocks after grouping, as in run_clm.py
    )
    features = raw["train"].features
    strings = [c for c, f in features.items() if getattr(f, "dtype", None) in ("string",
                                                                               "large_string")]
    if "text" in strings:
        return raw, "text"
    if len(strings) == 1:
        return raw, strings[0]
    raise RecipeError(f"language-model data needs a 'text' column (or exactly one column of "
                      f"strings); found {list(features)}")


def load_classification_datasets(
    data_args,
) -> tuple[DatasetDict, tuple[str, str | None], list[str]]:
    """Raw GLUE-like data: (datasets, the one or two text columns, label names)."""
    if uses_offline_default(data_args):
        _offline_name_check(data_args.dataset_name, "pairs")
        raw = offline_pair_dataset()
    elif data_args.train_file or data_args.validation_file:
        raw = _load_files(
            data_args.train_file, data_args.validation_file, data_args.test_file
        )
    else:
        raw = _load_named(
            data_args.dataset_name, data_args.dataset_config_name, "pairs", "finetune"
        )
    raw = _ensure_validation(
        raw, data_args.validation_split_percentage, _test_percentage(data_args)
    )
    raw = _select(raw, data_args.max_train_samples, data_args.max_eval_samples,
                  getattr(data_args, "max_test_samples", None))  # fmt: skip
    columns = raw["train"].column_names
    if "label" not in columns:
        raise RecipeError(f"classification data needs a 'label' column; found {columns}")
    config = data_args.dataset_config_name or (
        "sst2" if data_args.dataset_name and data_args.dataset_name.endswith("glue") else None
    )
    if config in GLUE_TASK_TO_KEYS and GLUE_TASK_TO_KEYS[config][0] in columns:
        keys = GLUE_TASK_TO_KEYS[config]
    elif "sentence1" in columns and "sentence2" in columns:
        keys = ("sentence1", "sentence2")
    elif "sentence" in columns:
        keys = ("sentence", None)
    else:  # as run_glue.py: the first one or two non-label text columns
        text = [c for c in columns if c not in ("label", "idx")
                and getattr(raw["train"].features[c], "dtype", None) == "string"]  # fmt: skip
        if not text:
            raise RecipeError(f"classification data needs a text column besides 'label'; "
                              f"found {columns}")
        keys = (text[0], text[1] if len(text) > 1 else None)
    feature = raw["train"].features["label"]
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
    elif feature.dtype.startswith("float"):
        raise RecipeError("regression labels (float 'label', e.g. GLUE stsb) are not supported")
    else:
        names = [str(v) for v in sorted(set(raw["train"]["label"]))]
        if feature.dtype == "string":  # string labels: map to ids, keeping the names
            ids = {n: i for i, n in enumerate(names)}
            raw = raw.map(lambda b: {"label": [ids[v] for v in b["label"]]}, batched=True)
        else:
            raw = raw.cast_column("label", ClassLabel(names=names))
    return raw, keys, names


def load_image_datasets(
    data_args, part: str
) -> tuple[DatasetDict, str, str, list[str]]:
    """Raw CIFAR-like data: (datasets, image column, label column, label names)."""
    if uses_offline_default(data_args):
        _offline_name_check(data_args.dataset_name, "images")
        raw = offline_image_dataset(part)
    elif data_args.train_dir or data_args.validation_dir:
        files = {}
        for split, d, flag in (
            ("train", data_args.train_dir, "--train_dir"),
            ("validation", data_args.validation_dir, "--validation_dir"),
        ):
            if d:
                if not Path(d).is_dir():
                    raise RecipeError(f"{flag} {d!r} is not a directory (expected an image folder)")
                if not any(p.is_file() for p in Path(d).rglob("*")):
                    raise RecipeError(f"{flag} {d!r} holds no files (expected class folders "
                                      "of images)")  # fmt: skip
                files[split] = str(Path(d) / "**")
        raw = _read_local(lambda: datasets.load_dataset("imagefolder", data_files=files),
                          "the image folder(s) as imagefolder")  # fmt: skip
    else:
        raw = _load_named(data_args.dataset_name, data_args.dataset_config_name, "images", part)
    raw = _ensure_validation(
        raw, data_args.validation_split_percentage, _test_percentage(data_args)
    )
    raw = _select(raw, data_args.max_train_samples, data_args.max_eval_samples,
                  getattr(data_args, "max_test_samples", None))  # fmt: skip
    features = raw["train"].features
    image_col = next((c for c in ("img", "image") if c in features), None) or next(
        (c for c, f in features.items() if isinstance(f, Image)), None
    )
    label_col = next((c for c in ("label", "fine_label", "labels") if c in features), None)
    if image_col is None or label_col is None:
        raise RecipeError(
            f"image data needs an image column (img/image) and a label column "
            f"(label/fine_label); found {list(features)}"
        )
    label = features[label_col]
    names = list(label.names) if isinstance(label, ClassLabel) else sorted(
        {str(v) for v in raw["train"][label_col]}
    )
    return raw, image_col, label_col, names


# ----------------------------------------------------------------------------------------
# Preprocessing shared by the recipes
# ----------------------------------------------------------------------------------------


def group_texts(examples: dict[str, list], block_size: int, add_labels: bool) -> dict:
    """Concatenate tokenized rows and cut them into ``block_size`` chunks (run_clm.py)."""
    concatenated = {k: list(chain(*examples[k])) for k in examples}
    total = (len(concatenated[next(iter(examples))]) // block_size) * block_size
    result = {
        k: [t[i : i + block_size] for i in range(0, total, block_size)]
        for k, t in concatenated.items()
    }
    if add_labels:
        # The model shifts labels, so position 0 of a block is never a target. Marking it -100
        # keeps Trainer's token count (num_items_in_batch, which counts labels != -100) equal
        # to the number of predicted tokens: without it, models whose ``loss_type`` is None
        # (GPT-2 in transformers 5.x) report the mean NLL times (block - 1) / block.
        result["labels"] = [[-100, *ids[1:]] for ids in result["input_ids"]]
    return result


def tokenize_and_group(
    raw: DatasetDict,
    tokenizer,
    text_column: str,
    block_size: int,
    *,
    mlm: bool,
    max_eval_samples: int | None = None,
    num_proc: int | None = None,
    max_test_samples: int | None = None,
) -> DatasetDict:
    """Tokenize text rows and group them into fixed-size blocks for CLM (labels) or MLM.

    ``max_eval_samples``/``max_test_samples`` cap the validation/test blocks to a random
    sample (seed :data:`SPLIT_SEED`, the same for every run).
    """
    if block_size < 1:
        raise RecipeError(f"block size {block_size} must be >= 1")

    def tokenize(batch: dict) -> dict:
        return tokenizer(batch[text_column], return_special_tokens_mask=mlm)

    tokenized = raw.map(
        tokenize,
        batched=True,
        num_proc=num_proc,
        remove_columns=raw["train"].column_names,
        desc="Tokenizing",
    )
    grouped = tokenized.map(
        group_texts,
        batched=True,
        num_proc=num_proc,
        fn_kwargs={"block_size": block_size, "add_labels": not mlm},
        desc=f"Grouping texts in chunks of {block_size}",
    )
    for split in ("train", "validation"):
        if len(grouped[split]) == 0:
            raise RecipeError(
                f"the {split} text is shorter than one block of {block_size} tokens; "
                "give more text or a smaller --block_size/--max_seq_length"
            )
    # held-out blocks drawn at random (a fixed seed), not the first ones (one document)
    if max_eval_samples is not None:
        grouped["validation"] = sample(grouped["validation"], max_eval_samples)
    if "test" in grouped:
        grouped["test"] = sample(grouped["test"], max_test_samples)
    return grouped


def image_transform(image_processor, image_column: str, label_column: str):
    """A ``set_transform`` function turning raw images into ``pixel_values`` + ``labels``."""

    def transform(batch: dict) -> dict:
        images = [img.convert("RGB") for img in batch[image_column]]
        out = image_processor(images, return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "labels": batch[label_column]}

    return transform


def image_collate(examples: list[dict]) -> dict:
    """Stack transformed image examples into a batch (run_image_classification.py)."""
    import torch

    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.tensor([e["labels"] for e in examples]),
    }


# ----------------------------------------------------------------------------------------
# Tokenizers trained on the fly
# ----------------------------------------------------------------------------------------

TOKENIZER_KINDS = ("gpt2", "bert")


def _text_iter(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    seen = 0
    for t in texts:
        if seen >= max_chars:
            return
        seen += len(t)
        yield t


def train_tokenizer(
    kind: str, texts: Iterable[str], vocab_size: int = 512, max_length: int = 128
):
    """Train a byte-level BPE (``gpt2``) or WordPiece (``bert``) tokenizer, cached on disk.

    Trains on at most 20 MB of ``texts``. Returns a ``PreTrainedTokenizerFast`` so that
    ``save_pretrained``/``AutoTokenizer.from_pretrained`` work as for Hub tokenizers.
    """
    from transformers import AutoTokenizer

    if kind not in TOKENIZER_KINDS:
        raise RecipeError(f"unknown tokenizer kind {kind!r}; allowed: {', '.join(TOKENIZER_KINDS)}")
    corpus = list(_text_iter(texts, 20_000_000))
    key = _sha(kind, vocab_size, max_length, hashlib.sha256("\0".join(corpus).encode()).hexdigest())
    final = cache_dir() / "tokenizers" / f"{kind}-{vocab_size}-{key}"

    def build(tmp: Path) -> None:
        _build_tokenizer(kind, corpus, vocab_size, max_length).save_pretrained(tmp)

    return AutoTokenizer.from_pretrained(atomic_dir(final, build))


def _build_tokenizer(kind: str, corpus: list[str], vocab_size: int, max_length: int):
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    if kind == "gpt2":
        eos = "<|endoftext|>"
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[eos],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(corpus, trainer)
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token=eos,
            eos_token=eos,
            unk_token=eos,
            model_max_length=max_length,
        )
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(
        corpus, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
    )
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
