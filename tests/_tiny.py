"""A tiny causal LM and data set for Trainer tests (CPU, a second or two per run)."""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel

VOCAB, SEQ = 32, 8


def tiny_model(seed: int = 0) -> GPT2LMHeadModel:
    """A 1-layer GPT-2 (d=16): weights, biases and LayerNorms, so both param groups exist."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=SEQ, n_embd=16, n_layer=1, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


class TinyData(torch.utils.data.Dataset):
    """Deterministic token sequences with a learnable pattern (next = prev + 1 mod VOCAB)."""

    def __init__(self, n: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, VOCAB, (n, 1), generator=g)
        self.ids = (start + torch.arange(SEQ)) % VOCAB

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_tokenizer():
    """A word-level tokenizer over the words ``w0 .. w29`` (+ pad, eos): VOCAB ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i + 2 for i in range(VOCAB - 2)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<pad>",
        model_max_length=SEQ,
    )  # fmt: skip


def tiny_texts(n: int = 64, seed: int = 0) -> list[str]:
    """Texts of TinyData's pattern (each word the next of the previous), for text trainers."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, VOCAB - 2, (n,), generator=g).tolist()
    return [" ".join(f"w{(s + k) % (VOCAB - 2)}" for k in range(SEQ - 2)) for s in starts]
