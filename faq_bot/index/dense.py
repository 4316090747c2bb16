"""FAISS dense index (flat / HNSW / IVF-PQ, GPU when present) over L2-normalized vectors with stable int64 ids."""

from __future__ import annotations

import json
import logging
import math
import struct
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import faiss
import numpy as np

from faq_bot.index._atomic import atomic_write

if TYPE_CHECKING:
    from faq_bot.config import RetrieveConfig

__all__ = ["FaissIndex"]

logger = logging.getLogger(__name__)

IndexKind = Literal["auto", "flat", "hnsw", "ivf_pq"]
EffectiveKind = Literal["flat", "hnsw", "ivf_pq"]

_KINDS = ("auto", "flat", "hnsw", "ivf_pq")
_DEVICES = ("auto", "cpu", "gpu")
# Automatic kind changes only ever go up this ladder (never thrash back down on deletes).
_KIND_RANK = {"flat": 0, "hnsw": 1, "ivf_pq": 2}
_MAGIC = b"FAQBOT-FAISS\n"
_FORMAT_VERSION = 1
_PQ_NBITS = 8
# faiss k-means warns below 39 training points per centroid; we refuse to train IVF below that.
_MIN_POINTS_PER_LIST = 39
# Dead (removed) rows tolerated before the raw store is compacted (and HNSW rebuilt).
_MAX_DEAD_FRACTION = 0.2
# Parameters that shape the built index; changing one at load time may trigger a rebuild.
_BUILD_PARAMS = ("kind", "auto_flat_max", "auto_hnsw_max", "hnsw_m", "ef_construction", "nlist", "pq_m")


def _gpu_count() -> int:
    # faiss-cpu wheels lack the GPU symbols or report 0.
    if not hasattr(faiss, "get_num_gpus") or not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except RuntimeError as e:
        logger.warning("faiss.get_num_gpus() failed, using CPU: %s", e)
        return 0


