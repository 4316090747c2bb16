"""Knowledge base lifecycle: ingest, no-op re-ingest, replace, delete, bad input, crash safety, stale-index repair."""

import contextlib
import json
import os
import random
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


# ---------------------------------------------------------------------------------------------- SIGKILL loop
CRASH_CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    from conftest import make_config
    from faq_bot.knowledge import KnowledgeBase, doc_id_for
    from faq_bot.store import Store

    op, point, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
    kb = KnowledgeBase(make_config(Path({tmp!r})))
    kb.sync()  # encoders loaded, indexes current: what follows is the operation alone

    def crash_after(owner, name):
        orig, calls = owner.__dict__[name], [0]
        fn = orig.__func__ if isinstance(orig, staticmethod) else orig
        def wrapped(*a, **k):
            out = fn(*a, **k)
            calls[0] += 1
            if calls[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        setattr(owner, name, staticmethod(wrapped) if isinstance(orig, staticmethod) else wrapped)

    if point == "in_tx":  # rows written and the generation bumped, COMMIT not reached
        crash_after(Store, "_bump")
    elif point == "after_commit":  # SQLite committed, no index file in place yet
        crash_after(Store, "delete_document" if op == "delete" else "replace_document")
    elif point == "rename":  # after the n-th file rename: between index files, or before the meta file
        crash_after(os, "replace")
    print("go", flush=True)
    if op == "delete":
        kb.delete_document(doc_id_for("big.md"))
    else:
        kb.ingest_bytes(Path({big!r}).read_bytes(), "big.md")
    print("done", flush=True)
""")


def _big_doc(tag: str, n: int = 60) -> str:
    return "# 大文档\n" + "".join(f"## 第{i}节\n这是第{i}段内容（{tag}），讲述退货规则第{i}条。\n" for i in range(n))


@pytest.mark.slow
def test_kb_sigkill_loop_during_ingest_and_delete_keeps_sqlite_and_indexes_in_step(tmp_path, kb):
    """SIGKILL a writer at chosen and at random points of an ingest, a re-ingest (replace) or a delete, many times;
    after each restart SQLite and FAISS/BM25 hold the same ids, every document is wholly in or out, and the
    start-up check has brought stale index files to the store's generation."""
    kb.ingest_bytes(FAQ_CSV.encode(), "faq.csv")
    kb.ingest_bytes(DOC_MD.encode(), "points.md")
    big = tmp_path / "big.md"
    script = CRASH_CHILD.format(root=str(ROOT), tests=str(ROOT / "tests"), tmp=str(tmp_path), big=str(big))
    rng = random.Random(20261127)
    # each crash point at least once, plus random instants; the operation follows the state: a document that is
    # in gets deleted or re-ingested with new text (a replace), one that is out gets ingested
    points = ["in_tx", "after_commit", "rename", "timer", "rename", "timer", "in_tx", "after_commit"]
    n_chunks, killed = None, 0
    for i, point in enumerate(points):
        stored = kb.store.find_document_by_source("big.md")
        op = rng.choice(["delete", "replace"]) if stored else "ingest"
        if op != "delete":  # always new text, so the ingest writes (an unchanged file is skipped)
            tag = "B" if stored and "（A）" in kb.store.chunks(doc_id=stored.id)[0].text else "A"
            big.write_text(_big_doc(tag), encoding="utf-8")
        nth = rng.randint(1, 6) if point == "rename" else 1
        p = subprocess.Popen([sys.executable, "-c", script, op, point, str(nth)], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "go"
        if point == "timer":
            time.sleep(rng.uniform(0.0, 0.05 if op == "delete" else 1.0))
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=120)
        killed += p.returncode == -signal.SIGKILL
        where = (i, op, point, nth, p.returncode)
        if point != "timer":
            assert p.returncode == -signal.SIGKILL, where  # the crash point was reached

        kb2 = KnowledgeBase(kb.cfg)  # the restart: the start-up check runs on first use
        c = kb2.check_consistency()
        assert all(v["dense"] and v["sparse"] for v in c.values()), (where, c)
        for space in ("faq", "chunk"):  # stale index files were rebuilt to the store's generation
            meta = json.loads((kb.index_dir / f"{space}.json").read_text())
            assert meta["generation"] == kb2.store.generation(), (where, space, meta)
        docs = {d.source: d for d in kb2.store.list_documents()}
        assert {"faq.csv", "points.md"} <= set(docs) <= {"faq.csv", "points.md", "big.md"}, where
        assert kb2.store.count("faqs") == 2 and not kb2.store.missing_vectors("chunk", kb2.doc_encoder.name)
        vids = set(kb2.chunk_index().dense.ids().tolist())
        if "big.md" in docs:  # wholly in: every chunk stored, embedded and indexed, all of one version
            chunks = kb2.store.chunks(doc_id=docs["big.md"].id)
            n_chunks = n_chunks or len(chunks)
            assert len(chunks) == docs["big.md"].n_chunks == n_chunks, where
            assert {int(ch.meta["vid"]) for ch in chunks} <= vids, where
            assert len({"（A）" in ch.text for ch in chunks if "（" in ch.text}) == 1, where
        else:  # wholly out
            assert not any(ch.source == "big.md" for ch in kb2.store.chunks()), where
        kb2.store.close()
    assert killed >= len(points) - 1
