"""Evaluation runner, reports and CLI on small hand-made data: calibration, config edit, FAQ / retrieval runs,
malformed lines, and a tiny-model base-vs-adapter generator run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from faq_bot.config import load_config
from faq_bot.eval.cli import add_eval_parser, parse_ids, run_eval
from faq_bot.eval.report import update_faq_thresholds
from faq_bot.eval.runner import calibrate_faq

from conftest import ROOT, make_config

FAQ_CSV = """id,question,answer,similar_questions,category
f-return,怎么申请退货？,在“我的订单”中点击“申请售后”。,如何退货||我想退货怎么操作||退货流程是什么,退货
f-refund,退款多久到账？,原路退回，1-3个工作日到账。,钱什么时候退回来||退款到账时间,退款
f-password,How do I reset my password?,Go to Settings > Security > Reset password.,I forgot my password||change my password,Account
"""
QUERIES = [
    {"question": "退货在哪里申请", "faq_id": "f-return"},
    {"question": "我的退款几天能到账", "faq_id": "f-refund"},
    {"question": "I can't remember my password", "faq_id": "f-password"},
    {"question": "你们有线下实体店吗", "faq_id": None},
    {"question": "what's the weather like tomorrow", "faq_id": None},
]
PASSAGES = {
    "退货": "签收之日起7天内支持无理由退货，质量问题15天内可退。",
    "积分": "每日签到可获得5积分，100积分可抵扣1元。",
    "shipping": "Standard delivery takes 2-4 days; same-day delivery is available in Shanghai.",
    "privacy": "Browsing history is kept for 6 months and then deleted.",
}


def _eval(argv: list[str], cfg) -> tuple[int, argparse.Namespace]:
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["eval", *argv, "--no-progress"])
    return run_eval(cfg, args), args


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- calibration


def test_calibrate_faq_sweep_picks_threshold_on_constructed_scores():
    # 8 in-scope queries ranked right with high scores; 2 in-scope ones whose right FAQ is only second
    # (0.69, 0.65); one out-of-scope query scoring 0.72 (above those two), one at 0.40, one with no candidate
    records = [{"question": f"q{i}", "gold": f"F{i}", "ranked": [(f"F{i}", round(0.95 - 0.01 * i, 2))]} for i in range(8)]
    records += [
        {"question": "c", "gold": "C", "ranked": [("F0", 0.70), ("C", 0.69)]},
        {"question": "e", "gold": "E", "ranked": [("F1", 0.66), ("E", 0.65)]},
        {"question": "o1", "gold": None, "ranked": [("F0", 0.72)]},
        {"question": "o2", "gold": None, "ranked": [("F1", 0.40)]},
        {"question": "o3", "gold": None, "ranked": []},
    ]
    rep = calibrate_faq(records, answer_threshold=0.9, suggest_threshold=0.6, objective="max_accuracy")
    cal = rep["calibration"]
    # overall accuracy: 9/13 up to 0.40, 10/13 up to 0.72, 11/13 from 0.73 to 0.88 -> the lowest best is 0.73
    assert cal["answer_threshold"] == pytest.approx(0.73)
    # top-3 precision of shown queries: 8/9 at 0.70-0.72 (o1 shown), 9/10 at 0.69, 10/11 from 0.41 to 0.65,
    # 10/12 at 0.40 (o2 shown) -> the lowest threshold reaching 0.9 is 0.41
    assert cal["suggest_threshold"] == pytest.approx(0.41)
    assert cal["suggest_target_met"] is True
    assert rep["summary"]["top1_accuracy"] == pytest.approx(0.8)
    assert rep["summary"]["in_scope_accuracy"] == pytest.approx(0.8) and rep["summary"]["oos_recall"] == 1.0
    assert rep["current"]["in_scope_accuracy"] == pytest.approx(0.6)  # configured 0.9 answers 6 of 10
    assert [r["decision"] for r in rep["rows"]] == ["answer"] * 8 + ["suggest"] * 3 + ["none"] * 2
    sweep = {round(r["threshold"], 2): r for r in rep["sweep"]}
    assert sweep[0.41]["top3_recall"] == pytest.approx(1.0) and sweep[0.7]["top3_precision"] == pytest.approx(0.8)

    strict = calibrate_faq(records, answer_threshold=0.9, suggest_threshold=0.6, objective="in_scope_precision",
                           target=0.97)
    assert strict["calibration"]["answer_threshold"] == pytest.approx(0.73)  # 8/9 answered right at 0.72
    assert strict["calibration"]["target_met"] is True and strict["calibration"]["objective"] == "in_scope_precision"


def test_update_faq_thresholds_edits_two_keys_and_keeps_comments(tmp_path):
    src = (ROOT / "configs" / "default.yaml").read_text(encoding="utf-8")
    path = tmp_path / "default.yaml"
    path.write_text(src, encoding="utf-8")
    cur = yaml.safe_load(src)["faq"]
    ans = 0.735 if cur["answer_threshold"] != 0.735 else 0.745
    sug = 0.515 if cur["suggest_threshold"] != 0.515 else 0.505
    update_faq_thresholds(path, ans, sug)  # values the shipped config does not have, whatever calibration wrote there
    new = path.read_text(encoding="utf-8")
    changed = [(a, b) for a, b in zip(src.splitlines(), new.splitlines()) if a != b]
    assert len(src.splitlines()) == len(new.splitlines()) and len(changed) == 2
    assert changed[0][1].startswith(f"  answer_threshold: {ans}") and "# measured" in changed[0][1]
    assert changed[1][1] == f"  suggest_threshold: {sug}"
    assert [ln for ln in new.splitlines() if ln.lstrip().startswith("#")] == \
        [ln for ln in src.splitlines() if ln.lstrip().startswith("#")]
    cfg = load_config(path, environ={})
    assert (cfg.faq.answer_threshold, cfg.faq.suggest_threshold) == (ans, sug)
    assert yaml.safe_load(new)["faq"]["top_k"] == yaml.safe_load(src)["faq"]["top_k"]
    with pytest.raises(ValueError, match="suggest_threshold"):
        update_faq_thresholds(path, 0.5, 0.6)


def test_parse_ids_mod():
    keep = parse_ids("mod3=1")
    assert [i for i in range(8) if keep(i)] == [1, 4, 7]
    assert parse_ids(None) is None
    with pytest.raises(ValueError, match="mod3=1"):
        parse_ids("1,2")


# ---------------------------------------------------------------------------- FAQ and retrieval via the CLI


@pytest.mark.slow
def test_eval_faq_cli_kb_queries_reports_malformed_line_and_calibrates(tmp_path, capsys, faq_encoder):
    (tmp_path / "faq.csv").write_text(FAQ_CSV, encoding="utf-8")
    lines = [json.dumps(q, ensure_ascii=False) for q in QUERIES]
    lines.insert(2, '{"question": "broken line"')  # line 3: invalid JSON
    (tmp_path / "q.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    conf = tmp_path / "calib.yaml"
    conf.write_text((ROOT / "configs" / "default.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    cfg = make_config(tmp_path)
    rc, _ = _eval(["faq", "--kb", str(tmp_path / "faq.csv"), "--queries", str(tmp_path / "q.jsonl"),
                   "--calibrate", "--write-config", str(conf)], cfg)
    out, err = capsys.readouterr()
    assert rc == 0
    summary = _last_json(out)
    assert summary["mode"] == "faq" and summary["n"] == 5 and summary["errors"] == 1
    assert 0 <= summary["in_scope_accuracy"] <= 1 and 0 <= summary["oos_recall"] <= 1
    assert "q.jsonl line 3" in err
    run = Path(summary["run_dir"])
    report = json.loads((run / "report.json").read_text(encoding="utf-8"))
    assert any("line 3" in e for e in report["errors"])
    assert len(report["sweep"]) > 50 and report["calibration"]["objective"] == "max_accuracy"
    assert {p.name for p in run.iterdir()} >= {"report.json", "report.html", "questions.csv", "threshold_sweep.png"}
    assert "data:image/png;base64," in (run / "report.html").read_text(encoding="utf-8")
    calibrated = load_config(conf, environ={})
    assert calibrated.faq.answer_threshold == report["calibration"]["answer_threshold"]
    assert calibrated.faq.suggest_threshold == report["calibration"]["suggest_threshold"]
    from faq_bot.store import Store

    runs = Store(cfg.store.path).eval_runs()
    assert runs[0]["id"] == run.name and runs[0]["kind"] == "faq"


@pytest.mark.slow
def test_eval_faq_cli_on_a_labelled_intent_set(tmp_path, capsys, faq_encoder):
    train = {"check_balance": ["how much money is in my account", "what's my balance", "账户余额怎么查", "余额还有多少"],
             "freeze_card": ["freeze my card", "lock my debit card", "卡丢了帮我冻结", "冻结银行卡"],
             "opening_hours": ["when do branches open", "what time do you close", "营业时间是几点", "几点开门"]}
    rows = [(t, lab) for lab, ts in train.items() for t in ts] + [("sing me a song", "oos")]
    (tmp_path / "train.tsv").write_text("".join(f"{t}\t{lab}\n" for t, lab in rows), encoding="utf-8")
    (tmp_path / "test.csv").write_text(
        "text,intent\nhow much do I have left in my account,check_balance\n我的卡被偷了快冻结,freeze_card\n"
        "are you open on sunday,opening_hours\nwho won the football match,oos\n明天天气怎么样,oos\n"
        "send money to mum,transfer\n", encoding="utf-8")
    cfg = make_config(tmp_path)
    rc, _ = _eval(["faq", "--intents", str(tmp_path / "train.tsv"), "--queries", str(tmp_path / "test.csv")], cfg)
    out, err = capsys.readouterr()
    assert rc == 0, err
    summary = _last_json(out)
    assert summary["n"] == 5 and summary["errors"] == 1  # the `transfer` row has no training utterances
    assert "test.csv row 7: label 'transfer'" in err
    report = json.loads((Path(summary["run_dir"]) / "report.json").read_text(encoding="utf-8"))
    assert report["data"]["oos_labels"] == ["oos", "out_of_scope"] and report["data"]["n_faqs"] == 3
    rc, _ = _eval(["faq", "--kb", str(tmp_path / "train.tsv"), "--oos-label", "none"], cfg)
    assert rc == 2 and "`--oos-label` applies to `--intents` only." in capsys.readouterr().err


@pytest.mark.slow
def test_eval_retrieval_on_constructed_rgb_set(tmp_path, capsys, doc_encoder):
    keys = list(PASSAGES)
    items = [
        {"id": 0, "query": "退货期限是几天？", "answer": ["7天"], "positive": [PASSAGES["退货"]],
         "negative": [PASSAGES["积分"], PASSAGES["shipping"]]},
        {"id": 1, "query": "签到一次给多少积分", "answer": ["5积分"], "positive": [PASSAGES["积分"]],
         "negative": [PASSAGES["退货"]]},
        {"id": 2, "query": "How long is browsing history kept?", "answer": ["6 months"],
         "positive": [PASSAGES["privacy"]], "negative": [PASSAGES["shipping"]]},
    ]
    lines = [json.dumps(i, ensure_ascii=False) for i in items]
    lines.append("not json at all")  # line 4
    path = tmp_path / "zh_tiny.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = make_config(tmp_path)
    rc, _ = _eval(["retrieval", "--data", str(path), "--modes", "dense,sparse,hybrid,hybrid+rerank"], cfg)
    out, err = capsys.readouterr()
    assert rc == 0, err
    summary = _last_json(out)
    report = json.loads((Path(summary["run_dir"]) / "report.json").read_text(encoding="utf-8"))
    assert report["data"]["passages"] == len(keys)  # deduplicated
    assert [r["mode"] for r in report["table"]] == ["dense", "sparse", "hybrid", "hybrid+rerank"]
    for row in report["table"]:
        assert row["n"] == 3
        for key in ("hit@1", "hit@3", "hit@5", "hit@10", "mrr@10"):
            assert 0.0 <= row[key] <= 1.0
        assert row["hit@1"] <= row["hit@3"] <= row["hit@10"] and row["hit@10"] == 1.0  # every passage fits in 10
    assert any("zh_tiny.jsonl line 4" in e for e in report["errors"])
    assert not (Path(summary["run_dir"]) / "store").exists()


# ---------------------------------------------------------------------------- tiny model, base vs adapter


def _make_adapter(base_dir: str, out: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # non-zero B: the adapter really changes the outputs
    peft_model.save_pretrained(out)


@pytest.mark.slow
def test_eval_generator_tiny_model_base_vs_adapter_writes_all_files(tmp_path, capsys, tiny_lm_dir, doc_encoder):
    pytest.importorskip("faq_bot.generate", reason="generator package not available")
    import faq_bot.generate as generate

    if not hasattr(generate, "load_generator"):
        pytest.skip("faq_bot.generate.load_generator not available yet")
    _make_adapter(tiny_lm_dir, tmp_path / "runs" / "tuned" / "adapter")
    items = [
        {"id": "g1", "question": "退货期限是几天？", "answers": ["7天"], "contexts": [PASSAGES["退货"], PASSAGES["积分"]]},
        {"id": "g2", "question": "签到一次给多少积分？", "answers": ["5积分"], "contexts": [PASSAGES["积分"]]},
        {"id": "g3", "question": "How long is browsing history kept?", "answers": ["6 months"],
         "contexts": [PASSAGES["privacy"]]},
        {"id": "g4", "question": "你们有线下门店吗？", "refuse": True, "contexts": [PASSAGES["shipping"]]},
    ]
    data = tmp_path / "ctx.jsonl"
    data.write_text("\n".join(json.dumps(i, ensure_ascii=False) for i in items) + "\n", encoding="utf-8")
    cfg = make_config(tmp_path, **{"generate.model": tiny_lm_dir, "generate.max_new_tokens": 8,
                                   "generate.device": "cpu", "generate.dtype": "float32"})
    rc, _ = _eval(["generator", "--data", str(data), "--adapter", "tuned"], cfg)
    out, err = capsys.readouterr()
    assert rc == 0, err
    summary = _last_json(out)
    run = Path(summary["run_dir"])
    assert {p.name for p in run.iterdir()} >= {"report.json", "report.html", "questions.csv", "badcases.jsonl"}
    report = json.loads((run / "report.json").read_text(encoding="utf-8"))
    assert set(report["models"]) == {"base", "tuned"}
    comp = report["comparison"]["tuned"]
    assert comp["n"] == 4
    d = comp["deltas"]["correct"]
    assert d["lo"] <= d["delta"] <= d["hi"] and {"base", "tuned", "n"} <= set(d)
    assert set(comp["fixed"]) | set(comp["broke"]) <= {"g1", "g2", "g3", "g4"}
    for name, m in report["models"].items():
        assert m["n"] == 4 and m["tokens_per_s"] is None or m["tokens_per_s"] >= 0
    assert report["memory"]["peak_rss_mb"] > 0
    cases = [json.loads(line) for line in (run / "badcases.jsonl").read_text(encoding="utf-8").splitlines()]
    for c in cases:  # the hard-negative shape the training-data builder reads
        assert {"question", "contexts", "expected", "output", "model"} <= set(c)
        assert c["model"] in ("base", "tuned") and c["contexts"]
    csv_text = (run / "questions.csv").read_text(encoding="utf-8-sig")
    assert csv_text.splitlines()[0].startswith("id,question,model") and len(csv_text.splitlines()) >= 9
