"""RankAdaptor rank search (RankAdaptor §3): space, performance model, meta-learning, Optuna sampler, engine.

``space.SearchSpace`` (valid rank vectors under a budget) -> ``perf_model`` (MLP ensemble) ->
``meta`` (pooled / Reptile pre-training, measurements loader) -> ``sampler`` (Optuna samplers:
rankadaptor, random, tpe) -> ``engine`` (study storage, convergence, seeded re-evaluation against
uniform) -> ``outputs`` (RankPlan JSON, summary, plots). ``objective`` defines what a trial measures.
"""
