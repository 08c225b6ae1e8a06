"""The Merge and EMA tabs' handlers without a browser, on a workspace holding the demo transformers: bad input is
one sentence and starts no job and writes nothing; a good request runs as a real job whose summary is read from the
output file; a page opened while a merge runs follows it."""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from backend.compose.settings import EmaSettings, MergeLorasSettings, MergeSettings
from backend.config.presets import job_presets
from backend.jobs import JobManager
from backend.models import demo_parts
from backend.models.demo import TRANSFORMER_FILE, expert_file
from backend.models.loading import save_transformer_original
from backend.train.settings import TrainSettings
from backend.workspace import Workspace
from tests.demo_files import save_demo_lora
from ui.context import AppContext
from ui.merge_ema_common import NOT_STARTED, FollowedJob
from ui.tabs.ema import OPTIONS as EMA_OPTIONS
from ui.tabs.ema import EmaPanel, run_choices
from ui.tabs.merge import OPTIONS as MERGE_OPTIONS
from ui.tabs.merge import MergePanel



@pytest.fixture(scope="module")
def demo_models(tmp_path_factory):
    """The demo T2V transformer and the A14B pair, as the demo workspace holds them (no VAE, encoder, dataset)."""
    ws = Workspace(tmp_path_factory.mktemp("models") / "ws")
    ws.ensure_folders()
    t2v = demo_parts.build_transformer("demo-t2v", 0, part=10)
    save_transformer_original(t2v, ws.demo_t2v / TRANSFORMER_FILE)
    for part, expert in enumerate(("high", "low"), start=11):
        save_transformer_original(demo_parts.build_transformer("demo-a14b", 0, part, expert), expert_file(ws, expert))
    return ws, t2v


@pytest.fixture
def ctx(demo_models, tmp_path):
    source, model = demo_models
    ws = Workspace(tmp_path / "ws")
    ws.ensure_folders()
    shutil.copytree(source.models, ws.models, dirs_exist_ok=True)
    return AppContext(ws, JobManager(ws.jobs)), model


def until_finished(panel, followed: FollowedJob, stall_s: float = 120) -> tuple:
    """The tab's view once its job has ended, waited for while the job keeps writing events (its count moving): a
    busy machine makes the wait longer; only a job silent for `stall_s` fails the test."""
    size, since = -1, time.monotonic()
    while True:
        shown = panel.tick(followed)
        followed = shown[0]
        if isinstance(shown[1], str) and ("succeeded" in shown[1] or "ended" in shown[1]):
            return shown
        events = panel.ctx.jobs.get(followed.job_id).events_path if followed.job_id else None
        now = events.stat().st_size if events is not None and events.exists() else 0
        if now != size:
            size, since = now, time.monotonic()
        assert time.monotonic() - since < stall_s, f"the job wrote no event for {stall_s} s: {shown[1]}"
        time.sleep(0.3)


def options(**given) -> list:
    """The Merge tab's option widgets' values, in the form's order (the model's starting values unless given)."""
    start = {"allow_overlap": False, "dtype": "same", "device": "cpu", "rank": None, "precision": "fp32",
             "overwrite": False}
    return [{**start, **given}[name] for name in MERGE_OPTIONS]


def ema_options(**given) -> list:
    """The EMA tab's option widgets' values, in the form's order (the model's starting values unless given)."""
    start = {"rule": "power", "sigma_rel": 0.2, "beta": 0.95, "beta2": None, "space": "factors", "precision": "same",
             "overwrite": False}
    return [{**start, **given}[name] for name in EMA_OPTIONS]


def run_merge(panel: MergePanel, table, base, out, *, allow=False, base_high="", mode="dit"):
    return panel.run(mode, table, base, base_high, out, FollowedJob(), False, *options(allow_overlap=allow))


