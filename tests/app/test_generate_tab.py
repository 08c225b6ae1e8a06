"""The Generate tab's handlers without a browser, on a workspace holding the demo transformers (no VAE or encoders):
bad settings and overlapping LoRAs are one sentence and submit nothing; a good request becomes one real
`python -m backend generate` job (which here fails for want of a VAE, and the tab shows the job's own sentence);
multipliers stay with their files; a result's sidecar refills the form."""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from backend.generate.cli import add_arguments
from backend.generate.outputs import output_stem, write_result
from backend.generate.pipeline import ModelChoice
from backend.generate.settings import GenerateSettings
from backend.jobs import JobManager
from backend.loraid.cli_args import flatten_appended, resolve_loraids
from backend.loraid.registry import LoraidRegistry
from backend.models import demo_parts
from backend.models.demo import TRANSFORMER_FILE, expert_file
from backend.models.loading import save_transformer_original
from backend.moe.files import save_moe
from backend.moe.network import MoeNetwork, MoeSpec
from backend.workspace import Workspace
from tests.demo_files import save_demo_lora
from ui.context import AppContext
from ui.generate_form import MAX_LORAS, GenerateForm
from ui.generate_panel import FollowedGeneration, GeneratePanel
from ui.tabs.generate import FIELD_ERRORS

STATUS, PROGRESS, MODEL_MESSAGE, CONFLICTS, SLOTS = 1, 2, 4, 5, 6  # run()'s outputs: followed, status,
# progress, timer, the model's message, the LoRA list's message, then the settings' message slots


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory):
    """The demo T2V transformer and the A14B pair as the demo workspace holds them, and three LoRAs on the T2V:
    alice (LORAID 1: blocks 0-1), bob (LORAID 3: blocks 4-5) and carol (LORAID 2 of 3 blocks: blocks 3-5)."""
    ws = Workspace(tmp_path_factory.mktemp("models") / "ws")
    ws.ensure_folders()
    t2v = demo_parts.build_transformer("demo-t2v", 0, part=10)
    save_transformer_original(t2v, ws.demo_t2v / TRANSFORMER_FILE)
    for part, expert in enumerate(("high", "low"), start=11):
        save_transformer_original(demo_parts.build_transformer("demo-a14b", 0, part, expert), expert_file(ws, expert))
    save_demo_lora(t2v, ws.loras / "alice.safetensors", loraid=1, blocks_per_loraid=2, seed=1)
    save_demo_lora(t2v, ws.loras / "bob.safetensors", loraid=3, blocks_per_loraid=2, seed=2)
    save_demo_lora(t2v, ws.loras / "carol.safetensors", loraid=2, blocks_per_loraid=3, seed=3)
    return ws


@pytest.fixture
def ctx(demo_models, tmp_path) -> AppContext:
    ws = Workspace(tmp_path / "ws")
    ws.ensure_folders()
    shutil.copytree(demo_models.models, ws.models, dirs_exist_ok=True)
    shutil.copytree(demo_models.loras, ws.loras, dirs_exist_ok=True)
    return AppContext(ws, JobManager(ws.jobs))


def form(**changes) -> GenerateForm:
    """A valid tiny request on the demo T2V; LoRAs given as {name: multiplier}."""
    loras = changes.pop("loras", {})
    names = tuple(loras)
    multipliers = tuple(loras.values()) + (1.0,) * (MAX_LORAS - len(loras))
    values = dict(prompt="a red ball bouncing", width=32, height=32, frames=9, steps=2, seed=7,
                  lora_files=names, slot_files=names, multipliers=multipliers)
    values.update(changes)
    return GenerateForm(**values)


def run(panel: GeneratePanel, request: GenerateForm) -> tuple:
    return panel.run(FollowedGeneration(), *request.values())


def until_finished(panel: GeneratePanel, followed: FollowedGeneration, timeout_s: float = 90) -> tuple:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        shown = panel.tick(followed)
        followed = shown[0]
        if isinstance(shown[1], str) and ("succeeded" in shown[1] or "ended" in shown[1]):
            return shown
        time.sleep(0.3)
    raise AssertionError(f"the generate job did not finish within {timeout_s} s")


