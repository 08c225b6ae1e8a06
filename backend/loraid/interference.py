"""How much two LoRAs interfere: in weight space (from their factors) and in function space (on a model).

Weight space, per module both LoRAs change, with ΔW = s·U·D (U = lora_up [out, r], D = lora_down [r, in]):
- ⟨ΔW1, ΔW2⟩_F = s1·s2·trace((U1ᵀU2)(D2D1ᵀ)) and ‖ΔW‖_F² = s²·trace((UᵀU)(DDᵀ)): r x r products only, ΔW is
  never formed; cosine = ⟨ΔW1, ΔW2⟩ / (‖ΔW1‖·‖ΔW2‖).
- subspace overlap: cosines of the principal angles between the column spaces of U1 and U2 (output side) and the
  row spaces of D1 and D2 (input side), from an orthonormal basis (QR, rank-checked by an SVD of R) and the
  singular values of Q1ᵀQ2; reported as the mean cos² (0: orthogonal subspaces, 1: one inside the other) and the
  largest cosine. LoHa / LoKr have no low-rank factors: their ΔW is formed, and subspaces are not reported.
  DoRA modules are compared by their low-rank direction update (magnitudes are left out).

Function space, on probe inputs x: cross-talk of B on A = ‖f_AB(x) − f_A(x)‖ / ‖f_A(x) − f_0(x)‖, i.e. how much
adding B moves A's output, relative to how much A moved the base model. `model_fn(loras_with_multipliers, x)`
runs the model with those LoRAs applied (see `report.engine_model_fn`), so any engine can plug in.

Disjoint blocks guarantee independent weights, not independent outputs: B's blocks still process A's inputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from backend.adapters.deltas import lokr_delta, lokr_half, loha_delta

Parts = Mapping[str, torch.Tensor]
ModelFn = Callable[[Sequence[tuple[Any, float]], Any], torch.Tensor]
BASIS_TOLERANCE = 1e-6


# --- factors -----------------------------------------------------------------------------------------------------
def _scale(parts: Parts, rank: int | None) -> float:
    if "alpha" not in parts or rank is None:
        return 1.0
    alpha = float(parts["alpha"].float().item())
    return 1.0 if alpha == 0.0 else alpha / rank


def lora_factors(parts: Parts) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """(U [out, r], D [r, in·k], scale) of a LoRA / LoCon / DoRA module; None for LoHa / LoKr."""
    if "lora_down.weight" not in parts:
        return None
    down = parts["lora_down.weight"].double()
    up = parts["lora_up.weight"].double()
    rank = down.shape[0]
    return up.reshape(up.shape[0], rank), down.reshape(rank, -1), _scale(parts, rank)


def dense_delta(parts: Parts) -> torch.Tensor:
    """ΔW [out, in·k] of any module (formed; used for LoHa / LoKr and for checking the factor formulas)."""
    factors = lora_factors(parts)
    if factors is not None:
        up, down, scale = factors
        return scale * (up @ down)
    floats = {key: value.double() for key, value in parts.items()}
    if "hada_w1_a" in floats:
        w1b = floats["hada_w1_b"].reshape(floats["hada_w1_b"].shape[0], -1)
        shape = (floats["hada_w1_a"].shape[0], w1b.shape[1])
        return loha_delta(floats["hada_w1_a"], w1b, floats["hada_w2_a"],
                          floats["hada_w2_b"].reshape(floats["hada_w2_b"].shape[0], -1),
                          _scale(floats, w1b.shape[0]), shape)
    first = lokr_half(floats.get("lokr_w1"), floats.get("lokr_w1_a"), floats.get("lokr_w1_b"))
    second = lokr_half(floats.get("lokr_w2"), floats.get("lokr_w2_a"), floats.get("lokr_w2_b"))
    rank = next((floats[n].shape[0] for n in ("lokr_w2_b", "lokr_w1_b") if n in floats), None)
    second = second.reshape(second.shape[0], -1)
    shape = (first.shape[0] * second.shape[0], first.shape[1] * second.shape[1])
    return lokr_delta(first, second, _scale(floats, rank), shape)


def factor_inner(u1: torch.Tensor, d1: torch.Tensor, u2: torch.Tensor, d2: torch.Tensor) -> float:
    """⟨U1·D1, U2·D2⟩_F = trace((U1ᵀU2)(D2D1ᵀ)) without forming either product."""
    return float(torch.trace((u1.T @ u2) @ (d2 @ d1.T)))


def factor_norm(u: torch.Tensor, d: torch.Tensor) -> float:
    return math.sqrt(max(factor_inner(u, d, u, d), 0.0))


def orthonormal_basis(matrix: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis [n, rank] of the column space (QR, then an SVD of the small R to drop null directions)."""
    q, r = torch.linalg.qr(matrix.double())
    left, singular, _ = torch.linalg.svd(r)
    if singular.numel() == 0 or singular[0] == 0:
        return q[:, :0]
    keep = singular > singular[0] * BASIS_TOLERANCE
    return q @ left[:, keep]


