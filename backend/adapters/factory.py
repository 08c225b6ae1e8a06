"""Which adapter class a set of canonical tensors (or an algorithm name) means, and building one from tensors."""
from __future__ import annotations

import torch
import torch.nn as nn

from backend.adapters.adapter_base import AdapterModule
from backend.adapters.loha import LoHaAdapter
from backend.adapters.lokr import LoKrAdapter
from backend.adapters.lora import LoRAAdapter
from backend.errors import UserError

FAMILY_CLASSES: dict[str, type[AdapterModule]] = {"lora": LoRAAdapter, "loha": LoHaAdapter, "lokr": LoKrAdapter}
# network algorithm -> tensor family (LoRA, LoCon and DoRA share one key layout)
ALGO_FAMILY = {"lora": "lora", "locon": "lora", "dora": "lora", "loha": "loha", "lokr": "lokr"}
_UNSUPPORTED = {"hada_t1": "Tucker (CP) LoHa", "hada_t2": "Tucker (CP) LoHa", "lokr_t1": "Tucker (CP) LoKr",
                "lokr_t2": "Tucker (CP) LoKr"}


def parts_family(wan_name: str, parts: dict[str, torch.Tensor]) -> str:
    """"lora", "loha" or "lokr" from one module's tensor suffixes; anything else is a UserError."""
    for suffix, what in _UNSUPPORTED.items():
        if suffix in parts:
            raise UserError(f"`{wan_name}` is a {what} module (`{suffix}`), which this app cannot apply; "
                            f"re-train or convert it without use_tucker / CP decomposition.")
    families = {"loha" if s.startswith("hada_") else "lokr" if s.startswith("lokr_") else "lora"
                for s in parts if s not in ("alpha", "dora_scale")}
    if len(families) != 1:
        raise UserError(f"`{wan_name}` mixes tensors of {sorted(families) or 'no'} adapter algorithms; "
                        f"the file is damaged or not a LoRA-family file.")
    return families.pop()


def adapter_from_canonical(wan_name: str, target: nn.Module, parts: dict[str, torch.Tensor],
                           **common) -> AdapterModule:
    """An adapter of the file's algorithm, rank and scale holding exactly `parts` (DoRA when `dora_scale` is there)."""
    family = parts_family(wan_name, parts)
    return FAMILY_CLASSES[family].from_canonical(wan_name, target, parts, **common)
