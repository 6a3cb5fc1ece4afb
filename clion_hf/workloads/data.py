"""Datasets for the recipes: loading and splits.

Three sources, in order of precedence:

1. local files: ``--train_file``/``--validation_file`` (csv, json, jsonl, txt) for text, and
   ``--train_dir``/``--validation_dir`` (an image folder) for images;
2. ``--dataset_name``: a Hub dataset (``wikitext``, ``glue``, ``cifar10``, ...), a directory
   written by ``Dataset(Dict).save_to_disk``, or one of the embedded offline datasets;
3. nothing: the embedded offline default of the recipe's family (:mod:`.offline`).

The other jobs live beside this module: the frozen text corpus (:mod:`.corpus`), the
embedded datasets (:mod:`.offline`), tokenizing and grouping (:mod:`.preprocess`),
tokenizer training (:mod:`.tokenizer`) and the input error type (:mod:`.errors`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import datasets
from datasets import ClassLabel, Dataset, DatasetDict, Image

from .corpus import CORPUS_SHA256
from .errors import RecipeError
from .offline import (
    OFFLINE_DATASETS,
    OFFLINE_IMAGES,
    OFFLINE_PAIRS,
    OFFLINE_TEXT,
    offline_image_dataset,
    offline_pair_dataset,
    offline_text_dataset,
    sklearn_digits_sha256,
)

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

# What this process loaded (a recipe is one run per process): args.train_and_evaluate
# writes it into the run's results, so that a result names the data it used.
_DATA_USED: dict[str, str | None] = {}


def data_used() -> dict[str, str | None]:
    """What the last ``load_*_datasets`` call of this process read: ``data_source`` (the
    embedded dataset's name, ``files``, ``imagefolder`` or the Hub/saved dataset) and
    ``data_sha256``: the embedded data's hash (:data:`~.corpus.CORPUS_SHA256` for the text
    and pair datasets), or that of the local files' bytes in the order train, validation,
    test; None for image folders and Hub or saved datasets. Empty before any load."""
    return dict(_DATA_USED)


def _note(source: str, sha256: str | None) -> None:
    _DATA_USED.clear()
    _DATA_USED.update(data_source=source, data_sha256=sha256)


def _files_sha256(paths: list[str]) -> str:
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


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
    _note("files", _files_sha256(list(files.values())))
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
    _note(name if config is None else f"{name}/{config}", None)
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
        _note(OFFLINE_TEXT, CORPUS_SHA256)
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
        _note(OFFLINE_PAIRS, CORPUS_SHA256)
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
        _note(OFFLINE_IMAGES, sklearn_digits_sha256())
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
        _note("imagefolder", None)
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
