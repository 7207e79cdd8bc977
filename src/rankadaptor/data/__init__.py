"""Recovery data: Alpaca-format instruction records and plain-text corpora, tokenised for training.

``load_recovery_data(source, tokenizer, seq_len)`` returns a ``RecoveryData`` with tokenised
training and held-out validation examples plus an identity (path, hash, sizes) for results files.
"""

from rankadaptor.data.recovery import (
    PROMPT_WITH_INPUT,
    PROMPT_NO_INPUT,
    RecoveryData,
    format_alpaca,
    load_recovery_data,
    read_alpaca_records,
)

__all__ = [
    "PROMPT_NO_INPUT",
    "PROMPT_WITH_INPUT",
    "RecoveryData",
    "format_alpaca",
    "load_recovery_data",
    "read_alpaca_records",
]
