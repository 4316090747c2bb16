"""FAQ match end to end (query embedding included): FaqMatcher over a KnowledgeBase vs a llama-index
VectorStoreIndex retriever over the same embeddings and the same encoder, vs the query embedding alone."""

from __future__ import annotations

import gc
import hashlib
import math
import logging
import time
from typing import Any, Callable

import numpy as np

from .common import (PartContext, bench_config, figure, fmt, fmt_n, ms_since, now, round_robin,
                     summarize, temp_dir, time_calls)
from .data import FaqData, QueryStream, ZhEnVocab, clinc_available, embed_cached, embeddings_cached, synthetic_faqs

logger = logging.getLogger(__name__)

TARGET_P95_MS = {10_000: 5.0, 100_000: 10.0}


def _llama_retriever(enc, questions: list[str], vecs: np.ndarray, faq_ids: list[str], top_k: int):
    """A llama-index VectorStoreIndex (default in-memory SimpleVectorStore) over precomputed embeddings, whose
    query embedding is our encoder (same model, same LRU cache behaviour, same cost)."""
    from llama_index.core import VectorStoreIndex
    from llama_index.core.embeddings import BaseEmbedding
    from llama_index.core.schema import TextNode
    from pydantic import PrivateAttr

    class OurEncoderEmbedding(BaseEmbedding):
        _enc: Any = PrivateAttr()

        def __init__(self, encoder: Any, **kwargs: Any):
            super().__init__(model_name=encoder.name, **kwargs)
            self._enc = encoder

        def _get_query_embedding(self, query: str) -> list[float]:
            return self._enc.encode_query(query).tolist()

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_query_embedding(query)

        def _get_text_embedding(self, text: str) -> list[float]:
            return self._enc.encode_queries([text])[0].tolist()  # FAQ questions are stored query-side

    t0 = now()
    nodes = [TextNode(id_=f"q{i}", text=q, embedding=v, metadata={"faq_id": f})
             for i, (q, v, f) in enumerate(zip(questions, vecs.tolist(), faq_ids))]
    index = VectorStoreIndex(nodes, embed_model=OurEncoderEmbedding(enc), insert_batch_size=len(nodes) + 1,
                             show_progress=False)
    build_s = now() - t0
    return index.as_retriever(similarity_top_k=top_k), build_s


def _timed(fn: Callable[[str], Any], texts, sink: list | None = None) -> Callable[[], float]:
    it = iter(texts)

    def call() -> float | None:
        try:
            t = next(it)
        except StopIteration:
            return None
        t0 = now()
        r = fn(t)
        ms = ms_since(t0)
        if sink is not None:
            sink.append((t, r))
        return ms

    return call


