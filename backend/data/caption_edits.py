"""Caption edits as the Dataset tab makes them: one caption typed in the editor, or a bulk edit (prefix, suffix,
find / replace, trigger word) that is first planned and previewed, then applied on confirm.

A plan remembers each caption as it was when previewed; applying it writes only captions still unchanged on disk,
so an edit made meanwhile (in the editor, or another program) is never overwritten. Every file is written
atomically; files without a caption are left alone by bulk edits (they get one in the editor).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from backend.data.captions import add_prefix, add_suffix, add_trigger_word, find_replace, read_caption, write_caption
from backend.errors import UserError

BULK_OPERATIONS = ("trigger word", "prefix", "suffix", "find / replace")


def save_caption(media: Path, text: str | None, extension: str = ".txt") -> Path:
    """Write one caption (atomically); an empty caption is refused so no blank file appears."""
    caption = (text or "").strip()
    if not caption:
        raise UserError(f"The caption for {media.name} is empty; type a caption before saving.")
    if not media.is_file():
        raise UserError(f"{media} no longer exists; scan the folder again.")
    return write_caption(media, caption, extension)


@dataclass(frozen=True)
class BulkEdit:
    """What the user asked for. `text` is the prefix / suffix / trigger word, or the text to find."""
    operation: str
    text: str = ""
    replacement: str = ""
    position: str = "start"  # trigger word: "start" or "end"
    regex: bool = False
    case_sensitive: bool = True

    def describe(self) -> str:
        if self.operation == "find / replace":
            return f"replace `{self.text}` with `{self.replacement}`"
        if self.operation == "trigger word":
            return f"add trigger word `{self.text.strip()}` at the {self.position}"
        return f"add {self.operation} `{self.text.strip()}`"

    def apply_to(self, captions: Mapping[Path, str]) -> dict[Path, str]:
        if self.operation == "trigger word":
            return add_trigger_word(captions, self.text, self.position)
        if self.operation == "find / replace":
            return find_replace(captions, self.text, self.replacement, self.regex, self.case_sensitive)
        if not self.text.strip():
            raise UserError(f"The {self.operation} is empty; type the text to add.")
        if self.operation == "prefix":
            return add_prefix(captions, self.text)
        if self.operation == "suffix":
            return add_suffix(captions, self.text)
        raise UserError(f"Unknown bulk edit {self.operation!r}; choose one of {', '.join(BULK_OPERATIONS)}.")


@dataclass
class CaptionEditPlan:
    edit: BulkEdit
    changes: dict[Path, tuple[str, str]] = field(default_factory=dict)  # media -> (caption before, after)
    unchanged: int = 0
    without_caption: int = 0  # left alone

    @property
    def summary(self) -> str:
        total = len(self.changes) + self.unchanged
        text = f"{len(self.changes)} of {total} captions would change ({self.edit.describe()})"
        if self.without_caption:
            text += f"; {self.without_caption} file(s) without a caption are left alone"
        return text + "."


def plan_bulk_edit(captions: Mapping[Path, str | None], edit: BulkEdit) -> CaptionEditPlan:
    """What `edit` would do to these captions ({media: caption or None}); nothing is written."""
    present = {media: text for media, text in captions.items() if text is not None}
    after = edit.apply_to(present)
    plan = CaptionEditPlan(edit, without_caption=len(captions) - len(present))
    for media, before in present.items():
        if after[media] != before:
            plan.changes[media] = (before, after[media])
        else:
            plan.unchanged += 1
    return plan


@dataclass
class AppliedEdit:
    written: list[Path] = field(default_factory=list)  # caption files
    skipped: list[Path] = field(default_factory=list)  # media whose caption changed after the preview

    @property
    def summary(self) -> str:
        text = f"Wrote {len(self.written)} caption file(s)"
        if self.skipped:
            text += (f"; {len(self.skipped)} caption(s) changed since the preview and were left as they are "
                     "(preview again to include them)")
        return text + "."


def apply_plan(plan: CaptionEditPlan, extension: str = ".txt") -> AppliedEdit:
    """Write the planned captions whose file still holds the caption that was previewed."""
    result = AppliedEdit()
    for media, (before, after) in plan.changes.items():
        try:
            current = read_caption(media, extension)
        except UserError:
            current = None
        if current != before:
            result.skipped.append(media)
            continue
        result.written.append(write_caption(media, after, extension))
    return result
