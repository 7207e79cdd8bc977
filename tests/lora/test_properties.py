"""Property-based tests (hypothesis) over rank plans and PARA inputs.

Rank plans: any valid plan survives JSON and PEFT wrapping (and a save/reload) with exact
per-module ranks and scales; any other JSON value gives a ``RankAdaptorError``, never another
exception. PARA: on random small adapters (random shapes, ranks, alpha, rsLoRA) the full-rank cut
reproduces every ΔW, a parameter budget is never exceeded and a larger budget never keeps fewer
parameters; damaged safetensors files give a ``RankAdaptorError``.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from rankadaptor.errors import RankAdaptorError
from rankadaptor.compress.adapter_io import read_adapter
from rankadaptor.compress.para import CompressConfig, compress
from rankadaptor.lora.ranks import ALPHA_RULES, DEFAULT_TARGETS, RankPlan, apply_plan, wrapped_ranks
from tests.tiny_models import tiny_llama

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
N_LAYERS = 4  # tiny_llama; its smallest projection (k_proj, v_proj) is 32 x 64


# ---- rank plans ----------------------------------------------------------------------------------
@st.composite
def valid_plans(draw):
    targets = draw(st.lists(st.sampled_from(DEFAULT_TARGETS), min_size=1, max_size=7, unique=True))
    ranks = draw(st.lists(st.sampled_from([0, 0, 1, 2, 3, 8, 12]), min_size=N_LAYERS, max_size=N_LAYERS))
    names = [f"model.layers.{i}.{'mlp' if t in ('gate_proj', 'up_proj', 'down_proj') else 'self_attn'}.{t}"
             for i in range(N_LAYERS) for t in targets]
    overrides = draw(st.dictionaries(st.sampled_from(names), st.integers(0, 16), max_size=4))
    assume(any(ranks) or any(overrides.values()))
    return RankPlan(ranks=ranks, target_modules=tuple(targets), overrides=overrides,
                    alpha_rule=draw(st.sampled_from(ALPHA_RULES)),
                    alpha=draw(st.floats(0.5, 64, allow_nan=False)), dropout=draw(st.sampled_from([0.0, 0.05, 0.3])))


def _expected_scale(plan: RankPlan, r: int) -> float:
    if plan.alpha_rule == "2r":
        return 2.0
    return plan.alpha / (math.sqrt(r) if plan.alpha_rule == "rslora" else r)


@FAST
@given(plan=valid_plans())
@example(plan=RankPlan(ranks=[1, 0, 0, 0], target_modules=("q_proj",),
                       overrides={"model.layers.0.self_attn.q_proj": 0}))  # once crashed inside to_lora_config
def test_valid_plans_round_trip_json_and_peft_with_exact_ranks(plan):
    with tempfile.TemporaryDirectory() as tmp:
        plan.to_json(Path(tmp) / "plan.json")
        assert RankPlan.from_json(Path(tmp) / "plan.json") == plan
        model = tiny_llama()
        expected = {n: r for n, r in plan.module_ranks(model).items() if r > 0}
        if not expected:  # overrides zeroed every module: refused, not a crash inside PEFT
            with pytest.raises(RankAdaptorError, match="nothing to train"):
                apply_plan(model, plan)
            return
        peft_model = apply_plan(model, plan)
        assert wrapped_ranks(peft_model) == expected
        layers = dict(peft_model.get_base_model().named_modules())
        for name, r in expected.items():
            assert layers[name].scaling["default"] == pytest.approx(_expected_scale(plan, r))
        # PEFT sorts pattern keys on save: the reloaded adapter must still give every module its rank
        peft_model.save_pretrained(Path(tmp) / "adapter")
        from peft import PeftModel

        reloaded = PeftModel.from_pretrained(tiny_llama(), Path(tmp) / "adapter")
        assert wrapped_ranks(reloaded) == expected
        rlayers = dict(reloaded.get_base_model().named_modules())
        for name, r in expected.items():
            assert rlayers[name].scaling["default"] == pytest.approx(_expected_scale(plan, r))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 40) | st.floats(allow_nan=True) | st.text(max_size=6),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
PLAN_KEYS = ["format", "n_layers", "ranks", "target_modules", "overrides", "alpha_rule", "alpha", "dropout", "model"]


@st.composite
def damaged_plan_dicts(draw):
    """A valid plan's dict with some fields replaced by arbitrary JSON, or arbitrary JSON outright."""
    if draw(st.booleans()):
        return draw(json_values)
    d = draw(valid_plans()).to_dict()
    for key in draw(st.lists(st.sampled_from(PLAN_KEYS + ["extra"]), min_size=1, max_size=3, unique=True)):
        if draw(st.booleans()) and key in d:
            del d[key]
        else:
            d[key] = draw(json_values)
    return d


@FAST
@given(obj=damaged_plan_dicts())
def test_arbitrary_plan_json_is_accepted_or_refused_with_rankadaptor_error(obj):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan.json"
        path.write_text(json.dumps(obj))
        try:
            plan = RankPlan.from_json(path)
            plan.to_lora_config(tiny_llama())  # the model-dependent checks as well
        except RankAdaptorError:
            pass


