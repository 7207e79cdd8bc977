"""PARA: data-free, post-hoc rank compression of a PEFT LoRA adapter (the PARA paper).

For every module, ``dW = s * B @ A`` (B: d x r, A: r x k) has at most r non-zero singular values.
They come exactly from small factors: ``B = Q_B R_B`` and ``A^T = Q_A R_A`` (thin QR), then
``s * R_B @ R_A^T = U' S V'^T`` (an r x r SVD), so ``dW = (Q_B U') S (Q_A V')^T``. The d x k
product is never formed: cost O((d + k) r^2) per module instead of O(d k min(d, k)).

One global threshold over the (optionally normalised) singular values of all modules gives
non-uniform ranks. Ways to set it (exactly one):

* ``threshold``: keep every component whose score is >= T (T = 0 keeps everything: full rank).
* ``energy``: walk the components by descending score and stop as soon as the kept *raw*
  squared singular mass (the Frobenius energy of all dW) reaches the fraction E.
* ``target_params`` / ``keep_fraction``: a component of module m costs ``d_in + d_out``
  parameters (one more column of B and row of A), so costs differ between modules. We walk the
  components by descending score and keep the longest prefix whose cumulative cost is <= N. The
  cut is therefore still a single global threshold (everything scoring above it is kept) and the
  budget is never exceeded; the unused remainder is below the cost of the next component and is
  reported as ``budget_unused``. (A knapsack fill that skips an expensive component to take a
  cheaper lower-scoring one would break the single-threshold rule, so we do not do it.)

Scores (``normalize``): ``none`` = raw singular values of s*B@A (large-norm modules win);
``scale`` = sigma / the module's largest sigma (every module's top component scores 1, so each
module is judged by the shape of its own spectrum); ``fro`` = sigma / ||dW||_F of the module
(a score^2 is the share of that module's energy the component carries).

``min_rank`` K guarantees each module min(K, its rank) components; those are taken first and
count against a parameter budget. Modules left at rank 0 are dropped from the output adapter.
The compressed factors are balanced, ``B' = U sqrt(S)`` and ``A' = sqrt(S) V^T``, with the old
scale baked in; the output config writes ``lora_alpha = r`` per module (scale 1) through exact
``rank_pattern`` / ``alpha_pattern`` keys and ``use_rslora = False``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from rankadaptor.errors import RankAdaptorError
from rankadaptor.compress.adapter_io import LoraAdapter, LoraModule, output_config, read_adapter, write_adapter

log = logging.getLogger(__name__)

NORMALIZERS = ("none", "scale", "fro")


@dataclass
class CompressConfig:
    """Exactly one of target_params / keep_fraction / energy / threshold selects the cut."""

    target_params: int | None = None
    keep_fraction: float | None = None
    energy: float | None = None
    threshold: float | None = None
    normalize: str = "none"
    min_rank: int = 0

    def __post_init__(self) -> None:
        given = [n for n in ("target_params", "keep_fraction", "energy", "threshold") if getattr(self, n) is not None]
        if len(given) != 1:
            raise RankAdaptorError(
                f"give exactly one of target_params / keep_fraction / energy / threshold, got {given or 'none'}"
            )
        if self.normalize not in NORMALIZERS:
            raise RankAdaptorError(f"normalize={self.normalize!r} is not one of {', '.join(NORMALIZERS)}")
        if self.target_params is not None and (not isinstance(self.target_params, int) or self.target_params < 1):
            raise RankAdaptorError(f"target_params={self.target_params!r} must be a positive integer parameter count")
        if self.keep_fraction is not None and not 0.0 < self.keep_fraction <= 1.0:
            raise RankAdaptorError(f"keep_fraction={self.keep_fraction} must be in (0, 1] (e.g. 0.25 keeps a quarter)")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise RankAdaptorError(f"energy={self.energy} must be in (0, 1] (e.g. 0.95 keeps 95 % of the squared mass)")
        if self.threshold is not None and (not math.isfinite(self.threshold) or self.threshold < 0):
            raise RankAdaptorError(f"threshold={self.threshold} must be a finite number >= 0 (0 keeps full rank)")
        if not isinstance(self.min_rank, int) or self.min_rank < 0:
            raise RankAdaptorError(f"min_rank={self.min_rank!r} must be an integer >= 0")

    def describe(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Spectrum:
    """Exact thin SVD of one module's dW = U diag(S) V^T (float64, S descending).

    ``U`` / ``V`` are None for a values-only spectrum: the global cut needs only S, and keeping
    the float64 singular vectors of every module at once would cost twice the adapter's memory.
    """

    S: torch.Tensor  # q
    U: torch.Tensor | None = None  # d_out x q
    V: torch.Tensor | None = None  # d_in x q


def decompose(B: torch.Tensor, A: torch.Tensor, scale: float, vectors: bool = True) -> Spectrum:
    """SVD of scale * B @ A through QR factors; never forms the d_out x d_in product."""
    B64, A64 = B.detach().to(torch.float64), A.detach().to(torch.float64)
    if not vectors:  # R factors only: the Q factors are never materialised
        RB = torch.linalg.qr(B64, mode="r").R
        RA = torch.linalg.qr(A64.T, mode="r").R
        return Spectrum(S=torch.linalg.svdvals(scale * (RB @ RA.T)))
    QB, RB = torch.linalg.qr(B64)  # d x q1, q1 x r
    QA, RA = torch.linalg.qr(A64.T)  # k x q2, q2 x r
    core = scale * (RB @ RA.T)  # q1 x q2, at most r x r
    Uc, S, Vch = torch.linalg.svd(core, full_matrices=False)
    return Spectrum(S=S, U=QB @ Uc, V=QA @ Vch.T)


def scores(S: torch.Tensor, normalize: str) -> torch.Tensor:
    if normalize == "none":
        return S.clone()
    denom = S[0] if normalize == "scale" else torch.linalg.vector_norm(S)
    if S.numel() == 0 or denom <= 0:
        return torch.zeros_like(S)  # an all-zero update has nothing worth keeping
    return S / denom


def select_ranks(
    spectra: dict[str, Spectrum], costs: dict[str, int], config: CompressConfig
) -> tuple[dict[str, int], dict]:
    """New rank per module from one global cut; returns (ranks, details of the cut)."""
    names = list(spectra)
    floor = {n: min(config.min_rank, spectra[n].S.numel()) for n in names}
    # Candidates above each floor, ordered by descending score; ties keep model order and, within
    # a module, index order, so each module's kept set is always a prefix of its spectrum.
    candidates = []
    for mi, n in enumerate(names):
        sc = scores(spectra[n].S, config.normalize)
        candidates += [(float(sc[i]), mi, i) for i in range(floor[n], sc.numel())]
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    ranks = dict(floor)
    full_params = sum(spectra[n].S.numel() * costs[n] for n in names)
    detail: dict = {}

    if config.threshold is not None:
        for score, mi, i in candidates:
            if score >= config.threshold:
                ranks[names[mi]] += 1
        detail["threshold"] = config.threshold
        return ranks, detail

    if config.energy is not None:
        energy = {n: spectra[n].S.pow(2) for n in names}
        total = float(sum(e.sum() for e in energy.values()))
        kept = float(sum(energy[n][: floor[n]].sum() for n in names))
        cut = None
        for score, mi, i in candidates:
            if kept >= config.energy * total * (1 - 1e-12):
                break
            ranks[names[mi]] += 1
            kept += float(energy[names[mi]][i])
            cut = score
        detail.update(threshold=cut, energy_kept=kept / total if total > 0 else 1.0)
        return ranks, detail

    budget = config.target_params if config.target_params is not None else int(math.floor(config.keep_fraction * full_params))
    first_cost = costs[names[candidates[0][1]]] if candidates else 0
    _check_budget(budget, full_params, floor, costs, first_cost, config)
    used = sum(floor[n] * costs[n] for n in names)
    cut = None
    for score, mi, i in candidates:
        c = costs[names[mi]]
        if used + c > budget:
            break
        ranks[names[mi]] += 1
        used += c
        cut = score
    detail.update(threshold=cut, budget=budget, budget_used=used, budget_unused=budget - used)
    return ranks, detail


def _check_budget(budget: int, full_params: int, floor: dict, costs: dict, first_cost: int, config: CompressConfig) -> None:
    """Refuse budgets the single global cut cannot meet: above the adapter, or below its first step.

    The smallest useful budget is the --min-rank floor or, without one, the cost of the single
    highest-scoring component (whose module may be wider than the narrowest module).
    """
    if budget > full_params:
        raise RankAdaptorError(
            f"target of {budget} parameters is larger than the adapter itself ({full_params} parameters at "
            "full rank); choose a smaller --target-params, or use --threshold 0 to keep everything"
        )
    floor_cost = sum(floor[n] * costs[n] for n in floor)
    need = floor_cost or first_cost  # the floor alone is a valid adapter; without one, the first rank is needed
    if budget < need:
        why = f"the --min-rank {config.min_rank} floor" if floor_cost else "one rank of the highest-scoring module"
        raise RankAdaptorError(
            f"target of {budget} parameters is below {why} ({need} parameters); ask for at least {need}"
        )


def truncate(spectrum: Spectrum, rank: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced factors of the rank-``rank`` truncation: B' = U sqrt(S), A' = sqrt(S) V^T."""
    root = spectrum.S[:rank].sqrt()
    B = spectrum.U[:, :rank] * root
    A = (spectrum.V[:, :rank] * root).T
    return B.to(dtype), A.to(dtype)