def _one_size(ctx: PartContext, n: int, faqs, stream: QueryStream, model: str, head: str | None = None) -> float:
    """Measure one FAQ-set size; returns the matcher build time (index + head training), to size the next."""
    from faq_bot.faq import FaqMatcher
    from faq_bot.knowledge import KnowledgeBase, doc_id_for
    from faq_bot.schema import Doc, Query

    res, quick = ctx.result, ctx.quick
    tag = fmt_n(n)
    questions = [q for f in faqs for q in f.all_questions()]
    faq_ids = [f.id for f in faqs for _ in f.all_questions()]
    vecs, emb_info = embed_cached(questions, model)
    raw: dict[str, Any] = {"questions": len(questions), "faqs": len(faqs), "embeddings": emb_info}
    res.raw.setdefault("sizes", {})[tag] = raw
    rounds = 40 if quick else 150
    peer_cap, peer_cap_s = (6, 5.0) if quick else (40, 25.0)
    extra = ctx.options.get("overrides") or {}
    if "embed.faq_model" in extra:  # the stored vectors below are `model`'s
        raise ValueError("--set embed.faq_model is not supported: the FAQ set is embedded with the default encoder")
    over = {**extra, **({"faq.head": head} if head else {})}
    with temp_dir("faq") as d:
        cfg = bench_config(d, **over)
        kb = KnowledgeBase(cfg)
        enc = kb.faq_encoder
        doc = Doc(id=doc_id_for("bench_faq.csv"), source="bench_faq.csv", type="csv", created=time.time(),
                  sha256=hashlib.sha256("\n".join(questions).encode()).hexdigest())
        t0 = now()
        kb.store.replace_document(doc, faqs=faqs, faq_vectors={enc.name: vecs})
        raw["store_s"] = round(now() - t0, 2)
        t0 = now()
        kb.sync()
        matcher = FaqMatcher(cfg.faq, kb)
        matcher.warm_up()  # builds the matcher: question bank, BM25, and trains the head (persisted beside the index)
        sync_s = now() - t0
        info = matcher.info()
        raw["matcher"] = {k: info.get(k) for k in ("kind", "head_used", "bm25_weight", "lex_used", "lex_weight",
                                                   "check_train_ms", "lex_check_train_ms", "reason", "refresh_ms")}
        # Tuned variant: same store, index and persisted head, `embed.threads: 1`.
        cfg_t = bench_config(d, **{**over, "embed.threads": 1})
        kb_t = KnowledgeBase(cfg_t)
        matcher_t = FaqMatcher(cfg_t.faq, kb_t)
        matcher_t.warm_up()
        enc_t = kb_t.faq_encoder
        logger.info("faq %s: KB + matcher ready (%.1f s), building the llama-index peer", tag, sync_s)
        retriever, peer_build_s = _llama_retriever(enc, questions, vecs, faq_ids, cfg.faq.top_k)
        logger.info("faq %s: peer built in %.1f s; measuring for ~%.0f s", tag, peer_build_s,
                    ctx.options.get("size_s") or 0)
        raw.update(sync_s=round(sync_s, 2), llama_build_s=round(peer_build_s, 2))

        def tuned(t: str):
            return matcher_t.match(Query(text=t))

        take = rounds + 5
        texts = {k: stream.take(take) for k in ("ours", "ours_tuned", "floor", "floor_tuned")}
        texts["peer"] = stream.take(peer_cap + 2)
        # warm-up on fresh texts of their own (first calls pay lazy imports, page faults)
        for t in stream.take(3):
            matcher.match(Query(text=t))
        for t in stream.take(3):
            tuned(t)
        for t in stream.take(2):
            retriever.retrieve(t)
        sinks = {k: [] for k in texts}
        fns = {"ours": lambda t: matcher.match(Query(text=t)), "ours_tuned": tuned, "floor": enc.encode_query,
               "floor_tuned": enc_t.encode_query, "peer": retriever.retrieve}
        variants = {k: _timed(fns[k], texts[k], sinks[k]) for k in fns}
        # Two phases, each interleaved: the default-config calls leave BLAS/OpenMP worker threads spinning,
        # which would slow a 1-thread call right after them.
        max_s = ctx.options.get("size_s") or max(8.0, ctx.budget.left() * 0.5)
        ms = round_robin({k: variants[k] for k in ("ours", "floor", "peer")}, rounds=rounds, max_s=0.6 * max_s,
                         caps={"peer": peer_cap}, cap_s={"peer": max(peer_cap_s, 0.3 * max_s)})
        time.sleep(0.2)
        for t in stream.take(3):
            tuned(t)
        ms |= round_robin({k: variants[k] for k in ("ours_tuned", "floor_tuned")}, rounds=rounds, max_s=0.4 * max_s)
        # Cached: the same texts again (LRU hits): what a repeated customer question costs.
        cached = {}
        for k in ("ours", "floor", "peer", "ours_tuned"):  # tuned last (see the phases above)
            again = [t for t, _ in sinks[k]][-min(50 if k != "peer" else 8, len(sinks[k])):]
            cached[k], _ = time_calls(fns[k], again, max_s=max(2.0, 0.1 * max_s))
        decisions = [r.decision for _, r in sinks["ours"]]
        exact = sum(bool(r.exact) for _, r in sinks["ours"])
        del retriever
        gc.collect()
    s = {k: summarize(v) for k, v in ms.items()}
    sc = {k: summarize(v) for k, v in cached.items()}
    hit_rate = decisions.count("answer") / len(decisions) if decisions else float("nan")
    raw.update(miss_ms=s, cached_ms=sc, hit_rate=round(hit_rate, 3), exact_matches=exact,
               suggest_rate=round(decisions.count("suggest") / max(1, len(decisions)), 3))
    head_note = "".join(f" [{k}={v}]" for k, v in over.items())
    target = TARGET_P95_MS.get(n)
    tgt = f"≤ {target:g} ms" if target else ""
    chk = (lambda v, r, t=target: v <= t) if target else None
    conf = "config overrides" if extra else "default config"
    res.add(figure(f"faq_{tag}_p95", f"FAQ match p95, {tag} questions (ours, {conf}){head_note}", s["ours"].get("p95"),
                   "ms", n=s["ours"]["n"], peer_label="llama-index retriever p95", peer=s["peer"].get("p95"),
                   target=tgt, target_check=chk,
                   note=f"p50 {fmt(s['ours'].get('p50'))} vs {fmt(s['peer'].get('p50'))} ms (peer n={s['peer']['n']}); "
                        f"FAQ answered for {hit_rate:.0%} of queries"))
    res.add(figure(f"faq_{tag}_floor", f"FAQ match p95 vs the query embedding alone, {tag} ({conf}){head_note}",
                   s["ours"].get("p95"), "ms", peer_label="encode_query p95 (floor)", peer=s["floor"].get("p95"),
                   note=f"p50 {fmt(s['ours'].get('p50'))} vs floor {fmt(s['floor'].get('p50'))} ms"))
    res.add(figure(f"faq_{tag}_tuned_p95", f"FAQ match p95, {tag} (embed.threads=1){head_note}",
                   s["ours_tuned"].get("p95"), "ms", n=s["ours_tuned"]["n"], peer_label="encode_query p95, 1 thread",
                   peer=s["floor_tuned"].get("p95"), target=tgt, target_check=chk,
                   note=f"p50 {fmt(s['ours_tuned'].get('p50'))} vs floor {fmt(s['floor_tuned'].get('p50'))} ms"))
    res.add(figure(f"faq_{tag}_cached_p95", f"FAQ match p95, repeated question (cached embedding), {tag}",
                   sc["ours"].get("p95"), "ms", n=sc["ours"].get("n"), peer_label="llama-index retriever, cached",
                   peer=sc["peer"].get("p95"),
                   note=f"tuned {fmt(sc['ours_tuned'].get('p95'))} ms; cache lookup alone {fmt(sc['floor'].get('p95'))} ms"))
    res.add(figure(f"faq_{tag}_build", f"FAQ index + matcher build from stored vectors (sync + warm_up), {tag}"
                   + head_note, sync_s, "s",
                   peer_label="llama-index VectorStoreIndex build", peer=peer_build_s,
                   note=f"head: {raw['matcher'].get('kind')}, used {raw['matcher'].get('head_used')}, lexical weight "
                        f"{raw['matcher'].get('lex_weight')}; store insert "
                        f"{raw['store_s']} s; embeddings {'cached' if not emb_info['computed'] else 'computed'}"))
    return sync_s


