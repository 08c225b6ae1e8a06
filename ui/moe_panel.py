"""The Train tab's LoRA-MoE mode: stage 1 (ordinary training with per-projection ranks on chosen blocks), the merge
into both DiT files of an A14B pair, stage 2 (experts + router + timestep gate), each one button starting a job, and
a view of the job followed (progress, loss terms and their chart, the router's held-out agreement).

Each stage hands its output to the next one's field (the stage-1 LoRA to the merge, the merged folder to stage 2).
Stage 2's LoRA-MoE settings are MoeTrainSettings' fields, made by ui/settings_form.py (label, help, starting value, a
problem slot under each, checked as they change and before the job starts).
Stable elem_ids: moe-s1-* / moe-merge-* / moe-s2-* for the fields (e.g. moe-s1-blocks, moe-merge-lora,
moe-s2-merged, moe-s2-expert-names with moe-s2-expert-names-error under it), moe-s1-start, moe-merge-start,
moe-s2-start, moe-status, moe-progress (data-step / data-total / data-status), moe-loss-chart.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pandas as pd

from backend.errors import UserError
from backend.models.registry import get_model_kind
from backend.moe.commands import MERGE_KIND, STAGE2_KIND, MoeRunView, merge_argv, stage2_argv
from backend.moe.settings import MOE, MoeTrainSettings
from backend.moe.stage1 import parse_blocks, stage1_network_args
from backend.train.command import train_argv, write_run_config
from backend.train.settings import TrainSettings
from ui.context import AppContext
from ui.settings_form import SettingsForm, slot_update
from ui.widgets import report_error

STAGE1_KIND = "train"
A14B_KINDS = ["demo-a14b", "wan2.2-t2v-a14b", "wan2.2-i2v-a14b", "demo-t2v", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b"]
POLL_SECONDS = 1.0
_GROUP = dict(concurrency_id="moe-panel", concurrency_limit=1, show_progress="hidden", api_visibility="private")
STAGE2_FIELDS = [name for name, info in MoeTrainSettings.field_info().items() if info["group"] == MOE]
STAGE2_START = {"expert_names": ["red", "blue"], "hint_tags": ["loraidA", "loraidB"], "router_holdout": 0.3}
NOT_STARTED = "⚠ Not started: fix the stage-2 setting marked ⚠."
UNSET_AT_ZERO = [name for name in STAGE2_FIELDS if MoeTrainSettings.field_info()[name]["default"] is None]


def stage2_form() -> SettingsForm:
    """Stage 2's LoRA-MoE settings as a form of MoeTrainSettings' fields (the demo's two experts to start)."""
    return SettingsForm(MoeTrainSettings, STAGE2_FIELDS, "moe-s2", start=STAGE2_START)


@dataclass
class Followed:
    job_id: str | None = None
    kind: str = ""
    offset: int = 0
    view: MoeRunView = field(default_factory=MoeRunView)


def _listing(text: str) -> list[str]:
    return [part.strip() for part in text.replace(",", " ").split() if part.strip()]


class MoePanel:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    @property
    def ws(self):
        return self.ctx.workspace

    # --- starting the jobs -------------------------------------------------------------------------------------
    def stage1_settings(self, v: dict) -> TrainSettings:
        kind = get_model_kind(v["s1:model_kind"])
        args = stage1_network_args(parse_blocks(v["s1:blocks"], kind.num_blocks),
                                   parse_blocks(v["s1:ffn_blocks"], kind.num_blocks), rank_q=int(v["s1:rank_q"]),
                                   rank_kvo=int(v["s1:rank_kvo"]), rank_ffn=int(v["s1:rank_ffn"]))
        return TrainSettings.from_mapping(
            {"model_kind": kind.name, "expert": v["s1:expert"] if kind.has_experts else "low",
             "dit": v["s1:dit"], "dit_high_noise": v["s1:dit_high_noise"], "dataset_config": v["s1:dataset"],
             "network_dim": int(v["s1:rank_kvo"]), "network_alpha": float(v["s1:rank_kvo"]), "network_args": args,
             "learning_rate": float(v["s1:lr"]), "max_train_steps": int(v["s1:steps"]),
             "output_name": v["s1:name"]}, "stage 1")

    def stage2_settings(self, v: dict) -> MoeTrainSettings:
        merged = [Path(part.strip()) for part in v["s2:merged"].split("|") if part.strip()]
        values = {"model_kind": v["s2:model_kind"], "expert": v["s2:expert"], "dataset_config": v["s2:dataset"],
                  "network_dim": int(v["s2:rank"]), "network_alpha": float(v["s2:alpha"]),
                  "network_args": _listing(v["s2:network_args"]), "learning_rate": float(v["s2:lr"]),
                  "max_train_steps": int(v["s2:steps"]), "output_name": v["s2:name"]}
        if v.get("s2:dora") and not any(arg.replace(" ", "").lower() == "use_dora=true"
                                        for arg in values["network_args"]):
            values["network_args"] = [*values["network_args"], "use_dora=True"]
        for path in merged:
            if not path.is_file():
                raise UserError(f"the merged DiT {path} does not exist; run the merge step first or clear the field.")
        if len(merged) == 2:  # HIGH | LOW, as the merge step and the Generate tab write a pair
            values["dit_high_noise"], values["dit"] = str(merged[0]), str(merged[1])
        elif len(merged) == 1:
            values["dit"] = str(merged[0])
        values.update(self.stage2_values(v))
        return MoeTrainSettings.from_mapping(values, "LoRA-MoE stage 2")

    @staticmethod
    def stage2_values(v: dict) -> dict:
        """Stage 2's LoRA-MoE settings as the form reads them back: a blank number is "not set", and so is 0 in a
        number box whose setting is optional (the page sends an empty box as 0; these settings must be above 0)."""
        values = stage2_form().values([v[f"s2:{name}"] for name in STAGE2_FIELDS])
        return {name: None if value == 0 and name in UNSET_AT_ZERO else value for name, value in values.items()}

    def stage2_problems(self, v: dict) -> dict[str, str]:
        """{field: sentence} for stage 2's LoRA-MoE settings, worded with their labels, shown beside each."""
        form = stage2_form()
        return form.problems(MoeTrainSettings, self.stage2_values(v))

    def start(self, which: str, v: dict) -> Followed:
        if which == "stage1":
            settings = self.stage1_settings(v)
            config = write_run_config(settings, self.ws)
            job = self.ctx.jobs.submit(train_argv(config, self.ws), kind=STAGE1_KIND,
                                       title=f"LoRA-MoE stage 1: {settings.output_name}",
                                       settings=settings.model_dump(mode="json"))
        elif which == "merge":
            if not v["merge:lora"]:
                raise UserError("no stage-1 LoRA to merge; train stage 1 or type the LoRA file's path.")
            argv = merge_argv(self.ws, v["merge:lora"], float(v["merge:multiplier"]), v["merge:out_dir"],
                              v["merge:dit"], v["merge:dit_high_noise"])
            job = self.ctx.jobs.submit(argv, kind=MERGE_KIND, title=f"LoRA-MoE merge: {Path(v['merge:lora']).name}",
                                       settings={"lora": v["merge:lora"], "multiplier": v["merge:multiplier"]})
        else:
            settings = self.stage2_settings(v)
            config = write_run_config(settings, self.ws)
            job = self.ctx.jobs.submit(stage2_argv(config, self.ws), kind=STAGE2_KIND,
                                       title=f"LoRA-MoE stage 2: {settings.output_name}",
                                       settings=settings.model_dump(mode="json"))
        return Followed(job.id, which)

    # --- following ---------------------------------------------------------------------------------------------
    def tick(self, followed: Followed) -> tuple[Followed, str, str, pd.DataFrame | None, dict]:
        """(followed, status line, progress html, chart frame or None, field updates by name when a stage ends)."""
        self.ctx.jobs.refresh()
        job = self.ctx.jobs.get(followed.job_id)
        events, followed.offset = self.ctx.jobs.read_events(followed.job_id, followed.offset)
        view = followed.view.fold(events)
        chart = pd.DataFrame(view.history, columns=["step", "term", "value"]) if events else None
        handoff: dict = {}
        line = f"Job {job.id} ({followed.kind}): {job.status} — {view.summary()}"
        if job.is_finished:
            if job.status == "succeeded":
                handoff = self._handoff(followed, view)
                line += "".join(f"  \nwrote {html.escape(path)}" for path in view.outputs[-2:])
            elif view.error:
                line += f"  \n⚠ {view.error}"
        status = "running" if not job.is_finished else job.status
        bar = (f'<div data-step="{view.step}" data-total="{view.total}" data-status="{html.escape(status)}" '
               f'data-stage="{followed.kind}"><progress value="{view.step}" max="{max(view.total, 1)}" '
               f'style="width:100%"></progress></div>')
        return followed, line, bar, chart, handoff

    def _handoff(self, followed: Followed, view: MoeRunView) -> dict:
        if followed.kind == "stage1":
            files = [p for p in view.outputs if p.endswith(".safetensors")]
            low = [p for p in files if p.endswith("-low_noise.safetensors")] or files
            return {"merge:lora": low[-1]} if low else {}
        if followed.kind == "merge":
            return {"s2:merged": view.merged} if view.merged else {}
        return {}


def build(ctx: AppContext) -> None:
    """The LoRA-MoE accordion; call inside the Train tab's layout."""
    panel = MoePanel(ctx)
    c: dict = {}
    with gr.Accordion("LoRA-MoE (two stages)", open=False, elem_id="moe-panel"):
        gr.Markdown("**Stage 1** trains an ordinary LoRA on chosen blocks with per-projection ranks; **Merge** folds "
                    "it into both DiT files of an A14B pair (one file for a single model); **Stage 2** trains E "
                    "expert LoRAs per module with a router and a learned timestep gate on the merged model: "
                    "y = W·x + τ(t)·Σₑ gₑ·s·BₑAₑx. Each stage fills the next one's input when it succeeds.")
        with gr.Group():
            gr.Markdown("Stage 1")
            with gr.Row():
                c["s1:model_kind"] = gr.Dropdown(A14B_KINDS, value="demo-a14b", label="Model", elem_id="moe-s1-model")
                c["s1:expert"] = gr.Dropdown(["low", "high", "both"], value="low", label="Expert (A14B)",
                                             elem_id="moe-s1-expert")
                c["s1:dit"] = gr.Textbox("", label="DiT (empty: demo; A14B: low-noise)", elem_id="moe-s1-dit")
                c["s1:dit_high_noise"] = gr.Textbox("", label="DiT high-noise", elem_id="moe-s1-dit-high")
                c["s1:dataset"] = gr.Textbox("datasets/demo/dataset.toml", label="Dataset TOML",
                                             elem_id="moe-s1-dataset")
            with gr.Row():
                c["s1:blocks"] = gr.Textbox("last 4", label="Attention blocks (32-39, last 8, 0,1,5-7)",
                                            elem_id="moe-s1-blocks")
                c["s1:ffn_blocks"] = gr.Textbox("last 2", label="FFN first-linear blocks", elem_id="moe-s1-ffn-blocks")
                c["s1:rank_q"] = gr.Number(8, precision=0, label="rank q", elem_id="moe-s1-rank-q")
                c["s1:rank_kvo"] = gr.Number(4, precision=0, label="rank k/v/o", elem_id="moe-s1-rank-kvo")
                c["s1:rank_ffn"] = gr.Number(4, precision=0, label="rank FFN", elem_id="moe-s1-rank-ffn")
                c["s1:steps"] = gr.Number(10, precision=0, label="Steps", elem_id="moe-s1-steps")
                c["s1:lr"] = gr.Number(1e-3, label="Learning rate", elem_id="moe-s1-lr")
                c["s1:name"] = gr.Textbox("moe-stage1", label="Output name", elem_id="moe-s1-name")
            c["s1:start"] = gr.Button("Start stage 1", elem_id="moe-s1-start")
        with gr.Group():
            gr.Markdown("Merge stage 1 into the DiT files")
            with gr.Row():
                c["merge:lora"] = gr.Textbox("", label="Stage-1 LoRA", elem_id="moe-merge-lora")
                c["merge:multiplier"] = gr.Number(1.0, label="Multiplier", elem_id="moe-merge-multiplier")
                c["merge:dit"] = gr.Textbox("", label="DiT low-noise / single (empty: demo pair)",
                                            elem_id="moe-merge-dit")
                c["merge:dit_high_noise"] = gr.Textbox("", label="DiT high-noise", elem_id="moe-merge-dit-high")
                c["merge:out_dir"] = gr.Textbox("", label="Output folder (empty: outputs/merged)",
                                                elem_id="moe-merge-out")
            c["merge:start"] = gr.Button("Merge into both experts", elem_id="moe-merge-start")
        with gr.Group():
            gr.Markdown("Stage 2")
            with gr.Row():
                c["s2:model_kind"] = gr.Dropdown(A14B_KINDS, value="demo-a14b", label="Model", elem_id="moe-s2-model")
                c["s2:expert"] = gr.Dropdown(["both", "low", "high"], value="both", label="Noise experts (A14B)",
                                             elem_id="moe-s2-expert")
                c["s2:merged"] = gr.Textbox("", label="Merged DiT(s): HIGH | LOW, or one file (from the merge step; "
                                                      "empty: the model's own)", elem_id="moe-s2-merged")
                c["s2:dataset"] = gr.Textbox("datasets/demo/dataset.toml", label="Dataset TOML",
                                             elem_id="moe-s2-dataset")
            with gr.Row():
                c["s2:rank"] = gr.Number(4, precision=0, label="Expert rank", elem_id="moe-s2-rank")
                c["s2:alpha"] = gr.Number(4.0, label="Expert alpha", elem_id="moe-s2-alpha")
                c["s2:network_args"] = gr.Textbox("rank_q=8", label="network_args", elem_id="moe-s2-network-args")
                c["s2:dora"] = gr.Checkbox(False, label="DoRA experts (each expert with its own magnitude)",
                                           elem_id="moe-s2-dora")
                c["s2:steps"] = gr.Number(40, precision=0, label="Steps", elem_id="moe-s2-steps")
                c["s2:lr"] = gr.Number(1e-3, label="Learning rate", elem_id="moe-s2-lr")
                c["s2:name"] = gr.Textbox("moe", label="Output name", elem_id="moe-s2-name")
            stage2 = stage2_form()
            stage2.build(per_row=6)
            c.update({f"s2:{name}": stage2.widgets[name] for name in STAGE2_FIELDS})
            c["s2:start"] = gr.Button("Start stage 2", variant="primary", elem_id="moe-s2-start")
        c["status"] = gr.Markdown("", elem_id="moe-status")
        c["progress"] = gr.HTML("", elem_id="moe-progress")
        c["chart"] = gr.LinePlot(pd.DataFrame({"step": [0], "term": ["total"], "value": [0.0]}), x="step", y="value",
                                 color="term", label="LoRA-MoE loss terms", height=240,
                                 x_axis_format="d", elem_id="moe-loss-chart")
        followed = gr.State(Followed())
        timer = gr.Timer(POLL_SECONDS, active=False)
    _wire(panel, c, followed, timer, stage2.slots)


def _wire(panel: MoePanel, c: dict, followed, timer, slots: dict) -> None:
    buttons = ("s1:start", "merge:start", "s2:start")
    fields = [name for name in c if name.split(":")[0] in ("s1", "merge", "s2") and name not in buttons]
    handoff_names = ["merge:lora", "s2:merged"]

    def slot_updates(problems: dict[str, str]) -> dict:
        return {slots[name]: slot_update(problems.get(name)) for name in STAGE2_FIELDS}

    def starter(which: str):
        def start(data: dict):
            values = {name: data[c[name]] for name in fields}
            problems = panel.stage2_problems(values) if which == "stage2" else {}
            if problems:  # each beside its field; nothing starts
                return {c["status"]: NOT_STARTED, followed: gr.skip(), timer: gr.skip(), **slot_updates(problems)}
            try:
                now = panel.start(which, values)
            except UserError as exc:
                return {c["status"]: f"⚠ {report_error(exc)}", followed: gr.skip(), timer: gr.skip(),
                        **slot_updates({})}
            return {c["status"]: f"Job {now.job_id} ({which}) queued…", followed: now, timer: gr.Timer(active=True),
                    **slot_updates({})}
        return start

    for which, button in (("stage1", "s1:start"), ("merge", "merge:start"), ("stage2", "s2:start")):
        c[button].click(starter(which), inputs={c[name] for name in fields},
                        outputs={c["status"], followed, timer, *slots.values()}, **_GROUP)

    def check(data: dict):
        """Stage 2's settings checked as they change, each problem beside its field."""
        return slot_updates(panel.stage2_problems({name: data[c[name]] for name in fields}))

    for name in STAGE2_FIELDS:
        c[f"s2:{name}"].change(check, inputs={c[name] for name in fields}, outputs=set(slots.values()), **_GROUP)

    def tick(state: Followed):
        if state is None or state.job_id is None:
            return (state, gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False), *(gr.skip() for _ in handoff_names))
        try:
            state, line, bar, chart, handoff = panel.tick(state)
        except UserError as exc:
            return (Followed(), f"⚠ {report_error(exc)}", "", gr.skip(), gr.Timer(active=False),
                    *(gr.skip() for _ in handoff_names))
        finished = 'data-status="running"' not in bar
        return (Followed() if finished else state, line, bar, chart if chart is not None else gr.skip(),
                gr.Timer(active=not finished), *(handoff.get(name, gr.skip()) for name in handoff_names))

    timer.tick(tick, inputs=followed, outputs=[followed, c["status"], c["progress"], c["chart"], timer,
                                                 *(c[name] for name in handoff_names)], **_GROUP)
