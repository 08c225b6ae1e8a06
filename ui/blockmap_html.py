"""Draw a `backend.loraid.blockmap.BlockMap` as HTML: one compact table per expert, rows = blocks, columns = module
kinds, each cell coloured by its owner; a cell with two or more owners is red and hatched. A legend follows."""
from __future__ import annotations

from html import escape

from backend.loraid.blockmap import BlockMap, Panel

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#bab0ac",
           "#86bcb6", "#d4a6c8", "#8cd17d", "#f1ce63", "#a0cbe8", "#ffbe7d", "#79706e", "#d37295")
CONFLICT_STYLE = "background: repeating-linear-gradient(45deg, #e15759 0 3px, #ffffff 3px 5px);"
STYLE = """<style>
.bm-wrap { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; font-size: 11px; }
.bm-panel caption { font-weight: 600; text-align: left; padding-bottom: 2px; }
.bm-table { border-collapse: collapse; margin: 0 !important; width: auto !important; }
.bm-table th { font-weight: 500; padding: 0 2px !important; line-height: 12px !important; text-align: center;
               border: none !important; color: var(--body-text-color-subdued, #666); font-size: 10px; }
.bm-table th.bm-row { text-align: right; padding-right: 4px !important; }
.bm-table td { width: 14px; min-width: 14px; height: 10px; padding: 0 !important; line-height: 8px !important;
               border: 1px solid var(--border-color-primary, #ddd) !important; }
.bm-legend { display: flex; flex-wrap: wrap; gap: 10px; margin-top: 8px; font-size: 12px; }
.bm-swatch { display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: -2px;
             border: 1px solid #999; }
</style>"""


def owner_colours(owners: tuple[str, ...]) -> dict[str, str]:
    return {owner: PALETTE[index % len(PALETTE)] for index, owner in enumerate(owners)}


def _group_header(kinds: tuple[str, ...]) -> str:
    spans: list[list] = []
    for kind in kinds:
        group = kind.split(".", 1)[0]
        if spans and spans[-1][0] == group:
            spans[-1][1] += 1
        else:
            spans.append([group, 1])
    return "".join(f'<th colspan="{count}">{escape(group)}</th>' for group, count in spans)


def _cell(panel: Panel, block: int, kind: str, owners: tuple[str, ...], colours: dict[str, str]) -> str:
    where = f"block {block} {kind}"
    attributes = f'data-block="{block}" data-kind="{escape(kind)}" data-owners="{escape("|".join(owners))}"'
    if not owners:
        return f'<td {attributes} title="{escape(where)}: free"></td>'
    if len(owners) > 1:
        title = f"CONFLICT {where}: {', '.join(owners)}"
        return f'<td class="bm-conflict" {attributes} title="{escape(title)}" style="{CONFLICT_STYLE}"></td>'
    return (f'<td {attributes} title="{escape(where)}: {escape(owners[0])}" '
            f'style="background: {colours[owners[0]]};"></td>')


def panel_html(panel: Panel, colours: dict[str, str]) -> str:
    short = "".join(f'<th title="{escape(kind)}">{escape(kind.rsplit(".", 1)[-1])}</th>' for kind in panel.kinds)
    rows = []
    for block, row in enumerate(panel.cells):
        cells = "".join(_cell(panel, block, kind, owners, colours) for kind, owners in zip(panel.kinds, row))
        rows.append(f'<tr><th class="bm-row">{block}</th>{cells}</tr>')
    expert = escape(panel.expert or "single")
    return (f'<table class="bm-table bm-panel" data-expert="{expert}"><caption>{escape(panel.title)}</caption>'
            f'<thead><tr><th class="bm-row">block</th>{_group_header(panel.kinds)}</tr>'
            f'<tr><th></th>{short}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def legend_html(block_map: BlockMap, colours: dict[str, str]) -> str:
    items = [f'<span class="bm-owner" data-owner="{escape(owner)}"><span class="bm-swatch" '
             f'style="background: {colours[owner]};"></span>{escape(owner)}</span>' for owner in block_map.owners]
    if any(panel.conflict_cells() for panel in block_map.panels):
        items.append(f'<span><span class="bm-swatch" style="{CONFLICT_STYLE}"></span>conflict (two or more owners)'
                     f'</span>')
    items.append('<span><span class="bm-swatch" style="background: transparent;"></span>free</span>')
    return f'<div class="bm-legend">{"".join(items)}</div>'


def block_map_html(block_map: BlockMap) -> str:
    colours = owner_colours(block_map.owners)
    panels = "".join(panel_html(panel, colours) for panel in block_map.panels)
    return f'{STYLE}<div class="bm-wrap">{panels}</div>{legend_html(block_map, colours)}'
