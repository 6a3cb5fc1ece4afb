"""The stability study's second regime: the tiny GPT-2 and ViT of the recipes.

:mod:`clion_hf.bench.stability`'s convex regime has a linear softmax model; here the pair is
the recipes' own models on their offline data, trained by a plain torch loop (no Trainer):

* ``gpt2-w{W}``: ``gpt2-pretrain``'s model (:func:`~clion_hf.workloads.models.ladder_config`,
  ``W = 64`` is the ``tiny-gpt2`` preset: 2 layers, vocabulary 512) on the offline corpus
  (``pydoc-topics``), tokenized by the recipe's on-the-fly byte-level BPE and grouped into
  blocks of :data:`BLOCK_SIZE` tokens (:func:`~clion_hf.workloads.preprocess.tokenize_and_group`,
  labels as the recipe's); an example is a block, the loss the mean next-token NLL.
* ``vit-w{W}``: ``vit-pretrain``'s model (``W = 64`` is ``tiny-vit``: 16x16 images, 4x4
  patches) on the offline digits 0-4 (:func:`~clion_hf.workloads.offline.offline_image_dataset`),
  with the recipe's image processor (mean and std 0.5); an example is an image.

The pool of training examples is the recipe's train split; the held-out loss is on the
recipe's test split and the lr sweep's on its validation split (at most ``test_size`` /
``val_size`` rows, drawn by the recipes' fixed :func:`~clion_hf.workloads.data.sample`).

The pair is built as in the convex regime (:func:`~clion_hf.bench.neighbours.draw_pair`,
:func:`~clion_hf.bench.neighbours.sample_order`): S and S' differ at one position, the second
model is a deep copy of the first after its seeded initialization (the config's
``initializer_range`` is the preset's ``init_std``), and both take the same positions at
every step, stepped in lockstep in one process.

Dropout is off (GPT-2's three dropout rates set to 0; the ViT preset has none): a dropout
mask is randomness outside the update map the stability bound is about, and two runs that
drew masks from one generator in turn would see different masks (a difference that is not
the replaced example). With it off, the two runs differ in the replaced example alone,
which a test checks: S' = S gives a drift of exactly 0 at every step.
"""

from __future__ import annotations

import copy
import re
import time
from typing import Any

from .neighbours import (
    PairReadings,
    add_optimizer_stats,
    branch_taken,
    diverged,
    draw_pair,
    make_optimizer,
    run_result,
    sample_order,
    update_direction,
)
from .specs import SpecError

BLOCK_SIZE = 64  # gpt2-pretrain's offline block size
FAMILIES = ("gpt2", "vit")
EVAL_BATCH = 64
_WORKLOAD = re.compile(r"^(gpt2|vit)-w(\d+)$")


def parse_workload(name: str) -> tuple[str, int]:
    """``gpt2-w64`` -> ("gpt2", 64); a bad name is a one-line :class:`SpecError`."""
    match = _WORKLOAD.match(name)
    if match is None:
        raise SpecError(f"unknown stability workload {name!r}; allowed: digits-softmax, "
                        "gpt2-w<width>, vit-w<width> (width a multiple of 16)")  # fmt: skip
    return match.group(1), int(match.group(2))


# ------------------------------------------------------------------------------ data

_DATA: dict[tuple[str, int, int], dict[str, Any]] = {}


def model_data(family: str, test_size: int, val_size: int) -> dict[str, Any]:
    """``pool``, ``val`` and ``test`` as (inputs, labels) tensors, plus what the model needs
    (``vocab_size`` or ``num_labels``); built once per process."""
    key = (family, test_size, val_size)
    if key in _DATA:
        return _DATA[key]
    from clion_hf.workloads.data import sample

    if family == "gpt2":
        import numpy as np
        import torch

        from clion_hf.workloads.offline import offline_text_dataset
        from clion_hf.workloads.preprocess import tokenize_and_group
        from clion_hf.workloads.tokenizer import train_tokenizer

        raw = offline_text_dataset("pretrain")
        tokenizer = train_tokenizer("gpt2", raw["train"]["text"])
        lm = tokenize_and_group(raw, tokenizer, "text", BLOCK_SIZE, mlm=False,
                                max_eval_samples=val_size, max_test_samples=test_size)  # fmt: skip

        def tensors(ds) -> tuple:  # noqa: ANN001
            # through Arrow's numpy view: a list of lists to torch.tensor takes seconds
            cols = ds.with_format("numpy")
            return (torch.from_numpy(np.asarray(cols["input_ids"], dtype=np.int64)),
                    torch.from_numpy(np.asarray(cols["labels"], dtype=np.int64)))  # fmt: skip

        out = {"pool": tensors(lm["train"]), "val": tensors(lm["validation"]),
               "test": tensors(lm["test"]), "vocab_size": len(tokenizer)}  # fmt: skip
    elif family == "vit":
        from transformers import ViTImageProcessor

        from clion_hf.workloads.offline import offline_image_dataset
        from clion_hf.workloads.preprocess import image_collate, image_transform

        raw = offline_image_dataset("pretrain")
        # vit_pretrain.py's processor at the tiny preset's resolution
        processor = ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3,
                                      image_std=[0.5] * 3)  # fmt: skip
        transform = image_transform(processor, "img", "label")

        def tensors(ds) -> tuple:  # noqa: ANN001
            batch = transform(ds[:])
            rows = [{"pixel_values": p, "labels": y}
                    for p, y in zip(batch["pixel_values"], batch["labels"], strict=True)]
            got = image_collate(rows)
            return got["pixel_values"].float(), got["labels"]

        out = {"pool": tensors(raw["train"]), "val": tensors(sample(raw["validation"], val_size)),
               "test": tensors(sample(raw["test"], test_size)),
               "num_labels": raw["train"].features["label"].num_classes}  # fmt: skip
    else:
        raise SpecError(f"unknown model family {family!r}; allowed: {', '.join(FAMILIES)}")
    _DATA[key] = out
    return out


