"""Caption files and bulk edits: pure edits, then an atomic write that a fresh read returns."""
from __future__ import annotations

from pathlib import Path

import pytest

from backend.data import captions as cap
from backend.errors import UserError

BEFORE = {"a": "a red ball", "b": "loraidA, a red ball in light", "c": ""}


def test_prefix_suffix():
    assert cap.add_prefix(BEFORE, " photo ") == {"a": "photo, a red ball", "b": "photo, loraidA, a red ball in light",
                                                 "c": "photo"}
    assert cap.add_suffix(BEFORE, "4k", separator=" ") == {"a": "a red ball 4k", "b": "loraidA, a red ball in light 4k",
                                                          "c": "4k"}
    assert BEFORE["a"] == "a red ball"  # inputs are not modified


def test_find_replace_plain_and_regex():
    assert cap.find_replace(BEFORE, "red", "blue")["b"] == "loraidA, a blue ball in light"
    assert cap.find_replace(BEFORE, "RED", "blue", case_sensitive=False)["a"] == "a blue ball"
    assert cap.find_replace(BEFORE, " in light", "")["b"] == "loraidA, a red ball"
    assert cap.find_replace(BEFORE, "loraidA, ", "")["b"] == "a red ball in light"
    assert cap.find_replace(BEFORE, r"a (\w+) ball", r"the \1 sphere", regex=True)["a"] == "the red sphere"
    assert cap.find_replace({"x": "a.b"}, ".", "\\")["x"] == "a\\b"  # plain mode: no regex meaning either side


def test_trigger_word_added_once():
    out = cap.add_trigger_word(BEFORE, "loraidA")
    assert out == {"a": "loraidA, a red ball", "b": "loraidA, a red ball in light", "c": "loraidA"}
    assert cap.add_trigger_word({"a": "xloraidAx is not the word"}, "loraidA")["a"].startswith("loraidA, ")
    assert cap.add_trigger_word({"a": "a ball"}, "tw", position="end")["a"] == "a ball, tw"
    assert cap.changed(BEFORE, out) == {"a": "loraidA, a red ball", "c": "loraidA"}


@pytest.mark.parametrize("call,message", [
    (lambda: cap.find_replace(BEFORE, "", "x"), "text to find is empty"),
    (lambda: cap.find_replace(BEFORE, "(", "x", regex=True), "is not a valid regular expression"),
    (lambda: cap.find_replace(BEFORE, "red", r"\2", regex=True), "replacement"),
    (lambda: cap.add_trigger_word(BEFORE, "  "), "trigger word is empty"),
    (lambda: cap.add_trigger_word(BEFORE, "tw", position="middle"), "must be start or end"),
])
def test_bad_edits(call, message):
    with pytest.raises(UserError, match=message):
        call()


def test_write_and_read_back(tmp_path: Path):
    media = {tmp_path / "one.png": "first", tmp_path / "two.mp4": "second  "}
    written = cap.write_captions(media)
    assert written == [tmp_path / "one.txt", tmp_path / "two.txt"]
    assert cap.read_caption(tmp_path / "two.mp4") == "second"
    assert (tmp_path / "one.txt").read_text() == "first\n"
    assert cap.read_caption(tmp_path / "three.png") is None
    assert cap.read_caption(tmp_path / "one.png", ".caption") is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UserError, match="not UTF-8"):
        cap.read_caption(tmp_path / "bad.png")