def test_merge_refuses_bad_input_with_one_sentence_and_writes_nothing(ctx):
    context, model = ctx
    ws = context.workspace
    panel = MergePanel(context)
    base = str(ws.demo_t2v / TRANSFORMER_FILE)
    out = str(ws.outputs / "merged" / "m.safetensors")
    save_demo_lora(model, ws.loras / "bob.safetensors", loraid=3, blocks_per_loraid=2, seed=2)  # blocks 4-5
    save_demo_lora(model, ws.loras / "carol.safetensors", loraid=2, blocks_per_loraid=3, seed=3)  # blocks 3-5

    _, status, *_ = run_merge(panel, [], base, out)
    assert status == "⚠ No LoRA file is picked; choose at least one from the list or type its path."
    rows, message = panel.rows("dit", ["bob.safetensors", "carol.safetensors"], "", [], "")
    assert message == ""
    _, status, *_ = run_merge(panel, rows, str(ws.models / "missing.safetensors"), out)
    assert status.startswith("⚠ The base DiT ") and "missing.safetensors does not exist" in status
    report, suggested_out, _ = panel.review("dit", rows, base, "", "", "")
    assert "Overlap:" in report and "bob.safetensors and carol.safetensors both change blocks 4-5" in report
    assert suggested_out == str(ws.outputs / "merged" / "demo-t2v+bob+carol.safetensors")
    _, status, *_ = run_merge(panel, rows, base, out)
    assert status.startswith("⚠ bob.safetensors and carol.safetensors both change blocks 4-5")
    assert status.endswith("tick “Allow overlap” to merge them anyway (their changes add up on the shared weights).")
    _, status, *_ = run_merge(panel, rows[:1], base, out, mode="loras")
    assert status == "⚠ Merging LoRAs into one needs at least two files; 1 is picked."
    _, message = panel.rows("dit", ["bob.safetensors"], "loras/typo.safetensors", rows, "")
    assert "typo.safetensors does not exist" in message
    assert context.jobs.list() == [] and not (ws.outputs / "merged").exists()


def test_merge_runs_as_a_job_and_shows_the_summary_from_the_file(ctx):
    context, model = ctx
    ws = context.workspace
    panel = MergePanel(context)
    base = ws.demo_t2v / TRANSFORMER_FILE
    save_demo_lora(model, ws.loras / "alice.safetensors", loraid=1, blocks_per_loraid=2, seed=1)
    save_demo_lora(model, ws.loras / "bob.safetensors", loraid=3, blocks_per_loraid=2, seed=2)
    rows, _ = panel.rows("dit", ["alice.safetensors", "bob.safetensors"], "", [], "")
    assert [row[:5] for row in rows] == [["loras/alice.safetensors", "lora", "4", "1", "blocks 0-1"],
                                         ["loras/bob.safetensors", "lora", "4", "3", "blocks 4-5"]]
    rows[1][6] = 0.7
    report, out, suggested = panel.review("dit", rows, str(base), "", "", "")
    assert "No overlap" in report
    followed, status, *_ = run_merge(panel, rows, str(base), out)
    assert status.startswith(f"Job {followed.job_id}: ")
    shown = until_finished(panel, followed)
    assert shown[1] == f"Job {followed.job_id} succeeded."
    tensors = len(load_file(base))  # the bar and the log count every tensor of the base, streamed once
    assert f'data-step="{tensors}" data-total="{tensors}" data-status="succeeded"' in shown[4]
    assert f"merge: {tensors}/{tensors} tensors (100%)" in shown[2].splitlines()
    summary = shown[3]
    assert "alice.safetensors × 1: LORAID 1" in summary and "bob.safetensors × 0.7: LORAID 3" in summary
    assert "LORAIDs: 1, 3" in summary and "which the Generate tab lists in its model choice" in summary
    merged, original = load_file(out), load_file(base)
    assert not torch.equal(merged["blocks.4.ffn.0.weight"], original["blocks.4.ffn.0.weight"])
    assert torch.equal(merged["blocks.2.ffn.0.weight"], original["blocks.2.ffn.0.weight"])
    job = context.jobs.get(followed.job_id)
    assert job.kind == "merge" and job.settings["multipliers"] == [1.0, 0.7]
    # the default output moves on to a free name; a typed one stays as typed
    _, next_out, _ = panel.review("dit", rows, str(base), "", out, suggested)
    assert next_out == str(ws.outputs / "merged" / "demo-t2v+alice+bob-2.safetensors")
    _, kept, _ = panel.review("dit", rows, str(base), "", "/tmp/mine.safetensors", suggested)
    assert kept == gr.skip()  # the typed path is left alone
    _, unchanged, _ = panel.review("dit", rows, str(base), "", next_out, next_out)
    assert unchanged == gr.skip()  # a review that suggests the same name cannot undo what was typed meanwhile


