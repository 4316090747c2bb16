"""Secrets (admin password, generator / judge / teacher / Qdrant API keys, session tokens) never appear in logs,
traces, API responses, eval reports or the files training writes (issue #10).

An OpenAI-compatible endpoint on 127.0.0.1 stands in for vLLM / a hosted teacher: it checks the bearer key and,
like some proxies, echoes a rejected key back in its error message."""

from __future__ import annotations

import argparse
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from faq_bot.config import GenerateConfig, OpenAIBackendConfig, load_config

from conftest import ROOT, make_config

ADMIN = "adm-S3cr3t-pw-7f3a"
GEN_KEY = "sk-gen-7c1e0d5b9a11"
WRONG_KEY = "sk-revoked-0a9b8c7d"  # rejected by the endpoint, which echoes it
JUDGE_KEY = "sk-judge-4b2f6e0c"  # rejected too: the judge fails and the report records why
TEACHER_KEY = "sk-teacher-93ad11ee"
QDRANT_KEY = "qd-key-55aa77cc"
SECRETS = [ADMIN, GEN_KEY, WRONG_KEY, JUDGE_KEY, TEACHER_KEY, QDRANT_KEY]
ACCEPTED = {GEN_KEY, TEACHER_KEY}

FAQ_CSV = "id,question,answer,similar_questions\nf1,怎么退货,在订单页申请退货,如何退货||退货流程\n"
DOC_MD = "# 积分规则\n## 兑换\n积分可以兑换优惠券，100积分抵1元。\n## 过期\n积分每年12月31日清零。\n"
ANSWER = '{"answer_in_context": true, "answer": "积分可以兑换优惠券，100积分抵1元。", "evidence": [1]}'


