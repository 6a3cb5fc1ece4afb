#!/usr/bin/env python
"""Finetune a pretrained GPT-2 (causal language modelling), like transformers' run_clm.py.

Offline default (no data or model arguments): the tiny GPT-2 pretrained on embedded
documents (built on first use and cached: ``offline_pretrained_checkpoint``), finetuned on
held-out embedded documents. Online:

    accelerate launch recipes/gpt2_finetune.py --model_name_or_path gpt2 \\
        --dataset_name wikitext --dataset_config_name wikitext-2-raw-v1 --optim adamw_torch
"""

from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Trainer,
    default_data_collator,
    set_seed,
)

import clion_hf  # noqa: F401  (registers clion_hf's optimizers with transformers)
from clion_hf.workloads.args import parse_args, run, train_and_evaluate
from clion_hf.workloads.data import is_hub_dataset, load_text_datasets
from clion_hf.workloads.gen_gap import add_gen_gap, train_subset
from clion_hf.workloads.models import ONLINE_CHECKPOINT, offline_pretrained_checkpoint
from clion_hf.workloads.preprocess import tokenize_and_group
from clion_hf.workloads.run_stats import RunStatsCallback

OFFLINE_DEFAULTS = {
    "max_steps": 100,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 64,
    "learning_rate": 1e-3,
    "warmup_steps": 0.1,
    "block_size": 64,
    "max_eval_samples": 128,
}


def main() -> None:
    model_args, data_args, training_args = parse_args("gpt2_finetune", OFFLINE_DEFAULTS)
    set_seed(training_args.seed)
    raw, text_column = load_text_datasets(data_args, part="finetune")

    checkpoint = model_args.model_name_or_path
    if checkpoint is None and is_hub_dataset(data_args):
        checkpoint = ONLINE_CHECKPOINT["gpt2"]
    elif checkpoint is None:
        with training_args.main_process_first(desc="offline checkpoint"):
            checkpoint = offline_pretrained_checkpoint("gpt2")
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.tokenizer_name or checkpoint, cache_dir=model_args.cache_dir
    )
    model = AutoModelForCausalLM.from_pretrained(checkpoint, cache_dir=model_args.cache_dir)

    block_size = min(
        data_args.block_size or 1024, model.config.n_positions, tokenizer.model_max_length
    )
    with training_args.main_process_first(desc="grouping texts"):
        lm = tokenize_and_group(
            raw,
            tokenizer,
            text_column,
            block_size,
            mlm=False,
            max_eval_samples=data_args.max_eval_samples,
            num_proc=data_args.preprocessing_num_workers,
            max_test_samples=data_args.max_test_samples,
        )

    lm["train"] = train_subset(lm["train"], data_args.train_subset_size)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=lm["train"],
        eval_dataset=lm["validation"],
        processing_class=tokenizer,
        data_collator=default_data_collator,
        callbacks=[RunStatsCallback()],
    )
    add_gen_gap(trainer, data_args)
    train_and_evaluate(
        trainer, len(lm["train"]), len(lm["validation"]), lm=True, test_dataset=lm.get("test")
    )


if __name__ == "__main__":
    run(main)
