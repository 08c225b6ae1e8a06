"""The Train tab's handlers without a browser: the generated form, every field's round trip (form -> preset JSON ->
form and form -> TOML -> trainer), and a table of bad inputs that each get their own message and change nothing."""
from __future__ import annotations

import json
import re
from pathlib import Path

import gradio as gr
import pytest
import torch
from safetensors.torch import save_file

from backend.config.network_builder import BUILDER_KEYS
from backend.jobs import JobManager
from backend.loraid.allocation import allocate
from backend.loraid.registry import LoraidRegistry
from backend.models.demo import build_demo_workspace
from backend.train.__main__ import parse
from backend.train.settings import TrainSettings
from ui.app import build_app
from ui.tabs.train import OUTPUTS
from ui.context import AppContext
from ui.train_form import FIELDS, OWN_WIDGETS
from ui.train_network import GROUPS, net_key
from ui.preset_row import DELETE_ASKED
from ui.train_panel import OPENED, OUTSIDE, TrainPanel
from ui.train_run import RunSession
from tests.demo_files import cache_concept_a
from tests.app.toasts import no_toast

WIDGET_NAMES = [n for n in FIELDS if n not in OWN_WIDGETS] + ["loraid"] + [net_key(k) for k in BUILDER_KEYS]
EVERY_FIELD_CHANGED = TrainSettings(
    model_kind="wan2.2-t2v-a14b", dit="/m/low.safetensors", dit_high_noise="/m/high.safetensors", expert="both",
    timestep_boundary=0.9, ti2v_mode="i2v", vae="/m/vae", text_encoder="/m/t5",
    dataset_config="datasets/x/dataset.toml",
    network_type="dora", network_dim=12, network_alpha=6.5,
    network_args=["use_rslora=True", "loraplus_lr_ratio=4.0", "module_dropout=0.05", "exclude_mod=False",
                  "verbose=True", "rank_q=4", "rank_kvo=6", "rank_ffn=8"],
    network_weights="/m/init.safetensors", loraid=3, blocks_per_loraid=4, optimizer_type="prodigy",
    learning_rate=3e-4, weight_decay=0.02, max_grad_norm=0.5, gradient_accumulation_steps=2,
    lr_scheduler="cosine_with_restarts", lr_warmup_steps=0.1, lr_scheduler_num_cycles=3, lr_scheduler_power=2.0,
    max_train_steps=123, max_train_epochs=7, seed=7, timestep_sampling="sigmoid", discrete_flow_shift=5.0,
    sigmoid_scale=1.5, logit_mean=0.2, logit_std=0.8, min_timestep=10, max_timestep=990,
    weighting_scheme="logit_normal", mixed_precision="bf16", gradient_checkpointing=True, fp8_base=True,
    memory="manual", memory_limit_gb=20.5, fp8_scaled=True, max_data_loader_n_workers=5,
    blocks_to_swap=2, offload_activations=True, uncheckpointed_blocks=3, attn_mode="flash", compile="on", output_dir="out",
    output_name="round-trip",
    save_every_n_steps=50, save_every_n_epochs=2, save_last_n_steps=3, save_last_n_epochs=4, save_precision="bf16",
    save_state=True, overwrite_output=True, nonfinite_loss="skip", resume="loras/x-state", sample_prompts="prompts.txt", sample_every_n_steps=25,
    sample_every_n_epochs=1, log_every_n_steps=3, logging_dir="logs", distributed="fsdp", num_machines=2,
    machine_rank=1, main_process_ip="10.0.0.5", main_process_port=29600)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_demo_workspace(tmp_path_factory.mktemp("train_tab") / "ws", seed=0)


@pytest.fixture
def panel(workspace, tmp_path):
    return TrainPanel(AppContext(workspace, JobManager(tmp_path / "jobs")))


