"""Knowledge base lifecycle: ingest, no-op re-ingest, replace, delete, bad input, crash safety, stale-index repair."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from faq_bot.knowledge import KnowledgeBase
from faq_bot.schema import Query

from conftest import ROOT, make_config

FAQ_CSV = "id,question,answer,similar_questions\nf1,怎么退货,在订单页申请退货,如何退货||退货流程\nf2,运费多少,满99元包邮,邮费怎么算\n"
DOC_MD = "# 积分规则\n## 兑换\n积分可以兑换优惠券，100积分抵1元。\n## 过期\n积分每年12月31日清零。\n"


@pytest.fixture
def kb(tmp_path, faq_encoder, doc_encoder):
    return KnowledgeBase(make_config(tmp_path))


def _consistent(kb):
    c = kb.check_consistency()
    return all(v["dense"] and v["sparse"] for v in c.values())


def test_kb_ingest_noop_replace_delete(kb):
    r = kb.ingest_bytes(FAQ_CSV.encode(), "faq.csv")
    assert r.status == "added" and r.n_items == 2
    assert kb.ingest_bytes(DOC_MD.encode(), "points.md").status == "added"
    gen = kb.store.generation()
    assert kb.ingest_bytes(FAQ_CSV.encode(), "faq.csv").status == "unchanged"
    assert kb.store.generation() == gen  # no re-embedding, no index rebuild
    assert _consistent(kb)
    changed = DOC_MD.replace("100积分抵1元", "200积分抵1元")
    r = kb.ingest_bytes(changed.encode(), "points.md")
    assert r.status == "replaced"
    texts = " ".join(c.text for c in kb.store.chunks())
    assert "200积分抵1元" in texts and "100积分抵1元" not in texts
    assert _consistent(kb)
    assert kb.delete_document(r.doc_id)
    assert kb.store.count("chunks") == 0 and len(kb.chunk_index().dense) == 0 and len(kb.chunk_index().sparse) == 0
    assert _consistent(kb)


@pytest.mark.parametrize("name,data,message", [
    ("empty.csv", b"", "empty.csv"),
    ("noanswer.csv", "question,reply\n怎么退货,在订单页\n".encode(), "answer"),
    ("fake.pdf", b"just text, not a pdf", "fake.pdf"),
    ("dup.csv", "id,question,answer\nf9,a,b\nf9,c,d\n".encode(), "f9"),
])
def test_kb_bad_input_names_the_file_and_keeps_the_store(kb, name, data, message):
    kb.ingest_bytes(FAQ_CSV.encode(), "faq.csv")
    before = (kb.store.generation(), kb.store.count("faqs"))
    r = kb.ingest_bytes(data, name)
    assert r.status == "error" and message in r.error and name.split(".")[0] in r.error
    assert (kb.store.generation(), kb.store.count("faqs")) == before


def test_kb_duplicate_faq_id_across_files_is_refused(kb):
    kb.ingest_bytes(FAQ_CSV.encode(), "faq.csv")
    r = kb.ingest_bytes("id,question,answer\nf1,另一个问题,另一个答案\n".encode(), "other.csv")
    assert r.status == "error" and "f1" in r.error and "faq.csv" in r.error
    assert kb.store.count("faqs") == 2


def test_kb_gbk_csv_is_read(kb):
    r = kb.ingest_bytes(FAQ_CSV.encode("gbk"), "gbk.csv")
    assert r.status == "added" and kb.store.faqs(["f1"])[0].answer == "在订单页申请退货"


def test_kb_stale_index_is_rebuilt_from_sqlite_at_start(tmp_path, kb):
    kb.ingest_bytes(FAQ_CSV.encode(), "faq.csv")
    kb.ingest_bytes(DOC_MD.encode(), "points.md")
    # simulate a crash after the SQLite commit but before the index save: indexes are one generation behind
    for p in (tmp_path / "index").iterdir():
        if p.name.startswith("chunk"):
            p.unlink()
    kb2 = KnowledgeBase(kb.cfg)
    assert len(kb2.chunk_index().dense) == kb.store.count("chunks") > 0
    assert _consistent(kb2)


def test_kb_crash_mid_write_leaves_previous_index_readable(tmp_path, kb):
    """SIGKILL a writer while it ingests; the store and the last saved index still load and agree."""
    kb.ingest_bytes(FAQ_CSV.encode(), "faq.csv")
    kb.ingest_bytes(DOC_MD.encode(), "points.md")
    big = tmp_path / "big.md"
    big.write_text("# 大文档\n" + "".join(f"## 第{i}节\n这是第{i}段内容，讲述退货规则第{i}条。\n" for i in range(400)),
                   encoding="utf-8")
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'tests')!r})
        from conftest import make_config
        from faq_bot.knowledge import KnowledgeBase
        from pathlib import Path
        kb = KnowledgeBase(make_config(Path({str(tmp_path)!r})))
        print("ready", flush=True)
        kb.ingest_paths([{str(big)!r}])
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(1.0)  # inside encoding / writing
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    kb2 = KnowledgeBase(kb.cfg)
    assert _consistent(kb2)
    docs = {d.source: d for d in kb2.store.list_documents()}
    assert "points.md" in docs
    if "big.md" in docs:  # wholly in, never half
        assert len(kb2.store.chunks(doc_id=docs["big.md"].id)) == docs["big.md"].n_chunks
    hits = kb2.faq_index().dense.search(kb2.faq_encoder.encode_query("怎么退货"), 1)
    assert hits[1][0][0] >= 0
