"""Degraded modes (issue #10): the generator missing or crashing, the reranker or BM25 missing, disk full during
ingest or delete. FAQ answers keep working, retrieval goes on with a warning in the trace, and a write that runs
out of space is a clear error with the store unchanged."""

from __future__ import annotations

import errno
import json
import sqlite3

import pytest
from starlette.testclient import TestClient

from faq_bot.auth import Auth
from faq_bot.generate import load_generator
from faq_bot.index import BM25Index, FaissIndex
from faq_bot.knowledge import KnowledgeBase
from faq_bot.pipeline import Pipeline
from faq_bot.schema import Query

from conftest import ModellessGenerator, make_config

FAQ_CSV = "id,question,answer,similar_questions\nf1,怎么退货,在订单页申请退货,如何退货||退货流程\nf2,运费多少,满99元包邮,邮费怎么算\n"
DOC_MD = "# 积分规则\n## 兑换\n积分可以兑换优惠券，100积分抵1元。\n## 过期\n积分每年12月31日清零。\n"
NEW_MD = "# 保修\n## 期限\n数码产品保修一年，期间非人为损坏免费维修。\n"
DOC_QUESTION = "积分可以兑换什么？"
ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def _snapshot(kb: KnowledgeBase) -> tuple:
    s = kb.store
    return (s.generation(), [(d.id, d.sha256, d.n_chunks) for d in s.list_documents()], s.chunk_vids(),
            [q for q, _, _ in s.faq_questions()])


def _consistent(kb: KnowledgeBase) -> bool:
    return all(v["dense"] and v["sparse"] for v in kb.check_consistency().values())


@pytest.fixture
def kb(tmp_path, faq_encoder, doc_encoder):
    kb = KnowledgeBase(make_config(tmp_path))
    assert kb.ingest_bytes(FAQ_CSV.encode(), "faq.csv").status == "added"
    assert kb.ingest_bytes(DOC_MD.encode(), "points.md").status == "added"
    return kb


# ---------------------------------------------------------------------------------------------- disk full
def _raise_enospc(*args, **kwargs):
    raise ENOSPC


def _sqlite_full(*args, **kwargs):
    raise sqlite3.OperationalError("database or disk is full")  # what SQLite raises on ENOSPC (SQLITE_FULL)


DISK_FULL_POINTS = {
    "sqlite": ("faq_bot.store._blob", _sqlite_full),  # inside the transaction, while the vectors are written
    "faiss": (FaissIndex, "save"),
    "bm25": (BM25Index, "save"),
    "meta": ("faq_bot.knowledge._atomic_write", _raise_enospc),
}


def _fill_disk(monkeypatch, point: str) -> None:
    target, what = DISK_FULL_POINTS[point]
    if isinstance(target, str):
        monkeypatch.setattr(target, what)
    else:
        monkeypatch.setattr(target, what, _raise_enospc)


NEW_DOC = ("warranty.md", NEW_MD.encode())
REPLACED_DOC = ("points.md", DOC_MD.replace("100积分", "200积分").encode())
NEW_FAQS = ("more.csv", "id,question,answer\nf3,发票怎么开,在订单页申请发票\n".encode())


@pytest.mark.parametrize("point,upload", [(p, NEW_DOC) for p in DISK_FULL_POINTS] + [
    ("sqlite", REPLACED_DOC), ("faiss", REPLACED_DOC), ("sqlite", NEW_FAQS), ("bm25", NEW_FAQS)],
    ids=[f"{p}-new-doc" for p in DISK_FULL_POINTS] + ["sqlite-replace", "faiss-replace", "sqlite-faqs", "bm25-faqs"])