def widgets_of(updates: dict) -> dict:
    """The widget values a handler set (not its messages or choice lists)."""
    values = {}
    for name, value in updates.items():
        if name in WIDGET_NAMES and (not isinstance(value, dict) or "value" in value):
            values[name] = value["value"] if isinstance(value, dict) else value
    return values


def demo_form(panel: TrainPanel) -> dict:
    return widgets_of(panel.fill(panel.store.load("shipped:lora"), {}))


def test_the_dataset_list_shows_a_toml_written_after_the_page_opened(panel, workspace):
    new_toml = workspace.datasets / "late" / "dataset.toml"
    typed = "/somewhere/else/dataset.toml"
    assert "datasets/late/dataset.toml" not in panel.refresh_datasets({})["dataset_config"]["choices"]
    new_toml.parent.mkdir()
    new_toml.write_text("[general]\nresolution = [64, 64]\n", encoding="utf-8")
    try:
        choices = panel.refresh_datasets({"dataset_config": typed})["dataset_config"]["choices"]
    finally:
        new_toml.unlink()
        new_toml.parent.rmdir()
    assert choices[0] == typed and "datasets/late/dataset.toml" in choices
    assert "datasets/demo/concept_a/dataset.toml" in choices


def test_the_form_is_generated_with_a_widget_for_every_setting(workspace, tmp_path):
    blocks = build_app(workspace, JobManager(tmp_path / "jobs"))
    ids = {block.elem_id for block in blocks.blocks.values() if getattr(block, "elem_id", None)}
    for name in FIELDS:
        if name != "network_args":
            assert f"train-{name}" in ids, name
        assert f"train-{name}-error" in ids, name
    assert {f"train-net-{key}" for key in BUILDER_KEYS} <= ids
    assert sorted(k for _, keys in GROUPS for k in keys) == sorted(BUILDER_KEYS)
    assert {"train-preset", "train-start", "train-stop", "train-resume-run", "train-loss-chart", "train-lr-chart",
            "train-network-args", "train-loraid-allocation", "train-progress", "train-log"} <= ids
    accordions = [b.label for b in blocks.blocks.values() if isinstance(b, gr.Accordion)]
    assert [a for a in accordions if a in TrainSettings.groups()] == ["Model", "Dataset", "Network", "Optimizer",
                                                                      "Training", "Memory", "Saving", "Sampling",
                                                                      "Logging", "Distributed"]


def test_every_field_round_trips_through_the_preset_json_and_the_trainer_toml(panel, workspace, tmp_path):
    assert set(EVERY_FIELD_CHANGED.changed_fields()) == set(TrainSettings.model_fields)
    form = widgets_of(panel.fill(EVERY_FIELD_CHANGED, {}))
    assert set(form) == set(WIDGET_NAMES)
    assert panel.read(form).settings == EVERY_FIELD_CHANGED  # form -> settings

    saved = panel.save_preset({**form, "preset:name": "every field"})
    assert saved["preset:message"].startswith("Saved user preset `every field`")
    document = json.loads((workspace.presets / "every field.json").read_text())
    assert document["schema_version"] == 2 and TrainSettings(**document["settings"]) == EVERY_FIELD_CHANGED
    loaded = panel.load_preset({"preset": "user:every field"})
    assert set(loaded) <= set(OUTPUTS["load_preset"]) and set(saved) <= set(OUTPUTS["save_preset"])
    assert widgets_of(loaded) == form  # preset JSON -> the same form

    shown = panel.show_command({**form, "run:processes": 1})
    run_file = tmp_path / "run.toml"
    run_file.write_text(shown["command:toml"])
    trainer_settings, trainer_workspace = parse(["--config", str(run_file), "--workspace", str(workspace.root)])
    assert trainer_settings == EVERY_FIELD_CHANGED and trainer_workspace.root == workspace.root
    assert "--network_args use_dora=True use_rslora=True" in shown["command:musubi"]


