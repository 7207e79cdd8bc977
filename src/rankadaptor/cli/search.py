"""``rankadaptor search MODEL --study NAME --trials N --out ranks.json``: rank search (RankAdaptor).

Resumable: the study lives in a database (an SQLite file by default; ``--storage URL``, e.g.
PostgreSQL, for many machines), so running the same command again continues it, and several
workers may run it on one study at once (create it first with ``--create-only``; add
``--no-finalize`` to all but one). A worker killed mid-trial is noticed by its missing heartbeat
and its plan is retried by another worker (docs/distributed.md). ``--strategy random|tpe|gp`` runs
the baselines through the same engine; ``--granularity module`` gives every module its own rank.
``--objective package.module:function`` searches against your own evaluation (contract in
``rankadaptor.search.objective``); ``--objective synthetic`` is a test-only objective (a known
function of the ranks plus noise, no model) used by the tests.

``--fidelity super --super ADAPTER`` searches cuts of a trained super-adapter (``rankadaptor recover``
with method super) instead: each trial scores a cut in memory on a search split of the recovery data (seconds,
not minutes), hundreds of them; the best plan is written with the adapter cut to it beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from rankadaptor.cli import SEED, at_least
from rankadaptor.metrics import TASKS

log = logging.getLogger(__name__)
BUILTIN_OBJECTIVES = ("average", "loss", *TASKS, "synthetic")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated integers, e.g. 2,4,6,8") from None


def _key_value(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} must be KEY=VALUE (VALUE read as JSON when it parses, e.g. "
                                         "noise=0.002)")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _objective(text: str) -> str:
    if text in BUILTIN_OBJECTIVES or ":" in text:
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is neither a built-in objective ({', '.join(BUILTIN_OBJECTIVES[:-1])}) "
                                     "nor an importable path package.module:function")


def add_parser(sub) -> None:
    p = sub.add_parser("search", help="search LoRA ranks per layer or per module with a surrogate (RankAdaptor)",
                       description=__doc__)
    p.add_argument("model", metavar="MODEL", help="model spec (alias, directory, GGUF, pruned artefact)")
    p.add_argument("--study", required=True, help="study name in the storage (resumed if it exists)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="database URL shared by all workers: sqlite:///FILE (default sqlite:///<study>.db) or "
                        "postgresql://user:password@host:port/db (needs the 'distributed' extra)")
    p.add_argument("--trials", type=int, default=None,
                   help="total completed trials for the study (all workers together); required unless --create-only. "
                        "About 35 for ~24 free layers: on synthetic objectives the default search finds 70 %% of "
                        "the best plan's gain at 35 trials, two thirds at 25 (benchmarks/results/search_trials.md)")
    p.add_argument("--create-only", action="store_true",
                   help="create (or check) the study in --storage and exit; run this once before starting workers")
    p.add_argument("--heartbeat-interval", type=int, default=30, metavar="S",
                   help="seconds between heartbeats of a running trial (default 30)")
    p.add_argument("--grace-period", type=int, default=120, metavar="S",
                   help="a trial without a heartbeat for this long is taken as crashed and its plan retried "
                        "(default 120; keep it several heartbeat intervals)")
    p.add_argument("--max-retry", type=int, default=2,
                   help="times a crashed trial's plan is queued again before it stays failed (default 2)")
    p.add_argument("--poll-interval", type=at_least(0, float, above=True), default=5.0, metavar="S",
                   help="seconds between looks at the study while other workers hold the remaining trials")
    # names are checked by the library (rankadaptor.search: STRATEGIES, SURROGATES), which lists the valid ones;
    # importing its tables here would load torch for every --help
    p.add_argument("--strategy", default="rankadaptor",
                   help="rankadaptor (surrogate-guided, default), random, tpe (Optuna TPE), gp (Optuna GP)")
    p.add_argument("--surrogate", default=None,
                   help="the rankadaptor strategy's model: hierarchical (default; Bayesian linear model on "
                        "log-rank, per-layer weights shrunk toward a shared one, neighbour-layer interactions), "
                        "ridge (additive Bayesian ridge on log-rank) or mlp (the paper's MLP ensemble; the default "
                        "with --meta)")
    p.add_argument("--granularity", default="layer",
                   help="one rank per decoder layer (default, the paper's) or per module (q,k,v,o,gate,up,down)")
    p.add_argument("--objective", type=_objective, default="average", metavar="NAME",
                   help="seven-task 'average', one task's accuracy, held-out 'loss', or your own "
                        "package.module:function (see rankadaptor.search.objective)")
    p.add_argument("--objective-arg", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for an --objective factory (repeatable; VALUE parsed as JSON)")
    p.add_argument("--direction", choices=("maximize", "minimize"), default=None,
                   help="direction of an --objective function without a 'direction' attribute")
    p.add_argument("--budget", default="uniform:8",
                   help="LoRA parameter budget: 'uniform:R' (the count of uniform rank R), a number, or 'none'")
    p.add_argument("--budget-tolerance", type=at_least(0, float), default=0.01, help="relative budget tolerance (default 0.01)")
    p.add_argument("--candidates", type=_ints, default=None,
                   help="rank candidates (default 2,4,6,8,10,12 per layer; 0..32 per module)")
    p.add_argument("--fixed-first", type=int, default=None,
                   help="first layers kept at --fixed-rank (default 4; 0 with --fidelity super)")
    p.add_argument("--fixed-last", type=int, default=None,
                   help="last layers kept at --fixed-rank (default 2; 0 with --fidelity super)")
    p.add_argument("--fixed-rank", type=int, default=None,
                   help="rank of the fixed layers and of the uniform plan (default 8; R of --budget uniform:R with "
                        "--fidelity super)")
    p.add_argument("--seed-plan", action="append", default=[], metavar="LABEL=FILE",
                   help="a rank-plan JSON (e.g. another allocator's) offered to the initial design (repeatable)")
    p.add_argument("--steps", type=at_least(1), default=20, help="recovery steps per trial (full fidelity)")
    p.add_argument("--final-steps", type=at_least(1), default=None, help="recovery steps of the final re-evaluations")
    p.add_argument("--limit", type=at_least(1), default=200, help="evaluation examples per task (full fidelity)")
    p.add_argument("--data", default=None, metavar="FILE",
                   help="recovery data (Alpaca JSON or plain text; default: the bundled offline corpus)")
    p.add_argument("--multi-fidelity", action="store_true",
                   help="screen trials with --screen-steps/--screen-limit (one is required); finalists get the full budget")
    p.add_argument("--screen-steps", type=at_least(1), default=None)
    p.add_argument("--screen-limit", type=at_least(1), default=None)
    p.add_argument("--fidelity", choices=("recover", "super"), default="recover",
                   help="recover: each trial recovers the model at the plan (minutes); super: each trial cuts the "
                        "super-adapter --super to the plan in memory and scores it on a search split (seconds)")
    p.add_argument("--super", default=None, metavar="ADAPTER",
                   help="super-adapter directory for --fidelity super (a recovery with method super writes one)")
    p.add_argument("--cut", choices=("svd", "prefix"), default="svd",
                   help="--fidelity super: exact SVD truncation, or the first components as trained (default svd)")
    p.add_argument("--search-blocks", type=at_least(1), default=4,
                   help="--fidelity super: validation blocks of the recovery data each plan is scored on (default 4)")
    p.add_argument("--finetune-steps", type=at_least(0), default=0,
                   help="--fidelity super: the high fidelity (final re-evaluation, --validate) fine-tunes the cut "
                        "this many steps (default 0: the cut as it is)")
    p.add_argument("--batch", type=at_least(1), default=8, help="--fidelity super: plans scored per surrogate refit")
    p.add_argument("--validate", type=at_least(0), default=0,
                   help="--fidelity super: plans also measured fine-tuned, for the cheap score's Spearman")
    p.add_argument("--n-initial", type=at_least(1), default=None,
                   help="initial design size incl. the uniform and seed plans (default 8; 16 with --fidelity super)")
    p.add_argument("--noise-every", type=at_least(0), default=8,
                   help="re-measure the uniform plan and the incumbent on a fresh seed every N trials (0 = never)")
    p.add_argument("--pool", type=at_least(1), default=10_000, help="random valid candidates scored per round")
    p.add_argument("--acquisition", choices=("ucb", "ei", "thompson"), default=None,
                   help="how the next plan is chosen from the surrogate: ucb (mean + kappa sd), ei (expected "
                        "improvement beyond the measured noise), thompson (best plan of one posterior draw); "
                        "default: the surrogate's own (thompson for hierarchical, ucb for ridge and mlp)")
    p.add_argument("--kappa", type=at_least(0, float), default=2.0, help="UCB exploration weight (default 2)")
    p.add_argument("--ensemble", type=at_least(1), default=5, help="MLP surrogate: ensemble size")
    p.add_argument("--hidden", type=_ints, default=(32, 32, 32), help="MLP surrogate: hidden sizes (default 32,32,32)")
    p.add_argument("--patience", type=at_least(1), default=None,
                   help="convergence: trials without improvement (default 8; 48 with --fidelity super)")
    p.add_argument("--model-tolerance", type=at_least(0, float, above=True), default=0.5,
                   help="convergence: mean |pred-measured| / std(measured) over the last --patience trials")
    p.add_argument("--meta", default=None, metavar="FILE",
                   help="rank-measurements JSON for offline meta-learning of the MLP surrogate's prior")
    p.add_argument("--meta-method", choices=("reptile", "pooled"), default="reptile")
    p.add_argument("--final-seeds", type=_final_seeds, default=3,
                   help="fresh seeds re-evaluating the pick and uniform (>= 3: a paired 95 %% interval needs them; "
                        "0: no re-evaluation, e.g. a deterministic --fidelity super)")
    p.add_argument("--finalists", type=at_least(1), default=1, help="top measured plans re-evaluated at full budget")
    p.add_argument("--no-finalize", action="store_true", help="only search (extra worker processes)")
    p.add_argument("--out", default=None, help="best plan JSON (RankPlan format for `rankadaptor recover --ranks`)")
    p.add_argument("--report", default=None, help="summary + plots directory (default <out>.search)")
    p.add_argument("--seed", type=SEED, default=0, help="the study's seed: every screening trial runs on it")
    p.add_argument("--cv-every", type=at_least(1), default=1, help="report the model's CV Spearman every N trials")
    p.add_argument("--epochs", type=at_least(1), default=300, help=argparse.SUPPRESS)
    p.add_argument("--synthetic-layers", type=at_least(1), default=16, help=argparse.SUPPRESS)
    p.add_argument("--synthetic-noise", type=at_least(0, float), default=0.005, help=argparse.SUPPRESS)
    p.add_argument("--synthetic-seed", type=SEED, default=0, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def settings_from_args(args, seeds=(), super_rank: int | None = None):
    """The parsed flags as the library's validated ``SearchSettings`` (``super_rank``: the super-adapter's R,
    for ``--fidelity super``, whose defaults differ: ``search.super_search.super_settings``)."""
    from rankadaptor.search.study import SearchSettings
    from rankadaptor.search.surrogates import DEFAULT_SURROGATE

    kwargs = dict(
        study=args.study, trials=args.trials, storage=args.storage, strategy=args.strategy,
        surrogate=args.surrogate, granularity=args.granularity,
        budget=args.budget,
        budget_tolerance=args.budget_tolerance, candidates=args.candidates, fixed_first=args.fixed_first,
        fixed_last=args.fixed_last, fixed_rank=args.fixed_rank, n_initial=args.n_initial, pool=args.pool,
        acquisition=args.acquisition, kappa=args.kappa, ensemble=args.ensemble, hidden=args.hidden,
        epochs=args.epochs, patience=args.patience, model_tolerance=args.model_tolerance, noise_every=args.noise_every,
        meta=args.meta, meta_method=args.meta_method, final_seeds=args.final_seeds, finalists=args.finalists,
        finalize=not args.no_finalize, multi_fidelity=args.multi_fidelity, seed=args.seed, seeds=seeds,
        heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period, max_retry=args.max_retry,
        poll_interval=args.poll_interval, cv_every=args.cv_every, create_only=args.create_only, out=args.out,
        report=args.report)
    if super_rank is not None:
        from rankadaptor.search.super_search import super_settings

        return super_settings(rank=super_rank, **kwargs)
    defaults = {"surrogate": "mlp" if args.meta else DEFAULT_SURROGATE, "fixed_first": 4, "fixed_last": 2,
                "fixed_rank": 8, "n_initial": 8, "patience": 8}
    return SearchSettings(**{**kwargs, **{k: v for k, v in defaults.items() if kwargs[k] is None}})


def _estimate(args) -> None:
    """Each trial's recovery (RecoveryConfig's defaults at the largest candidate rank), before the model loads."""
    from rankadaptor.cli.scale_flags import print_estimate
    from rankadaptor.estimate import estimate_recover
    from rankadaptor.lora.ranks import layer_costs
    from rankadaptor.lora.recover import RecoveryConfig
    from rankadaptor.models.loading import skeleton

    model = skeleton(args.model)
    if model is not None:
        cfg = RecoveryConfig()
        lora = sum(layer_costs(model)) * max(args.candidates or (32,))  # every module at the largest rank
        print_estimate(estimate_recover(model, cfg.batch_size, cfg.seq_len, lora), args)


def _require_out(args) -> None:
    """The library searches without a plan file; the CLI finalises into one unless told not to."""
    from rankadaptor.errors import RankAdaptorError

    if not args.out and not args.no_finalize and not args.create_only:
        raise RankAdaptorError("an output plan file (--out) is required unless the worker only searches "
                               "(--no-finalize)")


def _final_seeds(text: str) -> int:
    n = at_least(0)(text)
    if 0 < n < 3:
        raise argparse.ArgumentTypeError(f"must be 0 (no re-evaluation) or >= 3 (a paired interval), got {n}")
    return n


def _seed_plans(specs: list[str]):
    from rankadaptor.errors import RankAdaptorError
    from rankadaptor.lora.ranks import RankPlan

    seeds = []
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep:
            label, path = path or label, label
        if not path:
            raise RankAdaptorError(f"--seed-plan {spec!r} must be LABEL=FILE or FILE")
        seeds.append((label, RankPlan.from_json(path)))
    return seeds


def _check_fidelity_flags(args) -> None:
    from rankadaptor.errors import RankAdaptorError

    if args.multi_fidelity and args.screen_steps is None and args.screen_limit is None and ":" not in args.objective:
        raise RankAdaptorError("--multi-fidelity needs a cheaper screening fidelity: give --screen-steps and/or "
                               "--screen-limit (without them every trial would run at full cost)")


def run(args) -> int:
    import torch

    from rankadaptor.data.recovery import check_data_source
    from rankadaptor.fileio import hold_claim
    from rankadaptor.search.storage import HeartbeatConfig, check_storage_url, open_storage
    from rankadaptor.search.study import make_space, run_study

    if args.fidelity == "super":
        return run_super(args)
    _check_fidelity_flags(args)
    settings = settings_from_args(args, _seed_plans(args.seed_plan))  # checks the outputs can be written
    _require_out(args)
    if settings.finalize and not settings.create_only and settings.out:
        hold_claim(settings.out)  # no other run writes them while this one searches
        hold_claim(settings.report_dir(), "--report")
    if args.objective != "synthetic":
        check_data_source(args.data)  # a hub dataset id offline fails now, not after the model loaded
    if args.objective not in ("synthetic", "loss") and ":" not in args.objective:
        from rankadaptor.eval.tasks import check_data

        check_data(None if args.objective == "average" else [args.objective])  # before the model loads
    # a database server is connected to now, before the model loads; an SQLite file is created only
    # once every other input has been checked (a bad input leaves nothing on disk)
    url = settings.storage_url()
    storage = None if check_storage_url(url).get_backend_name() == "sqlite" else open_storage(
        url, HeartbeatConfig(settings.heartbeat_interval, settings.grace_period, settings.max_retry))
    if not getattr(args, "threads", None):
        # the surrogate is tiny and CPUs here are shared: extra threads only add contention
        torch.set_num_threads(1)
    objective, costs, identity = _objective_for(args, settings, make_space)
    result = run_study(settings, objective, costs, identity, storage=storage)
    study = result.study
    if settings.create_only:
        print(f"study {args.study} ready ({result.state['n_complete']} completed trials so far); start the workers "
              "with the same settings and --storage")
        return 0
    from rankadaptor.search import engine

    print(f"study {args.study}: {result.state.get('n_complete')} completed trials, "
          f"converged={result.state.get('converged')}")
    for retry, first in engine.retries(study).items():
        print(f"trial {retry} retried the plan of trial {first} (its worker died before completing it)")
    return _print_outcome(result)


def _print_outcome(result) -> int:
    """The finalised search's messages and the files it wrote (plan, cut adapter if any, report)."""
    if result.report is None:
        return 0
    for msg in result.report["messages"]:
        print(msg)
    print(f"best plan: {result.paths['plan']}")
    if "adapter" in result.paths:
        print(f"cut adapter: {result.paths['adapter']}")
    print(f"report: {result.paths['report']}")
    return 0


