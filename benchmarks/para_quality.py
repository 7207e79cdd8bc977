"""PARA quality on SmolLM2-135M pruned 20 %: compressed adapters vs uniform truncation vs PEFT's energy rule.

Per seed: train an r = 32 LoRA adapter on the pruned model (``rankadaptor.lora.recover``), then
cut it to 25 / 50 / 75 / 90 % fewer LoRA parameters three ways at the *same* parameter budget:

* ``para``: one global threshold over all modules' singular values (``--normalize``), exact budget;
* ``uniform``: the same rank in every module (largest that fits), best rank-r SVD truncation;
* ``energy``: PEFT's per-layer energy rule (``peft.tuners.lora.conversion``: smallest k reaching
  a fraction tau of each module's energy), tau bisected to the largest value that fits the budget.

Every variant (and the uncompressed adapter) is loaded with ``PeftModel.from_pretrained`` onto the
pruned model and scored by held-out perplexity (Brown held-out split) and seven-task zero-shot
accuracy on the first ``--limit`` documents per task. Tables give mean ± 95 % CI over seeds and the
paired difference against the uncompressed adapter. Results are written after every measurement,
so an interrupted run resumes.

    .venv/bin/python benchmarks/para_quality.py --seeds 0 1 2 --limit 50

Writes benchmarks/results/para_quality.json and .md; scratch under benchmarks/work/para_quality/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
METHODS = ("para", "uniform", "energy")


def prepare_pruned(args, work: Path) -> Path:
    """Prune once (seed 0, shared by all seeds) and keep the artefact in the work folder."""
    out = work / "pruned"
    if out.exists():
        return out
    from rankadaptor.assets import text_corpus_path
    from rankadaptor.models.loading import load_model
    from rankadaptor.models.artefact import save_pruned
    from rankadaptor.prune.pruning import PruneConfig, prune_model

    loaded = load_model(args.model)
    cfg = PruneConfig(ratio=args.prune_ratio, importance="element1", seed=0)
    calib = text_corpus_path("train").read_text()
    model, manifest = prune_model(loaded.model, loaded.tokenizer, cfg, [calib], identity=loaded.identity,
                                  inplace=True, calibration_source="brown-corpus train")
    save_pruned(model, loaded.tokenizer, manifest, out)
    return out


def train_adapter(args, pruned: Path, seed: int, out: Path) -> Path:
    """An r = ``--rank`` uniform adapter trained by the recover engineer's loop (contract in the brief)."""
    if out.exists():
        return out
    from rankadaptor.assets import text_corpus_path
    from rankadaptor.lora.ranks import RankPlan
    from rankadaptor.lora.recover import RecoveryConfig, recover
    from rankadaptor.models.artefact import load_pruned, load_pruned_tokenizer

    model, tok = load_pruned(pruned), load_pruned_tokenizer(pruned)
    n_layers = model.config.num_hidden_layers
    plan = RankPlan.uniform(n_layers, args.rank)
    cfg = RecoveryConfig(seed=seed, max_steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                         lr=args.lr, threads=args.threads)
    recover(model, tok, plan, cfg, data=text_corpus_path("train"), out=out)  # adapter + recovery.json
    return out


def make_variants(adapter_dir: Path, seed_dir: Path, reductions, normalize: str) -> list[dict]:
    """Write every compressed adapter (idempotent); return [{method, reduction, dir, ranks}]."""
    import math as _m

    from rankadaptor.errors import RankAdaptorError
    from rankadaptor.compress.adapter_io import read_adapter
    from rankadaptor.compress.para import decompose_adapter

    adapter = read_adapter(adapter_dir)
    spectra, costs = decompose_adapter(adapter)
    variants = [{"method": "uncompressed", "reduction": 0.0, "dir": str(adapter_dir), "params": adapter.params}]
    for red in reductions:
        budget = int(_m.floor((1 - red) * adapter.params))
        for method in METHODS:
            out = seed_dir / f"{method}-{int(round(red * 100))}"
            try:
                _write_variant(adapter, spectra, costs, method, budget, normalize, out)
            except RankAdaptorError as exc:  # e.g. uniform rank 1 everywhere is over a tiny budget
                print(f"skipping {method} at -{red:.0%}: {exc}")
                continue
            rep = json.loads((out / "compress.json").read_text())
            variants.append({"method": method, "reduction": red, "dir": str(out), "budget": budget,
                             "params": rep["totals"]["params_after"],
                             "ranks": {r["module"]: r["new_rank"] for r in rep["modules"]},
                             "discarded_energy_fraction": rep["totals"]["discarded_energy_fraction"]})
    return variants


