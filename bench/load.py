"""Mixed load through the real HTTP API (hardening): 32 clients for 60 s asking FAQ and RAG questions and leaving
feedback while an admin uploads documents; zero errors, every acknowledged feedback row in the store, p95 per path.

`mixed_load()` is the driver (tests/test_load.py runs it, bounded, against an in-process server); `run()` is the
benchmark part: the sample knowledge base, the default generator behind its bounded queue, `bench.server`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from .common import ROOT, PartContext, bench_config, figure, fmt, now, summarize, temp_dir

logger = logging.getLogger(__name__)

RAG_NEW_TOKENS = 32
RAG_CONTEXT_TOKENS = 512


@dataclass
class LoadPlan:
    """What each of `clients` simulated customers does, one request at a time, until `duration_s` is over."""

    clients: int = 32
    duration_s: float = 60.0
    rag_share: float = 0.1  # of requests: a question for the documents (the generator's bounded queue)
    feedback_share: float = 0.1  # of requests: thumbs up/down on the client's last answer
    ingest_every_s: float = 10.0  # the admin uploads one new document this often (0: no admin)
    request_timeout_s: float = 300.0
    seed: int = 0


@dataclass
class LoadResult:
    wall_s: float = 0.0
    ms: dict[str, list[float]] = field(default_factory=lambda: {"faq": [], "rag": [], "refusal": [], "busy": [],
                                                                 "other": [], "feedback": [], "ingest": []})
    server_ms: dict[str, list[float]] = field(default_factory=dict)  # pipeline time in the trace, per answer kind
    questions: dict[str, list[str]] = field(default_factory=dict)  # a few questions per answer kind
    errors: list[str] = field(default_factory=list)  # transport errors, HTTP >= 400, `error` answers that are not busy
    feedback_ids: list[int] = field(default_factory=list)  # acknowledged by the server
    ingested: list[str] = field(default_factory=list)  # sources the server reported as added
    busy_texts: set[str] = field(default_factory=set)

    @property
    def answers(self) -> int:
        return sum(len(self.ms[k]) for k in ("faq", "rag", "refusal", "busy", "other"))

    def summary(self) -> dict[str, Any]:
        return {"wall_s": round(self.wall_s, 2), "answers": self.answers,
                "answers_per_s": round(self.answers / self.wall_s, 2) if self.wall_s else 0.0,
                "ms": {k: summarize(v) for k, v in self.ms.items()},
                "server_ms": {k: summarize(v) for k, v in self.server_ms.items()},
                "questions": {k: v[:5] for k, v in self.questions.items()}, "errors": len(self.errors),
                "error_samples": self.errors[:10], "feedback_acked": len(self.feedback_ids),
                "ingested": len(self.ingested)}


def _classify(kind: str | None, steps: list[dict]) -> str:
    """faq | rag | refusal | busy | other (smalltalk, suggestions) | error, from an /api/ask answer's kind and
    trace steps."""
    if kind == "error":
        if any(s.get("stage") == "generate" and (s.get("detail") or {}).get("skipped") == "busy" for s in steps):
            return "busy"
        return "error"
    return kind if kind in ("faq", "rag", "refusal") else "other"


async def mixed_load(base: str, *, faq_questions: list[str], rag_questions: list[str], admin_password: str | None,
                     plan: LoadPlan | None = None) -> LoadResult:
    """Run the plan against the server at `base`; stops by itself after `plan.duration_s` (plus the requests in
    flight, each bounded by `plan.request_timeout_s`)."""
    import httpx

    plan = plan or LoadPlan()
    out = LoadResult()
    t_end = time.perf_counter() + plan.duration_s

    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(plan.request_timeout_s),
                                 limits=httpx.Limits(max_connections=plan.clients + 4)) as client:

        async def timed(method: str, path: str, **kw) -> tuple[httpx.Response | None, float]:
            t0 = time.perf_counter()
            try:
                r = await client.request(method, path, **kw)
            except httpx.HTTPError as e:
                out.errors.append(f"{method} {path}: {type(e).__name__}: {e}")
                return None, 0.0
            ms = (time.perf_counter() - t0) * 1000
            if r.status_code >= 400:
                out.errors.append(f"{method} {path}: HTTP {r.status_code}: {r.text[:200]}")
                return None, ms
            return r, ms

        async def customer(i: int) -> None:
            rng = random.Random(plan.seed * 1000 + i)
            last_trace = None
            while time.perf_counter() < t_end:
                x = rng.random()
                if last_trace and x < plan.feedback_share:
                    r, ms = await timed("POST", "/api/feedback",
                                        json={"trace_id": last_trace, "rating": rng.choice((1, -1))})
                    if r is not None:
                        out.ms["feedback"].append(ms)
                        out.feedback_ids.append(int(r.json()["id"]))
                    last_trace = None
                    continue
                rag = bool(rag_questions) and plan.feedback_share <= x < plan.feedback_share + plan.rag_share
                q = rng.choice(rag_questions if rag else faq_questions)
                r, ms = await timed("POST", "/api/ask", json={"question": q})
                if r is None:
                    continue
                body = r.json()
                steps = body.get("trace", {}).get("steps", [])
                kind = _classify(body.get("kind"), steps)
                if kind == "error":
                    out.errors.append(f"/api/ask {q!r}: error answer {body.get('text', '')[:120]!r}, last trace "
                                      f"step {json.dumps(steps[-1] if steps else None, ensure_ascii=False)[:300]}")
                    continue
                if kind == "busy":
                    out.busy_texts.add(body.get("text", ""))
                out.ms[kind].append(ms)
                out.server_ms.setdefault(kind, []).append(sum(st.get("ms", 0.0) for st in steps))
                if len(out.questions.setdefault(kind, [])) < 5 and q not in out.questions[kind]:
                    out.questions[kind].append(q)
                last_trace = body.get("trace", {}).get("id") or last_trace

        async def admin() -> None:
            r, _ = await timed("POST", "/api/admin/login", json={"password": admin_password})
            if r is None:
                return
            headers = {"Authorization": f"Bearer {r.json()['token']}"}
            n = 0
            while time.perf_counter() < t_end:
                n += 1
                name = f"load-test-{n:03d}.md"
                text = (f"# Load test notice {n}\n\n## Opening hours {n}\n\nBranch {n} of the load test opens at "
                        f"{8 + n % 4}:00 and closes at {18 + n % 3}:00 on weekdays; token {secrets.token_hex(8)}.\n")
                r, ms = await timed("POST", "/api/admin/ingest", headers=headers,
                                    files=[("files", (name, text.encode(), "text/markdown"))])
                if r is not None:
                    out.ms["ingest"].append(ms)
                    for row in r.json()["results"]:
                        if row.get("status") == "added":
                            out.ingested.append(row["source"])
                        else:
                            out.errors.append(f"ingest {name}: {row.get('status')}: {row.get('error')}")
                await asyncio.sleep(max(0.0, min(plan.ingest_every_s, t_end - time.perf_counter())))

        t0 = time.perf_counter()
        tasks = [customer(i) for i in range(plan.clients)]
        if admin_password and plan.ingest_every_s > 0:
            tasks.append(admin())
        await asyncio.gather(*tasks)
        out.wall_s = time.perf_counter() - t0
    return out


def verify_stored(base: str, admin_password: str, result: LoadResult) -> dict[str, Any]:
    """After the load: acknowledged feedback rows and uploaded documents that the store does not have."""
    import httpx

    r = httpx.post(f"{base}/api/admin/login", json={"password": admin_password}, timeout=60)
    r.raise_for_status()
    headers = {"Authorization": f"Bearer {r.json()['token']}"}
    r = httpx.get(f"{base}/api/admin/feedback", params={"limit": 10_000}, headers=headers, timeout=60)
    r.raise_for_status()
    stored = {int(row["id"]) for row in r.json()["feedback"]}
    r = httpx.get(f"{base}/api/admin/documents", headers=headers, timeout=60)
    r.raise_for_status()
    docs = r.json()["documents"]
    sources = {d["source"] for d in docs}
    return {"feedback_lost": sorted(set(result.feedback_ids) - stored),
            "documents_lost": sorted(set(result.ingested) - sources)}


# ---------------------------------------------------------------------------------------------- the part
def sample_questions(paraphrases: bool = True) -> tuple[list[str], list[str]]:
    """(FAQ questions: the sample FAQ's standard and similar questions, and with `paraphrases` the eval set's FAQ
    paraphrases — some of which fall through to RAG —, RAG questions: the eval set's document questions)."""
    from faq_bot.ingest import read_faqs

    from .data import sample_eval_rag_questions

    faq_qs: list[str] = []
    for path in sorted((ROOT / "knowledge" / "faq").iterdir()):
        for faq in read_faqs(path.read_bytes(), path.name):
            faq_qs += faq.all_questions()
    for line in (ROOT / "knowledge" / "eval" / "sample_eval.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line) if line.strip() else {}
        if paraphrases and row.get("faq_id") and not row.get("history"):
            faq_qs.append(row["question"])
    return faq_qs, sample_eval_rag_questions()


def _one_client(base: str, texts: list[str]) -> list[float]:
    import httpx

    ms = []
    with httpx.Client(base_url=base, timeout=300) as c:
        for t in texts:
            t0 = time.perf_counter()
            r = c.post("/api/ask", json={"question": t})
            r.raise_for_status()
            ms.append((time.perf_counter() - t0) * 1000)
    return ms


def run(ctx: PartContext) -> None:
    from faq_bot.knowledge import KnowledgeBase

    from .concurrency import Server

    res = ctx.result
    rag = not ctx.quick
    plan = LoadPlan(duration_s=60.0 if not ctx.quick else 10.0, rag_share=0.1 if rag else 0.0,
                    ingest_every_s=10.0 if not ctx.quick else 3.0)
    overrides = {"app.rate_limit_per_min": 10**9, "generate.max_new_tokens": RAG_NEW_TOKENS,
                 "generate.context_tokens": RAG_CONTEXT_TOKENS}
    res.config = {"plan": plan.__dict__, "endpoints": ["POST /api/ask", "POST /api/feedback", "POST /api/admin/ingest"],
                  "server": "bench.server: uvicorn, create_app(ui=False), default config except the overrides",
                  "overrides": overrides, "rag": rag,
                  "data": "sample knowledge base (knowledge/faq, knowledge/docs); FAQ questions repeat across "
                          "clients (the embedding cache is warm after the first round), as real traffic does"}
    if ctx.quick:
        res.note("--quick: 10 s, FAQ path, feedback and admin uploads only (no generator).")
    faq_qs, rag_qs = sample_questions(paraphrases=rag)  # without a generator only questions the FAQ stage answers
    password = secrets.token_urlsafe(16)
    with temp_dir("load") as d:
        t0 = now()
        cfg = bench_config(d)
        kb = KnowledgeBase(cfg)
        bad = [r.error for r in kb.ingest_paths([ROOT / "knowledge" / "faq", ROOT / "knowledge" / "docs"])
               if r.status == "error"]
        if bad:
            res.note(f"sample knowledge not all ingested: {bad}")
        kb.close()
        res.raw["setup_s"] = round(now() - t0, 1)
        base_over = {"store.path": str(cfg.store.path), "store.index_dir": str(cfg.store.index_dir),
                     "generate.adapters_dir": str(d / "runs"), "eval.runs_dir": str(d / "runs" / "eval"), **overrides}
        server = Server(base_over, rag=rag, lifetime_s=max(90.0, ctx.budget.left() + 30),
                        env={"FAQ_BOT_ADMIN_PASSWORD": password})
        try:
            res.raw["server_ready_s"] = round(server.wait_ready(max(30.0, min(240.0, ctx.budget.left() - 10))), 1)
            # Peers, measured first on the idle server: one client asking FAQ questions, then (full) one RAG question
            idle_faq = summarize(_one_client(server.base, random.Random(1).sample(faq_qs, min(40, len(faq_qs)))))
            idle_rag = summarize(_one_client(server.base, rag_qs[:2])) if rag else {"n": 0}
            res.raw["idle"] = {"faq_ms": idle_faq, "rag_ms": idle_rag}
            need = plan.duration_s + (60 if rag else 15)
            if not ctx.budget.fits(need, reserve_s=5):
                plan.duration_s = max(5.0, ctx.budget.left() - (60 if rag else 15))
                res.note(f"load shortened to {plan.duration_s:.0f} s to fit the part's budget")
            result = asyncio.run(mixed_load(server.base, faq_questions=faq_qs, rag_questions=rag_qs if rag else [],
                                            admin_password=password, plan=plan))
            lost = verify_stored(server.base, password, result)
        finally:
            server.stop()
    s = result.summary()
    res.raw["load"] = {**s, **lost, "busy_texts": sorted(result.busy_texts)}
    ms = s["ms"]
    c = plan.clients
    what = f"{c} clients, {plan.duration_s:.0f} s, mixed"
    n_err, n_lost = s["errors"], len(lost["feedback_lost"]) + len(lost["documents_lost"])
    res.add(figure("load_errors", f"Errors under load ({what})", n_err, "requests", n=s["answers"],
                   peer_label="requests answered", peer=s["answers"], target="0", target_check=lambda v, r: v == 0,
                   note=f"{s['answers_per_s']} answers/s; kinds " + ", ".join(f"{k} {v['n']}" for k, v in ms.items()
                                                                           if v["n"])
                   + (f"; first: {s['error_samples'][0][:160]}" if n_err else "")))
    res.add(figure("load_lost_rows", f"Acknowledged feedback rows / uploads missing from the store afterwards "
                   f"({what})", n_lost, "rows", peer_label="acknowledged (feedback + uploads)",
                   peer=s["feedback_acked"] + s["ingested"], target="0", target_check=lambda v, r: v == 0,
                   note=f"{s['feedback_acked']} feedback rows, {s['ingested']} documents uploaded during the load"))
    res.add(figure("load_faq_p95", f"FAQ answer p95 under load ({what})", ms["faq"].get("p95"), "ms",
                   n=ms["faq"]["n"], peer_label="FAQ p95, 1 client, idle server", peer=idle_faq.get("p95"),
                   ratio_label="slowdown", note=f"p50 {fmt(ms['faq'].get('p50'))} ms; in the pipeline (trace) p50 "
                                                f"{fmt(s['server_ms'].get('faq', {}).get('p50'))}, p95 "
                                                f"{fmt(s['server_ms'].get('faq', {}).get('p95'))} ms"))
    if rag:
        generated = result.ms["rag"] + result.ms["refusal"]  # every answer the generator produced
        n_gen, gen_ms = len(generated), summarize(generated).get("p95")
        from faq_bot.config import GenerateConfig

        g = GenerateConfig()
        res.add(figure("load_rag_p95", f"RAG answer p95 under load ({what}; generate.max_concurrent "
                       f"{g.max_concurrent}, max_queue {g.max_queue}, max_wait_s {g.max_wait_s:g}, max_new_tokens "
                       f"{RAG_NEW_TOKENS})", gen_ms, "ms", n=n_gen,
                       peer_label="RAG latency, 1 client, idle server (mean)", peer=idle_rag.get("mean"),
                       ratio_label="slowdown (queueing)",
                       note=f"{ms['busy']['n']} 'busy, please wait' answers past the queue limit or wait "
                            f"(p95 {fmt(ms['busy'].get('p95'))} ms)"))
    res.add(figure("load_feedback_p95", f"Feedback POST p95 under load ({what})", ms["feedback"].get("p95"), "ms",
                   n=ms["feedback"]["n"], peer_label="FAQ p95 under the same load", peer=ms["faq"].get("p95")))
    res.add(figure("load_ingest_p95", f"Admin upload p95 under load ({what})", ms["ingest"].get("p95"), "ms",
                   n=ms["ingest"]["n"], peer_label="FAQ p95 under the same load", peer=ms["faq"].get("p95"),
                   note="one small Markdown document per upload: parse, chunk, embed, index, commit"))
