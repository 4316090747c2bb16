"""Formatting for the UI: answers, citations, tables and status lines. Every user or document string is escaped here."""

from __future__ import annotations

import html
import json
import time
from typing import Any, Iterable

from ..schema import Answer, Citation, Doc, Faq

__all__ = [
    "esc", "answer_markdown", "user_markdown", "notice_markdown", "citations_html", "faq_note_html",
    "suggestion_labels", "status_markdown", "stats_markdown", "matcher_markdown", "document_rows", "document_choices",
    "faq_rows",
    "feedback_rows", "trace_tables", "ingest_markdown", "trace_json",
    "DOC_HEADERS", "FAQ_HEADERS", "FEEDBACK_HEADERS", "FAQ_CAND_HEADERS", "RETRIEVE_HEADERS", "RERANK_HEADERS",
    "DOC_TYPES", "FAQ_TYPES", "FEEDBACK_TYPES", "FAQ_CAND_TYPES", "RETRIEVE_TYPES", "RERANK_TYPES",
]

DOC_HEADERS = ["id", "source", "type", "items", "added"]
FAQ_HEADERS = ["id", "question", "answer", "similar", "category", "enabled", "source"]
FEEDBACK_HEADERS = ["id", "time", "rating", "question", "answer", "correction", "kind", "model", "trace_id"]
FAQ_CAND_HEADERS = ["faq_id", "question", "matched question", "score"]
RETRIEVE_HEADERS = ["chunk_id", "source", "heading", "fused", "dense", "sparse", "text"]
RERANK_HEADERS = ["chunk_id", "source", "heading", "rerank", "text"]
# Text cells are escaped here and shown as HTML (so "&" reads "&", not "&amp;"); numbers stay numbers.
DOC_TYPES = ["html", "html", "html", "number", "str"]
FAQ_TYPES = ["html", "html", "html", "number", "html", "str", "html"]
FEEDBACK_TYPES = ["number", "str", "str", "html", "html", "html", "html", "html", "html"]
FAQ_CAND_TYPES = ["html", "html", "html", "number"]
RETRIEVE_TYPES = ["html", "html", "html", "number", "number", "number", "html"]
RERANK_TYPES = ["html", "html", "html", "number", "html"]

# Markdown link/image brackets are escaped too: a document must not be able to place links or tracking images.
_MD_ESCAPES = str.maketrans({"[": "&#91;", "]": "&#93;", "`": "&#96;", "|": "&#124;"})


def esc(text: Any) -> str:
    """HTML-escape `text` and neutralize Markdown links, images and code spans."""
    return html.escape(str(text if text is not None else ""), quote=True).translate(_MD_ESCAPES)


def user_markdown(question: str) -> str:
    return esc(question)


def notice_markdown(text: str) -> str:
    """A system notice in the chat (rate limit, too long, errors)."""
    return f'<span class="faq-notice">{esc(text)}</span>'


def answer_markdown(answer: Answer, *, final: bool = True) -> str:
    """The assistant bubble: answer text, then (when final) the FAQ note and the collapsible sources."""
    parts = [esc(answer.text) + ("" if final else " ▍")]
    if final and answer.faq is not None:
        parts.append(faq_note_html(answer))
    if final and answer.citations:
        parts.append(citations_html(answer.citations))
    return "\n\n".join(parts)


def faq_note_html(answer: Answer) -> str:
    m = answer.faq
    return (f'<small class="faq-note">FAQ {esc(m.faq.id)} · score {m.score:.2f} · matched: '
            f'{esc(m.matched_question)}</small>')


def citations_html(citations: Iterable[Citation]) -> str:
    """One `<details>` block listing each source › heading path with its snippet."""
    cites = list(citations)
    items = []
    for c in cites:
        where = " › ".join(esc(p) for p in [c.source, *c.heading_path] if p)
        items.append(f'<li><b>[{c.index}] {where}</b><br><span class="faq-snippet">{esc(c.snippet)}</span></li>')
    return (f'<details class="faq-sources"><summary>Sources ({len(cites)})</summary>'
            f'<ol>{"".join(items)}</ol></details>')


def suggestion_labels(answer: Answer | None) -> list[str]:
    return [m.faq.question for m in answer.suggestions] if answer is not None else []