def test_merge_and_ema_outputs_outside_the_workspace_wait_for_the_confirm_box(ctx):
    context, model = ctx
    ws = context.workspace
    elsewhere = ws.root.parent / "elsewhere"
    save_demo_lora(model, ws.loras / "dan.safetensors", loraid=1, blocks_per_loraid=2, seed=4)
    save_demo_lora(model, ws.loras / "eve.safetensors", loraid=3, blocks_per_loraid=2, seed=5)
    merge = MergePanel(context)
    rows, _ = merge.rows("loras", ["dan.safetensors", "eve.safetensors"], "", [], "")
    out = elsewhere / "both.safetensors"
    args = ("loras", rows, "", "", str(out), FollowedJob())
    shown = merge.run(*args, False, *options())
    outside = (f"⚠ {elsewhere} is outside the workspace {ws.root}; confirm writing there, or choose a folder "
               "inside the workspace.")
    assert shown[1] == NOT_STARTED and shown[-1] == {"value": outside, "visible": True, "__type__": "update"}
    for step in (10, 20):
        save_demo_lora(model, ws.loras / f"far-step{step:06d}.safetensors", 4, 2, step, step=step)
    ema = EmaPanel(context)
    inputs = ema.find("loras/far", "", "", "")[0]
    ema_out = elsewhere / "far-ema.safetensors"
    ema_args = (inputs, str(ema_out), FollowedJob())
    refused = ema.run(*ema_args, False, *ema_options())
    assert refused[1] == NOT_STARTED and refused[-1]["value"] == outside
    assert context.jobs.list() == [] and not elsewhere.exists()

    followed, *_ = merge.run(*args, True, *options())  # confirmed
    assert until_finished(merge, followed)[1] == f"Job {followed.job_id} succeeded."
    followed, *_ = ema.run(*ema_args, True, *ema_options())
    assert until_finished(ema, followed)[1] == f"Job {followed.job_id} succeeded."
    assert sorted(p.name for p in elsewhere.iterdir()) == ["both.safetensors", "far-ema.safetensors"]


def test_a14b_pair_assigns_experts_from_the_files(ctx):
    context, model = ctx
    ws = context.workspace
    panel = MergePanel(context)
    assert panel.on_base(str(expert_file(ws, "low"))) == str(expert_file(ws, "high"))
    assert panel.on_base(str(ws.demo_t2v / TRANSFORMER_FILE)) == ""
    save_demo_lora(model, ws.loras / "hi.safetensors", loraid=1, blocks_per_loraid=2, seed=4, expert="high")
    save_demo_lora(model, ws.loras / "any.safetensors", loraid=2, blocks_per_loraid=2, seed=5)
    high = str(expert_file(ws, "high"))
    rows, _ = panel.rows("dit", ["hi.safetensors", "any.safetensors"], "", [], high)
    assert [row[5] for row in rows] == ["high", "both"]
    report, out, _ = panel.review("dit", rows, str(expert_file(ws, "low")), high, "", "")
    assert out == str(ws.outputs / "merged" / "demo-a14b+hi+any.safetensors")
    followed, *_ = run_merge(panel, rows, str(expert_file(ws, "low")), out, base_high=high)
    summary = until_finished(panel, followed)[3]
    assert "(high-noise expert)" in summary and "(low-noise expert)" in summary
    low_out = Path(out).with_name("demo-a14b+hi+any-low_noise.safetensors")
    record = json.loads(safe_open(str(low_out), "pt").metadata()["loraid_studio.merge"])
    assert [r["file"] for r in record["loras"]] == ["any.safetensors"]


