"""Evaluation runner: one function per mode (faq, retrieval, rgb, generator, end_to_end) returning a plain dict report.

Every function takes components that are already built (KnowledgeBase, Generator, Pipeline), so the CLI and the
admin UI create heavy objects once and reuse them. Nothing here parses arguments or writes files; see
`faq_bot.eval.report` for the files and `faq_bot.eval.cli` for the commands.

Report shape (all modes): ``mode``, ``data``, ``summary`` (flat headline numbers, what the CLI prints),
``models`` (per-model aggregates), ``errors`` (malformed lines and per-item failures, with line numbers),
``latency_ms`` (label -> list of ms, for the histogram), ``memory``, ``rows`` (one dict per question and model:
the CSV) and, where a base model and adapters ran on the same items, ``comparison`` and ``badcases``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from faq_bot.config import FaqConfig, OpenAIBackendConfig, secrets_scrubbed
from faq_bot.eval.datasets import EvalItem, FaqQuery, load_rgb
from faq_bot.eval.metrics import (
    DEFAULT_REFUSAL_TEXTS,
    bleu,
    bootstrap_delta,
    contains_answer,
    corpus_bleu,
    fact_flag,
    faq_metrics,
    percentiles,
    pick_threshold,
    refusal_confusion,
    rgb_correct,
    rgb_fact_rates,
    rgb_labels,
    rgb_reject_ok,
    rouge_l,
    threshold_sweep,
)
from faq_bot.schema import Chunk, Doc, Hit, Query

logger = logging.getLogger(__name__)

__all__ = [
    "BASE",
    "DEFAULT_NOISE_RATES",
    "Judge",
    "Progress",
    "RetrievalQuery",
    "build_rgb_passage_kb",
    "calibrate_faq",
    "compare_models",
    "context_hits",
    "load_rgb_sweep",
    "peak_memory",
    "retrieval_queries_from_eval",
    "run_e2e",
    "run_faq",
    "run_generator",
    "run_retrieval",
    "run_rgb",
]

BASE = "base"  # the label of the base model (adapter None) in every report
DEFAULT_NOISE_RATES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
DEFAULT_KS = (1, 3, 5, 10)
RETRIEVAL_MODES = ("dense", "sparse", "hybrid", "hybrid+rerank")
# metrics compared between base and adapters (per item; None values are left out pairwise)
COMPARE_METRICS = ("correct", "rouge_l", "bleu", "embed_sim", "judge")

ProgressFn = Callable[[int, int, str], None]


# ---------------------------------------------------------------------------- shared helpers


class Progress:
    """A tqdm bar on stderr plus an optional callback ``(done, total, desc)`` for the admin UI."""

    def __init__(self, total: int, desc: str, *, bar: bool = True, callback: ProgressFn | None = None):
        self.total, self.desc, self.done, self.callback = total, desc, 0, callback
        self._bar = None
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)
        if callback:
            callback(0, total, desc)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        if self.callback:
            self.callback(self.done, self.total, self.desc)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def model_label(adapter: str | None) -> str:
    return adapter or BASE


def context_hits(passages: Sequence[str]) -> list[Hit]:
    """Given passages -> generator hits, in order (RGB style: no retrieval)."""
    return [Hit(chunk=Chunk(id=f"ctx{i}", doc_id="ctx", text=p, source="context"), score=1.0)
            for i, p in enumerate(passages, start=1)]


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process (MB) and, on a GPU, peak CUDA memory allocated by torch (MB)."""
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux
    out = {"peak_rss_mb": round(rss_kb / 1024, 1)}
    torch = sys.modules.get("torch")  # never import torch just to ask
    if torch is not None and torch.cuda.is_available():
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _lat(values: Sequence[float]) -> dict[str, float | None]:
    p = percentiles(values) if values else {"p50": math.nan, "p95": math.nan}
    return {k: (None if math.isnan(v) else round(v, 2)) for k, v in p.items()}


def _lang_of(text: str) -> str:
    from faq_bot.generate.prompts import detect_language

    return detect_language(text)


class Judge:
    """LLM-as-judge through any OpenAI-compatible endpoint (`eval.judge`): 0-1 score of answer vs reference."""

    _PROMPT = (
        "You grade a customer-service answer against the reference answer.\n"
        "Question: {question}\nReference answer: {reference}\nAnswer to grade: {answer}\n\n"
        "Score 10 when the answer states the reference facts correctly, 0 when it is wrong, missing or refuses "
        "without need, in between for partial answers. Reply with the number only."
    )

    def __init__(self, cfg: OpenAIBackendConfig):
        self.cfg = cfg
        self._client = None

    def score(self, question: str, reference: str, answer: str) -> float:
        """Score in [0, 1]. Raises on endpoint errors or an unparsable reply (the caller records them)."""
        if self._client is None:
            from openai import OpenAI

            self._client = OpenAI(base_url=self.cfg.base_url, api_key=self.cfg.api_key.get_secret_value(),
                                  timeout=self.cfg.timeout_s)
        with secrets_scrubbed(self.cfg.api_key):  # the error goes into the report: never with an echoed key
            resp = self._client.chat.completions.create(
                model=self.cfg.model, temperature=0.0, max_tokens=8,
                messages=[{"role": "user", "content": self._PROMPT.format(question=question, reference=reference,
                                                                          answer=answer)}])
        text = resp.choices[0].message.content or ""
        m = re.search(r"\d+(?:\.\d+)?", text)
        if not m:
            raise ValueError(f"judge reply has no score: {text[:80]!r}")
        return max(0.0, min(1.0, float(m.group()) / 10.0))


# ---------------------------------------------------------------------------- FAQ