def decompose_adapter(adapter: LoraAdapter, vectors: bool = False) -> tuple[dict[str, Spectrum], dict[str, int]]:
    """Exact spectra of every module (values only unless ``vectors``) and the cost of one rank of each."""
    from tqdm.auto import tqdm

    spectra, costs = {}, {}
    for name, m in tqdm(adapter.modules.items(), desc="SVD per module", total=len(adapter.modules)):
        spectra[name] = decompose(m.B, m.A, m.scale, vectors=vectors)
        costs[name] = m.d_in + m.d_out
    return spectra, costs


def compress_adapter(
    adapter: LoraAdapter, config: CompressConfig, spectra: dict[str, Spectrum] | None = None
) -> tuple[LoraAdapter, dict]:
    """Compress an in-memory adapter with PARA's global cut; returns the new adapter and the report."""
    if config.target_params is not None and config.target_params > adapter.params:  # fail before the SVDs
        raise RankAdaptorError(
            f"target of {config.target_params} parameters is larger than the adapter itself ({adapter.params} "
            "parameters); choose a smaller --target-params, or use --threshold 0 to keep everything"
        )
    if spectra is None:
        spectra, costs = decompose_adapter(adapter)
    else:
        costs = {n: m.d_in + m.d_out for n, m in adapter.modules.items()}
    ranks, detail = select_ranks(spectra, costs, config)
    return compress_to_ranks(adapter, ranks, spectra, settings=config.describe(), cut=detail)