def test_a_page_opened_during_a_merge_follows_it(ctx):
    context, _ = ctx
    job = context.jobs.submit([sys.executable, "-m", "backend", "selfcheck", "--steps", "400", "--interval", "0.05"],
                              kind="merge", title="stand-in merge", settings={"outputs": []})
    try:
        followed, status, *_ = MergePanel(context).tick(FollowedJob())
        assert followed.job_id == job.id and status.startswith(f"Job {job.id}: running")
        nothing = EmaPanel(context).tick(FollowedJob())
        assert nothing[0].job_id is None  # the EMA tab follows EMA jobs only
    finally:
        context.jobs.stop(job.id, grace_s=1.0)


def save_run_checkpoints(model, ws) -> None:
    """A run's three checkpoints in loras/ (run-step000010/20/40), for the EMA tab to find."""
    for step, seed in ((10, 11), (20, 12), (40, 13)):
        save_demo_lora(model, ws.loras / f"run-step{step:06d}.safetensors", 4, 2, seed, step=step)


def test_ema_shows_weights_before_running_and_refuses_bad_input(ctx):
    context, model = ctx
    ws = context.workspace
    panel = EmaPanel(context)
    save_run_checkpoints(model, ws)
    shutil.copy(ws.loras / "run-step000040.safetensors", ws.loras / "run.safetensors")
    assert run_choices(context) == [("run: 4 files in loras/", "loras/run")]
    inputs, notes, out, suggested = panel.find("loras/run", "", "", "")
    assert notes.startswith("3 lora checkpoints, ordered by the training step in their metadata.")
    assert "run.safetensors holds the same weights as run-step000040.safetensors" in notes
    assert out == suggested == str(ws.loras / "run-ema.safetensors")
    rows, message, *slots = panel.weights(inputs, *ema_options(beta2=0.95))
    assert [update["visible"] for update in slots] == [False] * len(EMA_OPTIONS)
    assert [row[1:3] for row in rows] == [["loras/run-step000010.safetensors", 10],
                                          ["loras/run-step000020.safetensors", 20],
                                          ["loras/run-step000040.safetensors", 40]]
    gamma = max(r.real for r in np.roots([1, 7, 16 - 0.2 ** -2, 12 - 0.2 ** -2]) if abs(r.imag) < 1e-12)
    assert message == f"γ = {gamma:.4f}; the weights sum to 1.000000."
    expected = [(s / 40) ** (gamma + 1) - (p / 40) ** (gamma + 1) for p, s in ((0, 10), (10, 20), (20, 40))]
    assert [row[3] for row in rows] == pytest.approx(expected, abs=1e-6)

    _, message, *slots = panel.weights(inputs, *ema_options(sigma_rel=0.5))
    slots = dict(zip(EMA_OPTIONS, slots))
    assert message == "" and slots["sigma_rel"]["value"].startswith("⚠ σ_rel (sigma_rel) must be between 0 and 1/√12")
    assert [name for name, slot in slots.items() if slot["visible"]] == ["sigma_rel"]
    _, _, *slots = panel.weights(inputs, *ema_options(rule="beta", sigma_rel=0.5, beta=None))
    slots = dict(zip(EMA_OPTIONS, slots))  # the beta rule: its empty β is said, σ_rel is not its value
    assert [name for name, slot in slots.items() if slot["visible"]] == ["beta"]
    assert slots["beta"]["value"] == "⚠ β is empty; type the decay at the second checkpoint, e.g. 0.95."
    bad = panel.run(inputs, "", FollowedJob(), False, *ema_options(sigma_rel=0.5))
    assert bad[1] == NOT_STARTED
    assert bad[2:5] == ("", "", "")  # the previous run's log, summary and bar are not left beside the problem
    option_slots, out_slot = dict(zip(EMA_OPTIONS, bad[6:-1])), bad[-1]
    sigma_slot, beta_slot, beta2_slot = (option_slots[name] for name in ("sigma_rel", "beta", "beta2"))
    assert sigma_slot["value"].startswith("⚠ σ_rel (sigma_rel) must be between 0 and 1/√12")  # the range first
    assert out_slot["value"] == "⚠ The output path is empty; type where the EMA LoRA goes (a .safetensors name)."
    assert not beta_slot["visible"] and not beta2_slot["visible"]
    empty = panel.run(panel.find(None, "", "", "")[0], out, FollowedJob(), False, *ema_options())
    assert empty[1] == "⚠ No checkpoints are chosen; pick a run or type a run folder or checkpoint files."
    assert context.jobs.list() == [] and not Path(out).exists()

    followed, status, *_ = panel.run(inputs, out, FollowedJob(), False, *ema_options(space="delta"))
    shown = until_finished(panel, followed)
    assert shown[1] == f"Job {followed.job_id} succeeded."
    assert "delta space, steps from metadata" in shown[3] and "Largest relative truncation error" in shown[3]
    assert "`run-ema.safetensors` is in `loras/`: the LORAID tab lists it" in shown[3]
    record = json.loads(safe_open(out, "pt").metadata()["loraid_studio.ema"])
    assert [c["weight"] for c in record["checkpoints"]] == pytest.approx(expected, abs=1e-9)
    assert run_choices(context) == [("run: 4 files in loras/", "loras/run")]  # the result is no checkpoint


