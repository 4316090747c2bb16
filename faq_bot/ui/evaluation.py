"""Admin Evaluation tab: run an eval set against the base model and adapters in the background, watch progress,
read the results and plots, download the report files, and list past runs (SQLite `eval_runs`)."""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr

from ..config import AppConfig
from ..eval.cli import add_eval_parser, execute
from .guard import AdminContext

logger = logging.getLogger(__name__)

__all__ = ["build_tab", "build_argv", "EvalJob", "SETS", "MODES"]

SETS = ["shipped sample set", "uploaded JSONL", "RGB file (path)", "CLINC150 (path)"]
MODES = ["e2e", "generator", "rgb", "faq", "retrieval"]
NOISE = ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
BASE = "base"
RUN_HEADERS = ["run", "created", "mode", "errors", "headline", "folder"]


def build_argv(cfg: AppConfig, set_kind: str, mode: str, path: str | None, upload: str | None,
               models: list[str] | None, limit: float | None, noise: list[str] | None, rerank: bool) -> list[str]:
    """The `eval` command line for the form's choices (the UI runs exactly what the CLI would).

    Raises:
        ValueError: a combination that cannot run (e.g. CLINC outside faq mode), with what to pick instead.
    """
    argv = [mode]
    data_dir = Path(cfg.eval.data_dir)
    if set_kind == SETS[0]:
        if mode == "rgb":
            raise ValueError("RGB mode needs an RGB file: pick 'RGB file (path)'.")
        argv += ["--data", str(cfg.eval.sample_set)]
    elif set_kind == SETS[1]:
        if not upload:
            raise ValueError("Upload a JSONL eval set first.")
        argv += ["--data", str(upload)]
    elif set_kind == SETS[2]:
        if mode not in ("rgb", "retrieval"):
            raise ValueError("An RGB file runs in mode 'rgb' or 'retrieval'.")
        argv += ["--data", (path or "").strip() or str(data_dir / "rgb" / "zh_refine.dev.jsonl")]
    elif set_kind == SETS[3]:
        if mode != "faq":
            raise ValueError("CLINC150 runs in mode 'faq'.")
        argv += ["--clinc", (path or "").strip() or str(data_dir / "clinc150" / "data_full.json")]
    else:
        raise ValueError(f"Unknown set {set_kind!r}.")
    if mode in ("e2e", "generator", "rgb"):
        models = models or [BASE]
        if BASE not in models:
            argv.append("--no-base")
        for m in models:
            if m != BASE:
                argv += ["--adapter", m]
    if mode == "rgb":
        for nr in noise or NOISE:
            argv += ["--noise-rate", str(nr)]
    if mode == "retrieval" and rerank:
        argv.append("--rerank")
    if limit:
        argv += ["--limit", str(int(limit))]
    return argv


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="eval", exit_on_error=False)
    sub = parser.add_subparsers(dest="cmd")
    add_eval_parser(sub)
    return parser.parse_args(["eval", *argv, "--no-progress"])