def _default_pq_m(dim: int) -> int:
    """Largest divisor of `dim` not above dim/4 (4 dims per byte code, as in the config default)."""
    target = max(1, dim // 4)
    return next(m for m in range(target, 0, -1) if dim % m == 0)


class FaissIndex:
    """Cosine-similarity index over FAISS with stable external int64 ids.

    Vectors are L2-normalized on the way in and searched by inner product, so scores are cosines.
    The raw vectors are kept next to the FAISS index (and saved with it), so any kind can be
    rebuilt without re-embedding.

    Kinds:
        flat: `IndexIDMap2(IndexFlatIP)`; exact; native `remove_ids`.
        hnsw: `IndexHNSWFlat` (inner product). HNSW cannot delete, so FAISS labels are row numbers
            ("slots") in the raw store: `remove` tombstones the slot and searches skip tombstones
            with an `IDSelector`; once more than 20% of slots are dead the store is compacted and
            the graph rebuilt (same kind). An update of an existing id is a tombstone plus a new slot.
        ivf_pq: `IndexIVFPQ` (inner product, 8-bit codes), nprobe applied; candidates
            (k * refine_factor) are re-scored exactly against the raw vectors, so scores are true
            cosines. Training needs >= max(39 * nlist, 256) vectors; below that the index is a
            flat one (recorded in `fallback_reason`) and becomes IVF-PQ once enough are added.
        auto: flat up to `auto_flat_max` vectors, HNSW up to `auto_hnsw_max`, IVF-PQ beyond.
            The choice is made when the index is (re)built and moves up as vectors are added;
            `rebuild()` re-chooses from scratch (also downwards).

    GPU (`device` "auto" with a GPU, or "gpu"): flat and IVF-PQ are searched on a GPU replica made
    with `index_cpu_to_gpu`; the CPU index stays authoritative for mutations and `save`, and the
    replica is re-made on the first search after a change. HNSW always runs on CPU.

    Thread-safe: one re-entrant lock serializes mutations and searches.
    """

    def __init__(
        self,
        dim: int,
        kind: IndexKind = "auto",
        *,
        device: Literal["auto", "cpu", "gpu"] = "auto",
        auto_flat_max: int = 50_000,
        auto_hnsw_max: int = 300_000,
        hnsw_m: int = 32,
        ef_search: int = 64,
        ef_construction: int = 80,
        nlist: int | None = None,
        nprobe: int = 16,
        pq_m: int | None = None,
        refine_factor: int = 4,
    ) -> None:
        """Validate settings and create an empty index; raises ValueError naming the bad argument."""
        if not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(f"`dim` must be a positive int, got {dim!r}.")
        if kind not in _KINDS:
            raise ValueError(f"`kind` must be one of {_KINDS}, got {kind!r}.")
        if device not in _DEVICES:
            raise ValueError(f"`device` must be one of {_DEVICES}, got {device!r}.")
        for name, value in (("auto_flat_max", auto_flat_max), ("auto_hnsw_max", auto_hnsw_max),
                            ("hnsw_m", hnsw_m), ("ef_search", ef_search), ("ef_construction", ef_construction),
                            ("nprobe", nprobe), ("refine_factor", refine_factor)):
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        if auto_hnsw_max < auto_flat_max:
            raise ValueError(f"`auto_hnsw_max` ({auto_hnsw_max}) must be >= `auto_flat_max` ({auto_flat_max}).")
        if nlist is not None and (not isinstance(nlist, (int, np.integer)) or nlist <= 0):
            raise ValueError(f"`nlist` must be a positive int or None (= 4*sqrt(n)), got {nlist!r}.")
        if pq_m is not None and (not isinstance(pq_m, (int, np.integer)) or pq_m <= 0 or dim % pq_m):
            raise ValueError(f"`pq_m` must be a positive divisor of `dim` ({dim}) or None (= dim/4), got {pq_m!r}.")
        n_gpus = _gpu_count()
        if device == "gpu" and n_gpus == 0:
            raise ValueError(
                "`device` is 'gpu' but faiss sees no GPU (faiss-cpu build or no CUDA device); "
                "use device='auto' or 'cpu'."
            )

        self._dim = int(dim)
        self._requested: IndexKind = kind
        self._device = device
        self._params: dict[str, Any] = {
            "kind": kind, "device": device, "auto_flat_max": int(auto_flat_max), "auto_hnsw_max": int(auto_hnsw_max),
            "hnsw_m": int(hnsw_m), "ef_search": int(ef_search), "ef_construction": int(ef_construction),
            "nlist": None if nlist is None else int(nlist), "nprobe": int(nprobe),
            "pq_m": None if pq_m is None else int(pq_m), "refine_factor": int(refine_factor),
        }
        # Flat and IVF indexes go to GPU 0; HNSW has no GPU implementation in faiss and stays on CPU.
        # NOTE: the GPU path is untested here (no GPU on the development machines).
        self._use_gpu = device != "cpu" and n_gpus > 0
        self._gpu_res: Any = None
        self._gpu_index: Any = None
        self._lock = threading.RLock()

        # Raw store: row ("slot") -> external id (-1 = removed) and its normalized vector.
        self._vecs = np.empty((0, self._dim), dtype=np.float32)
        self._slot_ids = np.empty(0, dtype=np.int64)
        self._n = 0
        self._slot_of: dict[int, int] = {}

        self._index: Any = None
        self._kind: EffectiveKind = "flat"
        self._fallback: str | None = None
        self._nlist_used: int | None = None
        self._dead_sel: Any = None
        self._rebuild_locked()

    @classmethod
    def from_config(cls, dim: int, cfg: RetrieveConfig, **kwargs: Any) -> FaissIndex:
        """Build an empty index from `RetrieveConfig`; `kwargs` (e.g. `refine_factor`) override."""
        params: dict[str, Any] = {
            "kind": cfg.index, "device": cfg.device, "auto_flat_max": cfg.auto_flat_max,
            "auto_hnsw_max": cfg.auto_hnsw_max, "hnsw_m": cfg.hnsw_m, "ef_search": cfg.ef_search,
            "ef_construction": cfg.ef_construction, "nlist": cfg.nlist, "nprobe": cfg.nprobe, "pq_m": cfg.pq_m,
        }
        params.update(kwargs)
        return cls(dim, **params)

    # ------------------------------------------------------------------ properties

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def kind(self) -> EffectiveKind:
        """The kind actually built (`auto` resolved, IVF-PQ fallback applied)."""
        return self._kind

    @property
    def requested_kind(self) -> IndexKind:
        return self._requested

    @property
    def fallback_reason(self) -> str | None:
        """Why the built kind differs from the requested one (IVF-PQ without enough vectors), else None."""
        return self._fallback

    @property
    def on_gpu(self) -> bool:
        return self._use_gpu and self._kind != "hnsw"

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, id_: object) -> bool:
        return isinstance(id_, (int, np.integer)) and int(id_) in self._slot_of

    def __repr__(self) -> str:
        return f"FaissIndex(dim={self._dim}, kind={self._kind!r}, requested={self._requested!r}, ntotal={len(self)})"

    def ids(self) -> np.ndarray:
        """All stored external ids (int64), in insertion order."""
        with self._lock:
            ids = self._slot_ids[: self._n]
            return ids[ids >= 0].copy()

    def vectors(self, ids: Any) -> np.ndarray:
        """Stored (normalized) vectors for `ids`, in order; a missing id gives a zero row."""
        ids = self._check_ids(ids, "ids")
        out = np.zeros((len(ids), self._dim), dtype=np.float32)
        with self._lock:
            for r, i in enumerate(ids.tolist()):
                s = self._slot_of.get(i)
                if s is not None:
                    out[r] = self._vecs[s]
        return out

    def stats(self) -> dict[str, Any]:
        """Kind, counts and an estimate of memory use (raw store + FAISS structures), in bytes."""
        with self._lock:
            n, d = len(self), self._dim
            raw = self._vecs.nbytes + self._slot_ids.nbytes + 100 * n  # ~100 B per dict entry
            ntotal = int(self._index.ntotal)
            if self._kind == "flat":
                index_bytes = ntotal * (4 * d + 8 + 16)  # codes + id map + reverse map
            elif self._kind == "hnsw":
                m = self._params["hnsw_m"]
                index_bytes = ntotal * (4 * d + int(2 * m * 4 * 1.1) + 8)  # level 0 has 2M links
            else:
                code = self._pq_m()
                index_bytes = ntotal * (code + 8) + (self._nlist_used or 0) * d * 4 + (2**_PQ_NBITS) * d * 4
            return {
                "kind": self._kind,
                "requested_kind": self._requested,
                "fallback_reason": self._fallback,
                "ntotal": n,
                "dead_slots": self._n - n,
                "dim": d,
                "device": "gpu" if self.on_gpu else "cpu",
                "nlist": self._nlist_used,
                "memory_bytes": int(raw + index_bytes),
            }

    # ------------------------------------------------------------------ mutation

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Add (or replace) vectors under external ids; vectors are L2-normalized on the way in.

        Raises:
            ValueError: shapes disagree, an id is negative or repeated in the batch, or a vector is
                zero or not finite.
        """
        ids, vecs = self._check_batch(ids, vecs)
        if not len(ids):
            return
        with self._lock:
            replaced = [i for i in ids.tolist() if i in self._slot_of]
            if replaced:
                self._drop_locked(replaced)
            first = self._n
            self._append(ids, vecs)
            target = self._resolve_kind(len(self))[0]
            if _KIND_RANK[target] > _KIND_RANK[self._kind]:
                logger.info("%d vectors: moving the index from %s to %s.", len(self), self._kind, target)
                self._rebuild_locked()
                return
            self._index_add(self._index, self._kind, ids, vecs, first)
            self._gpu_index = None
            self._maybe_compact()

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids (unknown ones are ignored); returns how many were removed."""
        ids = self._check_ids(ids, "ids")
        with self._lock:
            present = [i for i in dict.fromkeys(ids.tolist()) if i in self._slot_of]
            if not present:
                return 0
            self._drop_locked(present)
            self._maybe_compact()
            return len(present)

    def rebuild(self, ids: np.ndarray | None = None, vecs: np.ndarray | None = None) -> None:
        """Rebuild from scratch, re-choosing the kind for the current count.

        With `ids` and `vecs`, they replace the whole content; without, the stored raw vectors are used.
        """
        if (ids is None) != (vecs is None):
            raise ValueError("`ids` and `vecs` must be given together (or neither, to rebuild from stored vectors).")
        if ids is not None:
            ids, vecs = self._check_batch(ids, vecs)
        with self._lock:
            if ids is not None:
                self._vecs = np.empty((0, self._dim), dtype=np.float32)
                self._slot_ids = np.empty(0, dtype=np.int64)
                self._n = 0
                self._slot_of = {}
                self._append(ids, vecs)
            self._rebuild_locked()

    # ------------------------------------------------------------------ search

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` cosine matches for each query row.

        Args:
            q: `(n, dim)` or `(dim,)` float array; normalized here.
            k: hits per query.

        Returns:
            `(scores, ids)`, both `(n, k)`, best first; missing slots have id -1 and score -inf.
        """
        if not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"`k` must be a positive int, got {k!r}.")
        q = np.asarray(q, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self._dim:
            raise ValueError(f"`q` must have shape (n, {self._dim}) or ({self._dim},), got {q.shape}.")
        if not np.isfinite(q).all():
            raise ValueError("`q` contains NaN or infinite values.")
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        q = np.ascontiguousarray(q, dtype=np.float32)
        k = int(k)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        out_ids = np.full((len(q), k), -1, dtype=np.int64)
        with self._lock:
            if not len(self) or not len(q):
                return scores, out_ids
            if self._kind == "hnsw":
                params = faiss.SearchParametersHNSW(efSearch=max(self._params["ef_search"], k))
                if self._n > len(self):
                    params.sel = self._dead_selector()
                dist, labels = self._index.search(q, k, params=params)
                valid = labels >= 0
                labels = np.where(valid, self._slot_ids[np.where(valid, labels, 0)], -1)
            elif self._kind == "ivf_pq":
                fetch = min(k * self._params["refine_factor"], len(self))
                _, cand = self._search_target().search(q, fetch)
                dist, labels = self._refine(q, cand, k)
            else:
                dist, labels = self._search_target().search(q, k)
        found = labels >= 0
        scores[:, : labels.shape[1]] = np.where(found, dist, -np.inf)
        out_ids[:, : labels.shape[1]] = labels
        return scores, out_ids

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> None:
        """Write index, raw vectors and settings to one file, atomically (temp file + fsync + os.replace)."""
        path = Path(path)
        with self._lock:
            meta = {
                "format": _FORMAT_VERSION, "dim": self._dim, "params": self._params, "kind": self._kind,
                "fallback": self._fallback, "nlist": self._nlist_used,
            }
            header = json.dumps(meta).encode("utf-8")
            with atomic_write(path) as f:
                f.write(_MAGIC)
                f.write(struct.pack("<Q", len(header)))
                f.write(header)
                np.save(f, self._slot_ids[: self._n], allow_pickle=False)
                np.save(f, self._vecs[: self._n], allow_pickle=False)
                faiss.write_index(self._index, faiss.PyCallbackIOWriter(f.write))
        logger.debug("Saved %r to %s.", self, path)

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> FaissIndex:
        """Open a file written by `save`.

        `kwargs` override the saved settings: runtime ones (`device`, `ef_search`, `nprobe`,
        `refine_factor`) apply directly; a changed build setting (`kind`, `hnsw_m`, `nlist`, ...)
        rebuilds the index from the stored raw vectors when it changes what would be built.
        """
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"`path` {path} does not exist or is not a file.")
        with open(path, "rb") as f:
            if f.read(len(_MAGIC)) != _MAGIC:
                raise ValueError(f"`path` {path} is not a FaissIndex file (bad header).")
            (size,) = struct.unpack("<Q", f.read(8))
            meta = json.loads(f.read(size).decode("utf-8"))
            if meta.get("format") != _FORMAT_VERSION:
                raise ValueError(f"`path` {path} has format {meta.get('format')}, expected {_FORMAT_VERSION}.")
            slot_ids = np.load(f, allow_pickle=False)
            vecs = np.load(f, allow_pickle=False)
            index = faiss.read_index(faiss.PyCallbackIOReader(f.read))

        saved = meta["params"]
        obj = cls(meta["dim"], **{**saved, **kwargs})
        with obj._lock:
            obj._vecs, obj._slot_ids, obj._n = vecs, slot_ids, len(slot_ids)
            obj._slot_of = {int(i): s for s, i in enumerate(slot_ids.tolist()) if i >= 0}
            obj._index, obj._kind = index, meta["kind"]
            obj._fallback, obj._nlist_used = meta["fallback"], meta["nlist"]
            obj._apply_runtime_params()
            changed = [p for p in _BUILD_PARAMS if p in kwargs and kwargs[p] != saved.get(p)]
            if changed:
                target = obj._resolve_kind(len(obj))[0]
                old_sig = cls._signature(saved, obj._kind)
                if target != obj._kind or old_sig != cls._signature(obj._params, obj._kind):
                    logger.info("Changed %s at load: rebuilding the %s index as %s.", changed, obj._kind, target)
                    obj._rebuild_locked()
        return obj

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _signature(params: dict[str, Any], kind: str) -> tuple:
        if kind == "hnsw":
            return (params.get("hnsw_m"), params.get("ef_construction"))
        if kind == "ivf_pq":
            return (params.get("nlist"), params.get("pq_m"))
        return ()

    def _pq_m(self) -> int:
        return self._params["pq_m"] or _default_pq_m(self._dim)

    def _nlist_for(self, n: int) -> int:
        return self._params["nlist"] or max(1, int(4 * math.sqrt(n)))

    def _resolve_kind(self, n: int) -> tuple[EffectiveKind, str | None, int | None]:
        """(kind to build for n vectors, fallback reason, nlist for IVF)."""
        kind = self._requested
        if kind == "auto":
            if n <= self._params["auto_flat_max"]:
                return "flat", None, None
            if n <= self._params["auto_hnsw_max"]:
                return "hnsw", None, None
            kind = "ivf_pq"
        if kind == "ivf_pq":
            nlist = self._nlist_for(n)
            need = max(_MIN_POINTS_PER_LIST * nlist, 2**_PQ_NBITS)
            if n < need:
                return "flat", f"ivf_pq needs >= {need} vectors to train (nlist={nlist}), has {n}; using flat.", None
            return "ivf_pq", None, nlist
        return kind, None, None

    def _new_index(self, kind: EffectiveKind, nlist: int | None) -> Any:
        if kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self._dim))
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(self._dim, self._params["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self._params["ef_construction"]
            return index
        quantizer = faiss.IndexFlatIP(self._dim)
        return faiss.IndexIVFPQ(quantizer, self._dim, nlist, self._pq_m(), _PQ_NBITS, faiss.METRIC_INNER_PRODUCT)

    def _apply_runtime_params(self) -> None:
        if self._kind == "hnsw":
            self._index.hnsw.efSearch = self._params["ef_search"]
        elif self._kind == "ivf_pq":
            self._index.nprobe = self._params["nprobe"]  # copied along by index_cpu_to_gpu
        self._gpu_index = None

    def _rebuild_locked(self, keep_kind: bool = False) -> None:
        """Compact the raw store and build a fresh index of the kind the current count calls for
        (or, with `keep_kind`, of the current kind: HNSW compaction must not change the kind)."""
        self._compact_store()
        n = self._n
        if keep_kind and self._kind != "ivf_pq":
            kind, reason, nlist = self._kind, self._fallback, None
        else:
            kind, reason, nlist = self._resolve_kind(n)
        index = self._new_index(kind, nlist)
        vecs, ids = self._vecs[:n], self._slot_ids[:n]
        if kind == "ivf_pq":
            index.train(vecs)  # faiss subsamples to 256 points per list itself
        if n:
            self._index_add(index, kind, ids, vecs, 0)
        if reason and n and reason != self._fallback:
            logger.info("FaissIndex: %s", reason)
        self._index, self._kind, self._fallback, self._nlist_used = index, kind, reason, nlist
        self._dead_sel = None
        self._apply_runtime_params()
        if n:
            logger.info("Built %s index over %d vectors (dim %d).", kind, n, self._dim)

    @staticmethod
    def _index_add(index: Any, kind: str, ids: np.ndarray, vecs: np.ndarray, first_slot: int) -> None:
        if kind == "hnsw":
            # HNSW labels are sequential: they must line up with the raw-store slots.
            if index.ntotal != first_slot:
                raise RuntimeError(f"HNSW index out of step with its store ({index.ntotal} != {first_slot}).")
            index.add(vecs)
        else:
            index.add_with_ids(vecs, ids)

    def _drop_locked(self, ids: list[int]) -> None:
        slots = [self._slot_of.pop(i) for i in ids]
        self._slot_ids[slots] = -1
        if self._kind == "hnsw":
            self._dead_sel = None  # tombstoned; the search-time selector skips them
        else:
            self._index.remove_ids(np.asarray(ids, dtype=np.int64))
        self._gpu_index = None

    def _maybe_compact(self) -> None:
        dead = self._n - len(self._slot_of)
        if dead and dead > _MAX_DEAD_FRACTION * self._n:
            if self._kind == "hnsw":
                self._rebuild_locked(keep_kind=True)  # slots are HNSW labels: renumbering means rebuilding
            else:
                self._compact_store()

    def _compact_store(self) -> None:
        n = self._n
        alive = self._slot_ids[:n] >= 0
        m = int(alive.sum())
        if m < n:
            self._vecs[:m] = self._vecs[:n][alive]
            self._slot_ids[:m] = self._slot_ids[:n][alive]
            self._n = m
            self._slot_of = {int(i): s for s, i in enumerate(self._slot_ids[:m].tolist())}
        if len(self._slot_ids) > 4 * max(m, 1024):  # give memory back after mass deletes
            self._vecs = self._vecs[:m].copy()
            self._slot_ids = self._slot_ids[:m].copy()

    def _append(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        need = self._n + len(ids)
        if need > len(self._slot_ids):
            cap = max(need, 2 * len(self._slot_ids), 1024)
            new_vecs = np.empty((cap, self._dim), dtype=np.float32)
            new_vecs[: self._n] = self._vecs[: self._n]
            new_ids = np.full(cap, -1, dtype=np.int64)
            new_ids[: self._n] = self._slot_ids[: self._n]
            self._vecs, self._slot_ids = new_vecs, new_ids
        self._vecs[self._n : need] = vecs
        self._slot_ids[self._n : need] = ids
        for s, i in enumerate(ids.tolist(), start=self._n):
            self._slot_of[i] = s
        self._n = need

    def _dead_selector(self) -> Any:
        if self._dead_sel is None:
            dead = np.flatnonzero(self._slot_ids[: self._n] < 0).astype(np.int64)
            self._dead_sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(dead))
        return self._dead_sel

    def _refine(self, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Re-score IVF-PQ candidates exactly against the raw vectors; keep the best k."""
        dist = np.full((len(q), k), -np.inf, dtype=np.float32)
        labels = np.full((len(q), k), -1, dtype=np.int64)
        for r in range(len(q)):
            row = [c for c in cand[r].tolist() if c >= 0]
            if not row:
                continue
            s = self._vecs[[self._slot_of[c] for c in row]] @ q[r]
            order = np.argsort(-s, kind="stable")[:k]
            dist[r, : len(order)] = s[order]
            labels[r, : len(order)] = np.asarray(row, dtype=np.int64)[order]
        return dist, labels

    def _search_target(self) -> Any:
        """The GPU replica of the CPU index when a GPU is in use (rebuilt after each mutation)."""
        if not self._use_gpu or self._kind == "hnsw":
            return self._index
        if self._gpu_index is None:
            try:
                if self._gpu_res is None:
                    self._gpu_res = faiss.StandardGpuResources()
                self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_res, 0, self._index)
            except Exception as e:  # e.g. a PQ layout the GPU does not support
                if self._device == "gpu":
                    raise
                logger.warning("Moving the %s index to GPU failed, searching on CPU: %s", self._kind, e)
                self._use_gpu = False
                return self._index
        return self._gpu_index

    @staticmethod
    def _check_ids(ids: Any, name: str) -> np.ndarray:
        arr = np.asarray(ids)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim != 1:
            raise ValueError(f"`{name}` must be 1-D, got shape {arr.shape}.")
        if arr.size == 0:
            return arr.astype(np.int64)
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"`{name}` must hold integers, got dtype {arr.dtype}.")
        return arr.astype(np.int64)

    def _check_batch(self, ids: Any, vecs: Any) -> tuple[np.ndarray, np.ndarray]:
        ids = self._check_ids(ids, "ids")
        vecs = np.asarray(vecs, dtype=np.float32)
        if vecs.ndim == 1 and len(ids) == 1:
            vecs = vecs[None, :]
        if vecs.size == 0 and len(ids) == 0:
            return ids, np.empty((0, self._dim), dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[1] != self._dim:
            raise ValueError(f"`vecs` must have shape (n, {self._dim}), got {vecs.shape}.")
        if len(vecs) != len(ids):
            raise ValueError(f"`ids` and `vecs` differ in length: {len(ids)} != {len(vecs)}.")
        if (ids < 0).any():
            raise ValueError(f"`ids` must be >= 0 (-1 marks a missing hit), got {int(ids.min())}.")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("`ids` contains duplicates within one batch.")
        if not np.isfinite(vecs).all():
            raise ValueError("`vecs` contains NaN or infinite values.")
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        if (norms == 0).any():
            row = int(np.flatnonzero(norms[:, 0] == 0)[0])
            raise ValueError(f"`vecs` row {row} is all zeros; it has no direction.")
        return ids, np.ascontiguousarray(vecs / norms, dtype=np.float32)
