"""Checkpoints of a run: LoRA files with metadata, the LORAID registry entry, keep-last-N, and the resume state.

Names: `<output_name>.safetensors` (final), `<output_name>-step000010.safetensors`, `<output_name>-epoch000002
.safetensors`; a Wan2.2 A14B run of both experts writes one file per expert with `-high_noise` / `-low_noise` after
that stem. With save_state, the folder `<stem>-state/` beside the file holds what `--resume` needs.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from backend.adapters.formats import save_lora
from backend.adapters.metadata import build_metadata
from backend.adapters.network import AdapterNetwork
from backend.loraid.allocation import Allocation
from backend.loraid.registry import LoraidRegistry
from backend.models.registry import EXPERT_STEMS, MODEL_KINDS
from backend.train.networks import SINGLE
from backend.train.state import load_training_state, save_training_state

STATE_SUFFIX = "-state"
NETWORK_PREFIX = "network."


def checkpoint_stem(output_name: str, step: int | None = None, epoch: int | None = None) -> str:
    if step is not None:
        return f"{output_name}-step{step:06d}"
    if epoch is not None:
        return f"{output_name}-epoch{epoch:06d}"
    return output_name


def lora_file(folder: Path, stem: str, label: str) -> Path:
    suffix = "" if label == SINGLE else f"-{EXPERT_STEMS[label]}"
    return folder / f"{stem}{suffix}.safetensors"


def fingerprint(settings) -> dict:
    """Settings a resumed run must share with the saved one."""
    return {"use_rslora": any(a.strip().lower().replace(" ", "") in ("use_rslora=true", "use_rslora=1")
                              for a in settings.network_args),
            "use_dora": settings.network_type == "dora" or any(
                a.strip().lower().replace(" ", "") in ("use_dora=true", "use_dora=1") for a in settings.network_args),
            "network_type": settings.network_type, "network_dim": settings.network_dim,
            "model_kind": settings.model_kind, "loraid": settings.loraid, "expert": settings.expert}


TI2V_KINDS = {name for name, kind in MODEL_KINDS.items() if kind.task == "ti2v"}


@dataclass
class Saver:
    settings: object
    folder: Path
    networks: dict[str, AdapterNetwork]
    network_args: list[str]
    allocation: Allocation | None
    registry: LoraidRegistry | None
    saved: list[Path] = field(default_factory=list)

    def _metadata(self, network: AdapterNetwork, label: str, step: int, epoch: int) -> dict[str, str]:
        s = self.settings
        allocation = self.allocation
        if allocation is not None and allocation.expert == "both":
            allocation = allocation.for_expert(label)
        extra = {"ss_learning_rate": str(s.learning_rate), "ss_seed": str(s.seed),
                 "ss_max_train_steps": str(s.max_train_steps), "ss_timestep_sampling": s.timestep_sampling,
                 "loraid_studio.expert": "" if label == SINGLE else label}
        if s.model_kind in TI2V_KINDS:
            extra["loraid_studio.ti2v_mode"] = s.ti2v_mode  # t2v or i2v: which task the LoRA learned
        return build_metadata(network.config.algo, s.network_dim, s.network_alpha, self.network_args, network.flags(),
                              s.model_kind, loraid=s.loraid,
                              allocation=allocation.to_metadata() if allocation is not None else None,
                              step=step, epoch=epoch, extra=extra, title=s.output_name)

    def save_loras(self, stem: str, step: int, epoch: int) -> list[Path]:
        self.folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for label, network in self.networks.items():
            path = lora_file(self.folder, stem, label)
            save_lora(path, network.state_dict_for_save(), self._metadata(network, label, step, epoch),
                      precision=self.settings.save_precision)
            if self.registry is not None and self.allocation is not None:
                allocation = self.allocation
                self.registry.register(path, allocation.for_expert(label) if allocation.expert == "both"
                                       else allocation)
            paths.append(path)
        return paths

    def save_state(self, stem: str, *, optimizer, scheduler, step: int, epoch: int, data_position: dict,
                   generators: dict[str, torch.Generator]) -> Path:
        tensors = {f"{NETWORK_PREFIX}{label}.{key}": value.detach().cpu().contiguous()
                   for label, network in self.networks.items() for key, value in network.state_dict().items()}
        return save_training_state(self.folder / f"{stem}{STATE_SUFFIX}", optimizer=optimizer, scheduler=scheduler,
                                   step=step, epoch=epoch, data_position=data_position, generators=generators,
                                   fingerprint=fingerprint(self.settings), extra_tensors=tensors)

    def prune(self, kind: str) -> list[Path]:
        """Keep the newest save_last_n_steps / save_last_n_epochs checkpoints of that kind ("step" / "epoch");
        returns the files removed."""
        keep = self.settings.save_last_n_steps if kind == "step" else self.settings.save_last_n_epochs
        if not keep:
            return []
        pattern = re.compile(rf"^{re.escape(self.settings.output_name)}-{kind}(\d{{6}})$")
        stems = sorted({m.group(0) for p in self.folder.iterdir()
                        for m in [pattern.match(_stem_without_expert(p))] if m and p.suffix == ".safetensors"})
        removed = []
        for stem in stems[:-keep]:
            for label in self.networks:
                path = lora_file(self.folder, stem, label)
                if path.exists():
                    path.unlink()
                    if self.registry is not None:
                        self.registry.unregister(path)
                    removed.append(path)
            shutil.rmtree(self.folder / f"{stem}{STATE_SUFFIX}", ignore_errors=True)
        return removed


def _stem_without_expert(path: Path) -> str:
    stem = path.stem
    for expert_stem in EXPERT_STEMS.values():
        stem = stem.removesuffix(f"-{expert_stem}")
    return stem


def restore(folder: Path, settings, networks: dict[str, AdapterNetwork], *, optimizer, scheduler,
            generators: dict[str, torch.Generator]) -> dict:
    """Load a `-state` folder into the networks, optimizer, scheduler and generators; returns the state document
    (step, epoch, data_position)."""
    doc = load_training_state(folder, optimizer=optimizer, scheduler=scheduler, generators=generators,
                              fingerprint=fingerprint(settings))
    for label, network in networks.items():
        prefix = f"{NETWORK_PREFIX}{label}."
        weights = {k[len(prefix):]: v for k, v in doc["tensors"].items() if k.startswith(prefix)}
        network.load_state_dict(weights, strict=True)
    return doc
