"""Tests for faq_bot.index: tokenizer, FAISS kinds, BM25 and Qdrant (real libraries, small data)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from faq_bot.config import RetrieveConfig
from faq_bot.index import BM25Index, FaissIndex, QdrantIndex, build_dense_index, tokenize, tokenize_many
from faq_bot.index import dense as dense_module

ROOT = Path(__file__).resolve().parent.parent
SEED = 0
DIM = 32


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _data(n: int, dim: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Random unit vectors with sparse, non-contiguous ids (so ids are never confused with rows)."""
    rng = np.random.default_rng(seed)
    return np.arange(n, dtype=np.int64) * 7 + 1000, _unit(rng.standard_normal((n, dim)))


def _near(vecs: np.ndarray, noise: float = 0.05, seed: int = SEED + 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _unit(vecs + noise * rng.standard_normal(vecs.shape).astype(np.float32))


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, np.ndarray]:
    ids, vecs = _data(2000, DIM)
    # Crafted: two vectors a hair apart, and one orthogonal to the first axis.
    crafted = np.zeros((3, DIM), dtype=np.float32)
    crafted[0, 0] = 1.0
    crafted[1, 0], crafted[1, 1] = 1.0, 0.01
    crafted[2, 1] = 1.0
    return np.concatenate([ids, [1, 2, 3]]), np.concatenate([vecs, _unit(crafted)])


@pytest.fixture(scope="module", autouse=True)
def _one_faiss_thread():
    # OpenMP spin-waiting makes k-means (IVF-PQ training) erratic on small, shared CI machines.
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def large() -> tuple[np.ndarray, np.ndarray]:
    return _data(5000, 64)


@pytest.fixture(scope="module")
def ivf_file(large, tmp_path_factory) -> Path:
    """IVF-PQ over `large`, trained once; tests get fresh copies by loading it."""
    ids, vecs = large
    index = FaissIndex(64, "ivf_pq", nlist=16, pq_m=8)
    index.add(ids, vecs)
    assert index.kind == "ivf_pq"
    path = tmp_path_factory.mktemp("ivf") / "large.faiss"
    index.save(path)
    return path


@pytest.fixture()
def build(request):
    """`build(kind, ids, vecs)` -> a filled FaissIndex of that kind."""

    def _build(kind: str, ids: np.ndarray, vecs: np.ndarray) -> FaissIndex:
        if kind == "ivf_pq":
            index = FaissIndex.load(request.getfixturevalue("ivf_file"))
            np.testing.assert_array_equal(index.ids(), ids)
        else:
            index = FaissIndex(vecs.shape[1], kind)
            index.add(ids, vecs)
        assert index.kind == kind
        return index

    return _build


# ---------------------------------------------------------------- tokenizer


def test_tokenize_mixed_text_drops_punctuation_and_stop_words():
    assert tokenize("How do I reset my PASSWORD?") == ["reset", "password"]
    tokens = tokenize("会员积分怎么兑换？")
    assert {"会员", "积分", "兑换"} <= set(tokens)
    assert "怎么" not in tokens and "？" not in tokens
    # NFKC: full-width letters and digits become ASCII.
    assert tokenize("Ｗｉ－Ｆｉ密码 ３．５元") == ["wi", "fi", "密码", "3.5", "元"]
    assert tokenize("") == [] and tokenize("的 了 吗 the a") == []


def test_tokenize_finds_dictionary_words_search_mode_splits():
    # Search mode alone splits 退货运费 as 退/货运/运费; the query word 退货 must still be a token.
    tokens = tokenize("退货运费由谁承担")
    assert "运费" in tokens and "退货" in tokens and "承担" in tokens


def test_tokenize_many_keeps_order():
    assert tokenize_many(["password reset", "退货"]) == [["password", "reset"], ["退货"]]


# ---------------------------------------------------------------- FAISS: agreement with flat


@pytest.mark.parametrize("kind", ["hnsw", "ivf_pq"])
def test_faiss_kind_top1_matches_flat(build, kind, small, large):
    ids, vecs = large if kind == "ivf_pq" else small
    queries = _near(vecs[::50])
    _, flat_ids = build("flat", ids, vecs).search(queries, 5)
    scores, got_ids = build(kind, ids, vecs).search(queries, 5)
    np.testing.assert_array_equal(got_ids[:, 0], flat_ids[:, 0])
    np.testing.assert_array_equal(got_ids[:, 0], ids[::50])
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


def test_faiss_scores_are_cosines(build, small):
    ids, vecs = small
    index = build("flat", ids, vecs)
    scores, got = index.search(vecs[-3] * 5.0, 2)  # unnormalized query
    assert got[0, 0] == 1 and got[0, 1] == 2
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert scores[0, 1] == pytest.approx(float(vecs[-3] @ vecs[-2]), abs=1e-5)