def principal_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between the column spaces of a and b, largest first."""
    qa, qb = orthonormal_basis(a), orthonormal_basis(b)
    if qa.shape[1] == 0 or qb.shape[1] == 0:
        return torch.zeros(0, dtype=torch.float64)
    return torch.linalg.svdvals(qa.T @ qb).clamp(0.0, 1.0)


def subspace_overlap(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """{"mean_cos2": Σcos²/min(rank), "max_cos": largest cosine} of the column spaces of a and b."""
    cosines = principal_cosines(a, b)
    if cosines.numel() == 0:
        return {"mean_cos2": 0.0, "max_cos": 0.0}
    return {"mean_cos2": float((cosines ** 2).sum() / cosines.numel()), "max_cos": float(cosines[0])}


# --- weight space ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModuleInterference:
    module: str
    cosine: float | None  # None when a ΔW is zero
    norm_a: float
    norm_b: float
    output_overlap: dict[str, float] | None  # column spaces of U (None for LoHa / LoKr)
    input_overlap: dict[str, float] | None  # row spaces of D
    method: str  # "factors" or "formed ΔW"


def module_interference(module: str, parts_a: Parts, parts_b: Parts) -> ModuleInterference:
    fa, fb = lora_factors(parts_a), lora_factors(parts_b)
    if fa is not None and fb is not None:
        (ua, da, sa), (ub, db, sb) = fa, fb
        inner = sa * sb * factor_inner(ua, da, ub, db)
        norm_a, norm_b = abs(sa) * factor_norm(ua, da), abs(sb) * factor_norm(ub, db)
        output, input_side = subspace_overlap(ua, ub), subspace_overlap(da.T, db.T)
        method = "factors"
    else:
        delta_a, delta_b = dense_delta(parts_a), dense_delta(parts_b)
        inner = float((delta_a * delta_b).sum())
        norm_a, norm_b = float(delta_a.norm()), float(delta_b.norm())
        output = input_side = None
        method = "formed ΔW"
    cosine = inner / (norm_a * norm_b) if norm_a > 0 and norm_b > 0 else None
    return ModuleInterference(module, cosine, norm_a, norm_b, output, input_side, method)


@dataclass(frozen=True)
class WeightSpacePair:
    a: str
    b: str
    modules: list[ModuleInterference]

    @property
    def total_cosine(self) -> float | None:
        """cos between the two LoRAs' whole updates restricted to the shared modules."""
        inner = sum(m.cosine * m.norm_a * m.norm_b for m in self.modules if m.cosine is not None)
        norm_a = math.sqrt(sum(m.norm_a ** 2 for m in self.modules))
        norm_b = math.sqrt(sum(m.norm_b ** 2 for m in self.modules))
        return inner / (norm_a * norm_b) if norm_a > 0 and norm_b > 0 else None


