"""Training fixtures: a small knowledge base under tmp, the data built from it, one tiny SFT run shared by tests."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _reexport_top_conftest() -> None:
    """pytest keeps one module named `conftest`, the last one loaded (this one); test modules elsewhere do
    `from conftest import ROOT, make_config`, so the top-level conftest's plain names are offered here too
    (its fixtures and hooks are not: pytest already has them)."""
    spec = importlib.util.spec_from_file_location("_tests_top_conftest", ROOT / "tests" / "conftest.py")
    top = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(top)
    for name, value in vars(top).items():
        if name.startswith(("_", "pytest_")) or name in globals():
            continue
        if type(value).__name__ == "FixtureFunctionDefinition":
            continue
        if getattr(value, "__module__", top.__name__) == top.__name__ or not callable(value):
            globals()[name] = value


_reexport_top_conftest()
CONTEXT_TOKENS = 160  # short prompts: the tiny model's 152k-token LM head dominates CPU step time

FAQ_CSV = """id,question,answer,similar_questions,category
faq-t1,怎么申请退货？,在“我的订单”中点击“申请售后”并选择“退货退款”，审核通过后寄回商品即可。,如何退货||退货流程是什么||我想退货怎么操作,退货
faq-t2,退货运费谁承担？,无理由退货的寄回运费由买家承担；质量问题退货的运费由商家承担。,退货邮费谁出||退回去的运费要我自己付吗,退货
faq-t3,多久能发货？,现货商品在付款后48小时内发货，预售商品以商品页标注的时间为准。,什么时候发货||付款后多久发出,物流
faq-t4,可以开发票吗？,可以。下单时在结算页选择“开具发票”并填写抬头和税号即可。,怎么开发票||发票在哪里申请,发票
faq-t5,支持货到付款吗？,暂不支持货到付款，所有订单均需在线付款成功后才会安排发货。,能不能货到付款||可以收货再付钱吗,支付
"""

DOC_MD = """# 会员积分规则

## 积分获取

每日在APP签到可获得5积分，连续签到满7天额外奖励30积分。确认收货后发表带图评价奖励20积分。

## 积分使用

结算时100积分可抵扣1元，单笔订单积分抵扣金额不超过商品实付金额的50%，运费不可抵扣。

## 积分有效期

积分有效期为获得当年及次一自然年，到期积分在次年12月31日24点统一清零，清零前30天短信提醒。

## 会员等级