# ------------------------------------------------------------------------------ model


def build_model(family: str, width: int, seed: int, init_std: float, data: dict[str, Any]):  # noqa: ANN201
    """The recipe's model at ``width``, dropout off, initialized from ``seed``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageClassification

    from clion_hf.workloads.models import ladder_config

    config = ladder_config(family, width)
    config.initializer_range = init_std
    if family == "gpt2":
        config.vocab_size = data["vocab_size"]
        config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0
    else:
        config.num_labels = data["num_labels"]
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    torch.manual_seed(seed)
    if family == "gpt2":
        model = AutoModelForCausalLM.from_config(config)
    else:
        model = AutoModelForImageClassification.from_config(config)
    return model.float().train()


def batch_loss(model, family: str, x, y):  # noqa: ANN001, ANN201
    """The recipe's training loss of a batch (mean next-token NLL / cross entropy)."""
    if family == "gpt2":
        return model(input_ids=x, labels=y).loss
    return model(pixel_values=x, labels=y).loss


def mean_loss(model, family: str, data: tuple) -> float:  # noqa: ANN001
    """Mean loss over every example of ``data`` (each block has the same number of targets,
    so the mean of batch means weighted by batch size is the mean over tokens)."""
    import torch

    x, y = data
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(y), EVAL_BATCH):
            total += float(batch_loss(model, family, x[i:i + EVAL_BATCH],
                                      y[i:i + EVAL_BATCH])) * len(y[i:i + EVAL_BATCH])  # fmt: skip
    return total / len(y)


# ------------------------------------------------------------------------------ the pair


def pair_indices(run, pool_size: int, replacement: int | None = None):  # noqa: ANN001, ANN201
    """The draw of ``run`` and the pool indices of S (and S' for a pair).

    ``replacement`` overrides the drawn stand-in (a test passes S's own example at the
    replaced position: S' = S)."""
    draw = draw_pair(run.seed, run.n, pool_size)
    if run.stage == "tune":
        return draw, [draw.indices]
    idx2 = draw.indices.copy()
    idx2[draw.pos] = draw.replacement if replacement is None else replacement
    return draw, [draw.indices, idx2]


def _flat(params: list) -> Any:
    import torch

    return torch.cat([p.detach().reshape(-1) for p in params])


def execute_model_run(run, arm, replacement: int | None = None) -> dict[str, Any]:  # noqa: ANN001
    """Train ``run`` (one model, or the pair in lockstep) and return its result dict: the
    convex regime's records (:func:`~clion_hf.bench.stability.execute_run`) for a model."""
    import torch


    family, width = parse_workload(run.workload)
    torch.set_num_threads(1)  # as the convex regime: one run at a time, one thread each
    data = model_data(family, run.test_size, run.val_size)
    xp, yp = data["pool"]
    started = time.time()
    draw, index_sets = pair_indices(run, len(yp), replacement)
    sets = [(xp[idx], yp[idx]) for idx in index_sets]
    first = build_model(family, width, run.seed, run.init_std, data)
    models = [first] + [copy.deepcopy(first) for _ in sets[1:]]
    params = [[p for p in m.parameters() if p.requires_grad] for m in models]
    opts = [make_optimizer(arm, ps, run.lr) for ps in params]
    order = sample_order(run.seed, run.n, run.steps, run.batch)
    log_at = set(run.log_at)
    pair = len(sets) == 2
    sign_lion_like = arm.name in ("lion", "clion")
    history: list[dict[str, Any]] = []
    readings = PairReadings(arm)
    status, reason = "ok", ""
    for t in range(1, run.steps + 1):
        pos = torch.from_numpy(order[t - 1])
        before, branches = [], []
        for (x, y), model, ps, opt in zip(sets, models, params, opts, strict=True):
            loss = batch_loss(model, family, x[pos], y[pos])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if pair:
                before.append(_flat(ps).clone())
                if sign_lion_like:
                    branches.append(branch_taken(update_direction(opt, ps), arm))
            opt.step()
        if pair:
            readings.add(before, [_flat(params[0]), _flat(params[1])], branches)
        if t not in log_at:
            continue
        entry: dict[str, Any] = {"step": t}
        entry["test_loss"] = mean_loss(models[0], family, data["test"])
        if not pair:
            entry["val_loss"] = mean_loss(models[0], family, data["val"])
            entry["train_loss"] = mean_loss(models[0], family, sets[0])
        else:
            readings.log(entry, _flat(params[0]), _flat(params[1]),
                         mean_loss(models[1], family, data["test"]))  # fmt: skip
        add_optimizer_stats(entry, opts[0])
        history.append(entry)
        if diverged(entry):
            status, reason = "diverged", f"non-finite loss or drift at step {t}"
            break
    return run_result(run, status, reason, draw.pos, int(index_sets[-1][draw.pos]), history,
                      started, parameters=int(theta_size(params[0])))  # fmt: skip


def theta_size(params: list) -> int:
    return sum(p.numel() for p in params)
