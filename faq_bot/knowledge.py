"""The knowledge base: ingest and delete through the store, keep the FAISS/BM25 indexes in step with it.

SQLite holds documents, chunks, FAQs and their vectors. The indexes on disk are caches tagged with the
store `generation` they were built from; a stale or missing index is rebuilt from stored vectors at
start (no re-embedding), so a crash between the SQLite commit and the index save loses nothing.

Every index file write that could run out of space happens before the commit: inside the store transaction,
after the generation bump, the new FAISS/BM25 indexes are built and saved under temporary names. A full disk
there rolls the transaction back (the store is unchanged, the caller gets a clear error); after the commit
only renames remain, meta file last.

With `retrieve.backend: qdrant` the chunk vectors live in a Qdrant collection instead of a FAISS file
(FAQ questions stay in FAISS). Qdrant persists each write, so it is brought to the store's generation by
id difference (chunk ids are never reused, so an id's vector only changes with the encoder), and rebuilt
from scratch on `reindex`, an encoder change, or when its tag is missing or from another place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

from .config import AppConfig
from .index import BM25Index, FaissIndex
from .ingest import FAQ_KINDS, IngestError, chunk_blocks, read_document, read_faqs, sniff_kind
from .models import Encoder, load_encoder
from .schema import Chunk, Doc, Faq
from .store import Store

if TYPE_CHECKING:
    from .index.qdrant import QdrantIndex

logger = logging.getLogger(__name__)

__all__ = ["KnowledgeBase", "IngestResult", "SUPPORTED_SUFFIXES"]

SUPPORTED_SUFFIXES = {".csv", ".xlsx", ".json", ".jsonl", ".md", ".markdown", ".html", ".htm", ".txt", ".pdf", ".docx"}


@dataclass
class IngestResult:
    source: str
    status: str  # added | replaced | unchanged | error
    doc_id: str = ""
    kind: str = ""
    n_items: int = 0
    ms: float = 0.0
    error: str = ""

    def line(self) -> str:
        if self.status == "error":
            return f"✗ {self.error}"
        what = "FAQs" if self.kind in FAQ_KINDS else "chunks"
        return f"✓ {self.source}: {self.status}, {self.n_items} {what} ({self.ms:.0f} ms)"


@dataclass
class _IndexSet:
    """In-memory indexes of one space, with the store generation they reflect."""

    dense: FaissIndex | QdrantIndex | None = None
    sparse: BM25Index | None = None
    generation: int = -1
    texts: dict[int, str] = field(default_factory=dict)
    dense_model: str = ""  # Qdrant: encoder whose vectors the collection wholly holds ("" = unknown, sync in full)


@dataclass
class _Staged:
    """One space's indexes built inside a store transaction, saved under temporary names (see `_commit`)."""

    space: str
    generation: int
    dense: FaissIndex
    sparse: BM25Index
    texts: dict[int, str]
    model: str
    files: list[tuple[Path, Path]] = field(default_factory=list)  # (temporary, final); the meta file last

    def install(self, iset: _IndexSet) -> None:
        """After the commit: rename the files into place (no new disk space needed) and swap the indexes in."""
        try:
            for tmp, final in self.files:
                os.replace(tmp, final)
        except OSError as e:  # the meta file was not replaced: the files on disk read as stale, rebuilt at start
            logger.warning("%s index files could not be put in place (%s); rebuilt at the next start", self.space, e)
            self.discard()
        iset.dense, iset.sparse, iset.texts, iset.generation = self.dense, self.sparse, self.texts, self.generation
        iset.dense_model = self.model

    def discard(self) -> None:
        for tmp, _ in self.files:
            with contextlib.suppress(OSError):
                tmp.unlink()


def doc_id_for(source: str) -> str:
    """Stable id from the upload name: re-uploading a file of the same name replaces it."""
    return "doc-" + hashlib.sha1(source.encode("utf-8")).hexdigest()[:12]


