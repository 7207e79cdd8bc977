"""Paired comparisons of two evaluations: intervals, verdicts, power, sample sizes, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rankadaptor.errors import RankAdaptorError
from rankadaptor.eval.compare import choose_documents, compare_results, comparison_text, sample_sizes
from rankadaptor.eval.results import doc_block


def result(tasks: dict[str, tuple[list[int], list[int] | None]], model="m1", ppl=None, data="v1") -> dict:
    """An evaluation result in the JSON layout, from per-document 0/1 lists (acc, acc_norm)."""
    out = {"model": {"sha256": model}, "tasks": {}}
    for task, (acc, norm) in tasks.items():
        per_doc = [{"acc": x, "acc_norm": y} for x, y in zip(acc, norm if norm is not None else acc)]
        block = doc_block([{"task": task, "i": i, "data": data} for i in range(len(acc))], per_doc, norm is not None)
        out["tasks"][task] = {"acc": float(np.mean(acc)), "acc_norm": None if norm is None else float(np.mean(norm)),
                              "n": len(acc), "docs": block}
    if ppl is not None:
        nll, tokens = ppl
        out["perplexity"] = {"perplexity": math.exp(sum(nll) / sum(tokens)), "source": "heldout.txt", "seq_len": 256,
                             "n_tokens": sum(tokens) + len(tokens), "windows": {"nll": nll, "tokens": tokens}}
    return out


def pair(n_both: int, a_only: int, b_only: int, n_none: int) -> tuple[list[int], list[int]]:
    """Per-document correctness of A and B with the given concordant / discordant counts."""
    a = [1] * n_both + [1] * a_only + [0] * b_only + [0] * n_none
    b = [1] * n_both + [0] * a_only + [1] * b_only + [0] * n_none
    return a, b


def test_interval_verdict_and_power_match_the_paired_normal_theory():
    a, b = pair(150, 60, 20, 170)  # n = 400, A - B = 40 / 400, discordance 80 / 400
    cmp = compare_results(result({"boolq": (a, None)}), result({"boolq": (b, None)}, model="m2"))
    row = cmp["tasks"]["boolq"]["acc"]
    assert row["diff"] == pytest.approx(0.10) and row["discordant"] == 80 and row["n"] == 400
    se = math.sqrt((0.2 - 0.01) / 400)  # the paired (McNemar-type) standard error
    assert row["ci_low"] == pytest.approx(0.10 - 1.96 * se, abs=0.01)
    assert row["ci_high"] == pytest.approx(0.10 + 1.96 * se, abs=0.01)
    assert row["verdict"] == "significant"
    # detectable at 80 % power: (1.96 + 0.84) * sqrt(discordance) / sqrt(n)
    assert row["mde"] == pytest.approx(2.8016 * math.sqrt(0.2) / 20, rel=1e-3)
    assert row["docs_needed"] == math.ceil((2.8016 * math.sqrt(0.2) / 0.01) ** 2)
    # seeded: the same inputs give the same interval
    again = compare_results(result({"boolq": (a, None)}), result({"boolq": (b, None)}, model="m2"))
    assert again["tasks"]["boolq"]["acc"] == row
    assert "significant" in comparison_text(cmp) and "| BoolQ | acc | 400 |" in comparison_text(cmp, markdown=True)


def test_unpaired_variance_would_be_wider():
    """Pairing matters: many concordant documents make the interval much narrower than two
    independent samples of the same accuracies would."""
    a, b = pair(190, 15, 5, 190)
    row = compare_results(result({"piqa": (a, a)}), result({"piqa": (b, b)}))["tasks"]["piqa"]["acc"]
    pa, pb = np.mean(a), np.mean(b)
    unpaired_half = 1.96 * math.sqrt(pa * (1 - pa) / 400 + pb * (1 - pb) / 400)
    assert (row["ci_high"] - row["ci_low"]) / 2 < 0.5 * unpaired_half


def test_no_discordance_or_too_few_documents_is_no_test():
    same = [1, 0, 1, 1, 0, 1]
    row = compare_results(result({"boolq": (same, None)}), result({"boolq": (same, None)}))["tasks"]["boolq"]["acc"]
    assert row["verdict"] == "no test" and row["mde"] is None and row["docs_needed"] is None
    two = compare_results(result({"boolq": ([1, 1], None)}), result({"boolq": ([0, 0], None)}))
    assert two["tasks"]["boolq"]["acc"]["verdict"] == "no test"


def test_average_is_the_llm_pruner_mix_and_seeds_widen_the_interval():
    a, b = pair(100, 30, 10, 60)
    # hellaswag: acc differs (A better) but acc_norm, the reported metric, is the same for both
    res_a = result({"boolq": (a, None), "hellaswag": (a, b)})
    res_b = result({"boolq": (b, None), "hellaswag": (b, b)})
    cmp = compare_results(res_a, res_b)
    assert cmp["tasks"]["hellaswag"]["metric"] == "acc_norm"
    assert cmp["average"]["diff"] == pytest.approx((0.1 + 0.0) / 2)
    assert cmp["acc_average"]["diff"] == pytest.approx(0.1)
    assert cmp["average"]["metrics"] == {"boolq": "acc", "hellaswag": "acc_norm"}
    # a second seed of A that differs from the first: the seed draw adds spread to the interval
    a2, _ = pair(90, 20, 20, 70)
    two_seeds = compare_results([res_a, result({"boolq": (a2, None), "hellaswag": (a2, b)})], res_b)
    one = cmp["tasks"]["boolq"]["acc"]
    both = two_seeds["tasks"]["boolq"]["acc"]
    assert both["diff"] == pytest.approx((0.1 + 0.0) / 2)
    assert both["ci_high"] - both["ci_low"] > one["ci_high"] - one["ci_low"]


def test_perplexity_is_paired_over_windows():
    rng = np.random.default_rng(0)
    base = rng.uniform(500, 900, size=40)  # windows differ a lot in difficulty ...
    nll_b = list(base)
    nll_a = list(base - rng.uniform(5, 15, size=40))  # ... A is a little better on every one
    tokens = [255] * 40
    cmp = compare_results(result({"boolq": ([1, 0, 1], None)}, ppl=(nll_a, tokens)),
                          result({"boolq": ([1, 0, 1], None)}, ppl=(nll_b, tokens)))
    row = cmp["perplexity"]
    assert row["a"] == pytest.approx(math.exp(sum(nll_a) / sum(tokens)))
    assert row["diff"] < 0 and row["ci_high"] < 0 and row["verdict"] == "significant" and row["n"] == 40
    assert "perplexity" in comparison_text(cmp)


def test_sample_sizes_from_one_run_and_from_a_pair():
    a, b = pair(150, 60, 20, 170)
    one = sample_sizes(result({"boolq": (a, None)}), detect=0.02)
    p = np.mean(a)
    assert one["basis"].startswith("independent-errors")
    assert one["tasks"]["boolq"]["docs_needed"] == math.ceil((2.8016 * math.sqrt(2 * p * (1 - p)) / 0.02) ** 2)
    paired = sample_sizes(result({"boolq": (a, None)}), result({"boolq": (b, None)}), detect=0.02)
    assert paired["tasks"]["boolq"]["docs_needed"] < one["tasks"]["boolq"]["docs_needed"]
    assert paired["average_docs_per_task"] == paired["tasks"]["boolq"]["docs_needed"]  # one task: the same


def test_documents_chosen_from_a_pilot_are_the_median_need_capped():
    base = result({"boolq": (pair(150, 60, 20, 170)[0], None)})
    pilots, want = {}, []
    for k, (a_only, b_only) in enumerate([(60, 20), (45, 35), (30, 10)]):
        a, b = pair(150, a_only, b_only, 400 - 150 - a_only - b_only)
        pilots[f"m{k}"] = (result({"boolq": (b, None)}), result({"boolq": (a, None)}))
        want.append(sample_sizes(*pilots[f"m{k}"], detect=0.05)["average_docs_per_task"])
    pilots["same"] = (base, base)  # never disagrees: no estimate
    chosen = choose_documents(pilots, detect=0.05, most=10**6)
    assert chosen["needs"]["same"] is None and chosen["pilot_documents"] == 400
    assert chosen["documents"] == sorted(want)[1] == chosen["median_need"]
    assert choose_documents(pilots, detect=0.05, most=50)["documents"] == 50
    with pytest.raises(RankAdaptorError, match="at least one pilot"):
        choose_documents({})


def test_refusals_name_the_mismatch():
    a = result({"boolq": ([1, 0, 1, 1], None), "piqa": ([1, 0, 1, 1], [1, 1, 0, 0])})
    with pytest.raises(RankAdaptorError, match="evaluated tasks"):
        compare_results(a, result({"boolq": ([1, 0, 1, 1], None)}))
    with pytest.raises(RankAdaptorError, match=r"boolq: A\[0\] scored documents 0-3 \(4 documents\) but B\[0\] "
                                               r"scored 0-2"):
        compare_results(a, result({"boolq": ([1, 0, 1], None), "piqa": ([1, 0, 1, 1], [1, 1, 0, 0])}))
    with pytest.raises(RankAdaptorError, match="different document data"):
        compare_results(a, result({"boolq": ([1, 0, 1, 1], None), "piqa": ([1, 0, 1, 1], [1, 1, 0, 0])}, data="v2"))
    with pytest.raises(RankAdaptorError, match="side A mixes models"):
        compare_results([a, result({"boolq": ([1, 0, 1, 1], None), "piqa": ([1] * 4, [1] * 4)}, model="m9")], a)
    old = result({"boolq": ([1, 0, 1, 1], None), "piqa": ([1, 0, 1, 1], [1, 1, 0, 0])})
    del old["tasks"]["piqa"]["docs"]
    with pytest.raises(RankAdaptorError, match="no per-document results for piqa.*rankadaptor eval MODEL"):
        compare_results(a, old)
    with pytest.raises(RankAdaptorError, match="windows .* different token counts"):
        compare_results(result({"boolq": ([1, 0, 1], None)}, ppl=([1.0, 2.0], [3, 4])),
                        result({"boolq": ([1, 0, 1], None)}, ppl=([1.0, 2.0], [4, 3])))