@pytest.mark.filterwarnings("ignore::UserWarning")  # the toast that goes with the refused Show command
def test_the_command_panel_follows_the_form_once_shown(panel, workspace):
    form = {**demo_form(panel), "run:processes": 1}
    assert "command:toml" not in panel.validate(form)  # not shown yet: nothing is computed
    shown = {**form, **panel.show_command(form)}
    assert "max_train_steps = 300" in shown["command:toml"]
    changed = panel.validate({**shown, "max_train_steps": 42})
    assert "max_train_steps = 42" in changed["command:toml"] and "max_train_steps = 300" not in changed["command:toml"]
    assert "--max_train_steps 42" in changed["command:musubi"]
    broken = panel.validate({**shown, "max_train_steps": 2.5})  # refused at the field: no command of other settings
    assert broken["command:toml"] == broken["command:ours"] == broken["command:musubi"] == ""
    assert "fix the form" in broken["command:notes"]
    refused = panel.show_command({**shown, "run:processes": 0})
    assert refused["command:toml"] == "" and "Processes is 0" in refused["run:message"]


def test_a_job_opened_from_the_jobs_tab_fills_the_form(panel, workspace):
    settings = TrainSettings(network_type="dora", network_dim=12, max_train_steps=77, output_name="from-a-job",
                             dataset_config="datasets/demo/concept_a/dataset.toml")
    ref = panel.store.save("job-x", settings, replace=True)
    try:
        form = demo_form(panel)
        opened = panel.open_preset({**form, OPENED: {"key": ref.key, "job": "x"}})
        assert set(opened) <= set(OUTPUTS["open_preset"])
        assert panel.read({**form, **widgets_of(opened)}).settings == settings
        assert opened["preset"]["value"] == ref.key
        assert "The form shows the settings of job x (user preset `job-x`)" in opened["preset:message"]
        assert panel.open_preset({**form, OPENED: None}) == {}
    finally:
        ref.path.unlink()


def test_choosing_a_preset_shows_its_description_and_load_repeats_it(panel):
    lora = json.loads((Path(__file__).resolve().parents[2] / "presets" / "lora.json").read_text())["description"]
    assert panel.describe_preset({"preset": "shipped:lora"})["preset:message"].startswith(f"`lora`: {lora}")
    assert panel.load_preset({"preset": "shipped:lora"})["preset:message"] == f"Loaded preset `lora`.  \n{lora}"


def test_recipe_and_paste_change_the_network_args_lines(panel):
    form = demo_form(panel)
    assert panel.validate(form)["net:text"] == ""
    dora = panel.apply_recipe({**form, "net:recipe": "dora"})
    assert dora["network_type"] == "dora" and dora["net:text"] == "use_dora=True"
    combo = panel.apply_recipe({**form, "net:recipe": "full-combo"})
    assert combo["net:text"].splitlines() == ["use_rslora=True", "use_dora=True", "loraplus_lr_ratio=8.0"]
    pasted = panel.apply_paste({**form, "net:paste": '"algo=lokr" "factor=4" "rank_ffn=2"'})
    assert pasted["network_type"] == "lokr" and pasted[net_key("factor")] == "4"
    assert pasted["net:text"].splitlines() == ["algo=lokr", "rank_ffn=2", "factor=4"]
    with_id = panel.validate({**form, "loraid": 2})
    assert with_id["net:text"].splitlines() == ["exclude_patterns=['.*']", r"include_patterns=[r'blocks\.(2|3)\..*']"]
    assert with_id["loraid:allocation"].startswith("LORAID 2 owns blocks 2-3")


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def register_lora(workspace, name: str, loraid: int, blocks_per_loraid: int) -> None:
    file = workspace.loras / name
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(b"stand-in; the registry entry names it")
    LoraidRegistry.for_workspace(workspace).register(file, allocate(loraid, 8, blocks_per_loraid, model="demo-t2v"))


def not_a_wan_checkpoint(tmp_path: Path) -> str:
    path = tmp_path / "not_wan.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(path))
    return str(path)


