"""The answering chain — the only module that knows the order of stages.

smalltalk → rewrite → FAQ (answer | suggest | go on) → retrieve → rerank (nothing left: refuse, no LLM)
→ generate (JSON, refusal-aware) → Answer with citations, suggestions and a trace of every stage.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from typing import Iterator

from .config import AppConfig
from .faq import FaqMatcher, FaqResult, normalize_question
from .generate import Generator, GeneratorBusy, load_generator
from .generate.prompts import detect_language
from .knowledge import KnowledgeBase
from .rerank import Reranker, build_reranker
from .retrieve import Retriever
from .rewrite import Rewriter
from .schema import Answer, Citation, FaqMatch, Generation, Hit, Query, Trace

logger = logging.getLogger(__name__)

__all__ = ["Pipeline"]


class Pipeline:
    """Wires the stages; `answer()` / `stream()` are what the UI, the API and evaluation call."""

    def __init__(self, cfg: AppConfig, kb: KnowledgeBase | None = None, generator: Generator | None = None):
        self.cfg = cfg
        self.kb = kb or KnowledgeBase(cfg)
        self.generator = generator if generator is not None else load_generator(cfg.generate)
        self.faq = FaqMatcher(cfg.faq, self.kb)
        self.retriever = Retriever(cfg.retrieve, self.kb)
        self.reranker: Reranker = build_reranker(cfg.rerank, doc_model=cfg.embed.doc_model, generator=self.generator,
                                                 kb=self.kb)
        self.rewriter = Rewriter(cfg.rewrite, self.generator)
        self._gen_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def warm_up(self, generator: bool = True, background: bool = True) -> None:
        """Load encoders and indexes now; the generator in a background thread so FAQ answers start at once."""
        self.kb.sync()
        self.faq.warm_up()
        self.retriever.warm_up()
        if generator:
            if background:
                self._gen_thread = threading.Thread(target=self._warm_generator, daemon=True, name="generator-load")
                self._gen_thread.start()
            else:
                self._warm_generator()

    def _warm_generator(self) -> None:
        self.generator.warm_up()
        self.reranker.warm_up()

    def status(self) -> dict:
        g = self.generator
        state = "ready" if g.ready else ("failed" if g.error else "loading")
        return {"generator": state, "generator_error": g.error, "reranker_error": self.reranker.error,
                "adapters": g.adapters() if g.ready else [], **self.kb.stats()}

    # ------------------------------------------------------------------ answering
    def answer(self, query: Query | str, *, adapter: str | None = None) -> Answer:
        final = None
        for final in self.stream(query, adapter=adapter):
            pass
        assert final is not None
        return final

    def stream(self, query: Query | str, *, adapter: str | None = None) -> Iterator[Answer]:
        """Yield partial answers while generating; the last one is final and carries the full trace."""
        if isinstance(query, str):
            query = Query(text=query)
        adapter = adapter if adapter is not None else self.cfg.generate.adapter
        trace = Trace(id=uuid.uuid4().hex[:12])
        lang = query.language or self._lang(query.text)
        query = query.model_copy(update={"language": lang})

        def done(text: str, kind: str, **kw) -> Answer:
            return Answer(text=text, kind=kind, trace=trace, question=query.text, **kw)

        # Small talk
        t0 = time.perf_counter()
        reply = self._smalltalk(query.text, lang)
        if reply:
            trace.add("smalltalk", _ms(t0), reply=reply)
            yield done(reply, "smalltalk")
            return

        # Rewrite follow-ups
        t0 = time.perf_counter()
        query, detail = self.rewriter.rewrite(query, adapter=adapter)
        trace.add("rewrite", _ms(t0), **detail)

        # FAQ
        res: FaqResult = self.faq.match(query)
        if query.rewritten and query.rewritten != query.text:
            # a question that stands on its own must not be pulled toward the previous topic by the rewrite
            own = self.faq.match(query.model_copy(update={"rewritten": None}))
            if own.best and (res.best is None or own.best.score >= res.best.score):
                res = own
        trace.add("faq", res.ms, decision=res.decision, exact=res.exact,
                  answer_threshold=self.cfg.faq.answer_threshold, suggest_threshold=self.cfg.faq.suggest_threshold,
                  candidates=[_faq_row(m) for m in res.matches[:10]])
        if res.decision == "answer":
            m = res.best
            yield done(m.faq.answer, "faq", faq=m, model="faq")
            return
        suggestions = self.faq.suggestions(res) if res.decision == "suggest" else []

        # Retrieve
        t0 = time.perf_counter()
        hits, detail = self.retriever.retrieve(query)
        trace.add("retrieve", _ms(t0), query=query.standalone, hits=[_hit_row(h) for h in hits], **detail)

        # Rerank
        t0 = time.perf_counter()
        kept, detail = self.reranker.rerank(query, hits, lang=lang)
        trace.add("rerank", _ms(t0), hits=[_hit_row(h) for h in kept], **detail)
        refusal = self.refusal_text(lang)
        if not kept:
            trace.add("generate", 0.0, skipped="no passage passed rerank; refused without calling the model")
            yield done(refusal, "refusal", suggestions=suggestions, model="none")
            return

        # Generate (loaded on first need when nobody warmed it up, e.g. the CLI)
        if not self.generator.ready and self.generator.error is None and self._gen_thread is None:
            self._warm_generator()
        if not self.generator.ready:
            state = self.generator.error or "the model is still loading"
            trace.add("generate", 0.0, skipped=state)
            yield done(self.limited_text(lang), "error", suggestions=suggestions, model="none")
            return
        try:
            gen = yield from self._generate(query, kept, adapter, lang, trace, done, suggestions)
        except GeneratorBusy as e:  # the bounded queue is full (generate.max_queue) or the wait ran out (max_wait_s)
            trace.add("generate", 0.0, skipped="busy", reason=str(e))
            yield done(self.busy_text(lang), "error", suggestions=suggestions, model="none")
            return
        except ValueError:  # an unknown adapter: the caller says which ones exist
            raise
        except Exception as e:  # the model crashed or its endpoint died mid-answer: say so, keep serving FAQs
            logger.exception("Generation failed")
            trace.add("generate", 0.0, error=f"{type(e).__name__}: {e}")
            yield done(self.limited_text(lang), "error", suggestions=suggestions, model="none")
            return
        trace.add("generate", gen.ms, model=gen.model, raw=gen.raw, parse_ok=gen.parse_ok, parse_note=gen.parse_note,
                  answer_in_context=gen.answer_in_context, evidence=gen.evidence,
                  prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens)
        if not gen.answer_in_context:
            yield done(refusal, "refusal", suggestions=suggestions, model=gen.model)
            return
        yield done(gen.answer, "rag", citations=_citations(gen, kept), suggestions=suggestions, model=gen.model)

    def _generate(self, query: Query, hits: list[Hit], adapter, lang, trace, done, suggestions):
        """Stream partial answers (the JSON `answer` field as it grows); return the final Generation."""
        final: Generation | None = None
        raw, last = "", ""
        for piece in self.generator.stream(query.standalone, hits, adapter=adapter, lang=lang):
            if isinstance(piece, Generation):
                final = piece
            else:
                raw += piece
                partial = _partial_answer(raw)
                if partial and partial != last:
                    last = partial
                    yield done(partial, "rag", suggestions=suggestions, model=adapter or "base")
        assert final is not None, "generator stream ended without a Generation"
        return final

    # ------------------------------------------------------------------ texts
    def _lang(self, text: str) -> str:
        lang = self.cfg.generate.language
        return detect_language(text) if lang == "auto" else lang

    def refusal_text(self, lang: str) -> str:
        return self.cfg.generate.refusal_zh if lang == "zh" else self.cfg.generate.refusal_en

    def limited_text(self, lang: str) -> str:
        if lang == "zh":
            return "智能助手暂时只能回答常见问题（模型未就绪）。请换个说法，或稍后再试。"
        return "The assistant is limited to FAQ answers right now (the model is not ready). Please rephrase or try later."

    def busy_text(self, lang: str) -> str:
        return "当前咨询人数较多，请稍候再试。" if lang == "zh" else "We're busy right now, please wait a moment and try again."

    def _smalltalk(self, text: str, lang: str) -> str | None:
        r = self.cfg.route
        if not r.smalltalk:
            return None
        norm = normalize_question(text)
        if not norm or len(norm) > 12:
            return None
        for words, zh, en in ((r.greetings_zh + r.greetings_en, r.greeting_reply_zh, r.greeting_reply_en),
                              (r.thanks_zh + r.thanks_en, r.thanks_reply_zh, r.thanks_reply_en)):
            for w in words:
                wn = normalize_question(w)
                if norm == wn or (norm.startswith(wn) and len(norm) - len(wn) <= 2):
                    return zh if lang == "zh" else en
        return None


_ANSWER_FIELD = re.compile(r'"answer"\s*:\s*"((?:[^"\\]|\\.)*)', re.S)


def _partial_answer(raw: str) -> str:
    """The `answer` string of a JSON object still being generated, once the model has said it is in context."""
    if not re.search(r'"answer_in_context"\s*:\s*true', raw):
        return ""
    m = _ANSWER_FIELD.search(raw)
    if not m:
        return ""
    body = m.group(1)
    if body.endswith("\\"):
        body = body[:-1]
    try:
        return json.loads(f'"{body}"')
    except json.JSONDecodeError:
        return body


def _citations(gen: Generation, hits: list[Hit]) -> list[Citation]:
    idx = [i for i in gen.evidence if 1 <= i <= len(hits)] or [1]
    out = []
    for i in dict.fromkeys(idx):
        c = hits[i - 1].chunk
        out.append(Citation(index=i, doc_id=c.doc_id, chunk_id=c.id, source=c.source, heading_path=c.heading_path,
                            snippet=c.text[:240]))
    return out


def _faq_row(m: FaqMatch) -> dict:
    return {"faq_id": m.faq.id, "question": m.faq.question, "matched": m.matched_question, "score": m.score}


def _hit_row(h: Hit) -> dict:
    return {"chunk_id": h.chunk.id, "source": h.chunk.source, "heading": " > ".join(h.chunk.heading_path),
            "score": round(h.score, 4), "scores": h.scores, "text": h.chunk.text[:200]}


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000