def _write_variant(adapter, spectra, costs, method: str, budget: int, normalize: str, out: Path) -> None:
    from rankadaptor.compress.para import (CompressConfig, compress_adapter, compress_to_ranks,
                                       energy_rule_ranks_for_budget, save_compressed, uniform_ranks_for_budget)

    if out.exists():
        return
    if method == "para":
        new, rep = compress_adapter(adapter, CompressConfig(target_params=budget, normalize=normalize), spectra)
    elif method == "uniform":
        new, rep = compress_to_ranks(adapter, uniform_ranks_for_budget(spectra, costs, budget), spectra,
                                     settings={"rule": "uniform", "budget": budget})
    else:
        ranks, tau = energy_rule_ranks_for_budget(spectra, costs, budget)
        new, rep = compress_to_ranks(adapter, ranks, spectra,
                                     settings={"rule": "peft-energy", "budget": budget, "tau": tau})
    save_compressed(out, new, rep)


def heldout_chunks(tok, n_seq: int, seq_len: int) -> list[str]:
    from rankadaptor.assets import text_corpus_path

    ids = tok(text_corpus_path("heldout").read_text(), add_special_tokens=False)["input_ids"][: n_seq * seq_len]
    return [tok.decode(ids[i:i + seq_len]) for i in range(0, len(ids), seq_len)]


def measure(args, pruned: Path, variant: dict, seed: int, texts: list[str]) -> dict:
    from peft import PeftModel

    from rankadaptor.eval import evaluate, perplexity
    from rankadaptor.models.artefact import load_pruned, load_pruned_tokenizer

    tok = load_pruned_tokenizer(pruned)
    model = PeftModel.from_pretrained(load_pruned(pruned), variant["dir"]).eval()
    t0 = time.perf_counter()
    ppl = float(perplexity(model, tok, texts, seq_len=args.seq_len))
    results = evaluate(model, tok, tasks=args.tasks, limit=args.limit, batch_size=args.eval_batch, seed=seed) if args.limit else {"tasks": {}}
    results["perplexity"] = ppl
    return {"method": f"{variant['method']} -{int(round(variant['reduction'] * 100))}%" if variant["reduction"] else "uncompressed",
            "seed": seed, "limit": args.limit, "results": results, "params": variant["params"], "wall_s": time.perf_counter() - t0,
            **{k: variant[k] for k in ("reduction", "budget", "discarded_energy_fraction") if k in variant}}


