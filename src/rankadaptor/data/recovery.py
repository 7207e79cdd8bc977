"""Read and tokenise recovery data.

Two kinds of source:

* **Alpaca records** (``.json`` list or ``.jsonl``, one object per line, keys ``instruction``,
  ``input`` (optional), ``output``), formatted with the prompt LLM-Pruner's recovery uses and
  trained on the whole prompt + response (LLM-Pruner's default ``train_on_inputs=True``), each
  example cut at ``seq_len`` tokens and closed with EOS. A hub dataset id works only online.
* **Plain text** (any other file): tokenised as one stream and cut into ``seq_len`` blocks.

The validation slice is deterministic and independent of the training seed, so every seed and
every rank plan is scored on the same held-out examples: the last blocks of a text corpus
(contiguous, so no sentence is split across the two sides), a fixed-seed sample of records.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from rankadaptor.errors import RankAdaptorError
from rankadaptor.provenance import sha256_file

log = logging.getLogger(__name__)

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
VAL_SPLIT_SEED = 1234  # fixed: the held-out slice must not move with the training seed


@dataclass
class RecoveryData:
    """Token-id lists for training and validation, plus where they came from."""

    train: list[list[int]]
    val: list[list[int]]
    identity: dict = field(default_factory=dict)


def format_alpaca(record: dict) -> str:
    """Prompt + response text of one Alpaca record (LLM-Pruner's template)."""
    if record.get("input"):
        prompt = PROMPT_WITH_INPUT.format(instruction=record["instruction"], input=record["input"])
    else:
        prompt = PROMPT_NO_INPUT.format(instruction=record["instruction"])
    return prompt + record["output"]


def read_alpaca_records(path) -> list[dict]:
    """Records from a JSON list or JSONL file; a malformed record names the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RankAdaptorError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); Alpaca files are "
                               "UTF-8 JSON") from exc
    if path.suffix == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RankAdaptorError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
        if not isinstance(items, list):
            raise RankAdaptorError(f"{path}: expected a JSON list of records with instruction/input/output")
        # A JSON list has no line per record; report the record's index as its "line".
        return [_check_record(rec, path, f"record {i}") for i, rec in enumerate(items)]
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RankAdaptorError(f"{path}:{lineno}: not a JSON object ({exc.msg})") from exc
        records.append(_check_record(rec, path, f"line {lineno}"))
    return records


def _check_record(rec, path: Path, where: str) -> dict:
    if not isinstance(rec, dict):
        raise RankAdaptorError(f"{path} {where}: expected an object with instruction/input/output, got {type(rec).__name__}")
    for key in ("instruction", "output"):
        if not isinstance(rec.get(key), str):
            raise RankAdaptorError(f"{path} {where}: field {key!r} missing or not a string (have {sorted(rec)})")
    if not isinstance(rec.get("input", ""), str):
        raise RankAdaptorError(f"{path} {where}: field 'input' must be a string")
    return rec


def _is_alpaca(path: Path) -> bool:
    return path.suffix in (".json", ".jsonl")



def check_data_source(source) -> str:
    """What ``source`` is ("default", "file" or "hub"), checked without reading it: cheap, so that a
    command refuses a bad source before it loads a model.

    A hub dataset id needs the hub or the local Hugging Face cache; offline and uncached it is
    refused here at once, rather than after the model has loaded and the network has timed out.
    """
    if source is None:
        return "default"
    path = Path(source)
    if path.is_dir():
        raise RankAdaptorError(f"recovery data {source} is a directory, not a file; pass a text, .json or .jsonl file")
    if path.is_file():
        return "file"
    text = str(source)
    if path.suffix or path.is_absolute() or text.startswith(".") or text.count("/") != 1:
        raise RankAdaptorError(f"recovery data {source} not found; pass an existing text, .json or .jsonl file")
    from rankadaptor.models.loading import hub_unreachable

    if hub_unreachable() and not _in_hub_cache(text):
        raise RankAdaptorError(f"recovery data {source!r} is not a local file, and as a hub dataset id it cannot be "
                               "downloaded: the Hugging Face hub is not reachable from here and the dataset is not in "
                               "the local cache; pass a local .json/.jsonl Alpaca file or a text file")
    return "hub"


def _in_hub_cache(dataset_id: str) -> bool:
    from huggingface_hub.constants import HF_HUB_CACHE

    return (Path(HF_HUB_CACHE) / f"datasets--{dataset_id.replace('/', '--')}").is_dir()


def load_recovery_data(source, tokenizer, seq_len: int = 128, val_fraction: float = 0.05,
                       max_val: int = 64, max_train: int | None = None) -> RecoveryData:
    """Tokenise ``source`` (file path, or a hub dataset id when online; ``None`` = default corpus)."""
    if seq_len < 8:
        raise RankAdaptorError(f"seq_len {seq_len} too small; use >= 8")
    if not 0.0 < val_fraction < 0.5:
        raise RankAdaptorError(f"val_fraction {val_fraction} must be in (0, 0.5)")
    kind = check_data_source(source)
    if source is None:
        from rankadaptor.assets import text_corpus_path

        source = text_corpus_path("train")
    path = Path(source)
    if kind != "hub":
        identity = {"source": str(path), "sha256": sha256_file(path)}
        if _is_alpaca(path):
            examples = _tokenise_records(read_alpaca_records(path), tokenizer, seq_len)
            identity["format"] = "alpaca"
            train, val = _split_records(examples, val_fraction, max_val)
        else:
            blocks = _tokenise_text(_read_text_corpus(path), tokenizer, seq_len,
                                    None if max_train is None else max_train + max_val)
            identity["format"] = "text"
            n_val = min(max_val, max(1, int(len(blocks) * val_fraction)))
            train, val = blocks[:-n_val], blocks[-n_val:]
    else:
        records = _hub_records(str(source))
        identity = {"source": str(source), "format": "alpaca-hub"}
        train, val = _split_records(_tokenise_records(records, tokenizer, seq_len), val_fraction, max_val)
    if max_train is not None:
        train = train[:max_train]
    if not train or not val:
        raise RankAdaptorError(
            f"recovery data {source} gives {len(train)} training and {len(val)} validation examples of "
            f"up to {seq_len} tokens; supply more data or use a shorter sequence length (seq_len)"
        )
    identity.update(n_train=len(train), n_val=len(val), seq_len=seq_len,
                    train_tokens=sum(map(len, train)), val_tokens=sum(map(len, val)))
    log.info("recovery data %s: %d train / %d val examples", source, len(train), len(val))
    return RecoveryData(train=train, val=val, identity=identity)


def _read_text_corpus(path: Path) -> str:
    """A text corpus; a few undecodable bytes are replaced, but a binary file is refused."""
    from rankadaptor.fileio import read_text_file

    return read_text_file(path, "recovery data")


def _tokenise_records(records: list[dict], tokenizer, seq_len: int) -> list[list[int]]:
    out = []
    for rec in records:
        ids = tokenizer(format_alpaca(rec), add_special_tokens=True)["input_ids"][: seq_len - 1]
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        out.append(ids)
    return out


def _tokenise_text(text: str, tokenizer, seq_len: int, max_blocks: int | None) -> list[list[int]]:
    """One token stream (documents joined by EOS) cut into full ``seq_len`` blocks."""
    docs = [d for d in text.split("\n\n") if d.strip()] or [text]
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for doc in docs:
        stream.extend(tokenizer(doc, add_special_tokens=False)["input_ids"] + sep)
        if max_blocks is not None and len(stream) >= (max_blocks + 1) * seq_len:
            break  # enough for the run: a long corpus need not be tokenised whole
    return [stream[i:i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]


def _split_records(examples: list[list[int]], val_fraction: float, max_val: int):
    order = list(range(len(examples)))
    random.Random(VAL_SPLIT_SEED).shuffle(order)
    n_val = min(max_val, max(1, int(len(examples) * val_fraction))) if len(examples) > 1 else 0
    val_idx = set(order[:n_val])
    train = [e for i, e in enumerate(examples) if i not in val_idx]
    val = [examples[i] for i in sorted(val_idx)]
    return train, val


def _hub_records(dataset_id: str) -> list[dict]:
    try:
        from datasets import load_dataset

        ds = load_dataset(dataset_id, split="train")
    except Exception as exc:  # offline or unknown id: say so plainly
        raise RankAdaptorError(
            f"could not load hub dataset {dataset_id!r} ({type(exc).__name__}); offline, pass a local "
            ".json/.jsonl Alpaca file or a text file instead"
        ) from exc
    return [_check_record(dict(r), Path(dataset_id), f"row {i}") for i, r in enumerate(ds)]
