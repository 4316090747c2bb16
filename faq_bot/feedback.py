"""Thumbs up/down and corrections: stored with the answer's trace, exported as training-ready JSONL."""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from .schema import Answer
from .store import Store

logger = logging.getLogger(__name__)

__all__ = ["record_feedback", "set_correction", "export_feedback", "TraceLog"]

MAX_CORRECTION_CHARS = 4000


def record_feedback(store: Store, *, answer: Answer | dict, rating: int, correction: str = "") -> int:
    """Store a rating (1 or -1) and an optional correction for one answer; returns the feedback row id.

    Raises:
        ValueError: bad rating or an over-long correction.
    """
    ans = answer if isinstance(answer, Answer) else Answer.model_validate(answer)
    correction = _check_correction(correction)
    return store.add_feedback(question=ans.question, answer=ans.text, rating=rating, correction=correction,
                              trace_id=ans.trace.id, kind=ans.kind, model=ans.model,
                              trace=ans.trace.model_dump(mode="json"))


def set_correction(store: Store, feedback_id: int, correction: str) -> bool:
    """Attach a correction to an existing feedback row (the customer types it after pressing thumbs-down)."""
    correction = _check_correction(correction)
    return store.update_feedback(int(feedback_id), correction=correction)


def export_feedback(store: Store, path: str | Path, only_negative: bool = False) -> int:
    """Write feedback as JSONL for training; returns the number of lines written.

    One object a line: ``{"id", "question", "answer", "rating", "correction", "trace_id", "kind", "model",
    "created"}``. A negative row with a correction is a ready (question, bad answer, good answer) triple.
    """
    rows = store.feedback(rating=-1 if only_negative else None, limit=1_000_000)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in reversed(rows):  # oldest first
            f.write(json.dumps(_export_row(r), ensure_ascii=False) + "\n")
    return len(rows)


def _export_row(r: dict[str, Any]) -> dict[str, Any]:
    return {"id": r["id"], "question": r["question"], "answer": r["answer"], "rating": r["rating"],
            "correction": r["correction"], "trace_id": r["trace_id"], "kind": r["kind"], "model": r["model"],
            "created": r["created"]}


def _check_correction(correction: str | None) -> str:
    correction = (correction or "").strip()
    if len(correction) > MAX_CORRECTION_CHARS:
        raise ValueError(f"`correction` must be at most {MAX_CORRECTION_CHARS} characters, got {len(correction)}.")
    return correction


class TraceLog:
    """The last `maxsize` answers by trace id, oldest dropped first, so feedback and debugging can refer to them."""

    def __init__(self, maxsize: int = 1000):
        if maxsize <= 0:
            raise ValueError(f"`maxsize` must be > 0, got {maxsize}.")
        self.maxsize = maxsize
        self._items: OrderedDict[str, Answer] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, answer: Answer) -> None:
        if not answer.trace.id:
            return
        with self._lock:
            self._items[answer.trace.id] = answer
            self._items.move_to_end(answer.trace.id)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def get(self, trace_id: str) -> Answer | None:
        with self._lock:
            return self._items.get(trace_id)

    def last(self) -> Answer | None:
        with self._lock:
            return next(reversed(self._items.values()), None)

    def __len__(self) -> int:
        return len(self._items)