class KnowledgeBase:
    """Store + encoders + indexes for FAQ questions ('faq' space) and document chunks ('chunk' space)."""

    def __init__(self, cfg: AppConfig):
        self.cfg = cfg
        self.store = Store(cfg.store.path)
        self.index_dir = Path(cfg.store.index_dir)
        self.index_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._faq = _IndexSet()
        self._chunk = _IndexSet()
        self._listeners: list[weakref.WeakMethod] = []

    # ------------------------------------------------------------------ models
    @property
    def faq_encoder(self) -> Encoder:
        e = self.cfg.embed
        return load_encoder(e.faq_model, threads=e.threads, cache_size=e.query_cache_size, field="embed.faq_model")

    @property
    def doc_encoder(self) -> Encoder:
        e = self.cfg.embed
        return load_encoder(e.doc_model, threads=e.threads, cache_size=e.query_cache_size, field="embed.doc_model")

    # ------------------------------------------------------------------ ingest
    def ingest_bytes(self, data: bytes, name: str) -> IngestResult:
        """Ingest one file's content under its upload name. Errors come back in the result, store unchanged."""
        t0 = time.perf_counter()
        source = _safe_name(name)
        try:
            kind = sniff_kind(data, source, self.cfg.ingest)
            sha = hashlib.sha256(data).hexdigest()
            doc_id = doc_id_for(source)
            old = self.store.get_document(doc_id)
            if old is not None and old.sha256 == sha:
                return IngestResult(source, "unchanged", doc_id, kind, old.n_chunks, _ms(t0))
            doc = Doc(id=doc_id, source=source, sha256=sha, type=kind, created=time.time())
            if kind in FAQ_KINDS:
                faqs = read_faqs(data, source, self.cfg.ingest)
                qvecs = self._encode("faq", [q for f in faqs for q in f.all_questions()])
                try:
                    self._commit(lambda stage: self.store.replace_document(
                        doc, faqs=faqs, faq_vectors={self.faq_encoder.name: qvecs}, before_commit=stage))
                except ValueError as e:
                    raise IngestError(source, str(e)) from None
                n = len(faqs)
            else:
                blocks = read_document(data, source, self.cfg.ingest)
                enc = self.doc_encoder
                chunks = chunk_blocks(blocks, doc_id=doc_id, source=source, count_tokens=enc.count_tokens,
                                      chunk_tokens=self.cfg.ingest.chunk_tokens, overlap=self.cfg.ingest.chunk_overlap)
                if not chunks:
                    raise IngestError(source, "no text could be extracted; is it a scanned image?")
                vecs = self._encode("chunk", [c.embed_text() for c in chunks])
                self._commit(lambda stage: self.store.replace_document(
                    doc, chunks=chunks, vectors={enc.name: vecs}, before_commit=stage))
                n = len(chunks)
        except IngestError as e:
            return IngestResult(source, "error", error=str(e), ms=_ms(t0))
        except sqlite3_errors() as e:  # disk full, locked beyond timeout: the transaction rolled back
            return IngestResult(source, "error", error=f"{source}: could not be stored ({e}); nothing changed.",
                                ms=_ms(t0))
        except OSError as e:  # an index file could not be written (disk full): the transaction rolled back
            return IngestResult(source, "error", ms=_ms(t0), error=f"{source}: could not be stored "
                                f"({e.strerror or e}); nothing changed. Free some disk space and upload it again.")
        self.sync()
        return IngestResult(source, "replaced" if old else "added", doc_id, kind, n, _ms(t0))

    def ingest_paths(self, paths: Iterable[str | Path]) -> list[IngestResult]:
        """Ingest files and folders (recursively, supported suffixes only)."""
        results = []
        for path in _expand(paths):
            try:
                data = path.read_bytes()
            except OSError as e:
                results.append(IngestResult(path.name, "error", error=f"{path.name}: cannot be read ({e.strerror})."))
                continue
            results.append(self.ingest_bytes(data, path.name))
        return results

    def is_stale(self, paths: Iterable[str | Path]) -> bool:
        """True when any file under `paths` is new or changed versus the store."""
        for path in _expand(paths):
            doc = self.store.get_document(doc_id_for(_safe_name(path.name)))
            if doc is None or doc.sha256 != hashlib.sha256(path.read_bytes()).hexdigest():
                return True
        return False

    def delete_document(self, doc_id: str) -> bool:
        """Delete a document; False when there is none. Raises OSError, with the store unchanged, when the new
        index files cannot be written (disk full)."""
        ok = self._commit(lambda stage: self.store.delete_document(doc_id, before_commit=stage))
        if ok:
            self.sync()
        return ok

    def upsert_faq(self, faq: Faq) -> None:
        vecs = self._encode("faq", faq.all_questions())
        self._commit(lambda stage: self.store.upsert_faq(faq, {self.faq_encoder.name: vecs}, before_commit=stage))
        self.sync()

    def delete_faq(self, faq_id: str) -> bool:
        ok = self._commit(lambda stage: self.store.delete_faq(faq_id, before_commit=stage))
        if ok:
            self.sync()
        return ok

    def _commit(self, write):
        """Run `write(stage)`: one store transaction that calls `stage()` just before its commit.

        `stage` builds the FAISS/BM25 indexes from the transaction's own view (this thread's connection sees the
        new rows) and saves them under temporary names; if that fails (disk full), the transaction rolls back
        and the error is raised with the store unchanged. After the commit the files are renamed into place,
        meta file last: a crash between renames leaves a meta file older than the store, rebuilt by `_ensure`.
        """
        staged: list[_Staged] = []

        def stage() -> None:
            for space in ("faq", "chunk"):
                s = self._stage(space)
                if s is not None:
                    staged.append(s)

        with self._lock:
            try:
                result = write(stage)
            except BaseException:
                for s in staged:
                    s.discard()
                raise
            for s in staged:
                s.install(self._faq if s.space == "faq" else self._chunk)
        return result

    def _stage(self, space: str) -> "_Staged | None":
        """Inside a store transaction: build `space` at the new generation and write its files under temporary
        names. None (built by `_ensure` after the commit instead) for Qdrant, which persists each write itself,
        and when some text has no vector for the current encoder (it must be embedded first)."""
        enc = self._encoder(space)
        if self._uses_qdrant(space) or self.store.missing_vectors(space, enc.name):
            return None
        gen = self.store.generation()
        ids, mat = self.store.vectors(space, enc.name)
        texts = self._texts(space)
        keep = np.array([int(i) in texts for i in ids], dtype=bool) if len(ids) else np.zeros(0, bool)
        ids, mat = ids[keep], (mat[keep] if len(ids) else np.zeros((0, enc.dim), np.float32))
        dense = FaissIndex(enc.dim, **self._faiss_kwargs(space))
        dense.rebuild(ids, mat)
        sparse = BM25Index()
        if len(ids):
            sparse.add(ids, [texts[int(i)] for i in ids])
        meta = json.dumps({"generation": gen, "model": enc.name, "count": int(len(ids)), "backend": "faiss",
                           "kind": dense.kind, "built": time.time()})
        staged = _Staged(space, gen, dense, sparse, texts, enc.name)
        try:
            for path, write in zip(self._paths(space), (dense.save, sparse.save, lambda p: _atomic_write(p, meta))):
                tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.staged")
                staged.files.append((tmp, path))
                write(tmp)
        except BaseException:
            staged.discard()
            raise
        return staged

    # ------------------------------------------------------------------ indexes
    def faq_index(self) -> _IndexSet:
        self._ensure(self._faq, "faq")
        return self._faq

    def chunk_index(self) -> _IndexSet:
        self._ensure(self._chunk, "chunk")
        return self._chunk

    def sync(self) -> None:
        """Bring both index sets to the store's generation (after ingest/delete, or at start), then tell listeners."""
        self._ensure(self._faq, "faq")
        self._ensure(self._chunk, "chunk")
        for ref in list(self._listeners):
            fn = ref()
            if fn is None:
                with contextlib.suppress(ValueError):  # another thread dropped it first
                    self._listeners.remove(ref)
                continue
            try:
                fn()
            except Exception:  # the store change is committed; a listener failing must not undo the ingest
                logger.exception("knowledge-base listener %r failed after sync", fn)

    def on_change(self, method) -> None:
        """Call the bound `method()` after every `sync` (ingest, delete, FAQ edit): the FAQ stage retrains its
        head at ingest instead of on the next question. Held weakly: a dropped matcher is forgotten."""
        self._listeners.append(weakref.WeakMethod(method))

    def faq_vectors(self, encoder: Encoder) -> tuple[np.ndarray, np.ndarray]:
        """(question ids, vectors) of every FAQ question for `encoder`; questions without a vector for it (a
        second FAQ encoder, `faq.extra_encoders`) are embedded query-side and stored first."""
        missing = self.store.missing_vectors("faq", encoder.name)
        if missing:
            logger.info("Embedding %d FAQ questions for %s", len(missing), encoder.name)
            vecs = encoder.encode_queries([t for _, t in missing], self.cfg.embed.batch_size)
            self.store.put_vectors("faq", encoder.name, [i for i, _ in missing], vecs)
        return self.store.vectors("faq", encoder.name)

    def reindex(self) -> None:
        """Rebuild every index from SQLite, ignoring files on disk (admin 'reindex'; Qdrant: every vector re-sent)."""
        with self._lock:
            for space, iset in (("faq", self._faq), ("chunk", self._chunk)):
                self._rebuild(iset, space, full=True)

    def _ensure(self, iset: _IndexSet, space: str) -> None:
        gen = self.store.generation()
        if iset.generation == gen:
            return
        with self._lock:
            if iset.generation == gen:
                return
            if iset.generation < 0 and self._load(iset, space, gen):
                return
            self._rebuild(iset, space)

    def _paths(self, space: str) -> tuple[Path, Path, Path]:
        return (self.index_dir / f"{space}.faiss", self.index_dir / f"{space}.bm25",
                self.index_dir / f"{space}.json")

    def _load(self, iset: _IndexSet, space: str, gen: int) -> bool:
        dense_p, sparse_p, meta_p = self._paths(space)
        try:
            meta = json.loads(meta_p.read_text())
            enc = self._encoder(space)
            if self._uses_qdrant(space):
                if not self._load_qdrant(iset, meta, enc, gen):
                    return False
            else:
                if meta.get("generation") != gen or meta.get("model") != enc.name or meta.get("backend", "faiss") != "faiss":
                    logger.info("%s index is stale (index gen %s, store gen %s, backend %s): rebuilding", space,
                                meta.get("generation"), gen, meta.get("backend", "faiss"))
                    return False
                iset.dense = FaissIndex.load(dense_p, **self._faiss_kwargs(space))
            iset.sparse = BM25Index.load(sparse_p)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            logger.info("%s index not loadable (%s): rebuilding from the store", space, e)
            return False
        iset.texts = self._texts(space)
        iset.generation = gen
        return True

    def _load_qdrant(self, iset: _IndexSet, meta: dict, enc: Encoder, gen: int) -> bool:
        """Open the chunk collection. True when it is current; False to sync it (by id difference when `meta`
        shows it wholly holds `enc`'s vectors at this place, in full otherwise)."""
        if (meta.get("backend") != "qdrant" or meta.get("model") != enc.name
                or meta.get("location") != self._qdrant_location() or meta.get("collection") != self._qdrant_name()):
            logger.info("chunk index was built for another backend, place or encoder: syncing Qdrant in full")
            return False
        dense = self._open_qdrant(enc.dim)
        iset.dense, iset.dense_model = dense, enc.name
        n = len(dense)
        if meta.get("generation") != gen or meta.get("count") != n:
            logger.info("Qdrant chunk collection is behind (gen %s/%s, %s/%s points): syncing by id", meta.get("generation"),
                        gen, n, meta.get("count"))
            return False
        return True

    def _uses_qdrant(self, space: str) -> bool:
        return space == "chunk" and self.cfg.retrieve.backend == "qdrant"

    def _qdrant_location(self) -> str:
        return self.cfg.retrieve.qdrant_url or "local"

    def _qdrant_name(self) -> str:
        return self.cfg.retrieve.qdrant_collection

    def _open_qdrant(self, dim: int, *, recreate: bool = False) -> QdrantIndex:
        """The chunk collection: on `retrieve.qdrant_url`, else embedded in `index_dir/qdrant`."""
        try:
            from .index.qdrant import QdrantIndex
        except ImportError as e:
            raise RuntimeError(f"`retrieve.backend` is 'qdrant' but qdrant-client cannot be imported ({e}); install it "
                               "with `.venv/bin/pip install qdrant-client` or set `retrieve.backend: faiss`.") from e
        r = self.cfg.retrieve
        key = r.qdrant_api_key.get_secret_value() if r.qdrant_api_key else None
        return QdrantIndex(dim, None if r.qdrant_url else self.index_dir / "qdrant", name=r.qdrant_collection,
                           url=r.qdrant_url, api_key=key, recreate=recreate)

    def _sync_qdrant(self, iset: _IndexSet, enc: Encoder, ids: np.ndarray, mat: np.ndarray, meta_p: Path,
                     full: bool) -> QdrantIndex:
        """Make the chunk collection hold exactly (`ids`, `mat`): drop ids the store no longer has, send the ones
        it lacks (`full`: send all, replacing vectors of another encoder)."""
        dense = iset.dense if getattr(iset.dense, "kind", "") == "qdrant" and iset.dense.dim == enc.dim else None
        full = full or dense is None or iset.dense_model != enc.name
        if full:
            meta_p.unlink(missing_ok=True)  # a crash mid-way must not leave a tag saying the collection is whole
            iset.dense_model = ""
        if dense is None:
            try:
                dense = self._open_qdrant(enc.dim)
            except ValueError as e:  # another dim or layout (encoder change): its vectors are useless
                logger.info("Recreating Qdrant collection %r: %s", self._qdrant_name(), e)
                dense = self._open_qdrant(enc.dim, recreate=True)
        present = dense.ids()
        removed = dense.remove(np.setdiff1d(present, ids)) if len(present) else 0
        send = np.ones(len(ids), bool) if full else ~np.isin(ids, present)
        if send.any():
            dense.add(ids[send], mat[send])
        logger.info("Qdrant chunk collection %s: %d sent, %d removed", "rebuilt" if full else "synced",
                    int(send.sum()), removed)
        return dense

    def _encoder(self, space: str) -> Encoder:
        return self.faq_encoder if space == "faq" else self.doc_encoder

    def _encode(self, space: str, texts: list[str]):
        """FAQ questions are matched question-to-question (symmetric: query side, measured better for e5);
        chunks are passages."""
        enc = self._encoder(space)
        if space == "faq":
            return enc.encode_queries(texts, self.cfg.embed.batch_size)
        return enc.encode_passages(texts, self.cfg.embed.batch_size)

    def _faiss_kwargs(self, space: str) -> dict:
        r = self.cfg.retrieve
        if space == "faq":  # FAQ questions: exact search, tens of thousands at most per company
            return {"kind": "flat"}
        return dict(kind=r.index, device=r.device, auto_flat_max=r.auto_flat_max, auto_hnsw_max=r.auto_hnsw_max,
                    hnsw_m=r.hnsw_m, ef_search=r.ef_search, ef_construction=r.ef_construction, nlist=r.nlist,
                    nprobe=r.nprobe, pq_m=r.pq_m)

    def _texts(self, space: str) -> dict[int, str]:
        if space == "faq":
            return {qid: text for qid, _, text in self.store.faq_questions()}
        return {int(c.meta["vid"]): c.embed_text() for c in self.store.chunks()}

    def _rebuild(self, iset: _IndexSet, space: str, *, full: bool = False) -> None:
        t0 = time.perf_counter()
        gen = self.store.generation()
        enc = self._encoder(space)
        missing = self.store.missing_vectors(space, enc.name)
        if missing:  # model changed since ingest: embed what has no vector for it yet
            logger.info("Embedding %d %s texts for %s", len(missing), space, enc.name)
            ids = [i for i, _ in missing]
            texts = [t for _, t in missing]
            vecs = self._encode(space, texts)
            self.store.put_vectors(space, enc.name, ids, vecs)
            gen = self.store.generation()
        ids, mat = self.store.vectors(space, enc.name)
        texts = self._texts(space)
        keep = np.array([int(i) in texts for i in ids], dtype=bool) if len(ids) else np.zeros(0, bool)
        ids, mat = ids[keep], (mat[keep] if len(ids) else np.zeros((0, enc.dim), np.float32))
        dense_p, sparse_p, meta_p = self._paths(space)
        meta = {"generation": gen, "model": enc.name, "count": int(len(ids))}
        if self._uses_qdrant(space):
            dense = self._sync_qdrant(iset, enc, ids, mat, meta_p, full)
            meta |= {"backend": "qdrant", "location": self._qdrant_location(), "collection": self._qdrant_name()}
        else:
            dense = FaissIndex(enc.dim, **self._faiss_kwargs(space))
            dense.rebuild(ids, mat)
            dense.save(dense_p)
            meta |= {"backend": "faiss"}
        sparse = BM25Index()
        if len(ids):
            sparse.add(ids, [texts[int(i)] for i in ids])
        sparse.save(sparse_p)
        _atomic_write(meta_p, json.dumps(meta | {"kind": dense.kind, "built": time.time()}))
        iset.dense, iset.sparse, iset.texts, iset.generation = dense, sparse, texts, gen
        iset.dense_model = enc.name
        logger.info("Built %s index: %d vectors, %s, %.0f ms", space, len(ids), dense.kind, _ms(t0))

    def close(self) -> None:
        """Release the Qdrant client (embedded mode locks its folder to this process). The next index access
        reopens it, so this is also how a test or an admin tool lets another process at the folder."""
        with self._lock:
            for iset in (self._faq, self._chunk):
                if getattr(iset.dense, "kind", "") == "qdrant":
                    iset.dense.close()
                    iset.dense, iset.dense_model, iset.generation = None, "", -1

    def check_consistency(self) -> dict:
        """Ids in SQLite vs ids in each index (startup check, crash tests)."""
        out = {}
        for space in ("faq", "chunk"):
            iset = self.faq_index() if space == "faq" else self.chunk_index()
            want = set(iset.texts)
            out[space] = {"store": len(want), "dense": set(map(int, iset.dense.ids())) == want,
                          "sparse": set(map(int, iset.sparse.ids())) == want}
        return out

    # ------------------------------------------------------------------ views
    def stats(self) -> dict:
        s = self.store
        return {"documents": s.count("documents"), "chunks": s.count("chunks"), "faqs": s.count("faqs"),
                "faq_questions": s.count("faq_questions"), "feedback": s.count("feedback"),
                "generation": s.generation()}

    def chunks(self, vids: Iterable[int]) -> list[Chunk]:
        return self.store.chunks(list(vids))


def sqlite3_errors():
    import sqlite3

    return (sqlite3.OperationalError, sqlite3.DatabaseError)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _safe_name(name: str) -> str:
    """The upload's base name with control characters removed: stored as a label, never used as a path."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip().lstrip(".")
    return base[:200] or "unnamed"


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUPPORTED_SUFFIXES
                          and not any(part.startswith(".") for part in f.relative_to(p).parts))
        else:
            out.append(p)
    return out


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000
