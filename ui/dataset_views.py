"""How the Dataset tab shows backend results: Markdown summaries, table rows and the frame strip (no logic)."""
from __future__ import annotations

from html import escape

from backend.data.caption_edits import CaptionEditPlan
from backend.data.dataset_folder import Entry, FolderScan
from backend.data.dataset_preview import BucketSummary, CacheCount, describe_indices
from backend.data.frames import FrameWindow

ITEM_HEADERS = ["file", "kind", "size", "frames", "caption"]
BUCKET_HEADERS = ["bucket", "images", "videos", "video windows", "upscaled", "cropped (mean)"]
DROPPED_HEADERS = ["file", "why it is dropped"]
FRAME_HEADERS = ["mode", "windows", "frames taken (start: original frame numbers)"]
CHANGE_HEADERS = ["file", "caption now", "caption after"]
NO_CAPTION = "— no caption —"
STRIP_MAX_FRAMES = 160


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def summary_markdown(scan: FolderScan) -> str:
    counts = scan.counts()
    lines = [f"**{scan.root}**: {_count(counts['images'], 'image')} and {_count(counts['videos'], 'video')} in "
             f"{_count(counts['folders'], 'folder')}; **{counts['missing_captions']} without a caption**, "
             f"**{counts['unreadable']} unreadable**."]
    for kind in ("image", "video"):
        sizes = scan.resolutions(kind)
        if sizes:
            lines.append(f"{kind.capitalize()} sizes: " + ", ".join(f"{size} ×{n}" for size, n in sizes.most_common()))
    videos = [e.item for e in scan.entries if e.item.kind == "video"]
    if videos:
        frames = [v.frame_count or 0 for v in videos]
        durations = [v.duration for v in videos if v.duration]
        text = f"Video frames: {min(frames)}–{max(frames)}"
        if durations:
            text += f", {min(durations):.2f}–{max(durations):.2f} s"
        lines.append(text + ".")
    return "  \n".join(lines)


def problems_markdown(scan: FolderScan) -> str:
    parts = []
    missing = scan.missing_captions
    if missing:
        parts.append("**Without a caption** (pick one below and write it):  \n"
                     + "  \n".join(f"- `{e.name}`" for e in missing))
    if scan.unreadable:
        parts.append("**Unreadable** (left out of training):  \n"
                     + "  \n".join(f"- `{name}`: {escape(reason)}" for name, reason in scan.unreadable))
    for key, names in scan.duplicate_names:
        parts.append(f"**Same name `{key}`**: {', '.join(names)} would share caption and cache files; rename one.")
    return "\n\n".join(parts) if parts else "Every file is readable and has a caption."


def frames_text(item) -> str:
    """"17 @ 16 fps, 1.06 s" for a clip, "" for an image."""
    if item.kind != "video":
        return ""
    text = str(item.frame_count)
    return text + (f" @ {item.fps:g} fps, {item.duration:.2f} s" if item.fps else "")


def item_rows(scan: FolderScan) -> list[list]:
    return [[entry.name, entry.item.kind, f"{entry.item.width}x{entry.item.height}", frames_text(entry.item),
             entry.item.caption if entry.item.caption is not None else NO_CAPTION] for entry in scan.entries]


def item_label(entry: Entry) -> str:
    return f"{entry.name} (no caption)" if entry.item.caption is None else entry.name


def item_choices(scan: FolderScan) -> list[tuple[str, str]]:
    return [(item_label(entry), entry.name) for entry in scan.entries]


def item_info(entry: Entry) -> str:
    item = entry.item
    text = f"**{entry.name}** — {item.kind}, {item.width}x{item.height}"
    if item.kind == "video":
        text += f", {item.frame_count} frames"
        if item.fps:
            text += f" at {item.fps:g} fps ({item.duration:.2f} s)"
    caption = item.caption_path.name if item.caption_path else "its JSONL line"
    return text + f". Caption file: `{caption}`" + (" (missing)." if item.caption is None else ".")


def bucket_rows(summary: BucketSummary) -> list[list]:
    return [[row.label, row.images, row.videos, row.video_windows, row.upscaled, f"{row.mean_cropped:.0%}"]
            for row in summary.rows]


def bucket_message(summary: BucketSummary, resolution: tuple[int, int]) -> str:
    return (f"At {resolution[0]}x{resolution[1]}: {_count(len(summary.rows), 'bucket')}, {summary.kept} item(s) "
            f"kept, {len(summary.dropped)} dropped.")


def change_rows(plan: CaptionEditPlan, scan: FolderScan, limit: int = 200) -> list[list]:
    names = {entry.item.path: entry.name for entry in scan.entries}
    return [[names.get(media, media.name), before, after]
            for media, (before, after) in list(plan.changes.items())[:limit]]


def frame_rows(by_mode: dict[str, list[FrameWindow]]) -> list[list]:
    rows = []
    for mode, windows in by_mode.items():
        taken = "; ".join(f"{w.start}: {describe_indices(w.source_indices)}" for w in windows) or "nothing"
        rows.append([mode, len(windows), taken])
    return rows


def frame_strip_html(windows: list[FrameWindow], frame_count: int, mode: str) -> str:
    """One row per window, one cell per original frame; taken frames are filled."""
    shown = min(frame_count, STRIP_MAX_FRAMES)
    header = f'<p>Mode <b>{escape(mode)}</b> takes {_count(len(windows), "window")} from {frame_count} frames'
    header += f" (first {shown} shown).</p>" if shown < frame_count else ".</p>"
    rows = []
    for window in windows:
        taken = set(window.source_indices)
        cells = "".join(f'<td class="{"ds-taken" if i in taken else "ds-skipped"}" title="frame {i}"></td>'
                        for i in range(shown))
        rows.append(f'<tr data-start="{window.start}" data-length="{window.length}">'
                    f'<th>{window.start}+{window.length}</th>{cells}</tr>')
    style = ("<style>.ds-strip td{width:6px;height:14px;padding:0;border:1px solid #ddd}"
             ".ds-strip .ds-taken{background:#2f80ed}.ds-strip th{font-weight:normal;padding-right:6px;"
             "text-align:right;white-space:nowrap}</style>")
    return f'{style}{header}<table class="ds-strip">{"".join(rows)}</table>'


def cache_message(counts: list[CacheCount]) -> str:
    latents = sum(c.latent_files for c in counts)
    texts = sum(c.text_files for c in counts)
    return f"{latents} latent file(s) and {texts} text file(s) in {_count(len(counts), 'cache folder')}."
