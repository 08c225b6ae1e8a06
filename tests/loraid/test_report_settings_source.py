"""The interference report's options are declared once, in InterferenceSettings: the `blockmap --report` command
line, the LORAID tab's report widgets and the report job's argv come from its fields, a field added to the model
reaches all three, and the job writes a progress event per measurement."""
from __future__ import annotations

import argparse
import json

import gradio as gr

from backend.__main__ import main
from backend.config.settings import add_setting_arguments, setting
from backend.jobs import JobManager
from backend.jobs.progress import read_progress
from backend.loraid.allocation import allocate
from backend.loraid.blockmap_cli import add_arguments, report_settings
from backend.loraid.module_names import owned_modules
from backend.loraid.report import interference_report
from backend.loraid.report_settings import REPORT_FILE, InterferenceSettings
from backend.system.devices import device_choices
from backend.workspace import Workspace
from ui.context import AppContext
from ui.tabs import loraid as loraid_tab
from ui.settings_form import SettingsForm
from ui.tabs.loraid import REPORT_FIELDS, LoraidPanel

FIELDS = list(InterferenceSettings.model_fields)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser


def test_the_model_lists_every_report_option_with_what_a_form_needs():
    assert FIELDS == ["report", "model", "multiplier", "probes", "device"]
    for name, info in InterferenceSettings.field_info().items():
        assert info["label"] and info["help"] and info["group"], name
    assert InterferenceSettings.field_info()["device"]["choices"] == ["cpu", "cuda"]


def test_the_command_line_takes_help_defaults_and_choices_from_the_model():
    actions = {action.dest: action for action in _parser()._actions}
    for name, info in InterferenceSettings.field_info().items():
        action = actions[name]
        assert action.option_strings == [f"--{name}"]
        assert action.help == info["help"], name
        if name not in ("report", "multiplier"):  # lists: `--report A B`, `--multiplier 1 --multiplier 0.5`
            assert action.default == info["default"], name
            assert action.choices == info["choices"], name


def test_a_report_jobs_argv_gives_back_its_settings_through_the_real_parser():
    settings = InterferenceSettings(report=["/x/-a.safetensors", "/x/b c.safetensors"], model="wan2.1-t2v-1.3b",
                                    multiplier=[1.0, 0.5], probes=2, device="cpu")
    argv = settings.job_argv()
    assert argv[1:4] == ["-m", "backend", "blockmap"]
    assert report_settings(_parser().parse_args(argv[4:])) == settings
    default = InterferenceSettings(report=["a.safetensors", "b.safetensors"])
    assert report_settings(_parser().parse_args(default.job_argv()[4:])) == default


