"""The Gradio server settings the labeller applies (labeler/server.py)."""

import time

import gradio as gr
import pytest

from labeler import server


def test_gradios_event_log_is_not_summarised_after_every_event(monkeypatch) -> None:
    with gr.Blocks() as demo:
        gr.Markdown("x")
    queue = demo._queue
    records = [{"time": time.time(), "status": "success", "process_time": 0.01, "function": "f",
                "session_hash": "s"}] * 3

    def summarise(_records):  # noqa: ANN001, ANN202
        raise AssertionError("summarised")

    monkeypatch.setattr(queue, "_get_df", summarise)
    queue.events_recorded += 1
    with pytest.raises(AssertionError, match="summarised"):  # Gradio's default: a pandas summary per event
        queue.compute_analytics_summary(records)
    server._no_event_analytics(queue)
    for _ in range(1000):  # the patched summary raises if it is ever made again
        queue.events_recorded += 1
        queue.compute_analytics_summary(records)
