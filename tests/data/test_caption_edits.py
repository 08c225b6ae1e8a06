"""Caption edits: one caption saved, bulk edits planned then applied, edits made meanwhile never overwritten."""
from __future__ import annotations

import pytest

from backend.data.caption_edits import BulkEdit, apply_plan, plan_bulk_edit, save_caption
from backend.data.captions import read_caption
from backend.errors import UserError


@pytest.fixture
def media(tmp_path, make):
    files = [make.png(tmp_path / f"img_{i}.png", 16, 16, seed=i) for i in range(4)]
    make.caption(files[0], "a red ball")
    make.caption(files[1], "sks, a red ball on a table")
    make.caption(files[2], "a blue cube")
    return files  # files[3] has no caption


def captions_of(files):
    return {path: read_caption(path) for path in files}


def test_saving_a_caption_writes_only_its_file_and_refuses_empty_text(media):
    before = {p: p.with_suffix(".txt").read_bytes() for p in media[:3]}
    with pytest.raises(UserError, match=r"The caption for img_3.png is empty; type a caption"):
        save_caption(media[3], "   ")
    assert not media[3].with_suffix(".txt").exists()
    written = save_caption(media[3], "  a green tree \n")
    assert written == media[3].with_suffix(".txt")
    assert written.read_text(encoding="utf-8") == "a green tree\n"
    assert {p: p.with_suffix(".txt").read_bytes() for p in media[:3]} == before


def test_saving_for_a_file_that_vanished_says_to_scan_again(tmp_path):
    with pytest.raises(UserError, match="no longer exists; scan the folder again"):
        save_caption(tmp_path / "gone.png", "text")


def test_a_trigger_word_plan_counts_changes_and_leaves_uncaptioned_files_alone(media):
    plan = plan_bulk_edit(captions_of(media), BulkEdit("trigger word", "sks"))
    assert plan.changes == {media[0]: ("a red ball", "sks, a red ball"), media[2]: ("a blue cube", "sks, a blue cube")}
    assert (plan.unchanged, plan.without_caption) == (1, 1)
    assert plan.summary == ("2 of 3 captions would change (add trigger word `sks` at the start); 1 file(s) without "
                            "a caption are left alone.")
    assert read_caption(media[0]) == "a red ball"  # planning writes nothing
    result = apply_plan(plan)
    assert result.written == [media[0].with_suffix(".txt"), media[2].with_suffix(".txt")] and not result.skipped
    assert captions_of(media) == {media[0]: "sks, a red ball", media[1]: "sks, a red ball on a table",
                                  media[2]: "sks, a blue cube", media[3]: None}


def test_applying_skips_captions_changed_since_the_preview(media):
    plan = plan_bulk_edit(captions_of(media), BulkEdit("suffix", "high quality"))
    media[2].with_suffix(".txt").write_text("edited meanwhile\n", encoding="utf-8")
    result = apply_plan(plan)
    assert result.skipped == [media[2]]
    assert read_caption(media[2]) == "edited meanwhile"
    assert read_caption(media[0]) == "a red ball, high quality"
    assert result.summary == ("Wrote 2 caption file(s); 1 caption(s) changed since the preview and were left as "
                              "they are (preview again to include them).")


def test_prefix_find_replace_and_bad_input(media):
    captions = captions_of(media)
    assert plan_bulk_edit(captions, BulkEdit("prefix", "photo")).changes[media[2]] == ("a blue cube",
                                                                                        "photo, a blue cube")
    replaced = plan_bulk_edit(captions, BulkEdit("find / replace", "red", "crimson"))
    assert {m: after for m, (_, after) in replaced.changes.items()} == {
        media[0]: "a crimson ball", media[1]: "sks, a crimson ball on a table"}
    regex = plan_bulk_edit(captions, BulkEdit("find / replace", r"a (\w+) ball", r"the \1 sphere", regex=True))
    assert regex.changes[media[0]][1] == "the red sphere"
    with pytest.raises(UserError, match="The prefix is empty"):
        plan_bulk_edit(captions, BulkEdit("prefix", "  "))
    with pytest.raises(UserError, match="the trigger word is empty"):
        plan_bulk_edit(captions, BulkEdit("trigger word", ""))
    with pytest.raises(UserError, match="is not a valid regular expression"):
        plan_bulk_edit(captions, BulkEdit("find / replace", "(", "x", regex=True))
    with pytest.raises(UserError, match="Unknown bulk edit 'shout'"):
        plan_bulk_edit(captions, BulkEdit("shout", "x"))
