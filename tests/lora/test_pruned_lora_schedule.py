"""PrunedLoRA schedules: derived from the run length, always reaching the budget, or a clear error."""

import random

import pytest

from rankadaptor.errors import RankAdaptorError
from rankadaptor.lora.pruned_lora import PrunedLoRAMethod
from rankadaptor.lora.pruned_lora_schedule import PruneSchedule, budget_check
from rankadaptor.lora.ranks import RankPlan, count_lora_params
from tests.tiny_models import tiny_llama


def _worst_case_params(s: PruneSchedule, sizes: dict[str, int], total_steps: int) -> int:
    """Global scope simulated with the removal order that frees the least: smallest modules first."""
    ranks = {n: s.init_rank for n in sizes}
    _, target = s.targets(sizes)
    params = s.init_rank * sum(sizes.values())
    for _ in s.event_steps(total_steps):
        for _ in range(s.prune_k * len(sizes)):
            open_ = [n for n in sizes if ranks[n] > s.floor]
            if params <= target or not open_:
                break
            n = min(open_, key=sizes.__getitem__)
            ranks[n] -= 1
            params -= sizes[n]
    return params


def test_derived_timing_reaches_the_budget_with_the_fewest_components_per_event():
    sizes = {"a": 100, "b": 50}
    s = PruneSchedule(init_rank=8, target_params=300, scope="global").resolve(sizes, 30)
    assert (s.warmup_steps, s.final_steps, s.prune_every) == (7, 7, 1)
    assert s.event_steps(30) == list(range(8, 24))  # 16 events, then 7 steps of fine-tuning only
    # worst case 13 removals (7 of b at 50, then 6 of a at 100): 7 events at k=1
    assert s.events_needed(sizes, 1) == 7 and s.prune_k == 1
    assert _worst_case_params(s, sizes, 30) <= 300
    short = PruneSchedule(init_rank=8, target_params=300, scope="global").resolve(sizes, 10)
    assert short.event_steps(10) == [3, 4, 5, 6, 7, 8] and short.prune_k == 2
    m = PruneSchedule(init_rank=8, target_rank=2, prune_every=3).resolve(sizes, 20)  # given values are kept
    assert (m.prune_every, m.warmup_steps, m.final_steps, m.prune_k) == (3, 5, 5, 2)  # events at 8, 11, 14


@pytest.mark.parametrize("seed", range(25))
def test_any_resolved_global_schedule_reaches_its_budget_in_the_worst_order(seed):
    rng = random.Random(seed)
    sizes = {f"m{i}": rng.randint(20, 300) for i in range(rng.randint(1, 9))}
    init, floor = rng.randint(2, 32), 1
    per = sum(sizes.values())
    target = rng.randint(floor * per, init * per - 1)
    steps = rng.randint(3, 60)
    s = PruneSchedule(init_rank=init, target_params=target, scope="global", floor=floor).resolve(sizes, steps)
    assert _worst_case_params(s, sizes, steps) <= target
    assert s.event_steps(steps)[-1] < steps  # fine-tuning after the last event


@pytest.mark.parametrize("kwargs, steps, flags", [
    (dict(init_rank=8, target_params=1200), 30, ["--target-params", "--init-rank"]),  # = the initial count
    (dict(init_rank=8, target_params=100_000), 30, ["--target-params", "--init-rank"]),
    (dict(init_rank=8, target_params=200, floor=2), 30, ["--prune-floor"]),  # floor keeps 300
    (dict(init_rank=8, target_rank=2, floor=3), 30, ["--prune-floor"]),
    (dict(init_rank=8, target_rank=4, final_steps=0), 30, ["--prune-final"]),  # no fine-tuning after
    (dict(init_rank=8, target_rank=4), 2, ["--steps"]),  # 2 steps: no event can have one after it
    (dict(init_rank=8, target_rank=4, warmup_steps=20, final_steps=10), 30, ["--steps", "--prune-warmup",
                                                                            "--prune-final"]),
    (dict(init_rank=8, target_rank=1, prune_every=5, prune_k=1, warmup_steps=5, final_steps=5), 40,
     ["--prune-k", "--steps", "--prune-every"]),  # 6 events, 7 needed
])
def test_bad_schedules_name_the_flag_to_change(kwargs, steps, flags):
    with pytest.raises(RankAdaptorError) as err:
        PruneSchedule(**kwargs).resolve({"a": 100, "b": 50}, steps)
    msg = str(err.value)
    assert "\n" not in msg and all(f in msg for f in flags), msg


def test_bad_fields_fail_on_construction():
    for kwargs, words in [(dict(init_rank=8), "exactly one"),
                          (dict(init_rank=8, target_rank=4, scope="layer"), "scope"),
                          (dict(init_rank=8, target_rank=4, scorer="nope"), "magnitude"),
                          (dict(init_rank=8, target_rank=4, fisher="nope"), "token"),
                          (dict(init_rank=8, target_rank=4, damping=0), "--prune-damping"),
                          (dict(init_rank=8, target_rank=4, max_gate_change=2), "max_gate_change"),
                          (dict(init_rank=8, target_params=0), "target_params"),
                          (dict(init_rank=8, target_rank=4, floor=9), "floor 9 is above the initial rank 8")]:
        with pytest.raises(RankAdaptorError, match=words):
            PruneSchedule(**kwargs)


def test_for_budget_resolves_against_the_model_and_run_length():
    model = tiny_llama()
    budget = count_lora_params(model, RankPlan.uniform(4, 2))
    method = PrunedLoRAMethod.for_budget(model, budget, 12, init_rank=8)
    s = method.resolved
    assert (s.scope, s.target_params, s.warmup_steps, s.final_steps, s.prune_every) == ("global", budget, 3, 3, 1)
    assert s.events_needed(method.sizes(model), s.prune_k) <= len(s.event_steps(12))
    assert method.settings()["schedule"]["prune_k"] == s.prune_k
    with pytest.raises(RankAdaptorError, match="--steps"):
        PrunedLoRAMethod.for_budget(model, budget, 2, init_rank=8)
    with pytest.raises(RankAdaptorError, match="--init-rank"):
        PrunedLoRAMethod.for_budget(model, count_lora_params(model, RankPlan.uniform(4, 8)), 12, init_rank=8)


def test_budget_check_within_one_component():
    sizes = {"a": 100, "b": 50}
    assert budget_check(250, 300, sizes)["at_budget"]
    assert budget_check(300, 300, sizes)["at_budget"]
    assert not budget_check(200, 300, sizes)["at_budget"]  # a whole largest component below
    assert not budget_check(301, 300, sizes)["at_budget"]  # over the budget
