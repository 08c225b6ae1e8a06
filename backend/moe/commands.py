"""The jobs of the LoRA-MoE workflow as commands (lists, never shell strings), and what their events say.

    stage 1: python -m backend.train --config RUN.toml --workspace W      (TrainSettings with stage-1 network_args)
    merge:   python -m backend moe merge --workspace W --lora S1 --multiplier M [--dit L --dit_high_noise H] --out_dir D
    stage 2: python -m backend moe train --config RUN.toml --workspace W  (MoeTrainSettings)
`MoeRunView.fold(events)` keeps the step, total, checkpoints, the last loss terms, their history (for a chart) and
the held-out router agreement.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from backend.moe.objective import TERMS
from backend.workspace import Workspace

MERGE_KIND, STAGE2_KIND = "moe-merge", "moe-train"


def merge_argv(workspace: Workspace, lora: str, multiplier: float, out_dir: str = "", dit: str = "",
               dit_high_noise: str = "", python: str = sys.executable) -> list[str]:
    argv = [python, "-m", "backend", "moe", "merge", "--workspace", str(workspace.root), "--lora", lora,
            "--multiplier", repr(float(multiplier))]
    if dit or dit_high_noise:
        argv += ["--dit", dit] + (["--dit_high_noise", dit_high_noise] if dit_high_noise else [])
    if out_dir:
        argv += ["--out_dir", out_dir]
    return argv


def stage2_argv(config: Path, workspace: Workspace, python: str = sys.executable) -> list[str]:
    return [python, "-m", "backend", "moe", "train", "--config", str(config), "--workspace", str(workspace.root)]


@dataclass
class MoeRunView:
    step: int = 0
    total: int = 0
    outputs: list[str] = field(default_factory=list)  # checkpoint / merged files, in order
    merged: str = ""  # the merge job's files: "HIGH | LOW" or one path
    terms: dict = field(default_factory=dict)  # the last moe_losses values
    history: list[dict] = field(default_factory=list)  # {"step", "term", "value"} rows for a chart
    agreement: float | None = None
    held_out: int = 0
    error: str = ""
    status: str = ""

    def fold(self, events: list[dict]) -> "MoeRunView":
        for event in events:
            name = event.get("event")
            if name in ("start", "progress", "step"):
                self.total = int(event.get("total") or self.total)
                self.step = int(event.get("step") or self.step)
            if name == "step" and event.get("loss") is not None:
                self.history.append({"step": int(event["step"]), "term": "total", "value": float(event["loss"])})
            elif name == "moe_losses":
                self.terms = {k: event.get(k) for k in (*TERMS, "agreement", "hint_weight")}
                for term in TERMS:
                    if event.get(term) is not None:
                        self.history.append({"step": int(event["step"]), "term": term, "value": float(event[term])})
            elif name == "checkpoint" and event.get("path"):
                self.outputs.append(str(event["path"]))
            elif name == "router_eval":
                self.agreement, self.held_out = float(event["agreement"]), int(event["items"])
            elif name == "error":
                self.error = str(event.get("message", ""))
            elif name == "end":
                self.status = str(event.get("status", ""))
                self.merged = str(event.get("merged") or self.merged)
        return self

    def summary(self) -> str:
        parts = [f"step {self.step}/{self.total}" if self.total else "starting"]
        if self.terms:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in self.terms.items() if isinstance(v, (int, float)))
            parts.append(shown)
        if self.agreement is not None:
            parts.append(f"router agreement on {self.held_out} held-out items: {self.agreement:.0%}")
        return "; ".join(parts)