成长值达到1000点升级为V2会员，达到5000点升级为V3会员，V3会员每月可领取两张免运费券。
"""

RGB_ITEMS = [
    {"id": 0, "query": "2022年冬奥会在哪个城市举办？", "answer": ["北京"],
     "positive": ["第二十四届冬季奥林匹克运动会于2022年2月在北京举办，张家口为协办城市。"],
     "negative": ["2018年冬奥会在韩国平昌举办，共有92个国家和地区参赛。", "冬奥会每四年举办一次，项目包括滑雪、滑冰等。"]},
    {"id": 1, "query": "被过滤掉的问题？", "answer": ["不应出现"],
     "positive": ["这条不应出现在训练数据里。"], "negative": ["无关内容。"]},
    {"id": 3, "query": "世界杯2022年冠军是哪支球队？", "answer": [["阿根廷", "阿根廷队"]],
     "positive": ["2022年卡塔尔世界杯决赛中，阿根廷队通过点球大战击败法国队夺冠。"],
     "negative": ["2018年世界杯冠军是法国队，决赛4比2战胜克罗地亚。", "世界杯每四年举办一届，由国际足联主办。"]},
]


@pytest.fixture(scope="session")
def train_env(tmp_path_factory):
    """App config pointing at a tmp store with 5 FAQs, one markdown doc (4 chunks) and feedback rows."""
    from faq_bot.config import load_config
    from faq_bot.knowledge import KnowledgeBase

    tmp = tmp_path_factory.mktemp("train-kb")
    (tmp / "faq_t.csv").write_text(FAQ_CSV, encoding="utf-8")
    (tmp / "积分规则.md").write_text(DOC_MD, encoding="utf-8")
    cfg = load_config(None, {"store.path": str(tmp / "kb.db"), "store.index_dir": str(tmp / "idx"),
                             "train.runs_dir": str(tmp / "runs"), "generate.adapters_dir": str(tmp / "runs"),
                             "ingest.chunk_tokens": 64, "ingest.chunk_overlap": 8}, environ={})
    kb = KnowledgeBase(cfg)
    results = kb.ingest_paths([tmp / "faq_t.csv", tmp / "积分规则.md"])
    assert all(r.status == "added" for r in results), [r.line() for r in results]
    chunk = next(c for c in kb.store.chunks() if "签到" in c.text)
    kb.store.add_feedback(question="签到一天给几个积分", answer="10积分", rating=-1, correction="每日签到可获得5积分。")
    trace = {"id": "t1", "steps": [
        {"stage": "rerank", "ms": 1.0, "detail": {"hits": [{"chunk_id": chunk.id}]}},
        {"stage": "generate", "ms": 1.0, "detail": {"raw": '{"answer_in_context": true, "answer": "10积分", '
                                                          '"evidence": [1]}'}}]}
    kb.store.add_feedback(question="签到有什么奖励", answer="10积分", rating=-1, trace=trace)
    return cfg, kb, tmp


@pytest.fixture(scope="session")
def built_data(train_env, tiny_lm_dir):
    """train/val/kto JSONL built from the tmp knowledge base + user JSONL + RGB + badcases, tiny-model tokenizer."""
    from training.config import DataBuildConfig, load_train_config
    from training.data import build_data

    cfg, kb, tmp = train_env
    (tmp / "user.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"id": "u1", "question": "V3会员每月有什么福利？", "answer": "每月可领取两张免运费券",
         "context": "V3会员每月可领取两张免运费券，生日当月另送200积分。"},
        {"id": "u2", "question": "积分可以转给别人吗？", "refuse": True,
         "context": ["积分商城每周一上新兑换商品。"]},
    ]) + "\n", encoding="utf-8")
    (tmp / "rgb.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in RGB_ITEMS) + "\n",
                                   encoding="utf-8")
    (tmp / "badcases.jsonl").write_text(json.dumps({
        "id": "q9", "question": "运费险怎么赔付？", "contexts": ["退货运费由买家承担。", "开具发票需填写抬头。"],
        "expected": [], "output": "运费险赔付10元。"}, ensure_ascii=False) + "\n", encoding="utf-8")
    dcfg = load_train_config(DataBuildConfig, ROOT / "configs/train/data.yaml", {
        "output_dir": str(tmp / "data"), "base_model": tiny_lm_dir, "context_tokens": CONTEXT_TOKENS,
        "user_jsonl": [str(tmp / "user.jsonl")], "rgb.path": str(tmp / "rgb.jsonl"),
        "kto.badcases": [str(tmp / "badcases.jsonl")], "kto.self_negatives": 2, "kto.max_new_tokens": 8,
        "kto.desirable": 8, "kto.synthetic": 6, "split.val_ratio": 0.25, "mix.long_distractors": 5})
    card = build_data(cfg, dcfg, kb=kb, progress=False)
    return dcfg, card


@pytest.fixture(scope="session")
def train_cli(train_env):
    """Run `python -m faq_bot train ...` argv through add_train_parser + run_train with the tmp app config."""
    from training.cli import add_train_parser, run_train

    cfg, _, _ = train_env
    return lambda argv: run_train(cfg, _parse(add_train_parser, argv))


TINY_TRAINER = ["--set", "trainer.gradient_accumulation_steps=1", "--set", "trainer.eval_strategy=no",
                "--set", "trainer.learning_rate=0.01", "--set", "trainer.logging_steps=1",
                "--set", "trainer.activation_checkpointing=false", "--set", "trainer.max_length=768",
                "--set", "trainer.warmup_steps=0"]


@pytest.fixture(scope="session")
def tiny_trainer_args() -> list[str]:
    return list(TINY_TRAINER)


@pytest.fixture(scope="session")
def sft_run(train_env, built_data, tiny_lm_dir, train_cli):
    """One 2-step SFT run on the tiny model, started through the CLI dispatcher."""
    cfg, _, _ = train_env
    dcfg, _ = built_data
    assert train_cli([
        "train", "sft", "--set", "name=tiny-sft", "--set", f"base_model={tiny_lm_dir}",
        "--set", f"data_dir={dcfg.output_dir}", "--set", "trainer.max_steps=2", *TINY_TRAINER,
        "--set", "trainer.per_device_train_batch_size=1",
    ]) == 0
    return cfg.train.runs_dir / "tiny-sft"


def _parse(add_train_parser, argv: list[str]):
    import argparse

    parser = argparse.ArgumentParser(prog="python -m faq_bot")
    add_train_parser(parser.add_subparsers(dest="cmd", required=True))
    return parser.parse_args(argv)
