"""Config: defaults load, overrides apply, bad and unknown keys fail naming the key."""

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
