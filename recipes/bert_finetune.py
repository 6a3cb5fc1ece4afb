#!/usr/bin/env python
"""Finetune a pretrained BERT for sequence classification, like transformers' run_glue.py.

Offline default (no data or model arguments): the tiny BERT pretrained on embedded
documents (built on first use and cached: ``offline_pretrained_checkpoint``), on the
embedded ``pydoc-paraphrase`` pair task (MRPC-shaped: sentence1, sentence2, label). Online:

    accelerate launch recipes/bert_finetune.py --model_name_or_path bert-base-uncased \\
        --dataset_name glue --dataset_config_name mrpc --optim adamw_torch
"""

from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, set_seed

import clion_hf  # noqa: F401  (registers clion_hf's optimizers with transformers)
from clion_hf.workloads.args import parse_args, run, train_and_evaluate
from clion_hf.workloads.data import is_hub_dataset, load_classification_datasets
from clion_hf.workloads.gen_gap import add_gen_gap, train_subset
from clion_hf.workloads.metrics import classification_metrics
from clion_hf.workloads.models import ONLINE_CHECKPOINT, offline_pretrained_checkpoint
from clion_hf.workloads.run_stats import RunStatsCallback

OFFLINE_DEFAULTS = {
    "max_steps": 150,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "learning_rate": 1e-3,
    "warmup_steps": 0.1,
    "max_seq_length": 64,
    "max_eval_samples": 256,
}


def main() -> None:
    model_args, data_args, training_args = parse_args("bert_finetune", OFFLINE_DEFAULTS)
    set_seed(training_args.seed)
    raw, (key1, key2), label_names = load_classification_datasets(data_args)

    checkpoint = model_args.model_name_or_path
    if checkpoint is None and is_hub_dataset(data_args):
        checkpoint = ONLINE_CHECKPOINT["bert"]
    elif checkpoint is None:
        with training_args.main_process_first(desc="offline checkpoint"):
            checkpoint = offline_pretrained_checkpoint("bert")
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.tokenizer_name or checkpoint, cache_dir=model_args.cache_dir
    )
    model = AutoModelForSequenceClassification.from_pretrained(
        checkpoint,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        cache_dir=model_args.cache_dir,
    )

    max_seq_length = min(data_args.max_seq_length or 128, tokenizer.model_max_length)

    def preprocess(batch: dict) -> dict:
        texts = (batch[key1],) if key2 is None else (batch[key1], batch[key2])
        return tokenizer(*texts, truncation=True, max_length=max_seq_length)

    with training_args.main_process_first(desc="tokenizing"):
        encoded = raw.map(preprocess, batched=True, num_proc=data_args.preprocessing_num_workers)

    encoded["train"] = train_subset(encoded["train"], data_args.train_subset_size)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=encoded["train"],
        eval_dataset=encoded["validation"],
        processing_class=tokenizer,  # also gives Trainer its padding collator
        compute_metrics=classification_metrics(with_f1=key2 is not None and len(label_names) == 2),
        callbacks=[RunStatsCallback()],
    )
    add_gen_gap(trainer, data_args)
    train_and_evaluate(
        trainer, len(encoded["train"]), len(encoded["validation"]), test_dataset=encoded.get("test")
    )


if __name__ == "__main__":
    run(main)