def preset_file(workspace, name: str, text: str) -> str:
    write(workspace.presets / f"{name}.json", text)
    return f"user:{name}"


# (case, handler, what the user did (by widget name; a callable gets (workspace, tmp_path)), where the message
# goes, what it says)
BAD_INPUTS = [
    ("dataset path missing", "validate", {"dataset_config": "datasets/none/dataset.toml"}, "error:dataset_config",
     r"dataset config .*none/dataset.toml does not exist"),
    ("dataset empty", "validate", {"dataset_config": ""}, "error:dataset_config", "No dataset TOML is chosen"),
    ("dataset corrupt", "validate", {"dataset_config": lambda ws, tmp: write(tmp / "bad.toml", "[general\n")},
     "error:dataset_config", "bad.toml is not valid TOML"),
    ("dit missing", "validate", {"dit": "models/none.safetensors"}, "error:dit", "none.safetensors does not exist"),
    ("dit not Wan", "validate", {"dit": lambda ws, tmp: not_a_wan_checkpoint(tmp)}, "error:dit",
     "is not a Wan transformer checkpoint"),
    ("rank zero", "validate", {"network_dim": 0}, "error:network_dim", r"Rank \(network_dim\) is 0; it must be at least 1"),
    ("lr cleared", "validate", {"learning_rate": None}, "error:learning_rate", "Learning rate .* is empty"),
    ("steps negative", "validate", {"max_train_steps": -5}, "error:max_train_steps", "is -5; it must be at least 1"),
    ("boundary text", "validate", {"timestep_boundary": "abc"}, "error:timestep_boundary", "'abc' is not a number"),
    ("epochs fraction", "validate", {"max_train_epochs": "2.5"}, "error:max_train_epochs", "is not a whole number"),
    ("timesteps crossed", "validate", {"min_timestep": 900, "max_timestep": 100}, "error:max_timestep",
     r"min_timestep \(900\) must be below max_timestep \(100\)"),
    ("output name empty", "validate", {"output_name": ""}, "error:output_name", "Output name .* is empty; enter a name"),
    ("dropout too big", "validate", {net_key("dropout"): "1.5"}, "error:network_args",
     "dropout=1.5: expected a number at least 0 and below 1"),
    ("factor without lokr", "validate", {net_key("factor"): "4"}, "error:network_args", "factor only applies to LoKr"),
    ("bad regex", "validate", {net_key("exclude_patterns"): "blocks\\.(0"}, "error:network_args",
     "is not a valid regular expression"),
    ("rank fraction", "validate", {net_key("rank_q"): "2.5"}, "error:network_args", "rank_q=2.5: expected a whole"),
    ("loraid past the end", "validate", {"loraid": 9}, "error:loraid", "LORAID 9 would own no block"),
    ("loraid with patterns", "validate", {"loraid": 1, net_key("include_patterns"): ".*ffn.*"}, "error:network_args",
     "LORAID 1 chooses the trained blocks itself"),
    ("loraid taken", "validate", {"loraid": 1, "_registered": ("alice.safetensors", 1, 2)}, "error:loraid",
     r"LORAID 1 is already taken by loras/alice.safetensors \(blocks 0-1\)"),
    ("loraid overlapping", "validate", {"loraid": 2, "blocks_per_loraid": "3", "_registered": ("bob.safetensors", 3, 2)},
     "error:loraid", r"LORAID 2 is already taken by loras/bob.safetensors \(blocks 4-5\)"),
    ("fp8 with dora", "validate", {"fp8_base": True, "network_type": "dora", net_key("use_dora"): True}, "error:fp8_base",
     "fp8_base cannot be combined with DoRA"),
    ("block swap past the end", "validate", {"blocks_to_swap": 9, "gradient_checkpointing": True},
     "error:blocks_to_swap", "blocks_to_swap=9 does not fit the .*, which has 8 blocks; use a number from 0 to 8"),
    ("block swap without checkpointing", "validate", {"blocks_to_swap": 4, "gradient_checkpointing": False},
     "error:blocks_to_swap", "blocks_to_swap=4 needs gradient_checkpointing"),
    ("offload without checkpointing", "validate", {"offload_activations": True, "gradient_checkpointing": False},
     "error:offload_activations", "turn gradient_checkpointing on or offload_activations off"),
    ("flash missing", "validate", {"attn_mode": "flash"}, "error:attn_mode", "needs the `flash-attn` package"),
    ("resume missing", "validate", {"resume": "loras/none-state"}, "error:resume", "none-state is not a folder"),
    ("weights missing", "validate", {"network_weights": "loras/none.safetensors"}, "error:network_weights",
     "none.safetensors is not a file"),
    ("samples without prompts", "validate", {"sample_every_n_steps": "10"}, "error:sample_prompts",
     "no sample prompts file is given"),
    ("prompts without interval", "validate", {"sample_prompts": lambda ws, tmp: write(tmp / "p.txt", "a red ball\n")},
     "error:sample_every_n_steps", "A sample prompts file is given but no interval"),
    ("bad sample prompt", "validate", {"sample_every_n_steps": "10",
                                       "sample_prompts": lambda ws, tmp: write(tmp / "p.txt", "a ball --f 6\n")},
     "error:sample_prompts", "--f 6 is not 4n\\+1"),
    ("paste bad value", "apply_paste", {"net:paste": "use_dora=maybe"}, "error:network_args",
     "use_dora=maybe: expected True or False"),
    ("paste unknown key", "apply_paste", {"net:paste": "use_dorra=True"}, "error:network_args",
     "Unknown network_args key `use_dorra`; did you mean `use_dora`"),
    ("preset corrupt", "load_preset", {"preset": lambda ws, tmp: preset_file(ws, "broken", "{oops")},
     "preset:message", "preset `broken` is not valid JSON"),
    ("preset unknown keys", "load_preset",
     {"preset": lambda ws, tmp: preset_file(ws, "typo", '{"schema_version": 2, "settings": {"netwrok_dim": 4}}')},
     "preset:message", r"unknown setting\(s\) `netwrok_dim` \(did you mean `network_dim`\?\)"),
    ("preset bad value", "load_preset",
     {"preset": lambda ws, tmp: preset_file(ws, "zero", '{"schema_version": 2, "settings": {"network_dim": 0}}')},
     "preset:message", "`network_dim` = 0 is invalid"),
    ("preset bad network_args", "load_preset",
     {"preset": lambda ws, tmp: preset_file(ws, "args", '{"schema_version": 2, "settings": {"network_args": ["x"]}}')},
     "preset:message", "preset `args`: network_args entry `x` is not key=value"),
    ("import not a preset", "import_preset", {"preset:file": lambda ws, tmp: write(tmp / "list.json", "[1, 2]")},
     "preset:message", "list.json is not a LORAID Studio preset"),
    ("save bad name", "save_preset", {"preset:name": "../outside"}, "preset:message", "not usable as a file name"),
    ("start without caches", "start", {}, "error:dataset_config",  # the app's words: no command line in the page
     r"no complete latent cache .*; cache its latents again in the Dataset tab \(Cache latents\)\.$"),
    ("outside not confirmed", "validate", {"output_dir": lambda ws, tmp: str(tmp / "elsewhere")}, "error:output_dir",
     "is outside the workspace .*; confirm writing there"),
    ("zero processes", "show_command", {"run:processes": 0}, "run:message", "Processes is 0; enter a whole number"),
    ("resume nothing", "resume", {}, "run:message", "No training run is shown here yet"),
]


