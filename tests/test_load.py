"""Bounded mixed load through the real HTTP API (127.0.0.1, in-process uvicorn): 32 clients for a few seconds asking
FAQ and RAG questions and leaving feedback while an admin uploads documents. Zero errors, nothing acknowledged is
lost, and past the generator's bounded queue customers get "busy, please wait" instead of an error or a hang.
The same driver (bench/load.py) runs 60 s against the default model in `make bench`."""

from __future__ import annotations

import asyncio

import pytest
from conftest import make_config, serving, warm_pipeline

from bench.load import LoadPlan, mixed_load, verify_stored
from faq_bot.api import create_app
from faq_bot.auth import Auth
from faq_bot.knowledge import KnowledgeBase
from faq_bot.schema import Query

PASSWORD = "load-test-admin-password"
FAQ_CSV = """id,question,answer,similar_questions,category
faq-return,How do I return an item?,Open My Orders and choose Return.,How can I send something back,returns
faq-ship,How long does shipping take?,Orders ship within 48 hours.,When will my order arrive,shipping
faq-pay,Which payment methods do you accept?,We accept credit cards and PayPal.,Can I pay with PayPal,payment
"""
DOC_MD = """# Warranty policy

## Repairs

Every device comes with a two-year warranty. Repairs under warranty are free of charge, including shipping.
"""
FAQ_QUESTIONS = ["How do I return an item?", "How can I send something back", "How long does shipping take?",
                 "When will my order arrive", "Which payment methods do you accept?", "Can I pay with PayPal"]
RAG_QUESTIONS = ["Are repairs under warranty free?", "How long is the device warranty?"]


@pytest.fixture(scope="module")
def load_server(tmp_path_factory, faq_encoder, doc_encoder, tiny_lm_dir):
    d = tmp_path_factory.mktemp("load")
    (d / "faq.csv").write_text(FAQ_CSV, encoding="utf-8")
    (d / "warranty.md").write_text(DOC_MD, encoding="utf-8")
    # max_queue 0: a RAG question that arrives while another generates is answered "busy" at once
    cfg = make_config(d, **{"generate.model": tiny_lm_dir, "generate.device": "cpu", "generate.max_new_tokens": 8,
                            "generate.max_concurrent": 1, "generate.max_queue": 0, "app.admin_password": PASSWORD, "app.rate_limit_per_min": 10**9})
    kb = KnowledgeBase(cfg)
    assert all(r.status == "added" for r in kb.ingest_paths([d / "faq.csv", d / "warranty.md"]))
    pipe = warm_pipeline(cfg, kb)
    with serving(create_app(pipe, cfg, auth=Auth(cfg, environ={}), ui=False)) as base:
        yield base, pipe
    kb.close()


def test_mixed_load_has_no_errors_and_loses_nothing(load_server):
    base, pipe = load_server
    plan = LoadPlan(clients=32, duration_s=6.0, rag_share=0.3, feedback_share=0.15, ingest_every_s=1.5,
                    request_timeout_s=60.0)
    result = asyncio.run(asyncio.wait_for(
        mixed_load(base, faq_questions=FAQ_QUESTIONS, rag_questions=RAG_QUESTIONS, admin_password=PASSWORD,
                   plan=plan), timeout=120))
    s = result.summary()
    assert result.errors == [], result.errors[:5]
    assert s["ms"]["faq"]["n"] >= 32, s
    assert s["ms"]["rag"]["n"] + s["ms"]["refusal"]["n"] >= 1, s  # the generator answered some
    assert s["ms"]["busy"]["n"] >= 1, s  # and the bounded queue turned the rest away, with the busy text
    assert result.busy_texts == {pipe.busy_text("en")}
    assert s["feedback_acked"] >= 10 and s["ingested"] >= 2, s
    assert verify_stored(base, PASSWORD, result) == {"feedback_lost": [], "documents_lost": []}
    # the uploads made during the load are searchable by the same server afterwards
    hits, _ = pipe.retriever.retrieve(Query(text="When does branch 1 of the load test open?"))
    assert any(h.chunk.source.startswith("load-test-") for h in hits)

