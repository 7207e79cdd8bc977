"""PrunedLoRA's training-step overhead against plain LoRA at the same initial rank (issue 7, point 5; issue 18).

On the kit's pruned SmolLM2-135M (``rankadaptor.experiments.pruned_artefact``: the same artefact as
``prunedlora_ablation.py``), same data, same seed (hence the same batches), trains plain LoRA at
uniform rank ``--init-rank`` and PrunedLoRA starting from that rank and pruning to uniform
``--uniform-r``'s parameter count with the schedule every caller gets (``PrunedLoRAMethod.for_budget``:
global scope, timing derived from the step count). PrunedLoRA masks pruned components until the
end, so both runs do the same matrix work; the difference is its gradient statistics (per-token
gate gradients from forward/backward hooks), pruning events and masking. Reports the median
seconds per step over all steps (pruning steps included), over the non-pruning steps, and lists
the pruning steps' times separately; and the time spent inside PrunedLoRA's own code, measured
directly (its callbacks plus the statistics hooks inside forward and backward). The runs alternate
(LoRA, PrunedLoRA, ...) for ``--repeats`` rounds so machine-load drift hits both.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/prunedlora_bench.py --steps 12 --threads 1

Writes benchmarks/results/prunedlora_overhead.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager

from rankadaptor import experiments as ex


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prune-ratio", type=float, default=0.2)
    p.add_argument("--init-rank", type=int, default=32)
    p.add_argument("--uniform-r", type=int, default=8)
    p.add_argument("--steps", type=int, default=16, help="steps per run (median over >= 8 wanted)")
    p.add_argument("--repeats", type=int, default=1, help="alternating LoRA / PrunedLoRA rounds")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="prunedlora_overhead", help="results name under benchmarks/results/")
    return p.parse_args(argv)


class TimedCallback:
    """Wraps a recovery callback; adds up the seconds its per-step hooks take, per step.

    The step time difference between two runs on a loaded machine is noisy; the time spent inside
    PrunedLoRA's own hooks (statistics, pruning events, masking) is its overhead measured directly."""

    def __init__(self, inner, seconds: dict[int, float]):
        self.inner = inner
        self.seconds = seconds  # shared with the statistics hooks' timer

    def _timed(self, hook: str, step: int, *args) -> None:
        t0 = time.perf_counter()
        getattr(self.inner, hook)(step, *args)
        self.seconds[step + 1] = self.seconds.get(step + 1, 0.0) + time.perf_counter() - t0

    def on_after_backward(self, step, model) -> None:
        self._timed("on_after_backward", step, model)

    def on_step_end(self, step, model, optimizer) -> None:
        self._timed("on_step_end", step, model, optimizer)

    def __getattr__(self, name):  # on_train_begin, on_train_end, record
        return getattr(self.inner, name)