@pytest.mark.parametrize("changes, sentence", [
    ({"frames": 6}, "Frames (frames) = 6 is not 4n+1 (1, 5, 9, ..., 81); use 5 or 9."),
    ({"frames": 0}, "Frames (frames) = 0 is not 4n+1 (1, 5, 9, ..., 81); use 1 or 5."),
    ({"width": 60}, "Width (width) = 60 is not a positive multiple of 16; use 64."),
    ({"height": 8}, "Height (height) = 8 is not a positive multiple of 16; use 16."),
    ({"steps": 0}, "Steps (steps) = 0 must be at least 1."),
    ({"guidance_scale": 0.5}, "Guidance scale (guidance_scale) = 0.5 must be 1.0 or more (1.0 turns classifier-free "
                              "guidance off)."),
    ({"width": 32.5}, "Width (width) must be a whole number, not 32.5."),
    ({"blocks_to_swap": 1.5}, "Blocks to swap (blocks_to_swap) must be a whole number, not 1.5."),
    ({"blocks_to_swap": -1}, "Blocks to swap (blocks_to_swap) = -1 is negative; use 0 (no swap) or a number of "
                             "blocks."),
    ({"fp8": True, "fp8_scaled": True}, "fp8 transformer storage and Scaled fp8 storage (fp8_scaled) are two "
                                        "ways of storing the transformer in fp8; turn on one of them (scaled fp8 is "
                                        "the more precise)."),
])
def test_a_bad_setting_is_one_sentence_under_its_field_and_run_submits_nothing(ctx, changes, sentence):
    panel = GeneratePanel(ctx)
    bad = form(**changes)
    name = next(iter(GenerateForm().with_changes(**changes).problems()))
    slots = dict(zip(FIELD_ERRORS, panel.field_errors(*bad.values())))
    assert slots[name] == gr.update(value=f"⚠ {sentence}", visible=True)
    assert all(update == gr.update(value="", visible=False) for other, update in slots.items() if other != name)
    shown = run(panel, bad)
    assert shown[STATUS] == "⚠ Not started: 1 setting needs attention; each says why beside it."  # said once, there
    assert dict(zip(FIELD_ERRORS, shown[SLOTS:]))[name] == gr.update(value=f"⚠ {sentence}", visible=True)
    assert ctx.jobs.list() == []
    assert all(not update["visible"] for update in panel.field_errors(*form().values()))


def test_every_wrong_field_shows_its_own_message_at_once(ctx):
    panel = GeneratePanel(ctx)
    bad = form(width=33, frames=6, steps=2.5, memory_limit_gb=-2)
    slots = dict(zip(FIELD_ERRORS, panel.field_errors(*bad.values())))
    wrong = {name: update["value"] for name, update in slots.items() if update["visible"]}
    assert wrong == {"width": "⚠ Width (width) = 33 is not a positive multiple of 16; use 32.",
                     "frames": "⚠ Frames (frames) = 6 is not 4n+1 (1, 5, 9, ..., 81); use 5 or 9.",
                     "steps": "⚠ Steps (steps) must be a whole number, not 2.5.",
                     "memory_limit_gb": "⚠ GPU memory limit (GB) (memory_limit_gb) = -2.0 is not a size; give the GPU "
                                        "memory to stay under in GB, e.g. 24, or leave it empty."}
    assert run(panel, bad)[STATUS] == "⚠ Not started: 4 settings need attention; each says why beside it."


