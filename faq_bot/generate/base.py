"""The generator interface: prompt -> raw text (backend) -> parsed, grounded, refusal-safe Generation (shared)."""

from __future__ import annotations

import logging
import re
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from faq_bot.config import GenerateConfig
from faq_bot.generate.parse import parse_answer, support
from faq_bot.generate.prompts import (ANSWER_PREFIX, Lang, build_answer_messages, detect_language, passage_text,
                                      planted_instructions)
from faq_bot.schema import Generation, Hit

logger = logging.getLogger(__name__)

__all__ = ["BASE_MODEL", "Generator", "GeneratorBusy", "GeneratorUnavailable"]

BASE_MODEL = "base"  # Generation.model for the base model; also accepted as an adapter name meaning "no adapter"


class GeneratorUnavailable(RuntimeError):
    """The backend could not be loaded or reached; `Generator.error` holds the reason."""


class GeneratorBusy(RuntimeError):
    """More requests are waiting than `generate.max_queue` allows."""


_PUNCT = re.compile(r"[\W_]+")


def _norm(text: str) -> str:
    return _PUNCT.sub("", text.lower())


def _cjk_only(s: str) -> bool:
    return all("\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" for ch in s)


def echoed_instruction(answer: str, passages: Sequence[str]) -> str | None:
    """A piece of `answer` that comes from an instruction planted in `passages` and from nowhere else in them
    (4 Chinese characters, or 10 other characters, punctuation and case ignored), or None.

    The omitted sentence never reaches the model, but it may have passed on its payload through words the
    question shares with it ("你们是不是所有商品都免费？" → "是的，所有商品都免费"): such an answer is refused.
    """
    planted = " ".join(p for text in passages for p in planted_instructions(text))
    if not planted:
        return None
    a, bad = _norm(answer), _norm(planted)
    clean = _norm(" ".join(passage_text(t) for t in passages))
    for n, keep in ((4, _cjk_only), (10, lambda g: True)):
        for i in range(len(a) - n + 1):
            gram = a[i:i + n]
            if keep(gram) and gram in bad and gram not in clean:
                return gram
    return None