@contextmanager
def timed_statistics(seconds: dict[int, float], step: list[int]):
    """Add the time of the per-token statistics hooks (``GateStats.add_forward / add_backward``) to
    ``seconds[step[0] + 1]``: they run inside forward and backward, outside any callback."""
    from rankadaptor.lora.pruned_lora_stats import GateStats

    originals = {name: getattr(GateStats, name) for name in ("add_forward", "add_backward")}

    def timed(fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            fn(*args, **kwargs)
            seconds[step[0] + 1] = seconds.get(step[0] + 1, 0.0) + time.perf_counter() - t0
        return wrapper

    for name, fn in originals.items():
        setattr(GateStats, name, timed(fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(GateStats, name, fn)


class StepCounter:
    """Keeps ``step[0]`` at the step being trained (the statistics timer needs it)."""

    def __init__(self, step: list[int]):
        self.step = step

    def on_step_end(self, step, model, optimizer) -> None:
        self.step[0] = step + 1


def step_times(pruned, args, method: str) -> dict:
    from rankadaptor.lora.pruned_lora import PrunedLoRAMethod
    from rankadaptor.lora.ranks import RankPlan, decoder_layer_names
    from rankadaptor.lora.recover import RecoveryConfig, recover

    loaded = pruned.fresh()
    model = loaded.model
    cfg = RecoveryConfig(max_steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                         seed=args.seed, threads=args.threads)
    if method == "lora":
        plan = RankPlan.uniform(len(decoder_layer_names(model)), args.init_rank)
        res = recover(model, loaded.tokenizer, plan, cfg)
        seconds, events = {}, set()
    else:
        budget = ex.uniform_budget(model, args.uniform_r)
        algo = PrunedLoRAMethod.for_budget(model, budget, args.steps, init_rank=args.init_rank, scope="global")
        prepare, seconds, step = algo.prepare, {}, [0]

        def timed_prepare(model, config, total_steps):
            peft_model, callbacks, info = prepare(model, config, total_steps)
            return peft_model, [*(TimedCallback(cb, seconds) for cb in callbacks), StepCounter(step)], info

        algo.prepare = timed_prepare
        with timed_statistics(seconds, step):
            res = recover(model, loaded.tokenizer, None, cfg, method=algo)
        events = {e["step"] for e in res.record["prunedlora"]["events"]}
    secs = [c["seconds"] for c in res.record["loss_curve"]]
    hook = [seconds.get(i, 0.0) for i in range(1, len(secs) + 1)] if method != "lora" else None
    return {"seconds": secs, "pruning_steps": sorted(events), "hook_seconds": hook,
            "non_pruning": [s for i, s in enumerate(secs, 1) if i not in events],
            "pruning": [s for i, s in enumerate(secs, 1) if i in events],
            "final_params": res.record.get("prunedlora", {}).get("final_params"),
            "budget": res.record.get("prunedlora", {}).get("budget"),
            "schedule": res.record.get("prunedlora", {}).get("schedule")}


def main(argv=None) -> int:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pruned = ex.ModelCache(ex.pruned_artefact())
    runs = {"lora": [], "prunedlora": []}
    for _ in range(args.repeats):
        for method in runs:
            runs[method].append(step_times(pruned, args, method))
    med = statistics.median
    lora_all = [s for r in runs["lora"] for s in r["seconds"]]
    pl_all = [s for r in runs["prunedlora"] for s in r["seconds"]]
    pl_plain = [s for r in runs["prunedlora"] for s in r["non_pruning"]]
    pl_events = [s for r in runs["prunedlora"] for s in r["pruning"]]
    summary = {"lora_median_s": med(lora_all), "prunedlora_median_s": med(pl_all),
               "prunedlora_non_pruning_median_s": med(pl_plain),
               "prunedlora_pruning_median_s": med(pl_events) if pl_events else None,
               "overhead_all_steps": med(pl_all) / med(lora_all) - 1,
               "overhead_non_pruning_steps": med(pl_plain) / med(lora_all) - 1,
               "overhead_pruning_steps": med(pl_events) / med(lora_all) - 1 if pl_events else None,
               "n_steps": {"lora": len(lora_all), "prunedlora": len(pl_all), "pruning": len(pl_events)}}
    hooks_plain = [h for r in runs["prunedlora"] for i, h in enumerate(r["hook_seconds"], 1) if i not in r["pruning_steps"]]
    hooks_events = [h for r in runs["prunedlora"] for i, h in enumerate(r["hook_seconds"], 1) if i in r["pruning_steps"]]
    summary.update({"hook_median_s_non_pruning": med(hooks_plain),
                    "hook_median_s_pruning": med(hooks_events) if hooks_events else None,
                    "hook_overhead_non_pruning": med(hooks_plain) / med(lora_all),
                    "hook_overhead_pruning": med(hooks_events) / med(lora_all) if hooks_events else None,
                    "hook_overhead_mean_per_step": statistics.fmean(hooks_plain + hooks_events) / med(lora_all)})
    payload = {"setup": {k: v for k, v in vars(args).items() if k != "out"}, "pruned": pruned.spec.rsplit("/", 1)[-1],
               "runs": runs, "summary": summary}
    pct = lambda x: f"{100 * x:+.1f} %"  # noqa: E731
    lines = ["# PrunedLoRA training-step overhead vs plain LoRA at the initial rank", "",
             f"SmolLM2-135M pruned 20 % (LLM-Pruner, the kit's artefact), r={args.init_rank} on every projection, "
             f"{args.steps} steps × batch {args.batch_size} × seq {args.seq_len}, same seed and batches, "
             f"{args.threads} torch thread(s), {args.repeats} alternating round(s). PrunedLoRA prunes to uniform "
             f"r={args.uniform_r}'s parameter count (global scope, `PrunedLoRAMethod.for_budget`'s schedule) at steps "
             f"{runs['prunedlora'][0]['pruning_steps']}; per-token gate statistics from forward/backward hooks.", "",
             "| | median s/step | overhead vs LoRA |", "|---|---|---|",
             f"| LoRA r={args.init_rank} (all {len(lora_all)} steps) | {med(lora_all):.3f} | |",
             f"| PrunedLoRA, all {len(pl_all)} steps | {med(pl_all):.3f} | {pct(summary['overhead_all_steps'])} |",
             f"| PrunedLoRA, {len(pl_plain)} non-pruning steps | {med(pl_plain):.3f} | "
             f"{pct(summary['overhead_non_pruning_steps'])} |"]
    if pl_events:
        lines.append(f"| PrunedLoRA, {len(pl_events)} pruning steps | {med(pl_events):.3f} | "
                     f"{pct(summary['overhead_pruning_steps'])} |")
    lines += ["", "Time inside PrunedLoRA's own code (the statistics hooks inside forward and backward, its "
              "callbacks: pruning events and masking), measured directly, as a fraction of LoRA's median step:", "",
              f"* non-pruning steps: median {summary['hook_median_s_non_pruning']:.3f} s "
              f"({pct(summary['hook_overhead_non_pruning'])})"]
    if hooks_events:
        lines.append(f"* pruning steps: median {summary['hook_median_s_pruning']:.3f} s "
                     f"({pct(summary['hook_overhead_pruning'])}); each: " + ", ".join(f"{h:.2f}" for h in hooks_events))
    lines.append(f"* averaged over all {len(hooks_plain) + len(hooks_events)} steps of this schedule: "
                 f"{pct(summary['hook_overhead_mean_per_step'])}")
    lines += ["", "Pruning steps' seconds: " + ", ".join(f"{s:.2f}" for s in pl_events),
              "", "Timings on a shared 2-core machine with other jobs running: noisy."]
    ex.write_results(args.out, payload, "\n".join(lines), seed=args.seed)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