def gus_and_hal_picked(ctx):
    """Two LoRAs picked in the Merge tab's LoRAs-into-one mode: (context, workspace, panel, table rows, output)."""
    context, model = ctx
    ws = context.workspace
    panel = MergePanel(context)
    save_demo_lora(model, ws.loras / "gus.safetensors", loraid=1, blocks_per_loraid=2, seed=6)
    save_demo_lora(model, ws.loras / "hal.safetensors", loraid=3, blocks_per_loraid=2, seed=7)
    rows, _ = panel.rows("loras", ["gus.safetensors", "hal.safetensors"], "", [], "")
    return context, ws, panel, rows, str(ws.loras / "gus+hal.safetensors")


def test_merge_loras_rank_is_checked_beside_its_field(ctx):
    context, ws, panel, rows, out = gus_and_hal_picked(ctx)
    for rank, problem in ((2.5, "Rank is 2.5, not a whole number; enter a whole number such as 2."),
                          (0, "Rank is 0; it must be at least 1.")):
        slots = dict(zip(MERGE_OPTIONS, panel.check_options("loras", *options(rank=rank))))
        assert slots["rank"]["value"] == f"⚠ {problem}"
        assert [name for name, slot in slots.items() if slot["visible"]] == ["rank"]
        shown = panel.run("loras", rows, "", "", out, FollowedJob(), False, *options(rank=rank))
        ranks_slot, out_slot = shown[6 + MERGE_OPTIONS.index("rank")], shown[-1]
        assert shown[1] == NOT_STARTED and ranks_slot["value"] == f"⚠ {problem}" and not out_slot["visible"]
    for fine in (None, 4, 4.0):
        assert not any(slot["visible"] for slot in panel.check_options("loras", *options(rank=fine)))
    assert not any(slot["visible"] for slot in panel.check_options("dit", *options(rank=2.5)))  # not a DiT's option
    assert context.jobs.list() == [] and not Path(out).exists()


MERGE_FIELDS = ["files", "typed", "table", "base", "base_high", "out"]  # the preset row's fields before the options


def merge_values(files=(), typed="", table=(), base="", base_high="", out="", **given) -> list:
    """The Merge tab's values in the preset row's order: the picks, bases and output, then the options."""
    return [list(files), typed, [list(row) for row in table], base, base_high, out, *options(**given)]


