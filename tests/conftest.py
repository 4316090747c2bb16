"""Shared fixtures: real models loaded once per session, tiny LMs built from configs."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from faq_bot.generate import Generator

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("FAQ_BOT_DATA_DIR", ROOT.parent / "shared" / "data"))
# Model ids as constants, overridable by env (STYLE.md).
FAQ_ENCODER = os.environ.get("FAQ_BOT_TEST_FAQ_ENCODER", "usem3")
DOC_ENCODER = os.environ.get("FAQ_BOT_TEST_DOC_ENCODER", "e5-small")
GENERATOR = os.environ.get("FAQ_BOT_TEST_GENERATOR", "qwen2.5-coder-0.5b-instruct")


class ModellessGenerator(Generator):
    """A `Generator` without a model: loads instantly and has no adapters; subclasses give `_chat` /
    `_chat_stream` (the checks around the model, tested without one)."""

    def _load(self):
        pass

    def adapters(self):
        return []

    def _check_adapter(self, adapter):
        raise ValueError(adapter)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: real-model CPU tests (still run in make test)")
    config.addinivalue_line("markers", "gpu: needs a GPU; skipped without one")
    config.addinivalue_line("markers", "browser: drives headless chromium")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="no GPU on this machine")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def faq_encoder():
    from faq_bot.models import load_encoder

    return load_encoder(FAQ_ENCODER)


@pytest.fixture(scope="session")
def doc_encoder():
    from faq_bot.models import load_encoder

    return load_encoder(DOC_ENCODER)


@pytest.fixture(scope="session")
def generator_dir() -> str:
    """The real default generator, converted once from its bundled GGUF (cached under FAQ_BOT_CACHE)."""
    from faq_bot.models import resolve_generator_dir

    return resolve_generator_dir(GENERATOR)


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory, generator_dir) -> str:
    """A tiny random Qwen2 causal LM with the real Qwen tokenizer, saved like a real checkpoint."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(generator_dir)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny-qwen")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@contextlib.contextmanager
def serving(app):
    """Run `app` with uvicorn on a free 127.0.0.1 port in a thread; yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def warm_pipeline(cfg, kb):
    """A Pipeline over `kb` with the configured generator loaded and every stage warmed up (no lazy first call)."""
    from faq_bot.generate import load_generator
    from faq_bot.pipeline import Pipeline

    pipe = Pipeline(cfg, kb, generator=load_generator(cfg.generate))
    pipe.warm_up(background=False)
    return pipe


def make_config(tmp_path, **overrides):
    """A config whose store and indexes live under `tmp_path`."""
    from faq_bot.config import load_config

    base = {"store.path": str(tmp_path / "kb.db"), "store.index_dir": str(tmp_path / "index"),
            "generate.adapters_dir": str(tmp_path / "runs"), "eval.runs_dir": str(tmp_path / "runs" / "eval")}
    return load_config(overrides={**base, **overrides}, environ={})


@pytest.fixture(scope="session")
def sample_kb_cfg(tmp_path_factory, faq_encoder, doc_encoder):
    """The shipped sample knowledge base, ingested once per session into a temp store."""
    from faq_bot.knowledge import KnowledgeBase

    cfg = make_config(tmp_path_factory.mktemp("sample-kb"))
    results = KnowledgeBase(cfg).ingest_paths([ROOT / "knowledge" / "faq", ROOT / "knowledge" / "docs"])
    errors = [r.error for r in results if r.status == "error"]
    assert not errors, errors
    return cfg
