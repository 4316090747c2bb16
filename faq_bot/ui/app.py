"""Gradio UI: the customer Chat tab and the admin tabs (Knowledge, Feedback, Debug, Evaluation, Training).

Handlers are short: they check the admin session where needed, call the library, and format with `render`.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import gradio as gr

from ..auth import ADMIN_HELP, Auth
from ..config import AppConfig, IngestConfig
from ..feedback import TraceLog, export_feedback
from ..ingest import file_size_error, upload_size_error
from ..knowledge import SUPPORTED_SUFFIXES, IngestResult
from . import chat as chat_mod
from . import evaluation, render, training
from .guard import AdminContext, client_of

logger = logging.getLogger(__name__)

__all__ = ["build_app", "CSS", "ingest_uploads"]

N_SUGGESTIONS = 3
_RATINGS = {"all": None, "thumbs up": 1, "thumbs down": -1}

CSS = """
.faq-note { color: var(--body-text-color-subdued); }
.faq-notice { color: var(--body-text-color-subdued); font-style: italic; }
.faq-status { font-size: 0.9em; }
.faq-status.ok { color: #15803d; } .faq-status.wait { color: #b45309; } .faq-status.bad { color: #b91c1c; }
.faq-sources { margin-top: 0.4em; font-size: 0.9em; }
.faq-sources summary { cursor: pointer; }
.faq-snippet { color: var(--body-text-color-subdued); }
#suggestions button { font-size: 0.85em; }
#suggest-label { font-size: 0.9em; color: var(--body-text-color-subdued); }
"""


def ingest_uploads(kb, paths: list, cfg: IngestConfig, each=lambda xs: xs) -> list[IngestResult]:
    """The Knowledge tab's upload: refused as a whole when the files together pass `ingest.max_upload_mb` (one
    result per file, nothing added); a file over `ingest.max_file_mb` is refused by name without being read."""
    files = [(Path(p), Path(p).stat().st_size) for p in paths]
    refusal = upload_size_error([(p.name, size) for p, size in files], cfg)
    if refusal:
        return [IngestResult(p.name, "error", error=refusal) for p, _ in files[:1]]
    results = []
    for p, size in each(files):
        error = file_size_error(p.name, size, cfg)
        results.append(IngestResult(p.name, "error", error=error) if error else kb.ingest_bytes(p.read_bytes(), p.name))
    return results


def build_app(pipeline, cfg: AppConfig | None = None, auth: Auth | None = None, *,
              traces: TraceLog | None = None) -> gr.Blocks:
    """The whole UI for one pipeline. Nothing is loaded here; the pipeline was built (and warmed) by the caller."""
    cfg = cfg or pipeline.cfg
    auth = auth or Auth(cfg)
    traces = traces if traces is not None else TraceLog()
    kb, store = pipeline.kb, pipeline.kb.store

    # delete_cache: uploaded knowledge files and exports leave Gradio's cache after an hour
    with gr.Blocks(title="FAQ Bot", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        token = gr.State(None)
        session = gr.State(chat_mod.new_session())
        pending_fix = gr.State(None)  # id of the last 👎; not in `session`, which a streaming reply rewrites
        admin = AdminContext(auth, token)

        with gr.Tabs():
            # ------------------------------------------------------------------ Chat (customers)
            with gr.Tab("Chat", id="chat"):
                status = gr.Markdown(elem_id="status-line")
                chatbot = gr.Chatbot(label="FAQ Bot", elem_id="chatbot", height=460, group_consecutive_messages=False,
                                     sanitize_html=True, allow_tags=False, latex_delimiters=[], buttons=["copy"],
                                     placeholder="Ask about orders, returns, shipping, payment…")
                suggest_label = gr.Markdown("Did you mean:", visible=False, elem_id="suggest-label")
                with gr.Row(elem_id="suggestions"):
                    suggest = [gr.Button(visible=False, size="sm", variant="secondary",
                                         elem_classes=["suggestion"]) for _ in range(N_SUGGESTIONS)]
                with gr.Row():
                    question = gr.Textbox(show_label=False, placeholder="Type your question and press Enter",
                                          max_length=cfg.app.max_question_chars, scale=8, elem_id="question")
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                adapter = gr.Dropdown([chat_mod.DEFAULT_MODEL], value=chat_mod.DEFAULT_MODEL, visible=False,
                                      label="Model (admins only)", elem_id="adapter")
                feedback_note = gr.Markdown(elem_id="feedback-note")
                with gr.Row(visible=False) as fix_row:
                    fix_text = gr.Textbox(show_label=False, placeholder="The right answer would be…", scale=8)
                    fix_send = gr.Button("Send correction", scale=1)

            # ------------------------------------------------------------------ Admin
            with gr.Tab("Admin", id="admin"):
                if not auth.enabled:
                    gr.Markdown(f"### Admin is off\n{ADMIN_HELP}", elem_id="admin-off")
                with gr.Column(visible=auth.enabled) as login_col:
                    password = gr.Textbox(label="Admin password", type="password", elem_id="admin-password")
                    login_btn = gr.Button("Log in", variant="primary", elem_id="admin-login")
                login_note = gr.Markdown()
                with gr.Column(visible=False) as admin_col:
                    logout_btn = gr.Button("Log out", size="sm")
                    with gr.Tabs():
                        with gr.Tab("Knowledge", id="knowledge"):
                            stats = gr.Markdown()
                            with gr.Row():
                                files = gr.File(label="Upload FAQ tables (csv/xlsx/json/jsonl) or documents "
                                                      "(md/html/txt/pdf/docx)", file_count="multiple",
                                                file_types=sorted(SUPPORTED_SUFFIXES), elem_id="upload")
                                with gr.Column():
                                    ingest_btn = gr.Button("Add to knowledge base", variant="primary",
                                                           elem_id="ingest")
                                    ingest_out = gr.Markdown(elem_id="ingest-result")
                            with gr.Row():
                                doc_pick = gr.Dropdown(label="Document", choices=[], scale=4)
                                delete_btn = gr.Button("Delete document", variant="stop", scale=1)
                                reindex_btn = gr.Button("Rebuild indexes", scale=1)
                            kb_note = gr.Markdown()
                            docs_df = _table("Documents", render.DOC_HEADERS, render.DOC_TYPES, elem_id="documents")
                            faqs_df = _table("FAQs", render.FAQ_HEADERS, render.FAQ_TYPES, max_height=360,
                                             column_widths=["11%", "23%", "30%", "8%", "9%", "7%", "12%"],
                                             elem_id="faqs")
                            gr.Markdown("#### Test a question")
                            with gr.Row():
                                test_q = gr.Textbox(show_label=False, placeholder="A customer question", scale=6)
                                test_btn = gr.Button("Test", scale=1)
                            test_answer = gr.Markdown(elem_id="test-answer")
                            test_faq = _table("FAQ candidates", render.FAQ_CAND_HEADERS, render.FAQ_CAND_TYPES,
                                              elem_id="test-faq")
                            test_ret = _table("Retrieved passages", render.RETRIEVE_HEADERS, render.RETRIEVE_TYPES,
                                              column_widths=["16%", "13%", "13%", "8%", "8%", "8%", "34%"],
                                              elem_id="test-retrieved")
                            test_rer = _table("After rerank", render.RERANK_HEADERS, render.RERANK_TYPES,
                                              column_widths=["18%", "15%", "15%", "9%", "43%"], elem_id="test-reranked")
                        with gr.Tab("Feedback", id="feedback"):
                            with gr.Row():
                                rating = gr.Radio(list(_RATINGS), value="all", label="Rating", scale=3)
                                fb_refresh = gr.Button("Refresh", scale=1)
                            fb_df = _table("Feedback", render.FEEDBACK_HEADERS, render.FEEDBACK_TYPES,
                                           column_widths=["5%", "11%", "7%", "18%", "20%", "17%", "6%", "6%", "10%"],
                                           elem_id="feedback-table")
                            with gr.Row():
                                only_neg = gr.Checkbox(label="Only thumbs down", value=True)
                                export_btn = gr.Button("Export JSONL")
                                export_file = gr.File(label="Download", interactive=False)
                        with gr.Tab("Debug", id="debug"):
                            with gr.Row():
                                trace_id = gr.Textbox(label="Trace id", scale=4)
                                trace_btn = gr.Button("Show trace", scale=1)
                                last_btn = gr.Button("Last answer", scale=1)
                            trace_out = gr.JSON(label="Answer and trace", elem_id="trace-json")
                        with gr.Tab("Evaluation", id="evaluation"):
                            evaluation.build_tab(pipeline, cfg, admin)
                        with gr.Tab("Training", id="training"):
                            training.build_tab(pipeline, cfg, admin)

        # ---------------------------------------------------------------------- chat handlers
        def respond(text, sess, choice, tok, request: gr.Request):
            replies = chat_mod.reply(pipeline, auth, traces, text, sess, client=client_of(request),
                                     adapter=chat_mod.adapter_arg(choice, auth.check(tok)))
            for i, (sess, answer) in enumerate(replies):
                yield _chat_outputs(sess, answer, first=i == 0)

        def on_like(sess, data: gr.LikeData):
            fid, note, show_fix = chat_mod.like(store, sess, data.index, data.liked)
            return fid, note, gr.update(visible=show_fix)

        def on_correct(fid, text):
            return None, chat_mod.correct(store, fid, text), gr.update(visible=False), ""

        chat_out = [question, chatbot, session, suggest_label, *suggest, fix_row, feedback_note]
        question.submit(respond, [question, session, adapter, token], chat_out, api_name="chat",
                        concurrency_limit=None)
        send.click(respond, [question, session, adapter, token], chat_out, api_visibility="undocumented",
                   concurrency_limit=None)
        for b in suggest:
            b.click(respond, [b, session, adapter, token], chat_out, api_visibility="undocumented",
                    concurrency_limit=None)
        chatbot.like(on_like, [session], [pending_fix, feedback_note, fix_row], api_name="like")
        fix_send.click(on_correct, [pending_fix, fix_text], [pending_fix, feedback_note, fix_row, fix_text],
                       api_name="correct")
        status_io = dict(fn=lambda: render.status_markdown(pipeline.status()), outputs=status,
                         api_visibility="private", show_progress="hidden")
        demo.load(**status_io)
        gr.Timer(5).tick(**status_io)

        # ---------------------------------------------------------------------- admin handlers
        def login(pw, request: gr.Request):
            res = auth.login(pw, client_of(request))
            if not res.ok:
                raise gr.Error(res.message)
            return (res.token, "", "", gr.update(visible=False), gr.update(visible=True),
                    gr.update(visible=True, choices=chat_mod.adapter_choices(pipeline)))

        def logout(tok):
            auth.logout(tok)
            return None, "Logged out.", gr.update(visible=True), gr.update(visible=False), gr.update(visible=False)

        def kb_views(tok):
            admin.require(tok)
            docs = store.list_documents()
            stats = render.stats_markdown(kb.stats())
            try:  # a line of information: never the reason the Knowledge tab fails to load
                matcher = render.matcher_markdown(pipeline.faq.info())
            except Exception as e:  # noqa: BLE001
                logger.warning("FAQ matcher info unavailable: %s", e)
                matcher = ""
            return (stats + ("  \n" + matcher if matcher else ""), render.document_rows(docs),
                    render.faq_rows(store.faqs()),
                    gr.update(choices=render.document_choices(docs), value=None),
                    render.status_markdown(pipeline.status()))

        def ingest(paths, tok, progress=gr.Progress()):
            admin.require(tok)
            results = ingest_uploads(kb, paths or [], cfg.ingest,
                                     each=lambda xs: progress.tqdm(xs, desc="Adding files"))
            return render.ingest_markdown(results), None

        def delete(doc_id, tok):
            admin.require(tok)
            return f"Deleted `{render.esc(doc_id)}`." if doc_id and kb.delete_document(doc_id) else "Pick a document."

        def reindex(tok):
            admin.require(tok)
            kb.reindex()
            return "Indexes rebuilt from the store."

        def test_question(text, tok):
            admin.require(tok)
            answer = pipeline.answer(chat_mod.query_or_error(text, cfg.app))
            traces.add(answer)
            return render.answer_markdown(answer), *render.trace_tables(answer)

        def fb_view(choice, tok):
            admin.require(tok)
            return render.feedback_rows(store.feedback(rating=_RATINGS.get(choice), limit=500))

        def export(neg, tok):
            admin.require(tok)
            path = Path(tempfile.mkdtemp(prefix="faq_bot_export_")) / "feedback.jsonl"
            export_feedback(store, path, only_negative=neg)
            return str(path)

        def show_trace(tid, tok):
            admin.require(tok)
            answer = traces.get((tid or "").strip())
            return render.trace_json(answer) if answer else {"error": f"No answer with trace id {tid!r} in memory."}

        def last_trace(sess, tok):
            admin.require(tok)
            return render.trace_json(traces.get(sess["last_trace"]) or traces.last())

        private = dict(api_visibility="private")
        kb_out = [stats, docs_df, faqs_df, doc_pick, status]
        login_out = [token, login_note, password, login_col, admin_col, adapter]
        for trigger in (login_btn.click, password.submit):
            (trigger(login, [password], login_out, **private)
             .success(kb_views, [token], kb_out, **private).success(fb_view, [rating, token], fb_df, **private))
        logout_btn.click(logout, [token], [token, login_note, login_col, admin_col, adapter], **private)
        ingest_btn.click(ingest, [files, token], [ingest_out, files], **private).success(
            kb_views, [token], kb_out, **private)
        delete_btn.click(delete, [doc_pick, token], kb_note, **private).success(kb_views, [token], kb_out, **private)
        reindex_btn.click(reindex, [token], kb_note, **private).success(kb_views, [token], kb_out, **private)
        test_q.submit(test_question, [test_q, token], [test_answer, test_faq, test_ret, test_rer], **private)
        test_btn.click(test_question, [test_q, token], [test_answer, test_faq, test_ret, test_rer], **private)
        rating.change(fb_view, [rating, token], fb_df, **private)
        fb_refresh.click(fb_view, [rating, token], fb_df, **private)
        export_btn.click(export, [only_neg, token], export_file, **private)
        trace_btn.click(show_trace, [trace_id, token], trace_out, **private)
        last_btn.click(last_trace, [session, token], trace_out, **private)
    return demo


def _table(label: str, headers: list[str], types: list[str], **kw) -> gr.Dataframe:
    return gr.Dataframe(headers=headers, datatype=types, label=label, wrap=True, interactive=False, **kw)


def _chat_outputs(sess: dict, answer, *, first: bool) -> tuple:
    """Outputs of one chat step. The question box and the feedback notes are reset on the first step only:
    the customer may type, or rate an earlier answer, while this one streams."""
    box, fix_row, note = ("", gr.update(visible=False), "") if first else (gr.update(),) * 3
    return (box, sess["messages"], sess, *_suggestion_updates(render.suggestion_labels(answer)), fix_row, note)


def _suggestion_updates(labels: list[str]) -> list:
    """The "Did you mean:" label, then one button per suggested FAQ question (hidden when unused)."""
    return [gr.update(visible=bool(labels))] + [
        gr.update(value=labels[i], visible=True) if i < len(labels) else gr.update(visible=False)
        for i in range(N_SUGGESTIONS)]