def test_faiss_ivf_pq_scores_are_exact_after_refine(build, large):
    ids, vecs = large
    queries = _near(vecs[:20])
    flat_scores, _ = build("flat", ids, vecs).search(queries, 1)
    ivf_scores, _ = build("ivf_pq", ids, vecs).search(queries, 1)
    np.testing.assert_allclose(ivf_scores, flat_scores, atol=1e-5)


def test_faiss_ivf_pq_falls_back_to_flat_until_trainable(large):
    ids, vecs = large
    index = FaissIndex(64, "ivf_pq", nlist=16)
    index.add(ids[:300], vecs[:300])
    assert index.kind == "flat" and "ivf_pq needs" in index.fallback_reason
    assert index.search(vecs[7], 1)[1][0, 0] == ids[7]
    index.add(ids[300:1000], vecs[300:1000])  # 1000 >= max(39 * 16, 256): trains now
    assert index.kind == "ivf_pq" and index.fallback_reason is None
    assert index.search(_near(vecs[7:8]), 1)[1][0, 0] == ids[7]


def test_faiss_auto_moves_up_with_count_and_rebuild_rechooses(build, small):
    ids, vecs = small
    index = FaissIndex(DIM, "auto", auto_flat_max=100, auto_hnsw_max=300, nlist=2)
    index.add(ids[:80], vecs[:80])
    assert index.kind == "flat"
    index.add(ids[80:200], vecs[80:200])
    assert index.kind == "hnsw"
    index.add(ids[200:400], vecs[200:400])
    assert index.kind == "ivf_pq" and len(index) == 400
    assert index.search(vecs[250], 1)[1][0, 0] == ids[250]
    index.remove(ids[50:400])
    assert index.kind == "ivf_pq"  # no automatic move down on deletes
    index.rebuild()
    assert index.kind == "flat" and len(index) == 50
    index.rebuild(ids[:150], vecs[:150])
    assert index.kind == "hnsw" and len(index) == 150


def test_faiss_auto_hnsw_compaction_keeps_kind(small):
    ids, vecs = small
    index = FaissIndex(DIM, "auto", auto_flat_max=100, auto_hnsw_max=1000)
    index.add(ids[:200], vecs[:200])
    assert index.kind == "hnsw"
    index.remove(ids[:150])  # compaction rebuild; 50 vectors would pick flat, but the kind stays
    assert index.kind == "hnsw" and index.stats()["dead_slots"] == 0
    assert index.search(vecs[160], 1)[1][0, 0] == ids[160]


# ---------------------------------------------------------------- FAISS: mutation


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf_pq"])
def test_faiss_remove_removes_hits(build, kind, small, large):
    ids, vecs = large if kind == "ivf_pq" else small
    index = build(kind, ids, vecs)
    gone = ids[:10]
    assert index.remove(np.concatenate([gone, gone[:2], [999_999_999]])) == 10
    assert len(index) == len(ids) - 10
    _, got = index.search(vecs[:10], 5)
    assert not np.isin(got, gone).any()
    assert not np.isin(gone, index.ids()).any()
    assert index.remove(gone) == 0
    assert index.search(vecs[20], 1)[1][0, 0] == ids[20]


def test_faiss_hnsw_compacts_after_many_removes(build, small):
    ids, vecs = small
    index = build("hnsw", ids, vecs)
    index.remove(ids[:100])
    assert index.stats()["dead_slots"] == 100  # tombstoned, graph untouched
    index.remove(ids[100:600])  # > 20% dead: compacted and rebuilt
    assert index.stats()["dead_slots"] == 0 and len(index) == len(ids) - 600
    _, got = index.search(vecs[600:700], 1)
    np.testing.assert_array_equal(got[:, 0], ids[600:700])


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_faiss_ids_stable_across_remove_and_add(build, kind, small):
    ids, vecs = small
    index = build(kind, ids[:1000], vecs[:1000])
    index.remove(ids[100:200])
    index.add(ids[1000:1100], vecs[1000:1100])
    # A removed id comes back with a different vector; an existing id is replaced in place.
    index.add(ids[[150]], vecs[[1500]])
    index.add(ids[[10]], vecs[[1600]])
    _, got = index.search(np.stack([vecs[5], vecs[1050], vecs[1500], vecs[1600], vecs[10]]), 1)
    assert got[:, 0].tolist()[:4] == [ids[5], ids[1050], ids[150], ids[10]]
    assert got[4, 0] != ids[10]  # the old vector of id 10 is gone
    assert len(index) == 1000 - 100 + 100 + 1
    assert set(index.ids().tolist()) == set(ids[:100]) | set(ids[200:1100]) | {ids[150]}


