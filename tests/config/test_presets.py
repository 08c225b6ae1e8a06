"""Presets: every shipped one loads, a schema-1 file migrates, the user store saves/renames/deletes/imports, and a
bad file is refused with its problem named while nothing on disk changes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.config.presets import SHIPPED_DIR, PresetStore, parse_preset
from backend.errors import UserError
from backend.train.settings import TrainSettings

FIXTURE_V1 = Path(__file__).parent / "fixtures" / "preset_v1.json"
SHIPPED = ["14b-24gb", "a14b-24gb", "a14b-both-experts", "demo", "dora", "locon", "loha", "lokr", "lora", "loraid-slice",
           "lowvram-1.3b", "rslora-loraplus"]


@pytest.fixture
def store(tmp_path: Path) -> PresetStore:
    return PresetStore(tmp_path / "presets", TrainSettings)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*"))} if folder.is_dir() else {}


def test_every_shipped_preset_is_current_and_loads(store):
    assert [ref.name for ref in store.list() if ref.source == "shipped"] == SHIPPED
    for name in SHIPPED:
        document = json.loads((SHIPPED_DIR / f"{name}.json").read_text())
        assert document["schema_version"] == TrainSettings.SCHEMA_VERSION == 2
        assert document["kind"] == "TrainSettings" and document["name"] == name and document["description"]
        settings = store.load(f"shipped:{name}")
        assert settings.model_dump(mode="json") == document["settings"], name  # nothing dropped or defaulted
    assert store.load("shipped:dora").network_type == "dora"
    assert store.load("shipped:loraid-slice").loraid == 1
    assert store.load("shipped:a14b-both-experts").expert == "both"
    assert "use_rslora=True" in store.load("shipped:rslora-loraplus").network_args


def test_schema_1_preset_migrates_save_last_n_to_both_kinds(store):
    document = json.loads(FIXTURE_V1.read_text())
    assert document["schema_version"] == 1 and document["settings"]["save_last_n"] == 3
    settings = store.read_file(FIXTURE_V1)
    assert settings.save_last_n_steps == 3 and settings.save_last_n_epochs == 3
    assert (settings.network_type, settings.output_name, settings.max_train_steps) == ("dora", "v1-run", 40)
    imported = store.import_file(FIXTURE_V1, name="from-v1")
    saved = json.loads(imported.path.read_text())
    assert saved["schema_version"] == 2 and "save_last_n" not in saved["settings"]
    assert store.load("user:from-v1") == settings


def test_save_load_rename_delete_and_export(store):
    mine = TrainSettings(network_dim=4, loraid=2, output_name="mine")
    ref = store.save("my run", mine)
    assert ref.key == "user:my run" and store.load(ref.key) == mine
    with pytest.raises(UserError, match="already exists; choose another name or tick"):
        store.save("my run", TrainSettings())
    assert store.load(ref.key) == mine  # not replaced
    store.save("my run", TrainSettings(network_dim=6), replace=True)
    assert store.load(ref.key).network_dim == 6

    renamed = store.rename(ref.key, "renamed")
    assert [r.key for r in store.list() if r.source == "user"] == ["user:renamed"]
    assert json.loads(renamed.path.read_text())["name"] == "renamed"
    assert store.export_path("user:renamed") == renamed.path
    store.delete("user:renamed")
    assert [r for r in store.list() if r.source == "user"] == []
    with pytest.raises(UserError, match="shipped preset and cannot be deleted"):
        store.delete("shipped:lora")
    with pytest.raises(UserError, match="shipped preset and cannot be renamed"):
        store.rename("shipped:lora", "x")
    with pytest.raises(UserError, match="not usable as a file name"):
        store.save("../escape", mine)


BAD = [
    ("{not json", "is not valid JSON"),
    ('{"schema_version": 2, "kind": "TrainSettings"}', "no `settings` object"),
    ('{"schema_version": 2, "kind": "GenerateSettings", "settings": {}}', "is a `GenerateSettings` preset"),
    ('{"schema_version": 7, "settings": {}}', "schema_version 7"),
    ('{"schema_version": 2, "settings": {}, "colour": "red"}', "unknown top-level key\\(s\\) `colour`"),
    ('{"schema_version": 2, "settings": {"netwrok_dim": 4, "lr": 1}}',
     "unknown setting\\(s\\) `netwrok_dim` \\(did you mean `network_dim`\\?\\), `lr`"),
    ('{"schema_version": 2, "settings": {"network_dim": -3}}', "`network_dim` = -3 is invalid"),
    ('{"schema_version": 2, "settings": {"network_type": "lycoris"}}', "`network_type` = 'lycoris' is invalid"),
]


@pytest.mark.parametrize("text, message", BAD)
def test_bad_presets_are_refused_by_name_and_nothing_changes(store, tmp_path, text, message):
    store.save("kept", TrainSettings(network_dim=5))
    before = snapshot(store.user_dir)
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        store.import_file(path)
    assert snapshot(store.user_dir) == before
    with pytest.raises(UserError, match=message):
        parse_preset(text, TrainSettings, "bad.json")