def shown_merge(updates: tuple) -> dict:
    """The load's updates by field: a value, or the update's value when it also refreshes choices."""
    names = [*MERGE_FIELDS, *MERGE_OPTIONS]
    return {name: update["value"] if isinstance(update, dict) and "value" in update else update
            for name, update in zip(names, updates)}


def test_a_merge_preset_saved_from_the_form_loads_back_into_every_field(ctx):
    """An A14B pair merge (files from loras/ and a typed path, per-file strengths and experts, both bases, the
    output, every option) saved as a preset is a MergeSettings file the settings model reads back, and loading it
    into a different form gives back every field, and so the same merge."""
    context, model = ctx
    ws = context.workspace
    panel = MergePanel(context)
    save_demo_lora(model, ws.loras / "hi.safetensors", loraid=1, blocks_per_loraid=2, seed=4, expert="high")
    save_demo_lora(model, ws.loras / "any.safetensors", loraid=2, blocks_per_loraid=2, seed=5)
    save_demo_lora(model, ws.root / "extra" / "low.safetensors", loraid=3, blocks_per_loraid=2, seed=6)
    low, high = str(expert_file(ws, "low")), str(expert_file(ws, "high"))
    rows, _ = panel.rows("dit", ["hi.safetensors", "any.safetensors"], "extra/low.safetensors", [], high)
    for row, (expert, strength) in zip(rows, (("high", 0.6), ("both", 0.8), ("low", 1.3))):
        row[5], row[6] = expert, strength
    out = str(ws.outputs / "merged" / "recipe.safetensors")
    form = merge_values(["hi.safetensors", "any.safetensors"], "extra/low.safetensors", rows, low, high, out,
                        allow_overlap=True, dtype="bf16", overwrite=True)
    picker, asked, message = panel.presets.on_save("dit", "pair recipe", None, *form)
    path = ws.presets / "merge" / "pair recipe.json"
    assert message == f"Saved user preset `pair recipe` ({path})." and asked is None
    assert picker["value"] == "user:pair recipe" and ("pair recipe (user)", "user:pair recipe") in picker["choices"]
    saved = MergeSettings.load_file(path)  # the settings model's own strict preset reader
    resolved = {name: str((ws.loras / name).resolve()) for name in ("hi.safetensors", "any.safetensors")}
    typed_file = str((ws.root / "extra" / "low.safetensors").resolve())
    assert (saved.dit, saved.dit_high_noise) == (str(Path(low).resolve()), str(Path(high).resolve()))
    assert (saved.lora, saved.multiplier) == ([resolved["any.safetensors"], typed_file], [0.8, 1.3])
    assert (saved.lora_high_noise, saved.multiplier_high_noise) == (
        [resolved["hi.safetensors"], resolved["any.safetensors"]], [0.6, 0.8])
    assert (saved.dtype, saved.device, saved.allow_overlap, saved.overwrite) == ("bf16", "cpu", True, True)

    other = merge_values(["any.safetensors"], "", rows[1:2], str(ws.demo_t2v / TRANSFORMER_FILE), "", "x.safetensors")
    *updates, message = panel.presets.on_load("dit", "user:pair recipe", *other)
    assert message == "Loaded preset `pair recipe`."
    shown = shown_merge(tuple(updates))
    assert sorted(shown["files"]) == ["any.safetensors", "hi.safetensors"] and shown["typed"] == "extra/low.safetensors"
    assert {row[0]: (row[5], row[6]) for row in shown["table"]} == {
        "loras/hi.safetensors": ("high", 0.6), "loras/any.safetensors": ("both", 0.8),
        "extra/low.safetensors": ("low", 1.3)}
    assert (shown["base"], shown["base_high"], shown["out"]) == (str(Path(low).resolve()), str(Path(high).resolve()),
                                                                 str(Path(out).resolve()))
    assert {name: shown[name] for name in ("allow_overlap", "dtype", "device", "overwrite")} == {
        "allow_overlap": True, "dtype": "bf16", "device": "cpu", "overwrite": True}
    assert shown["rank"] == gr.skip() and shown["precision"] == gr.skip()  # the other mode's options stay
    loaded = [shown[name] for name in ("table", "base", "base_high", "out")]
    assert panel.request("dit", *loaded, {name: shown[name] for name in MERGE_OPTIONS}).settings() == saved


