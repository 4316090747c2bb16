"""Training configs (configs/train/*.yaml): data builder, SFT and KTO runs; `--set` overrides split app vs training."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from faq_bot.config import ROOT, AppConfig, OpenAIBackendConfig, format_validation_error, is_secret_key

__all__ = [
    "APP_SECTIONS",
    "DataBuildConfig",
    "KtoRunConfig",
    "LoraSection",
    "SftRunConfig",
    "TRAIN_CONFIG_DIR",
    "load_train_config",
    "parse_scalar",
    "parse_sets",
    "set_dotted",
    "split_overrides",
]

TRAIN_CONFIG_DIR = ROOT / "configs" / "train"
APP_SECTIONS = frozenset(AppConfig.model_fields)  # store, embed, ..., generate, train, eval
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------------------- data builder


class FaqSourceConfig(_Section):
    enabled: bool = True
    max_questions: int | None = Field(None, gt=0, description="Questions per FAQ (standard first); None = all.")


class SynthConfig(_Section):
    enabled: bool = Field(False, description="Synthesize QA pairs from document chunks with an LLM.")
    backend: Literal["local", "openai"] = Field("local", description="local: load_causal_lm; openai: `teacher`.")
    model: str | None = Field(None, description="local backend model; None = the base model.")
    teacher: OpenAIBackendConfig | None = Field(None, description="Any OpenAI-compatible endpoint (vLLM, ...).")
    prompt_zh: Path = Field(TRAIN_CONFIG_DIR / "synth_prompt_zh.txt")
    prompt_en: Path = Field(TRAIN_CONFIG_DIR / "synth_prompt_en.txt")
    per_chunk: int = Field(3, gt=0, description="QA pairs asked for per chunk.")
    max_chunks: int | None = Field(50, gt=0, description="Chunks sent to the LLM (spread over documents); None = all.")
    min_chunk_chars: int = Field(40, ge=0, description="Shorter chunks (titles, fragments) are skipped.")
    min_support: float = Field(0.8, gt=0, le=1, description="Token overlap answer/chunk needed when the answer "
                               "is not a substring of the chunk.")
    max_new_tokens: int = Field(384, gt=0)
    temperature: float = Field(0.0, ge=0, le=2)

    @model_validator(mode="after")
    def _check_teacher(self) -> "SynthConfig":
        if self.enabled and self.backend == "openai" and self.teacher is None:
            raise ValueError("`synth.backend` is 'openai' but `synth.teacher` is not set; give base_url and model.")
        return self


class FeedbackSourceConfig(_Section):
    enabled: bool = Field(True, description="Corrections become SFT examples; thumbs-down answers KTO negatives.")
    limit: int = Field(10_000, gt=0)


class RgbSourceConfig(_Section):
    path: Path | None = Field(None, description="RGB JSONL (plain/refine kind); None = no RGB examples.")
    ids_mod3: int | None = Field(0, ge=0, le=2, description="Keep items with id % 3 == this; None = all.")
    max_items: int | None = Field(None, gt=0)
    max_passage_tokens: int = Field(320, gt=32, description="RGB passages are cut to about a serving chunk; the "
                                    "positive keeps a window around its answer.")


class MixConfig(_Section):
    refusal_ratio: float = Field(0.25, ge=0, lt=1, description="Share of refusal examples (industry: 20-30%).")
    distractors: int = Field(3, ge=0, description="Retrieved passages next to the gold one (rerank.top_n - 1).")
    long_context_share: float = Field(0.2, ge=0, le=1, description="Share of positives with `long_distractors`.")
    long_distractors: int = Field(8, ge=0)
    hard_negative_share: float = Field(0.5, ge=0, le=1, description="Share of refusals made of retrieved passages "
                                       "without the answer; the rest swap the gold chunk for another document's.")
    retrieve_k: int = Field(12, gt=0, description="Retrieved candidates per question.")
    negative_max_overlap: float = Field(0.5, gt=0, le=1, description="A passage whose token overlap with the answer "
                                        "reaches this may hold the answer: never used as a negative.")
    refusal_answer: Literal["empty", "text"] = Field(
        "empty", description="Refusal `answer`: empty as the answer prompt asks (format_answer_json), or "
        "generate.refusal_zh/en.")


class SplitConfig(_Section):
    val_ratio: float = Field(0.1, ge=0, lt=1, description="Share of question groups held out.")


class KtoDataConfig(_Section):
    enabled: bool = True
    desirable: int = Field(200, ge=0, description="Gold (prompt, completion) rows sampled from the train split.")
    synthetic: int = Field(100, ge=0, description="Made-up bad outputs: answers on refusal prompts (knowledge "
                           "leaking in) and refusals on answerable ones (over-caution), half each.")
    self_negatives: int = Field(8, ge=0, description="Run the base model on this many hard-negative prompts and keep "
                                "its answers where it did not refuse. Slow on CPU: keep small.")
    self_model: str | None = Field(None, description="Model for self_negatives; None = the base model.")
    max_new_tokens: int = Field(128, gt=0)
    badcases: list[Path] = Field(default_factory=list, description="badcases.jsonl files from the eval runner.")
    feedback: bool = Field(True, description="Thumbs-down answers (with their trace) as undesirable rows.")


class DataBuildConfig(_Section):
    """configs/train/data.yaml."""

    output_dir: Path = Field(Path("data/train"), description="train.jsonl, val.jsonl, kto.jsonl, data_card.json.")
    base_model: str | None = Field(None, description="Model whose tokenizer renders prompts; None = generate.model.")
    context_tokens: int | None = Field(None, gt=64, description="Passage budget; None = generate.context_tokens.")
    seed: int = 0
    faq: FaqSourceConfig = Field(default_factory=FaqSourceConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    feedback: FeedbackSourceConfig = Field(default_factory=FeedbackSourceConfig)
    user_jsonl: list[Path] = Field(default_factory=list, description="JSONL lines {question, answer, context}.")
    rgb: RgbSourceConfig = Field(default_factory=RgbSourceConfig)
    mix: MixConfig = Field(default_factory=MixConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    kto: KtoDataConfig = Field(default_factory=KtoDataConfig)


# ---------------------------------------------------------------------------- runs


class LoraSection(_Section):
    r: int = Field(8, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    bias: Literal["none", "all", "lora_only"] = "none"

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v


class SweepEvalConfig(_Section):
    max_items: int = Field(50, gt=0, description="Val examples generated per swept run.")
    max_new_tokens: int = Field(128, gt=0)
    batch_size: int = Field(4, gt=0)
    include_base: bool = Field(True, description="Add the base model as the first row.")


class _RunConfig(_Section):
    name: str = Field(description="Run name: runs/<name>/ (adapter/, run.json, loss.png).")
    base_model: str | None = Field(None, description="Bundled name, local dir or hub id; None = generate.model.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bf16 on a GPU that supports it, fp32 on CPU.")
    quantization: Literal["none", "4bit"] = Field("none", description="4bit = QLoRA; needs bitsandbytes and a GPU.")
    overwrite: bool = Field(False, description="Replace an existing runs/<name>/.")
    lora: LoraSection = Field(default_factory=LoraSection)
    trainer: dict[str, Any] = Field(default_factory=dict, description="trl config kwargs, passed through as is.")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", v):
            raise ValueError(f"`name` must be letters, digits, '.', '_' or '-' (no slashes), got {v!r}.")
        return v

    @field_validator("trainer")
    @classmethod
    def _yaml_quirks(cls, v: dict[str, Any]) -> dict[str, Any]:
        # YAML 1.1 reads `2e-4` as a string and an unquoted `save_strategy: no` as False
        out = {}
        for k, x in v.items():
            if isinstance(x, str) and _NUMBER.match(x):
                x = float(x)
            elif x is False and k.endswith("_strategy"):
                x = "no"
            out[k] = x
        return out


class SftRunConfig(_RunConfig):
    """configs/train/sft_lora.yaml."""

    name: str = "sft-lora"
    data_dir: Path = Field(Path("data/train"), description="Folder with train.jsonl and val.jsonl.")
    sweep_eval: SweepEvalConfig = Field(default_factory=SweepEvalConfig)


class KtoRunConfig(_RunConfig):
    """configs/train/kto.yaml."""

    name: str = "kto"
    base_model: str | None = Field(None, description="None = the SFT run's base model (its run.json), else "
                                   "generate.model.")
    sft_run: str | None = Field("sft-lora", description="Run whose adapter KTO starts from; None = a fresh LoRA.")
    data: Path = Field(Path("data/train/kto.jsonl"), description="prompt/completion/label rows.")


# ---------------------------------------------------------------------------- loading

C = TypeVar("C", bound=BaseModel)
_PATH_FIELDS = {
    DataBuildConfig: ("output_dir",),
    SftRunConfig: ("data_dir",),
    KtoRunConfig: ("data",),
}


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """`["a.b=1", ...]` -> {"a.b": 1} with YAML scalars (numbers, booleans, lists)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}.")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_scalar(value)
    return out