def _objective_for(args, settings, make_space):
    """(objective, module costs, study identity) for the flags; an unreachable budget fails before any trial."""
    from rankadaptor.search.objective import RecoverEvalObjective, load_objective
    from rankadaptor.search.synthetic import additive

    if args.objective == "synthetic":
        from rankadaptor.lora.ranks import DEFAULT_TARGETS

        # one unit of cost per layer and rank (a module costs a seventh of its layer)
        costs = [{f"model.layers.{i}.{t}": 1.0 / len(DEFAULT_TARGETS) for t in DEFAULT_TARGETS}
                 for i in range(args.synthetic_layers)]
        objective = additive(make_space(settings, costs), noise=args.synthetic_noise, seed=args.synthetic_seed)
        return objective, costs, {"model": args.model, **objective.identity()}
    from rankadaptor.lora.ranks import module_costs
    from rankadaptor.models.loading import load_model
    from rankadaptor.search.objective import import_objective

    if ":" in args.objective:
        import_objective(args.objective)  # a wrong path fails before the model loads
    else:
        _estimate(args)  # each trial's recovery: refused now if it cannot fit
    loaded = load_model(args.model)
    costs = module_costs(loaded.model)
    identity = {"model": args.model, "model_identity": getattr(loaded, "identity", None)}
    del loaded
    space = make_space(settings, costs)
    if ":" in args.objective:
        objective = load_objective(args.objective, space, settings, dict(args.objective_arg), args.direction)
        own = objective.identity() if hasattr(objective, "identity") else {}
        return objective, costs, {**identity, **own, "objective": args.objective,
                                  "objective_args": dict(args.objective_arg)}
    objective = RecoverEvalObjective(args.model, args.objective, args.steps, args.screen_steps, args.limit,
                                     args.screen_limit, data=args.data, space=space, final_steps=args.final_steps)
    return objective, costs, {**identity, **objective.identity()}