def test_faiss_search_pads_missing_and_handles_empty(small):
    ids, vecs = small
    index = FaissIndex(DIM, "flat")
    scores, got = index.search(vecs[0], 3)
    assert got.tolist() == [[-1, -1, -1]] and np.isneginf(scores).all()
    index.add(ids[:2], vecs[:2])
    scores, got = index.search(vecs[:2], 4)
    assert got.shape == (2, 4) and (got[:, 2:] == -1).all() and np.isneginf(scores[:, 2:]).all()
    assert got[0, 0] == ids[0] and got[1, 0] == ids[1]


def test_faiss_rejects_bad_input(small):
    ids, vecs = small
    index = FaissIndex(DIM)
    with pytest.raises(ValueError, match="`vecs`"):
        index.add(ids[:3], vecs[:3, :10])
    with pytest.raises(ValueError, match="duplicates"):
        index.add([1, 1], vecs[:2])
    with pytest.raises(ValueError, match="`ids` must be >= 0"):
        index.add([-1], vecs[:1])
    with pytest.raises(ValueError, match="all zeros"):
        index.add([5], np.zeros((1, DIM)))
    with pytest.raises(ValueError, match="`k`"):
        index.search(vecs[0], 0)
    with pytest.raises(ValueError, match="`q`"):
        index.search(vecs[0, :5], 1)
    with pytest.raises(ValueError, match="`kind`"):
        FaissIndex(DIM, "ivf")
    with pytest.raises(ValueError, match="`pq_m`"):
        FaissIndex(DIM, "ivf_pq", pq_m=5)
    with pytest.raises(ValueError, match="`auto_hnsw_max`"):
        FaissIndex(DIM, auto_flat_max=10, auto_hnsw_max=5)


@pytest.mark.skipif(hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0, reason="a GPU is present")
def test_faiss_device_gpu_without_gpu_fails_at_construction():
    with pytest.raises(ValueError, match="`device` is 'gpu'"):
        FaissIndex(DIM, device="gpu")
    assert not FaissIndex(DIM, device="auto").on_gpu


def test_faiss_from_config_and_stats():
    cfg = RetrieveConfig(index="hnsw", hnsw_m=8, ef_search=16, device="cpu")
    index = FaissIndex.from_config(DIM, cfg)
    assert index.kind == "hnsw" and index.requested_kind == "hnsw"
    stats = index.stats()
    assert stats["kind"] == "hnsw" and stats["ntotal"] == 0 and stats["dim"] == DIM and stats["memory_bytes"] >= 0


# ---------------------------------------------------------------- FAISS: persistence


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf_pq"])
def test_faiss_save_load_round_trip(build, kind, small, large, tmp_path):
    ids, vecs = large if kind == "ivf_pq" else small
    index = build(kind, ids, vecs)
    index.remove(ids[:5])  # HNSW keeps these as tombstones through the round trip
    path = tmp_path / "chunks.faiss"
    index.save(path)
    loaded = FaissIndex.load(path)
    assert loaded.kind == kind and len(loaded) == len(index)
    np.testing.assert_array_equal(loaded.ids(), index.ids())
    queries = _near(vecs[::97])
    for a, b in zip(index.search(queries, 10), loaded.search(queries, 10)):
        np.testing.assert_array_equal(a, b)
    loaded.add([5], vecs[[0]])  # the vector of a removed id, under a new id
    assert loaded.search(vecs[0], 1)[1][0, 0] == 5


def test_faiss_load_with_other_kind_rebuilds_from_stored_vectors(build, small, tmp_path):
    ids, vecs = small
    path = tmp_path / "i.faiss"
    build("hnsw", ids, vecs).save(path)
    same = FaissIndex.load(path, ef_search=128)  # runtime setting: no rebuild
    assert same.kind == "hnsw"
    flat = FaissIndex.load(path, kind="flat")
    assert flat.kind == "flat" and len(flat) == len(ids)
    np.testing.assert_array_equal(flat.search(vecs[:50], 1)[1][:, 0], ids[:50])


def test_faiss_load_rejects_other_files(tmp_path):
    bad = tmp_path / "bad.faiss"
    bad.write_bytes(b"not an index")
    with pytest.raises(ValueError, match="not a FaissIndex file"):
        FaissIndex.load(bad)
    with pytest.raises(ValueError, match="does not exist"):
        FaissIndex.load(tmp_path / "missing.faiss")