def test_wrong_report_options_are_one_sentence_naming_the_flag(capsys, tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    cases = [(["--report", str(a), str(b), "--probes", "0"], "--probes is 0; it must be at least 1."),
             (["--report", str(a), str(b), "--multiplier", "1", "2", "3"],
              "--multiplier has 3 values for 2 LoRAs; give one value for all or exactly one per LoRA."),
             (["--report", str(a)], "--report names 1 file(s); the interference report compares LoRAs, so give at "
                                    "least two files.")]
    for argv, message in cases:
        assert main(["blockmap", *argv]) == 2
        assert capsys.readouterr().err.strip() == f"error: {message}"


def test_the_tab_builds_its_report_widgets_from_the_model(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.ensure_folders()
    with gr.Blocks() as page:
        with gr.Tab("LORAID") as tab:
            loraid_tab.build(AppContext(ws, JobManager(ws.jobs)), tab)
    by_id = {block.elem_id: block for block in page.blocks.values() if getattr(block, "elem_id", None)}
    info = InterferenceSettings.field_info()
    for name in REPORT_FIELDS:
        widget = by_id[f"loraid-report-{name}"]
        assert (widget.label, widget.info) == (info[name]["label"], info[name]["help"]), name
        assert f"loraid-report-{name}-error" in by_id
    assert by_id["loraid-report-probes"].value == info["probes"]["default"]
    assert [choice[1] for choice in by_id["loraid-report-device"].choices] == device_choices()


def test_the_tab_refuses_wrong_options_beside_them_and_starts_nothing(tmp_path, kit):
    ws = Workspace(tmp_path / "ws")
    ws.ensure_folders()
    a, b = allocate(1, 4, 2), allocate(2, 4, 2)
    for index, allocation in enumerate((a, b), 1):
        kit.save_loraid_file(ws.loras / f"f{index}.safetensors", allocation, owned_modules(allocation), seed=index)
    panel = LoraidPanel(AppContext(ws, JobManager(ws.jobs)))
    out = panel.run_report("wan2.1-t2v-1.3b", ["f1.safetensors", "f2.safetensors"], "", "1, 2, 3", 2.5, "cpu")
    job_id, status, bar, report, _timer, *slots = out
    shown = dict(zip(REPORT_FIELDS, slots))
    assert job_id is None and report == "" and bar == ""
    assert status == "Not started: fix the report option marked ⚠ above."
    assert shown["multiplier"]["value"] == ("⚠ Strengths has 3 values for 2 LoRAs; give one value for all or "
                                            "exactly one per LoRA.")
    assert shown["probes"]["value"] == "⚠ Probe inputs is 2.5, not a whole number; enter a whole number such as 2."
    assert shown["device"]["visible"] is False
    assert all("--" not in slot["value"] for slot in slots)  # the page names fields, not flags
    assert panel.ctx.jobs.list() == []


class _WithSeed(InterferenceSettings):
    probe_seed: int = setting(0, label="Probe seed", group="Measure", help="a field added to the model")


def test_a_field_added_to_the_model_reaches_the_command_line_the_form_and_the_argv():
    parser = argparse.ArgumentParser()
    add_setting_arguments(parser, _WithSeed, ["probe_seed"])
    assert parser.parse_args([]).probe_seed == 0
    assert "--probe_seed=7" in _WithSeed(report=["a", "b"], probe_seed=7).job_argv()
    form = SettingsForm(_WithSeed, ["probe_seed"], "x")
    with gr.Blocks():
        form.build()
    assert form.widgets["probe_seed"].label == "Probe seed" and form.widgets["probe_seed"].value == 0
    assert form.problems(_WithSeed, {"report": ["a", "b"], "probe_seed": 1.5}) == {
        "probe_seed": "Probe seed is 1.5, not a whole number; enter a whole number such as 1."}


def test_the_report_counts_each_measurement_as_progress(tmp_path, kit):
    checkpoint = kit.save_tiny_checkpoint(kit.make_tiny_wan(), tmp_path / "model")
    allocations = [allocate(i, 4, 1) for i in (1, 2, 3)]
    files = [kit.save_loraid_file(tmp_path / f"{i}.safetensors", a, owned_modules(a), seed=i)
             for i, a in enumerate(allocations)]
    heard = []
    interference_report(files, checkpoint, probes=1, on_step=lambda done, total, what: heard.append((done, total)))
    pairs = 3
    assert heard == [(step, 3 * pairs) for step in range(0, 3 * pairs + 1)]  # 0, then each pair, then both ways
    weight_only = []
    interference_report(files, None, on_step=lambda done, total, what: weight_only.append((done, total)))
    assert weight_only == [(step, pairs) for step in range(0, pairs + 1)]


def test_a_report_job_writes_progress_events_and_its_report_file(tmp_path, kit, capsys, monkeypatch):
    checkpoint = kit.save_tiny_checkpoint(kit.make_tiny_wan(), tmp_path / "model")
    a, b = allocate(1, 4, 2), allocate(2, 4, 2)
    files = [kit.save_loraid_file(tmp_path / f"{n}.safetensors", x, owned_modules(x), seed=i)
             for i, (n, x) in enumerate((("a", a), ("b", b)))]
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    monkeypatch.setenv("LORAID_JOB_DIR", str(job_dir))
    assert main(["blockmap", "--report", *map(str, files), "--model", str(checkpoint), "--probes", "1"]) == 0
    out = capsys.readouterr()
    assert (job_dir / REPORT_FILE).read_text(encoding="utf-8") == out.out
    assert "interference: 3/3 cross-talk of" in out.err
    progress = read_progress(job_dir / "events.jsonl")
    assert (progress.step, progress.total) == (3, 3)
    events = [json.loads(line)["event"] for line in (job_dir / "events.jsonl").read_text().splitlines()]
    assert events[0] == "start" and events[-1] == "end" and events.count("progress") == 4


def test_a_device_this_machine_lacks_is_refused_at_the_field(monkeypatch):
    monkeypatch.setattr("backend.system.devices.gpu_count", lambda: 0)
    form = loraid_tab.report_form()
    problems = form.problems(InterferenceSettings, {"report": ["a", "b"], "device": "cuda"})
    assert problems == {"device": "Device is cuda, but this machine has no CUDA GPU; choose cpu."}