def run(ctx: PartContext) -> None:
    from faq_bot.config import EmbedConfig
    from faq_bot.faq_head import check_rounds

    res = ctx.result
    sizes = ctx.options.get("sizes") or ([10_000] if ctx.quick else [1_000, 10_000, 100_000])
    model = EmbedConfig().faq_model
    res.config = {"sizes": sizes, "faq_model": model, "questions_per_faq": 10, "faq_top_k": 20,
                  "peer": "llama-index-core VectorStoreIndex (SimpleVectorStore) retriever, similarity_top_k=20, "
                          "BaseEmbedding wrapping our encoder",
                  "default_config": "configs defaults (embed.threads 2, faq.head logreg, faq.bm25 on)",
                  "tuned": "embed.threads 1 (config)"}
    if ctx.quick:
        res.note("--quick: 10k questions only (the target size), fewer queries.")
    if not clinc_available():
        res.note("CLINC150 (../shared/data/clinc150/data_full.json) is absent: 10k/100k sets skipped; 1k synthetic.")
        vocab = ZhEnVocab(seed=11)
        faqs = synthetic_faqs(100, vocab, similar=9)
        stream = QueryStream([(vocab.query(3) + " ?", "") for _ in range(5000)], set())
        _one_size(ctx, 1_000, faqs, stream, model)
        return
    t0 = now()
    data = FaqData(max(sizes))
    stream = QueryStream(data.test, data.seen_norm)
    res.raw["data_s"] = round(now() - t0, 2)
    res.note("Queries: CLINC150 test utterances (then wrapped variants), each used once; none equals a stored "
             "question after normalization, so all take the vector path. FAQ questions: train+val utterances "
             "grouped by intent, 10 per FAQ, plus template/word-shuffle paraphrases beyond 18k.")
    weights = {n: math.sqrt(n) for n in sizes}  # bigger sets get more of the query time
    build = None  # (n, seconds) of the last matcher build: the head's training grows faster than the FAQ set
    for i, n in enumerate(sizes):
        faqs = data.subset(n)
        head = None
        # the held-out check pools fewer rounds as FAQs grow (`check_rounds`; 10 questions per FAQ here), so the
        # extrapolation takes the rounds (+1 for the final fit) out before scaling and puts them back after
        train = (build[1] * (n / build[0]) ** 1.5 * (check_rounds(n // 10) + 1) / (check_rounds(build[0] // 10) + 1)
                 if build else 0.001 * n * math.sqrt(n / 10_000))
        if train > 0.5 * ctx.budget.left():
            head = "none"
            res.note(f"{fmt_n(n)} questions: the default FAQ head (logreg over {n // 10:,} FAQs) would train for "
                     f"~{train:.0f} s here (scaled by n^1.5 from the last build); measured with `faq.head: none` (the "
                     "same query path, untrained).")
            train = 0.0
        # setup: KB + matcher build (BM25 weight search grows ~n^1.5 too) + the llama-index peer build
        setup = n * 0.0008 + 4 + train + (0 if embeddings_cached(FaqData.questions(faqs), model) else n / 700)
        later = [m for m in sizes[i + 1:]]
        query_s = (ctx.budget.left() - setup) * weights[n] / sum(weights[m] for m in [n, *later])
        if setup + 10 > ctx.budget.left() or query_s < 4:
            res.note(f"{fmt_n(n)} questions skipped: ~{setup:.0f} s of setup does not fit the {ctx.budget.left():.0f} s "
                     f"left in the part's budget (run `python -m bench faq --sizes {n} --budget-s "
                     f"{int(setup * 2.5 + 60)} --tag {fmt_n(n)}`).")
            continue
        ctx.options["size_s"] = query_s
        b = _one_size(ctx, n, faqs, stream, model, head)
        if head is None:
            build = (n, b)
        gc.collect()