def paired_ppl(runs: list[dict]) -> dict:
    """Perplexity difference to the uncompressed adapter of the same seed, mean with 95 % t-interval."""
    from rankadaptor.stats import paired_difference

    base = {r["seed"]: r["results"]["perplexity"] for r in runs if r["method"] == "uncompressed"}
    by_method: dict[str, dict[int, float]] = {}
    for r in runs:
        if r["method"] != "uncompressed" and r["seed"] in base:
            by_method.setdefault(r["method"], {})[r["seed"]] = r["results"]["perplexity"]
    return {m: paired_difference([v[s] for s in sorted(v)], [base[s] for s in sorted(v)]) for m, v in by_method.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prune-ratio", type=float, default=0.2)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--reductions", type=float, nargs="+", default=[0.25, 0.5, 0.75, 0.9])
    p.add_argument("--normalize", choices=("none", "scale", "fro"), default="none")
    p.add_argument("--steps", type=int, default=200, help="recovery training steps per seed")
    p.add_argument("--lr", type=float, default=1e-3, help="recovery learning rate (short runs need more than 1e-4)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--limit", type=int, default=50, help="documents per task (0 = perplexity only)")
    p.add_argument("--tasks", nargs="+", default=None, help="default: the seven tasks")
    p.add_argument("--eval-batch", type=int, default=16)
    p.add_argument("--ppl-seqs", type=int, default=32, help="held-out sequences of --seq-len tokens")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=HERE / "work" / "para_quality")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from rankadaptor.fileio import write_json_atomic
    from rankadaptor.models.artefact import load_pruned_tokenizer
    from rankadaptor.provenance import provenance
    from rankadaptor.report.tables import compare_to, summarise

    args.work.mkdir(parents=True, exist_ok=True)
    pruned = prepare_pruned(args, args.work)
    texts = heldout_chunks(load_pruned_tokenizer(pruned), args.ppl_seqs, args.seq_len)
    partial = args.work / "runs.json"
    runs = json.loads(partial.read_text()) if partial.exists() else []
    done = {(r["method"], r["seed"], r["limit"]) for r in runs}
    for seed in args.seeds:
        seed_dir = args.work / f"seed{seed}"
        adapter = train_adapter(args, pruned, seed, seed_dir / "adapter")
        for variant in make_variants(adapter, seed_dir, args.reductions, args.normalize):
            name = "uncompressed" if not variant["reduction"] else f"{variant['method']} -{int(round(variant['reduction'] * 100))}%"
            if (name, seed, args.limit) in done:
                continue
            runs.append(measure(args, pruned, variant, seed, texts))
            write_json_atomic(partial, runs)

    runs = [r for r in runs if r["limit"] == args.limit]  # one table per evaluation size
    summary = summarise(runs)
    paired = compare_to(runs, "uncompressed")
    params = {r["method"]: r["params"] for r in runs}
    result = {"benchmark": "para_quality", "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "n_ppl_sequences": len(texts), "summary": summary, "paired_vs_uncompressed": paired,
              "paired_ppl_vs_uncompressed": paired_ppl(runs), "params": params, "runs": runs,
              "provenance": provenance(args.seeds[0])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / "para_quality.json", result)
    (RESULTS / "para_quality.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    """The results tables (also what benchmarks/readme_tables.py puts in the README)."""
    from rankadaptor.report.tables import markdown_table

    a = result["settings"]
    summary, paired, params = result["summary"], result["paired_vs_uncompressed"], result["params"]
    order = ["uncompressed"] + [f"{m} -{int(round(r * 100))}%" for r in a["reductions"] for m in METHODS]
    lines = [
        f"# PARA quality: SmolLM2-135M pruned {a['prune_ratio']:.0%}, r={a['rank']} adapter, seeds {a['seeds']}",
        "",
        f"Accuracy on the first {a['limit']} documents per task; perplexity on {result.get('n_ppl_sequences', a['ppl_seqs'])} held-out "
        f"sequences of {a['seq_len']} tokens; {a['steps']} training steps per seed; PARA normalize={a['normalize']}.",
        "",
        markdown_table(summary, [m for m in order if m in summary]),
        "",
        "| method | LoRA params | discarded energy | PPL − uncompressed (paired) | avg acc − uncompressed (paired) |",
        "|---|---|---|---|---|",
    ]
    ppl_paired = result["paired_ppl_vs_uncompressed"]
    energy = {r["method"]: r.get("discarded_energy_fraction") for r in result["runs"]}
    for m in order[1:]:
        if m not in summary:
            continue
        acc = paired.get(m)
        acc_cell = f"{100 * acc['mean']:+.2f} [{100 * acc['ci_low']:+.2f}, {100 * acc['ci_high']:+.2f}]" if acc else "–"
        pp = ppl_paired.get(m)
        ppl_cell = f"{pp['mean']:+.2f} [{pp['ci_low']:+.2f}, {pp['ci_high']:+.2f}]" if pp else "–"
        lines.append(f"| {m} | {params.get(m)} | {energy.get(m, 0):.1%} | {ppl_cell} | {acc_cell} |")
    lines += ["", f"Command: `.venv/bin/python benchmarks/para_quality.py --seeds {' '.join(map(str, a['seeds']))} "
              f"--limit {a['limit']} --steps {a['steps']} --lr {a['lr']} --ppl-seqs {a['ppl_seqs']}`; "
              f"git {result['provenance']['git_commit']}."]
    return "\n".join(lines) + "\n"

if __name__ == "__main__":
    main()