def _default_thresholds() -> list[float]:
    return [round(x, 2) for x in np.arange(0.0, 1.0001, 0.01)]


def _top3_at(records: Sequence[dict], t: float) -> dict[str, float]:
    """Suggestion quality at threshold t: among queries whose best score >= t ("answered or suggested"),
    the share whose expected FAQ is among the top-3 candidates scoring >= t (precision), and the same
    count over all in-scope queries (recall)."""
    shown = hits = 0
    n_in = sum(r["gold"] is not None for r in records)
    for r in records:
        ranked = r["ranked"]
        if not ranked or ranked[0][1] < t:
            continue
        shown += 1
        if r["gold"] is not None and r["gold"] in [i for i, s in ranked[:3] if s >= t]:
            hits += 1
    return {"top3_precision": hits / shown if shown else 0.0, "top3_recall": hits / n_in if n_in else 0.0,
            "shown": shown}


def calibrate_faq(
    records: Sequence[dict],
    *,
    answer_threshold: float,
    suggest_threshold: float,
    objective: str = "max_accuracy",
    target: float = 0.97,
    suggest_target: float = 0.9,
    thresholds: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Score FAQ matching from ranked candidates and choose thresholds (the calibration path of `run_faq`).

    Args:
        records: one dict per query: ``question``, ``gold`` (expected FAQ id, None = out of scope) and
            ``ranked`` ([(faq_id, score), ...] best first); optional ``ms``, ``exact``.
        answer_threshold / suggest_threshold: the configured values, scored as "current".
        objective / target: how `answer_threshold` is chosen (`metrics.pick_threshold`).
        suggest_target: rule for `suggest_threshold`: the LOWEST threshold t <= the chosen answer threshold at
            which the top-3 precision of answered-or-suggested queries (best score >= t; correct when the
            expected FAQ is among the top-3 candidates scoring >= t; out-of-scope queries shown anything count
            as wrong) is >= `suggest_target`. The lowest such t keeps top-3 recall of the right FAQ as high as
            possible at that precision. When no t qualifies, suggest = answer threshold (no suggestion zone).
            With objective `balanced` the precision weighs in-scope and out-of-scope queries equally (rates).

    Returns:
        dict with ``current``, ``sweep`` (one row per threshold: faq_metrics + top3_precision/recall),
        ``calibration`` (chosen thresholds, objective, target_met, rule, metrics at the choice), ``summary``
        and ``rows`` (per query, decided with the chosen thresholds).
    """
    thresholds = sorted(set(float(t) for t in (thresholds or _default_thresholds())))
    gold = [r["gold"] for r in records]
    top_ids = [r["ranked"][0][0] if r["ranked"] else None for r in records]
    top_scores = [float(r["ranked"][0][1]) if r["ranked"] else -math.inf for r in records]
    sweep = threshold_sweep(top_scores, top_ids, gold, thresholds)
    for row in sweep:
        row.update(_top3_at(records, row["threshold"]))
    choice = pick_threshold(sweep, objective, target)  # type: ignore[arg-type]
    answer_t = float(choice["threshold"])
    qualifying = [r for r in sweep if r["threshold"] <= answer_t and r["shown"] > 0
                  and r["top3_precision"] >= suggest_target]
    suggest_t = float(qualifying[0]["threshold"]) if qualifying else answer_t
    suggest_rule = ("lowest threshold <= answer_threshold where the top-3 precision of answered-or-suggested "
                    f"queries is >= {suggest_target}; none -> suggest = answer threshold")
    if objective == "balanced":
        # the same rule with in-scope and out-of-scope queries weighted equally (each as a rate), so the share of
        # out-of-scope queries in the calibration split (CLINC150 val: 3%) does not widen the zone
        n_in_ = sum(g is not None for g in gold)
        in_scores = np.array([s for s, g in zip(top_scores, gold) if g is not None])

        def balanced_top3_precision(r: dict) -> float:
            shown_in = float(np.mean(in_scores >= r["threshold"])) if n_in_ else 0.0
            shown = shown_in + (1.0 - r["oos_recall"] if n_in_ < len(gold) else 0.0)
            return r["top3_recall"] / shown if shown > 0 else 0.0

        qualifying = [r for r in sweep if r["threshold"] <= answer_t and balanced_top3_precision(r) >= suggest_target]
        suggest_t = float(qualifying[0]["threshold"]) if qualifying else answer_t
        suggest_rule = ("lowest threshold <= answer_threshold where the top-3 precision of answered-or-suggested "
                        f"queries, in-scope and out-of-scope weighted equally, is >= {suggest_target}; "
                        "none -> suggest = answer threshold")

    def decide(a_t: float, s_t: float) -> list[str | None]:
        return [i if s >= a_t else None for s, i in zip(top_scores, top_ids)]

    current = faq_metrics(decide(answer_threshold, suggest_threshold), gold)
    current.update(_top3_at(records, suggest_threshold))
    chosen = faq_metrics(decide(answer_t, suggest_t), gold)
    chosen.update(_top3_at(records, suggest_t))
    n_in = sum(g is not None for g in gold)
    top1 = sum(g is not None and i == g for i, g in zip(top_ids, gold)) / n_in if n_in else 0.0

    rows = []
    for r, s, i in zip(records, top_scores, top_ids):
        decision = "answer" if s >= answer_t else ("suggest" if s >= suggest_t else "none")
        pred = i if decision == "answer" else None
        rows.append({
            "question": r["question"], "gold": r["gold"] or "", "top1": i or "",
            "top1_score": round(s, 4) if s > -math.inf else None,
            "top3": "|".join(f"{fid}:{sc:.3f}" for fid, sc in r["ranked"][:3]),
            "decision": decision, "predicted": pred or "", "correct": pred == r["gold"],
            "top3_hit": r["gold"] is not None and r["gold"] in [x for x, _ in r["ranked"][:3]],
            "exact": bool(r.get("exact", False)), "ms": round(float(r.get("ms", 0.0)), 3),
        })
    calibration = {
        "objective": objective, "target": choice.get("target"), "target_met": choice.get("target_met"),
        "answer_threshold": answer_t, "suggest_threshold": suggest_t, "suggest_target": suggest_target,
        "suggest_rule": suggest_rule,
        "suggest_target_met": bool(qualifying),
        "metrics": chosen,
    }
    summary = {
        "n": len(records), "n_in_scope": n_in, "n_oos": len(records) - n_in,
        "top1_accuracy": round(top1, 4),
        "answer_threshold": answer_t, "suggest_threshold": suggest_t, "objective": objective,
        "in_scope_accuracy": round(chosen["in_scope_accuracy"], 4),
        "in_scope_precision": round(chosen["in_scope_precision"], 4),
        "oos_recall": round(chosen["oos_recall"], 4), "oos_precision": round(chosen["oos_precision"], 4),
        "accuracy": round(chosen["accuracy"], 4),
        "top3_precision_at_suggest": round(chosen["top3_precision"], 4),
        "current_answer_threshold": answer_threshold, "current_suggest_threshold": suggest_threshold,
        "current_in_scope_accuracy": round(current["in_scope_accuracy"], 4),
        "current_oos_recall": round(current["oos_recall"], 4),
    }
    return {"current": {"answer_threshold": answer_threshold, "suggest_threshold": suggest_threshold, **current},
            "sweep": sweep, "calibration": calibration, "summary": summary, "rows": rows}


def run_faq(
    kb,
    queries: Sequence[FaqQuery],
    cfg: FaqConfig,
    *,
    objective: str = "max_accuracy",
    target: float = 0.97,
    suggest_target: float = 0.9,
    thresholds: Sequence[float] | None = None,
    bar: bool = True,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """FAQ matching over `kb`'s FAQs: in-scope top-1 accuracy, OOS precision/recall, threshold sweep, calibration.

    Args:
        kb: a KnowledgeBase holding the FAQs (e.g. a temporary one built by the CLI).
        queries: questions with the expected FAQ id (None = out of scope).
        cfg: FAQ settings; its thresholds are scored as "current", `top_k` bounds the candidates.
    """
    from faq_bot.faq import FaqMatcher

    matcher = FaqMatcher(cfg, kb)
    matcher.warm_up()
    records, lat = [], []
    prog = Progress(len(queries), "faq", bar=bar, callback=progress)
    try:
        for q in queries:
            res = matcher.match(Query(text=q.question))
            records.append({"question": q.question, "gold": q.faq_id, "ms": res.ms, "exact": res.exact,
                            "ranked": [(m.faq.id, float(m.score)) for m in res.matches[:max(3, cfg.max_suggestions)]]})
            lat.append(res.ms)
            prog.update()
    finally:
        prog.close()
    report = calibrate_faq(records, answer_threshold=cfg.answer_threshold, suggest_threshold=cfg.suggest_threshold,
                           objective=objective, target=target, suggest_target=suggest_target, thresholds=thresholds)
    report["summary"].update({f"latency_{k}_ms": v for k, v in _lat(lat).items()})
    report.update({"mode": "faq", "latency_ms": {"faq": lat}, "memory": peak_memory(), "errors": [],
                   "data": {"n_faqs": len(kb.store.faqs()), "n_queries": len(queries)}, "matcher": matcher.info()})
    return report


# ---------------------------------------------------------------------------- retrieval


@dataclass
class RetrievalQuery:
    """A question and the chunk ids that count as a hit."""

    id: str
    question: str
    gold: set[str] = field(default_factory=set)


def retrieval_queries_from_eval(items: Sequence[EvalItem], store) -> tuple[list[RetrievalQuery], list[str]]:
    """Eval-set items -> retrieval queries: gold = every chunk of the document named by `meta.source`.

    Items without `meta.source`, refusals and multi-turn items' history are skipped or ignored; a source that is
    not in the store is reported.
    """
    out, notes = [], []
    by_source: dict[str, set[str]] = {}
    for it in items:
        source = it.meta.get("source")
        if it.refuse or not source:
            continue
        if source not in by_source:
            doc = store.find_document_by_source(source)
            by_source[source] = {c.id for c in store.chunks(doc_id=doc.id)} if doc else set()
        if not by_source[source]:
            notes.append(f"item {it.id}: source {source!r} has no chunks in the store; skipped.")
            continue
        out.append(RetrievalQuery(it.id, it.question, set(by_source[source])))
    return out, notes


def _passage_id(text: str) -> str:
    return "p" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def build_rgb_passage_kb(
    kb,
    path: str | Path,
    *,
    limit: int | None = None,
    ids: Callable[[int], bool] | None = None,
    bar: bool = True,
    progress: ProgressFn | None = None,
) -> tuple[list[RetrievalQuery], list[str]]:
    """Index ALL positive and negative passages of an RGB file as one-chunk documents in `kb` (deduplicated).

    `kb` should be a fresh KnowledgeBase (the CLI builds one under the run folder). Gold of an item = its
    positive passages (`_int` sets: every group). Malformed lines are reported with their numbers and skipped.

    Returns:
        (queries, errors)
    """
    path = Path(path)
    queries: list[RetrievalQuery] = []
    errors: list[str] = []
    passages: dict[str, str] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if limit is not None and len(queries) >= limit:
                break
            try:
                inst = json.loads(line)
                rgb_id = int(inst["id"])
                question = str(inst["query"])
                pos = inst["positive"]
                pos = [p for g in pos for p in (g if isinstance(g, list) else [g])]
                neg = list(inst.get("negative") or [])
                if not all(isinstance(p, str) for p in pos + neg):
                    raise ValueError("passages must be strings")
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                errors.append(f"{path.name} line {lineno}: not an RGB item ({type(exc).__name__}: {exc}).")
                continue
            if ids is not None and not ids(rgb_id):
                continue
            for p in pos + neg:
                passages.setdefault(_passage_id(p), p)
            queries.append(RetrievalQuery(f"{path.stem.split('.')[0]}-{rgb_id}", question,
                                          {_passage_id(p) for p in pos}))
    enc = kb.doc_encoder
    pids = list(passages)
    batch = max(1, kb.cfg.embed.batch_size)
    prog = Progress(len(pids), "index passages", bar=bar, callback=progress)
    try:
        for start in range(0, len(pids), batch):
            part = pids[start:start + batch]
            vecs = enc.encode_passages([passages[p] for p in part], batch)
            for j, pid in enumerate(part):
                doc = Doc(id=pid, source=pid, sha256=hashlib.sha256(passages[pid].encode()).hexdigest(), type="txt",
                          created=time.time())
                chunk = Chunk(id=pid, doc_id=pid, text=passages[pid], source=pid)
                kb.store.replace_document(doc, chunks=[chunk], vectors={enc.name: vecs[j:j + 1]})
            prog.update(len(part))
    finally:
        prog.close()
    kb.sync()
    logger.info("Indexed %d unique passages for %d RGB questions", len(pids), len(queries))
    return queries, errors


def _rank_metrics(ranked_ids: Sequence[str], gold: set[str], ks: Sequence[int]) -> dict[str, Any]:
    rank = next((i for i, cid in enumerate(ranked_ids, start=1) if cid in gold), None)
    out: dict[str, Any] = {f"hit@{k}": int(rank is not None and rank <= k) for k in ks}
    out["rr"] = 1.0 / rank if rank else 0.0
    out["rank"] = rank
    return out


def run_retrieval(
    kb,
    retrieve_cfg,
    queries: Sequence[RetrievalQuery],
    *,
    modes: Sequence[str] = ("dense", "sparse", "hybrid"),
    reranker=None,
    rerank_floor: float | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    bar: bool = True,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """hit@k and MRR@max(k) per retrieval mode, one table row per mode.

    `hybrid+rerank` re-scores the hybrid top max(retrieve.top_k, max k) candidates (the pipeline's pool) with
    `reranker` and ranks them by that score; `reranker` must keep every candidate (build it with a very low
    `min_score`). `rerank_floor` (the configured min_score) is only reported: the share of queries whose best
    reranked passage clears it (what the pipeline would not refuse).
    """
    from faq_bot.retrieve import Retriever

    unknown = [m for m in modes if m not in RETRIEVAL_MODES]
    if unknown:
        raise ValueError(f"`modes` must be among {', '.join(RETRIEVAL_MODES)}, got {unknown}.")
    if "hybrid+rerank" in modes and reranker is None:
        raise ValueError("mode `hybrid+rerank` needs a `reranker`.")
    retriever = Retriever(retrieve_cfg, kb)
    retriever.warm_up()
    max_k = max(ks)
    pool = max(retrieve_cfg.top_k, max_k)
    table, rows, errors = [], [], []
    latency: dict[str, list[float]] = {}
    prog = Progress(len(queries) * len(modes), "retrieval", bar=bar, callback=progress)
    try:
        for mode in modes:
            per, lat, cleared = [], [], []
            for q in queries:
                t0 = time.perf_counter()
                query = Query(text=q.question)
                if mode == "hybrid+rerank":
                    hits, _ = retriever.retrieve(query, top_k=pool, mode="hybrid")
                    hits, detail = reranker.rerank(query, hits, top_n=len(hits) or 1)
                    if "skipped" in detail and not any(detail["skipped"] in e for e in errors):
                        errors.append(f"rerank skipped: {detail['skipped']}")
                    if rerank_floor is not None and hits:
                        cleared.append(hits[0].score >= rerank_floor)
                else:
                    hits, _ = retriever.retrieve(query, top_k=max_k, mode=mode)
                ms = (time.perf_counter() - t0) * 1000
                lat.append(ms)
                m = _rank_metrics([h.chunk.id for h in hits[:max_k]], q.gold, ks)
                per.append(m)
                rows.append({"id": q.id, "question": q.question, "mode": mode, "rank": m["rank"],
                             **{f"hit@{k}": m[f"hit@{k}"] for k in ks}, "rr": round(m["rr"], 4),
                             "top1": hits[0].chunk.id if hits else "", "n_gold": len(q.gold), "ms": round(ms, 2)})
                prog.update()
            row: dict[str, Any] = {"mode": mode, "n": len(per)}
            for k in ks:
                row[f"hit@{k}"] = round(_mean(m[f"hit@{k}"] for m in per) or 0.0, 4)
            row[f"mrr@{max_k}"] = round(_mean(m["rr"] for m in per) or 0.0, 4)
            row.update({f"latency_{k}_ms": v for k, v in _lat(lat).items()})
            row["wall_s"] = round(sum(lat) / 1000, 2)
            if cleared:
                row["above_min_score"] = round(sum(cleared) / len(cleared), 4)
            table.append(row)
            latency[mode] = lat
    finally:
        prog.close()
    summary: dict[str, Any] = {"n": len(queries)}
    for row in table:
        for key in ("hit@1", "hit@5", f"mrr@{max_k}"):
            summary[f"{row['mode']}/{key}"] = row[key]
    return {"mode": "retrieval", "table": table, "summary": summary, "rows": rows, "errors": errors,
            "latency_ms": latency, "memory": peak_memory(), "data": {"n_queries": len(queries)}}


# ---------------------------------------------------------------------------- free-text answers


def _reference(item: EvalItem) -> list[str]:
    return item.answers


def _free_text_row(
    item: EvalItem,
    model: str,
    text: str,
    refused: bool,
    *,
    encoder=None,
    judge: Judge | None = None,
    errors: list[str],
    lang: str | None = None,
) -> dict[str, Any]:
    """Score one output: correct (answered with the answer, or refused when it should), containment, ROUGE-L,
    BLEU and embedding similarity against the best reference, optional judge. Overlap metrics are computed
    for answerable items with a non-empty output only (a failed call is an error, counted wrong, not a 0)."""
    refs = _reference(item)
    answerable = not item.refuse and bool(item.answer_parts)
    contains = (not refused) and contains_answer(text, item.answer_parts, lang) if answerable else None
    if item.refuse:
        correct: bool | None = refused
    elif answerable:
        correct = bool(contains)
    else:
        correct = None  # nothing to check against (e.g. an faq_id-only item outside e2e)
    row: dict[str, Any] = {"id": item.id, "question": item.question, "model": model,
                           "expected": " | ".join(refs) if refs else ("<refuse>" if item.refuse else ""),
                           "refuse": item.refuse, "output": text, "refused": refused, "correct": correct,
                           "contains": contains, "rouge_l": None, "bleu": None, "embed_sim": None, "judge": None}
    if answerable and text.strip():
        row["rouge_l"] = round(max(rouge_l(text, r, lang) for r in refs), 4)
        row["bleu"] = round(bleu(text, refs, lang), 4)
        if encoder is not None:
            vecs = encoder.encode_passages([text, *refs])
            row["embed_sim"] = round(float(np.max(vecs[1:] @ vecs[0])), 4)
    if judge is not None and answerable:
        try:
            row["judge"] = round(judge.score(item.question, " / ".join(refs), text), 3)
        except Exception as e:  # endpoint down or odd reply: recorded, the run goes on
            msg = f"judge failed on {item.id}: {type(e).__name__}: {e}"
            errors.append(msg)
            logger.warning(msg)
    return row


def _aggregate(rows: Sequence[dict], lang: str | None = None) -> dict[str, Any]:
    """Model-level metrics from free-text rows."""
    scorable = [r for r in rows if r["correct"] is not None]
    answerable = [r for r in rows if r["contains"] is not None]
    conf = refusal_confusion([bool(r["refuse"]) for r in scorable], [bool(r["refused"]) for r in scorable])
    ms = [r["ms"] for r in rows if r.get("ms") is not None]
    toks = sum(int(r.get("completion_tokens") or 0) for r in rows)
    gen_ms = sum(float(r.get("gen_ms") or 0.0) for r in rows)
    preds = [r["output"] for r in answerable if r["output"].strip()]
    refs = [r["expected"].split(" | ") for r in answerable if r["output"].strip()]
    out: dict[str, Any] = {
        "n": len(rows),
        "accuracy": _mean(r["correct"] for r in scorable),
        "containment_accuracy": _mean(r["contains"] for r in answerable),
        "refusal": conf,
        "refusal_precision": conf["precision"], "refusal_recall": conf["recall"],
        "rouge_l": _mean(r["rouge_l"] for r in answerable),
        "bleu": _mean(r["bleu"] for r in answerable),
        "corpus_bleu": corpus_bleu(preds, refs, lang) if preds else None,
        "embed_sim": _mean(r["embed_sim"] for r in answerable),
        "judge": _mean(r["judge"] for r in answerable),
        "latency_ms": _lat(ms),
        "completion_tokens": toks,
        "tokens_per_s": round(toks / (gen_ms / 1000), 2) if gen_ms > 0 else None,
        "errors": sum(1 for r in rows if r.get("error")),
    }
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def _generate(generator, item: EvalItem, adapter: str | None, lang: str | None, errors: list[str]):
    try:
        return generator.generate(item.question, context_hits(item.contexts or []), adapter=adapter, lang=lang), ""
    except Exception as e:  # one failing item must not end the run; it is scored wrong and reported
        msg = f"{item.id} ({model_label(adapter)}): generation failed: {type(e).__name__}: {e}"
        errors.append(msg)
        logger.warning(msg)
        return None, msg


def run_generator(
    generator,
    items: Sequence[EvalItem],
    *,
    models: Sequence[str | None] = (None,),
    encoder=None,
    judge: Judge | None = None,
    refusal_texts: Sequence[str] = DEFAULT_REFUSAL_TEXTS,
    bar: bool = True,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Generator given contexts (items with `contexts`): accuracy, refusal P/R, ROUGE-L, BLEU, similarity, judge.

    Args:
        generator: a loaded Generator (`.generate(question, hits, adapter=, lang=)`).
        models: adapter names; None = the base model. Several -> a base-vs-adapter comparison.
        encoder: document encoder for the embedding similarity (None skips it).
        judge: optional LLM judge.
    """
    errors: list[str] = []
    usable = [it for it in items if it.contexts is not None]
    skipped = len(items) - len(usable)
    if skipped:
        errors.append(f"{skipped} item(s) without `contexts` skipped (generator mode needs given passages).")
    rows_by_model: dict[str, list[dict]] = {}
    prog = Progress(len(usable) * len(models), "generator", bar=bar, callback=progress)
    try:
        for adapter in models:
            label = model_label(adapter)
            rows = []
            for it in usable:
                lang = _lang_of(it.question)
                gen, err = _generate(generator, it, adapter, lang, errors)
                text, refused = _generation_text(gen, lang, refusal_texts)
                row = _free_text_row(it, label, text, refused, encoder=encoder, judge=judge, errors=errors,
                                     lang=lang)
                row.update(_gen_fields(gen, err, it))
                rows.append(row)
                prog.update()
            rows_by_model[label] = rows
    finally:
        prog.close()
    return _finish_free_text("generator", rows_by_model, errors, {"n_items": len(usable)})


def _generation_text(gen, lang: str | None, refusal_texts: Sequence[str]) -> tuple[str, bool]:
    """What the customer would see: the answer, or the refusal text when the model says it is not in context."""
    if gen is None:
        return "", False
    from faq_bot.eval.metrics import is_rejection

    if not gen.answer_in_context:
        return (refusal_texts[0] if lang == "zh" else refusal_texts[-1]), True
    return gen.answer, is_rejection(gen.answer, refusal_texts)


def _gen_fields(gen, err: str, item: EvalItem) -> dict[str, Any]:
    return {"raw": gen.raw if gen else "", "ms": round(gen.ms, 2) if gen else None,
            "gen_ms": round(gen.ms, 2) if gen else None, "completion_tokens": gen.completion_tokens if gen else 0,
            "error": err, "contexts": item.contexts or []}


def _finish_free_text(mode: str, rows_by_model: dict[str, list[dict]], errors: list[str], data: dict,
                      lang: str | None = None) -> dict[str, Any]:
    models = {name: _aggregate(rows, lang) for name, rows in rows_by_model.items()}
    report: dict[str, Any] = {"mode": mode, "models": models, "errors": errors, "data": data,
                              "latency_ms": {name: [r["ms"] for r in rows if r.get("ms") is not None]
                                             for name, rows in rows_by_model.items()},
                              "memory": peak_memory(),
                              "rows": [r for rows in rows_by_model.values() for r in rows]}
    if BASE in rows_by_model and len(rows_by_model) > 1:
        report["comparison"] = compare_models(rows_by_model)
    report["badcases"] = _badcases(rows_by_model)
    report["summary"] = _free_text_summary(models, report.get("comparison"))
    return report


def _free_text_summary(models: dict[str, dict], comparison: dict | None) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name, m in models.items():
        for key in ("accuracy", "containment_accuracy", "refusal_precision", "refusal_recall", "rouge_l", "bleu",
                    "embed_sim", "tokens_per_s"):
            summary[f"{name}/{key}"] = m.get(key)
        summary[f"{name}/latency_p50_ms"] = m["latency_ms"].get("p50")
    for name, comp in (comparison or {}).items():
        d = comp["deltas"].get("correct")
        if d:
            summary[f"{name}/delta_accuracy"] = d["delta"]
            summary[f"{name}/delta_accuracy_ci"] = [d["lo"], d["hi"]]
    return summary


# ---------------------------------------------------------------------------- comparison, bad cases


def _row_key(row: dict) -> str:
    return f"{row['id']}@{row['noise_rate']}" if "noise_rate" in row else str(row["id"])


def compare_models(
    rows_by_model: dict[str, list[dict]],
    *,
    base: str = BASE,
    metrics: Sequence[str] = COMPARE_METRICS,
    group_by: str | None = None,
    n_boot: int = 2000,
) -> dict[str, Any]:
    """Base vs each adapter on the same items: paired bootstrap 95% CIs of per-item metric deltas, and which
    questions each adapter fixed (base wrong, adapter right) and broke (base right, adapter wrong).

    Args:
        rows_by_model: per model, per-item rows with ``id`` (plus ``noise_rate`` for RGB), ``correct`` and metrics.
        group_by: also report the `correct` delta per value of this row field (RGB: ``noise_rate``).

    Returns:
        {adapter: {"n", "deltas": {metric: {delta, lo, hi, base, tuned, n}}, "by_group", "fixed", "broke",
        "table": [per question: key, question, expected, base/adapter output and correctness, status]}}.
    """
    if base not in rows_by_model:
        raise ValueError(f"`rows_by_model` has no base model {base!r}; got {list(rows_by_model)}.")
    base_rows = {_row_key(r): r for r in rows_by_model[base]}
    out: dict[str, Any] = {}
    for name, rows in rows_by_model.items():
        if name == base:
            continue
        pairs = [(base_rows[_row_key(r)], r) for r in rows if _row_key(r) in base_rows]
        deltas: dict[str, Any] = {}
        for metric in metrics:
            vals = [(float(a[metric]), float(b[metric])) for a, b in pairs
                    if a.get(metric) is not None and b.get(metric) is not None]
            if not vals:
                continue
            a_vals, b_vals = [v[0] for v in vals], [v[1] for v in vals]
            d = bootstrap_delta(a_vals, b_vals, n=n_boot)
            deltas[metric] = {k: round(v, 4) for k, v in d.items()} | {
                "base": round(float(np.mean(a_vals)), 4), "tuned": round(float(np.mean(b_vals)), 4), "n": len(vals)}
        by_group: dict[str, Any] = {}
        if group_by:
            groups: dict[Any, list[tuple[float, float]]] = {}
            for a, b in pairs:
                if a.get("correct") is not None and b.get("correct") is not None:
                    groups.setdefault(a.get(group_by), []).append((float(a["correct"]), float(b["correct"])))
            for g, vals in sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0])):
                d = bootstrap_delta([v[0] for v in vals], [v[1] for v in vals], n=n_boot)
                by_group[str(g)] = {k: round(v, 4) for k, v in d.items()} | {"n": len(vals)}
        table, fixed, broke = [], [], []
        for a, b in pairs:
            if a["correct"] is None or b["correct"] is None:
                status = "unscored"
            elif not a["correct"] and b["correct"]:
                status = "fixed"
            elif a["correct"] and not b["correct"]:
                status = "broke"
            else:
                status = "both_right" if a["correct"] else "both_wrong"
            key = _row_key(a)
            if status == "fixed":
                fixed.append(key)
            elif status == "broke":
                broke.append(key)
            table.append({"key": key, "question": a["question"], "expected": a["expected"],
                          "base_output": a["output"], "base_correct": a["correct"],
                          "tuned_output": b["output"], "tuned_correct": b["correct"], "status": status})
        out[name] = {"n": len(pairs), "deltas": deltas, "by_group": by_group, "fixed": fixed, "broke": broke,
                     "table": table}
    return out


