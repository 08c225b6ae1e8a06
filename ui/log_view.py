"""A job log as the page shows it: new bytes are appended by offset, `\\r` progress bars collapse.

Only complete lines are rendered once and kept; the unfinished last line (where a progress bar redraws
itself) is re-rendered on every read. The view keeps the last `max_lines` lines so a long run stays light.
"""
from __future__ import annotations

from collections import deque

from backend.jobs import render_log


class LogView:
    def __init__(self, job_id: str | None = None, max_lines: int = 2000) -> None:
        self.job_id = job_id
        self.offset = 0
        self._done: deque[str] = deque(maxlen=max_lines)
        self._partial = ""

    def append(self, chunk: str) -> None:
        text = self._partial + chunk
        *complete, self._partial = text.split("\n")
        self._done.extend(render_log(line.removesuffix("\r")) for line in complete)

    @property
    def text(self) -> str:
        return "\n".join([*self._done, render_log(self._partial)])
