"""FastAPI app: /health, /api/ask, OpenAI-compatible /v1, the admin API, public feedback; mounts the Gradio UI at /."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
import time
import uuid
from typing import Any, AsyncIterator, Iterator, Literal

import anyio
from fastapi import Depends, FastAPI, File, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from .auth import ADMIN_HELP, Auth
from .config import AppConfig, AppConfig_
from .feedback import TraceLog, export_feedback, record_feedback
from .ingest import file_size_error, upload_size_error
from .schema import Answer, Query

logger = logging.getLogger(__name__)

__all__ = ["create_app", "serve", "build_query", "QuestionError", "BASE_MODEL", "SESSION_COOKIE"]

BASE_MODEL = "faq-bot"  # the served model: base weights, or `generate.adapter` when one is configured
SESSION_COOKIE = "faq_bot_admin"
_DEFAULT_MODELS = {"", BASE_MODEL, "default"}
_PLAIN_BASE = "base"  # the base weights even when `generate.adapter` is set (faq_bot.generate.BASE_MODEL)
_DONE = object()


class QuestionError(ValueError):
    """A question the API refuses before it reaches the pipeline (empty, too long)."""


def build_query(question: str, history: list | tuple = (), app: AppConfig_ | None = None) -> Query:
    """A `Query` within the app's limits: question length checked, history cut to the last turns.

    Raises:
        QuestionError: empty or over-long question (the message says the limit).
    """
    app = app or AppConfig_()
    text = (question or "").strip()
    if not text:
        raise QuestionError("The question is empty.")
    if len(text) > app.max_question_chars:
        raise QuestionError(f"The question is too long: {len(text)} characters, the limit is "
                            f"{app.max_question_chars} (`app.max_question_chars`). Please shorten it.")
    turns = [(str(r), str(c)[: 4 * app.max_question_chars]) for r, c in history if r in ("user", "assistant") and c]
    return Query(text=text, history=turns[-2 * app.max_history_turns:])


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers

    def response(self) -> JSONResponse:
        """The error as the API reports every error: `detail` (FastAPI) and an OpenAI-style `error` object."""
        body = {"detail": self.message, "error": {"message": self.message, "type": _error_type(self.status),
                                                  "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


# ---------------------------------------------------------------------------------------------- request bodies
class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str
    history: list[tuple[Literal["user", "assistant"], str]] = Field(default_factory=list)
    adapter: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # temperature, max_tokens, ... are accepted and ignored
    model: str = BASE_MODEL
    messages: list[ChatMessage]
    stream: bool = False
    stream_options: dict[str, Any] | None = None


class LoginRequest(BaseModel):
    password: str


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trace_id: str
    rating: Literal[1, -1]
    correction: str = ""


# ---------------------------------------------------------------------------------------------- body limit
class BodyLimit:
    """ASGI middleware: a JSON request to /api or /v1 over `max_bytes` gets 413 before its body is parsed
    (by Content-Length, or by counting a chunked body as it arrives), so a huge history or question costs
    neither memory nor a JSON parse. Uploads (`/api/admin/ingest`) have their own limits while reading."""

    EXEMPT = ("/api/admin/ingest",)

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(("/api/", "/v1/")) or path.startswith(self.EXEMPT):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(scope, send)
        seen = 0
        refused = False

        async def counting_receive():
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    refused = True
                    raise _BodyTooLarge
            return message

        started = False

        async def tracking_send(message):
            nonlocal started
            if refused:  # the app's own reply to the cut-off body (FastAPI: 400 "error parsing the body")
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except Exception:
            if not refused or started:  # a reply already under way cannot become a 413
                raise
        if refused and not started:
            await self._refuse(scope, send)

    async def _refuse(self, scope, send):
        msg = (f"Request body over {self.max_bytes // 1024} KB (`app.max_request_kb`): send a shorter question or "
               "less history.")
        await ApiError(413, msg, "request_too_large").response()(scope, _no_receive, send)


class _BodyTooLarge(Exception):
    pass


async def _no_receive():
    return {"type": "http.disconnect"}


# ---------------------------------------------------------------------------------------------- the app
def create_app(pipeline, cfg: AppConfig | None = None, *, auth: Auth | None = None, traces: TraceLog | None = None,
               ui: bool = True) -> FastAPI:
    """The whole server: JSON APIs first, then the Gradio UI mounted at `/` (it catches every other path)."""
    cfg = cfg or pipeline.cfg
    auth = auth or Auth(cfg)
    traces = traces if traces is not None else TraceLog()
    kb, store = pipeline.kb, pipeline.kb.store
    app = FastAPI(title="FAQ Bot", docs_url="/api/docs", openapi_url="/api/openapi.json", redoc_url=None)
    app.add_middleware(BodyLimit, max_bytes=cfg.app.max_request_kb * 1024)
    app.state.pipeline, app.state.auth, app.state.traces = pipeline, auth, traces

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return exc.response()

    def rate_limit(request: Request) -> None:
        wait = auth.limiter.hit(_client(request))
        if wait:
            raise ApiError(429, f"Too many requests; try again in {math.ceil(wait)} s.", "rate_limited",
                           {"Retry-After": str(math.ceil(wait))})

    def admin(request: Request) -> str:
        token = _bearer(request) or request.cookies.get(SESSION_COOKIE)
        if not auth.check(token):
            msg = "Admin login required (POST /api/admin/login)." if auth.enabled else ADMIN_HELP
            raise ApiError(401, msg, "unauthorized", {"WWW-Authenticate": "Bearer"})
        return token

    def query_of(question: str, history) -> Query:
        try:
            return build_query(question, history, cfg.app)
        except QuestionError as e:
            raise ApiError(422, str(e), "invalid_question") from None

    def adapter_of(name: str | None) -> str | None:
        if name is None or name in _DEFAULT_MODELS:
            return None
        if name != _PLAIN_BASE and name not in _adapters(pipeline):
            raise ApiError(404, f"The model `{name}` does not exist; GET /v1/models lists them.", "model_not_found")
        return name

    # ------------------------------------------------------------------ public
    @app.get("/health")
    def health() -> dict:
        s = pipeline.status()
        return {"status": "ok" if s["generator"] == "ready" else "degraded" if s["generator"] == "failed"
                else "loading", **s}

    @app.post("/api/ask", dependencies=[Depends(rate_limit)])
    async def ask(req: AskRequest) -> Response:
        query, adapter = query_of(req.question, req.history), adapter_of(req.adapter)
        answer = await run_in_threadpool(pipeline.answer, query, adapter=adapter)
        traces.add(answer)
        return _answer_json(answer)

    @app.get("/v1/models")
    def models() -> dict:
        names = [BASE_MODEL, *_adapters(pipeline)]
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "faq-bot"}
                                           for n in names]}

    @app.post("/v1/chat/completions", dependencies=[Depends(rate_limit)])
    async def chat_completions(req: ChatRequest):
        query, adapter = query_of(*_split_messages(req.messages)), adapter_of(req.model)
        model = req.model or BASE_MODEL
        if req.stream:
            usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(_sse(pipeline, traces, query, adapter, model, usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        answer = await run_in_threadpool(pipeline.answer, query, adapter=adapter)
        traces.add(answer)
        return _completion(answer, model)

    @app.post("/api/feedback", dependencies=[Depends(rate_limit)])
    async def feedback(req: FeedbackRequest) -> dict:
        answer = traces.get(req.trace_id)
        if answer is None:
            raise ApiError(404, f"Unknown trace id `{req.trace_id}`: feedback is taken for recent answers "
                                "of this server only.", "trace_not_found")
        try:
            fid = await run_in_threadpool(record_feedback, store, answer=answer, rating=req.rating,
                                          correction=req.correction)
        except ValueError as e:
            raise ApiError(422, str(e), "invalid_feedback") from None
        return {"id": fid, "trace_id": req.trace_id}

    # ------------------------------------------------------------------ admin
    @app.post("/api/admin/login")
    async def login(req: LoginRequest, request: Request):
        if not auth.enabled:
            raise ApiError(403, ADMIN_HELP, "admin_disabled")
        res = await run_in_threadpool(auth.login, req.password, _client(request))  # scrypt: keep it off the loop
        if res.retry_after_s:
            raise ApiError(429, res.message, "locked_out", {"Retry-After": str(math.ceil(res.retry_after_s))})
        if not res.ok:
            raise ApiError(401, res.message, "wrong_password")
        resp = JSONResponse({"token": res.token, "token_type": "bearer", "expires_in": cfg.app.session_ttl_s})
        resp.set_cookie(SESSION_COOKIE, res.token, max_age=cfg.app.session_ttl_s, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
        return resp

    @app.post("/api/admin/logout")
    def logout(token: str = Depends(admin)):
        auth.logout(token)
        resp = JSONResponse({"ok": True})
        resp.delete_cookie(SESSION_COOKIE)
        return resp

    @app.post("/api/admin/ingest", dependencies=[Depends(admin)])
    async def ingest(files: list[UploadFile] = File(...)) -> dict:
        uploads = await _read_uploads(files, cfg)
        results = []
        for name, data, error in uploads:
            if error:
                results.append({"source": name, "status": "error", "error": error})
            else:
                results.append(dataclasses.asdict(await run_in_threadpool(kb.ingest_bytes, data, name)))
        return {"results": results, "stats": kb.stats()}

    @app.get("/api/admin/documents", dependencies=[Depends(admin)])
    def documents() -> dict:
        return {"documents": [d.model_dump(mode="json") for d in store.list_documents()], "stats": kb.stats()}

    @app.get("/api/admin/faqs", dependencies=[Depends(admin)])
    def faqs() -> dict:
        return {"faqs": [f.model_dump(mode="json") for f in store.faqs()]}

    @app.delete("/api/admin/documents/{doc_id}", dependencies=[Depends(admin)])
    async def delete_document(doc_id: str) -> dict:
        try:
            found = await run_in_threadpool(kb.delete_document, doc_id)
        except OSError as e:  # disk full while the index files were rewritten: the store rolled back
            raise ApiError(507, f"Could not delete `{doc_id}`: {e.strerror or e}; nothing changed. Free some disk "
                                "space and try again.", "insufficient_storage") from e
        if not found:
            raise ApiError(404, f"No document with id `{doc_id}`; GET /api/admin/documents lists them.", "not_found")
        return {"deleted": doc_id, "stats": kb.stats()}

    @app.post("/api/admin/reindex", dependencies=[Depends(admin)])
    async def reindex() -> dict:
        await run_in_threadpool(kb.reindex)
        return {"stats": kb.stats()}

    @app.get("/api/admin/feedback", dependencies=[Depends(admin)])
    def feedback_list(rating: int | None = None, limit: int = 200, trace: bool = False) -> dict:
        if rating not in (None, 1, -1):
            raise ApiError(422, f"`rating` must be 1 or -1, got {rating}.", "invalid_rating")
        rows = store.feedback(rating=rating, limit=max(1, min(limit, 10_000)))
        return {"feedback": [r if trace else {k: v for k, v in r.items() if k != "trace"} for r in rows]}

    @app.get("/api/admin/feedback/export", dependencies=[Depends(admin)])
    async def feedback_export(only_negative: bool = False):
        fd, path = tempfile.mkstemp(prefix="faq_bot_feedback_", suffix=".jsonl")
        os.close(fd)
        await run_in_threadpool(export_feedback, store, path, only_negative)
        return FileResponse(path, media_type="application/x-ndjson", filename="feedback.jsonl",
                            background=BackgroundTask(os.unlink, path))

    @app.get("/api/admin/trace/{trace_id}", dependencies=[Depends(admin)])
    def trace(trace_id: str) -> Response:
        answer = traces.get(trace_id)
        if answer is None:
            raise ApiError(404, f"Trace `{trace_id}` is not in memory (the last {traces.maxsize} answers are kept).",
                           "trace_not_found")
        return _answer_json(answer)

    if ui:
        import gradio as gr

        from .ui import CSS, build_app

        blocks = build_app(pipeline, cfg, auth, traces=traces)
        gr.mount_gradio_app(app, blocks, path="/", css=CSS, footer_links=[],
                            max_file_size=f"{int(cfg.ingest.max_file_mb * 1024)}kb")
    return app


def serve(cfg: AppConfig, host: str | None = None, port: int | None = None) -> None:
    """Load the knowledge base and the pipeline, start the model loading in the background, run the server."""
    import uvicorn

    from .knowledge import KnowledgeBase
    from .pipeline import Pipeline

    cfg = apply_server_threads(cfg)
    pipeline = Pipeline(cfg, KnowledgeBase(cfg))
    pipeline.warm_up()  # encoders and indexes now; the generator loads in a background thread
    app = create_app(pipeline, cfg)
    host, port = host or cfg.app.host, port or cfg.app.port
    print(f"FAQ Bot running on http://{host}:{port}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")


def apply_server_threads(cfg: AppConfig) -> AppConfig:
    """Cap every compute library of this process at `app.threads` (torch intra-op, faiss OpenMP, numpy BLAS, the
    encoders); returns the config with `embed.threads` capped too. Servers only: a CLI ingest keeps all cores."""
    n = cfg.app.threads
    if n is None:
        return cfg
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    threadpool_limits(limits=n)
    cfg = cfg.model_copy(deep=True)
    cfg.embed.threads = min(cfg.embed.threads, n)
    return cfg


# ---------------------------------------------------------------------------------------------- helpers
def _client(request: Request) -> str:
    return request.client.host if request.client else ""


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _answer_json(answer: Answer) -> Response:
    """An Answer (with its trace) as JSON, serialized by pydantic-core: FastAPI's default route through
    `jsonable_encoder` walks the nested dict in Python (~1.6 ms per FAQ answer here, more with long traces)."""
    return Response(answer.model_dump_json(), media_type="application/json")


def _error_type(status: int) -> str:
    return {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
            429: "rate_limit_error"}.get(status, "invalid_request_error")


def _adapters(pipeline) -> list[str]:
    try:
        return list(pipeline.generator.adapters())
    except Exception:
        logger.exception("Listing adapters failed")
        return []


def _split_messages(messages: list[ChatMessage]) -> tuple[str, list[tuple[str, str]]]:
    """OpenAI messages -> (last user message, earlier user/assistant turns). System messages are ignored."""
    turns = [(m.role, m.text()) for m in messages if m.role in ("user", "assistant")]
    if not turns or turns[-1][0] != "user":
        raise ApiError(422, "`messages` must end with a user message (the question).", "invalid_messages")
    return turns[-1][1], turns[:-1]


async def _read_uploads(files: list[UploadFile], cfg: AppConfig) -> list[tuple[str, bytes, str]]:
    """(name, bytes, error) per upload, enforcing `ingest.max_file_mb` (that file is refused, the others go on)
    and `ingest.max_upload_mb` (the whole upload is refused with 413, before anything is ingested) while reading."""
    per_file = int(cfg.ingest.max_file_mb * 2**20)
    out, sizes = [], []
    for f in files:
        name = f.filename or "unnamed"
        data = await f.read(per_file + 1)  # never more than one file's limit in memory per file
        size = len(data) if len(data) <= per_file else (f.size or len(data))
        sizes.append((name, size))
        error = file_size_error(name, size, cfg.ingest)
        if error:
            out.append((name, b"", error))
            continue
        error = upload_size_error(sizes, cfg.ingest)
        if error:
            raise ApiError(413, error, "upload_too_large")
        out.append((name, data, ""))
    return out


def _usage(answer: Answer) -> dict:
    g = answer.trace.step("generate")
    p = int(g.detail.get("prompt_tokens", 0)) if g else 0
    c = int(g.detail.get("completion_tokens", 0)) if g else 0
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _extra(answer: Answer) -> dict:
    """Our fields on top of the OpenAI shape: kind, citations, suggestions, FAQ match, trace id."""
    return {"kind": answer.kind, "trace_id": answer.trace.id, "model": answer.model, "text": answer.text,
            "citations": [c.model_dump(mode="json") for c in answer.citations],
            "suggestions": [{"faq_id": m.faq.id, "question": m.faq.question, "score": m.score}
                            for m in answer.suggestions],
            "faq": ({"faq_id": answer.faq.faq.id, "question": answer.faq.faq.question, "score": answer.faq.score,
                     "matched_question": answer.faq.matched_question} if answer.faq else None)}


def _completion(answer: Answer, model: str) -> dict:
    return {"id": f"chatcmpl-{answer.trace.id}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                                         "finish_reason": "stop", "logprobs": None}],
            "usage": _usage(answer), "faq_bot": _extra(answer)}


def _chunk(cid: str, created: int, model: str, delta: dict, finish: str | None = None, **extra) -> str:
    body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def _iterate(gen: Iterator[Answer]) -> AsyncIterator[Answer]:
    """Step a blocking generator in the threadpool; close it (releasing its generation slot) when we stop early."""
    try:
        while True:
            item = await run_in_threadpool(next, gen, _DONE)
            if item is _DONE:
                return
            yield item
    finally:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(gen.close)


async def _sse(pipeline, traces: TraceLog, query: Query, adapter: str | None, model: str,
               include_usage: bool) -> AsyncIterator[str]:
    """OpenAI streaming: a role chunk, content deltas, a final chunk with our `faq_bot` field, then [DONE]."""
    created, cid, sent, answer = int(time.time()), f"chatcmpl-{uuid.uuid4().hex[:12]}", "", None
    yield _chunk(cid, created, model, {"role": "assistant", "content": ""})  # at once: retrieval takes a while
    try:
        async for answer in _iterate(pipeline.stream(query, adapter=adapter)):
            # partial answers are cumulative; a final text that revises them can only be appended to
            common = len(os.path.commonprefix([sent, answer.text]))
            if answer.text[common:]:
                yield _chunk(cid, created, model, {"content": answer.text[common:]})
            sent = answer.text
    except Exception as e:
        logger.exception("Streaming answer failed")
        yield f"data: {json.dumps({'error': {'message': f'{type(e).__name__}: {e}', 'type': 'server_error'}})}\n\n"
        yield "data: [DONE]\n\n"
        return
    if answer is not None:
        traces.add(answer)
        yield _chunk(cid, created, model, {}, "stop", faq_bot=_extra(answer))
        if include_usage:
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
                    "usage": _usage(answer)}
            yield f"data: {json.dumps(body)}\n\n"
    yield "data: [DONE]\n\n"
