"""Store: documents, chunks, FAQs and vectors in SQLite; atomic replace; cascades; generation counter."""

import numpy as np
import pytest

from faq_bot.schema import Chunk, Doc, Faq
from faq_bot.store import Store


def _doc(i="d1", sha="a"):
    return Doc(id=i, source=f"{i}.md", sha256=sha, type="md")


def test_store_replace_document_roundtrip(tmp_path):
    s = Store(tmp_path / "kb.db")
    chunks = [Chunk(id=f"d1:{i}", doc_id="d1", text=f"t{i}", heading_path=["H"], position=i) for i in range(3)]
    g0 = s.generation()
    vids, _ = s.replace_document(_doc(), chunks, {"m": np.eye(3, 4, dtype=np.float32)})
    assert s.generation() == g0 + 1
    assert [c.id for c in s.chunks(vids)] == ["d1:0", "d1:1", "d1:2"]
    ids, mat = s.vectors("chunk", "m")
    assert list(ids) == vids and mat.shape == (3, 4)
    # replacing gives new, never reused vector ids and drops the old vectors
    vids2, _ = s.replace_document(_doc(sha="b"), chunks[:1], {"m": np.ones((1, 4), np.float32)})
    assert min(vids2) > max(vids)
    ids, _ = s.vectors("chunk", "m")
    assert list(ids) == vids2


def test_store_delete_cascades_to_chunks_faqs_and_vectors(tmp_path):
    s = Store(tmp_path / "kb.db")
    faq = Faq(id="f1", question="q", answer="a", similar_questions=["q2"])
    _, qids = s.replace_document(_doc("faqfile"), faqs=[faq], faq_vectors={"m": np.ones((2, 4), np.float32)})
    assert len(qids) == 2 and s.count("faq_questions") == 2
    assert s.delete_document("faqfile")
    assert s.count("faqs") == 0 and s.count("faq_questions") == 0
    assert len(s.vectors("faq", "m")[0]) == 0
    assert not s.delete_document("faqfile")


def test_store_duplicate_faq_id_across_files_is_refused_and_nothing_changes(tmp_path):
    s = Store(tmp_path / "kb.db")
    s.replace_document(_doc("a"), faqs=[Faq(id="f1", question="q", answer="a")])
    g = s.generation()
    with pytest.raises(ValueError, match=r"FAQ id `f1` already exists in a.md"):
        s.replace_document(_doc("b"), faqs=[Faq(id="f1", question="q", answer="a")])
    assert s.generation() == g and [d.id for d in s.list_documents()] == ["a"]


def test_store_vector_row_mismatch_rolls_back(tmp_path):
    s = Store(tmp_path / "kb.db")
    chunks = [Chunk(id="d1:0", doc_id="d1", text="t")]
    with pytest.raises(ValueError, match="rows"):
        s.replace_document(_doc(), chunks, {"m": np.ones((2, 4), np.float32)})
    assert s.count("documents") == 0 and s.count("chunks") == 0


def test_store_feedback_and_eval_runs(tmp_path):
    s = Store(tmp_path / "kb.db")
    fid = s.add_feedback(question="q", answer="a", rating=-1, correction="c", trace_id="t1")
    assert s.feedback(rating=-1)[0]["id"] == fid
    with pytest.raises(ValueError, match="rating"):
        s.add_feedback(question="q", answer="a", rating=0)
    s.add_eval_run("r1", "faq", {"acc": 0.9}, "/tmp/r1")
    assert s.eval_runs()[0]["summary"] == {"acc": 0.9}
