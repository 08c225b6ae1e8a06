"""The LoRA-MoE file: experts, router and gate of every trained transformer in one `.safetensors`, and the export of
one expert as an ordinary LoRA.

Keys, per transformer label L (`single`, `high`, `low`):
    lora_moe.L.<lora_unet_...>.lora_down.weight [E, r, in]   lora_moe.L.<lora_unet_...>.lora_up.weight [E, out, r]
    lora_moe.L.<lora_unet_...>.alpha (0-dim)                  lora_moe.L.router.net.{0,2}.{weight,bias}
    lora_moe.L.gate.knots [K]
    DoRA experts (format 2): lora_moe.L.<lora_unet_...>.dora_scale [E, out, 1], each expert's magnitude in ComfyUI's
    convention (dora_scale ∘ (W + ΔW_e) / ||W||_row) on the weight it was trained on, so an exported expert is an
    ordinary DoRA LoRA file; loading turns them back into magnitudes over ||W + ΔW_e|| on the model at hand.
Header `loraid_studio.lora_moe` (JSON): format_version, spec (experts, ranks, routing), labels, model_kind, step,
router_ema, and `stage1`: per label the DiT file it was trained on and the fingerprint of the stage-1 merge that
DiT records (sha256 of its `loraid_studio.merge` header), so a mismatch can be named at load time. DoRA files also
hold `dora_base`: per label the fingerprint of the weights the scales were computed on (adapters/dora_base.py).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from backend.adapters.formats import save_lora
from backend.adapters.metadata import build_metadata
from backend.compose.provenance import MERGE_KEY
from backend.errors import UserError
from backend.fileio import save_safetensors_atomic
from backend.models.registry import EXPERT_STEMS
from backend.moe.network import MoeNetwork, MoeSpec

HEADER_KEY = "loraid_studio.lora_moe"
PREFIX = "lora_moe."
FORMAT_VERSION = 2  # 2: DoRA experts (`dora_scale`); LoRA-only files are still written as 1
DORA_CONVENTION = "base_norm"  # ComfyUI's reading of `dora_scale` (as adapters/network.py saves ordinary DoRA files)


@dataclass
class MoeFile:
    spec: MoeSpec
    labels: list[str]
    tensors: dict[str, torch.Tensor]
    header: dict
    metadata: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    def part(self, label: str) -> dict[str, torch.Tensor]:
        head = f"{PREFIX}{label}."
        return {key[len(head):]: value for key, value in self.tensors.items() if key.startswith(head)}

    def expert_modules(self, label: str) -> list[str]:
        return sorted({key.rsplit(".", 2)[0] for key in self.part(label) if key.endswith(".lora_down.weight")})


def stage1_fingerprint(dit: str | Path) -> dict:
    """What a (merged) DiT file says about the stage-1 merge it holds: its merge record's sha256 (None if unmerged)."""
    from safetensors import safe_open

    path = Path(dit)
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    record = None
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            record = (handle.metadata() or {}).get(MERGE_KEY) or record
    return {"dit": path.name, "merge": json.loads(record) if record else None,
            "fingerprint": hashlib.sha256(record.encode("utf-8")).hexdigest() if record else None}


def network_tensors(network: MoeNetwork) -> dict[str, torch.Tensor]:
    head = f"{PREFIX}{network.name}."
    tensors = {}
    for prefix, adapter in network.adapters.items():
        tensors[f"{head}{prefix}.lora_down.weight"] = adapter.lora_down.detach()
        tensors[f"{head}{prefix}.lora_up.weight"] = adapter.lora_up.detach()
        tensors[f"{head}{prefix}.alpha"] = torch.tensor(adapter.scale * adapter.rank, dtype=torch.float32)
        if adapter.use_dora:
            tensors[f"{head}{prefix}.dora_scale"] = adapter.base_norm_scales()
    for name, value in network.router.state_dict().items():
        tensors[f"{head}router.{name}"] = value.detach()
    tensors[f"{head}gate.knots"] = network.gate.knots.detach()
    return tensors


def save_moe(path: str | Path, networks: dict[str, MoeNetwork], *, model_kind: str, step: int, stage1: dict,
             router_ema: float = 0.0, extra: dict | None = None) -> Path:
    from backend.adapters.dora_base import base_fingerprint

    spec = next(iter(networks.values())).spec
    tensors = {}
    for network in networks.values():
        tensors.update(network_tensors(network))
    header = {"format_version": 2 if spec.use_dora else 1, "spec": spec.to_dict(), "labels": list(networks),
              "model_kind": model_kind, "step": int(step), "router_ema": float(router_ema), "stage1": stage1,
              **(extra or {})}
    if spec.use_dora:
        header["dora_base"] = {label: base_fingerprint({a.wan_name: a.target for a in network.adapters.values()})
                               for label, network in networks.items()}
    metadata = {HEADER_KEY: json.dumps(header, sort_keys=True), "modelspec.architecture": "wan/lora_moe",
                "modelspec.title": Path(path).stem}
    tensors = {key: value.detach().cpu().float().contiguous() for key, value in tensors.items()}
    return save_safetensors_atomic(tensors, path, metadata)


