"""Tokenizers trained on the fly (byte-level BPE for GPT-2, WordPiece for BERT), cached."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from clion_hf._cache import cache_dir, cache_key
from clion_hf._files import atomic_dir

from .errors import RecipeError

TOKENIZER_KINDS = ("gpt2", "bert")


def _text_iter(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    seen = 0
    for t in texts:
        if seen >= max_chars:
            return
        seen += len(t)
        yield t


def train_tokenizer(
    kind: str, texts: Iterable[str], vocab_size: int = 512, max_length: int = 128
):
    """Train a byte-level BPE (``gpt2``) or WordPiece (``bert``) tokenizer, cached on disk.

    Trains on at most 20 MB of ``texts``. Returns a ``PreTrainedTokenizerFast`` so that
    ``save_pretrained``/``AutoTokenizer.from_pretrained`` work as for Hub tokenizers.
    """
    from transformers import AutoTokenizer

    if kind not in TOKENIZER_KINDS:
        raise RecipeError(f"unknown tokenizer kind {kind!r}; allowed: {', '.join(TOKENIZER_KINDS)}")
    corpus = list(_text_iter(texts, 20_000_000))
    text_sha = hashlib.sha256("\0".join(corpus).encode()).hexdigest()
    key = cache_key(kind, vocab_size, max_length, text_sha)
    final = cache_dir() / "tokenizers" / f"{kind}-{vocab_size}-{key}"

    def build(tmp: Path) -> None:
        _build_tokenizer(kind, corpus, vocab_size, max_length).save_pretrained(tmp)

    return AutoTokenizer.from_pretrained(atomic_dir(final, build))


def _build_tokenizer(kind: str, corpus: list[str], vocab_size: int, max_length: int):
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    if kind == "gpt2":
        eos = "<|endoftext|>"
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[eos],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(corpus, trainer)
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token=eos,
            eos_token=eos,
            unk_token=eos,
            model_max_length=max_length,
        )
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(
        corpus, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
    )
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
