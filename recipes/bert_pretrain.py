#!/usr/bin/env python
"""Pretrain BERT from a config (masked language modelling), like transformers' run_mlm.py.

Offline default (no data arguments): a tiny BERT on the embedded pydoc text, with a
WordPiece tokenizer trained on the fly. Online: BERT-base with the ``bert-base-uncased``
tokenizer:

    accelerate launch recipes/bert_pretrain.py --dataset_name wikitext \\
        --dataset_config_name wikitext-103-raw-v1 --optim adamw_torch
"""

from transformers import (
    AutoModelForMaskedLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    set_seed,
)

import clion_hf  # noqa: F401  (registers clion_hf's optimizers with transformers)
from clion_hf.workloads.args import parse_args, run, train_and_evaluate
from clion_hf.workloads.data import is_hub_dataset, load_text_datasets
from clion_hf.workloads.gen_gap import add_gen_gap, train_subset
from clion_hf.workloads.models import ONLINE_PRESET, ONLINE_TOKENIZER, TINY_PRESET, load_config
from clion_hf.workloads.preprocess import tokenize_and_group
from clion_hf.workloads.run_stats import RunStatsCallback
from clion_hf.workloads.tokenizer import train_tokenizer

OFFLINE_DEFAULTS = {
    "max_steps": 200,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 64,
    "learning_rate": 2e-3,
    "warmup_steps": 0.1,
    "max_seq_length": 64,
    "max_eval_samples": 128,
}


def main() -> None:
    model_args, data_args, training_args = parse_args("bert_pretrain", OFFLINE_DEFAULTS)
    set_seed(training_args.seed)
    online = is_hub_dataset(data_args)
    raw, text_column = load_text_datasets(data_args, part="pretrain")

    with training_args.main_process_first(desc="tokenizer"):
        if model_args.tokenizer_name or online:
            name = model_args.tokenizer_name or ONLINE_TOKENIZER["bert"]
            tokenizer = AutoTokenizer.from_pretrained(name, cache_dir=model_args.cache_dir)
        else:
            tokenizer = train_tokenizer("bert", raw["train"][text_column])
    preset = (ONLINE_PRESET if online else TINY_PRESET)["bert"]
    config = load_config(model_args.config_name or preset, vocab_size=len(tokenizer))
    model = AutoModelForMaskedLM.from_config(config)

    max_seq_length = min(
        data_args.max_seq_length or 512,
        config.max_position_embeddings,
        tokenizer.model_max_length,
    )
    with training_args.main_process_first(desc="grouping texts"):
        lm = tokenize_and_group(
            raw,
            tokenizer,
            text_column,
            max_seq_length,
            mlm=True,
            max_eval_samples=data_args.max_eval_samples,
            num_proc=data_args.preprocessing_num_workers,
            max_test_samples=data_args.max_test_samples,
        )
    # Seeded masking: every optimizer in a comparison sees the same masks
    collator = DataCollatorForLanguageModeling(
        tokenizer, mlm_probability=data_args.mlm_probability, seed=training_args.seed
    )

    lm["train"] = train_subset(lm["train"], data_args.train_subset_size)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=lm["train"],
        eval_dataset=lm["validation"],
        processing_class=tokenizer,
        data_collator=collator,
        callbacks=[RunStatsCallback()],
    )
    add_gen_gap(trainer, data_args)
    train_and_evaluate(
        trainer, len(lm["train"]), len(lm["validation"]), lm=True, test_dataset=lm.get("test")
    )


if __name__ == "__main__":
    run(main)
