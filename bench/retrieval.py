"""Retrieval: FaissIndex flat / HNSW / IVF-PQ latency, recall@10 vs exact search and memory at 10k-1M clustered
384-d vectors; BM25 query latency of our BM25Index (bm25s + jieba) vs rank_bm25 on the same tokens."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os

import numpy as np

from .common import PartContext, best_time, faiss_threads, figure, fmt, fmt_n, now, rss_bytes, summarize, temp_dir, time_calls
from .data import Mixture, ZhEnVocab, exact_topk, recall_at_k

logger = logging.getLogger(__name__)

DIM = 384  # e5-small, the document encoder
K = 10
IVF_1M_NLIST = 1024  # the default 4*sqrt(n) = 4000 lists cannot be trained on 2 cores in the budget (see notes)


def _gemm_gflops() -> float:
    """Measured single-precision GEMM rate of this process (what k-means training and IVF assignment run on)."""
    a = np.random.default_rng(0).standard_normal((2048, DIM), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((DIM, 4096), dtype=np.float32)
    a @ b
    return 2 * 2048 * DIM * 4096 / best_time(lambda: a @ b) / 1e9


def _ivf_plan(n: int, nlist: int | None) -> tuple[int, int]:
    """(nlist, vectors the index is trained on) for our incremental-add recipe."""
    nl = nlist or max(1, int(4 * math.sqrt(n)))
    train = min(n, max(64 * nl, 256))
    return nl, train


def _pq_train_s_per_point_subq() -> float:
    """Calibrated cost of training one 8-bit PQ sub-quantizer (dsub 4, as pq_m = dim/4) per training point."""
    import faiss

    x = np.random.default_rng(5).standard_normal((5000, 8), dtype=np.float32)
    pq = faiss.ProductQuantizer(8, 2, 8)
    pq.cp.min_points_per_centroid = 16  # 5000 points for 256 centroids is enough for timing; no faiss warning
    t0 = now()
    pq.train(x)
    return (now() - t0) / (2 * 5000)


def _ivf_projected_s(n: int, nlist: int | None, gflops: float, pq_cost: float) -> float:
    nl, train = _ivf_plan(n, nlist)
    if n < max(39 * nl, 256):  # the library falls back to flat: nothing to train
        return n * DIM * 4 / 1e9 * 2
    coarse = 3.0 * (25 * min(train, 256 * nl) * nl * DIM * 2) / (gflops * 1e9)  # k-means, 25 iterations
    pq = pq_cost * (DIM // 4) * min(train, 256 * 256)  # faiss trains each sub-quantizer on <= 65536 points
    assign = 3.0 * n * nl * DIM * 2 / (gflops * 1e9)
    return 1.3 * (coarse + pq + assign) + n * 2e-6


def _build(kind: str, X: np.ndarray, nlist: int | None, threads: int | None):
    from faq_bot.index import FaissIndex

    n = len(X)
    ids = np.arange(n, dtype=np.int64)
    with faiss_threads(threads) if threads else contextlib.nullcontext():
        idx = FaissIndex(DIM, kind, device="cpu", nlist=nlist)
        if kind == "ivf_pq":
            # Trained once on the first batch, later batches are only encoded: how incremental ingest grows it.
            _, train = _ivf_plan(n, nlist)
            idx.add(ids[:train], X[:train])
            for i in range(train, n, 100_000):
                idx.add(ids[i:i + 100_000], X[i:i + 100_000])
        else:
            idx.add(ids, X)
    return idx


def _vectors(ctx: PartContext, n: int, mix: Mixture, cal: dict, prev: dict, nq: int, reserve_s: float = 0.0) -> None:
    res, budget = ctx.result, ctx.budget
    tag = fmt_n(n)
    t0 = now()
    X = mix.sample(n, seed=n)
    Q = mix.sample(nq, seed=n + 1)
    gen_s = now() - t0
    t0 = now()
    truth = exact_topk(X, Q, K)
    raw = {"n": n, "gen_s": round(gen_s, 2), "truth_s": round(now() - t0, 2), "kinds": {}}
    res.raw.setdefault("vectors", {})[tag] = raw
    qlist = list(Q)
    max_s = 12.0 if ctx.quick else 20.0
    exact_p50 = None
    kinds = ("flat",) if (ctx.quick and n >= 100_000) else ("flat", "hnsw", "ivf_pq")
    for kind in kinds:
        nlist = IVF_1M_NLIST if (kind == "ivf_pq" and n >= 1_000_000) else None
        if kind == "hnsw" and "hnsw" in prev:
            p_n, p_s = prev["hnsw"]
            projected = p_s * (n / p_n) * 1.6
        elif kind == "hnsw":
            projected = cal["hnsw_s_per_vec"] * n
        elif kind == "ivf_pq":
            projected = _ivf_projected_s(n, nlist, cal["gflops"], cal["pq_s"])
        else:
            projected = n * 1.5e-4  # a memcpy, plus the single-query loops (default and 1 thread)
        if not budget.fits(projected + 10, reserve_s=reserve_s):
            res.note(f"{kind} at {tag}: skipped, projected build {projected:.0f} s > {budget.left():.0f} s left in "
                     f"the part's budget (run `python -m bench retrieval --sizes {n} --budget-s 1800 --tag {tag}`).")
            raw["kinds"][kind] = {"skipped": True, "projected_build_s": round(projected, 1)}
            continue
        gc.collect()
        rss0 = rss_bytes()
        t0 = now()
        idx = _build(kind, X, nlist, cal["build_threads"])
        build_s = now() - t0
        rss1 = rss_bytes()
        prev[kind] = (n, build_s)
        stats = idx.stats()
        # Latency: one query at a time (what the app does), process-default faiss threads.
        ms, _ = time_calls(lambda q: idx.search(q, K), qlist, warmup=qlist[:3], max_n=nq, max_s=max_s)
        _, found = idx.search(Q, K)
        recall = recall_at_k(found, truth, K)
        s = summarize(ms)
        entry = {"build_s": round(build_s, 2), "projected_build_s": round(projected, 1), "latency_ms": s,
                 "recall@10": round(recall, 4), "stats": stats,
                 "rss_delta_bytes": None if rss0 is None else rss1 - rss0}
        if kind == "flat":
            exact_p50 = s["p50"]
            with faiss_threads(1):
                ms1, _ = time_calls(lambda q: idx.search(q, K), qlist, warmup=qlist[:2], max_n=nq, max_s=max_s / 2)
            entry["latency_ms_faiss_1_thread"] = summarize(ms1)
        raw["kinds"][kind] = entry
        label_kind = {"flat": "Flat", "hnsw": "HNSW", "ivf_pq": "IVF-PQ"}[kind]
        eff = f" (built as {stats['kind']}: too few vectors to train)" if stats["kind"] != kind else ""
        extra = f", nlist={stats['nlist']}" if stats.get("nlist") else ""
        if kind == "flat":
            res.add(figure(f"flat_{tag}_p50", f"Flat (exact) query p50, {tag}", s["p50"], "ms", n=s["n"],
                           peer_label="same, faiss 1 thread", peer=entry["latency_ms_faiss_1_thread"]["p50"],
                           note="default faiss threads vs 1 thread: the peer column shows what pinning buys"))
        else:
            tgt, check = "", None
            if kind == "ivf_pq" and n >= 1_000_000:
                tgt, check = "≤ 5 ms p50 at recall@10 ≥ 0.9", (lambda v, r, rc=recall: v <= 5.0 and rc >= 0.9)
            res.add(figure(f"{kind}_{tag}_p50", f"{label_kind} query p50, {tag}{extra}{eff}", s["p50"], "ms",
                           n=s["n"], peer_label="Flat (exact) p50", peer=exact_p50, target=tgt, target_check=check,
                           note=f"p95 {fmt(s['p95'])} ms"))
            res.add(figure(f"{kind}_{tag}_recall", f"{label_kind} recall@10, {tag}", recall, "", n=len(Q),
                           peer_label="exact search", peer=1.0,
                           target="≥ 0.9" if (kind == "ivf_pq" and n >= 1_000_000) else "",
                           target_check=(lambda v, r: v >= 0.9) if (kind == "ivf_pq" and n >= 1_000_000) else None))
        res.add(figure(f"{kind}_{tag}_mem", f"{label_kind} memory (library estimate), {tag}",
                       stats["memory_bytes"] / 2**20, "MiB", peer_label="raw float32 vectors",
                       peer=n * DIM * 4 / 2**20,
                       note=f"build {build_s:.1f} s; RSS grew {((rss1 or 0) - (rss0 or 0)) / 2**20:.0f} MiB"))
        del idx
        gc.collect()
    del X, Q, truth
    gc.collect()


def _bm25_calibrate() -> dict:
    """Per-chunk cost of generating + tokenizing (jieba) a 40-word chunk, to size the BM25 corpus to the budget."""
    from faq_bot.index import tokenize

    vocab = ZhEnVocab(seed=7)
    tokenize("预热 jieba 词典")  # loads jieba's dictionary: not part of the per-chunk cost
    t0 = now()
    probe = [vocab.text(40) for _ in range(600)]
    gen = (now() - t0) / 600
    t0 = now()
    for t in probe[:300]:
        tokenize(t)
    tok = (now() - t0) / 300
    # ours: generate + tokenize; rank_bm25 build ~1x tokenize; JSON round trip; margin
    return {"vocab": vocab, "probe": probe, "per_chunk_s": 1.6 * (gen + 2 * tok) + 3e-5, "tok_rate": 1 / tok}


def _bm25(ctx: PartContext, n: int, nq: int, cal: dict) -> None:
    from rank_bm25 import BM25Okapi

    from faq_bot.index import BM25Index, tokenize

    res, budget = ctx.result, ctx.budget
    vocab, probe, per_chunk, tok_rate = cal["vocab"], cal["probe"], cal["per_chunk_s"], cal["tok_rate"]
    fits = int(max(0.0, budget.left() - 25) / per_chunk)
    target_n = n
    if fits < n:
        n = max(5_000, fits // 5_000 * 5_000)
        res.note(f"BM25: {fmt_n(target_n)} chunks would take ~{target_n * per_chunk:.0f} s here "
                 f"(jieba {tok_rate:.0f} chunks/s); measured at {fmt_n(n)} chunks instead.")
    tag = fmt_n(n)
    texts = probe + [vocab.text(40) for _ in range(n - len(probe))]
    queries = [vocab.query(int(k)) for k in np.random.default_rng(3).integers(2, 4, size=nq + 5)]
    ids = np.arange(n, dtype=np.int64)
    ours = BM25Index()
    t0 = now()
    ours.add(ids, texts)
    add_s = now() - t0
    t0 = now()
    ours.search(queries[0], K)  # the first search builds the bm25s model
    model_s = now() - t0
    ms, hits_ours = time_calls(lambda q: ours.search(q, K), queries[5:], warmup=queries[1:3], max_n=nq, max_s=20)
    with temp_dir("bm25") as d:
        path = ours.save(d / "bm25.json")
        corpus = json.loads(path.read_text(encoding="utf-8"))["tokens"]  # the exact token streams ours indexed
    t0 = now()
    peer = BM25Okapi(corpus)
    peer_build_s = now() - t0
    del corpus

    def peer_search(q: str):
        scores = peer.get_scores(tokenize(q))
        top = np.argpartition(-scores, K)[:K]
        return top[np.argsort(-scores[top])]

    peer_ms, hits_peer = time_calls(peer_search, queries[5:], warmup=queries[3:4], max_n=min(nq, 40), max_s=25)
    overlap = np.mean([len({i for i, _ in a} & set(b.tolist())) / K for a, b in zip(hits_ours, hits_peer)
                       if a]) if hits_peer else float("nan")
    s, sp = summarize(ms), summarize(peer_ms)
    res.raw["bm25"] = {"chunks": n, "words_per_chunk": 40, "add_s": round(add_s, 2), "first_search_s": round(model_s, 2),
                       "ours_ms": s, "rank_bm25_ms": sp, "rank_bm25_build_s": round(peer_build_s, 2),
                       "top10_overlap": round(float(overlap), 3), "tokenize_chunks_per_s": round(tok_rate, 1)}
    res.add(figure(f"bm25_{tag}_p50", f"BM25 query p50, {tag} chunks (BM25Index, bm25s)", s["p50"], "ms", n=s["n"],
                   peer_label="rank_bm25 BM25Okapi p50", peer=sp.get("p50"),
                   note=f"p95 {fmt(s['p95'])} vs {fmt(sp.get('p95'))} ms; both include jieba query tokenizing; "
                        f"top-10 overlap {overlap:.2f}"))
    res.add(figure(f"bm25_{tag}_build", f"BM25 index build, {tag} chunks (add + first-search model build)",
                   add_s + model_s, "s", peer_label="rank_bm25 build (pre-tokenized)", peer=peer_build_s,
                   note=f"ours includes jieba tokenizing ({tok_rate:.0f} chunks/s), the peer does not"))


def run(ctx: PartContext) -> None:
    import faiss

    res = ctx.result
    quick = ctx.quick
    sizes = ctx.options.get("sizes") or ([10_000, 100_000] if quick else [10_000, 100_000, 1_000_000])
    nq = 100 if quick else 200
    bm25_n = ctx.options.get("bm25_chunks") or (10_000 if quick else 100_000)
    mix = Mixture()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = os.getloadavg()[0]
    # Builds only: on an oversubscribed box OpenMP barriers wait for descheduled threads (PQ training measured
    # ~4x slower with 2 threads than 1 here). Search latency is measured with the process default and 1 thread.
    build_threads = 1 if load > 0.75 * cores else None
    with faiss_threads(build_threads) if build_threads else contextlib.nullcontext():
        cal = {"gflops": _gemm_gflops(), "pq_s": _pq_train_s_per_point_subq(), "build_threads": build_threads,
               "hnsw_s_per_vec": 1e-3}
    bm = _bm25_calibrate()
    bm25_reserve = min(bm25_n * bm["per_chunk_s"] + 10, 0.4 * ctx.budget.left())
    res.config = {"dim": DIM, "k": K, "sizes": sizes, "queries": nq, "mixture": mix.params(),
                  "faiss_omp_threads": faiss.omp_get_max_threads(), "build_faiss_threads": build_threads or "default",
                  "loadavg_1m": round(load, 2), "gemm_gflops": round(cal["gflops"], 1),
                  "ivf_pq": f"nlist = library default 4*sqrt(n) (1M: {IVF_1M_NLIST}), nprobe 16, pq_m dim/4, "
                            "refine x4; trained on the first 64*nlist vectors, the rest added",
                  "hnsw": "library defaults: M 32, efConstruction 80, efSearch 64", "bm25_chunks": bm25_n}
    if quick:
        res.note("--quick: 100k vectors with Flat only, 1M skipped; BM25 at 10k chunks.")
    if build_threads:
        res.note(f"Load average {load:.1f} on {cores} cores: index builds ran with faiss pinned to 1 thread "
                 "(faster than the default here); searches use the default thread count unless a figure says so.")
    res.note("Vectors: unit-norm gaussian mixture (1000 clusters, rank-24 within-cluster variation + isotropic "
             "noise), so nearest neighbours are meaningful as with real embeddings.")
    nl_1m = int(4 * math.sqrt(1_000_000))
    res.note(f"IVF-PQ cost is mostly PQ training (pq_m = dim/4 = {DIM // 4} sub-quantizers x 25 k-means iterations "
             f"on up to 65,536 points): projected {_ivf_projected_s(100_000, None, cal['gflops'], cal['pq_s']):.0f} s "
             f"at 100k and, with the default nlist = 4*sqrt(n) = {nl_1m}, "
             f"{_ivf_projected_s(1_000_000, nl_1m, cal['gflops'], cal['pq_s']):.0f} s at 1M on this machine; "
             f"KnowledgeBase retrains it on every ingest (full rebuild). 1M is measured with nlist={IVF_1M_NLIST}.")
    prev: dict = {}
    for n in [n for n in sizes if n < 1_000_000]:
        _vectors(ctx, n, mix, cal, prev, nq, reserve_s=bm25_reserve)
        if "hnsw" in prev:
            cal["hnsw_s_per_vec"] = prev["hnsw"][1] / prev["hnsw"][0] * 1.6  # n log n, and a margin
    if ctx.budget.left() > min(40.0, bm25_reserve):
        _bm25(ctx, bm25_n, 60 if quick else 100, bm)
    else:
        res.note("BM25 skipped: part budget exhausted.")
    for n in [n for n in sizes if n >= 1_000_000]:
        need = n * DIM * 4 * 3.5 / 1e9 * 4 + 30  # sampling + truth + flat build, ~4 s per GB here
        if ctx.budget.left() < need:
            res.note(f"{fmt_n(n)} vectors skipped: {ctx.budget.left():.0f} s left in the part's budget, "
                     f"sampling and exact ground truth alone need ~{need:.0f} s.")
            continue
        _vectors(ctx, n, mix, cal, prev, nq)