class _Endpoint(BaseHTTPRequestHandler):
    seen: list[str] = []

    def log_message(self, *args):  # keep stderr quiet
        pass

    def _authorized(self) -> bool:
        key = self.headers.get("authorization", "").removeprefix("Bearer ")
        self.seen.append(key)
        if key in ACCEPTED:
            return True
        self._send(401, {"error": {"message": f"Incorrect API key provided: {key}.", "type": "invalid_request_error",
                                   "code": "invalid_api_key"}})
        return False

    def _send(self, status: int, body: dict | None = None, raw: str | None = None, ctype="application/json"):
        data = (raw if raw is not None else json.dumps(body, ensure_ascii=False)).encode()
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self._authorized():
            self._send(200, {"object": "list", "data": [{"id": "served", "object": "model", "created": 0,
                                                         "owned_by": "test"}]})

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        if not self._authorized():
            return
        text = ANSWER if "<doc" in json.dumps(req, ensure_ascii=False) else "8"
        if req.get("stream"):
            chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "served",
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}]}
            end = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            self._send(200, raw=f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(end)}\n\ndata: [DONE]\n\n",
                       ctype="text/event-stream")
        else:
            self._send(200, {"id": "c1", "object": "chat.completion", "created": 0, "model": "served",
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


@pytest.fixture(scope="module")
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def _leaks(text: str, secrets=SECRETS) -> list[str]:
    return [s for s in secrets if s in text]


# ---------------------------------------------------------------------------------------------- config
def test_config_secrets_from_env_or_set_are_kept_as_text_and_never_echoed():
    cfg = load_config(environ={"FAQ_BOT__APP__ADMIN_PASSWORD": "31415926", "FAQ_BOT__GENERATE__OPENAI__API_KEY": "0x1F"})
    assert cfg.app.admin_password.get_secret_value() == "31415926"  # digits: not turned into an int, not refused
    assert cfg.generate.openai.api_key.get_secret_value() == "0x1F"
    cfg = load_config(overrides={"app.admin_password": "007", "retrieve.qdrant_api_key": "true"}, environ={})
    assert cfg.app.admin_password.get_secret_value() == "007" and cfg.retrieve.qdrant_api_key.get_secret_value() == "true"
    assert "007" not in json.dumps(cfg.dump()) and "007" not in repr(cfg)
    with pytest.raises(ValueError) as e:  # a wrong type next to the secret: the key is named, the value never
        load_config(overrides={"generate.openai.api_key": [GEN_KEY], "app.admin_password": {"x": ADMIN},
                               "app.port": "not-a-port"}, environ={})
    msg = str(e.value)
    assert "generate.openai.api_key" in msg and "app.admin_password" in msg and "not-a-port" in msg
    assert not _leaks(msg)

    from training.config import DataBuildConfig, load_train_config

    t = load_train_config(DataBuildConfig, None, {"synth.teacher.api_key": "0x1F", "synth.teacher.model": "m"})
    assert t.synth.teacher.api_key.get_secret_value() == "0x1F"
    with pytest.raises(ValueError) as e:
        load_train_config(DataBuildConfig, None, {"synth.teacher.api_key": [TEACHER_KEY]})
    assert "synth.teacher.api_key" in str(e.value) and not _leaks(str(e.value))


# ---------------------------------------------------------------------------------------------- everything else
@pytest.fixture
def app_cfg(tmp_path, endpoint):
    return make_config(tmp_path, **{
        "app.admin_password": ADMIN, "generate.backend": "openai", "generate.openai.base_url": endpoint,
        "generate.openai.api_key": GEN_KEY, "generate.openai.model": "served", "rerank.backend": "none",
        "eval.judge": {"base_url": endpoint, "api_key": JUDGE_KEY, "model": "served"},
        "retrieve.qdrant_api_key": QDRANT_KEY, "train.runs_dir": str(tmp_path / "runs")})


def test_secrets_never_reach_logs_traces_reports_or_files(tmp_path, app_cfg, endpoint, caplog, faq_encoder,
                                                          doc_encoder, generator_dir):
    from faq_bot.api import create_app
    from faq_bot.auth import Auth
    from faq_bot.eval.cli import execute
    from faq_bot.generate import load_generator
    from faq_bot.knowledge import KnowledgeBase
    from faq_bot.pipeline import Pipeline
    from training.config import DataBuildConfig, load_train_config
    from training.data import build_data
    from training.jobs import JobManager

    caplog.set_level(logging.DEBUG)  # everything: our loggers, httpx, openai, uvicorn
    cfg = app_cfg
    seen: list[str] = []  # what the app sent back to anyone
    kb = KnowledgeBase(cfg)
    assert [kb.ingest_bytes(FAQ_CSV.encode(), "faq.csv").status,
            kb.ingest_bytes(DOC_MD.encode(), "p.md").status] == ["added", "added"]
    pipe = Pipeline(cfg, kb)
    pipe.warm_up(background=False)
    assert pipe.generator.ready, pipe.generator.error

    # login (wrong, then right), questions (FAQ, document, streamed), health, trace, logout
    with TestClient(create_app(pipe, cfg, auth=Auth(cfg, environ={}), ui=False)) as c:
        r = c.post("/api/admin/login", json={"password": ADMIN + "x"})  # a near miss holds the real password
        assert r.status_code == 401
        seen.append(r.text)
        r = c.post("/api/admin/login", json={"password": ADMIN})
        token = r.json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        faq = c.post("/api/ask", json={"question": "怎么退货"})
        doc = c.post("/api/ask", json={"question": "积分可以兑换什么？"})
        assert faq.json()["kind"] == "faq" and doc.json()["kind"] == "rag", doc.text
        with c.stream("POST", "/v1/chat/completions", json={"stream": True, "messages": [
                {"role": "user", "content": "积分可以兑换什么？"}]}) as s:
            seen.append("".join(s.iter_text()))
        seen += [faq.text, doc.text, c.get("/health").text, c.get("/v1/models").text,
                 c.get(f"/api/admin/trace/{doc.json()['trace']['id']}", headers=headers).text,
                 c.get("/api/admin/documents", headers=headers).text]
        c.post("/api/admin/logout", headers=headers)
    assert GEN_KEY in _Endpoint.seen  # the key was really used

    # a revoked key: the endpoint echoes it in its 401; the recorded error (shown by /health) must not carry it
    bad = load_generator(GenerateConfig(backend="openai", openai=OpenAIBackendConfig(
        base_url=endpoint, api_key=WRONG_KEY, model="served")))
    assert not bad.warm_up() and bad.error and "401" in bad.error
    seen.append(bad.error)
    bad_pipe = Pipeline(cfg, kb, generator=bad)
    seen.append(json.dumps(bad_pipe.status()))
    seen.append(bad_pipe.answer("积分可以兑换什么？").model_dump_json())

    # an eval report (its config section, and a judge that fails with the echoed key)
    data = tmp_path / "ctx.jsonl"
    data.write_text(json.dumps({"id": 1, "question": "积分可以兑换什么？", "answers": ["优惠券"],
                                "contexts": ["积分可以兑换优惠券，100积分抵1元。"]}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    args = argparse.Namespace(eval_mode="generator", data=str(data), adapter=[], include_base=True, limit=None,
                              runs_dir=str(tmp_path / "eval"), no_progress=True)
    report = execute(cfg, args, bar=False)
    assert any("judge failed" in e for e in report["errors"]), report["errors"]  # the judge key was tried
    assert JUDGE_KEY in _Endpoint.seen

    # training data with a teacher endpoint: data_card.json records the config
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(generator_dir)
    dcfg = load_train_config(DataBuildConfig, ROOT / "configs/train/data.yaml", {
        "output_dir": str(tmp_path / "train"), "base_model": generator_dir, "synth.enabled": True,
        "synth.backend": "openai", "synth.max_chunks": 1, "synth.min_chunk_chars": 0,
        "synth.teacher": {"base_url": endpoint, "api_key": TEACHER_KEY, "model": "served"},
        "kto.enabled": False, "rgb.path": None, "feedback.enabled": False, "kto.feedback": False})
    card = build_data(cfg, dcfg, kb=kb, tokenizer=tokenizer, progress=False)
    assert TEACHER_KEY in _Endpoint.seen and card["config"]["synth"]["teacher"]["api_key"] == "**********"
    JobManager(cfg)._app_config_file()  # the config handed to training subprocesses

    # nothing above, in any log record, response, trace or written file, holds a secret
    assert not _leaks(caplog.text + token), [s for s in SECRETS if s in caplog.text]
    for text in seen:
        assert not _leaks(text), (_leaks(text), text[:500])
    files = [p for p in Path(tmp_path).rglob("*") if p.is_file()]  # store, indexes, eval run, train data, job config
    assert any(p.name == "report.json" for p in files) and any(p.name == "data_card.json" for p in files)
    assert any(p.name == "app-config.yaml" for p in files)
    for path in files:
        body = path.read_bytes().decode("utf-8", "ignore")
        assert not _leaks(body) and token not in body, (path, _leaks(body))