def test_requests_the_model_cannot_run_are_refused_before_any_job(ctx, tmp_path):
    panel = GeneratePanel(ctx)
    image = tmp_path / "start.png"
    Image.new("RGB", (16, 16), "red").save(image)
    cases = {
        "The prompt is empty; write what the video should show.": form(prompt="  "),
        "Low-noise guidance scale (guidance_scale_2) is for a Wan2.2 A14B expert pair; leave it empty for a "
        "single-transformer model.": form(guidance_scale_2=3.0),
        "This is a text-to-video model, so it cannot start from an image; remove the start image or pick an "
        "image-to-video model.": form(image=str(image)),
    }
    for sentence, request in cases.items():
        assert run(panel, request)[STATUS] == f"⚠ {sentence}"
    missing = ctx.workspace.root / "outputs" / "merged" / "gone.safetensors"
    for model, sentence in (("", "No model is chosen; pick a demo model or a merged model, or type a checkpoint "
                                 "path."),
                            ("outputs/merged/gone.safetensors", f"The model file {missing} does not exist; pick a "
                                                                f"model from the list or check the path.")):
        shown = run(panel, form(model=model))  # said once, under the model; the status says nothing started
        assert (shown[STATUS], shown[MODEL_MESSAGE]) == (
            "⚠ Not started: 1 setting needs attention; each says why beside it.", f"⚠ {sentence}")
    shown = run(panel, form(vae="no-vae-here"))
    vae_slot = dict(zip(FIELD_ERRORS, shown[SLOTS:]))["vae"]
    assert vae_slot["value"] == (f"⚠ VAE folder (vae) {ctx.workspace.root / 'no-vae-here'} does not exist; type an "
                                 f"existing folder or leave it empty to use the workspace's.")
    assert shown[STATUS] == "⚠ Not started: 1 setting needs attention; each says why beside it."
    assert ctx.jobs.list() == [] and not (ctx.workspace.outputs / "start_images").exists()
    started = run(panel, form(guidance_scale_2=3.0, model="demo-a14b"))  # a pair takes the low-noise guidance
    assert started[STATUS].startswith("Job ")
    (job,) = ctx.jobs.list()
    assert "--guidance_scale_2=3.0" in job.argv
    ctx.jobs.stop(job.id, grace_s=0)
    until_finished(panel, started[0])


def test_overlapping_loras_are_flagged_when_picked_and_refused_on_run(ctx):
    panel = GeneratePanel(ctx)
    slots = panel.lora_slots("demo-t2v", "", ["bob.safetensors", "carol.safetensors"], [], *[1.0] * MAX_LORAS)
    conflicts = slots[1]
    assert "bob.safetensors and carol.safetensors both change blocks 4-5" in conflicts
    assert "Run is refused unless you tick “Allow overlap”" in conflicts

    shown = run(panel, form(loras={"bob.safetensors": 1.0, "carol.safetensors": 0.5}))
    assert shown[CONFLICTS] == conflicts  # said once, under the LoRA list; the status says nothing started
    assert shown[STATUS] == "⚠ Not started: 1 setting needs attention; each says why beside it."
    assert ctx.jobs.list() == []
    gone = run(panel, form(loras={"bob.safetensors": 1.0, "gone.safetensors": 1.0}))
    assert "gone.safetensors does not exist" in gone[CONFLICTS] and gone[STATUS].startswith("⚠ Not started: 1 ")
    assert ctx.jobs.list() == []

    allowed = run(panel, form(loras={"bob.safetensors": 1.0, "carol.safetensors": 0.5}, allow_overlap=True))
    assert "⚠ Allowed overlap: bob.safetensors and carol.safetensors both change blocks 4-5" in allowed[STATUS]
    (job,) = ctx.jobs.list()
    assert "--allow_overlap" in job.argv
    ctx.jobs.stop(job.id, grace_s=0)
    until_finished(panel, allowed[0])