def split_overrides(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(app overrides, training overrides): keys whose first part is an AppConfig section go to the app."""
    app, train = {}, {}
    for key, value in overrides.items():
        (app if key.split(".", 1)[0] in APP_SECTIONS else train)[key] = value
    return app, train


def load_train_config(cls: type[C], path: str | Path | None, overrides: Mapping[str, Any] | None = None,
                      base_dir: Path | None = None) -> C:
    """Read a training YAML (or the class defaults when `path` is None), apply dotted overrides, validate.

    Raises:
        ValueError: unknown keys or bad values, every one named.
    """
    data: dict[str, Any] = {}
    origin = str(path) if path else f"{cls.__name__} defaults"
    if path:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"Training config not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"Training config {path} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"Training config {path} must hold a mapping, got {type(data).__name__}.")
    for dotted, value in (overrides or {}).items():  # a key or password stays the exact text given
        set_dotted(data, dotted, parse_scalar(value) if isinstance(value, str) and not is_secret_key(dotted) else value)
    try:
        cfg = cls.model_validate(data)
    except ValidationError as e:
        hint = f"against {path.name if path else cls.__name__} (training/config.py lists every key)"
        raise ValueError(format_validation_error(e, origin).replace("against configs/default.yaml", hint)) from None
    base = base_dir or ROOT
    for name in _PATH_FIELDS.get(cls, ()):
        p = getattr(cfg, name)
        if not p.is_absolute():
            setattr(cfg, name, (base / p).resolve())
    if isinstance(cfg, DataBuildConfig):
        cfg.user_jsonl = [p if p.is_absolute() else (base / p).resolve() for p in cfg.user_jsonl]
        cfg.kto.badcases = [p if p.is_absolute() else (base / p).resolve() for p in cfg.kto.badcases]
        for sec, key in (("rgb", "path"), ("synth", "prompt_zh"), ("synth", "prompt_en")):
            p = getattr(getattr(cfg, sec), key)
            if p is not None and not p.is_absolute():
                setattr(getattr(cfg, sec), key, (base / p).resolve())
    return cfg


def parse_scalar(value: str) -> Any:
    """A YAML scalar, except that only true/false are booleans (`save_strategy=no` stays the string "no")."""
    try:
        v = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if isinstance(v, bool) and value.strip().lower() not in ("true", "false"):
        return value.strip()
    if isinstance(v, str) and _NUMBER.match(v):
        return float(v)
    return v


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = [k for k in dotted.split(".") if k]
    if not keys:
        raise ValueError(f"override `{dotted}` names no key.")
    node = data
    for key in keys[:-1]:
        if node.get(key) is None:
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            raise ValueError(f"override `{dotted}` goes through a non-section value.")
    node[keys[-1]] = value