def _badcases(rows_by_model: dict[str, list[dict]]) -> list[dict]:
    """Every wrong output of every model, in the shape the training-data builder takes as hard negatives."""
    out = []
    for name, rows in rows_by_model.items():
        for r in rows:
            if r.get("correct") is not False:
                continue
            if r["refuse"]:
                why = "answered_unanswerable"
            elif r["refused"]:
                why = "false_refusal"
            elif r.get("error"):
                why = "error"
            else:
                why = "wrong_answer"
            case = {"id": r["id"], "question": r["question"], "contexts": r.get("contexts") or [],
                    "expected": r["expected"].split(" | ") if r["expected"] and not r["refuse"] else [],
                    "refuse": r["refuse"], "output": r["output"], "raw": r.get("raw", ""), "model": name,
                    "kind": why}
            if "noise_rate" in r:
                case["noise_rate"] = r["noise_rate"]
            out.append(case)
    return out


# ---------------------------------------------------------------------------- RGB


def load_rgb_sweep(
    path: str | Path,
    noise_rates: Sequence[float],
    *,
    passage_num: int = 5,
    limit: int | None = None,
    ids: Callable[[int], bool] | None = None,
    workdir: str | Path | None = None,
) -> tuple[dict[float, list[EvalItem]], list[str]]:
    """RGB items for each noise rate, with upstream's passage selection.

    Malformed lines are reported with their line numbers and left out; the rest is loaded from a cleaned copy
    (same file name, so the set kind and language are still read from it) under `workdir`.
    """
    path = Path(path)
    errors: list[str] = []
    good: list[str] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                inst = json.loads(line)
                int(inst["id"])
                if not isinstance(inst["query"], str) or "answer" not in inst:
                    raise ValueError("needs `query` (str) and `answer`")
                if not isinstance(inst["positive"], list) or not isinstance(inst["negative"], list):
                    raise ValueError("`positive` and `negative` must be lists")
                _check_rgb_answer(inst)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                errors.append(f"{path.name} line {lineno}: not an RGB item ({type(exc).__name__}: {exc}).")
                continue
            good.append(line if line.endswith("\n") else line + "\n")
    src = path
    if errors:
        base = Path(workdir) if workdir else path.parent
        base.mkdir(parents=True, exist_ok=True)
        src = base / path.name
        src.write_text("".join(good), encoding="utf-8")
    return {float(nr): load_rgb(src, noise_rate=float(nr), passage_num=passage_num, limit=limit, ids=ids)
            for nr in noise_rates}, errors


