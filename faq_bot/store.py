"""SQLite (WAL) knowledge store: documents, chunks, FAQs, vectors, feedback, eval runs — the source of truth.

Indexes on disk are caches of what is here. Every change that affects an index bumps `generation`
in the same transaction, so a reader can tell whether an index file is stale and rebuild it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .schema import Chunk, Doc, Faq

logger = logging.getLogger(__name__)

__all__ = ["Store"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY, source TEXT NOT NULL, sha256 TEXT NOT NULL, type TEXT NOT NULL,
    created REAL NOT NULL, n_chunks INTEGER NOT NULL DEFAULT 0, meta TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS chunks (
    vid INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
    doc_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    position INTEGER NOT NULL, heading_path TEXT NOT NULL, text TEXT NOT NULL, meta TEXT NOT NULL DEFAULT '{}');
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
CREATE TABLE IF NOT EXISTS faqs (
    id TEXT PRIMARY KEY, question TEXT NOT NULL, answer TEXT NOT NULL, similar_questions TEXT NOT NULL,
    category TEXT NOT NULL DEFAULT '', enabled INTEGER NOT NULL DEFAULT 1,
    doc_id TEXT REFERENCES documents(id) ON DELETE CASCADE, updated REAL NOT NULL);
CREATE INDEX IF NOT EXISTS faqs_doc ON faqs(doc_id);
CREATE TABLE IF NOT EXISTS faq_questions (
    qid INTEGER PRIMARY KEY AUTOINCREMENT, faq_id TEXT NOT NULL REFERENCES faqs(id) ON DELETE CASCADE,
    text TEXT NOT NULL, is_standard INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS faq_questions_faq ON faq_questions(faq_id);
CREATE TABLE IF NOT EXISTS vectors (
    space TEXT NOT NULL, vid INTEGER NOT NULL, model TEXT NOT NULL, vec BLOB NOT NULL,
    PRIMARY KEY (space, vid, model));
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL, trace_id TEXT NOT NULL DEFAULT '',
    question TEXT NOT NULL, answer TEXT NOT NULL, rating INTEGER NOT NULL, correction TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL DEFAULT '', model TEXT NOT NULL DEFAULT '', trace TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS eval_runs (
    id TEXT PRIMARY KEY, created REAL NOT NULL, kind TEXT NOT NULL, summary TEXT NOT NULL, path TEXT NOT NULL);
"""
# vectors rows are removed with their chunk / question: foreign keys cannot span two tables keyed by `space`
_TRIGGERS = """
CREATE TRIGGER IF NOT EXISTS chunks_vec_del AFTER DELETE ON chunks BEGIN
    DELETE FROM vectors WHERE space = 'chunk' AND vid = OLD.vid; END;
CREATE TRIGGER IF NOT EXISTS faq_q_vec_del AFTER DELETE ON faq_questions BEGIN
    DELETE FROM vectors WHERE space = 'faq' AND vid = OLD.qid; END;
"""


