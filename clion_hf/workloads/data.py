"""Datasets and tokenizers for the recipes.

Three sources, in order of precedence:

1. local files: ``--train_file``/``--validation_file`` (csv, json, jsonl, txt) for text, and
   ``--train_dir``/``--validation_dir`` (an image folder) for images;
2. ``--dataset_name``: a Hub dataset (``wikitext``, ``glue``, ``cifar10``, ...), a directory
   written by ``Dataset(Dict).save_to_disk``, or one of the embedded offline datasets;
3. nothing: the embedded offline default of the recipe's family.

The embedded datasets need no network. Their text is CPython's own documentation
(``pydoc_data.topics``), split by document, and their images are scikit-learn's digits.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import Any

import datasets
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

from clion_hf._cache import cache_dir

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


def atomic_cache_dir(final: Path, build) -> Path:
    """Return ``final``, creating it first with ``build(tmp_dir)`` if it does not exist.

    Builds into a temporary sibling and renames it into place, so a killed build or two
    processes racing never leave a half-written cache entry behind.
    """
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
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


def _sha(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------
# Embedded text: pydoc topics, split by document
# ----------------------------------------------------------------------------------------


def pydoc_documents() -> dict[str, str]:
    """The ~80 topic documents of the running Python's ``help()`` (about 0.5 MB of English)."""
    from pydoc_data.topics import topics

    return dict(topics)