def test_disjoint_loraids_run_as_one_generate_job_and_its_failure_is_shown_in_one_sentence(ctx):
    panel = GeneratePanel(ctx)
    slots = panel.lora_slots("demo-t2v", "", ["alice.safetensors", "bob.safetensors"], [], *[1.0] * MAX_LORAS)
    assert slots[0] == ["alice.safetensors", "bob.safetensors"]
    assert "No conflict" in slots[1]
    first, second, third = slots[2], slots[3], slots[4]
    assert (first["visible"], first["label"], first["info"]) == (
        True, "alice.safetensors multiplier", "LORAID 1 · blocks 0-1 · lora rank 4")
    assert (second["label"], second["info"]) == ("bob.safetensors multiplier", "LORAID 3 · blocks 4-5 · lora rank 4")
    assert third == gr.update(visible=False)

    started = run(panel, form(loras={"alice.safetensors": 1.0, "bob.safetensors": 0.7}))
    assert started[STATUS].startswith("Job ")
    (job,) = ctx.jobs.list()
    loras = ctx.workspace.loras.resolve()
    assert job.kind == "generate" and job.title == "Generate: a red ball bouncing"
    assert job.argv[1:] == [
        "-m", "backend", "generate", f"--workspace={ctx.workspace.root}", "--model=demo-t2v",
        "--prompt=a red ball bouncing", "--negative_prompt=", "--width=32", "--height=32", "--frames=9", "--fps=16",
        "--steps=2", "--guidance_scale=5.0", "--flow_shift=3.0", "--sampler=unipc", "--seed=7",
        "--lora", str(loras / "alice.safetensors"), str(loras / "bob.safetensors"), "--multiplier", "1.0", "0.7"]
    assert job.settings["loras"] == [{"path": str(loras / "alice.safetensors"), "multiplier": 1.0},
                                     {"path": str(loras / "bob.safetensors"), "multiplier": 0.7}]

    shown = until_finished(panel, started[0])
    vae = ctx.workspace.vae
    assert shown[1] == (f"Job {job.id} ended (failed): VAE folder (vae) {vae} does not exist; give an existing folder, "
                        f"or leave it empty to use the workspace's.")  # the setting as the form names it, no flag
    assert isinstance(shown[-1], gr.Timer) and shown[-1].active is False


def test_multipliers_stay_with_their_files_when_the_picks_change(ctx):
    panel = GeneratePanel(ctx)
    before = ["alice.safetensors", "bob.safetensors"]
    slots = panel.lora_slots("demo-t2v", "", ["bob.safetensors", "carol.safetensors", "missing.safetensors"],
                             before, 1.0, 0.7, *[1.0] * (MAX_LORAS - 2))
    assert slots[0] == ["bob.safetensors", "carol.safetensors", "missing.safetensors"]
    assert [slots[2]["value"], slots[3]["value"], slots[4]["value"]] == [0.7, 1.0, 1.0]
    assert "missing.safetensors does not exist" in slots[1]
    assert all(update == gr.update(visible=False) for update in slots[5:])

    stale = form(loras={"alice.safetensors": 1.0}).with_changes(slot_files=())
    assert run(panel, stale)[STATUS] == "⚠ The LoRA list is still updating; press Run again."
    assert ctx.jobs.list() == []


