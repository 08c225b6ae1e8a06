"""Reading logs by byte offset and rendering carriage-return progress bars."""
from __future__ import annotations

import json
from pathlib import Path

from backend.jobs import render_log
from backend.jobs.logtext import log_tail, read_jsonl, read_text


def test_render_keeps_latest_state_of_each_line() -> None:
    raw = "loading\r\n\r  0%|    | 0/3\r 33%|#   | 1/3\r100%|####| 3/3\ndone\n"
    assert render_log(raw) == "loading\n100%|####| 3/3\ndone\n"


def test_render_bar_drawn_with_trailing_carriage_return_keeps_its_last_state() -> None:
    assert render_log("step 1\rstep 2\rstep 3\r") == "step 3"
    assert render_log("a\r\nb") == "a\nb"


def test_render_strips_ansi_colour_codes() -> None:
    assert render_log("\x1b[32mok\x1b[0m \x1b[2Kbar") == "ok bar"


def test_read_text_in_pieces_at_every_offset_reassembles_utf8(tmp_path: Path) -> None:
    text = "Ünïcödé ✓ progress █▌ 日本語 🙂 end\n"
    data = text.encode("utf-8")
    path = tmp_path / "log.txt"
    path.write_bytes(data)
    for max_bytes in (4, 5, 6, 9):  # 4 = the longest UTF-8 character, so every read makes progress
        pieces, offset = [], 0
        while offset < len(data):
            piece, new_offset = read_text(path, offset, max_bytes=max_bytes)
            assert new_offset > offset
            pieces.append(piece)
            offset = new_offset
        assert "".join(pieces) == text


def test_read_text_offset_inside_a_character_skips_to_the_next_one(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    path.write_bytes("a日b".encode("utf-8"))  # 'a' = 1 byte, '日' = 3 bytes
    assert read_text(path, 2) == ("b", 5)
    assert read_text(path, 1) == ("日b", 5)


def test_read_text_holds_back_an_incomplete_character_being_written(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    path.write_bytes(b"ok " + "✓".encode("utf-8")[:2])
    text, offset = read_text(path, 0)
    assert (text, offset) == ("ok ", 3)
    with open(path, "ab") as f:
        f.write("✓".encode("utf-8")[2:] + b"\n")
    assert read_text(path, offset) == ("✓\n", 7)


def test_read_text_missing_file_returns_nothing(tmp_path: Path) -> None:
    assert read_text(tmp_path / "absent.txt", 12) == ("", 12)


def test_read_jsonl_leaves_a_partial_line_for_later(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    first = json.dumps({"t": 1.0, "event": "start"}) + "\n"
    path.write_text(first + '{"t": 2.0, "event": "pro', encoding="utf-8")
    events, offset = read_jsonl(path, 0)
    assert events == [{"t": 1.0, "event": "start"}] and offset == len(first)
    with open(path, "a", encoding="utf-8") as f:
        f.write('gress", "step": 1}\nnot json\n')
    events, offset2 = read_jsonl(path, offset)
    assert events == [{"t": 2.0, "event": "progress", "step": 1}, {"event": "invalid", "raw": "not json"}]
    assert offset2 == path.stat().st_size


def test_log_tail_renders_bars_and_keeps_last_lines(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    path.write_text("".join(f"line {i}\n" for i in range(100)) + "\r10%\r55%\nboom\n", encoding="utf-8")
    assert log_tail(path, max_lines=3) == "line 99\n55%\nboom"
