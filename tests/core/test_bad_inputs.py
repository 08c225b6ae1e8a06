"""Bad input, as a hostile tester types it: every row gets one clear sentence (checked by pattern), no traceback, and
nothing the user had is written or changed (every file under the workspace and an outside folder is compared before
and after). The surfaces are the real entry points: `python -m backend ...`, the trainer's `-m backend.train`, the
Train tab's check, the Dataset tab's TOML writer and the output check the app shows beside a field."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from backend.errors import UserError
from backend.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]
PRESET = REPO / "presets" / "demo.json"
BIG = str(2 ** 64)


@dataclass
class Kit:
    ws: Workspace
    outside: Path
    model: Path
    lora: Path
    lora2: Path
    nan_lora: Path
    nan_base: Path
    dataset: Path
    holder: subprocess.Popen | None = None

    def path(self, text: str) -> str:
        return text.format(ws=self.ws.root, out=self.outside, model=self.model, lora=self.lora, lora2=self.lora2,
                           nan_lora=self.nan_lora, nan_base=self.nan_base, dataset=self.dataset)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    from backend.models.demo import TRANSFORMER_FILE, build_demo_workspace
    from backend.models.loading import load_transformer
    from tests.demo_files import cache_concept_a, save_demo_lora

    base = tmp_path_factory.mktemp("bad_inputs")
    ws = build_demo_workspace(base / "ws", seed=0)
    cache_concept_a(ws)
    outside = base / "outside"
    outside.mkdir()
    (outside / "pyproject.toml").write_text("[project]\nname = 'mine'\n")
    (outside / "notes.txt").write_text("mine")
    model = ws.demo_t2v / TRANSFORMER_FILE
    t2v = load_transformer(model, "demo-t2v")
    lora = save_demo_lora(t2v, ws.loras / "alice.safetensors", loraid=1)
    lora2 = save_demo_lora(t2v, ws.loras / "bob.safetensors", loraid=3, seed=2)
    tensors = load_file(lora)
    first = sorted(k for k in tensors if k.endswith("lora_up.weight"))[0]
    tensors[first][0, 0] = float("nan")
    nan_lora = outside / "nan.safetensors"
    save_file(tensors, nan_lora)
    weights = load_file(model)
    weights[sorted(k for k in weights if k.endswith("self_attn.q.weight"))[0]][0, 0] = float("inf")
    nan_base = outside / "nan_base.safetensors"
    save_file(weights, nan_base)
    (ws.loras / "alice-step000002-state.tmp").mkdir()  # a killed save's leftovers sit beside the LoRAs
    kit = Kit(ws, outside, model, lora, lora2, nan_lora, nan_base, ws.demo_dataset / "concept_a" / "dataset.toml")
    yield kit
    if kit.holder is not None:
        kit.holder.kill()
        kit.holder.wait()


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    found = {}
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                stat = path.stat()
                found[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return found


# --- the surfaces ----------------------------------------------------------------------------------------------
def run_backend(kit: Kit, argv: list[str], capsys) -> str:
    from backend.__main__ import main

    try:
        code = main([kit.path(a) for a in argv])
    except SystemExit as exc:  # argparse's own refusal (usage line + one error line)
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("usage:") and line.startswith(
        ("error:", "python -m backend"))]
    return lines[-1]


def run_train(kit: Kit, argv: list[str], capsys, config: str | None = None) -> str:
    from backend.train.__main__ import main

    code = main(["--config", kit.path(config) if config else str(PRESET), "--workspace", str(kit.ws.root),
                 "--max_train_steps", "1", *[kit.path(a) for a in argv]])
    err = capsys.readouterr().err
    assert code == 2, err
    return err.strip()


def train_check(kit: Kit, values: dict, outside_confirmed: bool = True) -> str:
    from backend.config.train_checks import check_train_settings
    from backend.train.settings import TrainSettings

    base = TrainSettings.load_file(PRESET).model_dump()
    check = check_train_settings({**base, **{k: kit.path(v) if isinstance(v, str) else v for k, v in values.items()}},
                                 kit.ws, outside_confirmed=outside_confirmed)
    assert check.errors, "the check passed"
    return " | ".join(check.errors.values())


def call(kit: Kit, fn: Callable[[Kit], object]) -> str:
    with pytest.raises(UserError) as err:
        fn(kit)
    return str(err.value)


def write_toml(typed: str, text: str | None = None):
    def go(kit: Kit):
        from backend.data.dataset_toml_file import resolve_toml_path, write_dataset_toml

        path = resolve_toml_path(kit.path(typed), kit.ws.root)
        write_dataset_toml(path, text if text is not None else kit.dataset.read_text())
    return go


def field_message(typed: str, **kwargs):
    def go(kit: Kit):
        from backend.output_guard import output_message

        message = output_message(kit.path(typed), workspace=kit.ws, **kwargs)
        if message:
            raise UserError(message)
    return go


def hold_name(kit: Kit) -> None:
    """A live run writing `held` into loras/ (its reservation, as the trainer writes it, held by a real process)."""
    from backend.fileio import atomic_write_json
    from backend.jobs.processes import ProcessRef

    if kit.holder is None:
        kit.holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    ref = ProcessRef.of(kit.holder.pid)
    atomic_write_json(kit.ws.loras / ".held.running.json",
                      {"pid": kit.holder.pid, "create_time": ref.create_time, "output_name": "held", "loraid": 2,
                       "allocation": None})


def hold_loraid(kit: Kit) -> None:
    from backend.fileio import atomic_write_json
    from backend.jobs.processes import ProcessRef
    from backend.loraid.allocation import allocate

    hold_name(kit)
    ref = ProcessRef.of(kit.holder.pid)
    atomic_write_json(kit.ws.loras / ".slice2.running.json",
                      {"pid": kit.holder.pid, "create_time": ref.create_time, "output_name": "slice2", "loraid": 2,
                       "allocation": allocate(2, 8, 2, model="demo-t2v").to_metadata()})


def preset_file(body: str, name: str = "bad.json"):
    def setup(kit: Kit) -> None:
        (kit.outside / name).write_text(body)
    return setup


@dataclass
class Row:
    id: str
    run: Callable  # (kit, capsys) -> message
    expect: str  # a regex the message must match
    setup: Callable[[Kit], None] | None = None
    extra: list = field(default_factory=list)


def backend(*argv: str) -> Callable:
    return lambda kit, capsys: run_backend(kit, list(argv), capsys)


def trainer(*argv: str, config: str | None = None) -> Callable:
    return lambda kit, capsys: run_train(kit, list(argv), capsys, config)


def check(**values) -> Callable:
    return lambda kit, capsys: train_check(kit, values)


def raises(fn) -> Callable:
    return lambda kit, capsys: call(kit, fn)


MERGE = ("merge", "--dit", "{model}", "--lora", "{lora}")
GEN = ("generate", "--workspace", "{ws}", "--model", "demo-t2v", "--prompt", "a cat", "--steps", "1", "--frames", "1", "--width", "16",
       "--height", "16")

ROWS = [
    # 1. never overwrite what the user did not name as the output
    Row("train over the base model", trainer("--output_dir", "models/demo-t2v", "--output_name", "transformer"),
        r"transformer\.safetensors is a model in the workspace's models folder"),
    Row("train over the base model (form)", check(output_dir="models/demo-t2v", output_name="transformer"),
        r"is a model in the workspace's models folder"),
    Row("train over its own initial weights", trainer("--network_weights", "{lora}", "--output_name", "alice",
                                                      "--overwrite_output", "true"),
        r"alice\.safetensors is one of the inputs"),
    Row("train re-using an existing name", trainer("--output_name", "alice"),
        r"alice\.safetensors already exists in .*choose another name \(e\.g\. alice-2\)"),
    Row("train re-using an existing name (form)", check(output_name="bob"), r"bob\.safetensors already exists"),
    Row("train onto a name a running run holds", trainer("--output_name", "held"),
        r"Another run \(process \d+\) is writing held", setup=hold_name),
    Row("train a LORAID a running run trains", trainer("--loraid", "2", "--blocks_per_loraid", "2", "--output_name",
                                                       "other"),
        r"LORAID 2 is being trained right now by the run writing slice2", setup=hold_loraid),
    Row("train a LORAID a running run trains (form)", check(loraid=2, blocks_per_loraid=2, output_name="other2"),
        r"LORAID 2 is being trained right now", setup=hold_loraid),
    Row("merge onto its base", backend(*MERGE, "--out", "{model}"), r"is (one of the inputs|the base checkpoint)"),
    Row("merge onto its LoRA", backend(*MERGE, "--out", "{lora}"), r"alice\.safetensors is one of the inputs"),
    Row("merge onto an existing file", backend(*MERGE, "--out", "{lora2}"),
        r"bob\.safetensors already exists; type another output name or tick “Overwrite” \(--overwrite"),
    Row("merge onto a folder", backend(*MERGE, "--out", "{out}"), r"must end in \.safetensors|is a folder"),
    Row("merge onto a folder named .safetensors", backend(*MERGE, "--out", "{ws}/loras/alice-step000002-state.tmp"),
        r"must end in \.safetensors|is a folder"),
    Row("merge output not .safetensors", backend(*MERGE, "--out", "{out}/m.ckpt"), r"must end in \.safetensors"),
    Row("merge into /proc", backend(*MERGE, "--out", "/proc/m.safetensors"), r"/proc is a system folder"),
    Row("merge-loras onto an input", backend("merge-loras", "--lora", "{lora}", "{lora2}", "--out", "{lora2}"),
        r"bob\.safetensors is one of the inputs"),
    Row("merge-loras onto an existing LoRA", backend("merge-loras", "--lora", "{lora}", "{lora2}", "--out",
                                                     "{ws}/loras/alice.safetensors"),
        r"one of the inputs|already exists"),
    Row("merge-loras over the base model", backend("merge-loras", "--lora", "{lora}", "{lora2}", "--out", "{model}",
                                                   "--overwrite"),
        r"transformer\.safetensors is a model checkpoint, not a LoRA"),
    Row("merge-loras over an outside model", backend("merge-loras", "--lora", "{lora}", "{lora2}", "--out",
                                                     "{nan_base}", "--overwrite"),
        r"nan_base\.safetensors is a model checkpoint, not a LoRA"),
    Row("convert onto its input", backend("convert", "--to", "musubi", "{lora}", "{lora}"), r"is the input file"),
    Row("convert onto an existing file", backend("convert", "--to", "musubi", "{lora}", "{lora2}"), r"already exists"),
    Row("convert over the base model", backend("convert", "--to", "musubi", "{lora}", "{model}", "--overwrite"),
        r"is a model checkpoint, not a LoRA"),
    Row("ema onto an existing file", backend("ema", "{lora}", "{lora2}", "--out", "{lora2}"),
        r"one of the inputs|already exists"),
    Row("ema over the base model", backend("ema", "{lora}", "{lora2}", "--out", "{model}", "--overwrite"),
        r"is a model checkpoint, not a LoRA"),
    Row("field: output over the base model", raises(field_message("models/demo-t2v/transformer.safetensors",
                                                                  overwrite=True)),
        r"is a model in the workspace's models folder"),
    Row("field: output over a dataset file", raises(field_message("datasets/demo/concept_a/dataset.toml",
                                                                  overwrite=True, suffix=".toml")),
        r"part of a dataset"),
    Row("field: output over a preset", raises(field_message("{ws}/presets/x.safetensors", overwrite=True)),
        r"x\.safetensors already exists|is a preset", setup=lambda kit: (kit.ws.presets / "x.safetensors")
        .write_bytes(b"x")),
    Row("field: absolute path outside the workspace, not confirmed", raises(field_message("{out}/new.safetensors")),
        r"is outside the workspace .*; confirm writing there"),
    Row("field: existing output", raises(field_message("loras/alice.safetensors")),
        r"already exists; type another output name or tick “Overwrite”.* alice-2\.safetensors is free"),
    # 2. output names are names
    Row("output name escapes", trainer("--output_name", "../../escape"), r"contains /"),
    Row("output name escapes (form)", check(output_name="../../escape"), r"contains /"),
    Row("output name with a backslash", trainer("--output_name", "a\\b"), r"contains \\"),
    Row("output name with ..", trainer("--output_name", "a..b"), r"contains `\.\.`"),
    Row("output name with a colon", trainer("--output_name", "c:evil"), r"contains :"),
    Row("output name with a star", check(output_name="lo*ra"), r"contains \*"),
    Row("output name with a question mark", check(output_name="lora?"), r"contains \?"),
    Row("output name with a quote", check(output_name='my"lora'), r'contains "'),
    Row("output name with a pipe", check(output_name="a|b"), r"contains \|"),
    Row("output name with angle brackets", check(output_name="<a>"), r"contains < >"),
    Row("output name with a tab", check(output_name="a\tb"), r"contains \\t"),
    Row("output name ending in a dot", check(output_name="lora."), r"ends with a dot"),
    Row("output name ending in a space", check(output_name="lora "), r"ends with a space"),
    Row("output name a device name", check(output_name="CON"), r"is a device name on Windows"),
    Row("output name a device name with extension", check(output_name="lpt1.x"), r"is a device name on Windows"),
    Row("output name too long", check(output_name="a" * 130), r"130 characters long; keep it to 120"),
    Row("output name empty", check(output_name=""), r"Output name .* is empty"),
    Row("output folder climbs out", trainer("--output_dir", "../../elsewhere"), r"climbs out of .* with `\.\.`"),
    Row("output folder climbs out (form)", check(output_dir="../elsewhere"), r"climbs out of"),
    Row("output folder outside the workspace, not confirmed (form)",
        lambda kit, capsys: train_check(kit, {"output_dir": "{out}/loras"}, outside_confirmed=False),
        r"is outside the workspace .*; confirm writing there"),
    Row("full disk while converting", lambda kit, capsys: _full_disk(kit, capsys),
        r"^error: The disk is full while writing .*c\.safetensors; free some space"),
    Row("output folder is a file", trainer("--output_dir", "workspace.json"), r"is a file"),
    Row("output folder under /proc", trainer("--output_dir", "/proc/loras"), r"system folder"),
    Row("preset that escapes", trainer(config="{out}/escape.json"), r"contains /",
        setup=preset_file('{"schema_version": 2, "kind": "TrainSettings", "name": "x", "settings": '
                          '{"output_name": "../../escape"}}', "escape.json")),
    Row("dataset TOML climbs out", raises(write_toml("../../outside/pyproject.toml")), r"climbs out of"),
    Row("dataset TOML over a non-dataset file", raises(write_toml("{out}/pyproject.toml")),
        r"pyproject\.toml already exists and is not a dataset config"),
    Row("dataset TOML onto a folder", raises(write_toml("{out}")), r"does not end in \.toml|is a folder"),
    Row("dataset TOML in a missing folder", raises(write_toml("{out}/missing/dataset.toml")),
        r"The folder .*missing does not exist"),
    # 4. non-finite
    Row("learning rate inf", trainer("--learning_rate", "inf"), r"learning_rate.* = 'inf' is invalid"),
    Row("learning rate nan", trainer("--learning_rate", "nan"), r"learning_rate.* = 'nan' is invalid"),
    Row("learning rate 1e30", trainer("--learning_rate", "1e30"), r"learning_rate.*less than or equal to 10"),
    Row("learning rate inf (form)", check(learning_rate=float("inf")), r"Learning rate"),
    Row("alpha nan", trainer("--network_alpha", "nan"), r"network_alpha.* = 'nan' is invalid"),
    Row("flow shift inf (form)", check(discrete_flow_shift=float("inf")), r"Flow shift"),
    Row("weight decay nan (form)", check(weight_decay=float("nan")), r"Weight decay"),
    Row("NaN starting weights", trainer("--network_weights", "{nan_lora}", "--output_name", "nanstart"),
        r"The LoRA file nan\.safetensors holds NaN or infinite values"),
    Row("merge a NaN LoRA", backend(*MERGE[:4], "{nan_lora}", "--out", "{out}/m.safetensors"),
        r"nan\.safetensors holds NaN or infinite values"),
    Row("merge into a base holding inf", backend("merge", "--dit", "{nan_base}", "--lora", "{lora}", "--out",
                                                 "{out}/m.safetensors"),
        r"The base model nan_base\.safetensors holds NaN or infinite values"),
    Row("merge with a NaN multiplier", backend(*MERGE, "--multiplier", "nan", "--out", "{out}/m.safetensors"),
        r"A multiplier is NaN or infinite"),
    Row("merge with an inf multiplier", backend(*MERGE, "--multiplier", "inf", "--out", "{out}/m.safetensors"),
        r"A multiplier is NaN or infinite"),
    Row("merge-loras a NaN LoRA", backend("merge-loras", "--lora", "{lora2}", "{nan_lora}", "--out",
                                          "{out}/ab.safetensors"), r"holds NaN or infinite values"),
    Row("merge-loras with a NaN multiplier", backend("merge-loras", "--lora", "{lora}", "{lora2}", "--multiplier",
                                                     "1", "nan", "--out", "{out}/ab.safetensors"),
        r"A multiplier is NaN or infinite"),
    Row("convert a NaN LoRA", backend("convert", "--to", "musubi", "{nan_lora}", "{out}/c.safetensors"),
        r"holds NaN or infinite values"),
    Row("ema over a NaN checkpoint", backend("ema", "{lora}", "{nan_lora}", "--out", "{out}/e.safetensors"),
        r"holds NaN or infinite values"),
    Row("generate with a NaN LoRA", backend(*GEN, "--lora", "{nan_lora}", "--out_dir", "{out}/gen"),
        r"holds NaN or infinite values"),
    Row("generate guidance nan", backend(*GEN, "--guidance_scale", "nan", "--out_dir", "{out}/gen"),
        r"Guidance scale \(guidance_scale\) = nan is not a finite number"),
    Row("generate flow shift inf", backend(*GEN, "--flow_shift", "inf", "--out_dir", "{out}/gen"),
        r"Flow shift \(flow_shift\) = inf is not a finite number"),
    # 6. what used to be a traceback or unclear
    Row("train seed above 2^63", trainer("--seed", BIG), r"seed.*is invalid"),
    Row("train seed negative", trainer("--seed", "-1"), r"seed.*is invalid"),
    Row("generate seed above 2^63", backend(*GEN, "--seed", BIG, "--out_dir", "{out}/gen"), r"Seed \(seed\) = .* is outside"),
    Row("generate 100001 frames", backend(*GEN[:-6], "--frames", "100001", "--out_dir", "{out}/gen"),
        r"Frames \(frames\) = 100001 is more than this app generates"),
    Row("generate 100000 wide", backend(*GEN[:-4], "--width", "100000", "--height", "16", "--out_dir", "{out}/gen"),
        r"Width \(width\) = 100000 is larger than 4096"),
    Row("generate into a file", backend(*GEN, "--out_dir", "{out}/notes.txt"), r"notes\.txt is a file, not a folder"),
    Row("demo seed -1", backend("demo", "--workspace", "{out}/ws2", "--seed", "-1"), r"--seed -1 is outside"),
    Row("demo workspace under /proc", backend("demo", "--workspace", "/proc/ws"), r"system folder"),
    Row("demo workspace is a file", backend("demo", "--workspace", "{out}/notes.txt"), r"is a file, not a folder"),
    Row("train workspace is a file", lambda kit, capsys: _train_ws_file(kit, capsys), r"is a file, not a folder"),
    Row("train config is a folder", trainer(config="{out}"), r"is a folder; pass the path of a run TOML"),
    Row("min timestep above max", trainer("--min_timestep", "600", "--max_timestep", "400"),
        r"^error: [^\n]{0,300}min_timestep \(600\) must be below max_timestep \(400\)[^\n]*$"),
    Row("min timestep above max (form)", check(min_timestep=600, max_timestep=400),
        r"min_timestep \(600\) must be below max_timestep \(400\); lower Min timestep"),
    Row("preset of another kind", trainer(config="{out}/gen.json"), r"is a `GenerateSettings` preset",
        setup=preset_file('{"schema_version": 1, "kind": "GenerateSettings", "name": "g", "settings": {}}',
                          "gen.json")),
    Row("preset with a boolean step count", trainer(config="{out}/bool.json"),
        r"`max_train_steps` = true is true/false, not a number",
        setup=preset_file('{"schema_version": 2, "kind": "TrainSettings", "name": "b", "settings": '
                          '{"max_train_steps": true}}', "bool.json")),
    Row("preset with unknown top-level keys", trainer(config="{out}/extra.json"), r"unknown top-level key",
        setup=preset_file('{"schema_version": 2, "kind": "TrainSettings", "name": "e", "settings": {}, '
                          '"trojan": 1}', "extra.json")),
    Row("initial weights is a folder", check(network_weights="loras"), r"is not a file"),
    Row("VAE is a file", check(vae="{model}"), r"VAE.*is a file; type the folder"),
    Row("text encoder is a file", check(text_encoder="{model}"), r"Text encoder.*is a file; type the folder"),
    Row("merge LoRA is a folder", backend(*MERGE[:4], "{ws}/loras", "--out", "{out}/m.safetensors"),
        r"is a folder, not a LoRA file"),
]


def _full_disk(kit: Kit, capsys) -> str:
    """The disk fills up during the write (as the OS reports it, errno 28)."""
    import errno

    import backend.adapters.exports as exports

    def full(tensors, path, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    real, exports.save_safetensors_atomic = exports.save_safetensors_atomic, full
    try:
        return run_backend(kit, ["convert", "--to", "musubi", "{lora}", "{out}/c.safetensors"], capsys)
    finally:
        exports.save_safetensors_atomic = real


def _train_ws_file(kit: Kit, capsys) -> str:
    from backend.train.__main__ import main

    code = main(["--config", str(PRESET), "--workspace", str(kit.outside / "notes.txt")])
    err = capsys.readouterr().err
    assert code == 2
    return err.strip()


def test_the_table_is_big_enough():
    assert len(ROWS) >= 60 and len({row.id for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input_gets_one_sentence_and_changes_nothing(row: Row, kit: Kit, capsys):
    import re

    if row.setup is not None:
        row.setup(kit)
    before = snapshot(kit.ws.root, kit.outside)
    message = row.run(kit, capsys)
    after = snapshot(kit.ws.root, kit.outside)
    assert re.search(row.expect, message), message
    assert "Traceback" not in message and "\n" not in message.strip(), message
    changed = {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}
    assert not changed, changed


def test_a_text_encoder_folder_holding_a_pickle_is_refused_unread(kit, tmp_path):
    from backend.data import encoders

    folder = tmp_path / "te"
    shutil.copytree(kit.ws.text_encoder, folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04 not to be unpickled")
    with pytest.raises(UserError, match=r"holds its weights only as a pickle \(pytorch_model\.bin\), which this app "
                                        r"never loads"):
        encoders.load_text_encoder(folder, kit.ws.tokenizer)
    with pytest.raises(UserError, match=r"is a file; pass the folder"):
        encoders.load_vae(kit.model)
