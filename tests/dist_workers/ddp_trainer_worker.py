"""DDP through the Trainer: ``accelerate launch --cpu --num_processes 2`` (gloo).

``torchrun --nproc_per_node 2 ddp_trainer_worker.py MODE[,MODE...] OUT``: for each CLion
mode in turn (one launch for all: the start-up is the slow part) trains a tiny GPT-2 with
``optim="clion"``; after every optimizer step every rank's parameters are gathered and
compared bitwise. Rank 0 writes the comparison and the Trainer's log_history (with the
CLion diagnostics) to ``OUT.MODE``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import Trainer, TrainerCallback, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _finish import finish  # noqa: E402
from _tiny import TinyData, tiny_model  # noqa: E402

import clion_hf  # noqa: E402, F401  (registers --optim clion)


class SameOnAllRanks(TrainerCallback):
    def __init__(self) -> None:
        self.checks: list[bool] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, flat)
        self.checks.append(all(torch.equal(gathered[0], g) for g in gathered[1:]))


def main() -> None:
    for mode in sys.argv[1].split(","):
        train(mode, f"{sys.argv[2]}.{mode}")
    finish()


def train(mode: str, out: str) -> None:
    args = TrainingArguments(
        output_dir=str(Path(out).parent / f"ddp-{mode}"), optim="clion",
        optim_args=f"mode={mode},nu=1e-6", learning_rate=1e-3, weight_decay=0.1,
        max_steps=6, logging_steps=2, per_device_train_batch_size=4, report_to="none",
        save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0, ddp_backend="gloo",
    )  # fmt: skip
    check = SameOnAllRanks()
    trainer = Trainer(model=tiny_model(), args=args, train_dataset=TinyData(), callbacks=[check])
    trainer.train()
    assert dist.get_world_size() == 2 and type(trainer.model).__name__ == "GPT2LMHeadModel"
    wrapped = type(trainer.model_wrapped).__name__
    if trainer.is_world_process_zero():
        Path(out).write_text(json.dumps({
            "checks": check.checks, "wrapped": wrapped, "log_history": trainer.state.log_history,
        }))  # fmt: skip


if __name__ == "__main__":
    main()
