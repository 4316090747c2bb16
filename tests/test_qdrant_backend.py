"""`retrieve.backend: qdrant`: the knowledge base keeps an embedded Qdrant collection in step with SQLite
(real qdrant-client local mode, real FAISS, real bm25s, the real e5-small document encoder)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from faq_bot.knowledge import KnowledgeBase
from faq_bot.retrieve import Retriever
from faq_bot.schema import Query

from conftest import make_config

# Embedded Qdrant commits each point to SQLite (~20 ms): a few short documents, one chunk per section.
DOCS = {
    "积分规则.md": "# 积分规则\n## 兑换\n积分可以兑换优惠券，100积分抵1元。\n## 过期\n积分每年12月31日清零。\n",
    "配送说明.md": "# 配送说明\n## 运费\n订单满99元包邮，不满99元收取运费8元。\n## 时效\n一般3到5个工作日送达，偏远地区7天。\n",
    "returns.md": "# Returns\n## Window\nItems can be returned within 30 days of delivery.\n"
                  "## Refunds\nRefunds reach the original payment method within 5 business days.\n",
}
# question -> (source, a string its best chunk holds)
QUESTIONS = {
    "满多少钱包邮": ("配送说明.md", "包邮"),
    "积分什么时候清零": ("积分规则.md", "清零"),
    "how long do refunds take": ("returns.md", "Refunds"),
}
QDRANT = {"retrieve.backend": "qdrant"}


def _kb(tmp_path, **overrides) -> KnowledgeBase:
    return KnowledgeBase(make_config(tmp_path, **overrides))


def _ingest(kb: KnowledgeBase) -> dict[str, str]:
    ids = {}
    for name, text in DOCS.items():
        r = kb.ingest_bytes(text.encode("utf-8"), name)
        assert r.status == "added", r.line()
        ids[name] = r.doc_id
    return ids


def _consistent(kb: KnowledgeBase) -> bool:
    return all(v["dense"] and v["sparse"] for v in kb.check_consistency().values())


def _dense_ranking(kb: KnowledgeBase, question: str) -> list[tuple[str, float]]:
    hits, _ = Retriever(kb.cfg.retrieve, kb).retrieve(Query(text=question), top_k=10, mode="dense")
    return [(h.chunk.id, h.score) for h in hits]


def _top(kb: KnowledgeBase, question: str, mode: str = "hybrid"):
    hits, _ = Retriever(kb.cfg.retrieve, kb).retrieve(Query(text=question), mode=mode)
    return hits[0].chunk


def test_qdrant_backend_missing_client_error_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "qdrant_client", None)  # as if not installed
    with pytest.raises(ValueError, match=r"retrieve.*qdrant-client is not installed.*pip install qdrant-client"):
        make_config(tmp_path, **QDRANT)
    make_config(tmp_path)  # the FAISS default does not need it


def test_qdrant_backend_ingest_retrieve_delete_reopen(tmp_path, faq_encoder, doc_encoder, caplog):
    kb = _kb(tmp_path, **QDRANT)
    doc_ids = _ingest(kb)
    iset = kb.chunk_index()
    n_chunks = kb.store.count("chunks")
    assert iset.dense.kind == "qdrant" and len(iset.dense) == n_chunks >= 6
    assert _consistent(kb)
    assert not (tmp_path / "index" / "chunk.faiss").exists()  # chunks live in Qdrant only
    assert (tmp_path / "index" / "faq.faiss").exists()  # FAQ questions stay in FAISS
    meta = json.loads((tmp_path / "index" / "chunk.json").read_text())
    assert meta["backend"] == "qdrant" and meta["generation"] == kb.store.generation() and meta["count"] == n_chunks
    for question, (source, needle) in QUESTIONS.items():
        for mode in ("dense", "hybrid"):
            top = _top(kb, question, mode)
            assert top.source == source and needle in top.text, (question, mode, top)

    # delete: the document's vectors leave the collection, its chunks no longer come back
    gone = doc_ids["配送说明.md"]
    gone_vids = {int(c.meta["vid"]) for c in kb.store.chunks(doc_id=gone)}
    with caplog.at_level("INFO", logger="faq_bot.knowledge"):
        assert kb.delete_document(gone)
    # kept in step by id difference, not by resending the collection
    assert f"Qdrant chunk collection synced: 0 sent, {len(gone_vids)} removed" in caplog.text
    assert len(kb.chunk_index().dense) == kb.store.count("chunks") == n_chunks - len(gone_vids)
    assert not gone_vids & set(kb.chunk_index().dense.ids().tolist())
    hits, _ = Retriever(kb.cfg.retrieve, kb).retrieve(Query(text="满多少钱包邮"), mode="dense")
    assert hits and all(h.chunk.doc_id != gone for h in hits)
    assert _consistent(kb)
    before = _dense_ranking(kb, "积分什么时候清零")
    kb.close()  # last user of the folder: the embedded client is closed, the next open reads the disk

    kb2 = _kb(tmp_path, **QDRANT)
    kb2._sync_qdrant = None  # a current collection is opened as is: no sync at all (calling this would fail)
    assert len(kb2.chunk_index().dense) == n_chunks - len(gone_vids) and _consistent(kb2)
    after = _dense_ranking(kb2, "积分什么时候清零")
    assert [c for c, _ in after] == [c for c, _ in before]
    np.testing.assert_allclose([s for _, s in after], [s for _, s in before], atol=1e-5)
    top = _top(kb2, "how long do refunds take")
    assert top.source == "returns.md" and "Refunds" in top.text
    kb2.close()


def test_qdrant_backend_catches_up_after_a_crash_and_reindexes(tmp_path, faq_encoder, doc_encoder):
    kb = _kb(tmp_path, **QDRANT)
    doc_ids = _ingest(kb)
    # a crash between the SQLite commit and the index sync: the store moved on, the collection did not
    gone = doc_ids["returns.md"]
    assert kb.store.delete_document(gone)
    kb.close()
    kb2 = _kb(tmp_path, **QDRANT)
    assert len(kb2.chunk_index().dense) == kb2.store.count("chunks") and _consistent(kb2)
    assert _top(kb2, "how long do refunds take").doc_id != gone
    # a lost tag (crash inside a full sync): everything is sent again
    kb2.close()
    (tmp_path / "index" / "chunk.json").unlink()
    kb3 = _kb(tmp_path, **QDRANT)
    assert _consistent(kb3)
    assert _top(kb3, "满多少钱包邮").source == "配送说明.md"
    # admin reindex: a full resend, same content
    ranking = _dense_ranking(kb3, "积分什么时候清零")
    kb3.reindex()
    assert _consistent(kb3) and [c for c, _ in _dense_ranking(kb3, "积分什么时候清零")] == [c for c, _ in ranking]
    kb3.close()


def test_qdrant_and_faiss_backends_agree_and_switching_backend_rebuilds(tmp_path, faq_encoder, doc_encoder):
    faiss_kb = _kb(tmp_path / "faiss")
    qdrant_kb = _kb(tmp_path / "qdrant", **QDRANT)
    _ingest(faiss_kb)
    _ingest(qdrant_kb)
    assert faiss_kb.chunk_index().dense.kind == "flat"
    for question in [*QUESTIONS, "积分怎么兑换优惠券", "can I return an item after a month"]:
        f, q = _dense_ranking(faiss_kb, question), _dense_ranking(qdrant_kb, question)
        assert f[0][0] == q[0][0], question  # same top hit
        assert [c for c, _ in f] == [c for c, _ in q], question
        np.testing.assert_allclose([s for _, s in f], [s for _, s in q], atol=1e-4)
        assert _top(faiss_kb, question).id == _top(qdrant_kb, question).id
    qdrant_kb.close()

    # one store, backend switched faiss -> qdrant -> faiss: each switch rebuilds, never reuses a stale index
    kb = _kb(tmp_path / "faiss", **QDRANT)
    assert kb.chunk_index().dense.kind == "qdrant" and _consistent(kb)
    gone = kb.store.list_documents()[0].id
    assert kb.delete_document(gone)  # chunk.faiss on disk is now one generation behind
    kb.close()
    back = _kb(tmp_path / "faiss")
    assert back.chunk_index().dense.kind == "flat" and _consistent(back)
    assert len(back.chunk_index().dense) == back.store.count("chunks")