def status_markdown(status: dict) -> str:
    """One line for the chat tab: model state and what keeps working."""
    g = status.get("generator")
    counts = f"{status.get('faqs', 0)} FAQs · {status.get('documents', 0)} files · {status.get('chunks', 0)} passages"
    if g == "ready":
        return f'<span class="faq-status ok">● Assistant ready · {counts}</span>'
    if g == "failed":
        why = esc(status.get("generator_error"))
        return (f'<span class="faq-status bad">● The answering model failed to load ({why}). '
                f'FAQ answers keep working. · {counts}</span>')
    return (f'<span class="faq-status wait">● The answering model is loading… FAQ answers keep working. · '
            f'{counts}</span>')


def stats_markdown(stats: dict) -> str:
    return (f"**{stats.get('documents', 0)}** files · **{stats.get('faqs', 0)}** FAQs "
            f"({stats.get('faq_questions', 0)} questions) · **{stats.get('chunks', 0)}** passages · "
            f"**{stats.get('feedback', 0)}** feedback")


def matcher_markdown(info: dict) -> str:
    """One line for staff: what the FAQ matcher learned from their FAQ and what its held-out check measured."""
    if not info or not info.get("n_faqs"):
        return ""
    parts = []
    if info.get("head_used"):
        parts.append(f"trained head **{esc(info.get('kind'))}**")
    if info.get("lex_used"):
        parts.append(f"lexical head (weight {info.get('lex_weight')})")
    if not parts:
        return f"FAQ matcher: untrained (nearest question + BM25): {esc(info.get('reason', ''))}"
    before, after = info.get("untrained_top1"), info.get("top1_with_lex", info.get("trained_top1"))
    line = f"FAQ matcher: {' + '.join(parts)}"
    if before is not None and after is not None:
        rounds = info.get("check_rounds") or 1
        line += (f" · held-out top-1 {before:.2f} → {after:.2f} on {info.get('n_heldout', 0)} "
                 f"{esc(info.get('heldout_source', 'similar questions'))}"
                 + (f" ({rounds} rounds)" if rounds > 1 else ""))
    if info.get("n_answer_examples"):
        line += f" · learned from {info['n_answer_examples']} answer sentences and clauses"
    return line


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else ""


def _clip(text: str, n: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def document_rows(docs: Iterable[Doc]) -> list[list]:
    return [[esc(d.id), esc(d.source), esc(d.type), d.n_chunks, _when(d.created)] for d in docs]


def document_choices(docs: Iterable[Doc]) -> list[tuple[str, str]]:
    return [(f"{esc(d.source)} ({d.id})", d.id) for d in docs]


def faq_rows(faqs: Iterable[Faq]) -> list[list]:
    return [[esc(f.id), esc(_clip(f.question, 80)), esc(_clip(f.answer)), len(f.similar_questions), esc(f.category),
             "yes" if f.enabled else "no", esc(f.source)] for f in faqs]


def feedback_rows(rows: Iterable[dict]) -> list[list]:
    return [[r["id"], _when(r["created"]), "up" if r["rating"] > 0 else "down", esc(_clip(r["question"], 80)),
             esc(_clip(r["answer"])), esc(_clip(r["correction"])), esc(r["kind"]), esc(r["model"]), esc(r["trace_id"])]
            for r in rows]


def trace_tables(answer: Answer | None) -> tuple[list[list], list[list], list[list]]:
    """(FAQ candidates, retrieved passages, reranked passages) from an answer's trace."""
    if answer is None:
        return [], [], []
    step = {s.stage: s.detail for s in answer.trace.steps}
    faq = [[esc(c["faq_id"]), esc(_clip(c["question"], 80)), esc(_clip(c["matched"], 80)), round(c["score"], 4)]
           for c in step.get("faq", {}).get("candidates", [])]
    ret = [[esc(h["chunk_id"]), esc(h["source"]), esc(h["heading"]), h["scores"].get("fused", h["score"]),
            h["scores"].get("dense"), h["scores"].get("sparse"), esc(_clip(h["text"]))]
           for h in step.get("retrieve", {}).get("hits", [])]
    rer = [[esc(h["chunk_id"]), esc(h["source"]), esc(h["heading"]), h["scores"].get("rerank", h["score"]),
            esc(_clip(h["text"]))] for h in step.get("rerank", {}).get("hits", [])]
    return faq, ret, rer


def ingest_markdown(results: Iterable[Any]) -> str:
    """One line per uploaded file (IngestResult.line()), errors included."""
    lines = [f"- {esc(r.line())}" for r in results]
    return "\n".join(lines) if lines else "No files selected."


def trace_json(answer: Answer | None) -> dict:
    """The full answer with its trace, JSON-safe (shown by gr.JSON, which renders text, not HTML)."""
    return json.loads(answer.model_dump_json()) if answer is not None else {}