def run_super(args) -> int:
    """``--fidelity super``: RankAdaptor over cuts of a trained super-adapter (``search.super_search``)."""
    import torch

    from rankadaptor.compress.adapter_io import read_adapter
    from rankadaptor.errors import RankAdaptorError
    from rankadaptor.fileio import check_output, hold_claim
    from rankadaptor.search.super_search import adapter_out, check_rank_bound, run_super_search

    if args.super is None:
        raise RankAdaptorError("--fidelity super needs --super ADAPTER (a super-adapter written by rankadaptor recover with method super)")
    if args.objective not in ("loss", "average") or args.multi_fidelity or args.strategy not in ("rankadaptor", "random"):
        raise RankAdaptorError("--fidelity super scores the search-split loss with the rankadaptor or random strategy; "
                               "drop --objective, --multi-fidelity and --strategy tpe/gp")
    _require_out(args)
    adapter = read_adapter(args.super)  # before the model loads: a bad adapter directory fails first
    settings = settings_from_args(args, _seed_plans(args.seed_plan), super_rank=min(m.r for m in adapter.modules.values()))
    check_rank_bound(settings.candidates, settings.fixed_rank, adapter)
    if settings.finalize and not settings.create_only and settings.out:  # the settings checked out and report
        hold_claim(settings.out)
        hold_claim(settings.report_dir(), "--report")
        check_output(adapter_out(settings.out), flag="--out's adapter", inputs=[args.model, args.super],
                     size=sum(f.stat().st_size for f in Path(args.super).rglob("*") if f.is_file()))
    if not getattr(args, "threads", None):
        torch.set_num_threads(1)
    from rankadaptor.lora.ranks import module_costs
    from rankadaptor.models.loading import load_model
    from rankadaptor.search.study import make_space
    from rankadaptor.search.super_fidelity import SuperFidelity, search_split

    loaded = load_model(args.model)
    costs = module_costs(loaded.model)
    space = make_space(settings, costs)  # an unreachable budget fails before the corpus is read
    with SuperFidelity(loaded.model, loaded.tokenizer, args.super, space,
                       search_split(loaded.tokenizer, args.search_blocks, data=args.data), args.cut,
                       finetune_steps=args.finetune_steps, identity=loaded.identity) as objective:
        identity = {"model": args.model, "model_identity": loaded.identity, **objective.identity()}
        result = run_super_search(settings, objective, costs, identity, batch=args.batch, validate=args.validate)
    state = result.state
    if settings.create_only:
        print(f"study {args.study} ready ({state['n_complete']} completed trials so far)")
        return 0
    print(f"study {args.study}: {state.get('n_complete')} cheap scores in {state['seconds']:.0f} s "
          f"({state['evaluations_per_minute']:.1f}/min; storage {state['times']['storage']:.1f} s, surrogate "
          f"{state['times']['model'] + state['times']['pool']:.1f} s), converged={state.get('converged')}")
    return _print_outcome(result)
