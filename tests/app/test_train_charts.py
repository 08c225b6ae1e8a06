"""The loss and lr charts' data: the browser's chart keeps the axis types and series of its first value, so every
frame must be numeric (never an object column, which reads as categorical) and the first must name both series."""
from __future__ import annotations

import math

import gradio as gr

from backend.train.run_events import RunProgress
from ui.train_run import LOSS_SERIES, chart_label, first_loss_frame, loss_frame, lr_frame


def _plot_types(frame, y: str, color: str | None = None) -> dict:
    """The axis types Gradio sends to the browser for this frame."""
    plot = gr.LinePlot(x="step", y=y, color=color)
    return plot.postprocess(frame).datatypes


def test_empty_frames_are_numeric_so_the_chart_starts_with_number_axes():
    empty = RunProgress()
    assert _plot_types(loss_frame(empty), "value", "series") == {
        "step": "quantitative", "value": "quantitative", "series": "nominal"}
    assert _plot_types(lr_frame(empty), "lr") == {"step": "quantitative", "lr": "quantitative"}


def test_first_frame_names_both_series_and_draws_nothing():
    first = first_loss_frame()
    assert _plot_types(first, "value", "series")["value"] == "quantitative"
    assert tuple(first["series"]) == LOSS_SERIES
    assert all(math.isnan(value) for value in first["value"])


def test_frames_hold_the_logged_points_and_the_title_counts_steps():
    progress = RunProgress()
    progress.apply([{"event": "start", "total": 30, "step": 0}]
                   + [{"event": "step", "step": step, "loss": 1 / step, "avg_loss": 2 / step, "lr": 1e-4}
                      for step in (5, 10, 15)])
    loss = loss_frame(progress)
    assert loss["step"].tolist() == [5, 5, 10, 10, 15, 15]
    assert loss["value"].tolist() == [1 / 5, 2 / 5, 1 / 10, 2 / 10, 1 / 15, 2 / 15]
    assert lr_frame(progress)["lr"].tolist() == [1e-4] * 3
    assert chart_label("Loss", progress) == "Loss (step 15 of 30)"  # three logged points, fifteen steps
    assert chart_label("Loss", RunProgress()) == "Loss (no steps yet)"


def test_the_samples_of_a_demo_model_are_said_to_be_noise():
    from types import SimpleNamespace

    from ui.train_run import SAMPLES_LABEL, samples_label

    demo = SimpleNamespace(settings={"model_kind": "demo-t2v"})
    assert samples_label(demo).endswith("draws coloured noise, as expected")
    assert samples_label(SimpleNamespace(settings={"model_kind": "wan2.1-t2v-1.3b"})) == SAMPLES_LABEL
