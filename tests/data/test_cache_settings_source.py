"""The cache jobs' options are declared once, in LatentCacheSettings / TextCacheSettings: the `cache` command line,
the Dataset tab's cache widgets and a cache job's argv come from their fields, and a field added to a model reaches
all three."""
from __future__ import annotations

import argparse
from pathlib import Path

import gradio as gr
import pytest

from backend.config.settings import add_setting_arguments, setting
from backend.data.cache_cli import add_arguments, settings_from
from backend.data.cache_settings import CACHE_SETTINGS, CacheSettings, LatentCacheSettings, TextCacheSettings
from backend.data.sample_dataset import write_sample_dataset
from backend.jobs import JobManager
from backend.system.devices import default_device, device_choices
from backend.workspace import Workspace
from ui.context import AppContext
from ui.dataset_panel import CACHE_FIELDS, DatasetPanel, cache_form
from ui.settings_form import SettingsForm
from ui.tabs import dataset as dataset_tab
from ui.tabs.jobs import selfcheck_argv

HERE = str(Path(__file__).resolve().parent)  # an existing folder: model folders must exist
SHARED = ["dataset_config", "workspace", "device", "dtype", "batch_size", "skip_existing"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser


def test_the_models_list_every_cache_option_with_what_a_form_needs():
    assert list(CacheSettings.model_fields) == SHARED
    assert list(LatentCacheSettings.model_fields) == [*SHARED, "model_kind", "vae", "i2v", "vae_tiling"]
    assert list(TextCacheSettings.model_fields) == [*SHARED, "text_encoder", "tokenizer", "max_sequence_length"]
    for model in CACHE_SETTINGS.values():
        for name, info in model.field_info().items():
            assert info["label"] and info["help"] and info["group"], name


def test_the_command_line_takes_its_flags_help_defaults_and_choices_from_the_models():
    actions = {}
    for action in _parser()._actions:  # the first flag of a setting is the model's; later ones are old spellings
        actions.setdefault(action.dest, action)
    for model in CACHE_SETTINGS.values():
        for name, info in model.field_info().items():
            action = actions[name]
            assert action.help == info["help"], name
            assert action.default == info["default"] and action.choices == info["choices"], name
    assert actions["skip_existing"].option_strings == ["--no_skip_existing"]  # on by default
    assert actions["i2v"].option_strings == ["--i2v"]  # off by default
    for old_spelling, value in (("--skip_existing", True), ("--no-skip_existing", False)):
        assert _parser().parse_args(["text", "--dataset_config", "d.toml", old_spelling]).skip_existing is value


@pytest.mark.parametrize("settings", [
    LatentCacheSettings(dataset_config="/d/-my set.toml", workspace="/w", dtype="bfloat16", batch_size=3,
                        skip_existing=False, i2v=True, vae_tiling=True, vae=HERE, model_kind="wan2.2-ti2v-5b"),
    LatentCacheSettings(dataset_config="d.toml"),
    TextCacheSettings(dataset_config="d.toml", max_sequence_length=77, tokenizer=HERE, batch_size=2)])
def test_a_cache_jobs_argv_gives_back_its_settings_through_the_real_parser(settings):
    argv = settings.job_argv()
    assert argv[1:5] == ["-m", "backend", "cache", settings.WHAT]
    assert settings_from(_parser().parse_args(argv[4:])) == settings


def test_wrong_cache_options_are_one_sentence_naming_the_flag():
    with pytest.raises(Exception, match=r"^--dataset_config is empty; give the dataset TOML to cache\.$"):
        settings_from(_parser().parse_args(["latents"]))
    with pytest.raises(Exception, match=r"^--batch_size is 0; it must be at least 1\.$"):
        settings_from(_parser().parse_args(["latents", "--dataset_config", "d.toml", "--batch_size", "0"]))
    with pytest.raises(Exception, match=r"^--max_sequence_length is -1; it must be at least 1\.$"):
        settings_from(_parser().parse_args(["text", "--dataset_config", "d.toml", "--max_sequence_length", "-1"]))


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ws.ensure_folders()
    write_sample_dataset(ws.demo_dataset)
    return ws


def test_the_dataset_tab_builds_its_cache_widgets_from_the_models(workspace):
    with gr.Blocks() as page:
        with gr.Tab("Dataset") as tab:
            dataset_tab.build(AppContext(workspace, JobManager(workspace.jobs)), tab)
    by_id = {block.elem_id: block for block in page.blocks.values() if getattr(block, "elem_id", None)}
    for name in CACHE_FIELDS:
        model = next(m for m in (CacheSettings, *CACHE_SETTINGS.values()) if name in m.model_fields)
        info = model.field_info()[name]
        widget = by_id[f"dataset-cache-{name.replace('_', '-')}"]
        assert (widget.label, widget.info) == (info["label"], info["help"]), name
        start = default_device() if name == "device" else info["default"]
        assert widget.value == ("" if start is None else start), name  # blank: not given
        assert f"dataset-cache-{name.replace('_', '-')}-error" in by_id
    assert [choice[1] for choice in by_id["dataset-cache-device"].choices] == device_choices()
    kinds = by_id["dataset-cache-model-kind"]  # optional: "not set" can be chosen again
    assert kinds.value == "" and kinds.choices[0] == ("(not set)", "")
    assert [value for _, value in kinds.choices[1:]] == LatentCacheSettings.field_info()["model_kind"]["choices"]
    assert cache_form().values([""] * len(CACHE_FIELDS))["model_kind"] is None


def cache_values(**changes) -> list:
    values = {"device": "cpu", "dtype": "auto", "batch_size": 1, "skip_existing": True, "i2v": False,
              "vae_tiling": False, "max_sequence_length": 512, "model_kind": None, "vae": "", "text_encoder": "",
              "tokenizer": "", **changes}
    return [values[name] for name in CACHE_FIELDS]


def _written_toml(workspace) -> tuple[str, str]:
    path = workspace.demo_dataset / "dataset.toml"
    return str(path), path.read_text(encoding="utf-8")


def test_a_cache_job_started_from_the_tab_runs_the_models_argv(workspace):
    manager = JobManager(workspace.jobs, max_concurrent=1)
    panel = DatasetPanel(AppContext(workspace, manager))
    blocker = manager.submit(selfcheck_argv(400, 0.05), kind="selfcheck", title="holds the only slot")
    try:
        path, text = _written_toml(workspace)
        started = panel.start_cache("text", path, text, *cache_values(batch_size=2.0, max_sequence_length=64))
        job = manager.get(started["cache_view"].job_id)
        assert job.status == "queued" and job.kind == "cache"
        expected = TextCacheSettings(dataset_config=path, workspace=str(workspace.root), batch_size=2,
                                     max_sequence_length=64)
        assert job.argv == expected.job_argv()
        assert settings_from(_parser().parse_args(job.argv[4:])) == expected
        assert job.settings == {"what": "text", **expected.model_dump()}
        manager.cancel(job.id)
    finally:
        manager.stop(blocker.id)


def test_wrong_cache_options_are_shown_beside_them_and_start_nothing(workspace):
    panel = DatasetPanel(AppContext(workspace, JobManager(workspace.jobs)))
    path, text = _written_toml(workspace)
    out = panel.start_cache("latents", path, text, *cache_values(batch_size=2.5, max_sequence_length=0))
    assert out["cache_status"] == "Not started: fix the cache option marked ⚠ above."
    assert out["cache_problem.batch_size"]["value"] == ("⚠ Encode batch size is 2.5, not a whole number; enter a "
                                                        "whole number such as 2.")
    assert out["cache_problem.max_sequence_length"]["visible"] is False  # the latents do not use it
    assert panel.ctx.jobs.list() == []
    checked = panel.check_cache(path, *cache_values(max_sequence_length=0))
    assert checked["cache_problem.max_sequence_length"]["value"] == ("⚠ Text length (tokens) is 0; it must be at "
                                                                     "least 1.")
    assert [name for name in CACHE_FIELDS if checked[f"cache_problem.{name}"]["visible"]] == ["max_sequence_length"]


def test_model_folders_are_taken_from_the_workspace_and_must_exist(workspace):
    manager = JobManager(workspace.jobs, max_concurrent=1)
    panel = DatasetPanel(AppContext(workspace, manager))
    path, text = _written_toml(workspace)
    missing = panel.start_cache("latents", path, text, *cache_values(vae="models/no-vae"))
    assert missing["cache_problem.vae"]["value"] == (
        f"⚠ VAE folder {workspace.root / 'models' / 'no-vae'} is not a folder; give the folder that holds the "
        "model's files, or leave it empty for the workspace's demo model.")
    assert manager.list() == []
    (workspace.root / "models" / "my-vae").mkdir(parents=True)
    blocker = manager.submit(selfcheck_argv(400, 0.05), kind="selfcheck", title="holds the only slot")
    try:
        started = panel.start_cache("latents", path, text, *cache_values(vae="models/my-vae",
                                                                          model_kind="wan2.2-ti2v-5b"))
        job = manager.get(started["cache_view"].job_id)
        parsed = settings_from(_parser().parse_args(job.argv[4:]))
        assert (parsed.vae, parsed.model_kind, parsed.workspace) == (
            str(workspace.root / "models" / "my-vae"), "wan2.2-ti2v-5b", str(workspace.root))
        manager.cancel(job.id)
        blank = panel.start_cache("text", path, text, *cache_values())
        job = manager.get(blank["cache_view"].job_id)
        parsed = settings_from(_parser().parse_args(job.argv[4:]))
        assert (parsed.text_encoder, parsed.tokenizer) == (None, None)  # the workspace's demo models
        manager.cancel(job.id)
    finally:
        manager.stop(blocker.id)


class _WithOffload(LatentCacheSettings):
    offload: str = setting("none", label="Offload", group="Run", choices=["none", "cpu"], help="an added field")


def test_a_field_added_to_a_model_reaches_the_command_line_the_form_and_the_argv():
    parser = argparse.ArgumentParser()
    add_setting_arguments(parser, _WithOffload, ["offload"])
    assert parser.parse_args([]).offload == "none"
    assert "--offload=cpu" in _WithOffload(dataset_config="d.toml", offload="cpu").job_argv()
    form = SettingsForm(_WithOffload, ["offload"], "x")
    with gr.Blocks():
        form.build()
    assert form.widgets["offload"].label == "Offload" and form.widgets["offload"].value == "none"
    assert form.problems(_WithOffload, {"dataset_config": "d.toml", "offload": "disk"}) == {
        "offload": "Offload is 'disk'; choose one of none, cpu."}