def test_faiss_failed_save_keeps_previous_file(build, small, tmp_path, monkeypatch):
    ids, vecs = small
    path = tmp_path / "i.faiss"
    build("flat", ids[:10], vecs[:10]).save(path)
    before = path.read_bytes()

    def write_half_then_die(index, writer):
        writer.callback(b"x" * 1000)
        raise OSError("disk full")

    monkeypatch.setattr(dense_module.faiss, "write_index", write_half_then_die)
    with pytest.raises(OSError, match="disk full"):
        build("flat", ids, vecs).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["i.faiss"]  # temp file cleaned up
    monkeypatch.undo()
    assert len(FaissIndex.load(path)) == 10


def test_faiss_save_killed_mid_write_leaves_loadable_file(tmp_path):
    path = tmp_path / "big.faiss"
    old_ids, old_vecs = _data(10, 128)
    FaissIndex(128, "flat").save(path)  # an empty index first ...
    small_index = FaissIndex(128, "flat")
    small_index.add(old_ids, old_vecs)
    small_index.save(path)  # ... replaced by a 10-vector one
    n_big = 150_000
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from faq_bot.index.dense import FaissIndex
        index = FaissIndex(128, "flat")
        vecs = np.random.default_rng(0).standard_normal(({n_big}, 128), dtype=np.float32)
        index.add(np.arange({n_big}), vecs)
        print("ready", flush=True)
        index.save(sys.argv[1])
        print("saved", flush=True)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, "-c", script, str(path)], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and child.poll() is None:  # kill once the temp file is growing
            try:
                if any(t.stat().st_size > 1_000_000 for t in tmp_path.glob(".big.faiss.*.tmp")):
                    break
            except FileNotFoundError:  # renamed under us: the save just completed
                break
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    # The target is never truncated: it is the old index, or (if the kill lost the race) the whole new one.
    loaded = FaissIndex.load(path)
    assert len(loaded) in (10, n_big)
    if len(loaded) == 10:
        np.testing.assert_array_equal(loaded.search(old_vecs[3], 1)[1][0], [old_ids[3]])


# ---------------------------------------------------------------- BM25

FAQ_TEXTS = {
    10: "退货运费由谁承担",
    11: "会员积分怎么兑换",
    12: "How do I reset my password?",
    13: "Shipping fees for international orders",
    14: "发票可以开公司抬头吗",
}


@pytest.fixture()
def bm25() -> BM25Index:
    index = BM25Index()
    index.add(list(FAQ_TEXTS), list(FAQ_TEXTS.values()))
    return index


def test_bm25_finds_chinese_keywords(bm25):
    assert bm25.search("运费", 3)[0][0] == 10
    assert bm25.search("退货", 3)[0][0] == 10
    assert bm25.search("积分能换什么", 3)[0][0] == 11
    assert bm25.search("开发票", 3)[0][0] == 14


def test_bm25_finds_english_keywords_best_first(bm25):
    hits = bm25.search("forgot my PASSWORD, need a reset", 5)
    assert hits[0][0] == 12 and all(s > 0 for _, s in hits)
    assert [i for i, _ in bm25.search("international shipping", 5)] == [13]
    scores = [s for _, s in bm25.search("password shipping fees", 5)]
    assert scores == sorted(scores, reverse=True) and len(scores) == 2


def test_bm25_unknown_stopword_and_empty_queries(bm25):
    assert bm25.search("quantum chromodynamics", 5) == []
    assert bm25.search("的了吗 the", 5) == []
    assert bm25.search("", 5) == []
    assert BM25Index().search("运费", 5) == []
    with pytest.raises(ValueError, match="`k`"):
        bm25.search("运费", 0)


def test_bm25_remove_and_readd_keep_ids(bm25):
    assert bm25.remove([10, 999]) == 1
    assert bm25.search("运费", 3) == [] and 10 not in bm25 and len(bm25) == 4
    bm25.add([20], ["国际运费怎么算"])
    assert bm25.search("运费", 3)[0][0] == 20
    bm25.add([11], ["password change policy"])  # replaces the old text of id 11
    assert bm25.search("积分", 3) == []
    assert {i for i, _ in bm25.search("password", 3)} == {11, 12}
    assert sorted(bm25.ids().tolist()) == [11, 12, 13, 14, 20]
    bm25.remove(bm25.ids())
    assert len(bm25) == 0 and bm25.search("password", 3) == []


def test_bm25_document_without_tokens(bm25):
    bm25.add([30, 31], ["？？？", "的"])
    assert len(bm25) == 7 and bm25.search("运费", 5)[0][0] == 10
    only_empty = BM25Index()
    only_empty.add([1], ["!!!"])
    assert only_empty.search("运费", 5) == []


