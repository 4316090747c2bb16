"""UI: rendering (escaping), the chat session functions behind the handlers, and build_app over gradio_client."""

from __future__ import annotations

import socket

import gradio as gr
import pytest
from conftest import warm_pipeline

from faq_bot.auth import ADMIN_HELP, Auth
from faq_bot.config import load_config
from faq_bot.feedback import TraceLog
from faq_bot.knowledge import KnowledgeBase
from faq_bot.schema import Answer, Citation, Faq, FaqMatch
from faq_bot.ui import CSS, build_app, chat, render
from faq_bot.ui.guard import AdminContext

PASSWORD = "ui-test-password"
FAQ_CSV = """id,question,answer,similar_questions,category
faq-return,How do I return an item?,Open My Orders and choose Return.,How can I send something back,returns
faq-ship,How long does shipping take?,Orders arrive in 2 to 4 days.,When will my order arrive,shipping
faq-gift,Do gift cards expire?,"Never. <script>window.__xss=1</script>",Gift card expiry,gift
"""
DOC_MD = "# Warranty\n\n## Repairs\n\nEvery device has a two-year warranty; water damage is not covered.\n"
XSS = "<script>window.__xss=1</script><img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def kb_cfg(tmp_path_factory, faq_encoder, doc_encoder, tiny_lm_dir):
    d = tmp_path_factory.mktemp("ui_kb")
    (d / "faq.csv").write_text(FAQ_CSV, encoding="utf-8")
    (d / "warranty.md").write_text(DOC_MD, encoding="utf-8")
    cfg = load_config(overrides={
        "store.path": str(d / "kb.db"), "store.index_dir": str(d / "index"), "generate.model": tiny_lm_dir,
        "generate.device": "cpu", "generate.max_new_tokens": 16, "app.admin_password": PASSWORD,
        "app.max_question_chars": 100}, environ={})
    kb = KnowledgeBase(cfg)
    assert all(r.status == "added" for r in kb.ingest_paths([d / "faq.csv", d / "warranty.md"]))
    return cfg, kb


@pytest.fixture(scope="module")
def pipeline(kb_cfg):
    return warm_pipeline(*kb_cfg)


@pytest.fixture()
def auth(kb_cfg):
    return Auth(kb_cfg[0], environ={})


def _final(replies):
    out = list(replies)
    assert out, "reply yielded nothing"
    return out[-1]


# ---------------------------------------------------------------------------------------------- render
def test_render_esc_neutralizes_html_and_markdown_links():
    s = render.esc(XSS + " [x](javascript:alert(1)) ![i](http://t/p.png)")
    assert "<" not in s and ">" not in s and "[" not in s and "]" not in s
    assert "&lt;script&gt;" in s


def test_render_answer_escapes_text_and_citations_in_details():
    cite = Citation(index=1, doc_id="d", chunk_id="c", source=f"evil{XSS}.md", heading_path=["Top", XSS],
                    snippet=f"passage {XSS}")
    ans = Answer(text=f"Answer {XSS}", kind="rag", citations=[cite])
    md = render.answer_markdown(ans)
    assert "<script" not in md and "<img" not in md
    assert md.count("&lt;script&gt;") == 4
    assert '<details class="faq-sources"><summary>Sources (1)</summary>' in md and "Top › " in md
    assert "<details" not in render.answer_markdown(ans, final=False)  # sources only once the answer is final


def test_render_faq_note_and_suggestions():
    faq = Faq(id="f<1>", question="Q?", answer="A")
    ans = Answer(text="A", kind="faq", faq=FaqMatch(faq=faq, score=0.9132, matched_question="q <b>"),
                 suggestions=[FaqMatch(faq=faq, score=0.7, matched_question="Q?")])
    md = render.answer_markdown(ans)
    assert "FAQ f&lt;1&gt; · score 0.91 · matched: q &lt;b&gt;" in md
    assert render.suggestion_labels(ans) == ["Q?"] and render.suggestion_labels(None) == []


def test_render_status_lines_say_faq_keeps_working():
    assert "ready" in render.status_markdown({"generator": "ready", "faqs": 3})
    loading = render.status_markdown({"generator": "loading"})
    failed = render.status_markdown({"generator": "failed", "generator_error": "OOM <b>"})
    assert "FAQ answers keep working" in loading and "FAQ answers keep working" in failed
    assert "OOM &lt;b&gt;" in failed


