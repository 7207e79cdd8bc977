"""``rankadaptor eval MODEL [--adapter DIR] [--tasks LIST] [--limit N] [--ppl] --out results.json``.

Zero-shot acc / acc_norm on lm-eval's seven multiple-choice tasks (offline data; MMLU and GSM8K
when named), optionally with held-out perplexity, written as one results JSON with model/adapter
identity, provenance, and per-document correctness for ``rankadaptor compare``.
"""

from __future__ import annotations

import time
from pathlib import Path

from rankadaptor.errors import RankAdaptorError

DEFAULT_PPL_TOKENS = 16384


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="zero-shot accuracy on boolq/piqa/hellaswag/winogrande/ARC/OBQA (+ perplexity)",
                       description=__doc__)
    p.add_argument("model", metavar="MODEL", help="alias (smollm2-135m), local HF directory, GGUF file or pruned artefact")
    p.add_argument("--adapter", default=None, metavar="DIR", help="PEFT LoRA adapter directory to attach")
    p.add_argument("--tasks", default=None, metavar="LIST",
                   help="comma-separated tasks (default all seven: boolq,piqa,hellaswag,winogrande,arc_easy,"
                        "arc_challenge,openbookqa); the paper's challenge tasks mmlu,gsm8k only when named")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N documents of each task's split")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--ppl", action="store_true", help="also report perplexity on held-out text")
    p.add_argument("--ppl-text", default=None, metavar="FILE",
                   help="plain text for --ppl (default: the held-out split of the offline corpus)")
    p.add_argument("--ppl-seq-len", type=int, default=256, help="perplexity window length in tokens (default 256)")
    p.add_argument("--ppl-max-tokens", type=int, default=DEFAULT_PPL_TOKENS,
                   help=f"score at most this many tokens of the text (default {DEFAULT_PPL_TOKENS})")
    p.add_argument("--backend", choices=("lm_eval", "fast"), default="lm_eval",
                   help="lm_eval: lm-eval's simple_evaluate (default); fast: the same lm-eval requests scored "
                        "with each document's context run once (tested to give the same acc/acc_norm)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="results JSON file to write (refuses to overwrite)")
    p.set_defaults(func=run)


def _check_args(args) -> Path:
    from rankadaptor.eval.tasks import resolve_tasks, validate_limit

    args.task_list = resolve_tasks(args.tasks)
    try:
        validate_limit(args.limit)
    except RankAdaptorError:
        raise RankAdaptorError(f"--limit {args.limit} must be a positive number of documents per task; "
                               "leave --limit out to evaluate every document") from None
    if args.batch_size < 1:
        raise RankAdaptorError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.ppl_seq_len < 2 or args.ppl_max_tokens < 2:
        raise RankAdaptorError("--ppl-seq-len and --ppl-max-tokens must be >= 2")
    from rankadaptor.fileio import refuse_bad_out_parent

    out = Path(args.out)
    if out.exists():
        raise RankAdaptorError(f"{out} already exists; choose a new --out path (results are never overwritten)")
    refuse_bad_out_parent(out)
    if not out.parent.exists():
        raise RankAdaptorError(f"directory {out.parent} of --out does not exist; create it first")
    if args.adapter is not None and not Path(args.adapter).is_dir():
        raise RankAdaptorError(f"--adapter {args.adapter} is not a directory; pass a PEFT adapter directory")
    return out


def run(args) -> int:
    out = _check_args(args)  # bad input fails before the model loads
    if args.ppl_text is not None:
        from rankadaptor.errors import RankAdaptorError
        from rankadaptor.eval.perplexity import paragraphs

        try:
            paragraphs(args.ppl_text)  # a missing or empty file fails before the model loads
        except RankAdaptorError as exc:
            raise RankAdaptorError(f"--ppl-text FILE: {exc}") from None

    import torch

    from rankadaptor.eval import evaluate, heldout_perplexity
    from rankadaptor.eval.adapter import load_adapter
    from rankadaptor.eval.results import build_results, format_table
    from rankadaptor.fileio import refuse_same_path, write_json_atomic
    from rankadaptor.models.loading import load_model

    if args.adapter is not None:
        refuse_same_path(args.adapter, out)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    loaded = load_model(args.model)
    model, adapter_identity = loaded.model, None
    if args.adapter is not None:
        model, adapter_identity = load_adapter(model, args.adapter)
    ev = evaluate(model, loaded.tokenizer, tasks=args.task_list, limit=args.limit, batch_size=args.batch_size,
                  seed=args.seed, backend=args.backend)
    ppl = None
    if args.ppl:
        ppl = heldout_perplexity(model, loaded.tokenizer, n_tokens=args.ppl_max_tokens, seq_len=args.ppl_seq_len,
                                 text_path=args.ppl_text).to_dict()
    res = build_results(ev, model_identity=loaded.identity, adapter_identity=adapter_identity, seed=args.seed,
                        wall_s=time.perf_counter() - start, perplexity=ppl)
    write_json_atomic(out, res)
    print(format_table(res))
    if ppl is not None:
        print(f"perplexity {ppl['perplexity']:.3f} (first {ppl['n_tokens']} held-out tokens, windows of {ppl['seq_len']})")
    print(f"wrote {out}")
    return 0
