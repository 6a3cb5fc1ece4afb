#!/usr/bin/env python
"""Pretrain GPT-2 from a config (causal language modelling), like transformers' run_clm.py.

Offline default (no data arguments): a tiny GPT-2 on the embedded pydoc text, with a
byte-level BPE tokenizer trained on the fly. Online: GPT-2 124M with the ``gpt2`` tokenizer:

    accelerate launch recipes/gpt2_pretrain.py --dataset_name wikitext \\
        --dataset_config_name wikitext-103-raw-v1 --optim adamw_torch
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
    "block_size": 64,
    "max_eval_samples": 128,
}


def main() -> None:
    model_args, data_args, training_args = parse_args("gpt2_pretrain", OFFLINE_DEFAULTS)
    set_seed(training_args.seed)
    online = is_hub_dataset(data_args)
    raw, text_column = load_text_datasets(data_args, part="pretrain")

    with training_args.main_process_first(desc="tokenizer"):
        if model_args.tokenizer_name or online:
            name = model_args.tokenizer_name or ONLINE_TOKENIZER["gpt2"]
            tokenizer = AutoTokenizer.from_pretrained(name, cache_dir=model_args.cache_dir)
        else:
            tokenizer = train_tokenizer("gpt2", raw["train"][text_column])
    preset = (ONLINE_PRESET if online else TINY_PRESET)["gpt2"]
    config = load_config(model_args.config_name or preset, vocab_size=len(tokenizer))
    model = AutoModelForCausalLM.from_config(config)

    block_size = min(data_args.block_size or 1024, config.n_positions, tokenizer.model_max_length)
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