def is_moe_file(path: str | Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return HEADER_KEY in (handle.metadata() or {})
    except Exception:  # not a safetensors file at all: not ours either
        return False


def load_moe(path: str | Path) -> MoeFile:
    from safetensors import safe_open

    path = Path(path)
    _, metadata = read_moe_header(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception:  # truncated data: several exception types
        raise UserError(f"{path.name} is not a readable .safetensors file; pass a complete LoRA-MoE file.") from None
    header = json.loads(metadata[HEADER_KEY])
    return MoeFile(MoeSpec.from_dict(header["spec"]), list(header["labels"]), tensors, header, metadata, path)


def read_moe_header(path: str | Path) -> tuple[dict, dict]:
    """(the LoRA-MoE header, the file's metadata), reading no tensor: a form checks a picked file with it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"the LoRA-MoE file {path} does not exist; check the path.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    except Exception:  # corrupt header: several exception types
        raise UserError(f"{path.name} is not a readable .safetensors file; pass a complete LoRA-MoE file.") from None
    if HEADER_KEY not in metadata:
        from backend.generate.options import named  # the Generate tab's picker shows this sentence

        raise UserError(f"{path.name} is not a LoRA-MoE file (no {HEADER_KEY} header); load it as an ordinary LoRA "
                        f"among the {named('lora')} instead.")
    header = json.loads(metadata[HEADER_KEY])
    if int(header.get("format_version", 0)) > FORMAT_VERSION:
        raise UserError(f"{path.name} was written by a newer LoRA-MoE format ({header['format_version']}); update "
                        f"the app to read it.")
    return header, metadata


def read_moe_spec(path: str | Path) -> MoeSpec:
    """The experts, routing and ranks of a LoRA-MoE file, from its header only."""
    return MoeSpec.from_dict(read_moe_header(path)[0]["spec"])


@torch.no_grad()
def load_into(network: MoeNetwork, moe: MoeFile) -> None:
    """Copy the file's experts, router and gate for `network.name` into a network built from the same spec."""
    part = moe.part(network.name)
    if not part:
        raise UserError(f"{moe.path.name if moe.path else 'the file'} has no experts for the `{network.name}` "
                        f"transformer (it holds {', '.join(moe.labels)}).")
    missing = [prefix for prefix in network.adapters if f"{prefix}.lora_down.weight" not in part]
    if missing:
        raise UserError(f"the LoRA-MoE file lacks experts for {len(missing)} modules (first: {missing[0]}); it was "
                        f"trained on another model or other targets.")
    for prefix, adapter in network.adapters.items():
        down, up = part[f"{prefix}.lora_down.weight"], part[f"{prefix}.lora_up.weight"]
        if down.shape != adapter.lora_down.shape or up.shape != adapter.lora_up.shape:
            raise UserError(f"{prefix}: the file's experts have shape {tuple(down.shape)} / {tuple(up.shape)}, the "
                            f"model needs {tuple(adapter.lora_down.shape)} / {tuple(adapter.lora_up.shape)}; use the "
                            f"model the file was trained on.")
        adapter.lora_down.copy_(down)
        adapter.lora_up.copy_(up)
        adapter.scale = float(part[f"{prefix}.alpha"]) / adapter.rank
        if adapter.use_dora:
            scales = part.get(f"{prefix}.dora_scale")
            if scales is None or scales.numel() != adapter.magnitude.numel():
                raise UserError(f"{prefix}: the LoRA-MoE file has no DoRA scales of {adapter.num_experts} experts for "
                                f"this layer; the file is incomplete or for another model.")
            adapter.load_base_norm_scales(scales)
    network.router.load_state_dict({k[len("router."):]: v for k, v in part.items() if k.startswith("router.")})
    network.gate.knots.copy_(part["gate.knots"])


def export_expert(moe: MoeFile, expert: str, out: str | Path, labels: list[str] | None = None) -> list[Path]:
    """Write one expert as an ordinary LoRA (musubi / ComfyUI `lora_unet_*`), one file per transformer label:
    `out` itself for a single transformer, else `<out stem>-high_noise.safetensors` / `-low_noise`. The expert is
    written at gate 1 and τ 1 (the router and the timestep gate do not exist outside the MoE)."""
    index = moe.spec.expert_index(expert)
    labels = labels or moe.labels
    out = Path(out)
    written = []
    for label in labels:
        part = moe.part(label)
        if not part:
            raise UserError(f"the file has no `{label}` experts; pick one of {', '.join(moe.labels)}.")
        tensors = export_tensors(moe, expert, label)
        extra = {"loraid_studio.expert": "" if label == "single" else label,
                 "loraid_studio.lora_moe_expert": {"expert": expert, "index": index, "label": label,
                                                   "source": moe.path.name if moe.path else None,
                                                   "stage1": moe.header.get("stage1", {}).get(label)}}
        flags = export_flags(moe, label)
        metadata = build_metadata("lora", moe.spec.rank, moe.spec.alpha, list(moe.spec.network_args), flags,
                                  moe.header.get("model_kind"), step=moe.header.get("step"), extra=extra,
                                  title=f"{expert} ({label})")
        suffix = out.suffix or ".safetensors"
        path = out if len(labels) == 1 else out.with_name(f"{out.stem}-{EXPERT_STEMS[label]}{suffix}")
        written.append(save_lora(path, tensors, metadata))
    return written


def export_flags(moe: MoeFile, label: str) -> dict | None:
    """The header flags of an exported expert (how a loader reads its `dora_scale`); None for LoRA experts."""
    if not moe.spec.use_dora:
        return None
    return {"use_dora": True, "dora_convention": DORA_CONVENTION,
            "dora_base": (moe.header.get("dora_base") or {}).get(label)}


def export_tensors(moe: MoeFile, expert: str, label: str) -> dict[str, torch.Tensor]:
    """One expert of one transformer in the canonical LoRA layout (`lora_unet_*.lora_down.weight`, ...)."""
    index = moe.spec.expert_index(expert)
    part = moe.part(label)
    tensors = {}
    for prefix in moe.expert_modules(label):
        tensors[f"{prefix}.lora_down.weight"] = part[f"{prefix}.lora_down.weight"][index].clone()
        tensors[f"{prefix}.lora_up.weight"] = part[f"{prefix}.lora_up.weight"][index].clone()
        tensors[f"{prefix}.alpha"] = part[f"{prefix}.alpha"].clone()
        if f"{prefix}.dora_scale" in part:
            tensors[f"{prefix}.dora_scale"] = part[f"{prefix}.dora_scale"][index].reshape(-1, 1).clone()
    return tensors


def describe(moe: MoeFile) -> dict:
    """What `python -m backend inspect` shows for a LoRA-MoE file."""
    per_label = {}
    for label in moe.labels:
        modules = moe.expert_modules(label)
        part = moe.part(label)
        ranks = sorted({int(part[f"{p}.lora_down.weight"].shape[1]) for p in modules})
        knots = part.get("gate.knots")
        per_label[label] = {"modules": len(modules), "ranks": ranks,
                            "gate_tau": None if knots is None else [round(float(v), 4)
                                                                    for v in 2 * torch.sigmoid(knots)]}
    return {"format": "lora_moe", "experts": list(moe.spec.expert_names), "dora": moe.spec.use_dora,
            "routing_mode": moe.spec.routing_mode,
            "router_inputs": moe.spec.router_inputs, "top_k": moe.spec.top_k, "rank": moe.spec.rank,
            "alpha": moe.spec.alpha, "network_args": list(moe.spec.network_args), "transformers": per_label,
            "model_kind": moe.header.get("model_kind"), "step": moe.header.get("step"),
            "router_ema": moe.header.get("router_ema"), "stage1": moe.header.get("stage1"),
            "parameters": sum(t.numel() for t in moe.tensors.values())}


def format_text(info: dict) -> str:
    kind = "DoRA experts" if info.get("dora") else "experts"
    lines = [f"LoRA-MoE: {len(info['experts'])} {kind} ({', '.join(info['experts'])}), routing {info['routing_mode']} "
             f"on {info['router_inputs']}, top-{info['top_k']}, rank {info['rank']} alpha {info['alpha']:g}",
             f"model: {info['model_kind']}, step {info['step']}, {info['parameters']:,} parameters, "
             f"inference router EMA {info['router_ema']}"]
    for label, part in info["transformers"].items():
        lines.append(f"  {label}: {part['modules']} modules, ranks {part['ranks']}, τ at knots {part['gate_tau']}")
        stage1 = (info.get("stage1") or {}).get(label) or {}
        merged = stage1.get("merge")
        if merged:
            loras = ", ".join(f"{r.get('file')}×{r.get('multiplier', 1):g}" for r in merged.get("loras", []))
            lines.append(f"    trained on {stage1.get('dit')} (stage-1 merge {stage1.get('fingerprint', '')[:12]}: "
                         f"{loras})")
        elif stage1:
            lines.append(f"    trained on {stage1.get('dit')} (no stage-1 merge recorded)")
    if info["network_args"]:
        lines.append(f"network_args: {' '.join(info['network_args'])}")
    return "\n".join(lines)
