"""The shared-context scorer gives lm-eval's numbers on the same documents."""

from __future__ import annotations

import pytest

from rankadaptor.errors import RankAdaptorError
from rankadaptor.eval import TASKS, evaluate
from rankadaptor.eval.tasks import load_docs, write_task_files
from tests.eval.fixtures import build_olmo_eval
from tests.tiny_models import tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def olmo_root(tmp_path_factory):
    return build_olmo_eval(tmp_path_factory.mktemp("olmo"))


def test_fast_backend_equals_lm_eval(olmo_root):
    model, tok = tiny_llama(seed=7), tiny_tokenizer()
    ref = evaluate(model, tok, batch_size=4, data_root=olmo_root)
    fast = evaluate(model, tok, data_root=olmo_root, backend="fast")
    for task in TASKS:
        for key in ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr", "n"):
            assert fast["tasks"][task][key] == ref["tasks"][task][key], (task, key)
        assert fast["tasks"][task]["tokens"] == ref["tasks"][task]["tokens"]


@pytest.mark.parametrize("sharing,batch_tokens", [(True, 10**6), (True, 1), (True, 40), (False, 10**6)],
                         ids=["shared-prefix-batched", "shared-prefix-one-row", "shared-prefix-chunked",
                              "whole-sequences-batched"])
def test_fast_loglikelihoods_match_hflm(olmo_root, tmp_path, monkeypatch, sharing, batch_tokens):
    """Every scoring path (a shared prefix run once and the remainders against its cache, or whole
    sequences; many documents per padded chunk, one row per chunk, or chunks that mix documents of
    different prefix chunks) gives HFLM's log-likelihoods and greedy flags."""
    from lm_eval.models.huggingface import HFLM

    from rankadaptor.eval import fast
    from rankadaptor.eval.fast import lm_eval_requests

    monkeypatch.setattr(fast, "PREFIX_SHARING", sharing)
    monkeypatch.setattr(fast, "BATCH_TOKENS", batch_tokens)
    model, tok = tiny_llama(seed=2), tiny_tokenizer()
    lm = HFLM(pretrained=model, tokenizer=tok, device="cpu", batch_size=4)
    for task in TASKS:
        write_task_files(task, load_docs(task, olmo_root), tmp_path / task)
        _, docs = lm_eval_requests(task, tmp_path / task)
        ours_all = fast.score_documents(lm, model, docs, "cpu")
        for instances, ours in zip(docs, ours_all, strict=True):
            theirs = lm.loglikelihood(instances, disable_tqdm=True)
            for (a, ga), (b, gb) in zip(ours, theirs, strict=True):
                assert a == pytest.approx(b, abs=1e-4) and ga == gb, task


def test_unknown_backend(olmo_root):
    with pytest.raises(RankAdaptorError, match="valid: lm_eval, fast"):
        evaluate(None, None, tasks=["piqa"], data_root=olmo_root, backend="vllm")
