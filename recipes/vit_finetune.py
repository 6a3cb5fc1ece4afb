#!/usr/bin/env python
"""Finetune a pretrained ViT for image classification, like transformers'
run_image_classification.py.

Offline default (no data or model arguments): the backbone of a tiny ViT pretrained on
digits 0-4 (built on first use and cached: ``offline_pretrained_checkpoint``) with a new
head, on digits 5-9. Online:

    accelerate launch recipes/vit_finetune.py \\
        --model_name_or_path google/vit-base-patch16-224-in21k \\
        --dataset_name cifar100 --optim adamw_torch
"""

from transformers import AutoImageProcessor, AutoModelForImageClassification, Trainer, set_seed

import clion_hf  # noqa: F401  (registers clion_hf's optimizers with transformers)
from clion_hf.workloads.args import parse_args, run, train_and_evaluate
from clion_hf.workloads.data import is_hub_dataset, load_image_datasets
from clion_hf.workloads.gen_gap import add_gen_gap, train_subset
from clion_hf.workloads.metrics import classification_metrics
from clion_hf.workloads.models import ONLINE_CHECKPOINT, offline_pretrained_checkpoint
from clion_hf.workloads.preprocess import image_collate, image_transform
from clion_hf.workloads.run_stats import RunStatsCallback

OFFLINE_DEFAULTS = {
    "max_steps": 100,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 128,
    "learning_rate": 1e-3,
    "warmup_steps": 0.1,
}
# The transform reads the raw image column, which Trainer would otherwise drop
RECIPE_DEFAULTS = {"remove_unused_columns": False}


def main() -> None:
    model_args, data_args, training_args = parse_args(
        "vit_finetune", OFFLINE_DEFAULTS, RECIPE_DEFAULTS
    )
    set_seed(training_args.seed)
    raw, image_col, label_col, label_names = load_image_datasets(
        data_args, part="finetune"
    )

    checkpoint = model_args.model_name_or_path
    if checkpoint is None and is_hub_dataset(data_args):
        checkpoint = ONLINE_CHECKPOINT["vit"]
    elif checkpoint is None:
        with training_args.main_process_first(desc="offline checkpoint"):
            checkpoint = offline_pretrained_checkpoint("vit")
    processor = AutoImageProcessor.from_pretrained(
        model_args.image_processor_name or checkpoint, cache_dir=model_args.cache_dir
    )
    model = AutoModelForImageClassification.from_pretrained(
        checkpoint,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        ignore_mismatched_sizes=True,  # a new head when the checkpoint has another one
        cache_dir=model_args.cache_dir,
    )
    raw["train"] = train_subset(raw["train"], data_args.train_subset_size)
    raw.set_transform(image_transform(processor, image_col, label_col))

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=raw["train"],
        eval_dataset=raw["validation"],
        processing_class=processor,
        data_collator=image_collate,
        compute_metrics=classification_metrics(),
        callbacks=[RunStatsCallback()],
    )
    add_gen_gap(trainer, data_args)
    train_and_evaluate(
        trainer, len(raw["train"]), len(raw["validation"]), test_dataset=raw.get("test")
    )


if __name__ == "__main__":
    run(main)