def test_disk_full_during_ingest_is_a_clear_error_and_the_store_is_unchanged(kb, monkeypatch, point, upload):
    name, data = upload
    before = _snapshot(kb)
    with monkeypatch.context() as m:
        _fill_disk(m, point)
        r = kb.ingest_bytes(data, name)
    assert r.status == "error", r
    assert name in r.error and ("No space left" in r.error or "disk is full" in r.error), r.error
    assert "nothing changed" in r.error
    assert _snapshot(kb) == before
    assert _consistent(kb) and not [p.name for p in kb.index_dir.iterdir() if p.name.startswith(".")]
    reopened = KnowledgeBase(kb.cfg)  # what a restart sees
    assert _snapshot(reopened) == before and _consistent(reopened)
    assert kb.ingest_bytes(data, name).status in ("added", "replaced")  # space is back: the same file goes in
    assert _consistent(kb) and _consistent(KnowledgeBase(kb.cfg))


@pytest.mark.parametrize("point", ["faiss", "bm25", "meta"])
def test_disk_full_during_delete_keeps_the_document(kb, monkeypatch, point):
    doc = kb.store.find_document_by_source("points.md")
    before = _snapshot(kb)
    with monkeypatch.context() as m:
        _fill_disk(m, point)
        with pytest.raises(OSError, match="No space left"):
            kb.delete_document(doc.id)
    assert _snapshot(kb) == before and _consistent(kb) and _consistent(KnowledgeBase(kb.cfg))
    assert kb.delete_document(doc.id) and _consistent(KnowledgeBase(kb.cfg))


def test_disk_full_during_delete_over_the_api_is_a_clear_507(kb, monkeypatch):
    from faq_bot.api import create_app

    cfg = kb.cfg.model_copy(deep=True)
    cfg.app.admin_password = "disk-full-admin"
    doc = kb.store.find_document_by_source("points.md")
    before = _snapshot(kb)
    with TestClient(create_app(Pipeline(cfg, kb), cfg, auth=Auth(cfg, environ={}), ui=False)) as c:
        assert c.post("/api/admin/login", json={"password": "disk-full-admin"}).status_code == 200
        with monkeypatch.context() as m:
            _fill_disk(m, "faiss")
            r = c.delete(f"/api/admin/documents/{doc.id}")
        assert r.status_code == 507, r.text
        msg = r.json()["error"]["message"]
        assert doc.id in msg and "No space left" in msg and "nothing changed" in msg
        assert _snapshot(kb) == before and _consistent(kb)
        assert c.delete(f"/api/admin/documents/{doc.id}").status_code == 200


# ---------------------------------------------------------------------------------------------- BM25 / reranker
def test_bm25_file_missing_or_corrupt_is_rebuilt_at_start(kb):
    bm25 = kb.index_dir / "chunk.bm25"
    bm25.unlink()
    kb2 = KnowledgeBase(kb.cfg)
    assert _consistent(kb2) and len(kb2.chunk_index().sparse) == kb.store.count("chunks")
    bm25.write_bytes(b"\x00not json")
    kb3 = KnowledgeBase(kb.cfg)
    assert _consistent(kb3) and kb3.chunk_index().sparse.search("积分 兑换", 3)


class _BrokenBM25:
    def __len__(self):
        return 1

    def ids(self):
        return []

    def search(self, text, k):
        raise RuntimeError("bm25 index is corrupt")


@pytest.fixture(scope="module")
def degraded_kb(tmp_path_factory, faq_encoder, doc_encoder):
    cfg = make_config(tmp_path_factory.mktemp("degraded"), **{"generate.model": "/nonexistent/generator",
                                                              "rerank.model": "/nonexistent/reranker"})
    kb = KnowledgeBase(cfg)
    assert kb.ingest_bytes(FAQ_CSV.encode(), "faq.csv").status == "added"
    assert kb.ingest_bytes(DOC_MD.encode(), "points.md").status == "added"
    return cfg, kb


@pytest.fixture(scope="module")
def degraded(degraded_kb):
    """Generator and reranker both fail to load (bad paths): the app must still serve."""
    cfg, kb = degraded_kb
    pipe = Pipeline(cfg, kb)
    pipe.warm_up(background=False)
    assert not pipe.generator.ready and "/nonexistent/generator" in pipe.generator.error
    assert pipe.reranker.error and "/nonexistent/reranker" in pipe.reranker.error
    return pipe


