"""Preprocessing shared by the recipes: tokenize and group text, transform images."""

from __future__ import annotations

from itertools import chain

from datasets import DatasetDict

from .data import sample
from .errors import RecipeError


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
    sample (seed :data:`.data.SPLIT_SEED`, the same for every run).
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
