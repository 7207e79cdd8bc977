"""Validity of the super-adapter's cheap fidelity (issue 15, item 5) on SmolLM2-135M pruned 20 %.

One nested-rank super-adapter (r = 32, the kit's recipe, seed 0; ``experiment_methods.super_adapter``) and
``--plans`` rank plans at uniform-r8's budget ± 1 % in the super search's per-layer space: uniform
truncation, PARA's global threshold and PEFT's energy rule (projected onto the space) and random
valid plans. For every plan:

* cheap: the search's score, the loss of the cut on the search split (4 validation blocks of the
  recovery corpus, in memory; ``search.super_fidelity.SuperFidelity``);
* cut: held-out perplexity of the same cut, untrained (does the search split generalise?);
* (a) fine-tuned: the cut fine-tuned ``--finetune-steps`` steps, held-out perplexity;
* (b) scratch: LoRA at the plan's ranks trained from scratch ``--scratch-steps`` steps (the
  recovery a real RankAdaptor trial runs), held-out perplexity.

Held-out perplexity is on the first ``--ppl-tokens`` tokens of the Brown held-out split (the kit's
``perplexity`` definition, windows of 256), text the search split never touches. Every training run
uses the same seed and data order (common random numbers), so plans differ only in their ranks.
Reported: Spearman of cheap vs each real score over the plans, with a 95 % bootstrap interval.
Each plan's numbers are saved as soon as they exist; re-running resumes (``--plans`` can grow).

    /work/bin/heavy python benchmarks/super_validity.py --plans 30 --finetune-steps 5 --scratch-steps 30

Writes benchmarks/results/super_validity.json and .md; scratch under benchmarks/work/super_validity/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "super_validity"
KINDS = ("cut", "finetuned", "scratch")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plans", type=int, default=30)
    p.add_argument("--finetune-steps", type=int, default=5)
    p.add_argument("--scratch-steps", type=int, default=30)
    p.add_argument("--ppl-tokens", type=int, default=2048)
    p.add_argument("--search-blocks", type=int, default=4)
    p.add_argument("--cut", choices=("svd", "prefix"), default="svd")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="real scores to measure this run")
    p.add_argument("--max-minutes", type=float, default=85.0, help="stop (resumably) after this much wall time")
    return p.parse_args(argv)


def plans_at_budget(space, objective, n: int, seed: int) -> list[dict]:
    """The allocators' plans, then random valid plans, distinct, in a fixed order."""
    import numpy as np

    from rankadaptor.lora.ranks import module_costs
    from rankadaptor.search.space import plan_hash
    from rankadaptor.search.study import seed_vectors
    from rankadaptor.search.super_fidelity import allocator_plans

    out = {}
    allocators = allocator_plans(objective.adapter, objective.model, int(space.budget))
    projected = seed_vectors(allocators, space, module_costs(objective.model))
    for name, vec in [("uniform", space.uniform()), *projected]:
        out.setdefault(plan_hash(vec), {"label": name, "ranks": [int(r) for r in vec]})
    for vec in space.sample(4 * n, np.random.default_rng(seed)):
        if len(out) >= n:
            break
        out.setdefault(plan_hash(vec), {"label": "random", "ranks": [int(r) for r in vec]})
    return list(out.values())[:n]


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from rankadaptor import experiments as ex
    from rankadaptor.compress.cut import cut
    from rankadaptor.experiment_methods import super_adapter
    from rankadaptor.fileio import read_json, write_json_atomic
    from rankadaptor.lora.ranks import count_lora_params, module_costs
    from rankadaptor.lora.recover import recover
    from rankadaptor.lora.super_adapter import StartFromAdapter
    from rankadaptor.search.study import make_space
    from rankadaptor.search.super_fidelity import SuperFidelity, search_split
    from rankadaptor.search.super_search import super_settings

    t_start = time.perf_counter()
    recipe = ex.Recipe()
    pruned = ex.ModelCache(ex.pruned_artefact())
    wide = super_adapter(pruned, recipe, args.seed)
    loaded = pruned.fresh()
    tok = loaded.tokenizer
    costs = module_costs(loaded.model)
    space = make_space(super_settings(study="validity", trials=1, budget=f"uniform:{recipe.uniform_r}", finalize=False),
                       costs)
    split = search_split(tok, args.search_blocks, recipe.seq_len)
    from rankadaptor.data import RecoveryData

    # tokenised once and shared by every training run; recover's own final validation loss (unused here)
    # is computed on the search split instead of all 64 validation blocks
    data = RecoveryData(train=split.data.train, val=split.blocks, identity=split.data.identity)
    objective = SuperFidelity(loaded.model, tok, wide, space, split, args.cut, identity=loaded.identity)

    def heldout(model) -> float:
        from rankadaptor.eval import heldout_perplexity

        return float(heldout_perplexity(model, tok, n_tokens=args.ppl_tokens).ppl)

    WORK.mkdir(parents=True, exist_ok=True)
    partial = WORK / f"runs-{args.cut}-seed{args.seed}.json"
    rows = read_json(partial, what="partial results") if partial.exists() else []
    settings_key = {"finetune_steps": args.finetune_steps, "scratch_steps": args.scratch_steps,
                    "ppl_tokens": args.ppl_tokens, "search_blocks": args.search_blocks}
    rows = [r for r in rows if r.get("settings") == settings_key]
    have = {tuple(r["ranks"]): r for r in rows}
    for plan in plans_at_budget(space, objective, args.plans, args.seed):
        if (time.perf_counter() - t_start) / 60 > args.max_minutes:
            print(f"stopping after {args.max_minutes} minutes; run again to resume")
            break
        row = have.setdefault(tuple(plan["ranks"]), {**plan, "settings": settings_key})
        if row not in rows:
            rows.append(row)
        rank_plan = objective.plan_of(plan["ranks"])
        row["params"] = count_lora_params(loaded.model, rank_plan)
        module_ranks = objective.module_ranks(plan["ranks"])
        if "cheap" not in row:
            t = time.perf_counter()
            row["cheap"] = objective(plan["ranks"])
            row["cheap_seconds"] = time.perf_counter() - t
        if "cut" in args.kinds and "cut" not in row:
            objective.cut.set_ranks(module_ranks)
            row["cut"] = heldout(objective.model)
        if "finetuned" in args.kinds and "finetuned" not in row:
            t = time.perf_counter()
            sub, _ = cut(objective.adapter, module_ranks, args.cut)
            fresh = pruned.fresh()
            res = recover(fresh.model, tok, method=StartFromAdapter(sub), data=data,
                          config=recipe.recovery_config(args.seed, max_steps=args.finetune_steps))
            row["finetuned"], row["finetuned_seconds"] = heldout(res.model), time.perf_counter() - t
        if "scratch" in args.kinds and "scratch" not in row:
            t = time.perf_counter()
            fresh = pruned.fresh()
            res = recover(fresh.model, tok, rank_plan, data=data,
                          config=recipe.recovery_config(args.seed, max_steps=args.scratch_steps))
            row["scratch"], row["scratch_seconds"] = heldout(res.model), time.perf_counter() - t
        write_json_atomic(partial, rows)
        print(json.dumps({k: row.get(k) for k in ("label", "cheap", *KINDS)}), flush=True)

    result = {"benchmark": "super_validity", "settings": {**vars(args), **settings_key, "recipe": ex.recipe_dict(recipe),
                                                          "super_adapter": str(wide), "budget": space.budget},
              "search_split": split.identity, "plans": rows, "validity": validity_table(rows)}
    import sys

    from rankadaptor.provenance import provenance

    result.update(command="python " + " ".join(sys.argv), provenance=provenance(args.seed))
    ex.write_results("super_validity", result, markdown(result), seed=args.seed)
    print(markdown(result))


