"""Which training settings apply to which model: the A14B expert fields only to two-expert models, the TI2V task
only to TI2V-5B. A form hides the others (their values are kept and ignored by the trainer)."""
from __future__ import annotations

from backend.errors import UserError
from backend.models.registry import get_model_kind

EXPERT_FIELDS = ("dit_high_noise", "expert", "timestep_boundary")
TI2V_FIELDS = ("ti2v_mode",)
MODEL_FIELDS = (*EXPERT_FIELDS, *TI2V_FIELDS)


def fields_for(model_kind: str) -> dict[str, bool]:
    """field -> whether it applies to `model_kind` (an unknown kind shows them all)."""
    try:
        kind = get_model_kind(model_kind)
    except UserError:
        return {name: True for name in MODEL_FIELDS}
    return {**{name: kind.has_experts for name in EXPERT_FIELDS}, **{name: kind.task == "ti2v" for name in TI2V_FIELDS}}
