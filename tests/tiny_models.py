"""Tiny models and tokenizers built in code, so no test needs a download or a cache.

``tiny_llama()`` has the shape features the real default model has (grouped-query attention,
tied embeddings, SiLU MLP) at a width where a forward pass takes milliseconds.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

TINY_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "A question is answered with yes or no.",
    "Physical commonsense: to open a jar, twist the lid.",
    "The sun rises in the east and sets in the west.",
    "Science questions ask about plants, animals, rocks and weather.",
    "She put the book on the table and sat down to read.",
]


def tiny_llama_config(**overrides) -> LlamaConfig:
    cfg = dict(
        vocab_size=320,  # >= len(tiny_tokenizer()): ids never overflow the embedding
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    cfg.update(overrides)
    return LlamaConfig(**cfg)


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A randomly initialised 4-layer LLaMA (hidden 64, 4 heads over 2 KV groups), eval mode."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(**overrides))
    return model.eval()


def tiny_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a few sentences; ids fit ``tiny_llama``'s vocab."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TINY_TEXT, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def save_tiny_model_and_corpus(directory) -> tuple:
    """A tiny model directory (weights + tokenizer) and a small text corpus, for CLI tests."""
    from pathlib import Path

    directory = Path(directory)
    model_dir = directory / "m"
    tiny_llama().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    corpus = directory / "c.txt"
    corpus.write_text("\n\n".join(TINY_TEXT * 20))
    return model_dir, corpus
