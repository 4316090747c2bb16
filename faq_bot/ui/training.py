"""Admin Training tab: build data, run SFT or KTO in a background process (live log, progress, loss plot), cancel,
list finished adapters. Thin: the work is in training.jobs / training.runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr

from training.config import TRAIN_CONFIG_DIR, DataBuildConfig, load_train_config
from training.jobs import JobManager
from training.runs import list_runs

__all__ = ["build_tab", "cancel_job", "data_card_view", "run_rows", "start_job", "status_view"]

DEFAULT_CONFIG = {"data": TRAIN_CONFIG_DIR / "data.yaml", "sft": TRAIN_CONFIG_DIR / "sft_lora.yaml",
                  "kto": TRAIN_CONFIG_DIR / "kto.yaml"}
RUN_HEADERS = ["name", "kind", "base model", "final loss", "steps", "finished", "merged"]


# ---------------------------------------------------------------------------- handlers (plain functions)


def start_job(manager: JobManager, cmd: str, config: str, name: str = "", sets_text: str = "") -> str:
    sets = [line.strip() for line in (sets_text or "").splitlines() if line.strip()]
    bad = [s for s in sets if "=" not in s]
    if bad:
        raise gr.Error(f"Overrides must be KEY=VALUE, one a line; got {bad[0]!r}.")
    try:
        job = manager.start(cmd, config=(config or "").strip() or None, name=(name or "").strip() or None, sets=sets)
    except (RuntimeError, ValueError) as e:
        raise gr.Error(str(e)) from None
    run = f" run `{job.name}`" if job.name else ""
    return f"Started `{cmd}`{run} (pid {job.proc.pid})."


def cancel_job(manager: JobManager) -> str:
    return "Cancelled." if manager.cancel() else "No job is running."


def status_view(manager: JobManager) -> tuple[str, str, str | None]:
    """(status markdown, log tail, loss plot path) for the current or last job."""
    s = manager.status()
    if s["state"] == "idle":
        return "No job started yet.", "", None
    run = f" `{s['name']}`" if s.get("name") else ""
    line = f"**{s['cmd']}**{run} — {s['state']}, {s['elapsed_s']:.0f} s"
    p = s.get("progress") or {}
    if p.get("max_steps"):
        step, total = int(p.get("step") or 0), int(p["max_steps"])
        bar = "█" * round(20 * step / total) + "░" * (20 - round(20 * step / total))
        loss = f", loss {p['loss']:.4f}" if isinstance(p.get("loss"), (int, float)) else ""
        line += f"\n\n`{bar}` step {step}/{total}{loss}"
    if s["state"] == "failed":
        line += f"\n\nExit code {s['returncode']}; see the log ({s['log']})."
    return line, s["log_tail"], s.get("loss_png")


def run_rows(runs_dir: str | Path) -> list[list[Any]]:
    return [[r["name"], r["kind"], r["base_model"],
             round(r["final_loss"], 4) if isinstance(r["final_loss"], (int, float)) else None,
             r["steps"], r["finished"], "yes" if r["merged"] else ""] for r in list_runs(Path(runs_dir))]


def data_card_view(data_config: str) -> dict:
    """The data card of the output folder named by a data config (empty until data is built)."""
    try:
        out = load_train_config(DataBuildConfig, (data_config or "").strip() or DEFAULT_CONFIG["data"]).output_dir
        card = json.loads((out / "data_card.json").read_text(encoding="utf-8"))
    except (ValueError, OSError, json.JSONDecodeError) as e:
        return {"note": f"no data card yet ({e})"}
    card.pop("config", None)
    return card


# ---------------------------------------------------------------------------- layout


def build_tab(pipeline: Any, cfg: Any, admin: Any | None = None) -> JobManager:
    """Lay the Training tab out in the current Blocks/Tab context; returns its JobManager.

    Args:
        pipeline: the app's Pipeline (unused for now: jobs run in their own process with `cfg`).
        cfg: the app's resolved AppConfig; jobs get it as their --app-config.
        admin: the AdminContext; when given, every handler checks the session token first.
    """
    manager = JobManager(cfg)
    token = admin.token if admin is not None else gr.State(None)

    def guard(tok: str | None) -> None:
        if admin is not None:
            admin.require(tok)

    gr.Markdown("Fine-tune the answer model on the knowledge base: build data, then SFT, then KTO. "
                "Finished adapters land in the registry and can be picked in Chat / Evaluation.")
    with gr.Row():
        data_cfg = gr.Textbox(value=str(DEFAULT_CONFIG["data"]), label="Data config", scale=3)
        data_sets = gr.Textbox(label="Data overrides, one KEY=VALUE a line", lines=1, scale=3,
                               placeholder="mix.refusal_ratio=0.3")
        build_btn = gr.Button("Build training data", scale=1)
    with gr.Row():
        kind = gr.Radio(["sft", "kto"], value="sft", label="Method", scale=1)
        name = gr.Textbox(label="Run name (blank: <method>-<time>)", scale=2)
        train_cfg = gr.Textbox(value=str(DEFAULT_CONFIG["sft"]), label="Training config", scale=4)
    sets = gr.Textbox(label="Training overrides, one KEY=VALUE a line", lines=2,
                      placeholder="trainer.max_steps=50\nlora.r=16")
    with gr.Row():
        start_btn = gr.Button("Start training", variant="primary")
        cancel_btn = gr.Button("Cancel", variant="stop")
        refresh_btn = gr.Button("Refresh")
    message = gr.Markdown()
    status = gr.Markdown()
    with gr.Row():
        log = gr.Textbox(label="Log (tail)", lines=18, max_lines=18, autoscroll=True, scale=3)
        plot = gr.Image(label="Loss", type="filepath", scale=2)
    runs = gr.Dataframe(headers=RUN_HEADERS, value=run_rows(cfg.train.runs_dir), label="Finished adapters",
                        interactive=False)
    card = gr.JSON(value=data_card_view(str(DEFAULT_CONFIG["data"])), label="Data card")
    timer = gr.Timer(2.0, active=False)  # ticks only while a job runs

    def on_build(tok, path, overrides):
        guard(tok)
        return start_job(manager, "data", path, "", overrides), gr.Timer(active=True)

    def on_start(tok, method, run_name, path, overrides):
        guard(tok)
        return start_job(manager, method, path, run_name, overrides), gr.Timer(active=True)

    def on_cancel(tok):
        guard(tok)
        return cancel_job(manager)

    def on_refresh(tok, path):
        guard(tok)
        return (*status_view(manager), run_rows(cfg.train.runs_dir), data_card_view(path),
                gr.Timer(active=manager.running()))

    def on_tick(tok, path):
        if admin is not None and not admin.auth.check(tok):  # session gone: stop quietly, no error toasts
            return (gr.skip(),) * 5 + (gr.Timer(active=False),)
        return on_refresh(tok, path)

    kind.change(lambda m: str(DEFAULT_CONFIG[m]), kind, train_cfg)
    build_btn.click(on_build, [token, data_cfg, data_sets], [message, timer])
    start_btn.click(on_start, [token, kind, name, train_cfg, sets], [message, timer])
    cancel_btn.click(on_cancel, [token], message)
    outputs = [status, log, plot, runs, card, timer]
    refresh_btn.click(on_refresh, [token, data_cfg], outputs)
    timer.tick(on_tick, [token, data_cfg], outputs)
    return manager