def visible_errors(updates: dict) -> set[str]:
    return {name for name, value in updates.items()
            if name.startswith("error:") and isinstance(value, dict) and value.get("visible")}


@pytest.mark.parametrize("case, handler, change, slot, message", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_its_own_message_and_changes_nothing(panel, workspace, tmp_path, case, handler, change,
                                                            slot, message):
    form = {**demo_form(panel), "run:processes": 1}
    assert not panel.read(form).errors  # the starting point is a valid form
    presets_before = sorted(p.name for p in workspace.presets.glob("*"))
    change = dict(change)
    registered = change.pop("_registered", None)
    if registered:
        register_lora(workspace, *registered)
    values = {name: value(workspace, tmp_path) if callable(value) else value for name, value in change.items()}
    try:
        updates = getattr(panel, handler)({**form, **values})
    finally:
        if registered:
            LoraidRegistry.for_workspace(workspace).unregister(workspace.loras / registered[0])
    assert set(updates) <= set(OUTPUTS[handler]), f"{case}: {handler} returned names it is not wired to"
    shown = updates[slot]
    text = shown["value"] if isinstance(shown, dict) else shown
    assert [c[0] for c in BAD_INPUTS if re.search(c[4], text)] == [case], f"{case}: not its own message: {text}"
    assert widgets_of(updates) == {}, f"{case}: a refused input changed the form"
    assert visible_errors(updates) <= {slot}, f"{case}: other fields were flagged too"
    created = {p.name for p in workspace.presets.glob("*")} - set(presets_before)
    assert created <= {"broken.json", "typo.json", "zero.json", "args.json"}, "a refused preset was written"
    assert not list((workspace.root / "runs").glob("*.toml")), "a refused start wrote a run file"


def test_a_refused_start_says_each_problem_once_beside_its_field(panel, tmp_path):
    form = {**demo_form(panel), "run:processes": 1, "output_dir": str(tmp_path / "elsewhere")}
    with no_toast():
        refused = panel.start(form)
    shown = {name: update["value"] for name, update in refused.items()
             if name.startswith("error:") and isinstance(update, dict) and update.get("visible")}
    assert "is outside the workspace" in shown["error:output_dir"]
    count = len(shown)  # each problem under its field; the messages above only count them
    assert refused["run:message"] == f"Not started: {count} setting(s) need attention; each says why under it."
    assert refused["summary"] == f"⚠ {count} setting(s) need attention; each says why under it."
    assert not (tmp_path / "elsewhere").exists()


def test_an_output_folder_outside_the_workspace_passes_once_confirmed(panel, tmp_path):
    form = {**demo_form(panel), "output_dir": str(tmp_path / "elsewhere")}
    assert "outside the workspace" in panel.read(form).errors["output_dir"]
    assert panel.validate(form)["error:output_dir"]["visible"]
    confirmed = {**form, OUTSIDE: True}
    assert "output_dir" not in panel.read(confirmed).errors
    assert not panel.validate(confirmed)["error:output_dir"]["visible"]
    inside = {**demo_form(panel), "output_dir": "loras"}  # inside the workspace: nothing to confirm
    assert "output_dir" not in panel.read(inside).errors
    assert not (tmp_path / "elsewhere").exists()


def test_deleting_a_preset_asks_first(panel, workspace):
    form = demo_form(panel)
    panel.save_preset({**form, "preset:name": "to go"})
    path = workspace.presets / "to go.json"
    asked = panel.delete_preset({**form, "preset": "user:to go"})
    assert asked["preset:message"] == "Press **Delete** again to delete user preset `to go`."
    assert path.is_file() and set(asked) <= set(OUTPUTS["delete_preset"])
    other = panel.delete_preset({**form, "preset": "shipped:lora", DELETE_ASKED: asked[DELETE_ASKED]})
    assert "is a shipped preset and cannot be deleted" in other["preset:message"]
    assert panel.delete_preset({**form, "preset": "user:to go", DELETE_ASKED: other[DELETE_ASKED]})[
        "preset:message"].startswith("Press **Delete** again")  # another preset in between: asks again
    assert path.is_file()
    done = panel.delete_preset({**form, "preset": "user:to go", DELETE_ASKED: asked[DELETE_ASKED]})
    assert done["preset:message"] == "Deleted user preset `to go`." and not path.exists()
    assert done[DELETE_ASKED] is None


def test_network_type_dora_and_the_use_dora_box_agree(panel):
    form = demo_form(panel)
    assert form["network_type"] == "lora" and form[net_key("use_dora")] is False
    switched = panel.on_network_type({**form, "network_type": "dora"})
    assert switched[net_key("use_dora")] is True and not visible_errors(switched)
    dora = {**form, "network_type": "dora", net_key("use_dora"): True}
    assert panel.read(dora).settings.network_type == "dora"
    assert "use_dora=True" in switched["net:text"]  # musubi reads DoRA as use_dora=True
    refilled = widgets_of(panel.fill(panel.read(dora).settings, {}))
    assert refilled["network_type"] == "dora" and refilled[net_key("use_dora")] is True
    unticked = panel.validate({**form, "network_type": "dora", net_key("use_dora"): False})
    assert unticked["error:network_args"]["value"] == ("⚠ Network type dora always trains with use_dora; tick "
                                                       "use_dora again, or choose network type lora to train "
                                                       "without DoRA.")
    assert panel.on_network_type({**form, "network_type": "loha"}).get(net_key("use_dora")) is None


def test_fields_of_other_models_are_hidden(panel, workspace, tmp_path):
    expert_fields, ti2v_fields = ("dit_high_noise", "expert", "timestep_boundary"), ("ti2v_mode",)
    form = demo_form(panel)

    def visible(updates):
        return {name for name in (*expert_fields, *ti2v_fields) if updates[name].get("visible")}

    for kind, shown in (("wan2.1-t2v-14b", set()), ("demo-t2v", set()), ("wan2.2-t2v-a14b", set(expert_fields)),
                        ("demo-a14b", set(expert_fields)), ("wan2.2-ti2v-5b", set(ti2v_fields))):
        assert visible(panel.on_model_kind({**form, "model_kind": kind})) == shown, kind
    a14b = panel.fill(EVERY_FIELD_CHANGED, {})  # a preset of an A14B run shows its expert fields, values kept
    assert visible(a14b) == set(expert_fields) and a14b["expert"]["value"] == "both"
    assert visible(panel.fill(panel.store.load("shipped:lora"), {})) == set()
    blocks = build_app(workspace, JobManager(tmp_path / "jobs"))
    by_id = {block.elem_id: block for block in blocks.blocks.values() if getattr(block, "elem_id", None)}
    assert not any(by_id[f"train-{name}"].visible for name in (*expert_fields, *ti2v_fields))  # the demo T2V
    assert by_id["train-dit"].visible


def test_the_table_covers_at_least_twenty_kinds_of_bad_input():
    assert len({case[0] for case in BAD_INPUTS}) == len(BAD_INPUTS) >= 20


@pytest.fixture(scope="module")
def cached_workspace(tmp_path_factory):
    """A demo workspace with concept A's latents and text cached (what the Dataset tab's cache jobs make)."""
    ws = build_demo_workspace(tmp_path_factory.mktemp("train_run") / "ws", seed=0)
    cache_concept_a(ws)
    return ws


def tick_until(panel: TrainPanel, session, condition, timeout_s: float = 120):
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        updates = panel.tick({"run:session": session})
        session = updates["run:session"]
        if condition(session, updates):
            return session, updates
        time.sleep(0.3)
    raise AssertionError(f"not reached within {timeout_s} s: {session.progress.summary()}")


def test_start_stop_resume_and_finish_a_real_run(cached_workspace, tmp_path):
    manager = JobManager(cached_workspace.jobs)
    panel = TrainPanel(AppContext(cached_workspace, manager))
    steps = 60  # enough that a fast machine cannot finish the run before the stop request lands
    form = {**demo_form(panel), "max_train_steps": steps, "log_every_n_steps": 1, "save_every_n_steps": "",
            "loraid": 1, "output_name": "concept-a", "run:processes": 1}
    started = panel.start(form)
    assert set(started) <= set(OUTPUTS["start"])
    session = started["run:session"]
    assert started["run:message"].startswith(f"Started training job {session.job_id}")
    run_files = list((cached_workspace.root / "runs").glob("*-concept-a.toml"))
    assert len(run_files) == 1 and parse(["--config", str(run_files[0])])[0] == panel.read(form).settings

    asked = panel.start({**form, "output_name": "second-run"})  # a second Start while it runs asks first
    assert "Queue after it" in asked["run:message"] and asked["run:queue"]["visible"] is True
    assert [job.id for job in manager.list()] == [session.job_id]
    reloaded = panel.tick({"run:session": RunSession()})  # a reloaded page: the running job owns the form
    assert set(reloaded) <= set(OUTPUTS["tick"]) and reloaded["run:session"].job_id == session.job_id
    assert (reloaded["output_name"], reloaded["max_train_steps"], reloaded["loraid"]["value"]) == ("concept-a", steps, 1)
    assert session.job_id in reloaded["preset:message"]

    session, _ = tick_until(panel, session, lambda s, u: s.progress.step >= 2)
    assert "saves it with its training state" in panel.stop({"run:session": session})["run:message"]
    session, updates = tick_until(panel, session, lambda s, u: s.progress.status == "stopped")
    if manager.get(session.job_id).status == "stopping":  # its end event is written just before it exits
        with no_toast():  # the message box says it, once
            assert "is still stopping" in panel.resume({"run:session": session, "run:processes": 1})["run:message"]
    session, updates = tick_until(panel, session, lambda s, u: manager.get(s.job_id).status == "stopped")
    stopped_at = session.progress.step
    assert 2 <= stopped_at < steps and session.progress.latest_state.endswith(f"concept-a-step{stopped_at:06d}-state")
    reattached = panel.tick({"run:session": RunSession()})  # a new page follows the newest training job
    assert reattached["run:session"].job_id == session.job_id
    assert reattached["run:loss"]["label"] == f"Loss (step {stopped_at} of {steps})"
    assert reattached["run:loss"]["value"]["step"].tolist()[-2:] == [stopped_at, stopped_at]  # loss and average

    resumed = panel.resume({"run:session": session, "run:processes": 1})
    assert resumed["run:message"].startswith(f"Resumed from concept-a-step{stopped_at:06d}-state as job")
    second = resumed["run:session"]
    assert second.job_id != session.job_id
    second, updates = tick_until(panel, second, lambda s, u: manager.get(s.job_id).status == "succeeded")
    assert second.progress.status == "succeeded"
    assert second.progress.start_step == stopped_at and second.progress.points[-1]["step"] == steps
    assert [p["step"] for p in second.progress.points] == list(range(1, steps + 1))  # the curve goes on
    assert (cached_workspace.loras / "concept-a.safetensors").is_file()
    assert 'data-status="succeeded"' in updates["run:progress"]

    with no_toast():  # the message box says it, once
        assert "finished all its steps" in panel.resume({"run:session": second, "run:processes": 1})["run:message"]
    taken = panel.validate(form)
    assert "LORAID 1 is already taken by loras/concept-a" in taken["error:loraid"]["value"]
    assert taken["loraid"]["choices"][1][0] == (f"1: blocks 0-1 (taken by concept-a-step{stopped_at:06d}.safetensors, "
                                                "concept-a.safetensors)")


def test_a_typed_dataset_path_inside_the_workspace_is_listed_once(workspace):
    from ui.train_form import dataset_choices

    listed = dataset_choices(workspace)
    assert listed and dataset_choices(workspace, str(workspace.root / listed[0])) == listed
    assert dataset_choices(workspace, "/elsewhere/dataset.toml") == ["/elsewhere/dataset.toml", *listed]