@FAST
@given(data=st.binary(max_size=64))
def test_arbitrary_plan_bytes_never_crash(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan.json"
        path.write_bytes(data)
        try:
            RankPlan.from_json(path)
        except RankAdaptorError:
            pass


# ---- PARA inputs ---------------------------------------------------------------------------------
@st.composite
def adapters(draw):
    """{module: (B, A, r, alpha)} and use_rslora for 1-4 modules of random small shapes."""
    n = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    modules = {}
    for i in range(n):
        d_out, d_in = draw(st.integers(2, 12)), draw(st.integers(2, 12))
        r = draw(st.integers(1, min(d_out, d_in)))
        alpha = draw(st.sampled_from([1.0, 4.0, 8.0, 16.0, 3.5]))
        B = torch.randn(d_out, r, generator=g) * draw(st.sampled_from([0.1, 1.0, 5.0]))
        A = torch.randn(r, d_in, generator=g)
        modules[f"model.layers.{i}.self_attn.q_proj"] = (B, A, r, alpha)
    return modules, draw(st.booleans())


def write_peft_adapter(path: Path, modules: dict, rslora: bool) -> Path:
    """Written by hand the way PEFT's save_pretrained lays it out (exact, escaped pattern keys)."""
    import re

    path.mkdir()
    tensors = {}
    for name, (B, A, _, _) in modules.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = A.contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = B.contiguous()
    save_file(tensors, str(path / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": 1, "lora_alpha": 1.0, "use_rslora": rslora, "target_modules": list(modules),
              "rank_pattern": {re.escape(n): m[2] for n, m in modules.items()},
              "alpha_pattern": {re.escape(n): m[3] for n, m in modules.items()}, "task_type": "CAUSAL_LM"}
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


def delta(B, A, r, alpha, rslora) -> torch.Tensor:
    scale = alpha / (math.sqrt(r) if rslora else r)
    return scale * B.double() @ A.double()


def _params(modules) -> int:
    return sum(m[2] * (m[0].shape[0] + m[1].shape[1]) for m in modules.values())


@FAST
@given(case=adapters())
def test_full_rank_compression_reproduces_every_delta_w(case):
    modules, rslora = case
    with tempfile.TemporaryDirectory() as tmp:
        src = write_peft_adapter(Path(tmp) / "in", modules, rslora)
        compress(src, Path(tmp) / "out", CompressConfig(threshold=0))
        out = read_adapter(Path(tmp) / "out")
        assert set(out.modules) == set(modules)
        for name, (B, A, r, alpha) in modules.items():
            m = out.modules[name]
            want = delta(B, A, r, alpha, rslora)
            got = m.scale * m.B.double() @ m.A.double()
            assert m.r <= r
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


@FAST
@given(case=adapters(), frac_a=st.floats(0.0, 1.0), frac_b=st.floats(0.0, 1.0))
def test_budget_is_never_exceeded_and_more_budget_never_keeps_less(case, frac_a, frac_b):
    modules, rslora = case
    full = _params(modules)
    small, large = sorted((max(1, round(frac_a * full)), max(1, round(frac_b * full))))
    kept = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = write_peft_adapter(Path(tmp) / "in", modules, rslora)
        for budget in (small, large):
            try:
                report = compress(src, Path(tmp) / f"out{budget}", CompressConfig(target_params=budget),
                                  overwrite=True)
            except RankAdaptorError as exc:  # below the cheapest single component: refused up front
                assert "below" in str(exc)
                kept[budget] = 0
                continue
            after = report["totals"]["params_after"]
            assert after == read_adapter(Path(tmp) / f"out{budget}").params <= budget
            kept[budget] = after
    assert kept[small] <= kept[large]


@FAST
@given(case=adapters(), cut=st.floats(0.0, 0.999), flips=st.lists(st.tuples(st.floats(0, 0.999), st.integers(1, 255)),
                                                                   max_size=4))
def test_damaged_safetensors_raise_rankadaptor_error(case, cut, flips):
    modules, rslora = case
    with tempfile.TemporaryDirectory() as tmp:
        src = write_peft_adapter(Path(tmp) / "in", modules, rslora)
        weights = src / "adapter_model.safetensors"
        raw = bytearray(weights.read_bytes())
        if flips:  # corrupt some bytes (header or data): refused, or read as other finite numbers
            for where, xor in flips:
                raw[int(where * len(raw))] ^= xor
            weights.write_bytes(bytes(raw))
            try:
                compress(src, Path(tmp) / "out", CompressConfig(threshold=0))
            except RankAdaptorError:
                pass
        else:  # a truncated file is always refused
            weights.write_bytes(bytes(raw[: int(cut * len(raw))]))
            with pytest.raises(RankAdaptorError):
                compress(src, Path(tmp) / "out", CompressConfig(threshold=0))
            assert not (Path(tmp) / "out").exists()