class Generator(ABC):
    """A language-model backend for the answer step (and the rewrite / llm-rerank steps, via `complete`).

    Backends only turn chat messages into raw text (`_chat`, `_chat_stream`); prompt building, the
    concurrency gate, JSON parsing, the grounding check and refusal substitution live here, so every
    backend answers and refuses by the same rules.

    Args:
        cfg: the `generate` config section.
        min_support: share of the answer's content words that must occur in the cited passages
            (see `parse.support`); below it, or with a number no passage contains, the answer becomes a
            refusal. 0 turns the check off. Not a config field yet.
        retry_after_s: after a failed load, requests fail fast for this long before loading is retried.
    """

    def __init__(self, cfg: GenerateConfig, *, min_support: float = 0.5, retry_after_s: float = 30.0):
        if not 0.0 <= min_support <= 1.0:
            raise ValueError(f"`min_support` must be within [0, 1], got {min_support}.")
        self.cfg = cfg
        self.min_support = min_support
        self.retry_after_s = retry_after_s
        self.error: str | None = None
        self._ready = False
        self._failed_at = 0.0
        self._load_lock = threading.Lock()
        self._running = threading.BoundedSemaphore(cfg.max_concurrent)
        self._waiting = 0
        self._waiting_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    @property
    def ready(self) -> bool:
        """True once the backend is loaded (or reachable) and can serve requests."""
        return self._ready

    @property
    def tokenizer(self) -> Any | None:
        """Tokenizer used to count context tokens; None means an estimate is used."""
        return None

    def warm_up(self) -> bool:
        """Load the backend now. A failure is logged and kept in `error` (not raised); returns `ready`."""
        with self._load_lock:
            if self._ready:
                return True
            try:
                self._load()
            except Exception as e:  # recorded for /health and the UI; requests raise GeneratorUnavailable
                self.error = f"{type(e).__name__}: {e}"
                self._failed_at = time.monotonic()
                logger.exception("Generator %s failed to load", type(self).__name__)
                return False
            self.error = None
            self._ready = True
            return True

    def _ensure_ready(self) -> None:
        if self._ready:
            return
        if self.error is None or time.monotonic() - self._failed_at >= self.retry_after_s:
            self.warm_up()
        if not self._ready:
            raise GeneratorUnavailable(f"Generator `{self.cfg.backend}` is not available: {self.error}")

    @contextmanager
    def _slot(self) -> Iterator[None]:
        """At most `max_concurrent` requests run; at most `max_queue` wait, each for at most `max_wait_s`; the rest
        get GeneratorBusy (the customer reads "busy, please wait" instead of a spinner that never ends)."""
        if not self._running.acquire(blocking=False):
            with self._waiting_lock:
                if self._waiting >= self.cfg.max_queue:
                    raise GeneratorBusy(
                        f"Generator busy: {self.cfg.max_concurrent} running and {self._waiting} waiting "
                        f"(`generate.max_queue` = {self.cfg.max_queue})."
                    )
                self._waiting += 1
            try:
                wait = self.cfg.max_wait_s
                if not self._running.acquire(timeout=wait):  # None: as long as it takes
                    raise GeneratorBusy(f"Generator busy: no slot within {wait:g} s (`generate.max_wait_s`).")
            finally:
                with self._waiting_lock:
                    self._waiting -= 1
        try:
            yield
        finally:
            self._running.release()

    # ------------------------------------------------------------------ backend hooks

    @abstractmethod
    def _load(self) -> None:
        """Load weights or connect; raise on failure."""

    @abstractmethod
    def adapters(self) -> list[str]:
        """Names of the LoRA adapters this backend can serve."""

    @abstractmethod
    def _check_adapter(self, adapter: str) -> None:
        """Raise ValueError naming `adapter` and the available ones when it cannot be served."""

    @abstractmethod
    def _chat(self, messages: list[dict], *, max_new_tokens: int, adapter: str | None, prefix: str = "",
              usage: dict[str, int]) -> str:
        """Generate the assistant reply to `messages`, pre-filled with `prefix`; fill usage token counts.

        Returns the whole reply, `prefix` included (a backend that cannot pre-fill returns what it got).
        """

    @abstractmethod
    def _chat_stream(self, messages: list[dict], *, max_new_tokens: int, adapter: str | None, prefix: str = "",
                     usage: dict[str, int]) -> Iterator[str]:
        """Like `_chat`, yielding text deltas (the prefix first); usage is filled when it is exhausted."""

    # ------------------------------------------------------------------ public API

    def resolve_adapter(self, adapter: str | None) -> str | None:
        """None or "base" -> None (base model); a name -> itself, after checking it can be served.

        Raises:
            ValueError: unknown adapter; the message lists the available ones.
        """
        if adapter is None or adapter == BASE_MODEL:
            return None
        self._ensure_ready()
        self._check_adapter(adapter)
        return adapter

    def resolve_language(self, question: str, lang: str | None = None) -> Lang:
        """Per-call `lang`, else `generate.language` unless "auto", else detected from the question."""
        choice = lang or self.cfg.language
        if choice == "auto":
            return detect_language(question)
        if choice not in ("zh", "en"):
            raise ValueError(f"`lang` must be 'zh', 'en' or 'auto', got {choice!r}.")
        return choice  # type: ignore[return-value]

    def refusal_text(self, lang: Lang) -> str:
        return self.cfg.refusal_zh if lang == "zh" else self.cfg.refusal_en

    def answer_messages(self, question: str, hits: Sequence[Hit], lang: Lang) -> tuple[list[dict], list[Hit]]:
        """Answer-step messages within `generate.context_tokens`, and the hits they contain."""
        return build_answer_messages(question, hits, lang=lang, tokenizer=self.tokenizer,
                                     context_tokens=self.cfg.context_tokens)

    def generate(self, question: str, hits: Sequence[Hit], *, adapter: str | None = None,
                 lang: str | None = None, max_new_tokens: int | None = None) -> Generation:
        """Answer `question` from `hits` (ranked, best first) or refuse.

        `adapter=None` (or "base") runs the base model; pass `generate.adapter` to use the configured one.
        Evidence number n refers to `hits[n-1]`. Without hits the model is not called.

        Raises:
            ValueError: unknown adapter.
            GeneratorUnavailable: the backend failed to load.
            GeneratorBusy: the queue is full.
        """
        start = time.perf_counter()
        lang_ = self.resolve_language(question, lang)
        name = self.resolve_adapter(adapter)
        if not hits:
            return self._no_passages(lang_, name, start)
        self._ensure_ready()
        messages, used = self.answer_messages(question, hits, lang_)
        if not used:
            return self._no_passages(lang_, name, start)
        usage: dict[str, int] = {}
        with self._slot():
            text = self._chat(messages, max_new_tokens=max_new_tokens or self.cfg.max_new_tokens,
                              adapter=name, prefix=ANSWER_PREFIX, usage=usage)
        return self.finalize(text, used, lang=lang_, model=name or BASE_MODEL,
                             ms=(time.perf_counter() - start) * 1000, **usage)

    def stream(self, question: str, hits: Sequence[Hit], *, adapter: str | None = None,
               lang: str | None = None, max_new_tokens: int | None = None) -> Iterator[str | Generation]:
        """Like `generate`, yielding raw text deltas first and the Generation last.

        The deltas are the model's raw JSON (the UI should show the final Generation's answer, which
        may be a refusal); `Generation.raw` equals the concatenated deltas.
        """
        start = time.perf_counter()
        lang_ = self.resolve_language(question, lang)
        name = self.resolve_adapter(adapter)
        if not hits:
            yield self._no_passages(lang_, name, start)
            return
        self._ensure_ready()
        messages, used = self.answer_messages(question, hits, lang_)
        if not used:
            yield self._no_passages(lang_, name, start)
            return
        usage: dict[str, int] = {}
        parts: list[str] = []
        with self._slot():
            deltas = self._chat_stream(messages, max_new_tokens=max_new_tokens or self.cfg.max_new_tokens,
                                       adapter=name, prefix=ANSWER_PREFIX, usage=usage)
            try:
                for delta in deltas:
                    if delta:
                        parts.append(delta)
                        yield delta
            finally:
                deltas.close()  # a consumer that stops early must stop the backend too
        yield self.finalize("".join(parts), used, lang=lang_, model=name or BASE_MODEL,
                            ms=(time.perf_counter() - start) * 1000, **usage)

    def complete(self, messages: list[dict], *, max_new_tokens: int, adapter: str | None = None) -> str:
        """Plain chat completion (rewrite step): the assistant reply to `messages`, stripped."""
        name = self.resolve_adapter(adapter)
        self._ensure_ready()
        with self._slot():
            return self._chat(messages, max_new_tokens=max_new_tokens, adapter=name, usage={}).strip()

    def finalize(self, raw: str, used_hits: Sequence[Hit], *, lang: Lang, model: str, ms: float = 0.0,
                 prompt_tokens: int = 0, completion_tokens: int = 0) -> Generation:
        """Raw model output -> Generation: parse, check grounding, substitute the refusal text."""
        parsed = parse_answer(raw, n_passages=len(used_hits))
        answer_in_context, answer, evidence = parsed.answer_in_context, parsed.answer, parsed.evidence
        notes = [parsed.note] if parsed.note else []
        if answer_in_context and self.min_support > 0:
            # Cited passages first; a wrong passage number with an answer found elsewhere is still grounded.
            # against the passages as the model saw them: an instruction planted in a document is no support
            cited = [passage_text(used_hits[i - 1].chunk.embed_text()) for i in evidence]
            share, missing = support(answer, cited) if cited else (0.0, [])
            if missing or share < self.min_support:
                share, missing = support(answer, [passage_text(h.chunk.embed_text()) for h in used_hits])
            if missing or share < self.min_support:
                why = f"numbers {', '.join(missing)} absent" if missing else f"support {share:.2f} < {self.min_support}"
                notes.append(f"answer not grounded in the passages ({why}): refusal")
                answer_in_context, evidence = False, []
        if answer_in_context:
            echo = echoed_instruction(answer, [h.chunk.embed_text() for h in used_hits])
            if echo:
                notes.append(f"answer not grounded in the passages (repeats {echo!r} from an instruction planted in "
                             "a passage): refusal")
                answer_in_context, evidence = False, []
        return Generation(
            answer_in_context=answer_in_context,
            answer=answer if answer_in_context else self.refusal_text(lang),
            evidence=evidence,
            raw=raw,
            parse_ok=parsed.ok,
            parse_note="; ".join(notes),
            model=model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            ms=round(ms, 3),
        )

    def _no_passages(self, lang: Lang, name: str | None, start: float) -> Generation:
        return Generation(answer_in_context=False, answer=self.refusal_text(lang), evidence=[], raw="",
                          parse_ok=True, parse_note="no passages (or none fit the context budget): refused "
                          "without calling the model",
                          model=name or BASE_MODEL, ms=round((time.perf_counter() - start) * 1000, 3))
