"""``rankadaptor search MODEL --study NAME --trials N --out ranks.json``: RankAdaptor rank search.

Resumable: the study lives in a database (an SQLite file by default; ``--storage URL``, e.g.
PostgreSQL, for many machines), so running the same command again continues it, and several
workers may run it on one study at once (create it first with ``--create-only``; add
``--no-finalize`` to all but one). A worker killed mid-trial is noticed by its missing heartbeat
and its plan is retried by another worker (docs/distributed.md). ``--strategy random|tpe`` runs
the baselines through the same engine. ``--objective synthetic`` is a test-only objective (a
known function of the rank vector plus noise, no model) used by the tests and benchmarks.

``--fidelity super --super ADAPTER`` searches cuts of a trained super-adapter (``recover --method
super``) instead: each trial scores a cut in memory on a search split of the recovery data (seconds,
not minutes), hundreds of them; the best plan is written with the adapter cut to it beside it.
"""

from __future__ import annotations

import argparse
import logging

from rankadaptor.metrics import TASKS

log = logging.getLogger(__name__)


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated integers, e.g. 2,4,6,8") from None


def add_parser(sub) -> None:
    p = sub.add_parser("search", help="search per-layer LoRA ranks with a performance model (RankAdaptor)",
                       description=__doc__)
    p.add_argument("model", metavar="MODEL", help="model spec (alias, directory, GGUF, pruned artefact)")
    p.add_argument("--study", required=True, help="study name in the storage (resumed if it exists)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="database URL shared by all workers: sqlite:///FILE (default sqlite:///<study>.db) or "
                        "postgresql://user:password@host:port/db (needs the 'distributed' extra)")
    p.add_argument("--trials", type=int, default=None,
                   help="total completed trials for the study (all workers together); required unless --create-only")
    p.add_argument("--create-only", action="store_true",
                   help="create (or check) the study in --storage and exit; run this once before starting workers")
    p.add_argument("--heartbeat-interval", type=int, default=30, metavar="S",
                   help="seconds between heartbeats of a running trial (default 30)")
    p.add_argument("--grace-period", type=int, default=120, metavar="S",
                   help="a trial without a heartbeat for this long is taken as crashed and its plan retried "
                        "(default 120; keep it several heartbeat intervals)")
    p.add_argument("--max-retry", type=int, default=2,
                   help="times a crashed trial's plan is queued again before it stays failed (default 2)")
    p.add_argument("--poll-interval", type=float, default=5.0, metavar="S",
                   help="seconds between looks at the study while other workers hold the remaining trials")
    p.add_argument("--strategy", choices=("rankadaptor", "random", "tpe"), default="rankadaptor")
    p.add_argument("--objective", choices=("average", "loss", *TASKS, "synthetic"), default="average",
                   help="seven-task average accuracy, one task's accuracy, or held-out loss")
    p.add_argument("--budget", default="uniform:8",
                   help="LoRA parameter budget: 'uniform:R' (the count of uniform rank R), a number, or 'none'")
    p.add_argument("--budget-tolerance", type=float, default=None,
                   help="relative budget tolerance (default 0.05; 0.01 with --fidelity super)")
    p.add_argument("--candidates", type=_ints, default=None,
                   help="rank candidates (default 2,4,6,8,10,12; with --fidelity super 1,2,3,4,6,8,12,16,24,32 up to R)")
    p.add_argument("--fixed-first", type=int, default=None,
                   help="first layers kept at --fixed-rank (default 4; 0 with --fidelity super)")
    p.add_argument("--fixed-last", type=int, default=None,
                   help="last layers kept at --fixed-rank (default 2; 0 with --fidelity super)")
    p.add_argument("--fixed-rank", type=int, default=None, help="rank of the fixed layers (default 8)")
    p.add_argument("--steps", type=int, default=20, help="recovery steps per trial (full fidelity)")
    p.add_argument("--limit", type=int, default=200, help="evaluation examples per task (full fidelity)")
    p.add_argument("--data", default=None, metavar="FILE",
                   help="recovery data (Alpaca JSON or plain text; default: the bundled offline corpus)")
    p.add_argument("--multi-fidelity", action="store_true",
                   help="screen trials with --screen-steps/--screen-limit; finalists get the full budget")
    p.add_argument("--screen-steps", type=int, default=None)
    p.add_argument("--screen-limit", type=int, default=None)
    p.add_argument("--fidelity", choices=("recover", "super"), default="recover",
                   help="recover: each trial recovers the model at the plan (minutes); super: each trial cuts the "
                        "super-adapter --super to the plan in memory and scores it on a search split (seconds)")
    p.add_argument("--super", default=None, metavar="ADAPTER",
                   help="super-adapter directory (written by recover --method super) for --fidelity super")
    p.add_argument("--cut", choices=("svd", "prefix"), default="svd",
                   help="--fidelity super: exact SVD truncation, or the first components as trained (default svd)")
    p.add_argument("--search-blocks", type=int, default=4,
                   help="--fidelity super: validation blocks of the recovery data each plan is scored on (default 4)")
    p.add_argument("--finetune-steps", type=int, default=0,
                   help="--fidelity super: the high fidelity (finalists, --validate) fine-tunes the cut this many steps")
    p.add_argument("--batch", type=int, default=8, help="--fidelity super: plans scored per performance-model refit")
    p.add_argument("--validate", type=int, default=0,
                   help="--fidelity super: plans also measured at the high fidelity for the cheap score's Spearman")
    p.add_argument("--n-initial", type=int, default=None,
                   help="initial design size incl. the uniform baseline (default 8; 16 with --fidelity super)")
    p.add_argument("--pool", type=int, default=10_000, help="random valid candidates scored per round")
    p.add_argument("--acquisition", choices=("ucb", "ei"), default="ucb")
    p.add_argument("--kappa", type=float, default=1.0, help="UCB exploration weight")
    p.add_argument("--ensemble", type=int, default=5, help="performance-model ensemble size")
    p.add_argument("--hidden", type=_ints, default=(32, 32, 32), help="MLP hidden sizes (default 32,32,32)")
    p.add_argument("--patience", type=int, default=None,
                   help="convergence: trials without improvement (default 8; 48 with --fidelity super)")
    p.add_argument("--model-tolerance", type=float, default=0.5,
                   help="convergence: mean |pred-measured| / std(measured) over the last --patience trials")
    p.add_argument("--meta", default=None, metavar="FILE",
                   help="rank-measurements JSON for offline meta-learning (all settings are source tasks)")
    p.add_argument("--meta-method", choices=("reptile", "pooled"), default="reptile")
    p.add_argument("--final-seeds", type=int, default=3, help="seeds re-evaluating best and uniform (>= 3)")
    p.add_argument("--finalists", type=int, default=1, help="top measured plans re-evaluated at full budget")
    p.add_argument("--no-finalize", action="store_true", help="only search (extra worker processes)")
    p.add_argument("--out", default=None, help="best plan JSON (RankPlan format for `recover --ranks`)")
    p.add_argument("--report", default=None, help="summary + plots directory (default <out>.search)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cv-every", type=int, default=1, help="report the model's CV Spearman every N trials")
    p.add_argument("--epochs", type=int, default=300, help=argparse.SUPPRESS)
    p.add_argument("--synthetic-layers", type=int, default=16, help=argparse.SUPPRESS)
    p.add_argument("--synthetic-noise", type=float, default=0.005, help=argparse.SUPPRESS)
    p.add_argument("--synthetic-seed", type=int, default=0, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def settings_from_args(args, super_rank: int | None = None):
    """The parsed flags as the library's validated ``SearchSettings`` (``super_rank``: the super-adapter's R)."""
    from rankadaptor.search.study import SearchSettings

    given = dict(fixed_rank=args.fixed_rank, budget_tolerance=args.budget_tolerance, candidates=args.candidates,
                 fixed_first=args.fixed_first, fixed_last=args.fixed_last, n_initial=args.n_initial,
                 patience=args.patience)
    kwargs = dict(
        study=args.study, trials=args.trials, storage=args.storage, strategy=args.strategy, budget=args.budget,
        pool=args.pool,
        acquisition=args.acquisition, kappa=args.kappa, ensemble=args.ensemble, hidden=args.hidden,
        epochs=args.epochs, model_tolerance=args.model_tolerance, meta=args.meta,
        meta_method=args.meta_method, final_seeds=args.final_seeds, finalists=args.finalists,
        finalize=not args.no_finalize, multi_fidelity=args.multi_fidelity, seed=args.seed,
        heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period, max_retry=args.max_retry,
        poll_interval=args.poll_interval, cv_every=args.cv_every, create_only=args.create_only, out=args.out,
        report=args.report)
    if super_rank is not None:
        from rankadaptor.search.super_search import super_settings

        return super_settings(rank=super_rank, **kwargs, **given)
    return SearchSettings(**kwargs, **{k: v for k, v in given.items() if v is not None})


def run(args) -> int:
    import torch

    from rankadaptor.fileio import refuse_bad_out_parent
    from rankadaptor.search.objective import RecoverEvalObjective, SyntheticObjective
    from rankadaptor.search.storage import HeartbeatConfig, check_storage_url, open_storage
    from rankadaptor.search.study import make_space, run_study

    if args.fidelity == "super":
        return run_super(args)
    settings = settings_from_args(args)
    for out in (settings.out, settings.report):
        if out:
            refuse_bad_out_parent(out)
    # a database server is connected to now, before the model loads; an SQLite file is created only
    # once every other input has been checked (a bad input leaves nothing on disk)
    url = settings.storage_url()
    storage = None if check_storage_url(url).get_backend_name() == "sqlite" else open_storage(
        url, HeartbeatConfig(settings.heartbeat_interval, settings.grace_period, settings.max_retry))
    if not getattr(args, "threads", None):
        # the performance model is tiny and CPUs here are shared: extra threads only add contention
        torch.set_num_threads(1)
    if args.objective == "synthetic":
        costs = [1.0] * args.synthetic_layers
        objective = SyntheticObjective(make_space(settings, costs), noise=args.synthetic_noise, seed=args.synthetic_seed)
        identity = {"model": args.model, **objective.identity()}
    else:
        from rankadaptor.lora.ranks import layer_costs
        from rankadaptor.models.loading import load_model

        loaded = load_model(args.model)
        costs = layer_costs(loaded.model)
        make_space(settings, costs)  # an unreachable budget fails before the first trial
        objective = RecoverEvalObjective(args.model, args.objective, args.steps, args.screen_steps,
                                         args.limit, args.screen_limit, data=args.data)
        identity = {"model": args.model, "model_identity": getattr(loaded, "identity", None),
                    **objective.identity()}
        del loaded
    result = run_study(settings, objective, costs, identity, storage=storage)
    study = result.study
    if settings.create_only:
        print(f"study {args.study} ready ({len(study.trials)} trials so far); start the workers with the same "
              f"settings and --storage")
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


def run_super(args) -> int:
    """``--fidelity super``: RankAdaptor over cuts of a trained super-adapter (``search.super_search``)."""
    import torch

    from rankadaptor.compress.adapter_io import read_adapter
    from rankadaptor.errors import RankAdaptorError
    from rankadaptor.fileio import refuse_bad_out_parent
    from rankadaptor.search.study import make_space
    from rankadaptor.search.super_search import adapter_out, check_rank_bound, run_super_search

    if args.super is None:
        raise RankAdaptorError("--fidelity super needs --super ADAPTER (a super-adapter from recover --method super)")
    if args.objective != "loss" and args.objective != "average":
        raise RankAdaptorError("--fidelity super scores the search-split loss; use --objective loss (or leave it)")
    if args.strategy == "tpe" or args.multi_fidelity:
        raise RankAdaptorError("--fidelity super runs the rankadaptor or random strategy, without --multi-fidelity")
    adapter = read_adapter(args.super)  # before the model loads: a bad adapter directory fails first
    settings = settings_from_args(args, super_rank=min(m.r for m in adapter.modules.values()))
    check_rank_bound(settings.candidates, settings.fixed_rank, adapter)
    for out in (settings.out, settings.report, settings.out and adapter_out(settings.out)):
        if out:
            refuse_bad_out_parent(out)
    if not getattr(args, "threads", None):
        torch.set_num_threads(1)
    from rankadaptor.lora.ranks import layer_costs
    from rankadaptor.models.loading import load_model
    from rankadaptor.search.super_fidelity import SuperFidelity, plan_of, search_split

    loaded = load_model(args.model)
    costs = layer_costs(loaded.model)
    space = make_space(settings, costs)  # an unreachable budget fails before the corpus is read
    objective = SuperFidelity(loaded.model, loaded.tokenizer, args.super, plan_of(space),
                              search_split(loaded.tokenizer, args.search_blocks, data=args.data), args.cut,
                              finetune_steps=args.finetune_steps, identity=loaded.identity)
    identity = {"model": args.model, "model_identity": loaded.identity, **objective.identity()}
    result = run_super_search(settings, objective, costs, identity, batch=args.batch, validate=args.validate)
    state = result.state
    if settings.create_only:
        print(f"study {args.study} ready ({len(result.study.trials)} trials so far)")
        return 0
    print(f"study {args.study}: {state.get('n_complete')} cheap scores in {state['seconds']:.0f} s "
          f"({state['evaluations_per_minute']:.1f}/min; storage {state['times']['storage']:.1f} s, model "
          f"{state['times']['model'] + state['times']['pool']:.1f} s), converged={state.get('converged')}")
    return _print_outcome(result)
