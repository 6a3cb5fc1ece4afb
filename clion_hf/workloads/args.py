"""Command-line arguments shared by the recipes in ``recipes/``.

Same flags as transformers' ``examples/pytorch/run_*.py``: ``ModelArguments``,
``DataTrainingArguments`` and ``TrainingArguments`` through ``HfArgumentParser``. Defaults
differ only where those scripts have none that suits a benchmark (``report_to="none"``,
periodic evaluation, frequent logging), plus per-recipe defaults for the offline runs.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser, Trainer, TrainingArguments

from clion_hf.workloads.data import data_used, hub_offline, uses_offline_default
from clion_hf.workloads.errors import RecipeError
from clion_hf.workloads.gen_gap import check_gen_gap_args
from clion_hf.workloads.metrics import perplexity


@dataclass
class ModelArguments:
    """Which model, config and tokenizer/image processor to start from."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Checkpoint to finetune (Hub id or directory). Finetune recipes "
                  "default to the Hub model with --dataset_name, else a cached offline one."},
    )  # fmt: skip
    config_name: str | None = field(
        default=None,
        metadata={"help": "Config to pretrain from: a preset (tiny-gpt2, gpt2, tiny-bert, "
                  "bert-base, tiny-vit, vit-base-patch16-224), a Hub id or a directory."},
    )  # fmt: skip
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "Tokenizer (Hub id or directory). Default: the "
                  "model's, the Hub one with --dataset_name, else trained on the train text."},
    )  # fmt: skip
    image_processor_name: str | None = field(
        default=None,
        metadata={"help": "ViT image processor (Hub id or directory). Default: the model's, "
                  "else one for the config's image size with mean = std = 0.5."},
    )  # fmt: skip
    cache_dir: str | None = field(default=None, metadata={"help": "Hub download cache."})


@dataclass
class DataTrainingArguments:
    """Which data to train and evaluate on (all optional: none runs the offline default)."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub dataset (wikitext, glue, cifar10, ...), a save_to_disk "
                  "directory, or the embedded pydoc-topics / pydoc-paraphrase / "
                  "sklearn-digits."},
    )  # fmt: skip
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Hub dataset config (wikitext-103-raw-v1, sst2, ...)."}
    )
    train_file: str | None = field(default=None, metadata={"help": "csv/json/jsonl/txt file."})
    validation_file: str | None = field(default=None, metadata={"help": "csv/json/jsonl/txt."})
    test_file: str | None = field(
        default=None, metadata={"help": "Held-out csv/json/jsonl/txt, reported as test_*."}
    )
    train_dir: str | None = field(default=None, metadata={"help": "Image folder (ViT recipes)."})
    validation_dir: str | None = field(default=None, metadata={"help": "Image folder (ViT)."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Truncate the training set (rows before grouping)."}
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Evaluate on a random sample of this many validation rows (blocks "
                  "for LM recipes), the same sample for every run."},
    )  # fmt: skip
    max_test_samples: int | None = field(
        default=None,
        metadata={"help": "Report on a random sample of this many test rows (default: all)."},
    )
    test_split_percentage: int = field(
        default=0,
        metadata={"help": "% of train held out as a labelled test split when the dataset has "
                  "none (e.g. GLUE, whose test labels are hidden); 0: no test split."},
    )  # fmt: skip
    block_size: int | None = field(
        default=None, metadata={"help": "GPT-2: tokens per training block (default: model max)."}
    )
    max_seq_length: int | None = field(
        default=None, metadata={"help": "BERT: tokens per sequence (default: model max)."}
    )
    mlm_probability: float = field(default=0.15, metadata={"help": "BERT MLM mask ratio."})
    validation_split_percentage: int = field(
        default=5, metadata={"help": "% of train held out when there is no validation split."}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for dataset.map."}
    )
    # the generalization-gap measurement (clion_hf/workloads/gen_gap.py)
    train_subset_size: int | None = field(
        default=None,
        metadata={"help": "Train on this many training examples (blocks for LM recipes) "
                  "drawn after preprocessing by a fixed permutation: smaller subsets are "
                  "nested in larger ones."},
    )  # fmt: skip
    eval_train_subset: bool = field(
        default=False,
        metadata={"help": "At every evaluation also evaluate the loss on the whole training "
                  "(sub)set in eval mode: logs train_subset_loss and gen_gap."},
    )  # fmt: skip
    stop_at_train_loss: float | None = field(
        default=None,
        metadata={"help": "Stop at the first evaluation whose train_subset_loss is at most "
                  "this (implies --eval_train_subset)."},
    )  # fmt: skip


# Defaults for every recipe: a few evaluations and many log points per run, no trackers.
COMMON_DEFAULTS = {
    "report_to": "none",
    "eval_strategy": "steps",
    "eval_steps": 0.25,  # a fraction of the total steps: 4 evaluations per run
    "logging_steps": 0.05,  # 20 log points per run, for loss curves
    "save_strategy": "no",  # the final model is saved by trainer.save_model()
}


def parse_args(
    recipe: str, offline_defaults: dict, extra_defaults: dict | None = None
) -> tuple[ModelArguments, DataTrainingArguments, TrainingArguments]:
    """Parse the command line; ``offline_defaults`` apply only on the embedded dataset."""
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    parser.set_defaults(output_dir=f"runs/{recipe}", **COMMON_DEFAULTS, **(extra_defaults or {}))
    if _multi_process_without_accelerator():
        # torchrun-started CPU processes (see accelerate_configs/cpu_ddp_2proc.yaml) only
        # form a gloo DDP group when Trainer is told to use the CPU
        parser.set_defaults(use_cpu=True)
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        return parser.parse_json_file(json_file=sys.argv[1])
    # First pass only to see which data the run uses; the second applies its defaults
    namespace, _ = parser.parse_known_args(sys.argv[1:])
    if uses_offline_default(namespace):
        parser.set_defaults(**offline_defaults)
        _one_cpu_thread_for_tiny_models()
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    check_args(data_args, training_args, model_args)
    return model_args, data_args, training_args


_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


def check_pretrained(flag: str, name: str | None) -> None:
    """A ``from_pretrained`` argument must be a saved directory or (online) a Hub id."""
    if name is None:
        return
    path = Path(name).expanduser()
    if path.is_dir():
        if not any((path / f).is_file() for f in ("config.json", "tokenizer_config.json",
                                                  "preprocessor_config.json")):  # fmt: skip
            raise RecipeError(f"{flag} {name!r} is a directory without config.json (not a "
                              "saved model, tokenizer or image processor)")
        return
    if path.exists():
        raise RecipeError(f"{flag} {name!r} is a file; expected a saved model directory or a "
                          "Hub id")
    if name.startswith(("/", ".", "~")) or not _HUB_ID.fullmatch(name):
        raise RecipeError(f"{flag} {name!r} does not exist (expected a saved model directory "
                          "or a Hub id such as 'gpt2' or 'org/name')")
    if hub_offline():
        raise RecipeError(f"{flag} {name!r} is not a local directory and the Hub is offline "
                          "(HF_HUB_OFFLINE); give a saved model directory")


def check_args(data_args: DataTrainingArguments, training_args: TrainingArguments,
               model_args: ModelArguments | None = None) -> None:  # fmt: skip
    """Refuse values the HF scripts would accept and then misuse, with one line each.

    ``--block_size 0`` would silently mean the model's maximum, ``--max_steps 0`` divides by
    zero in the scheduler, a negative size fails deep inside ``datasets``.
    """
    for name in ("block_size", "max_seq_length", "max_train_samples", "max_eval_samples",
                 "max_test_samples"):  # fmt: skip
        value = getattr(data_args, name)
        if value is not None and value < 1:
            raise RecipeError(f"--{name} {value} must be >= 1")
    for name in ("validation_split_percentage", "test_split_percentage"):
        value = getattr(data_args, name)
        if not 0 <= value < 100 or (name == "validation_split_percentage" and value == 0):
            raise RecipeError(f"--{name} {value} must be in [{int(name[0] == 'v')}, 100)")
    if training_args.max_steps == 0 or training_args.max_steps < -1:
        raise RecipeError(
            f"--max_steps {training_args.max_steps} must be >= 1 (or -1: train for "
            "--num_train_epochs)"
        )
    check_gen_gap_args(data_args)
    if not 0 <= data_args.mlm_probability < 1:
        raise RecipeError(f"--mlm_probability {data_args.mlm_probability} must be in [0, 1)")
    if model_args is not None:
        for name in ("model_name_or_path", "tokenizer_name", "image_processor_name"):
            check_pretrained(f"--{name}", getattr(model_args, name))


def _multi_process_without_accelerator() -> bool:
    import os

    import torch

    accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else (
        torch.cuda.is_available()
    )
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not accelerator


def _one_cpu_thread_for_tiny_models() -> None:
    """Use one intra-op thread for the tiny offline models unless OMP_NUM_THREADS is set.

    Their ops are so small that OpenMP's synchronisation dominates: on a 2-vCPU VM a tiny
    GPT-2 step took 120 ms with 2 threads and 34 ms with 1.
    """
    import os

    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def run(main: Callable[[], None]) -> None:
    """Run a recipe's ``main``; bad input exits with one line on stderr and status 2."""
    try:
        main()
    except RecipeError as err:
        print(f"{sys.argv[0]}: error: {err}", file=sys.stderr)
        sys.exit(2)