def test_bm25_unavailable_retrieval_goes_on_dense_with_a_warning(degraded, monkeypatch):
    iset = degraded.kb.chunk_index()
    monkeypatch.setattr(iset, "sparse", _BrokenBM25())
    hits, detail = degraded.retriever.retrieve(Query(text=DOC_QUESTION))
    assert hits and "兑换" in hits[0].chunk.text and "dense" in hits[0].scores
    assert "bm25 index is corrupt" in detail["sparse_skipped"]
    monkeypatch.setattr(iset, "sparse", None)
    ans = degraded.answer(DOC_QUESTION)
    step = ans.trace.step("retrieve")
    assert step.detail["sparse_skipped"] == "BM25 index unavailable" and step.detail["hits"]


def test_reranker_missing_retrieval_goes_on_with_a_warning(degraded):
    ans = degraded.answer(DOC_QUESTION)
    rerank = ans.trace.step("rerank")
    assert "/nonexistent/reranker" in rerank.detail["skipped"]
    assert rerank.detail["hits"] and rerank.detail["hits"][0]["text"]  # hits went on in fused order
    assert degraded.status()["reranker_error"]


# ---------------------------------------------------------------------------------------------- generator
def test_generator_missing_faq_still_answers_and_chat_says_limited(degraded):
    ans = degraded.answer("怎么退货")
    assert ans.kind == "faq" and ans.text == "在订单页申请退货"
    ans = degraded.answer(DOC_QUESTION)
    assert ans.kind == "error" and ans.text == degraded.limited_text("zh")
    assert "/nonexistent/generator" in ans.trace.step("generate").detail["skipped"]
    assert degraded.status()["generator"] == "failed"


def test_generator_missing_over_the_api(degraded, degraded_kb):
    from faq_bot.api import create_app

    cfg = degraded_kb[0]
    with TestClient(create_app(degraded, cfg, auth=Auth(cfg, environ={}), ui=False)) as c:
        health = c.get("/health").json()
        assert health["status"] == "degraded" and "/nonexistent/generator" in health["generator_error"]
        faq = c.post("/api/ask", json={"question": "怎么退货"}).json()
        assert faq["kind"] == "faq" and faq["text"] == "在订单页申请退货"
        doc = c.post("/api/ask", json={"question": DOC_QUESTION}).json()
        assert doc["kind"] == "error" and doc["text"] == degraded.limited_text("zh")


class _CrashingGenerator(ModellessGenerator):
    """Loads fine, then fails in the middle of every generation (a CUDA error, a dead endpoint, ...)."""

    def _chat(self, messages, *, max_new_tokens, adapter, prefix="", usage=None):
        raise RuntimeError("device-side assert triggered")

    def _chat_stream(self, messages, *, max_new_tokens, adapter, prefix="", usage=None):
        yield '{"answer_in_context": true, "answer": "积'
        raise RuntimeError("device-side assert triggered")


def test_generator_crash_mid_answer_gives_the_limited_text_not_an_error(degraded_kb):
    cfg, kb = degraded_kb
    cfg = cfg.model_copy(deep=True)
    cfg.rerank.backend = "none"
    pipe = Pipeline(cfg, kb, generator=_CrashingGenerator(cfg.generate))
    pipe.warm_up(background=False)
    assert pipe.generator.ready
    answers = list(pipe.stream(DOC_QUESTION))
    final = answers[-1]
    assert final.kind == "error" and final.text == pipe.limited_text("zh") and not final.citations
    assert "device-side assert" in final.trace.step("generate").detail["error"]
    assert pipe.answer("怎么退货").kind == "faq"
    json.dumps(final.trace.model_dump(mode="json"))  # the trace stays serializable for /api/admin/trace
