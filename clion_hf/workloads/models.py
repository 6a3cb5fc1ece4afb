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
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from transformers import AutoConfig, BertConfig, GPT2Config, PretrainedConfig, ViTConfig

from clion_hf._cache import cache_dir, cache_key
from clion_hf._files import atomic_dir, discard_dir, sha256_file
from clion_hf.workloads import recipes_dir
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

# The scale ladder (issue 23): the tiny presets' architecture (2 layers, the same
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

RECIPES_DIR = recipes_dir()  # None: neither a checkout's recipes/ nor the wheel's copy
# Fixed recipe of the cached checkpoints: AdamW, fixed seed, no evaluation or saving on the way
CHECKPOINT_ARGS: dict[str, list[str]] = {
    "gpt2": ["--max_steps", "500", "--learning_rate", "2e-3"],
    "bert": ["--max_steps", "500", "--learning_rate", "2e-3"],
    "vit": ["--max_steps", "500", "--learning_rate", "2e-3"],
}
_COMMON_ARGS = [
    "--optim", "adamw_torch", "--seed", "0", "--eval_strategy", "no",
    "--save_strategy", "no", "--report_to", "none", "--logging_steps", "50",
]  # fmt: skip
# Variables of a distributed launch: the pretraining subprocess must be a single process
# even when the recipe asking for the checkpoint runs under DDP/FSDP/DeepSpeed.
_LAUNCH_ENV_PREFIXES = ("ACCELERATE_", "TORCHELASTIC_", "FSDP_")
_LAUNCH_ENV = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
               "ROLE_WORLD_SIZE", "GROUP_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}  # fmt: skip


def offline_pretrained_checkpoint(family: str) -> str:
    """Path of a small pretrained checkpoint of ``family`` for the offline finetune recipes.

    On first use this runs ``recipes/<family>_pretrain.py`` on its offline default (AdamW,
    seed 0, a few hundred steps, well under a minute on two CPU cores) in a single-process
    subprocess and caches the result under ``cache_dir()/checkpoints`` (atomically). The
    cache key covers the recipe and clion_hf's data/model code, so editing them retrains.
    ``CLION_HF_CHECKPOINT_MAX_STEPS`` overrides the step count (tests use a few steps).
    For ViT only the backbone is kept (as in ``vit-base-patch16-224-in21k``), so the
    finetune recipe starts with a fresh classification head.
    """
    if family not in FAMILIES:
        raise RecipeError(f"unknown model family {family!r}; allowed: {', '.join(FAMILIES)}")
    recipe = (RECIPES_DIR or Path("recipes")) / f"{family}_pretrain.py"
    if not recipe.is_file():
        raise RecipeError(
            f"the offline {family} checkpoint is built with {recipe}, which is missing "
            "(a clion-hf wheel carries it as clion_hf/recipes/; reinstall clion-hf) "
            "or pass --model_name_or_path"
        )
    args = _COMMON_ARGS + CHECKPOINT_ARGS[family]
    if os.environ.get("CLION_HF_CHECKPOINT_MAX_STEPS"):  # tests: a quick, weaker checkpoint
        args += ["--max_steps", os.environ["CLION_HF_CHECKPOINT_MAX_STEPS"]]
    data = ("corpus.py", "offline.py", "data.py", "preprocess.py", "tokenizer.py")
    sources = [recipe, Path(__file__), *map(Path(__file__).with_name, data)]
    key = cache_key(family, args, [p.read_bytes() for p in sources])
    final = cache_dir() / "checkpoints" / f"{family}-pretrain-{key}"

    def build(tmp: Path) -> None:
        run_dir = tmp / "pretrain"
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in _LAUNCH_ENV and not k.startswith(_LAUNCH_ENV_PREFIXES)
        }
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        cmd = [sys.executable, str(recipe), "--output_dir", str(run_dir), *args]
        log = tmp / "pretrain.log"
        with open(log, "w") as fh:
            proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            tail = log.read_text()[-3000:]
            raise RuntimeError(f"pretraining the offline {family} checkpoint failed:\n{tail}")
        _export_checkpoint(family, run_dir, tmp)
        _write_manifest(tmp)

    problem = _verify_checkpoint(final) if final.is_dir() else None
    if problem is not None:
        # truncated, edited or half-deleted since it was built: build it again
        print(f"[clion_hf] offline {family} checkpoint {final} is damaged ({problem}); "
              "rebuilding it", file=sys.stderr)  # fmt: skip
        discard_dir(final)
    print(f"[clion_hf] offline {family} checkpoint: {final}", file=sys.stderr)
    return str(atomic_dir(final, build))


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


def _export_checkpoint(family: str, run_dir: Path, out: Path) -> None:
    """Save the model and its tokenizer/image processor from ``run_dir`` into ``out``."""
    from transformers import (
        AutoImageProcessor,
        AutoModelForCausalLM,
        AutoModelForImageClassification,
        AutoModelForMaskedLM,
        AutoTokenizer,
    )

    if family == "vit":
        AutoModelForImageClassification.from_pretrained(run_dir).vit.save_pretrained(out)
        AutoImageProcessor.from_pretrained(run_dir).save_pretrained(out)
        return
    auto = AutoModelForCausalLM if family == "gpt2" else AutoModelForMaskedLM
    auto.from_pretrained(run_dir).save_pretrained(out)
    AutoTokenizer.from_pretrained(run_dir).save_pretrained(out)
