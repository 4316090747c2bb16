"""The chat session behind the Chat tab: one reply stream, likes and corrections, on a plain-dict session state."""

from __future__ import annotations

import logging
import math
from typing import Any, Iterator

import gradio as gr

from ..api import QuestionError, build_query
from ..auth import Auth
from ..feedback import TraceLog, record_feedback, set_correction
from ..schema import Answer, Query
from ..store import Store
from . import render

logger = logging.getLogger(__name__)

__all__ = ["new_session", "reply", "like", "correct", "adapter_choices", "adapter_arg", "query_or_error",
           "DEFAULT_MODEL"]

DEFAULT_MODEL = "default"


def new_session() -> dict[str, Any]:
    """Per-browser chat state: rendered messages, plain history for the pipeline, answers by message index."""
    return {"messages": [], "history": [], "answers": {}, "last_trace": ""}


def _assistant(content: str) -> dict:
    return {"role": "assistant", "content": content}


def reply(pipeline, auth: Auth, traces: TraceLog, question: str, session: dict, *, adapter: str | None = None,
          client: str = "") -> Iterator[tuple[dict, Answer | None]]:
    """Stream one answer. Yields (session, None) while it grows, then (session, final answer).

    The question is rendered escaped; over-long questions and rate-limited clients get a notice instead.
    """
    question = (question or "").strip()
    if not question:
        yield session, None
        return
    messages = [*session["messages"], {"role": "user", "content": render.user_markdown(question)}]
    try:
        query = build_query(question, session["history"], pipeline.cfg.app)
    except QuestionError as e:
        yield {**session, "messages": [*messages, _assistant(render.notice_markdown(str(e)))]}, None
        return
    wait = auth.limiter.hit(client)
    if wait:
        note = f"You are sending messages too fast; please wait {math.ceil(wait)} s and try again."
        yield {**session, "messages": [*messages, _assistant(render.notice_markdown(note))]}, None
        return
    yield {**session, "messages": messages}, None  # the question shows at once; the answer follows
    answer = None
    try:
        for answer in pipeline.stream(query, adapter=adapter):
            yield {**session, "messages": [*messages, _assistant(render.answer_markdown(answer, final=False))]}, None
    except Exception:
        logger.exception("Answering %r failed", question[:80])
        note = "Sorry, something went wrong while answering. Please try again."
        yield {**session, "messages": [*messages, _assistant(render.notice_markdown(note))]}, None
        return
    traces.add(answer)
    final = {**session,
             "messages": [*messages, _assistant(render.answer_markdown(answer))],
             # what the pipeline gets is capped by build_query; the session keeps no more than that either
             "history": [*session["history"], ("user", question),
                         ("assistant", answer.text)][-2 * pipeline.cfg.app.max_history_turns:],
             "answers": {**session["answers"], len(messages): answer.model_dump(mode="json")},
             "last_trace": answer.trace.id}
    yield final, answer


def like(store: Store, session: dict, index: Any, liked: Any) -> tuple[int | None, str, bool]:
    """Record 👍/👎 for the assistant message at `index`.

    Returns (feedback id awaiting a correction, note for the customer, show the correction box).
    """
    index = index[0] if isinstance(index, (list, tuple)) else index
    answer = session["answers"].get(index)
    if answer is None or liked not in (True, False):  # un-clicking, or a notice rather than an answer
        return None, "", False
    fid = record_feedback(store, answer=answer, rating=1 if liked else -1)
    if liked:
        return None, "Thanks for your feedback!", False
    return fid, "Sorry about that. What should the answer have been? (optional)", True


def correct(store: Store, feedback_id: int | None, text: str) -> str:
    """Attach the customer's correction to their last 👎; returns the note to show."""
    if not feedback_id or not (text or "").strip():
        return "Nothing to send."
    try:
        set_correction(store, feedback_id, text)
    except ValueError as e:
        return str(e)
    return "Thank you, your correction was saved."


def query_or_error(text: str, app) -> Query:
    """`build_query` for admin boxes: a bad question becomes a UI error toast."""
    try:
        return build_query(text, (), app)
    except QuestionError as e:
        raise gr.Error(str(e)) from None


def adapter_choices(pipeline) -> list[str]:
    """Model picker entries: the configured default, the base model ("base"), then every adapter."""
    try:
        names = list(pipeline.generator.adapters())
    except Exception:
        logger.exception("Listing adapters failed")
        names = []
    return [DEFAULT_MODEL, "base", *names]


def adapter_arg(choice: str | None, admin: bool) -> str | None:
    """What to pass to `pipeline.stream(adapter=...)`: only admins may pick; `default` means the configured one."""
    if not admin or not choice or choice == DEFAULT_MODEL:
        return None
    return choice