@pytest.mark.parametrize("target", ["bm25_dir", "sparse.json"])
def test_bm25_save_load_round_trip(bm25, tmp_path, target):
    saved = bm25.save(tmp_path / target)
    assert saved.is_file()
    loaded = BM25Index.load(tmp_path / target)
    assert loaded.ids().tolist() == bm25.ids().tolist()
    for q in ("运费", "password reset", "会员积分", "发票"):
        assert loaded.search(q, 5) == bm25.search(q, 5)
    with pytest.raises(ValueError, match="holds no BM25 index"):
        BM25Index.load(tmp_path / "nothing_here")


def test_bm25_rejects_bad_input(bm25):
    with pytest.raises(ValueError, match="differ in length"):
        bm25.add([1, 2], ["a"])
    with pytest.raises(ValueError, match="duplicates"):
        bm25.add([1, 1], ["a", "b"])
    with pytest.raises(ValueError, match="`ids` must be >= 0"):
        bm25.add([-5], ["a"])


# ---------------------------------------------------------------- Qdrant (embedded local mode)


def test_qdrant_local_add_search_remove_reopen(build, small, tmp_path):
    # Embedded mode commits to SQLite once per point: keep the set small.
    ids, vecs = small
    ids, vecs = ids[:100], vecs[:100]
    queries = _near(vecs[::10])
    _, flat_ids = build("flat", ids, vecs).search(queries, 3)
    with QdrantIndex(DIM, tmp_path / "qdrant", name="chunks") as index:
        index.add(ids, vecs)
        assert len(index) == 100 and index.kind == "qdrant"
        scores, got = index.search(queries, 3)
        np.testing.assert_array_equal(got[:, 0], flat_ids[:, 0])
        assert scores[0, 0] == pytest.approx(float(queries[0] @ vecs[0]), abs=1e-4)
        assert index.remove(np.concatenate([ids[:10], [123_456_789]])) == 10
        _, got = index.search(vecs[:10], 3)
        assert not np.isin(got, ids[:10]).any()
        index.add(ids[:1], vecs[[50]])  # a removed id comes back with another vector
        index.save(tmp_path / "ignored")
    reopened = QdrantIndex.load(tmp_path / "qdrant", name="chunks")
    try:
        assert reopened.dim == DIM and len(reopened) == 91
        np.testing.assert_array_equal(np.sort(reopened.ids()), np.sort(np.concatenate([ids[:1], ids[10:]])))
        scores, got = reopened.search(vecs[50], 120)
        assert set(got[0, :2].tolist()) == {ids[0], ids[50]}
        assert got.shape == (1, 120) and (got[0, 91:] == -1).all() and np.isneginf(scores[0, 91:]).all()
    finally:
        reopened.close()
    with pytest.raises(ValueError, match="no such collection"):
        QdrantIndex.load(tmp_path / "qdrant", name="faq")


def test_qdrant_rejects_dim_mismatch(tmp_path):
    with QdrantIndex(DIM, tmp_path / "q", name="c"):
        with pytest.raises(ValueError, match="`dim` is 8"):
            QdrantIndex(8, tmp_path / "q", name="c")  # shares the folder's client


# ---------------------------------------------------------------- build_dense_index


def test_build_dense_index_creates_then_loads_faiss(small, tmp_path):
    ids, vecs = small
    cfg = RetrieveConfig(index="flat", device="cpu")
    path = tmp_path / "index" / "chunks.faiss"
    index = build_dense_index(DIM, cfg, path)
    assert isinstance(index, FaissIndex) and len(index) == 0
    index.add(ids[:50], vecs[:50])
    index.save(path)
    again = build_dense_index(DIM, cfg, path)
    assert len(again) == 50 and again.search(vecs[3], 1)[1][0, 0] == ids[3]
    hnsw = build_dense_index(DIM, RetrieveConfig(index="hnsw", device="cpu"), path)
    assert hnsw.kind == "hnsw" and len(hnsw) == 50
    with pytest.raises(ValueError, match="`dim` is 16"):
        build_dense_index(16, cfg, path)


def test_build_dense_index_qdrant_backend(small, tmp_path):
    ids, vecs = small
    cfg = RetrieveConfig(backend="qdrant")
    index = build_dense_index(DIM, cfg, tmp_path / "chunks.faiss")
    try:
        assert isinstance(index, QdrantIndex) and index.name == "chunks"
        index.add(ids[:20], vecs[:20])
        assert index.search(vecs[4], 1)[1][0, 0] == ids[4]
    finally:
        index.close()
