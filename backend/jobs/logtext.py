"""Reading a job's log and events files by byte offset, and rendering `\\r` progress bars as a terminal would."""
from __future__ import annotations

import codecs
import json
import re
from pathlib import Path

MAX_READ_BYTES = 4 * 1024 * 1024  # one read returns at most this much; the caller reads again from the new offset
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def render_log(text: str) -> str:
    """Collapse carriage-return redraws: on each line the text after the last `\\r` wins (`\\r\\n` is a newline).

    A line that ends in a bare `\\r` (a bar drawn with `end="\\r"`) keeps its last non-empty state. ANSI colour and
    cursor codes are removed, since the log is shown as plain text.
    """
    text = _ANSI_ESCAPE.sub("", text).replace("\r\n", "\n")
    return "\n".join(_latest_state(line) for line in text.split("\n"))


def _latest_state(line: str) -> str:
    if "\r" not in line:
        return line
    for state in reversed(line.split("\r")):
        if state:
            return state
    return ""


def _read_bytes(path: Path, offset: int, max_bytes: int) -> bytes | None:
    """Up to `max_bytes` of `path` from byte `offset`; None when the file does not exist (yet)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(max_bytes)
    except FileNotFoundError:
        return None


def read_text(path: Path, offset: int = 0, max_bytes: int = MAX_READ_BYTES) -> tuple[str, int]:
    """The text appended to `path` since byte `offset`, and the offset to read from next.

    Only whole UTF-8 characters are returned: an incomplete character at the end is left for the next read, and an
    offset that lands inside a character skips to the next character start. Invalid bytes become U+FFFD.
    """
    offset = max(0, int(offset))
    data = _read_bytes(path, offset, max_bytes)
    if data is None:
        return "", offset
    start = 0
    if offset > 0:
        while start < min(3, len(data)) and (data[start] & 0xC0) == 0x80:  # continuation bytes of a split char
            start += 1
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = decoder.decode(data[start:], final=False)
    pending, _ = decoder.getstate()
    return text, offset + len(data) - len(pending)


def read_jsonl(path: Path, offset: int = 0, max_bytes: int = MAX_READ_BYTES) -> tuple[list[dict], int]:
    """The complete JSON lines appended to `path` since byte `offset`, and the offset after the last one.

    A line still being written (no newline yet) is left for the next read. A line that is not a JSON object is
    returned as `{"event": "invalid", "raw": <text>}` rather than dropped.
    """
    offset = max(0, int(offset))
    data = _read_bytes(path, offset, max_bytes)
    if data is None:
        return [], offset
    end = data.rfind(b"\n") + 1
    events: list[dict] = []
    for raw in data[:end].splitlines():
        line = raw.decode("utf-8", errors="replace").strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            event = None
        events.append(event if isinstance(event, dict) else {"event": "invalid", "raw": line})
    return events, offset + end


def log_tail(path: Path, max_lines: int = 20, max_bytes: int = 16 * 1024) -> str:
    """The last lines of a log, rendered (progress bars collapsed), for error messages."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return ""
    start = max(0, size - max_bytes)
    text, _ = read_text(path, start, max_bytes)
    lines = render_log(text).split("\n")
    if start > 0:
        lines = lines[1:]  # the first line was cut
    lines = [line for line in lines if line.strip()]
    return "\n".join(lines[-max_lines:])
