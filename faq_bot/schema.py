"""Typed objects shared by every stage: the only types that cross module boundaries."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

AnswerKind = Literal["faq", "rag", "refusal", "smalltalk", "error"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Doc(_Model):
    """One ingested source file."""

    id: str
    source: str = Field(description="Original file name as uploaded (never used as a path).")
    sha256: str
    type: str = Field(description="Reader kind: md, html, txt, pdf, docx.")
    created: float = 0.0
    n_chunks: int = 0
    meta: dict[str, Any] = Field(default_factory=dict)


class Chunk(_Model):
    """A piece of a document, the unit of retrieval."""

    id: str
    doc_id: str
    text: str
    heading_path: list[str] = Field(default_factory=list)
    source: str = ""
    position: int = 0
    meta: dict[str, Any] = Field(default_factory=dict)

    def embed_text(self) -> str:
        """Text used for embedding and BM25: the heading path prepended to the body."""
        if not self.heading_path:
            return self.text
        return " > ".join(self.heading_path) + "\n" + self.text


class Faq(_Model):
    """One FAQ entry: a standard question, its answer and paraphrases."""

    id: str
    question: str
    answer: str
    similar_questions: list[str] = Field(default_factory=list)
    category: str = ""
    enabled: bool = True
    source: str = ""

    def all_questions(self) -> list[str]:
        return [self.question, *self.similar_questions]


class FaqMatch(_Model):
    """A FAQ candidate for a query."""

    faq: Faq
    score: float
    matched_question: str
    scores: dict[str, float] = Field(default_factory=dict)


class Query(_Model):
    """A user question with its chat history and, after the rewrite stage, the standalone form."""

    text: str
    history: list[tuple[str, str]] = Field(default_factory=list, description="(role, content) pairs, oldest first.")
    rewritten: str | None = None
    language: Literal["zh", "en"] | None = None

    @property
    def standalone(self) -> str:
        return self.rewritten or self.text


class Hit(_Model):
    """A retrieved chunk with the scores each stage gave it."""

    chunk: Chunk
    score: float
    scores: dict[str, float] = Field(default_factory=dict, description="dense, sparse, fused, rerank")


class Citation(_Model):
    """Where an answer came from."""

    index: int = Field(description="1-based passage number shown to the model.")
    doc_id: str
    chunk_id: str
    source: str
    heading_path: list[str] = Field(default_factory=list)
    snippet: str


class TraceStep(_Model):
    stage: str
    ms: float
    detail: dict[str, Any] = Field(default_factory=dict)


class Trace(_Model):
    id: str = ""
    steps: list[TraceStep] = Field(default_factory=list)

    def add(self, stage: str, ms: float, **detail: Any) -> TraceStep:
        step = TraceStep(stage=stage, ms=round(ms, 3), detail=detail)
        self.steps.append(step)
        return step

    def step(self, stage: str) -> TraceStep | None:
        return next((s for s in self.steps if s.stage == stage), None)

    @property
    def total_ms(self) -> float:
        return round(sum(s.ms for s in self.steps), 3)


class Generation(_Model):
    """What the generator returned for a question and its context."""

    answer_in_context: bool
    answer: str
    evidence: list[int] = Field(default_factory=list)
    raw: str = ""
    parse_ok: bool = True
    parse_note: str = ""
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ms: float = 0.0


class Answer(_Model):
    """What the user gets."""

    text: str
    kind: AnswerKind
    citations: list[Citation] = Field(default_factory=list)
    suggestions: list[FaqMatch] = Field(default_factory=list)
    faq: FaqMatch | None = None
    model: str = ""
    trace: Trace = Field(default_factory=Trace)
    question: str = ""
