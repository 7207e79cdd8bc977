"""The super-adapter as RankAdaptor's cheap fidelity: a rank plan scored in memory, without training.

A real search trial recovers the pruned model at the plan's ranks and measures it (a minute on this
CPU). Here one wide super-adapter (``recover --method super``) is cut to the plan instead
(``compress.cut.InMemoryCut``: a rank per module, nothing recomputed, nothing written) and the plan
is scored by the next-token loss on a fixed *search split*: a few validation blocks of the recovery
corpus (the last blocks of its token stream, never trained on by ``recover``). The split is checked
to share no 32-token window with the Brown held-out text that every final comparison
(``experiments.measure``) uses, so a pick cannot win by fitting the test text.

``SuperFidelity(ranks, seed, fidelity)`` follows the search's objective contract
(``search/objective.py``; ``direction`` = "minimize", ``space.to_rank_plan`` turns a vector of a
per-layer or per-module space into the plan). ``"screen"`` is the cheap score, deterministic and
cached per plan; ``"full"`` the optional high fidelity: the cut fine-tuned ``finetune_steps`` steps
on the given seed, scored on the same split (without fine-tuning it equals the cheap score);
``"final"``, the re-evaluation of the pick against uniform, scores the cut (fine-tuned if ``"full"``
fine-tunes) on THE held-out text (``eval.heldout_perplexity``, as log perplexity), never scored on.

Also here: the allocators' plans for the initial design (PARA's global threshold, uniform truncation,
PEFT's energy rule, all cut from the same adapter), data-free source tasks for the MLP surrogate's
meta-learning (the discarded singular-value energy of a plan, three normalisations), and the
validity statistic (Spearman with a bootstrap interval).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rankadaptor.errors import RankAdaptorError

log = logging.getLogger(__name__)

DISJOINT_WINDOW = 32  # tokens: a shared window this long means shared text, not a common phrase


# ---- the search split -------------------------------------------------------------------------------
@dataclass
class SearchSplit:
    blocks: list[list[int]]  # the scored token blocks
    data: Any  # the RecoveryData they come from (its train split is what a fine-tune of a cut trains on)
    identity: dict = field(default_factory=dict)


def search_split(tokenizer, n_blocks: int = 4, seq_len: int = 128, data=None, check: bool = True) -> SearchSplit:
    """``n_blocks`` of the recovery corpus's validation blocks (exactly those ``recover`` holds out with its
    default ``max_val``, so no recovery run trains on them), spread evenly over them."""
    from rankadaptor.data import RecoveryData, load_recovery_data
    from rankadaptor.lora.recover import RecoveryConfig

    if not isinstance(n_blocks, int) or n_blocks < 1:
        raise RankAdaptorError(f"search split size {n_blocks!r} must be an integer >= 1 (blocks of {seq_len} tokens)")
    recovery = data if isinstance(data, RecoveryData) else \
        load_recovery_data(data, tokenizer, seq_len=seq_len, max_val=RecoveryConfig().max_val)
    if n_blocks > len(recovery.val):
        raise RankAdaptorError(f"the search split asks for {n_blocks} blocks but the recovery data has only "
                               f"{len(recovery.val)} validation blocks; ask for at most {len(recovery.val)}")
    pick = np.unique(np.round(np.linspace(0, len(recovery.val) - 1, n_blocks)).astype(int))
    blocks = [recovery.val[i] for i in pick]
    if check:
        check_disjoint(blocks, tokenizer)
    identity = {"source": recovery.identity.get("source"), "sha256": recovery.identity.get("sha256"),
                "val_blocks": [int(i) for i in pick], "seq_len": seq_len, "tokens": sum(map(len, blocks))}
    return SearchSplit(blocks, recovery, identity)


def check_disjoint(blocks: list[list[int]], tokenizer, heldout: list[str] | None = None,
                   window: int = DISJOINT_WINDOW) -> None:
    """Refuse a search split that shares any ``window``-token run with the held-out evaluation text."""
    from rankadaptor.eval.perplexity import paragraphs, token_stream

    if heldout is None:  # THE held-out text (eval.heldout_perplexity's)
        from rankadaptor.assets import text_corpus_path

        heldout = paragraphs(text_corpus_path("heldout"))
    stream = token_stream(tokenizer, heldout)
    seen = {hash(tuple(stream[i:i + window])) for i in range(max(0, len(stream) - window + 1))}
    for b, block in enumerate(blocks):
        for i in range(max(0, len(block) - window + 1)):
            if hash(tuple(block[i:i + window])) in seen:
                raise RankAdaptorError(f"search split block {b} shares a {window}-token run with the held-out text "
                                       "the final comparisons use; take the search split from the recovery corpus "
                                       "(--data), not from the held-out text")


# ---- the objective ----------------------------------------------------------------------------------
class SuperFidelity:
    """``objective(ranks, seed, fidelity) -> loss`` of the super-adapter cut to ``space.to_rank_plan(ranks)``."""

    direction = "minimize"
    target = "loss"

    def __init__(self, model, tokenizer, adapter_dir, space, split: SearchSplit, how: str = "svd",
                 finetune_steps: int = 0, finetune: dict | None = None, identity: dict | None = None,
                 final_tokens: int = 4096):
        from rankadaptor.compress.adapter_io import read_adapter
        from rankadaptor.compress.cut import InMemoryCut

        if not isinstance(finetune_steps, int) or finetune_steps < 0:
            raise RankAdaptorError(f"finetune steps {finetune_steps!r} must be an integer >= 0")
        self.adapter_dir = Path(adapter_dir)
        self.adapter = read_adapter(adapter_dir)
        self.model, self.tokenizer, self.space, self.split = model, tokenizer, space, split
        self.how, self.finetune_steps, self.finetune = how, finetune_steps, dict(finetune or {})
        self.final_tokens = final_tokens
        self.cut = InMemoryCut(model, self.adapter, how, adapter_dir=adapter_dir, identity=identity)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self.cache: dict[tuple, float] = {}
        self.stats = {"evaluations": 0, "cache_hits": 0, "seconds": 0.0, "final_scores": 0, "finetunes": 0,
                      "finetune_seconds": 0.0}

    def close(self) -> None:
        """Take the cut's hooks off the model: it is the plain base model again (for PEFT, training, a new cut)."""
        self.cut.remove()

    def __enter__(self) -> "SuperFidelity":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def identity(self) -> dict[str, Any]:
        from rankadaptor.provenance import sha256_file

        return {"objective": "loss", "fidelity": "super", "cut": self.how, "finetune_steps": self.finetune_steps,
                "finetune": self.finetune, "search_split": self.split.identity, "final_tokens": self.final_tokens,
                "super_adapter": {"path": str(self.adapter_dir.resolve()), "params": self.adapter.params,
                                  "sha256": sha256_file(self.adapter_dir / "adapter_model.safetensors")}}

    def plan_of(self, ranks):
        return self.space.to_rank_plan(ranks)

    def module_ranks(self, ranks) -> dict[str, int]:
        return self.plan_of(ranks).module_ranks(self.model)

    def __call__(self, ranks, seed: int = 0, fidelity: str = "screen") -> float:
        if fidelity not in ("screen", "full", "final"):
            raise RankAdaptorError(f"fidelity {fidelity!r} unknown; choose from ['screen', 'full', 'final']")
        module_ranks = self.module_ranks(ranks)
        if fidelity != "screen" and self.finetune_steps:
            return self.finetuned(module_ranks, seed, heldout=fidelity == "final")
        key = (fidelity == "final", tuple(sorted(module_ranks.items())))  # deterministic: cached
        if key in self.cache:
            self.stats["cache_hits"] += 1
            return self.cache[key]
        t0 = time.perf_counter()
        self.cut.set_ranks(module_ranks)
        loss = self._heldout_loss(self.model) if fidelity == "final" else self._split_loss(self.model)
        self.stats["evaluations" if fidelity != "final" else "final_scores"] += 1
        self.stats["seconds"] += time.perf_counter() - t0
        self.cache[key] = loss
        return loss

    def _heldout_loss(self, model) -> float:
        from rankadaptor.eval import heldout_perplexity

        return math.log(heldout_perplexity(model.eval(), self.tokenizer, n_tokens=self.final_tokens).ppl)

    def _split_loss(self, model) -> float:
        from rankadaptor.lora.recover import RecoveryConfig, validation_loss

        n = len(self.split.blocks)
        return validation_loss(model, self.split.blocks, self.pad_id, RecoveryConfig(batch_size=n, micro_batch_size=n))

    def finetuned(self, module_ranks: dict[str, int], seed: int, heldout: bool = False) -> float:
        """High fidelity: the cut fine-tuned a few steps (seeded), scored on the search split (or held-out text)."""
        from rankadaptor.compress.cut import cut
        from rankadaptor.data import RecoveryData
        from rankadaptor.lora.recover import RecoveryConfig, recover
        from rankadaptor.lora.super_adapter import StartFromAdapter

        t0 = time.perf_counter()
        sub, _ = cut(self.adapter, module_ranks, self.how)
        self.cut.remove()  # a hook-free copy of the base model to wrap and train
        try:
            base = copy.deepcopy(self.model)
        finally:
            self.cut.attach()
        data = RecoveryData(train=self.split.data.train, val=self.split.blocks, identity=self.split.data.identity)
        config = RecoveryConfig(**{"batch_size": 4, "seq_len": len(self.split.blocks[0]), "lr": 2e-4,
                                   **self.finetune, "max_steps": self.finetune_steps, "seed": int(seed)})
        res = recover(base, self.tokenizer, method=StartFromAdapter(sub), config=config, data=data)
        loss = self._heldout_loss(res.model) if heldout else float(res.record["val_loss"])  # val set = search split
        self.stats["finetunes"] += 1
        self.stats["finetune_seconds"] += time.perf_counter() - t0
        return loss


