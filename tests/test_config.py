"""Config: defaults load, overrides apply, bad and unknown keys fail naming the key."""

from pathlib import Path

import pytest

from faq_bot.config import load_config


def test_config_default_loads_with_absolute_paths():
    cfg = load_config()
    assert cfg.store.path.is_absolute()
    assert cfg.faq.suggest_threshold <= cfg.faq.answer_threshold
    assert cfg.generate.refusal_zh == "抱歉，知识库中没有找到相关答案。"


def test_config_env_and_explicit_overrides():
    cfg = load_config(overrides={"faq.top_k": "7"}, environ={"FAQ_BOT__RETRIEVE__TOP_K": "5"})
    assert cfg.faq.top_k == 7
    assert cfg.retrieve.top_k == 5


def test_config_unknown_key_is_an_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("faq:\n  answer_treshold: 0.9\n")
    with pytest.raises(ValueError, match=r"`faq.answer_treshold`: unknown key"):
        load_config(p)


def test_config_invalid_value_names_the_key():
    with pytest.raises(ValueError, match=r"`retrieve.top_k`"):
        load_config(environ={"FAQ_BOT__RETRIEVE__TOP_K": "-3"})
    with pytest.raises(ValueError, match=r"`retrieve.index`"):
        load_config(overrides={"retrieve.index": "kdtree"})


def test_config_cross_field_check():
    with pytest.raises(ValueError, match="suggest_threshold"):
        load_config(overrides={"faq.suggest_threshold": "0.95", "faq.answer_threshold": "0.9"})


def test_config_secret_is_masked_in_dump():
    cfg = load_config(overrides={"app.admin_password": "hunter2"})
    assert "hunter2" not in str(cfg.dump())


def test_server_thread_cap_applies_to_every_library_in_a_fresh_process():
    """`app.threads` caps torch, faiss, BLAS and the encoders of a server process (run in a subprocess so the
    test session keeps its own thread counts)."""
    import subprocess
    import sys

    code = (
        "import faiss, torch, threadpoolctl\n"
        "from faq_bot.config import load_config\n"
        "from faq_bot.api import apply_server_threads\n"
        "cfg = load_config(overrides={'embed.threads': 4}, environ={})\n"
        "out = apply_server_threads(cfg)\n"
        "blas = {i['num_threads'] for i in threadpoolctl.threadpool_info()}\n"
        "print(torch.get_num_threads(), faiss.omp_get_max_threads(), out.embed.threads, cfg.embed.threads, max(blas or {1}))\n"
        "off = apply_server_threads(load_config(overrides={'app.threads': None}, environ={}))\n"
        "print(off.embed.threads)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    first, second = r.stdout.split("\n")[:2]
    assert first.split() == ["1", "1", "1", "4", "1"]
    assert second == "2"  # null: untouched (the section default)