def _check_rgb_answer(inst: dict) -> None:
    from faq_bot.eval.datasets import to_answer_parts

    to_answer_parts(inst["answer"])


def run_rgb(
    generator,
    items_by_noise: dict[float, list[EvalItem]],
    *,
    models: Sequence[str | None] = (None,),
    refusal_texts: Sequence[str] = DEFAULT_REFUSAL_TEXTS,
    encoder=None,
    bar: bool = True,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """RGB noise robustness and negative rejection per model: accuracy at each noise rate < 1, rejection rate at 1.

    Scored with upstream's string rules (`metrics.rgb_labels`) on what the customer would see: the answer, or the
    refusal text when the model says the passages do not hold the answer (our refusal texts count as rejections).
    `_fact` sets also get error detection / correction rates.
    """
    errors: list[str] = []
    total = sum(len(v) for v in items_by_noise.values()) * len(models)
    rows_by_model: dict[str, list[dict]] = {}
    curves: dict[str, dict[str, Any]] = {}
    prog = Progress(total, "rgb", bar=bar, callback=progress)
    try:
        for adapter in models:
            label = model_label(adapter)
            rows, curve = [], {}
            for nr, items in sorted(items_by_noise.items()):
                labels_list, flags = [], []
                for it in items:
                    lang = it.meta.get("lang") or _lang_of(it.question)
                    gen, err = _generate(generator, it, adapter, lang, errors)
                    text, refused = _generation_text(gen, lang, refusal_texts)
                    labels = rgb_labels(text, it.answer_parts, lang, refusal_texts) if gen else [0]
                    ok = rgb_reject_ok(labels) if nr == 1 else rgb_correct(labels)
                    labels_list.append(labels)
                    flags.append(fact_flag(text, lang))
                    row = _free_text_row(it, label, text, labels == [-1], encoder=encoder, errors=errors, lang=lang)
                    row.update(_gen_fields(gen, err, it))
                    row.update({"noise_rate": nr, "labels": json.dumps(labels), "correct": ok})
                    rows.append(row)
                    prog.update()
                n = len(items)
                rate = sum((rgb_reject_ok if nr == 1 else rgb_correct)(lb) for lb in labels_list) / n if n else None
                point: dict[str, Any] = {"n": n, "metric": "rejection_rate" if nr == 1 else "accuracy",
                                         "value": round(rate, 4) if rate is not None else None}
                if items and items[0].meta.get("rgb_kind") == "fact":
                    point.update(rgb_fact_rates(labels_list, flags))
                curve[str(nr)] = point
            rows_by_model[label] = rows
            curves[label] = curve
    finally:
        prog.close()
    models_agg = {name: _aggregate(rows) | {"curve": curves[name]} for name, rows in rows_by_model.items()}
    report: dict[str, Any] = {
        "mode": "rgb", "models": models_agg, "rgb_curves": curves, "errors": errors,
        "data": {"noise_rates": sorted(items_by_noise), "n_items": {str(k): len(v) for k, v in items_by_noise.items()}},
        "latency_ms": {name: [r["ms"] for r in rows if r.get("ms") is not None] for name, rows in rows_by_model.items()},
        "memory": peak_memory(), "rows": [r for rows in rows_by_model.values() for r in rows],
        "badcases": _badcases(rows_by_model),
    }
    if BASE in rows_by_model and len(rows_by_model) > 1:
        report["comparison"] = compare_models(rows_by_model, group_by="noise_rate")
    summary: dict[str, Any] = {}
    for name, curve in curves.items():
        for nr, point in curve.items():
            summary[f"{name}/{'rejection' if float(nr) == 1 else 'accuracy'}@{nr}"] = point["value"]
        summary[f"{name}/tokens_per_s"] = models_agg[name]["tokens_per_s"]
    for name, comp in (report.get("comparison") or {}).items():
        for g, d in comp["by_group"].items():
            summary[f"{name}/delta@{g}"] = d["delta"]
    report["summary"] = summary
    return report


# ---------------------------------------------------------------------------- end to end


def run_e2e(
    pipeline,
    items: Sequence[EvalItem],
    *,
    models: Sequence[str | None] = (None,),
    encoder=None,
    judge: Judge | None = None,
    bar: bool = True,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """What a customer gets, through `Pipeline.answer`: answer accuracy, refusal P/R, FAQ hits, overlap metrics,
    per-stage latency p50/p95 (trace steps), tokens/s and peak memory, per model.

    A refusal is an Answer of kind ``refusal``. An item with `faq_id` is also right when the FAQ stage answered
    with that FAQ; an item with only `faq_id` (no answers) is right only then. `models`: None = the base model —
    build the pipeline with `generate.adapter` None so that None really means the base.
    """
    errors: list[str] = []
    rows_by_model: dict[str, list[dict]] = {}
    stage_ms: dict[str, dict[str, list[float]]] = {}
    kinds: dict[str, dict[str, int]] = {}
    prog = Progress(len(items) * len(models), "e2e", bar=bar, callback=progress)
    try:
        for adapter in models:
            label = model_label(adapter)
            rows, stages, kind_counts = [], {}, {}
            for it in items:
                t0 = time.perf_counter()
                try:
                    ans = pipeline.answer(Query(text=it.question, history=list(it.history)), adapter=adapter)
                except Exception as e:  # a crash on one question is a finding, not the end of the run
                    msg = f"{it.id} ({label}): pipeline failed: {type(e).__name__}: {e}"
                    errors.append(msg)
                    logger.warning(msg)
                    ans = None
                total_ms = (time.perf_counter() - t0) * 1000
                text = ans.text if ans else ""
                kind = ans.kind if ans else "error"
                kind_counts[kind] = kind_counts.get(kind, 0) + 1
                refused = kind == "refusal"
                row = _free_text_row(it, label, text, refused, encoder=encoder, judge=judge, errors=errors)
                faq_hit = bool(ans and ans.faq and it.faq_id and ans.faq.faq.id == it.faq_id)
                if it.faq_id and not it.refuse:
                    row["correct"] = bool(row["correct"]) or faq_hit
                gen_step = ans.trace.step("generate") if ans else None
                steps = {s.stage: s.ms for s in ans.trace.steps} if ans else {}
                for stage, ms in steps.items():
                    stages.setdefault(stage, []).append(ms)
                stages.setdefault("total", []).append(total_ms)
                ctx = [h.get("text", "") for h in (ans.trace.step("rerank").detail.get("hits", [])
                                                   if ans and ans.trace.step("rerank") else [])]
                row.update({
                    "kind": kind, "faq_expected": it.faq_id or "", "faq_answered": ans.faq.faq.id if ans and ans.faq else "",
                    "faq_hit": faq_hit, "ms": round(total_ms, 2),
                    "gen_ms": gen_step.ms if gen_step and "completion_tokens" in gen_step.detail else None,
                    "completion_tokens": int(gen_step.detail.get("completion_tokens", 0)) if gen_step else 0,
                    "raw": gen_step.detail.get("raw", "") if gen_step else "", "model_used": ans.model if ans else "",
                    "error": "" if ans else "pipeline failed", "contexts": ctx,
                    "stages_ms": json.dumps({k: round(v, 1) for k, v in steps.items()}),
                })
                rows.append(row)
                prog.update()
            rows_by_model[label] = rows
            stage_ms[label] = stages
            kinds[label] = kind_counts
    finally:
        prog.close()
    report = _finish_free_text("end_to_end", rows_by_model, errors, {"n_items": len(items)})
    for label, rows in rows_by_model.items():
        with_faq = [r for r in rows if r["faq_expected"] and not r["refuse"]]
        report["models"][label].update({
            "kinds": kinds[label],
            "faq_hit_rate": round(sum(r["faq_hit"] for r in with_faq) / len(with_faq), 4) if with_faq else None,
            "stage_latency_ms": {s: _lat(v) for s, v in stage_ms[label].items()},
        })
        report["summary"][f"{label}/faq_hit_rate"] = report["models"][label]["faq_hit_rate"]
        report["summary"][f"{label}/total_p95_ms"] = report["models"][label]["stage_latency_ms"]["total"]["p95"] \
            if "total" in stage_ms[label] else None
    report["latency_ms"] = {f"{label}/total": stage_ms[label].get("total", []) for label in stage_ms}
    return report