def validity_table(rows: list[dict]) -> dict:
    from rankadaptor.search.super_fidelity import spearman_ci

    out = {}
    for kind in KINDS:
        both = [r for r in rows if kind in r and "cheap" in r]
        out[f"cheap~{kind}"] = spearman_ci([r["cheap"] for r in both], [r[kind] for r in both])
    both = [r for r in rows if "finetuned" in r and "scratch" in r]
    out["finetuned~scratch"] = spearman_ci([r["finetuned"] for r in both], [r["scratch"] for r in both])
    return out


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        "# Validity of the super-adapter's cheap fidelity (SmolLM2-135M pruned 20 %)",
        "",
        f"{len(result['plans'])} plans at uniform-r8's budget ± 1 % (uniform truncation, PARA, PEFT energy, random); "
        f"{s['cut']} cuts of one nested r=32 super-adapter (seed {s['seed']}, {s['recipe']['steps']} steps). Cheap = "
        f"loss of the cut on the search split ({result['search_split']['tokens']} tokens of the recovery corpus's "
        f"validation blocks); real = held-out perplexity (first {s['ppl_tokens']} Brown held-out tokens) of the cut as "
        f"is, of the cut fine-tuned {s['finetune_steps']} steps, and of LoRA at the plan trained from scratch "
        f"{s['scratch_steps']} steps (one seed and data order for all plans). Spearman with a 95 % bootstrap interval "
        "over plans.",
        "",
        "| cheap score vs | Spearman | 95 % CI | p | plans |",
        "|---|---|---|---|---|",
    ]
    names = {"cheap~cut": "cut, untrained (held-out)", "cheap~finetuned": "(a) cut + fine-tune",
             "cheap~scratch": "(b) trained from scratch", "finetuned~scratch": "(a) vs (b) (both real)"}
    for key, v in result["validity"].items():
        if v["spearman"] is None:
            lines.append(f"| {names[key]} | no test | – | – | {v['n']} |")
        else:
            lines.append(f"| {names[key]} | {v['spearman']:+.2f} | [{v['ci_low']:+.2f}, {v['ci_high']:+.2f}] | "
                         f"{v['p_value']:.3g} | {v['n']} |")
    timed = [r for r in result["plans"] if "scratch_seconds" in r]
    if timed:
        import statistics

        cheap = statistics.median(r["cheap_seconds"] for r in result["plans"])
        lines += ["", f"Median seconds per plan: cheap {cheap:.1f}, fine-tune "
                      f"{statistics.median(r['finetuned_seconds'] for r in result['plans'] if 'finetuned_seconds' in r):.0f}"
                      f", scratch {statistics.median(r['scratch_seconds'] for r in timed):.0f} (1 thread)."]
    lines += ["", f"Command: `{result.get('command', '')}`; git {result.get('provenance', {}).get('git_commit')}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
