"""The Jobs tab's log view: reading a log in pieces shows exactly what rendering the whole log at once shows."""
from __future__ import annotations

from backend.jobs import render_log
from ui.log_view import LogView

LOG = ("starting\n"
       "\rtrain   0%|    | 0/4\rtrain  25%|#   | 1/4\rtrain  50%|##  | 2/4\n"
       "epoch 1 done \x1b[32mok\x1b[0m\r\n"
       "\rcache 1/3\rcache 2/3\rcache 3/3\r"
       "\nlast line without newline ü\r partial")


def shown_after_chunks(text: str, cuts: list[int]) -> str:
    view = LogView("job")
    previous = 0
    for cut in cuts + [len(text)]:
        view.append(text[previous:cut])
        previous = cut
    return view.text


def test_every_single_split_point_gives_the_whole_log_rendering():
    expected = render_log(LOG)
    for cut in range(len(LOG) + 1):
        assert shown_after_chunks(LOG, [cut]) == expected, f"split at {cut}"


def test_character_by_character_streaming_matches():
    assert shown_after_chunks(LOG, list(range(1, len(LOG)))) == render_log(LOG)


def test_progress_bar_shows_only_its_latest_state_while_it_is_drawn():
    view = LogView("job")
    for step in range(1, 6):
        view.append(f"\rbar {step}/5")
        assert view.text == f"bar {step}/5"
    view.append("\ndone\n")
    assert view.text == "bar 5/5\ndone\n"


def test_long_logs_keep_the_last_lines():
    view = LogView("job", max_lines=3)
    view.append("".join(f"line {n}\n" for n in range(10)))
    assert view.text == "line 7\nline 8\nline 9\n"