def compress_to_ranks(
    adapter: LoraAdapter,
    ranks: dict[str, int],
    spectra: dict[str, Spectrum] | None = None,
    settings: dict | None = None,
    cut: dict | None = None,
) -> tuple[LoraAdapter, dict]:
    """Best rank-``ranks[m]`` approximation of every module (any allocation rule, e.g. uniform)."""
    if spectra is None:
        spectra, _ = decompose_adapter(adapter)
    unknown = set(ranks) - set(adapter.modules)
    if unknown:
        raise RankAdaptorError(f"ranks name modules the adapter does not have: {sorted(unknown)[:5]}")
    new_modules: dict[str, LoraModule] = {}
    rows = []
    for name, m in adapter.modules.items():
        S = spectra[name].S
        new_r = int(ranks.get(name, 0))
        if not 0 <= new_r <= S.numel():
            raise RankAdaptorError(f"rank {new_r} for {name} is outside 0..{S.numel()} (its exact rank bound)")
        total_e = float(S.pow(2).sum())
        dropped_e = float(S[new_r:].pow(2).sum())
        rows.append(
            {
                "module": name,
                "d_in": m.d_in,
                "d_out": m.d_out,
                "old_rank": m.r,
                "new_rank": new_r,
                "params_before": m.params,
                "params_after": new_r * (m.d_in + m.d_out),
                "energy": total_e,
                "discarded_energy": dropped_e,
                "discarded_energy_fraction": dropped_e / total_e if total_e > 0 else 0.0,
                "top_singular_value": float(S[0]) if S.numel() else 0.0,
                "dropped": new_r == 0,
            }
        )
        if new_r == 0:
            continue
        spectrum = spectra[name] if spectra[name].U is not None else decompose(m.B, m.A, m.scale)
        B, A = truncate(spectrum, new_r, m.A.dtype)  # one module's vectors alive at a time
        new_modules[name] = LoraModule(name=name, A=A, B=B, r=new_r, alpha=float(new_r), scale=1.0, embedding=m.embedding)

    new_config = output_config(adapter.config, new_modules)
    new_adapter = LoraAdapter(config=new_config, modules=new_modules, extra_tensors=adapter.extra_tensors, key_prefix=adapter.key_prefix)
    before, after = adapter.params, new_adapter.params
    total_e = sum(r["energy"] for r in rows)
    dropped_e = sum(r["discarded_energy"] for r in rows)
    report = {
        "settings": settings or {"ranks": "explicit"},
        "cut": cut or {},
        "totals": {
            "modules_before": len(adapter.modules),
            "modules_after": len(new_modules),
            "modules_dropped": [r["module"] for r in rows if r["dropped"]],
            "params_before": before,
            "params_after": after,
            "params_kept_fraction": after / before if before else 0.0,
            "energy": total_e,
            "discarded_energy": dropped_e,
            "discarded_energy_fraction": dropped_e / total_e if total_e > 0 else 0.0,
        },
        "modules": rows,
    }
    log.info("PARA: %d -> %d LoRA parameters (%d of %d modules kept)", before, after, len(new_modules), len(adapter.modules))
    return new_adapter, report


