"""Concurrency through the real HTTP API (uvicorn on 127.0.0.1, httpx clients): FAQ answers/s and p95 at 1, 4 and
16 clients, the RAG path with a few requests, and the FAQ p95 while a generation runs for another client."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import ROOT, PartContext, bench_config, figure, fmt, now, summarize, temp_dir
from .data import FaqData, QueryStream, clinc_available, embed_cached, sample_eval_rag_questions

logger = logging.getLogger(__name__)

LEVELS = (1, 4, 16)
FAQ_SET = 10_000
RAG_NEW_TOKENS = 32
RAG_CONTEXT_TOKENS = 512


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build_kb(d: Path, rag: bool, res, candidates: int = 2000) -> tuple[Any, list[str]]:
    """FAQ set (stored vectors) + sample documents when `rag`; returns (setup config, FAQ hit queries)."""
    from faq_bot.knowledge import KnowledgeBase, doc_id_for
    from faq_bot.schema import Doc

    cfg = bench_config(d, **{"embed.threads": 1})  # setup only; the server runs the default config
    kb = KnowledgeBase(cfg)
    data = FaqData(FAQ_SET)
    faqs = data.subset(FAQ_SET)
    questions = FaqData.questions(faqs)
    vecs, _ = embed_cached(questions, cfg.embed.faq_model)
    doc = Doc(id=doc_id_for("bench_faq.csv"), source="bench_faq.csv", type="csv", created=time.time(),
              sha256=hashlib.sha256("\n".join(questions).encode()).hexdigest())
    kb.store.replace_document(doc, faqs=faqs, faq_vectors={kb.faq_encoder.name: vecs})
    if rag:
        results = kb.ingest_paths([ROOT / "knowledge" / "docs"])
        bad = [r.error for r in results if r.status == "error"]
        if bad:
            res.note(f"sample documents not all ingested: {bad}")
    kb.sync()
    # FAQ-hit queries, chosen client-side with the library's own matcher (another process than the server: the
    # server's embedding cache stays cold). Warming the matcher here also trains and persists the FAQ head
    # beside the index, so the server loads it instead of training it.
    from faq_bot.faq import FaqMatcher
    from faq_bot.schema import Query

    matcher = FaqMatcher(cfg.faq, kb)
    matcher.warm_up()
    stream = QueryStream(data.test, data.seen_norm, seed=7)
    hits = []
    for t in stream.take(candidates):
        r = matcher.match(Query(text=t))
        if r.decision == "answer" and not r.exact and r.best.score >= cfg.faq.answer_threshold + 0.03:
            hits.append(t)
    return cfg, hits


class Server:
    """The bench.server child process (own process group), stopped by pid."""

    def __init__(self, overrides: dict, rag: bool, lifetime_s: float, env: dict[str, str] | None = None):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "bench.server", "--port", str(self.port), "--overrides", json.dumps(overrides),
               "--lifetime-s", str(int(lifetime_s))] + (["--rag"] if rag else [])
        self.proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, env={**os.environ, **(env or {})})

    def wait_ready(self, timeout_s: float) -> float:
        import httpx

        t0 = now()
        while now() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bench.server exited with {self.proc.returncode} before listening")
            try:
                if httpx.get(self.base + "/health", timeout=2.0).status_code == 200:
                    return now() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"bench.server not ready after {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _load(base: str, clients: int, texts: list[str], max_s: float, path: str = "/api/ask",
                stop: asyncio.Event | None = None) -> dict[str, Any]:
    """`clients` workers sending the texts (each once) one request at a time; stops when done, after max_s, or
    (after the request in flight) once `stop` is set."""
    import httpx

    queue = list(reversed(texts))
    lat, kinds, spans, stages, errors = [], [], [], [], 0
    t_end = time.perf_counter() + max_s
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(300.0),
                                 limits=httpx.Limits(max_connections=clients + 2)) as client:
        async def worker() -> None:
            nonlocal errors
            while queue and time.perf_counter() < t_end and not (stop is not None and stop.is_set()):
                q = queue.pop()
                t0 = time.perf_counter()
                try:
                    r = await client.post(path, json={"question": q})
                    body = r.json()
                except (httpx.HTTPError, ValueError):
                    errors += 1
                    continue
                t1 = time.perf_counter()
                if r.status_code != 200:
                    errors += 1
                    continue
                lat.append((t1 - t0) * 1000)
                kinds.append(body.get("kind"))
                steps = {s.get("stage"): s.get("ms", 0.0) for s in body.get("trace", {}).get("steps", [])}
                spans.append((t0, t1, steps.get("generate", 0.0)))
                stages.append(steps)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"lat": lat, "kinds": kinds, "spans": spans, "stages": stages, "errors": errors, "wall_s": wall}


def _faq_levels(ctx: PartContext, base: str, queries: list[str], cores: int, tag: str = "") -> tuple[dict, int]:
    """FAQ requests at 1, 4 and 16 clients; `tag` names a non-default server setup in keys and labels.

    Returns (per-level results, how many of `queries` were handed out).
    """
    res = ctx.result
    counts = {1: 30, 4: 60, 16: 120} if ctx.quick else {1: 100, 4: 200, 16: 400}
    max_s = 8.0 if ctx.quick else 15.0
    asyncio.run(_load(base, 1, queries[:5], 60))  # warm-up (first requests pay lazy imports)
    pos, out = 5, {}
    for c in LEVELS:
        texts = queries[pos:pos + counts[c]]
        pos += len(texts)
        r = asyncio.run(_load(base, c, texts, max_s))
        n = len(r["lat"])
        out[c] = {"answers_per_s": n / r["wall_s"] if r["wall_s"] else 0.0, "ms": summarize(r["lat"]),
                  "kinds": {k: r["kinds"].count(k) for k in set(r["kinds"])}, "errors": r["errors"], "n": n}
    res.raw["faq_levels" + ("_tuned" if tag else "")] = {str(k): v for k, v in out.items()}
    one = out[1]
    key, what = ("_tuned", f" [{tag}]") if tag else ("", "")
    for c in LEVELS:
        o = out[c]
        non_faq = sum(v for k, v in o["kinds"].items() if k != "faq")
        note = f"{o['n']} requests, {o['errors']} errors" + (f", {non_faq} not answered by the FAQ stage" if non_faq else "")
        res.add(figure(f"faq_c{c}_rps{key}", f"FAQ path answers/s, {c} client{'s' if c > 1 else ''}{what}", o["answers_per_s"],
                       "answers/s", peer_label=f"1-client rate x min({c}, {cores} cores)",
                       peer=one["answers_per_s"] * min(c, cores), ratio_label="fraction of ideal scaling", note=note))
        res.add(figure(f"faq_c{c}_p95{key}", f"FAQ path p95 latency, {c} client{'s' if c > 1 else ''}{what}", o["ms"].get("p95"),
                       "ms", n=o["n"], peer_label="p95 with 1 client", peer=one["ms"].get("p95"),
                       note=f"p50 {fmt(o['ms'].get('p50'))} ms"))
    return out, pos


def _rag_levels(ctx: PartContext, base: str, rag_qs: list[str], one_s: float, one_rate: float) -> None:
    """RAG answers/s with 4 clients (generation is serialized), when the budget allows 4 generations."""
    res = ctx.result
    n = 4
    if not ctx.budget.fits(one_s * n * 1.3 + 10, reserve_s=5):
        res.note(f"RAG path with 4 clients skipped: ~{one_s * n:.0f} s needed, {ctx.budget.left():.0f} s left.")
        return
    r = asyncio.run(_load(base, 4, (rag_qs * 4)[:n], one_s * n * 1.5 + 30))
    o = {"answers_per_s": len(r["lat"]) / r["wall_s"], "ms": summarize(r["lat"]), "kinds": r["kinds"],
         "errors": r["errors"], "generate_ms": [g for _, _, g in r["spans"]]}
    res.raw["rag_c4"] = o
    res.add(figure("rag_c4_rps", f"RAG path answers/s, 4 clients (max_new_tokens {RAG_NEW_TOKENS})", o["answers_per_s"],
                   "answers/s", n=len(o["kinds"]), peer_label="1-client rate (generation serialized: max_concurrent 1)",
                   peer=one_rate, note=f"p95 {fmt(o['ms'].get('p95'))} ms; kinds {o['kinds']}"))


def _faq_during_generation(ctx: PartContext, base: str, queries: list[str], rag_qs: list[str],
                           idle_p95: float, n_rag: int = 1, tag: str = "") -> tuple[float, float] | None:
    """One client asks RAG questions (the generator busy); another asks FAQ questions meanwhile.

    Returns (seconds, answers/s) of one RAG request (1 client, with the FAQ client running) for the RAG figures.
    """
    res = ctx.result
    key, what = ("_tuned", f" [{tag}]") if tag else ("", "")
    max_s = max(30.0, ctx.budget.left() - 20)

    async def both():
        stop = asyncio.Event()

        async def rag_then_stop():
            r = await _load(base, 1, (rag_qs * 2)[:n_rag], max_s)
            stop.set()
            return r

        bg_task = asyncio.create_task(rag_then_stop())
        await asyncio.sleep(0.2)
        fg = await _load(base, 1, queries, max_s, stop=stop)
        return await bg_task, fg

    bg, fg = asyncio.run(both())
    gen = bg["spans"]
    res.raw["rag_1_client" + key] = {"ms": bg["lat"], "kinds": bg["kinds"], "stages_ms": bg["stages"],
                                     "errors": bg["errors"]}
    if not gen or not any(g for *_, g in gen):
        res.note(f"RAG questions did not reach the generator (kinds {bg['kinds']}); no RAG or during-generation "
                 "figures.")
        return None
    windows = [(t1 - g / 1000.0, t1) for _, t1, g in gen if g]
    spans = fg["spans"]
    inside = [(t1 - t0) * 1000 for t0, t1, _ in spans if any(a <= t0 and t1 <= b for a, b in windows)]
    res.raw["faq_during_generation" + key] = {"windows_s": [round(b - a, 2) for a, b in windows], "faq_inside": len(inside),
                                        "faq_total": len(spans), "ms": summarize(inside)}
    rag_s = float(np.mean(bg["lat"])) / 1000
    rate = len(bg["lat"]) / bg["wall_s"]
    stage_s = {k: round(float(np.mean([st.get(k, 0.0) for st in bg["stages"]])) / 1000, 2)
               for k in ("faq", "retrieve", "rerank", "generate")}
    res.add(figure("rag_c1_latency" + key, f"RAG answer latency, 1 client (max_new_tokens {RAG_NEW_TOKENS}, "
                   f"context_tokens {RAG_CONTEXT_TOKENS}){what}", rag_s, "s", n=len(bg["lat"]),
                   peer_label="of which the generate step", peer=stage_s["generate"],
                   note=f"stages (s): {stage_s}; kinds {bg['kinds']}; a FAQ client ran at the same time"))
    if len(inside) < 5:
        res.note(f"FAQ-during-generation: only {len(inside)} FAQ answers fell inside a generation; no figure.")
        return rag_s, rate
    s = summarize(inside)
    res.add(figure("faq_during_gen_p95" + key, f"FAQ path p95 while a generation runs for another client{what}",
                   s["p95"], "ms",
                   n=s["n"], peer_label="FAQ p95, 1 client, idle", peer=idle_p95, ratio_label="slowdown",
                   target="within 2x of idle", target_check=lambda v, r: r <= 2.0,
                   note=f"p50 {fmt(s['p50'])} ms; generations of {[round(b - a, 1) for a, b in windows]} s"))
    return rag_s, rate


def run(ctx: PartContext) -> None:
    res = ctx.result
    if not clinc_available():
        res.note("CLINC150 absent: concurrency part skipped (it needs the FAQ set).")
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    rag = not ctx.quick
    overrides_extra = {"app.rate_limit_per_min": 10**9, "generate.max_new_tokens": RAG_NEW_TOKENS,
                       "generate.context_tokens": RAG_CONTEXT_TOKENS}
    res.config = {"faq_questions": FAQ_SET, "levels": LEVELS, "endpoint": "POST /api/ask", "client": "httpx.AsyncClient",
                  "server": "uvicorn, create_app(ui=False), default config except the overrides",
                  "overrides": overrides_extra, "rag": rag, "faq_hit_queries": "FaqMatcher decision 'answer' with score >= answer_threshold + 0.03"}
    if ctx.quick:
        res.note("--quick: FAQ path only (no generator, no RAG path).")
    with temp_dir("conc") as d:
        t0 = now()
        setup_cfg, queries = _build_kb(d, rag, res, candidates=700 if ctx.quick else 2000)
        res.raw["setup_s"] = round(now() - t0, 1)
        res.raw["faq_hit_queries"] = len(queries)
        base_over = {"store.path": str(setup_cfg.store.path), "store.index_dir": str(setup_cfg.store.index_dir),
                     "generate.adapters_dir": str(d / "runs"), "eval.runs_dir": str(d / "runs" / "eval"),
                     **overrides_extra}
        rag_qs = sample_eval_rag_questions() if rag else []
        server = Server(base_over, rag=rag, lifetime_s=max(60.0, ctx.budget.left() + 30))
        try:
            res.raw["server_ready_s"] = round(server.wait_ready(max(30.0, min(240.0, ctx.budget.left() - 10))), 1)
            levels, used = _faq_levels(ctx, server.base, queries, cores)
            if rag and not rag_qs:
                res.note("No RAG questions in knowledge/eval/sample_eval.jsonl: RAG figures skipped.")
            elif rag and ctx.budget.left() < 60:
                res.note("RAG path and FAQ-during-generation skipped: part budget used up.")
            elif rag:
                one = _faq_during_generation(ctx, server.base, queries[used:], rag_qs,
                                             levels[1]["ms"].get("p95") or float("nan"))
                if one:
                    _rag_levels(ctx, server.base, rag_qs[2:] or rag_qs, *one)
        finally:
            server.stop()
        # Same queries against a fresh server process (cold cache) with each library's own thread count, the
        # set-up before `app.threads` (default 1) existed: the peer that shows what the cap buys.
        if ctx.budget.left() > (25 if ctx.quick else 45):
            label = "app.threads=null: library default threads"
            tuned_rag = rag and bool(rag_qs) and ctx.budget.left() > 120
            tuned = Server({**base_over, "app.threads": None}, rag=tuned_rag,
                           lifetime_s=max(60.0, ctx.budget.left() + 30))
            try:
                tuned.wait_ready(max(30.0, min(180.0, ctx.budget.left() - 10)))
                t_levels, t_used = _faq_levels(ctx, tuned.base, queries, cores, tag=label)
                if tuned_rag and ctx.budget.left() > 40:
                    _faq_during_generation(ctx, tuned.base, queries[t_used:], rag_qs,
                                           t_levels[1]["ms"].get("p95") or float("nan"), n_rag=1, tag=label)
            finally:
                tuned.stop()
        else:
            res.note("Tuned-server FAQ levels skipped: part budget used up.")
    if len(queries) < 400:
        res.note(f"only {len(queries)} FAQ-hit queries were available; later levels may have fewer requests.")