# ---- initial design: the allocators' plans ----------------------------------------------------------
def allocator_plans(adapter, model, budget: int) -> list[tuple[str, Any]]:
    """(label, RankPlan) of PARA's global threshold, uniform truncation and PEFT's energy rule at ``budget``.

    Per-module plans; ``search.study.seed_vectors`` brings them into a search space (exactly per
    module; per layer, each layer's parameter-weighted mean rank, snapped and repaired)."""
    from rankadaptor.compress.cut import rule_ranks
    from rankadaptor.compress.para import decompose_adapter
    from rankadaptor.lora.ranks import module_costs
    from rankadaptor.search.space import SearchSpace

    spectra, _ = decompose_adapter(adapter)
    every_module = SearchSpace.for_model(module_costs(model), "module", fixed_first=0, fixed_last=0,
                                         candidates=tuple(range(0, max(m.r for m in adapter.modules.values()) + 1)))
    out = []
    for rule in ("para", "uniform", "energy"):
        ranks = rule_ranks(rule, adapter, int(budget), spectra)
        full = {n: int(ranks.get(n, 0)) for layer in every_module.module_names for n in layer}
        out.append((rule, every_module.to_rank_plan(every_module.from_module_ranks(full))))
    return out


# ---- data-free source tasks for meta-learning -------------------------------------------------------
def energy_tasks(space, fidelity: SuperFidelity, n: int = 2000, seed: int = 0) -> list:
    """Plans of the space scored by minus their discarded singular-value energy (three normalisations).

    An SVD cut to rank b discards Σ_{i>b} σ_i² of a module; a plan that discards less energy tends to
    lose less. These cost microseconds, so they pre-train the performance model (Reptile) before the
    first real score; the online fit on cheap evaluations then corrects them.
    """
    from rankadaptor.compress.para import decompose_adapter
    from rankadaptor.search.meta import MetaTask

    spectra, _ = decompose_adapter(fidelity.adapter)
    plans = space.sample(n, np.random.default_rng(seed))
    names = list(spectra)
    energy = {m: spectra[m].S.double().pow(2).numpy() for m in names}
    tails = {m: np.concatenate([np.cumsum(e[::-1])[::-1], [0.0]]) for m, e in energy.items()}  # tails[b] = Σ_{i>=b}
    total = sum(float(e.sum()) for e in energy.values())
    raw, per_module, top = [], [], []
    for vec in plans:
        ranks = fidelity.module_ranks(vec)
        dropped = {m: tails[m][min(ranks.get(m, 0), len(energy[m]))] for m in names}
        raw.append(-sum(dropped.values()) / total)
        per_module.append(-np.mean([dropped[m] / max(energy[m].sum(), 1e-30) for m in names]))
        top.append(-np.mean([np.sqrt(dropped[m]) / max(np.sqrt(energy[m][0]), 1e-30) for m in names]))
    X = space.features(plans)
    return [MetaTask(f"energy-{k}", X, np.asarray(y)) for k, y in (("none", raw), ("fro", per_module), ("scale", top))]


# ---- validity ---------------------------------------------------------------------------------------
def spearman_ci(cheap, real, n_boot: int = 2000, seed: int = 0) -> dict:
    """Spearman between cheap and real scores with a 95 % percentile bootstrap interval over plans."""
    from scipy import stats

    cheap, real = np.asarray(cheap, float), np.asarray(real, float)
    if len(cheap) != len(real):
        raise RankAdaptorError(f"validity needs paired scores, got {len(cheap)} and {len(real)}")
    if len(cheap) < 3 or np.std(cheap) == 0 or np.std(real) == 0:
        return {"spearman": None, "ci_low": None, "ci_high": None, "p_value": None, "n": int(len(cheap)),
                "note": "no test (fewer than 3 plans or no spread)"}
    res = stats.spearmanr(cheap, real)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(cheap), len(cheap))
        if np.std(cheap[i]) > 0 and np.std(real[i]) > 0:
            boots.append(stats.spearmanr(cheap[i], real[i]).statistic)
    low, high = (np.percentile(boots, [2.5, 97.5]) if boots else (np.nan, np.nan))
    return {"spearman": float(res.statistic), "ci_low": float(low), "ci_high": float(high),
            "p_value": float(res.pvalue), "n": int(len(cheap))}
