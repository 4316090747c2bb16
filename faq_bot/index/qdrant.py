"""Qdrant vector backend (embedded local mode or a server) with the same interface as FaissIndex."""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

__all__ = ["QdrantIndex"]

logger = logging.getLogger(__name__)

_UPSERT_BATCH = 512
_SCROLL_PAGE = 1024

# Embedded mode locks its folder: one client per folder per process, shared by all collections in it.
# Its collections are plain Python structures, so calls on one folder's client are serialized by its lock.
_local_lock = threading.Lock()
_local_clients: dict[Path, list[Any]] = {}  # folder -> [client, refcount, call lock]


def _open_local(path: Path) -> QdrantClient:
    return _open_local_entry(path)[0]


def _open_local_entry(path: Path) -> list[Any]:
    key = path.resolve()
    with _local_lock:
        entry = _local_clients.get(key)
        if entry is None:
            key.mkdir(parents=True, exist_ok=True)
            entry = _local_clients[key] = [QdrantClient(path=str(key)), 0, threading.RLock()]
        entry[1] += 1
        return entry


def _release_local(path: Path) -> None:
    key = path.resolve()
    with _local_lock:
        entry = _local_clients.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _local_clients[key]
            entry[0].close()


class QdrantIndex:
    """Cosine-similarity index in one Qdrant collection, with external int64 ids (>= 0) as point ids.

    Where it lives: `url` -> a Qdrant server; else `path` -> embedded local mode in that folder
    (persistent; one shared client per folder in this process); else in memory.
    `save` is a no-op (Qdrant persists every write); `load` reopens an existing collection.
    `recreate=True` drops an existing collection of that name first (e.g. after an encoder change).
    """

    def __init__(
        self,
        dim: int,
        path: str | Path | None = None,
        *,
        name: str = "chunks",
        url: str | None = None,
        api_key: str | None = None,
        timeout: int | None = None,
        recreate: bool = False,
    ) -> None:
        if not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(f"`dim` must be a positive int, got {dim!r}.")
        if not name or not isinstance(name, str):
            raise ValueError(f"`name` must be a non-empty collection name, got {name!r}.")
        self._dim = int(dim)
        self._name = name
        self._local_path: Path | None = None
        # The HTTP/gRPC client is thread-safe; embedded and in-memory clients are not.
        self._call_lock: Any = contextlib.nullcontext()
        if url:
            self._client = QdrantClient(url=url, api_key=api_key, timeout=timeout)
        elif path is not None:
            self._local_path = Path(path)
            self._client, _, self._call_lock = _open_local_entry(self._local_path)
        else:
            self._client = QdrantClient(location=":memory:")
            self._call_lock = threading.RLock()
        self._closed = False
        try:
            with self._call_lock:
                self._ensure_collection(recreate)
        except BaseException:
            self.close()
            raise

    @classmethod
    def load(cls, path: str | Path | None = None, *, name: str = "chunks", url: str | None = None,
             **kwargs: Any) -> QdrantIndex:
        """Reopen an existing collection (local folder `path`, or server `url`); its dim is read from Qdrant."""
        probe_path = None if url else path
        if probe_path is None and not url:
            raise ValueError("`path` or `url` is required to load a Qdrant collection.")
        if probe_path is not None:
            client = _open_local(Path(probe_path))
        else:
            client = QdrantClient(url=url, api_key=kwargs.get("api_key"), timeout=kwargs.get("timeout"))
        try:
            if not client.collection_exists(name):
                where = url or probe_path
                raise ValueError(f"`name` {name!r}: no such collection in Qdrant at {where}.")
            dim = _collection_dim(client, name)
            return cls(dim, path, name=name, url=url, **kwargs)
        finally:
            if probe_path is not None:
                _release_local(Path(probe_path))
            else:
                client.close()

    # ------------------------------------------------------------------ properties

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> str:
        return "qdrant"

    def __len__(self) -> int:
        with self._call_lock:
            return int(self._client.count(self._name, exact=True).count)

    def __repr__(self) -> str:
        where = "memory" if self._local_path is None else str(self._local_path)
        return f"QdrantIndex(name={self._name!r}, dim={self._dim}, at={where!r})"

    def ids(self) -> np.ndarray:
        """All stored ids (int64), ascending."""
        out: list[int] = []
        offset = None
        while True:
            with self._call_lock:
                points, offset = self._client.scroll(
                    self._name, limit=_SCROLL_PAGE, offset=offset, with_payload=False, with_vectors=False
                )
            out.extend(int(p.id) for p in points)
            if offset is None:
                return np.asarray(out, dtype=np.int64)

    def stats(self) -> dict[str, Any]:
        n = len(self)
        return {"kind": "qdrant", "ntotal": n, "dim": self._dim, "collection": self._name,
                "memory_bytes": n * (4 * self._dim + 8)}

    # ------------------------------------------------------------------ mutation / search

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Upsert vectors under external ids (an existing id is replaced)."""
        ids, vecs = _check_batch(ids, vecs, self._dim)
        for start in range(0, len(ids), _UPSERT_BATCH):
            end = start + _UPSERT_BATCH
            batch = models.Batch(ids=ids[start:end].tolist(), vectors=vecs[start:end].tolist())
            with self._call_lock:
                self._client.upsert(self._name, points=batch, wait=True)

    def remove(self, ids: np.ndarray) -> int:
        """Delete ids (unknown ones are ignored); returns how many were removed."""
        arr = _check_ids(ids)
        if not len(arr):
            return 0
        wanted = list(dict.fromkeys(arr.tolist()))
        with self._call_lock:
            present = self._client.retrieve(self._name, ids=wanted, with_payload=False, with_vectors=False)
            if present:
                self._client.delete(self._name, points_selector=models.PointIdsList(points=[p.id for p in present]),
                                    wait=True)
        return len(present)

    def vectors(self, ids: Any) -> np.ndarray:
        """Stored (normalized) vectors for `ids`, in order; a missing id gives a zero row (as FaissIndex)."""
        arr = _check_ids(ids)
        out = np.zeros((len(arr), self._dim), dtype=np.float32)
        if not len(arr):
            return out
        with self._call_lock:
            points = self._client.retrieve(self._name, ids=list(dict.fromkeys(arr.tolist())), with_payload=False,
                                           with_vectors=True)
        found = {int(p.id): p.vector for p in points}
        for r, i in enumerate(arr.tolist()):
            if i in found:
                out[r] = np.asarray(found[i], dtype=np.float32)
        return out

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` cosine matches per query row: `(scores, ids)`, both `(n, k)`; missing = (-inf, -1)."""
        if not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"`k` must be a positive int, got {k!r}.")
        q = np.asarray(q, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self._dim:
            raise ValueError(f"`q` must have shape (n, {self._dim}) or ({self._dim},), got {q.shape}.")
        if not np.isfinite(q).all():
            raise ValueError("`q` contains NaN or infinite values.")
        k = int(k)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        out_ids = np.full((len(q), k), -1, dtype=np.int64)
        if not len(q):
            return scores, out_ids
        requests = [models.QueryRequest(query=row.tolist(), limit=k, with_payload=False) for row in q]
        with self._call_lock:
            responses = self._client.query_batch_points(self._name, requests=requests)
        for r, resp in enumerate(responses):
            for c, point in enumerate(resp.points[:k]):
                scores[r, c] = point.score
                out_ids[r, c] = int(point.id)
        return scores, out_ids

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path | None = None) -> None:
        """No-op: Qdrant persists every write itself."""
        logger.debug("%r: save() is a no-op, Qdrant persists writes.", self)

    def close(self) -> None:
        """Release the client (embedded clients are shared per folder and closed with their last user)."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        if self._local_path is not None:
            _release_local(self._local_path)
        else:
            self._client.close()

    def __enter__(self) -> QdrantIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_collection(self, recreate: bool = False) -> None:
        if recreate and self._client.collection_exists(self._name):
            self._client.delete_collection(self._name)
            logger.info("Dropped Qdrant collection %r to recreate it.", self._name)
        if self._client.collection_exists(self._name):
            existing = _collection_dim(self._client, self._name)
            if existing != self._dim:
                raise ValueError(
                    f"`dim` is {self._dim} but collection {self._name!r} holds {existing}-dim vectors; "
                    "use another `name` or delete the collection."
                )
            return
        self._client.create_collection(
            self._name, vectors_config=models.VectorParams(size=self._dim, distance=models.Distance.COSINE)
        )
        logger.info("Created Qdrant collection %r (dim %d, cosine).", self._name, self._dim)


def _collection_dim(client: QdrantClient, name: str) -> int:
    vectors = client.get_collection(name).config.params.vectors
    if isinstance(vectors, dict):  # named vectors: not the layout this class creates
        raise ValueError(f"`name` {name!r}: collection uses named vectors; expected one unnamed vector.")
    return int(vectors.size)


def _check_ids(ids: Any) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"`ids` must be 1-D, got shape {arr.shape}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"`ids` must hold integers, got dtype {arr.dtype}.")
    if arr.size and (arr < 0).any():
        raise ValueError(f"`ids` must be >= 0 (Qdrant point ids are unsigned), got {int(arr.min())}.")
    return arr.astype(np.int64)


def _check_batch(ids: Any, vecs: Any, dim: int) -> tuple[np.ndarray, np.ndarray]:
    ids = _check_ids(ids)
    vecs = np.asarray(vecs, dtype=np.float32)
    if vecs.ndim == 1 and len(ids) == 1:
        vecs = vecs[None, :]
    if not len(ids) and vecs.size == 0:
        return ids, np.empty((0, dim), dtype=np.float32)
    if vecs.ndim != 2 or vecs.shape[1] != dim:
        raise ValueError(f"`vecs` must have shape (n, {dim}), got {vecs.shape}.")
    if len(vecs) != len(ids):
        raise ValueError(f"`ids` and `vecs` differ in length: {len(ids)} != {len(vecs)}.")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("`ids` contains duplicates within one batch.")
    if not np.isfinite(vecs).all():
        raise ValueError("`vecs` contains NaN or infinite values.")
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("`vecs` contains an all-zero row; it has no direction.")
    return ids, vecs / norms