def save_compressed(out_dir: str | Path, adapter: LoraAdapter, report: dict, overwrite: bool = False) -> None:
    """Write the adapter and compress.json; the directory appears only when both are complete."""
    from rankadaptor.fileio import atomic_directory, write_json_atomic

    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        write_adapter(tmp, adapter)
        write_json_atomic(tmp / "compress.json", report)


def compress(adapter_dir: str | Path, out_dir: str | Path, config: CompressConfig, overwrite: bool = False) -> dict:
    """Read a PEFT LoRA adapter, compress it, write a new adapter + compress.json atomically."""
    from rankadaptor.fileio import refuse_same_path
    from rankadaptor.provenance import provenance, sha256_file

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    refuse_same_path(adapter_dir, out_dir)
    if out_dir.exists() and not overwrite:  # fail before the SVDs, not after
        raise RankAdaptorError(f"output directory {out_dir} already exists; choose another --out or remove it")
    adapter = read_adapter(adapter_dir)
    new_adapter, report = compress_adapter(adapter, config)
    report["input"] = {
        "adapter_dir": str(adapter_dir.resolve()),
        "adapter_model_sha256": sha256_file(adapter_dir / "adapter_model.safetensors"),
        "use_rslora": bool(adapter.config.get("use_rslora", False)),
        "r": adapter.config.get("r"),
        "lora_alpha": adapter.config.get("lora_alpha"),
        "has_rank_pattern": bool(adapter.config.get("rank_pattern")),
    }
    report["method"] = "PARA (exact SVD via QR, one global threshold)"
    report["provenance"] = provenance(None)
    save_compressed(out_dir, new_adapter, report, overwrite=overwrite)
    return report


# ----------------------------------------------------------------------------- baselines
# Allocation rules PARA is compared against at the same parameter budget (benchmarks/para_quality).


def uniform_ranks_for_budget(spectra: dict[str, Spectrum], costs: dict[str, int], budget: int) -> dict[str, int]:
    """The largest single rank r (capped by each module's rank bound) with sum r * cost <= budget."""
    for r in range(max(s.S.numel() for s in spectra.values()), 0, -1):
        ranks = {n: min(r, s.S.numel()) for n, s in spectra.items()}
        if sum(ranks[n] * costs[n] for n in ranks) <= budget:
            return ranks
    raise RankAdaptorError(f"budget {budget} is below rank 1 in every module ({sum(costs.values())} parameters)")


def _peft_cutoff(S: torch.Tensor, tau: float) -> int:
    """PEFT's per-layer energy rule (peft.tuners.lora.conversion._find_cutoff_index): smallest k with
    the top-k squared singular values >= tau of the module's total."""
    try:
        from peft.tuners.lora.conversion import _find_cutoff_index
    except ImportError:  # older/newer PEFT: the same rule, written out
        cs = torch.cumsum(S**2, 0)
        return min(int(torch.searchsorted(cs, tau * cs[-1]).item()) + 1, S.numel())
    return min(_find_cutoff_index(S, tau), S.numel())


def energy_rule_ranks_for_budget(
    spectra: dict[str, Spectrum], costs: dict[str, int], budget: int, iterations: int = 50
) -> tuple[dict[str, int], float]:
    """PEFT's per-module energy threshold tau, bisected to the largest tau whose ranks fit ``budget``."""
    def ranks_at(tau: float) -> dict[str, int]:
        return {n: _peft_cutoff(s.S, tau) for n, s in spectra.items()}

    def cost(ranks: dict[str, int]) -> int:
        return sum(ranks[n] * costs[n] for n in ranks)

    lo, hi = 0.0, 1.0
    if cost(ranks_at(lo)) > budget:
        raise RankAdaptorError(f"budget {budget} is below the energy rule's minimum (rank 1 everywhere)")
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if cost(ranks_at(mid)) <= budget:
            lo = mid
        else:
            hi = mid
    return ranks_at(lo), lo
