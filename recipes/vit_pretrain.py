#!/usr/bin/env python
"""Pretrain a ViT from a config (supervised image classification), like transformers'
run_image_classification.py.

Offline default (no data arguments): a tiny ViT (16x16 images, 4x4 patches) on
scikit-learn's digits 0-4. Online: ViT-B/16 from its config on CIFAR-10:

    accelerate launch recipes/vit_pretrain.py --dataset_name cifar10 --optim adamw_torch
"""

from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    Trainer,
    ViTImageProcessor,
    set_seed,
)

import clion_hf  # noqa: F401  (registers clion_hf's optimizers with transformers)
from clion_hf.workloads.args import parse_args, run, train_and_evaluate
from clion_hf.workloads.data import is_hub_dataset, load_image_datasets
from clion_hf.workloads.gen_gap import add_gen_gap, train_subset
from clion_hf.workloads.metrics import classification_metrics
from clion_hf.workloads.models import ONLINE_PRESET, TINY_PRESET, load_config
from clion_hf.workloads.preprocess import image_collate, image_transform
from clion_hf.workloads.run_stats import RunStatsCallback

OFFLINE_DEFAULTS = {
    "max_steps": 150,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 128,
    "learning_rate": 2e-3,
    "warmup_steps": 0.1,
}
# The transform reads the raw image column, which Trainer would otherwise drop
RECIPE_DEFAULTS = {"remove_unused_columns": False}


def main() -> None:
    model_args, data_args, training_args = parse_args(
        "vit_pretrain", OFFLINE_DEFAULTS, RECIPE_DEFAULTS
    )
    set_seed(training_args.seed)
    raw, image_col, label_col, label_names = load_image_datasets(
        data_args, part="pretrain"
    )

    preset = (ONLINE_PRESET if is_hub_dataset(data_args) else TINY_PRESET)["vit"]
    config = load_config(
        model_args.config_name or preset,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
    )
    model = AutoModelForImageClassification.from_config(config)
    if model_args.image_processor_name:
        processor = AutoImageProcessor.from_pretrained(
            model_args.image_processor_name, cache_dir=model_args.cache_dir
        )
    else:  # what google/vit-base-patch16-224 uses, at the config's resolution
        size = {"height": config.image_size, "width": config.image_size}
        processor = ViTImageProcessor(size=size, image_mean=[0.5] * 3, image_std=[0.5] * 3)
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