def test_model_choices_list_demos_and_merged_models_and_check_typed_paths(ctx):
    ws = ctx.workspace
    merged = ws.outputs / "merged"
    merged.mkdir(parents=True)
    shutil.copy(ws.demo_t2v / TRANSFORMER_FILE, merged / "demo-t2v+alice.safetensors")
    shutil.copy(expert_file(ws, "high"), merged / "pair-high_noise.safetensors")
    shutil.copy(expert_file(ws, "low"), merged / "pair-low_noise.safetensors")
    panel = GeneratePanel(ctx)
    pair = "outputs/merged/pair-high_noise.safetensors | outputs/merged/pair-low_noise.safetensors"
    assert panel.model_choices() == [
        ("Demo T2V (tiny demo T2V)", "demo-t2v"), ("Demo A14B pair (tiny demo A14B-style pair)", "demo-a14b"),
        ("Merged A14B pair: pair (high + low noise)", pair),
        ("Merged: demo-t2v+alice.safetensors", "outputs/merged/demo-t2v+alice.safetensors")]
    noise = "  \nℹ A tiny demo model with random weights: what it makes is coloured noise, as expected."
    assert panel.model_message(pair, "").startswith("2 files (an expert pair: high-noise, then low-noise), model type "
                                                    "demo-a14b." + noise)  # demo-shaped files: the same note
    assert panel.model_message("outputs/merged/demo-t2v+alice.safetensors", "").startswith(
        "1 file, model type detected." + noise)
    assert panel.model_message("demo-t2v", "").startswith(noise.strip())
    assert panel.model_message("outputs/merged/demo-t2v+alice.safetensors", "demo-a14b") == (
        "⚠ tiny demo A14B-style pair is a pair of experts; give both files as `HIGH_NOISE | LOW_NOISE` or pick a "
        "single-transformer model type.")

    started = run(panel, form(model=pair))
    (job,) = ctx.jobs.list()
    high, low = merged / "pair-high_noise.safetensors", merged / "pair-low_noise.safetensors"
    assert job.argv[job.argv.index("--dit"):job.argv.index("--dit") + 4] == [
        "--dit", str(high.resolve()), str(low.resolve()), "--model_kind=demo-a14b"]
    ctx.jobs.stop(job.id, grace_s=0)
    until_finished(panel, started[0])


def test_gallery_lists_results_and_reuse_fills_the_form_from_the_sidecar(ctx):
    ws = ctx.workspace
    panel = GeneratePanel(ctx)
    nothing = panel.reuse(None, *form().values())
    assert nothing[-1] == "⚠ No result is selected; click a result in the gallery first."
    assert all(value == gr.skip() for value in nothing[:-1])

    settings = GenerateSettings(prompt="loraidA, a cat on a sofa", negative_prompt="blurry", seed=1234, steps=3,
                                guidance_scale=4.5, flow_shift=5.0, sampler="euler", width=48, height=32, frames=5)
    record = {"settings": settings.to_dict(), "seed": 1234,
              "model": {**ModelChoice(workspace=ws.root, model="demo-t2v").describe(), "label": "tiny demo T2V"},
              "loras": [{"path": str(ws.loras / "alice.safetensors"), "multiplier": 1.0, "loraid": 1},
                        {"path": str(ws.loras / "bob.safetensors"), "multiplier": 0.7, "loraid": 3}],
              "lora_mode": "hooked", "allow_overlap": False,
              "memory": {"cpu_offload": False, "fp8": True, "vae_tiling": True, "blocks_to_swap": 3}}
    written = write_result(output_stem(ws.outputs, 1234), np.random.default_rng(0).random((5, 32, 48, 3)), record)

    shown = panel.tick(FollowedGeneration())
    gallery, results = shown[3], shown[4]
    assert gallery["value"] == [(written["video"], "seed 1234 · 2 LoRAs · loraidA, a cat on a sofa")]
    assert results == [written["sidecar"]]
    assert isinstance(shown[-1], gr.Timer) and shown[-1].active is False

    selected, settings_text = panel.select(results, gr.SelectData(None, {"index": 0, "value": None}))
    assert selected == written["sidecar"]
    assert '"prompt": "loraidA, a cat on a sofa"' in settings_text

    refilled = panel.reuse(selected, *form().values())
    assert refilled[-1] == f"Filled the form with the settings of {Path(written['video']).name}; press Run to make " \
                           f"it again."
    again = GenerateForm.from_values(*refilled[:-1])
    assert (again.prompt, again.negative_prompt, again.seed, again.random_seed) == (
        "loraidA, a cat on a sofa", "blurry", 1234, False)
    assert (again.width, again.height, again.frames, again.steps, again.guidance_scale, again.flow_shift,
            again.sampler) == (48, 32, 5, 3, 4.5, 5.0, "euler")
    assert (again.model, again.lora_mode, again.fp8, again.vae_tiling, again.cpu_offload, again.blocks_to_swap) == (
        "demo-t2v", "hooked", True, True, False, 3)
    assert again.lora_files == again.slot_files == ("alice.safetensors", "bob.safetensors")
    assert again.multipliers[:3] == (1.0, 0.7, 1.0)
    resubmitted = run(panel, again)  # the refilled form is a valid request as it stands
    assert resubmitted[STATUS].startswith("Job ")
    (job,) = ctx.jobs.list()
    assert "--hooked" in job.argv and "--fp8" in job.argv and "--seed=1234" in job.argv
    assert "--blocks_to_swap=3" in job.argv
    ctx.jobs.stop(job.id, grace_s=0)
    until_finished(panel, resubmitted[0])


