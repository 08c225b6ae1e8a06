"""The whole page: a header with the machine's status, then one tab per stage of the work."""
from __future__ import annotations

import gradio as gr

from backend.jobs import JobManager
from backend.system.monitor import status_line, system_status
from backend.workspace import Workspace
from ui.context import AppContext
from ui.tabs import dataset, ema, generate, jobs, loraid, merge, train

TABS = [  # (elem_id suffix, label, module) in the order they appear
    ("dataset", "Dataset", dataset),
    ("train", "Train", train),
    ("loraid", "LORAID", loraid),
    ("merge", "Merge", merge),
    ("ema", "EMA", ema),
    ("generate", "Generate", generate),
    ("jobs", "Jobs", jobs),
]
STATUS_POLL_SECONDS = 3.0

CSS = """
#app-header { align-items: center; }
#system-status p { margin: 0; font-family: ui-monospace, monospace; font-size: 0.9em; text-align: right; }
.loraid-muted p { opacity: 0.75; }
#job-log textarea { font-family: ui-monospace, monospace; font-size: 0.85em; }
.gradio-container { overflow: clip !important; }  /* clips like "hidden" but lets the run column stick */
#train-run-column { position: sticky; top: 8px; align-self: flex-start; max-height: calc(100vh - 16px);
                    overflow-y: auto; }
#train-run-column > *, #train-run-column .column > * { flex-shrink: 0; }  /* scroll, never squeeze the charts */
#train-loss-chart, #train-lr-chart { height: auto !important; }  /* the label above the plot, not over it */
#train-loss-chart .vega-embed { height: 230px !important; }
#train-lr-chart .vega-embed { height: 170px !important; }
/* Vega sizes the axis from a narrower measuring font than the page's, so the widest tick labels started left of
   the drawing and lost their first character ("00µ"): draw past the edge, with room left for it */
#train-loss-chart svg.marks, #train-lr-chart svg.marks { overflow: visible; }
#train-loss-chart .vega-embed, #train-lr-chart .vega-embed { padding-left: 16px !important; box-sizing: border-box; }
#train-log textarea { font-family: ui-monospace, monospace; font-size: 0.8em; }
#train-stats code, #train-job code { overflow-wrap: anywhere; }  /* long checkpoint paths wrap, never cut */
"""
# Gradio 6 takes theme and css at launch(), not in Blocks(); app.py passes these.
LAUNCH_STYLE = {"theme": gr.themes.Soft(), "css": CSS}


def current_status_line() -> str:
    return status_line(system_status())


def build_app(workspace: Workspace, manager: JobManager) -> gr.Blocks:
    ctx = AppContext(workspace=workspace, jobs=manager)
    with gr.Blocks(title="LORAID Studio", analytics_enabled=False) as blocks:  # a local app reports to no one
        with gr.Row(elem_id="app-header"):
            gr.Markdown(f"## LORAID Studio\nWorkspace: `{workspace.root}`", elem_id="app-title")
            header_status = gr.Markdown(current_status_line, elem_id="system-status")
        gr.Timer(STATUS_POLL_SECONDS).tick(current_status_line, outputs=header_status, show_progress="hidden",
                                           concurrency_id="system-status")
        with gr.Tabs() as tabs:
            ctx.links["tabs"] = tabs  # a tab may switch to another (the Jobs tab's "Open in Train tab")
            for name, label, module in TABS:
                with gr.Tab(label, id=name, elem_id=f"tab-{name}") as tab:
                    module.build(ctx, tab)
    return blocks