class EvalJob:
    """One evaluation at a time for the whole app (it competes with customers for the CPU/GPU)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.state: dict[str, Any] = {"status": "idle"}

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, pipeline, cfg: AppConfig, argv: list[str]) -> None:
        with self._lock:
            if self.running:
                raise ValueError("An evaluation is already running; wait for it to finish.")
            args = _parse(argv)
            self.state = {"status": "running", "argv": argv, "done": 0, "total": 0, "desc": "starting",
                          "started": time.time()}
            self.thread = threading.Thread(target=self._run, args=(pipeline, cfg, args), daemon=True,
                                           name="eval-run")
            self.thread.start()

    def _progress(self, done: int, total: int, desc: str) -> None:
        self.state.update(done=done, total=total, desc=desc)

    def _run(self, pipeline, cfg, args) -> None:
        try:
            report = execute(cfg, args, pipeline=pipeline, progress=self._progress, bar=False)
            self.state.update(status="done", report=report)
        except Exception as e:  # shown in the tab; the app keeps serving
            logger.exception("evaluation failed")
            self.state.update(status="failed", error=f"{type(e).__name__}: {e}")


_JOB = EvalJob()


def progress_markdown(state: dict[str, Any]) -> str:
    status = state.get("status")
    if status == "idle":
        return "No evaluation running."
    cmd = "`python -m faq_bot eval " + " ".join(state.get("argv", [])) + "`"
    elapsed = time.time() - state.get("started", time.time())
    if status == "running":
        total = state.get("total") or 0
        pct = f"{100 * state['done'] / total:.0f}%" if total else "…"
        return f"⏳ {cmd}\n\n{state.get('desc', '')}: {state.get('done', 0)}/{total} ({pct}), {elapsed:.0f} s"
    if status == "failed":
        return f"❌ {cmd}\n\n{state.get('error')}"
    rep = state.get("report", {})
    return f"✅ {cmd}\n\nrun `{rep.get('run_id')}` in {rep.get('wall_s')} s, {len(rep.get('errors') or [])} error(s)"


def result_views(report: dict[str, Any]) -> tuple[list[list], list[list], list[str], list[str]]:
    """(summary rows, per-model rows, plot images, files to download) of a finished report."""
    summary = [[k, _cell(v)] for k, v in (report.get("summary") or {}).items()]
    model_rows = []
    for name, m in (report.get("models") or {}).items():
        model_rows.append([name] + [_cell(m.get(k)) for k in ("n", "accuracy", "containment_accuracy",
                                                               "refusal_precision", "refusal_recall", "rouge_l",
                                                               "bleu", "embed_sim", "tokens_per_s")])
    for row in report.get("table") or []:  # retrieval: one row per mode
        model_rows.append([row["mode"], row["n"], *[_cell(row.get(k)) for k in ("hit@1", "hit@3", "hit@5", "hit@10")],
                           _cell(row.get("mrr@10")), _cell(row.get("latency_p50_ms")), "", ""])
    run_dir = Path(report["run_dir"])
    # copies in a temp folder: gradio serves files from there whatever eval.runs_dir is
    out = Path(tempfile.mkdtemp(prefix="faq_bot_eval_"))
    files, images = [], []
    for p in sorted(run_dir.iterdir()):
        if p.is_file():
            dst = out / p.name
            shutil.copy2(p, dst)
            (images if p.suffix == ".png" else files).append(str(dst))
    for err in (report.get("errors") or [])[:20]:
        summary.append(["error", str(err)])
    return summary, model_rows, images, files


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 4)
    if isinstance(v, (list, dict)):
        return str(v)
    return "" if v is None else v


MODEL_HEADERS = ["model / mode", "n", "accuracy | hit@1", "containment | hit@3", "refusal P | hit@5",
                 "refusal R | hit@10", "ROUGE-L | MRR", "BLEU | p50 ms", "embed sim", "tokens/s"]


def past_runs(store, limit: int = 50) -> list[list]:
    rows = []
    for r in store.eval_runs(limit=limit):
        s = r["summary"] or {}
        head = {k: v for k, v in s.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        rows.append([r["id"], time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"])), r["kind"],
                     s.get("errors", 0), ", ".join(f"{k}={v}" for k, v in list(head.items())[:6]), r["path"]])
    return rows


def build_tab(pipeline, cfg: AppConfig, admin: AdminContext | None = None) -> None:
    """Build the tab's components inside the current `gr.Tab`. Every handler checks the admin token first."""

    def require(tok):
        if admin is not None:
            admin.require(tok)

    token = admin.token if admin is not None else gr.State(None)
    gr.Markdown("### Evaluation\nScore the base model and adapters on the same questions. Runs are written to "
                f"`{cfg.eval.runs_dir}` and listed below. Same as `python -m faq_bot eval …`.")
    with gr.Row():
        set_kind = gr.Dropdown(SETS, value=SETS[0], label="Eval set", scale=2)
        mode = gr.Dropdown(MODES, value="e2e", label="Mode", scale=1)
        models = gr.Dropdown([BASE], value=[BASE], multiselect=True, label="Models (base and adapters)", scale=2)
        limit = gr.Number(value=20, precision=0, minimum=0, label="Limit (0 = all)", scale=1)
    with gr.Row():
        path = gr.Textbox(label="RGB / CLINC150 file path (empty = the shared data set)", scale=3)
        upload = gr.File(label="Eval JSONL", file_types=[".jsonl"], type="filepath", scale=2)
    with gr.Row():
        noise = gr.CheckboxGroup(NOISE, value=NOISE, label="RGB noise rates")
        rerank = gr.Checkbox(label="Retrieval: add hybrid+rerank", value=True)
    with gr.Row():
        run_btn = gr.Button("Run evaluation", variant="primary", elem_id="eval-run")
        models_btn = gr.Button("Refresh models", size="sm")
    status = gr.Markdown(progress_markdown(_JOB.state), elem_id="eval-status")
    summary_df = gr.Dataframe(headers=["metric", "value"], label="Summary", interactive=False)
    models_df = gr.Dataframe(headers=MODEL_HEADERS, label="Per model / mode", interactive=False)
    gallery = gr.Gallery(label="Plots", columns=2, height="auto")
    files = gr.File(label="Report files (report.html, report.json, questions.csv, badcases.jsonl)",
                    file_count="multiple", interactive=False)
    with gr.Row():
        runs_btn = gr.Button("Refresh past runs", size="sm")
    runs_df = gr.Dataframe(headers=RUN_HEADERS, label="Past runs", interactive=False)
    timer = gr.Timer(1.0, active=False)
    shown = gr.State(None)  # id of the run whose results are on screen

    def refresh_models(tok):
        require(tok)
        gen = pipeline.generator
        names = [BASE] + ([a if isinstance(a, str) else a.get("name") for a in gen.adapters()] if gen.ready else [])
        return gr.update(choices=names)

    def start(set_v, mode_v, path_v, upload_v, models_v, limit_v, noise_v, rerank_v, tok):
        require(tok)
        try:
            argv = build_argv(cfg, set_v, mode_v, path_v, upload_v, models_v, limit_v, noise_v, rerank_v)
            _JOB.start(pipeline, cfg, argv)
        except (ValueError, argparse.ArgumentError, SystemExit) as e:
            raise gr.Error(str(e)) from None
        return progress_markdown(_JOB.state), gr.Timer(active=True)

    def poll(seen, tok):
        require(tok)
        state = _JOB.state
        keep = gr.Timer(active=_JOB.running)
        if state.get("status") != "done" or state["report"].get("run_id") == seen:
            return progress_markdown(state), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), seen, keep
        report = state["report"]
        summary, model_rows, images, paths = result_views(report)
        return (progress_markdown(state), summary, model_rows, images, paths,
                past_runs(pipeline.kb.store), report.get("run_id"), keep)

    def list_runs(tok):
        require(tok)
        return past_runs(pipeline.kb.store)

    private = dict(api_visibility="private")
    run_btn.click(start, [set_kind, mode, path, upload, models, limit, noise, rerank, token], [status, timer],
                  **private)
    timer.tick(poll, [shown, token], [status, summary_df, models_df, gallery, files, runs_df, shown, timer],
               show_progress="hidden", **private)
    models_btn.click(refresh_models, [token], models, **private)
    runs_btn.click(list_runs, [token], runs_df, **private)