def test_a_merge_loras_preset_round_trips_and_each_mode_lists_only_its_own(ctx):
    context, ws, panel, rows, out = gus_and_hal_picked(ctx)
    rows[0][6] = 0.5
    form = merge_values(["gus.safetensors", "hal.safetensors"], "", rows, "", "", out, rank=3, precision="bf16")
    assert panel.presets.on_save("loras", "svd 3", None, *form)[2].startswith("Saved user preset `svd 3`")
    assert MergeLorasSettings.load_file(ws.presets / "merge-loras" / "svd 3.json") == MergeLorasSettings(
        lora=[str((ws.loras / name).resolve()) for name in ("gus.safetensors", "hal.safetensors")],
        multiplier=[0.5, 1.0], out=str(Path(out).resolve()), rank=3, precision="bf16")
    changed = merge_values(["gus.safetensors", "hal.safetensors"], "", rows, "", "", out, rank=5, precision="bf16")
    picker, asked, message = panel.presets.on_save("loras", "svd 3", None, *changed)
    assert (picker, asked, message) == (gr.skip(), "svd 3", "A user preset named `svd 3` exists; press **Save** "
                                                            "again to replace it.")
    assert MergeLorasSettings.load_file(ws.presets / "merge-loras" / "svd 3.json").rank == 3  # asked, not replaced
    _, asked, message = panel.presets.on_save("loras", "svd 3", asked, *form)  # the second press replaces it
    assert asked is None and message.startswith("Saved user preset `svd 3`")

    *updates, message = panel.presets.on_load("loras", "user:svd 3", *merge_values())
    shown = shown_merge(tuple(updates))
    assert message == "Loaded preset `svd 3`."
    assert (shown["files"], shown["typed"], shown["out"]) == (["gus.safetensors", "hal.safetensors"], "",
                                                              str(Path(out).resolve()))
    assert [row[6] for row in shown["table"]] == [0.5, 1.0]
    assert (shown["rank"], shown["precision"], shown["allow_overlap"], shown["overwrite"]) == (3, "bf16", False, False)
    assert shown["base"] == shown["base_high"] == shown["dtype"] == shown["device"] == gr.skip()

    assert panel.presets.on_kind("dit")[0]["choices"] == []  # the other mode's presets are not offered
    assert panel.presets.on_kind("loras")[0]["choices"] == [("svd 3 (user)", "user:svd 3")]
    assert EmaPanel(context).presets.on_focus("ema")["choices"] == []
    assert all(ref.source == "shipped" for ref in job_presets(ws.presets, "train").list())  # nor in Train