def weight_space_pair(a: str, b: str, modules_a: Mapping[str, Parts], modules_b: Mapping[str, Parts]) -> WeightSpacePair:
    """Interference over the modules both LoRAs change (module name -> canonical parts, e.g. `LoraFile.parts`)."""
    shared = [name for name in modules_a if name in modules_b]
    return WeightSpacePair(a, b, [module_interference(name, modules_a[name], modules_b[name]) for name in shared])


# --- function space ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CrossTalk:
    on: str  # the LoRA whose output is disturbed (A)
    by: str  # the LoRA added (B)
    ratio: float | None  # ‖f_AB − f_A‖ / ‖f_A − f_0‖; None when A changes nothing on the probes
    added_change: float  # ‖f_AB − f_A‖
    own_change: float  # ‖f_A − f_0‖


def _norm(tensors: Sequence[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


def cross_talk(model_fn: ModelFn, a: Any, b: Any, probes: Sequence[Any], multiplier_a: float = 1.0,
               multiplier_b: float = 1.0, names: tuple[str, str] = ("A", "B")) -> CrossTalk:
    """Cross-talk of B on A over all probes (norms taken over every probe's output together)."""
    base = [model_fn([], x) for x in probes]
    alone = [model_fn([(a, multiplier_a)], x) for x in probes]
    both = [model_fn([(a, multiplier_a), (b, multiplier_b)], x) for x in probes]
    added = _norm([ab - fa for ab, fa in zip(both, alone)])
    own = _norm([fa - f0 for fa, f0 in zip(alone, base)])
    return CrossTalk(names[0], names[1], added / own if own > 0 else None, added, own)


CROSS_TALK_SMALL, CROSS_TALK_LARGE = 0.1, 0.5  # the verdict's bounds on ‖f_AB − f_A‖ / ‖f_A − f_0‖
COSINE_ALIGNED = 0.5  # |cos ΔW| from which two updates of the same modules count as (anti-)aligned
COSINE_INDEPENDENT = 0.1  # and below which as nearly independent


CROSS_TALK_SCALE = (f"small under {CROSS_TALK_SMALL:g}, noticeable under {CROSS_TALK_LARGE:g}, "
                    f"large from {CROSS_TALK_LARGE:g}")


def cross_talk_level(ratio: float | None) -> str | None:
    """small / noticeable / large on CROSS_TALK_SCALE; None when the ratio is undefined."""
    if ratio is None:
        return None
    return "small" if ratio < CROSS_TALK_SMALL else "noticeable" if ratio < CROSS_TALK_LARGE else "large"


def cross_talk_verdict(ratio: float | None, on: str, by: str) -> str:
    """What the cross-talk of `by` on `on` means for the user, in one sentence."""
    level = cross_talk_level(ratio)
    if level is None:
        return f"not judged: {on} changes nothing on the probes"
    if level == "small":
        return f"small: loading {by} beside {on} leaves {on}'s effect nearly as it is"
    if level == "noticeable":
        return (f"noticeable: {by} shifts {on}'s effect; check {on}'s prompts with both loaded, or lower {by}'s "
                "multiplier")
    return (f"large: {by} moves {on}'s output at least half as much as {on} itself does; expect {on} to look "
            f"different with both loaded, or lower {by}'s multiplier")


def weight_verdict(cosine: float | None) -> str:
    """What the cosine of two LoRAs' ΔW over the modules they share means, in words."""
    if cosine is None:
        return "not judged: one of them changes nothing there"
    if cosine >= COSINE_ALIGNED:
        return "aligned: they push these weights the same way, so together their effect there adds up"
    if cosine <= -COSINE_ALIGNED:
        return "opposed: they push these weights opposite ways, so together they partly cancel there"
    if abs(cosine) < COSINE_INDEPENDENT:
        return "nearly independent directions, but they still change the same weights"
    return "partly aligned: they change the same weights in related directions"


STATEMENT = ("Disjoint blocks guarantee independent weights, not independent outputs: merging or loading one LoRA "
             "never changes another's tensors, but every block processes every input, so a LoRA's blocks still "
             "act on features another LoRA's prompts produce. Cross-talk measures how much.")