def test_render_tables_from_a_real_trace(pipeline):
    faq, ret, rer = render.trace_tables(pipeline.answer("Is water damage covered by the warranty?"))
    assert faq and ret and all(len(r) == len(render.RETRIEVE_HEADERS) for r in ret)
    assert all(len(r) == len(render.RERANK_HEADERS) for r in rer)
    docs = render.document_rows(pipeline.kb.store.list_documents())
    assert sorted(r[1] for r in docs) == ["faq.csv", "warranty.md"]
    faqs = render.faq_rows(pipeline.kb.store.faqs())
    assert any("&lt;script&gt;" in r[2] for r in faqs) and not any("<script" in str(r) for r in faqs)


# ---------------------------------------------------------------------------------------------- chat session
def test_render_matcher_line_says_what_the_faq_stage_learned(pipeline):
    line = render.matcher_markdown(pipeline.faq.info())  # the test knowledge base's real matcher
    assert line.startswith("FAQ matcher: ")
    info = {"n_faqs": 99, "kind": "logreg", "head_used": True, "lex_used": True, "lex_weight": 0.05,
            "untrained_top1": 0.5791, "top1_with_lex": 0.7037, "n_heldout": 297, "check_rounds": 3,
            "heldout_source": "similar questions", "n_answer_examples": 450}
    assert render.matcher_markdown(info) == (
        "FAQ matcher: trained head **logreg** + lexical head (weight 0.05) · held-out top-1 0.58 → 0.70 on 297 "
        "similar questions (3 rounds) · learned from 450 answer sentences and clauses")
    one_round = {**info, "n_heldout": 99, "check_rounds": 1}
    assert "on 99 similar questions · learned" in render.matcher_markdown(one_round)
    fell_back = {"n_faqs": 3, "head_used": False, "lex_used": False, "reason": "trained 0.5 < untrained 0.6"}
    assert render.matcher_markdown(fell_back) == ("FAQ matcher: untrained (nearest question + BM25): trained 0.5 &lt; "
                                                  "untrained 0.6")  # escaped like every staff-facing text
    assert render.matcher_markdown({"n_faqs": 0}) == ""


def test_chat_reply_streams_faq_answer_and_keeps_history(pipeline, auth):
    traces = TraceLog()
    sess, answer = _final(chat.reply(pipeline, auth, traces, "How do I return an item?", chat.new_session()))
    assert answer.kind == "faq" and traces.get(answer.trace.id) is answer
    assert [m["role"] for m in sess["messages"]] == ["user", "assistant"]
    assert sess["history"] == [("user", "How do I return an item?"), ("assistant", answer.text)]
    assert sess["answers"][1]["trace"]["id"] == answer.trace.id == sess["last_trace"]
    sess2, answer2 = _final(chat.reply(pipeline, auth, traces, f"and the gift cards {XSS}?", sess))
    assert len(sess2["messages"]) == 4 and "<script" not in sess2["messages"][2]["content"]
    rewrite = answer2.trace.step("rewrite")
    assert rewrite is not None and rewrite.detail.get("original", "").startswith("and the gift cards")


def test_chat_reply_notices_for_long_questions_and_rate_limit(pipeline, kb_cfg):
    auth = Auth(kb_cfg[0], environ={})
    sess, answer = _final(chat.reply(pipeline, auth, TraceLog(), "x" * 101, chat.new_session()))
    assert answer is None and "limit is 100" in sess["messages"][-1]["content"] and sess["history"] == []
    auth.limiter.per_min = 1
    _final(chat.reply(pipeline, auth, TraceLog(), "How do I return an item?", chat.new_session(), client="c1"))
    sess, answer = _final(chat.reply(pipeline, auth, TraceLog(), "How do I return an item?", chat.new_session(),
                                     client="c1"))
    assert answer is None and "too fast" in sess["messages"][-1]["content"]


def test_chat_session_history_is_capped(pipeline, auth):
    turns = 2 * pipeline.cfg.app.max_history_turns
    sess = {**chat.new_session(), "history": [("user" if i % 2 == 0 else "assistant", f"old {i}") for i in range(60)]}
    sess, answer = _final(chat.reply(pipeline, auth, TraceLog(), "How long does shipping take?", sess))
    assert answer is not None and len(sess["history"]) == turns
    assert sess["history"][-2:] == [("user", "How long does shipping take?"), ("assistant", answer.text)]
    assert sess["history"][0] == ("user", "old 42")  # the oldest turns dropped


