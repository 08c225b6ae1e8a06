"""A job's count and ETA read back from the tail of its events file, as the Jobs table and the Dataset tab show it."""
from __future__ import annotations

import json

from backend.jobs.progress import JobProgress, read_progress


def _write(path, events):
    path.write_text("".join(json.dumps(event) + "\n" for event in events), encoding="utf-8")


def test_count_and_eta_from_the_progress_events(tmp_path):
    events = tmp_path / "events.jsonl"
    _write(events, [{"t": 100.0, "event": "start"},
                    {"t": 100.0, "event": "progress", "step": 0, "total": 40},
                    {"t": 110.0, "event": "warning", "message": "a.png left out"},
                    {"t": 120.0, "event": "progress", "step": 10, "total": 40}])
    progress = read_progress(events)
    assert (progress.step, progress.total) == (10, 40)
    assert progress.eta() == 60.0  # 10 items in 20 s, 30 to go
    assert progress.line() == "10/40 (25%) · ETA 1:00"
    assert progress.line(finished=True) == "10/40 (25%)"


def test_training_steps_use_the_trainers_own_eta(tmp_path):
    events = tmp_path / "events.jsonl"
    _write(events, [{"t": 1.0, "event": "step", "step": 3, "total": 30, "eta_s": 81.4, "loss": 0.2}])
    assert read_progress(events).line() == "3/30 (10%) · ETA 1:21"


def test_only_the_tail_is_read_and_a_cut_or_half_written_line_is_ignored(tmp_path):
    events = tmp_path / "events.jsonl"
    lines = [{"t": float(step), "event": "progress", "step": step, "total": 5000} for step in range(5000)]
    _write(events, lines)
    with events.open("a", encoding="utf-8") as handle:
        handle.write('{"t": 6000.0, "event": "progress", "st')  # the job is writing this line now
    progress = read_progress(events, tail_bytes=4096)
    assert progress.step == 4999 and progress.first[1] > 4000  # the rate comes from the newest events only
    assert progress.eta() == 1.0


def test_nothing_counted_yet():
    assert JobProgress().line() == ""
    assert read_progress(__import__("pathlib").Path("/nonexistent/events.jsonl")).counted is False


def test_a_loops_progress_callback_writes_what_the_bars_count_and_log_lines(tmp_path, capsys):
    from backend.jobs.protocol import JobContext, every_percent

    events_path = tmp_path / "events.jsonl"
    ctx = JobContext(events_path=events_path)
    progress = every_percent(ctx, "tensors", part="high-noise")
    for done in range(1, 251):
        progress(done, 250)
    ctx.close()
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    assert [e["step"] for e in events] == list(range(2, 251, 2))  # one per whole percent of 250, the last included
    assert all(e["event"] == "progress" and e["total"] == 250 and e["unit"] == "tensors" and e["part"] == "high-noise"
               for e in events)
    shown = read_progress(events_path)
    assert (shown.step, shown.total) == (250, 250)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "high-noise: 1/250 tensors (0%)" and lines[-1] == "high-noise: 250/250 tensors (100%)"
    assert len(lines) == 11  # the first count, then one line per tenth