def test_the_second_guidance_scale_shows_only_for_an_expert_pair(ctx):
    panel = GeneratePanel(ctx)
    values = [value for _, value in panel.model_choices()]
    pairs = [value for value in values if panel.is_pair(value, "")]
    singles = [value for value in values if value not in pairs]
    assert pairs and singles  # the demo workspace holds both kinds
    assert all(panel.pair_fields(value, "")["visible"] for value in pairs)
    assert not any(panel.pair_fields(value, "")["visible"] for value in singles)
    assert "demo-a14b" in pairs and "demo-t2v" in singles


def test_loraids_and_router_smoothing_reach_the_job_as_the_generate_command_parses_them(ctx):
    """LORAIDs (LoRAs of the workspace registry, at strength 1.0 after the files' multipliers) and the LoRA-MoE
    router smoothing set in the tab are in the job's argv, read back by the `generate` command's own parser."""
    LoraidRegistry.for_workspace(ctx.workspace.root).scan(ctx.workspace.loras)
    model = demo_parts.build_transformer("demo-t2v", 0, part=10)
    spec = MoeSpec(expert_names=("red", "blue"), rank=2, alpha=1.0,
                   network_args=("exclude_patterns=['.*']", r"include_patterns=['blocks\.(4|5)\..*']"))
    moe = save_moe(ctx.workspace.loras / "colours.safetensors", {"single": MoeNetwork.create(model, spec)},
                   model_kind="demo-t2v", step=1, stage1={})
    panel = GeneratePanel(ctx)
    request = form(loras={"alice.safetensors": 0.5}, loraid="3, 2", router_ema=0.9, moe=str(moe))
    assert not any(update["visible"] for update in panel.field_errors(*request.values()))
    started = run(panel, request)
    assert started[STATUS].startswith("Job "), started[STATUS]
    (job,) = ctx.jobs.list()
    assert job.argv[1:4] == ["-m", "backend", "generate"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(job.argv[4:])
    assert resolve_loraids(args.loraid) == [3, 2]
    assert args.lora == [str(ctx.workspace.loras.resolve() / "alice.safetensors")]
    assert flatten_appended(args.multiplier) == [0.5, 1.0, 1.0]  # one per item: the file, then each LORAID
    assert (args.moe, args.router_ema) == (str(moe.resolve()), 0.9)
    ctx.jobs.stop(job.id, grace_s=0)
    until_finished(panel, started[0])

    no_smoothing = run(panel, form(loraid="", router_ema=0, moe=str(moe)))
    job = next(j for j in ctx.jobs.list() if j.id != job.id)
    args = parser.parse_args(job.argv[4:])
    assert "--loraid" not in job.argv and args.router_ema == 0.0  # 0 is a value (no smoothing)
    ctx.jobs.stop(job.id, grace_s=0)
    until_finished(panel, no_smoothing[0])


def assert_refused_beside(ctx, panel, bad, name: str, sentence: str) -> None:
    """`bad` shows `sentence` beside field `name` only, and Generate starts nothing."""
    slots = dict(zip(FIELD_ERRORS, panel.field_errors(*bad.values())))
    assert {other for other, update in slots.items() if update["visible"]} == {name}
    assert slots[name] == gr.update(value=f"⚠ {sentence}", visible=True)
    shown = run(panel, bad)
    assert shown[STATUS] == "⚠ Not started: 1 setting needs attention; each says why beside it."
    assert ctx.jobs.list() == []


@pytest.mark.parametrize("changes, name, sentence", [
    ({"loraid": "1, 0"}, "loraid", "LORAIDs (loraid) 0 is not a LORAID; IDs are whole numbers from 1."),
    ({"loraid": "1 two"}, "loraid", "LORAIDs (loraid) `two` is not a whole number; type whole numbers such as 1 2 3."),
    ({"loraid": "7"}, "loraid", "LORAIDs (loraid) 7 has no LoRA in the workspace's registry; pick an ID the LORAID "
                                "tab lists, or choose the file under LoRA files."),
    ({"router_ema": 1.0}, "router_ema", "Router smoothing (router_ema) = 1.0: give a β from 0 (no smoothing) up to, "
                                        "not including, 1."),
])
def test_a_wrong_loraid_or_router_smoothing_is_said_beside_it_and_nothing_starts(ctx, changes, name, sentence):
    LoraidRegistry.for_workspace(ctx.workspace.root).scan(ctx.workspace.loras)
    panel = GeneratePanel(ctx)
    assert_refused_beside(ctx, panel, form(**changes), name, sentence)


def colours_moe(ctx) -> Path:
    model = demo_parts.build_transformer("demo-t2v", 0, part=10)
    spec = MoeSpec(expert_names=("red", "blue"), rank=2, alpha=1.0,
                   network_args=("exclude_patterns=['.*']", r"include_patterns=['blocks\.(4|5)\..*']"))
    return save_moe(ctx.workspace.loras / "colours.safetensors", {"single": MoeNetwork.create(model, spec)},
                    model_kind="demo-t2v", step=1, stage1={})


@pytest.mark.parametrize("changes, name, sentence", [
    ({"moe": "loras/alice.safetensors"}, "moe",
     "alice.safetensors is not a LoRA-MoE file (no loraid_studio.lora_moe header); load it as an ordinary LoRA among "
     "the LoRA files (lora) instead."),
    ({"moe": "loras/colours.safetensors", "hint": "green"}, "hint",
     "Expert (hint) `green` is not an expert of colours.safetensors; choose one of red, blue, or leave it unset for "
     "the router."),
    ({"moe": "loras/colours.safetensors", "expert_strength": "red=0.5, green=2"}, "expert_strength",
     "Expert strengths (expert_strength) names `green`, which is not an expert of colours.safetensors; the experts "
     "are red, blue."),
    ({"moe": "loras/colours.safetensors", "expert_strength": "red"}, "expert_strength",
     "Expert strengths (expert_strength) `red`: write NAME=VALUE, e.g. `red=0.8`."),
    ({"hint": "red"}, "moe", "Expert (hint) and Expert strengths (expert_strength) choose experts of a LoRA-MoE file; "
                             "choose the LoRA-MoE file (moe) too."),
])
def test_a_wrong_moe_pick_is_said_beside_its_field_cleared_when_fixed_and_nothing_starts(ctx, changes, name,
                                                                                          sentence):
    colours_moe(ctx)
    panel = GeneratePanel(ctx)
    assert_refused_beside(ctx, panel, form(**changes), name, sentence)
    fixed = form(moe="loras/colours.safetensors", hint="blue", expert_strength="red=0.5, *=1.5")
    assert not any(update["visible"] for update in panel.field_errors(*fixed.values()))


def test_the_moe_picks_reach_the_job_as_the_generate_command_parses_them(ctx):
    moe = colours_moe(ctx)
    panel = GeneratePanel(ctx)
    started = run(panel, form(moe="loras/colours.safetensors", hint="blue", expert_strength="red=0.5, *=1.5"))
    assert started[STATUS].startswith("Job "), started[STATUS]
    (job,) = ctx.jobs.list()
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(job.argv[4:])
    assert (args.moe, args.hint, args.expert_strength) == (str(moe.resolve()), "blue", ["red=0.5", "*=1.5"])
    assert args.router_ema is None  # not set: the file's own
    ctx.jobs.stop(job.id, grace_s=0)
    until_finished(panel, started[0])
