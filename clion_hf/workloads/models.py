"""Model presets for the recipes and the cached offline checkpoints the finetune recipes use.

Presets: ``tiny-gpt2``, ``tiny-bert``, ``tiny-vit`` (a run of 100 steps takes seconds on two
CPU cores), the scale ladder's rungs ``gpt2-w{W}``, ``bert-w{W}``, ``vit-w{W}`` (the tiny
architecture at width ``W`` for ``W`` in :data:`LADDER_WIDTHS`; ``-w64`` is the tiny preset)
and the full-size configs of the online defaults, ``gpt2`` (124M), ``bert-base``
(110M) and ``vit-base-patch16-224`` (86M), built from transformers' config defaults so they
need no network.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from transformers import AutoConfig, BertConfig, GPT2Config, PretrainedConfig, ViTConfig

from clion_hf._cache import cache_dir, cache_key
from clion_hf._files import atomic_dir, discard_dir, sha256_file
from clion_hf.workloads.data import hub_offline
from clion_hf.workloads.errors import RecipeError

FAMILIES = ("gpt2", "bert", "vit")

PRESETS: dict[str, Callable[[], PretrainedConfig]] = {
    "tiny-gpt2": lambda: GPT2Config(
        n_embd=64, n_layer=2, n_head=4, n_inner=256, n_positions=128, vocab_size=512
    ),
    "tiny-bert": lambda: BertConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=128,
        vocab_size=512,
    ),
    "tiny-vit": lambda: ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
    ),
    # transformers' defaults are exactly these architectures
    "gpt2": GPT2Config,
    "bert-base": BertConfig,
    "vit-base-patch16-224": ViTConfig,
}

# The scale ladder: the tiny presets' architecture (2 layers, the same
# vocabulary and image size) at a larger width; only the width and what scales with it
# change (MLP width, heads of at most 64 dimensions), so a rung differs from the next
# in size alone. Depth stays 2: on CPU the budget goes into width and steps.
LADDER_WIDTHS = (64, 128, 256, 512, 768)


def _heads(width: int) -> int:
    return max(4, width // 64)


def ladder_config(family: str, width: int) -> PretrainedConfig:
    """The tiny ``family`` preset at ``width`` (``width=64`` gives the tiny preset itself)."""
    if family not in FAMILIES:
        raise RecipeError(f"unknown model family {family!r}; allowed: {', '.join(FAMILIES)}")
    if width < 16 or width % 16:
        raise RecipeError(f"invalid ladder width {width!r}: must be a multiple of 16, >= 16")
    config = PRESETS[TINY_PRESET[family]]()
    heads = _heads(width)
    if family == "gpt2":
        config.n_embd, config.n_head, config.n_inner = width, heads, 4 * width
    else:  # the tiny BERT's MLP is 4x wide, the tiny ViT's 2x: kept
        ratio = config.intermediate_size // config.hidden_size
        config.hidden_size, config.num_attention_heads = width, heads
        config.intermediate_size = ratio * width
    return config


for _family in FAMILIES:
    for _width in LADDER_WIDTHS:
        PRESETS[f"{_family}-w{_width}"] = (
            lambda f=_family, w=_width: ladder_config(f, w)  # type: ignore[misc]
        )

# Per family: the tiny preset (offline default), the full-size preset pretrained from
# scratch online, and the Hub checkpoint finetuned online.
TINY_PRESET = {"gpt2": "tiny-gpt2", "bert": "tiny-bert", "vit": "tiny-vit"}
ONLINE_PRESET = {"gpt2": "gpt2", "bert": "bert-base", "vit": "vit-base-patch16-224"}
ONLINE_CHECKPOINT = {
    "gpt2": "gpt2",
    "bert": "bert-base-uncased",
    "vit": "google/vit-base-patch16-224-in21k",
}
# Tokenizer used with the full-size presets when pretraining on a Hub dataset
ONLINE_TOKENIZER = {"gpt2": "gpt2", "bert": "bert-base-uncased"}


def load_config(name_or_path: str, **overrides) -> PretrainedConfig:
    """A preset by name, else ``AutoConfig.from_pretrained`` (a Hub id or a local directory)."""
    if name_or_path in PRESETS:
        config = PRESETS[name_or_path]()
        for key, value in overrides.items():
            setattr(config, key, value)
        return config
    if not Path(name_or_path).exists() and hub_offline():
        raise RecipeError(
            f"unknown config {name_or_path!r} in offline mode; allowed: "
            f"{', '.join(PRESETS)} or a local directory"
        )
    return AutoConfig.from_pretrained(name_or_path, **overrides)


# ----------------------------------------------------------------------------------------
# Offline pretrained checkpoints for the finetune recipes
# ----------------------------------------------------------------------------------------

# The cached checkpoints: each family's tiny preset trained from scratch, with its pretrain
# recipe's offline defaults for data (the embedded pretraining part, its tokenizer, blocks
# of 64 tokens) and batch size, and Trainer's defaults for what those leave open (AdamW
# without weight decay, a linear schedule after 10% warmup, gradients clipped at norm 1).
CHECKPOINT_STEPS = 500
CHECKPOINT_LR = 2e-3
CHECKPOINT_BATCH = {"gpt2": 16, "bert": 16, "vit": 32}
_SEQ_LEN, _WARMUP, _SEED, _MAX_GRAD_NORM = 64, 0.1, 0, 1.0
# What the checkpoint is built from: editing any of these builds it again.
_SOURCES = ("models.py", "corpus.py", "offline.py", "data.py", "preprocess.py", "tokenizer.py")


def offline_pretrained_checkpoint(family: str) -> str:
    """Path of a small pretrained checkpoint of ``family`` for the offline finetune recipes.

    On first use this trains the family's tiny preset on the offline pretraining data in
    this process (AdamW, seed 0, 500 steps: well under a minute on two CPU cores; see
    :func:`pretrain_offline`) and caches it under ``cache_dir()/checkpoints``, atomically,
    with a manifest of every file's size and SHA-256 that each later use checks. The cache
    key covers the settings and clion_hf's data/model code, so editing them retrains.
    ``CLION_HF_CHECKPOINT_MAX_STEPS`` overrides the step count (tests use a few steps).
    For ViT only the backbone is kept (as in ``vit-base-patch16-224-in21k``), so the
    finetune recipe starts with a fresh classification head.
    """
    if family not in FAMILIES:
        raise RecipeError(f"unknown model family {family!r}; allowed: {', '.join(FAMILIES)}")
    steps = CHECKPOINT_STEPS
    if os.environ.get("CLION_HF_CHECKPOINT_MAX_STEPS"):  # tests: a quick, weaker checkpoint
        text = os.environ["CLION_HF_CHECKPOINT_MAX_STEPS"]
        if not text.strip().isdigit() or int(text) < 1:
            raise RecipeError(f"CLION_HF_CHECKPOINT_MAX_STEPS={text!r} must be an integer >= 1")
        steps = int(text)
    settings = [steps, CHECKPOINT_LR, CHECKPOINT_BATCH[family], _SEQ_LEN, _WARMUP, _SEED,
                _MAX_GRAD_NORM]  # fmt: skip
    sources = [Path(__file__).with_name(name).read_bytes() for name in _SOURCES]
    key = cache_key(family, settings, sources)
    final = cache_dir() / "checkpoints" / f"{family}-pretrain-{key}"

    def build(tmp: Path) -> None:
        pretrain_offline(family, steps, tmp)
        _write_manifest(tmp)

    problem = _verify_checkpoint(final) if final.is_dir() else None
    if problem is not None:
        # truncated, edited or half-deleted since it was built: build it again
        print(f"[clion_hf] offline {family} checkpoint {final} is damaged ({problem}); "
              "rebuilding it", file=sys.stderr)  # fmt: skip
        discard_dir(final)
    print(f"[clion_hf] offline {family} checkpoint: {final}", file=sys.stderr)
    return str(atomic_dir(final, build))


def pretrain_offline(family: str, steps: int, out: Path) -> None:
    """Train ``family``'s tiny preset for ``steps`` steps on the offline pretraining data and
    save it with its tokenizer (image processor for ViT; only the backbone) into ``out``.

    A plain loop on the CPU, in this process: a recipe asking for the checkpoint may run
    under DDP, and Trainer here would join its process group. The caller's random state,
    thread count and :func:`~.data.data_used` record are left as they were.
    """
    import torch
    from torch.utils.data import DataLoader, RandomSampler
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForImageClassification,
        AutoModelForMaskedLM,
        DataCollatorForLanguageModeling,
        ViTImageProcessor,
        default_data_collator,
        get_linear_schedule_with_warmup,
    )

    from .offline import offline_image_dataset, offline_text_dataset
    from .preprocess import image_collate, image_transform, tokenize_and_group
    from .tokenizer import train_tokenizer

    threads = torch.get_num_threads()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # the tiny models' ops are too small for two (args.py)
    try:
        # Only the CPU generator is seeded (torch.manual_seed would also queue a reseed of
        # CUDA's), and it is restored afterwards.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(_SEED)
            if family == "vit":
                raw = offline_image_dataset("pretrain")
                names = raw["train"].features["label"].names
                config = load_config(TINY_PRESET["vit"], num_labels=len(names),
                                     id2label=dict(enumerate(names)),
                                     label2id={n: i for i, n in enumerate(names)})  # fmt: skip
                model = AutoModelForImageClassification.from_config(config)
                size = {"height": config.image_size, "width": config.image_size}
                processor = ViTImageProcessor(size=size, image_mean=[0.5] * 3,
                                              image_std=[0.5] * 3)  # fmt: skip
                train = raw["train"]
                train.set_transform(image_transform(processor, "img", "label"))
                collate = image_collate
            else:
                raw = offline_text_dataset("pretrain")
                processor = train_tokenizer(family, raw["train"]["text"])
                config = load_config(TINY_PRESET[family], vocab_size=len(processor))
                auto = AutoModelForCausalLM if family == "gpt2" else AutoModelForMaskedLM
                model = auto.from_config(config)
                train = tokenize_and_group(raw, processor, "text", min(_SEQ_LEN,
                                           processor.model_max_length),
                                           mlm=family == "bert")["train"]  # fmt: skip
                collate = default_data_collator if family == "gpt2" else (
                    DataCollatorForLanguageModeling(processor, mlm_probability=0.15, seed=_SEED)
                )
            optimizer = torch.optim.AdamW(model.parameters(), lr=CHECKPOINT_LR, weight_decay=0.0)
            schedule = get_linear_schedule_with_warmup(
                optimizer, math.ceil(_WARMUP * steps), steps
            )
            sampler = RandomSampler(train, generator=torch.Generator().manual_seed(_SEED))
            loader = DataLoader(train, CHECKPOINT_BATCH[family], sampler=sampler,
                                collate_fn=collate)  # fmt: skip
            model.train()
            step = 0
            while step < steps:  # epochs until the step budget, as Trainer's max_steps
                for batch in loader:
                    loss = model(**batch).loss
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), _MAX_GRAD_NORM)
                    optimizer.step()
                    schedule.step()
                    optimizer.zero_grad()
                    step += 1
                    if step % 50 == 0 or step == steps:
                        print(f"[clion_hf] offline {family} checkpoint: step {step}/{steps}, "
                              f"loss {loss.item():.4f}", file=sys.stderr)  # fmt: skip
                    if step == steps:
                        break
    finally:
        torch.set_num_threads(threads)
    (model.vit if family == "vit" else model).save_pretrained(out)
    processor.save_pretrained(out)


MANIFEST = "clion_hf_manifest.json"


def _write_manifest(directory: Path) -> None:
    """Record every file's size and SHA-256, checked on each later use."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    record = {str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
              for p in files}  # fmt: skip
    (directory / MANIFEST).write_text(json.dumps(record, indent=1, sort_keys=True))


def _verify_checkpoint(directory: Path) -> str | None:
    """Why the cached checkpoint ``directory`` does not match what was built, or None."""
    try:
        record = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return f"no readable {MANIFEST}"
    if not isinstance(record, dict) or not record:
        return f"{MANIFEST} lists no files"
    for name, want in record.items():
        path = directory / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if not isinstance(want, dict) or size != want.get("size"):
            return f"{name} has {size} bytes, built with {want.get('size')}"
        if sha256_file(path) != want.get("sha256"):
            return f"{name} does not match its SHA-256"
    return None