def test_a_preset_of_another_kind_or_a_broken_one_is_one_sentence_and_the_form_keeps_its_values(ctx):
    context, model = ctx
    ws = context.workspace
    merge, ema = MergePanel(context), EmaPanel(context)
    folder = ws.presets / "merge"
    folder.mkdir(parents=True)
    (folder / "train one.json").write_text(json.dumps(TrainSettings().to_preset("train one")))
    (folder / "broken.json").write_text('{"kind": "MergeSettings", "settings": {')
    save_demo_lora(model, ws.loras / "gone.safetensors", loraid=1, blocks_per_loraid=2, seed=1)
    gone = MergeSettings(dit=str(ws.demo_t2v / TRANSFORMER_FILE), lora=[str(ws.loras / "gone.safetensors")],
                         out=str(ws.outputs / "merged" / "g.safetensors"))
    (folder / "gone.json").write_text(json.dumps(gone.to_preset("gone")))
    (ws.loras / "gone.safetensors").unlink()
    form = merge_values(["a.safetensors"], "typed.safetensors", [["loras/a.safetensors"]], "base", "", "out",
                        dtype="fp16")
    expected = {
        "train one": "preset `train one` is a `train` preset, not a `merge` one; load it in the tab it belongs to.",
        "broken": "preset `broken` is not valid JSON (Expecting property name enclosed in double quotes at line 1, "
                  "column 40); fix the file, or save the preset again.",
        "gone": f"The preset's LoRA file {(ws.loras / 'gone.safetensors').resolve()} does not exist any more; put it "
                f"back or save the preset again with other files.",
    }
    for name, sentence in expected.items():
        *updates, message = merge.presets.on_load("dit", f"user:{name}", *form)
        assert message == sentence
        assert updates == [gr.skip()] * len(form)  # every field keeps what the user had

    (ws.presets / "ema").mkdir()
    shutil.copy(folder / "gone.json", ws.presets / "ema" / "merge one.json")
    *updates, message = ema.presets.on_load("ema", "user:merge one", None, "out", *ema_options(rule="uniform"))
    assert message == "preset `merge one` is a `merge` preset, not an `ema` one; load it in the tab it belongs to."
    assert updates == [gr.skip()] * (3 + len(EMA_OPTIONS))
    assert merge.presets.on_save("dit", "no picks", None, *merge_values(base="b", out="o.safetensors"))[2] == \
        "No LoRA file is picked; choose the LoRAs of the merge, then save the preset."
    assert not (folder / "no picks.json").exists()


def test_an_ema_preset_loads_back_into_every_field_and_one_of_options_alone_keeps_the_picks(ctx):
    context, model = ctx
    ws = context.workspace
    panel = EmaPanel(context)
    save_run_checkpoints(model, ws)
    inputs, _, out, _ = panel.find("loras/run", "", "", "")
    chosen = ema_options(rule="beta", beta=0.9, beta2=0.99, space="delta", precision="bf16", overwrite=True)
    assert panel.presets.on_save("ema", "slow beta", None, inputs, out, *chosen)[2].startswith(
        "Saved user preset `slow beta`")
    saved = EmaSettings.load_file(ws.presets / "ema" / "slow beta.json")
    assert saved == EmaSettings(inputs=[str(path) for path in inputs.paths], out=str(Path(out).resolve()), rule="beta",
                                beta=0.9, beta2=0.99, space="delta", precision="bf16", overwrite=True)

    *updates, message = panel.presets.on_load("ema", "user:slow beta", panel.find(None, "", "", "")[0], "",
                                               *ema_options())
    assert message == "Loaded preset `slow beta`."
    run, typed, shown_out, *shown = updates
    assert (run["value"], typed, shown_out) == ("loras/run", "", out)
    assert dict(zip(EMA_OPTIONS, shown)) == {"rule": "beta", "sigma_rel": 0.2, "beta": 0.9, "beta2": 0.99,
                                             "space": "delta", "precision": "bf16", "overwrite": True}

    typed_only = panel.find(None, "loras/run-step000010.safetensors\nloras/run-step000040.safetensors", "", "")[0]
    panel.presets.on_save("ema", "two", None, typed_only, "", *ema_options())
    run, typed, shown_out, *_ = panel.presets.on_load("ema", "user:two", inputs, out, *ema_options())[:-1]
    assert (run["value"], typed, shown_out) == (
        None, "loras/run-step000010.safetensors\nloras/run-step000040.safetensors", gr.skip())

    panel.presets.on_save("ema", "power 0.1", None, None, "", *ema_options(sigma_rel=0.1))
    run, typed, shown_out, *shown = panel.presets.on_load("ema", "user:power 0.1", inputs, out, *chosen)[:-1]
    assert (run, typed, shown_out) == (gr.skip(), gr.skip(), gr.skip())  # no checkpoints in it: the picks stay
    assert dict(zip(EMA_OPTIONS, shown))["sigma_rel"] == 0.1 and dict(zip(EMA_OPTIONS, shown))["rule"] == "power"