def test_ingest_uploads_limits_per_file_and_per_upload(kb_cfg, tmp_path):
    from faq_bot.config import IngestConfig
    from faq_bot.ui.app import ingest_uploads

    kb = kb_cfg[1]
    limits = IngestConfig(max_file_mb=10 / 1024, max_upload_mb=20 / 1024)  # 10 KiB per file, 20 KiB per upload
    before = {d.source for d in kb.store.list_documents()}
    parts = []
    for i in range(3):
        parts.append(tmp_path / f"part-{i}.txt")
        parts[-1].write_text(f"Part{i} policy. " * 600, encoding="utf-8")  # 8.2 KiB each
    results = ingest_uploads(kb, [str(p) for p in parts], limits)
    assert [r.status for r in results] == ["error"]
    assert "part-2.txt" in results[0].error and "`ingest.max_upload_mb`" in results[0].error
    assert "nothing was added" in results[0].line()
    assert {d.source for d in kb.store.list_documents()} == before

    (tmp_path / "huge.txt").write_text("Huge policy. " * 1000, encoding="utf-8")  # 12.7 KiB
    results = ingest_uploads(kb, [str(tmp_path / "huge.txt"), str(parts[0])], limits)
    assert results[0].status == "error" and results[0].error.startswith("huge.txt: is 0.0124 MB, over the")
    assert results[1].status == "added"
    assert {d.source for d in kb.store.list_documents()} == before | {"part-0.txt"}
    assert kb.delete_document(results[1].doc_id)


def test_chat_like_and_correction_store_feedback(pipeline, auth):
    store = pipeline.kb.store
    sess, answer = _final(chat.reply(pipeline, auth, TraceLog(), "How long does shipping take?", chat.new_session()))
    fid, note, show_fix = chat.like(store, sess, 1, False)
    assert show_fix and fid
    assert chat.correct(store, fid, "Two days with express.").startswith("Thank you")
    row = next(r for r in store.feedback(rating=-1) if r["trace_id"] == answer.trace.id)
    assert row["id"] == fid and row["correction"] == "Two days with express." and row["kind"] == "faq"
    fid, note, show_fix = chat.like(store, sess, 1, True)
    assert fid is None and not show_fix and any(r["trace_id"] == answer.trace.id for r in store.feedback(rating=1))
    assert chat.like(store, sess, 0, False) == (None, "", False)  # the user's own message: nothing recorded
    assert chat.like(store, sess, 1, "") == (None, "", False)  # un-clicking
    assert chat.correct(store, None, "text") == "Nothing to send."


def test_chat_adapter_pick_only_for_admins():
    assert chat.adapter_arg("shop-v2", admin=False) is None
    assert chat.adapter_arg(chat.DEFAULT_MODEL, admin=True) is None
    assert chat.adapter_arg("shop-v2", admin=True) == "shop-v2"


def test_admin_context_rejects_missing_or_bad_token(auth):
    guard = AdminContext(auth, token=None)
    for token in (None, "", "forged"):
        with pytest.raises(gr.Error):
            guard.require(token)
    guard.require(auth.login(PASSWORD, "x").token)


# ---------------------------------------------------------------------------------------------- build_app
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_build_app_chat_over_gradio_client(pipeline, auth):
    from gradio_client import Client

    demo = build_app(pipeline, pipeline.cfg, auth)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=_free_port(), css=CSS,
                            quiet=True)
    try:
        client = Client(url, verbose=False)
        assert {"/chat", "/like", "/correct"} <= set(client.view_api(print_info=False, return_format="dict")
                                                    ["named_endpoints"])
        out = client.predict("How do I return an item?", chat.DEFAULT_MODEL, api_name="/chat")
        messages = out[1]
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[1]["content"][0]["text"].startswith("Open My Orders and choose Return.")
    finally:
        demo.close()


def test_build_app_admin_off_explains_how_to_turn_it_on(pipeline, kb_cfg):
    cfg = kb_cfg[0].model_copy(deep=True)
    cfg.app.admin_password = None
    demo = build_app(pipeline, cfg, Auth(cfg, environ={}))
    values = [c.get("props", {}).get("value") for c in demo.config["components"]]
    assert any(isinstance(v, str) and ADMIN_HELP in v for v in values)