def pydoc_split(documents: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Assign every document to one of ``pretrain``/``finetune``/``validation``/``test``.

    Documents are ordered by a hash of their name (deterministic, unlike ``hash()``), then
    validation takes documents until it holds 10% of the characters, test 10% and finetune
    20%, and pretrain gets the rest, so the parts are disjoint at the document level.
    Validation is for choosing hyper-parameters; test is the held-out data reported on.
    """
    docs = pydoc_documents() if documents is None else documents
    total = sum(len(t) for t in docs.values())
    order = sorted(docs, key=lambda name: hashlib.sha256(name.encode()).hexdigest())
    parts: dict[str, list[str]] = {"validation": [], "test": [], "finetune": [], "pretrain": []}
    quota = {"validation": 0.10 * total, "test": 0.10 * total, "finetune": 0.20 * total}
    sizes = dict.fromkeys(quota, 0)
    for name in order:
        part = next((p for p in quota if sizes[p] < quota[p]), "pretrain")
        if part != "pretrain":
            sizes[part] += len(docs[name])
        parts[part].append(name)
    return parts


def _paragraphs(text: str) -> list[str]:
    return [p.strip("\n") + "\n" for p in re.split(r"\n\s*\n", text) if p.strip()]


def _sentences(text: str) -> list[str]:
    """Prose sentences of a document (code blocks and grammar rules are dropped)."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        if para.startswith("   ") or "::=" in para or "*****" in para:
            continue
        flat = " ".join(para.split())
        for sent in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'(])", flat):
            if 30 <= len(sent) <= 200:
                out.append(sent)
    return out


def offline_text_dataset(part: str) -> DatasetDict:
    """Wikitext-like ``text`` rows (one paragraph each) from the embedded documents.

    ``part`` is ``pretrain`` or ``finetune``: the documents trained on; validation and
    test are always the held-out validation and test documents, seen by neither.
    """
    if part not in ("pretrain", "finetune"):
        raise RecipeError(f"unknown offline text part {part!r}; allowed: pretrain, finetune")
    docs, split = pydoc_documents(), pydoc_split()
    features = Features({"text": Value("string")})

    def rows(names: list[str], exclude: frozenset[str] = frozenset()) -> Dataset:
        paras = [p for n in names for p in _paragraphs(docs[n]) if p not in exclude]
        return Dataset.from_dict({"text": paras}, features=features)

    # Several pydoc topics quote the same paragraphs (e.g. "attribute-access" and
    # "customization"): keep any paragraph of a training document out of held-out text.
    trained = frozenset(
        p for n in split["pretrain"] + split["finetune"] for p in _paragraphs(docs[n])
    )
    return DatasetDict(
        train=rows(split[part]),
        validation=rows(split["validation"], trained),
        test=rows(split["test"], trained),
    )


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
    balanced. Train pairs come from all non-validation documents (the task is new, the
    text is the pretraining text, as GLUE's is for BERT); validation and test pairs only
    from the held-out validation and test documents.
    """
    import random

    docs, split = pydoc_documents(), pydoc_split()
    features = Features(
        {
            "sentence1": Value("string"),
            "sentence2": Value("string"),
            "label": ClassLabel(names=["not_equivalent", "equivalent"]),
            "idx": Value("int32"),
        }
    )

    train_docs = split["pretrain"] + split["finetune"]
    # a few boilerplate sentences occur in several documents: keep them out of validation
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


# ----------------------------------------------------------------------------------------
# Embedded images: scikit-learn digits, split by class
# ----------------------------------------------------------------------------------------


def offline_image_dataset(part: str, seed: int = 0) -> DatasetDict:
    """CIFAR-shaped (``img``, ``label``) 16x16 RGB digits.

    ``pretrain`` holds digits 0-4 and ``finetune`` digits 5-9 (relabelled 0-4, label names
    ``"5"``..``"9"``), so finetuning is a new task; each is split 60/20/20 (stratified,
    fixed seed) into train, validation and a held-out test split.
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
    split = ds.train_test_split(test_size=0.4, seed=seed, stratify_by_column="label")
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
    return datasets.load_dataset(_FILE_BUILDERS[suffix], data_files=files)


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


def _ensure_validation(raw: DatasetDict, percentage: int, seed: int) -> DatasetDict:
    """Use the dataset's validation split, or hold out ``percentage`` % of train (fixed seed).

    A ``test`` split is kept when it has labels (GLUE hides its test labels as -1: dropped).
    """
    if "train" not in raw:
        raise RecipeError(f"dataset has no 'train' split (splits: {', '.join(raw)})")
    out = None
    for name in ("validation", "validation_matched"):
        if name in raw:
            out = DatasetDict(train=raw["train"], validation=raw[name])
            break
    if out is None:
        split = raw["train"].train_test_split(test_size=percentage / 100, seed=seed)
        out = DatasetDict(train=split["train"], validation=split["test"])
    if "test" in raw and _has_labels(raw["test"]):
        out["test"] = raw["test"]
    return out


def _has_labels(ds: Dataset) -> bool:
    for col in ("label", "fine_label", "labels"):
        if col in ds.column_names:
            return len(ds) > 0 and min(ds[col][:100]) >= 0
    return True  # language-modelling text: the text is its own label


def _select(raw: DatasetDict, max_train: int | None, max_eval: int | None) -> DatasetDict:
    out = {}
    for split, ds in raw.items():
        cap = max_train if split == "train" else max_eval
        out[split] = ds.select(range(min(cap, len(ds)))) if cap is not None else ds
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


def _offline_name_check(name: str | None, family: str) -> None:
    if name is not None and name != OFFLINE_DATASETS[family]:
        raise RecipeError(
            f"embedded dataset {name!r} does not fit this recipe; allowed: "
            f"{OFFLINE_DATASETS[family]!r}, a Hub dataset, or local files"
        )


def load_text_datasets(data_args, part: str, seed: int = 42) -> tuple[DatasetDict, str]:
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
        _ensure_validation(raw, data_args.validation_split_percentage, seed),
        data_args.max_train_samples,
        None,  # max_eval_samples caps blocks after grouping, as in run_clm.py
    )
    columns = raw["train"].column_names
    return raw, "text" if "text" in columns else columns[0]


def load_classification_datasets(
    data_args, seed: int = 42
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
    raw = _ensure_validation(raw, data_args.validation_split_percentage, seed)
    raw = _select(raw, data_args.max_train_samples, data_args.max_eval_samples)
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
        text = [c for c in columns if c not in ("label", "idx")]
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
    data_args, part: str, seed: int = 42
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
                files[split] = str(Path(d) / "**")
        raw = datasets.load_dataset("imagefolder", data_files=files)
    else:
        raw = _load_named(data_args.dataset_name, data_args.dataset_config_name, "images", part)
    raw = _ensure_validation(raw, data_args.validation_split_percentage, seed)
    raw = _select(raw, data_args.max_train_samples, data_args.max_eval_samples)
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
        result["labels"] = [ids.copy() for ids in result["input_ids"]]
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
) -> DatasetDict:
    """Tokenize text rows and group them into fixed-size blocks for CLM (labels) or MLM."""

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
    if max_eval_samples is not None:
        for split in [s for s in grouped if s != "train"]:
            n = min(max_eval_samples, len(grouped[split]))
            grouped[split] = grouped[split].select(range(n))
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

    return AutoTokenizer.from_pretrained(atomic_cache_dir(final, build))


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
