"""Rewrite stage: turn a follow-up ("那运费呢？") into a standalone question using the chat history."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from .config import RewriteConfig
from .generate.prompts import build_rewrite_messages, detect_language
from .schema import Query

logger = logging.getLogger(__name__)

__all__ = ["Rewriter"]

_PREFIX = re.compile(r"^\s*(standalone question|rewritten question|question|改写后的问题|独立问题|问题)\s*[:：]\s*", re.I)


class Rewriter:
    """LLM rewrite, bounded to `max_new_tokens`; skipped without history.

    If the generator is not available the fallback keeps the subject by prefixing the previous user turn,
    which is what FAQ matching and BM25 need most; the trace says which path ran.
    """

    def __init__(self, cfg: RewriteConfig, generator=None):
        self.cfg = cfg
        self.generator = generator

    def rewrite(self, query: Query, *, adapter: str | None = None) -> tuple[Query, dict[str, Any]]:
        users = [c for r, c in query.history if r == "user"]
        if not self.cfg.enabled or not users:
            return query, {"skipped": "no history" if self.cfg.enabled else "disabled"}
        lang = query.language or detect_language(query.text)
        history = query.history[-2 * self.cfg.history_turns:]
        detail: dict[str, Any] = {"original": query.text}
        text = None
        gen = self.generator
        if gen is not None and gen.ready:
            try:
                raw = gen.complete(build_rewrite_messages(query.text, history, lang),
                                   max_new_tokens=self.cfg.max_new_tokens, adapter=adapter)
                text = _clean(raw)
                detail["method"], detail["raw"] = "llm", raw
            except Exception as e:
                detail["llm_error"] = f"{type(e).__name__}: {e}"
        if not text:
            text = f"{users[-1]} {query.text}"
            detail["method"] = "concat"
        detail["rewritten"] = text
        return query.model_copy(update={"rewritten": text, "language": lang}), detail


def _clean(raw: str) -> str:
    line = next((ln for ln in raw.strip().splitlines() if ln.strip()), "")
    line = _PREFIX.sub("", line).strip().strip('"“”「」')
    return line[:300]