class Store:
    """Thread-safe SQLite store. One connection per thread; writes are serialized by SQLite."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.con.executescript(_SCHEMA + _TRIGGERS)  # executescript commits by itself: outside tx()
        with self.tx() as con:
            con.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")

    # ------------------------------------------------------------------ plumbing
    @property
    def con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute("PRAGMA foreign_keys=ON")
            self._local.con = con
        return con

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One atomic write transaction (BEGIN IMMEDIATE … COMMIT, rolled back on any error)."""
        con = self.con
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        else:
            con.execute("COMMIT")

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    def generation(self) -> int:
        return int(self.con.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])

    @staticmethod
    def _bump(con: sqlite3.Connection) -> None:
        con.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'")

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.con.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.tx() as con:
            con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # ------------------------------------------------------------------ documents and chunks
    def get_document(self, doc_id: str) -> Doc | None:
        row = self.con.execute("SELECT * FROM documents WHERE id=?", (doc_id,)).fetchone()
        return _doc(row) if row else None

    def find_document_by_source(self, source: str) -> Doc | None:
        row = self.con.execute("SELECT * FROM documents WHERE source=? ORDER BY created DESC", (source,)).fetchone()
        return _doc(row) if row else None

    def list_documents(self) -> list[Doc]:
        return [_doc(r) for r in self.con.execute("SELECT * FROM documents ORDER BY created, id")]

    def replace_document(
        self,
        doc: Doc,
        chunks: Sequence[Chunk] = (),
        vectors: dict[str, np.ndarray] | None = None,
        faqs: Sequence[Faq] = (),
        faq_vectors: dict[str, np.ndarray] | None = None,
        *,
        before_commit: Callable[[], None] | None = None,
    ) -> tuple[list[int], list[int]]:
        """Insert `doc` with its chunks (or FAQs) and their vectors, replacing any document of the same id.

        All in one transaction: after a crash the document is wholly in or wholly out. `before_commit` runs
        inside it, after the generation bump, on this thread's connection (it sees the new rows); an error
        there rolls everything back.

        Returns:
            (chunk vector ids, FAQ question vector ids), in input order (questions: FAQ by FAQ, standard first).

        Raises:
            ValueError: when a FAQ id already belongs to another document.
        """
        vectors, faq_vectors = vectors or {}, faq_vectors or {}
        with self.tx() as con:
            for faq in faqs:
                row = con.execute(
                    "SELECT f.doc_id, d.source FROM faqs f LEFT JOIN documents d ON d.id = f.doc_id WHERE f.id=?",
                    (faq.id,)).fetchone()
                if row and row["doc_id"] != doc.id:
                    raise ValueError(
                        f"FAQ id `{faq.id}` already exists in {row['source'] or 'the store'}; "
                        "use a different id or delete the other entry first.")
            con.execute("DELETE FROM documents WHERE id=?", (doc.id,))
            con.execute(
                "INSERT INTO documents (id, source, sha256, type, created, n_chunks, meta) VALUES (?,?,?,?,?,?,?)",
                (doc.id, doc.source, doc.sha256, doc.type, doc.created or time.time(), len(chunks) or len(faqs),
                 json.dumps(doc.meta, ensure_ascii=False)))
            chunk_vids = []
            for c in chunks:
                cur = con.execute(
                    "INSERT INTO chunks (id, doc_id, position, heading_path, text, meta) VALUES (?,?,?,?,?,?)",
                    (c.id, doc.id, c.position, json.dumps(c.heading_path, ensure_ascii=False), c.text,
                     json.dumps(c.meta, ensure_ascii=False)))
                chunk_vids.append(cur.lastrowid)
            for model, mat in vectors.items():
                _check_rows(mat, len(chunk_vids), model)
                con.executemany("INSERT INTO vectors VALUES ('chunk', ?, ?, ?)",
                                [(v, model, _blob(mat[i])) for i, v in enumerate(chunk_vids)])
            qids = self._insert_faqs(con, faqs, doc.id)
            for model, mat in faq_vectors.items():
                _check_rows(mat, len(qids), model)
                con.executemany("INSERT INTO vectors VALUES ('faq', ?, ?, ?)",
                                [(q, model, _blob(mat[i])) for i, q in enumerate(qids)])
            self._bump(con)
            if before_commit is not None:
                before_commit()
        return chunk_vids, qids

    def delete_document(self, doc_id: str, *, before_commit: Callable[[], None] | None = None) -> bool:
        """Delete a document with its chunks, FAQs and vectors. Returns False when it did not exist.

        `before_commit`: as in `replace_document` (run only when something was deleted)."""
        with self.tx() as con:
            n = con.execute("DELETE FROM documents WHERE id=?", (doc_id,)).rowcount
            if n:
                self._bump(con)
                if before_commit is not None:
                    before_commit()
        return bool(n)

    def chunks(self, vids: Sequence[int] | None = None, doc_id: str | None = None) -> list[Chunk]:
        """Chunks by vector id (in the order given), by document, or all."""
        if vids is not None:
            vids = [int(v) for v in vids]
            if not vids:
                return []
            q = f"SELECT c.*, d.source FROM chunks c JOIN documents d ON d.id=c.doc_id WHERE c.vid IN ({','.join('?' * len(vids))})"
            by_vid = {r["vid"]: _chunk(r) for r in self.con.execute(q, vids)}
            return [by_vid[v] for v in vids if v in by_vid]
        if doc_id is not None:
            rows = self.con.execute("SELECT c.*, d.source FROM chunks c JOIN documents d ON d.id=c.doc_id "
                                    "WHERE c.doc_id=? ORDER BY position", (doc_id,))
        else:
            rows = self.con.execute("SELECT c.*, d.source FROM chunks c JOIN documents d ON d.id=c.doc_id ORDER BY vid")
        return [_chunk(r) for r in rows]

    def chunk_vid_map(self, vids: Sequence[int]) -> dict[int, Chunk]:
        return {int(c.meta["vid"]): c for c in self.chunks(vids)}

    def chunk_vids(self) -> list[int]:
        return [r[0] for r in self.con.execute("SELECT vid FROM chunks ORDER BY vid")]

    def count(self, table: str) -> int:
        if table not in {"documents", "chunks", "faqs", "faq_questions", "feedback", "eval_runs"}:
            raise ValueError(f"unknown table {table!r}")
        return self.con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]

    # ------------------------------------------------------------------ vectors
    def vectors(self, space: str, model: str) -> tuple[np.ndarray, np.ndarray]:
        """All stored vectors of a space ('chunk' | 'faq') for one model: (ids int64, matrix float32)."""
        rows = self.con.execute("SELECT vid, vec FROM vectors WHERE space=? AND model=? ORDER BY vid",
                                (space, model)).fetchall()
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        mat = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
        return ids, mat

    def missing_vectors(self, space: str, model: str) -> list[tuple[int, str]]:
        """(id, text) of chunks or FAQ questions that have no vector for `model` (e.g. after a model change)."""
        if space == "chunk":
            q = ("SELECT c.vid, c.heading_path, c.text FROM chunks c LEFT JOIN vectors v ON v.space='chunk' "
                 "AND v.vid=c.vid AND v.model=? WHERE v.vid IS NULL ORDER BY c.vid")
            return [(r[0], _embed_text(json.loads(r[1]), r[2])) for r in self.con.execute(q, (model,))]
        q = ("SELECT q.qid, q.text FROM faq_questions q LEFT JOIN vectors v ON v.space='faq' AND v.vid=q.qid "
             "AND v.model=? WHERE v.vid IS NULL ORDER BY q.qid")
        return [(r[0], r[1]) for r in self.con.execute(q, (model,))]

    def put_vectors(self, space: str, model: str, ids: Sequence[int], mat: np.ndarray) -> None:
        _check_rows(mat, len(ids), model)
        with self.tx() as con:
            con.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)",
                            [(space, int(v), model, _blob(mat[i])) for i, v in enumerate(ids)])
            self._bump(con)

    # ------------------------------------------------------------------ FAQs
    @staticmethod
    def _insert_faqs(con: sqlite3.Connection, faqs: Sequence[Faq], doc_id: str | None) -> list[int]:
        qids = []
        now = time.time()
        for f in faqs:
            con.execute(
                "INSERT INTO faqs (id, question, answer, similar_questions, category, enabled, doc_id, updated) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (f.id, f.question, f.answer, json.dumps(f.similar_questions, ensure_ascii=False), f.category,
                 int(f.enabled), doc_id, now))
            for i, q in enumerate(f.all_questions()):
                qids.append(con.execute("INSERT INTO faq_questions (faq_id, text, is_standard) VALUES (?,?,?)",
                                        (f.id, q, int(i == 0))).lastrowid)
        return qids

    def upsert_faq(self, faq: Faq, vectors: dict[str, np.ndarray] | None = None, *,
                   before_commit: Callable[[], None] | None = None) -> list[int]:
        """Add or edit one FAQ (admin edits); its question vectors are replaced. `before_commit`: as in
        `replace_document`."""
        with self.tx() as con:
            row = con.execute("SELECT doc_id FROM faqs WHERE id=?", (faq.id,)).fetchone()
            con.execute("DELETE FROM faqs WHERE id=?", (faq.id,))
            qids = self._insert_faqs(con, [faq], row["doc_id"] if row else None)
            for model, mat in (vectors or {}).items():
                _check_rows(mat, len(qids), model)
                con.executemany("INSERT INTO vectors VALUES ('faq', ?, ?, ?)",
                                [(q, model, _blob(mat[i])) for i, q in enumerate(qids)])
            self._bump(con)
            if before_commit is not None:
                before_commit()
        return qids

    def delete_faq(self, faq_id: str, *, before_commit: Callable[[], None] | None = None) -> bool:
        with self.tx() as con:
            n = con.execute("DELETE FROM faqs WHERE id=?", (faq_id,)).rowcount
            if n:
                self._bump(con)
                if before_commit is not None:
                    before_commit()
        return bool(n)

    def set_faq_enabled(self, faq_id: str, enabled: bool) -> bool:
        with self.tx() as con:
            n = con.execute("UPDATE faqs SET enabled=?, updated=? WHERE id=?", (int(enabled), time.time(), faq_id)).rowcount
            if n:
                self._bump(con)
        return bool(n)

    def faqs(self, ids: Sequence[str] | None = None, enabled_only: bool = False) -> list[Faq]:
        q = "SELECT f.*, d.source FROM faqs f LEFT JOIN documents d ON d.id=f.doc_id"
        args: list[Any] = []
        where = []
        if ids is not None:
            if not ids:
                return []
            where.append(f"f.id IN ({','.join('?' * len(ids))})")
            args += list(ids)
        if enabled_only:
            where.append("f.enabled=1")
        if where:
            q += " WHERE " + " AND ".join(where)
        return [_faq(r) for r in self.con.execute(q + " ORDER BY f.id", args)]

    def faq_questions(self) -> list[tuple[int, str, str]]:
        """(qid, faq_id, text) of every question of every FAQ."""
        return [(r[0], r[1], r[2]) for r in self.con.execute("SELECT qid, faq_id, text FROM faq_questions ORDER BY qid")]

    # ------------------------------------------------------------------ feedback and eval runs
    def add_feedback(self, *, question: str, answer: str, rating: int, correction: str = "", trace_id: str = "",
                     kind: str = "", model: str = "", trace: dict | None = None) -> int:
        if rating not in (-1, 1):
            raise ValueError(f"`rating` must be 1 or -1, got {rating!r}.")
        with self.tx() as con:
            return con.execute(
                "INSERT INTO feedback (created, trace_id, question, answer, rating, correction, kind, model, trace) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                (time.time(), trace_id, question, answer, rating, correction, kind, model,
                 json.dumps(trace or {}, ensure_ascii=False))).lastrowid

    def update_feedback(self, feedback_id: int, *, correction: str) -> bool:
        with self.tx() as con:
            return bool(con.execute("UPDATE feedback SET correction=? WHERE id=?", (correction, feedback_id)).rowcount)

    def feedback(self, rating: int | None = None, limit: int = 1000) -> list[dict]:
        q, args = "SELECT * FROM feedback", []
        if rating is not None:
            q, args = q + " WHERE rating=?", [rating]
        rows = self.con.execute(q + " ORDER BY id DESC LIMIT ?", [*args, limit])
        return [dict(r) | {"trace": json.loads(r["trace"])} for r in rows]

    def add_eval_run(self, run_id: str, kind: str, summary: dict, path: str) -> None:
        with self.tx() as con:
            con.execute("INSERT OR REPLACE INTO eval_runs VALUES (?,?,?,?,?)",
                        (run_id, time.time(), kind, json.dumps(summary, ensure_ascii=False), path))

    def eval_runs(self, limit: int = 100) -> list[dict]:
        rows = self.con.execute("SELECT * FROM eval_runs ORDER BY created DESC LIMIT ?", (limit,))
        return [dict(r) | {"summary": json.loads(r["summary"])} for r in rows]


def _check_rows(mat: np.ndarray, n: int, model: str) -> None:
    if len(mat) != n:
        raise ValueError(f"vectors for `{model}`: got {len(mat)} rows for {n} items.")


def _blob(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype=np.float32).tobytes()


def _embed_text(heading_path: list[str], text: str) -> str:
    return Chunk(id="", doc_id="", text=text, heading_path=heading_path).embed_text()


def _doc(r: sqlite3.Row) -> Doc:
    return Doc(id=r["id"], source=r["source"], sha256=r["sha256"], type=r["type"], created=r["created"],
               n_chunks=r["n_chunks"], meta=json.loads(r["meta"]))


def _chunk(r: sqlite3.Row) -> Chunk:
    return Chunk(id=r["id"], doc_id=r["doc_id"], text=r["text"], heading_path=json.loads(r["heading_path"]),
                 source=r["source"], position=r["position"], meta=json.loads(r["meta"]) | {"vid": r["vid"]})


def _faq(r: sqlite3.Row) -> Faq:
    return Faq(id=r["id"], question=r["question"], answer=r["answer"],
               similar_questions=json.loads(r["similar_questions"]), category=r["category"],
               enabled=bool(r["enabled"]), source=r["source"] or "")
