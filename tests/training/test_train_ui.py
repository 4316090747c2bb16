"""Admin Training tab: background job start/status/cancel and the handlers, as plain functions."""

from __future__ import annotations

import time

import pytest

gr = pytest.importorskip("gradio")


def _wait(manager, timeout=60.0):
    t0 = time.time()
    while manager.running() and time.time() - t0 < timeout:
        time.sleep(0.2)


def test_job_runs_in_background_and_reports_its_log(train_env, sft_run):
    from training.jobs import JobManager

    cfg, _, _ = train_env
    manager = JobManager(cfg)
    job = manager.start("list")
    _wait(manager)
    status = manager.status()
    assert status["state"] == "done" and status["returncode"] == 0 and job.proc.pid == status["pid"]
    assert "tiny-sft" in status["log_tail"]
    with pytest.raises(ValueError):
        manager.start("rm")


def test_job_cancel_stops_it(train_env):
    from training.jobs import JobManager

    cfg, _, _ = train_env
    manager = JobManager(cfg)
    manager.start("data", sets=["output_dir=" + str(cfg.train.runs_dir / "never")])
    with pytest.raises(RuntimeError):
        manager.start("list")  # one job at a time
    assert manager.cancel() is True
    assert manager.status()["state"] == "cancelled" and not manager.running()
    assert manager.cancel() is False


def test_training_tab_handlers_and_layout(train_env, sft_run, built_data):
    from faq_bot.ui.training import build_tab, data_card_view, run_rows, status_view
    from training.jobs import JobManager

    cfg, _, _ = train_env
    rows = run_rows(cfg.train.runs_dir)
    assert any(r[0] == "tiny-sft" and r[1] == "sft" for r in rows)
    assert status_view(JobManager(cfg))[0].startswith("No job")
    assert "note" in data_card_view(str(cfg.train.runs_dir / "missing.yaml"))
    with gr.Blocks() as demo:
        with gr.Tab("Training"):
            manager = build_tab(None, cfg)
    assert isinstance(manager, JobManager) and demo is not None
