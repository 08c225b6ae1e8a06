"""What killed saves leave behind is put right at the run's next start and never read as a checkpoint."""
from __future__ import annotations

from backend.compose.ema_plan import discover
from backend.models.demo import TRANSFORMER_FILE
from backend.models.loading import load_transformer
from backend.train.debris import clean_debris, is_debris
from tests.demo_files import save_demo_lora


def test_a_runs_start_cleans_its_own_debris_only(tmp_path):
    (tmp_path / ".run-step000001.safetensors.k2j3.tmp").write_bytes(b"half")
    (tmp_path / "run-step000001-state.tmp").mkdir()
    (tmp_path / "run-step000001-state.tmp" / "state.json").write_text("{")
    old = tmp_path / "run-step000002-state.old"
    old.mkdir()
    (old / "state.json").write_text("{}")
    (tmp_path / "run-state.old").mkdir()
    (tmp_path / "run-state").mkdir()
    (tmp_path / ".other-step000001.safetensors.x1.tmp").write_bytes(b"another run is saving")
    (tmp_path / "other-step000001-state.tmp").mkdir()
    (tmp_path / "run-2-state.tmp").mkdir()  # the run named run-2 is not this one
    done = clean_debris(tmp_path, "run")
    assert len(done) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".other-step000001.safetensors.x1.tmp", "other-step000001-state.tmp", "run-2-state.tmp", "run-state",
        "run-step000002-state"]
    assert (tmp_path / "run-step000002-state" / "state.json").read_text() == "{}"  # put back, not lost
    assert is_debris(tmp_path / "other-step000001-state.tmp" / "x.safetensors")
    assert not is_debris(tmp_path / "run-state" / "state.safetensors")


def test_ema_of_a_run_folder_skips_a_half_written_state(demo_workspace, tmp_path):
    model = load_transformer(demo_workspace.demo_t2v / TRANSFORMER_FILE, "demo-t2v")
    for step in (1, 2):
        save_demo_lora(model, tmp_path / f"run-step{step:06d}.safetensors", loraid=1, seed=step, step=step)
    broken = tmp_path / "run-step000003-state.tmp"
    broken.mkdir()
    (broken / "state.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    found = discover([tmp_path])
    assert sorted(p.name for p in found.files) == ["run-step000001.safetensors", "run-step000002.safetensors"]


def test_resume_from_a_state_whose_replacement_was_killed_reads_the_kept_one(tmp_path):
    import json

    import pytest
    import torch

    from backend.errors import UserError
    from backend.train.state import load_training_state, save_training_state

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    folder = save_training_state(tmp_path / "run-state", optimizer=optimizer, scheduler=scheduler, step=7, epoch=0,
                                 data_position={}, generators={}, fingerprint={})
    folder.rename(tmp_path / "run-state.old")  # killed between moving the state aside and renaming the new one in
    doc = load_training_state(folder, optimizer=optimizer, scheduler=scheduler, generators={}, fingerprint={})
    assert doc["step"] == 7 and folder.is_dir() and json.loads((folder / "state.json").read_text())["step"] == 7
    with pytest.raises(UserError, match="left by an interrupted save"):
        load_training_state(tmp_path / "x-state.tmp", optimizer=optimizer, scheduler=scheduler, generators={},
                            fingerprint={})
