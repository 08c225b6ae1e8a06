"""What a composed file records about its inputs: file name, sha256, multiplier, LORAID, allocation, algorithm."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import torch

from backend.adapters.formats import LoraFile

MERGE_KEY = "loraid_studio.merge"
MERGED_LORAIDS_KEY = "loraid_studio.merged_loraids"
_CHUNK = 1 << 20


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def lora_record(lora: LoraFile, multiplier: float | None = None) -> dict[str, Any]:
    """One input LoRA as it is listed in a composed file's metadata."""
    record: dict[str, Any] = {
        "file": lora.path.name if lora.path else None,
        "sha256": sha256_of(lora.path) if lora.path else None,
        "algo": lora.algo,
        "modules": len(lora.modules),
        "loraid": lora.info["loraid"],
        "allocation": lora.info["allocation"],
    }
    if multiplier is not None:
        record["multiplier"] = float(multiplier)
    return record


def stored_precision(lora: LoraFile) -> str:
    """The precision a LoRA file stores its weights in, as `save_lora` names it (fp32 when mixed)."""
    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    dtypes = {tensor.dtype for key, tensor in lora.tensors.items() if not key.endswith(".alpha")}
    return names.get(dtypes.pop(), "fp32") if len(dtypes) == 1 else "fp32"


def loraids_of(records: Iterable[dict[str, Any]]) -> list[int]:
    return sorted({record["loraid"] for record in records if record.get("loraid") is not None})


def as_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
