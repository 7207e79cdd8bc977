"""``rankadaptor prune MODEL --method M --ratio R --out DIR``: structured pruning to an artefact."""

from __future__ import annotations

import argparse
from pathlib import Path

from rankadaptor.cli import SEED
from rankadaptor.errors import RankAdaptorError

METHODS = ("llm-pruner", "shortened-ppl", "shortened-taylor", "shortgpt")
IMPORTANCES = ("element1", "element2", "vector", "l1", "l2", "random")


def _layers(text: str) -> tuple[int, int]:
    try:
        start, end = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers {text!r} must be START:END, e.g. 4:28") from None
    return start, end


def add_parser(sub) -> None:
    p = sub.add_parser("prune", help="structurally prune a model (LLM-Pruner width, Shortened/ShortGPT depth)",
                       description=__doc__)
    p.add_argument("model", metavar="MODEL", help="alias (smollm2-135m), local HF directory, GGUF file or pruned artefact")
    p.add_argument("--method", choices=METHODS, default="llm-pruner")
    p.add_argument("--ratio", type=float, required=True, help="fraction of the whole model's parameters to remove, in (0, 1)")
    p.add_argument("--out", required=True, help="new output directory (appears only when complete)")
    p.add_argument("--importance", choices=IMPORTANCES, default="element1", help="width pruning importance (default element1)")
    p.add_argument("--layers", type=_layers, default=None, metavar="START:END",
                   help="decoder blocks that may be pruned, END exclusive (default: all but the first 4 and last 2)")
    p.add_argument("--calibration", type=int, default=10, metavar="N", help="calibration sequences (default 10)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per calibration sequence (default 128)")
    p.add_argument("--calibration-text", default=None, metavar="FILE",
                   help="plain text file for calibration (default: the bundled offline corpus)")
    p.add_argument("--seed", type=SEED, default=0)
    p.set_defaults(func=run)


def _calibration_texts(path: str | None) -> tuple[list[str], str]:
    if path is None:
        try:
            from rankadaptor.assets import text_corpus_path
        except ImportError as exc:
            raise RankAdaptorError("no default calibration corpus is available; pass --calibration-text FILE") from exc
        path = text_corpus_path("train")
    from rankadaptor.fileio import read_text_file

    text = read_text_file(path, "calibration text file", "--calibration-text")
    return [text], str(Path(path).resolve())


def load_input(spec: str):
    """(model, tokenizer, identity) through the shared loader, or a local HF directory."""
    try:
        from rankadaptor.models.loading import load_model
    except ImportError:
        load_model = None
    if load_model is not None:
        loaded = load_model(spec)
        return loaded.model, loaded.tokenizer, dict(loaded.identity)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not Path(spec).is_dir():
        raise RankAdaptorError(f"MODEL {spec!r} is not a local model directory")
    model = AutoModelForCausalLM.from_pretrained(spec).eval()
    return model, AutoTokenizer.from_pretrained(spec), {"source": str(Path(spec).resolve())}


def _estimate(args, config) -> None:
    """Print peak memory and time before the model loads; refuse a run that cannot fit."""
    from rankadaptor.cli.scale_flags import print_estimate
    from rankadaptor.estimate import estimate_eval, estimate_prune
    from rankadaptor.models.loading import skeleton

    model = skeleton(args.model)
    if model is None:
        return  # a GGUF file: its shapes are known once its weights are read
    if args.method in ("llm-pruner", "shortened-taylor") and args.importance in ("element1", "element2", "vector"):
        first = config.layer_range(model.config.num_hidden_layers).start  # blocks from here up are replayed
        est = estimate_prune(model, args.calibration, args.seq_len, fisher=args.importance == "element2",
                             first_layer=first)
    else:  # no gradients: forward passes over the calibration sequences
        est = estimate_eval(model, 1, args.seq_len)
    print_estimate(est, args)


def run(args) -> int:
    from rankadaptor.fileio import check_output
    from rankadaptor.models.artefact import save_pruned
    from rankadaptor.models.loading import weights_bytes
    from rankadaptor.prune.pruning import PruneConfig, prune_model

    if not 0.0 < args.ratio < 1.0:
        raise RankAdaptorError(f"--ratio {args.ratio} is outside (0, 1); give the fraction of parameters to remove, e.g. 0.2")
    config = PruneConfig(method=args.method, ratio=args.ratio, importance=args.importance, layers=args.layers,
                         calibration=args.calibration, seq_len=args.seq_len, seed=args.seed)
    # the pruned model is smaller than its input: the input's weights bound the output's size
    check_output(args.out, inputs=[args.model, args.calibration_text], size=weights_bytes(args.model))
    texts, source = _calibration_texts(args.calibration_text)
    _estimate(args, config)
    model, tokenizer, identity = load_input(args.model)
    model, manifest = prune_model(model, tokenizer, config, texts, identity=identity, inplace=True,
                                  calibration_source=source)
    save_pruned(model, tokenizer, manifest, args.out)
    print(f"pruned {args.method} ratio {args.ratio}: {manifest['params_before']:,} -> {manifest['params_after']:,} "
          f"parameters ({100 * manifest['achieved_ratio']:.2f}% removed); removed layers {manifest['removed_layers']}; "
          f"wrote {args.out}")
    return 0
