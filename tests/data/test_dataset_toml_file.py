"""The dataset TOML on disk: typed paths checked, invalid text never written, cache runs only from the written file."""
from __future__ import annotations

import pytest

from backend.data.dataset_toml_file import read_toml_text, ready_for_cache, resolve_toml_path, write_dataset_toml
from backend.errors import UserError


def test_typed_toml_paths_are_resolved_and_checked(tmp_path):
    (tmp_path / "data").mkdir()
    assert resolve_toml_path("data/d.toml", tmp_path) == (tmp_path / "data" / "d.toml").resolve()
    for typed, message in [("", "No TOML file is given"), ("data/d.json", "d.json does not end in .toml"),
                           ("missing/d.toml", "The folder .*missing does not exist")]:
        with pytest.raises(UserError, match=message):
            resolve_toml_path(typed, tmp_path)
    (tmp_path / "odd.toml").mkdir()
    with pytest.raises(UserError, match="odd.toml is a folder"):
        resolve_toml_path("odd.toml", tmp_path)


@pytest.mark.parametrize("bad_text, message", [
    ("[general\nresolution = [48, 48]\n", r"dataset.toml is not valid TOML"),
    ("[general]\nresolutoin = [48, 48]\n[[datasets]]\nimage_directory = \"images\"\n",
     r"\[general\]: unknown key `resolutoin`; did you mean `resolution`\?"),
    ("[[datasets]]\nimage_directory = \"nowhere\"\n", r"image folder .*nowhere does not exist"),
    ("   \n", "The TOML editor is empty"),
])
def test_an_invalid_edit_never_replaces_the_valid_file(small_dataset, bad_text, message):
    path = small_dataset / "dataset.toml"
    before = path.read_bytes()
    with pytest.raises(UserError, match=message):
        write_dataset_toml(path, bad_text)
    assert path.read_bytes() == before
    assert [p.name for p in small_dataset.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_a_valid_edit_is_written_and_cache_needs_the_written_text(small_dataset):
    path = small_dataset / "edited.toml"
    text = (small_dataset / "dataset.toml").read_text(encoding="utf-8").replace("[48, 48]", "[64, 64]")
    with pytest.raises(UserError, match="has not been written yet"):
        ready_for_cache(path, text)
    config = write_dataset_toml(path, text.rstrip("\n"))
    assert config.general.resolution == (64, 64) and read_toml_text(path) == text
    assert ready_for_cache(path, text).general.resolution == (64, 64)
    assert ready_for_cache(path, None).general.resolution == (64, 64)
    with pytest.raises(UserError, match=r"The TOML in the editor differs from edited.toml on disk; click Write TOML"):
        ready_for_cache(path, text.replace("[64, 64]", "[32, 32]"))
    with pytest.raises(UserError, match="does not exist yet"):
        read_toml_text(small_dataset / "none.toml")
