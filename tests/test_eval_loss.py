"""Trainer's eval_loss is the true mean per predicted token / example, recomputed by hand.

The recipes' data pipeline (``tokenize_and_group``) and collators feed transformers' Trainer,
which normalises the loss by its own count of labels. These tests recompute each loss from
the model and the eval split without the Trainer, for the three kinds the recipes use:
causal LM, masked LM and sequence classification.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _tiny import VOCAB, tiny_texts, tiny_tokenizer
from datasets import Dataset, DatasetDict
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    DataCollatorForLanguageModeling,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

from clion_hf.workloads.preprocess import tokenize_and_group

BLOCK = 8


def _lm_splits(mlm: bool) -> DatasetDict:
    raw = DatasetDict(
        train=Dataset.from_dict({"text": tiny_texts(40, seed=1)}),
        validation=Dataset.from_dict({"text": tiny_texts(24, seed=2)}),
    )
    return tokenize_and_group(raw, tiny_tokenizer(), "text", BLOCK, mlm=mlm)


def _evaluate(tmp_path, model, eval_ds, collator, batch_size: int = 5) -> float:
    # batch 5 leaves a short last batch: the per-batch means must still weight correctly
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=batch_size, report_to=[],
        use_cpu=True, dataloader_drop_last=False,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, eval_dataset=eval_ds, data_collator=collator)
    return trainer.evaluate()["eval_loss"]


def _tiny_bert(**extra) -> BertConfig:
    return BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=BLOCK, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, **extra,
    )  # fmt: skip


def test_causal_lm_eval_loss_is_the_mean_over_predicted_tokens(tmp_path):
    lm = _lm_splits(mlm=False)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_positions=BLOCK, n_embd=16, n_layer=1, n_head=2)
    ).eval()
    reported = _evaluate(tmp_path, model, lm["validation"], default_data_collator)

    ids = torch.tensor(lm["validation"]["input_ids"])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    # position t predicts token t + 1: (BLOCK - 1) targets per block, every one counted once
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    assert reported == pytest.approx(nll.item(), rel=1e-5)


def test_masked_lm_eval_loss_is_the_mean_over_masked_tokens(tmp_path):
    lm = _lm_splits(mlm=True)
    tok = tiny_tokenizer()
    tok.add_special_tokens({"mask_token": "<eos>"})  # any id works: the loss only reads labels
    torch.manual_seed(0)
    model = BertForMaskedLM(_tiny_bert()).eval()
    # two collators with one seed draw the same masks, batch by batch
    make = lambda: DataCollatorForLanguageModeling(tok, mlm_probability=0.3, seed=7)  # noqa: E731
    reported = _evaluate(tmp_path, model, lm["validation"], make())

    replay, total, count = make(), 0.0, 0
    rows = [lm["validation"][i] for i in range(len(lm["validation"]))]
    for start in range(0, len(rows), 5):
        batch = replay([{k: r[k] for k in ("input_ids", "attention_mask")}
                        for r in rows[start : start + 5]])  # fmt: skip
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits  # fmt: skip
        mask = batch["labels"] != -100
        losses = F.cross_entropy(logits[mask], batch["labels"][mask], reduction="sum")
        # Trainer averages per-batch means weighted by rows, as this recomputation does
        n_rows = batch["input_ids"].shape[0]
        total += (losses / mask.sum()).item() * n_rows
        count += n_rows
    assert reported == pytest.approx(total / count, rel=1e-5)


def test_classification_eval_loss_is_the_mean_over_examples(tmp_path):
    g = torch.Generator().manual_seed(3)
    n = 23
    ids = torch.randint(2, VOCAB, (n, BLOCK), generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})
    torch.manual_seed(0)
    model = BertForSequenceClassification(_tiny_bert(num_labels=3)).eval()
    reported = _evaluate(tmp_path, model, ds, default_data_collator)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    expected = F.cross_entropy(logits, labels).item()
    assert reported == pytest.approx(expected, rel=1e-5)
    assert not math.isnan(reported)