def train_and_evaluate(
    trainer: Trainer, n_train: int, n_eval: int, lm: bool = False, test_dataset=None
) -> None:
    """Train, save the model, evaluate, and save metrics and state as the HF examples do.

    Writes ``train_results.json``, ``eval_results.json``, ``all_results.json`` and
    ``trainer_state.json`` into ``output_dir``; ``lm`` adds ``perplexity`` (exp eval_loss).
    The train (and all) results name the data: ``data_source`` and ``data_sha256``
    (:func:`~clion_hf.workloads.data.data_used`).
    With ``test_dataset`` (held-out data, never used for choosing hyper-parameters) it
    also writes ``test_results.json`` with ``test_*`` metrics (``test_perplexity`` for LMs).
    """
    args = trainer.args
    result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()
    metrics = {**result.metrics, "train_samples": n_train, **data_used()}
    # log_metrics formats every value: a hash that is not known (a Hub or saved dataset,
    # an image folder) is saved as null but not printed
    trainer.log_metrics("train", {k: v for k, v in metrics.items() if v is not None})
    trainer.save_metrics("train", metrics)
    metrics = {**trainer.evaluate(), "eval_samples": n_eval}
    if lm:
        metrics["perplexity"] = perplexity(metrics["eval_loss"])
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    if test_dataset is not None:
        metrics = trainer.evaluate(test_dataset, metric_key_prefix="test")
        metrics["test_samples"] = len(test_dataset)
        if lm:
            metrics["test_perplexity"] = perplexity(metrics["test_loss"])
        trainer.log_metrics("test", metrics)
        trainer.save_metrics("test", metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        out = Path(args.output_dir).resolve()
        files = ", ".join(sorted(p.name for p in out.glob("*results.json")))
        print(f"{Path(sys.argv[0]).name}: results written to {out}/ ({files}; "
              "trainer_state.json: the logged history; the model)", flush=True)  # fmt: skip
