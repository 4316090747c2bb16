"""Tests for faq_bot.eval.datasets: eval JSONL, RGB passage selection, CLINC150, labelled intent sets, FAQ queries."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import pytest

from faq_bot.eval.datasets import (
    EvalItem,
    load_clinc,
    load_eval_jsonl,
    load_faq_queries,
    load_intents,
    load_rgb,
    read_labelled,
    rgb_kind,
    rgb_lang,
    select_rgb_passages,
    to_answer_parts,
)

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("FAQ_BOT_DATA_DIR", ROOT.parent / "shared" / "data"))
RGB_DIR = DATA_DIR / "rgb"
CLINC = DATA_DIR / "clinc150" / "data_full.json"


def _data(path: Path) -> Path:
    """The shared data file, or skip: RGB/CLINC are licensed data kept outside the repo."""
    if not path.is_file():
        pytest.skip(f"{path} not found (set FAQ_BOT_DATA_DIR to the shared data folder to run this test)")
    return path


def _rgb_rows(name: str) -> list[dict]:
    with _data(RGB_DIR / name).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------------- eval JSONL


def test_load_eval_jsonl_reports_bad_lines_and_loads_the_rest(tmp_path):
    good = {"id": "q1", "question": "退货运费谁承担？", "answers": ["卖家承担", "商家承担"], "refuse": False,
            "history": [["user", "我想退货"], ["assistant", "好的"]], "contexts": ["卖家承担运费。"], "faq_id": "faq-012"}
    lines = [
        json.dumps(good, ensure_ascii=False),
        "{not json",
        json.dumps({"id": "q2", "question": "营业时间？", "answers": ["9点"], "refused": True}, ensure_ascii=False),
        "",
        json.dumps({"id": "q3", "question": "天气如何？", "answers": [], "refuse": True}, ensure_ascii=False),
        json.dumps(["a", "list"]),
        json.dumps({"id": "q1", "question": "again", "answers": ["x"]}),
        json.dumps({"id": "q4", "question": "无答案"}, ensure_ascii=False),
        json.dumps({"id": 5, "question": "int id", "answers": ["ok"], "history": [["bot", "hi"]]}),
        json.dumps({"id": 6, "question": "FAQ only", "faq_id": "faq-1"}),
    ]
    path = tmp_path / "sample_eval.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    items, errors = load_eval_jsonl(path)

    assert [i.id for i in items] == ["q1", "q3", "6"]
    assert [e.split(":")[0] for e in errors] == [
        "sample_eval.jsonl line 2",
        "sample_eval.jsonl line 3",
        "sample_eval.jsonl line 6",
        "sample_eval.jsonl line 7",
        "sample_eval.jsonl line 8",
        "sample_eval.jsonl line 9",
    ]
    assert "refused" in errors[1]
    assert "duplicate" in errors[3] and "line 1" in errors[3]
    q1 = items[0]
    assert q1.answer_parts == [["卖家承担", "商家承担"]]  # DESIGN: any one answer counts -> one part
    assert q1.history == [("user", "我想退货"), ("assistant", "好的")]
    assert q1.contexts == ["卖家承担运费。"] and q1.faq_id == "faq-012" and q1.refuse is False
    assert items[1].refuse is True and items[1].answer_parts == [] and items[1].contexts is None
    assert items[2].faq_id == "faq-1"


def test_eval_item_rejects_empty_answer_part():
    with pytest.raises(ValueError):
        EvalItem(id="x", question="q", answer_parts=[[]])
    item = EvalItem(id="x", question="q", answer_parts=[["a", "b"], ["c"]])
    assert item.answers == ["a", "b", "c"]


def test_load_faq_queries_reports_bad_lines(tmp_path):
    path = tmp_path / "queries.jsonl"
    path.write_text(
        '{"question": "how do i reset my pin", "faq_id": "pin_change"}\n'
        '{"question": "what is the dow at", "faq_id": null}\n'
        '{"question": "missing faq id"}\n'
        '{"question": "", "faq_id": "x"}\n'
        "oops\n",
        encoding="utf-8",
    )
    queries, errors = load_faq_queries(path)
    assert [(q.question, q.faq_id) for q in queries] == [
        ("how do i reset my pin", "pin_change"),
        ("what is the dow at", None),
    ]
    assert [e.split(":")[0] for e in errors] == ["queries.jsonl line 3", "queries.jsonl line 4", "queries.jsonl line 5"]


# ---------------------------------------------------------------------------- RGB helpers


def test_to_answer_parts_nested_lists():
    assert to_answer_parts("Emmanuel Macron") == [["Emmanuel Macron"]]
    assert to_answer_parts(["1月3日", "1月12日"]) == [["1月3日"], ["1月12日"]]
    assert to_answer_parts([["4次", "四次"], "冠军"]) == [["4次", "四次"], ["冠军"]]
    assert to_answer_parts([["史蒂夫·乔布斯", "乔布斯"]]) == [["史蒂夫·乔布斯", "乔布斯"]]


def test_rgb_kind_and_lang_from_name_and_keys():
    assert rgb_kind("zh_refine.dev.jsonl") == "plain"
    assert rgb_kind("zh_int.jsonl") == "int"
    assert rgb_kind("en_fact.jsonl") == "fact"
    assert rgb_kind("custom.jsonl", {"positive": ["a"], "positive_wrong": ["b"]}) == "fact"
    assert rgb_kind("custom.jsonl", {"positive": [["a"], ["b"]]}) == "int"
    assert rgb_kind("custom.jsonl", {"positive": ["a"]}) == "plain"
    assert rgb_lang("zh_refine.dev.jsonl") == "zh"
    assert rgb_lang("en_fact.jsonl") == "en"
    assert rgb_lang("custom.jsonl", {"query": "谁赢了？"}) == "zh"


def _synthetic_plain() -> dict:
    return {"id": 7, "query": "q", "answer": ["a"],
            "positive": [f"p{i}" for i in range(6)], "negative": [f"n{i}" for i in range(3)]}


def test_select_rgb_plain_clamps_like_upstream():
    inst = _synthetic_plain()
    # neg_num = ceil(5 * 0.8) = 4 > 3 negatives -> 3 negatives, 2 positives
    docs, sources = select_rgb_passages(inst, "plain", noise_rate=0.8, passage_num=5)
    assert sorted(docs) == ["n0", "n1", "n2", "p0", "p1"]
    assert sources.count("positive") == 2
    # noise 1: only negatives, as many as exist
    docs, _ = select_rgb_passages(inst, "plain", noise_rate=1.0, passage_num=5)
    assert sorted(docs) == ["n0", "n1", "n2"]
    # passage_num 0: nothing
    assert select_rgb_passages(inst, "plain", noise_rate=0.4, passage_num=0) == ([], [])
    # pos_num > len(positive): positives clamped, negatives fill
    inst2 = {**inst, "positive": ["p0"], "negative": [f"n{i}" for i in range(9)]}
    docs, _ = select_rgb_passages(inst2, "plain", noise_rate=0.2, passage_num=5)
    assert sorted(docs) == ["n0", "n1", "n2", "n3", "p0"]


def test_select_rgb_does_not_touch_global_random_or_input():
    inst = {"id": 1, "query": "q", "answer": ["a"], "positive": [["a1", "a2", "a3"], ["b1", "b2"]], "negative": ["n0"]}
    snapshot = json.dumps(inst)
    random.seed(42)
    expected_next = random.random()
    random.seed(42)
    select_rgb_passages(inst, "int", noise_rate=0.2, passage_num=5)
    assert random.random() == expected_next
    assert json.dumps(inst) == snapshot


# ---------------------------------------------------------------------------- RGB on the real files


def _upstream_plain(instance: dict, noise_rate: float, passage_num: int) -> list[str]:
    """Direct transcription of upstream evalue.py (seed reset + processdata, plain branch), global random."""
    random.seed(2333)
    neg_num = math.ceil(passage_num * noise_rate)
    pos_num = passage_num - neg_num
    if noise_rate == 1:
        neg_num, pos_num = passage_num, 0
    elif neg_num > len(instance["negative"]):
        neg_num = len(instance["negative"])
        pos_num = passage_num - neg_num
    elif pos_num > len(instance["positive"]):
        pos_num = len(instance["positive"])
        neg_num = passage_num - pos_num
    docs = instance["positive"][:pos_num] + instance["negative"][:neg_num]
    random.shuffle(docs)
    return docs


def test_load_rgb_refine_matches_upstream_selection():
    rows = _rgb_rows("zh_refine.dev.jsonl")
    raw = rows[0]
    items = load_rgb(RGB_DIR / "zh_refine.dev.jsonl", noise_rate=0.4, passage_num=5, limit=1)
    item = items[0]
    expected = list(raw["positive"][:3]) + list(raw["negative"][:2])
    random.seed(2333)
    random.shuffle(expected)
    assert set(item.contexts) == set(raw["positive"][:3] + raw["negative"][:2])
    assert item.contexts == expected
    assert item.meta["rgb_id"] == raw["id"] and item.meta["lang"] == "zh"
    assert item.meta["noise_rate"] == 0.4 and item.meta["passage_num"] == 5
    assert item.question == raw["query"] and item.refuse is False
    assert item.answer_parts == to_answer_parts(raw["answer"])


def test_load_rgb_refine_all_items_match_transcription():
    rows = _rgb_rows("zh_refine.dev.jsonl")
    for noise_rate in (0.0, 0.2, 0.6, 0.8, 1.0):
        items = load_rgb(RGB_DIR / "zh_refine.dev.jsonl", noise_rate=noise_rate, passage_num=5)
        assert len(items) == len(rows) == 200
        for raw, item in zip(rows, items):
            assert item.contexts == _upstream_plain(raw, noise_rate, 5)
            assert item.refuse is (noise_rate == 1)


def test_load_rgb_is_reproducible_and_filters_ids():
    path = _data(RGB_DIR / "zh_refine.dev.jsonl")
    a = load_rgb(path, noise_rate=0.6, passage_num=5)
    b = load_rgb(path, noise_rate=0.6, passage_num=5)
    assert [i.contexts for i in a] == [i.contexts for i in b]
    some = load_rgb(path, noise_rate=0.6, passage_num=5, ids=lambda i: i % 2 == 0, limit=10)
    assert len(some) == 10 and all(i.meta["rgb_id"] % 2 == 0 for i in some)
    by_id = {i.meta["rgb_id"]: i.contexts for i in a}
    assert all(i.contexts == by_id[i.meta["rgb_id"]] for i in some)  # selection is per item, not per position


def test_load_rgb_noise_one_is_refusal_with_only_negatives():
    rows = _rgb_rows("zh_refine.dev.jsonl")
    items = load_rgb(RGB_DIR / "zh_refine.dev.jsonl", noise_rate=1.0, passage_num=5, limit=20)
    for raw, item in zip(rows, items):
        assert item.refuse is True
        assert set(item.contexts) <= set(raw["negative"])
        assert item.meta["passage_sources"] == ["negative"] * len(item.contexts)


def test_load_rgb_int_composition():
    rows = {r["id"]: r for r in _rgb_rows("zh_int.jsonl")}
    items = load_rgb(RGB_DIR / "zh_int.jsonl", noise_rate=0.4, passage_num=5)
    assert len(items) == len(rows) == 55
    for item in items:
        raw = rows[item.meta["rgb_id"]]
        groups = raw["positive"]
        n_pos = max(len(groups), min(3, sum(len(g) for g in groups)))  # first of each group, then round-robin
        n_neg = max(0, 5 - n_pos)
        sources = item.meta["passage_sources"]
        assert item.meta["rgb_kind"] == "int"
        assert sources.count("positive") == n_pos and sources.count("negative") == n_neg
        assert len(item.contexts) == max(5, len(groups))  # upstream keeps every group's first passage
        negs = [d for d, s in zip(item.contexts, sources) if s == "negative"]
        assert sorted(negs) == sorted(raw["negative"][:n_neg])
        pos = [d for d, s in zip(item.contexts, sources) if s == "positive"]
        # every group contributes at least one passage
        assert all(any(p in g for p in pos) for g in groups)
        assert item.answer_parts == to_answer_parts(raw["answer"])


def test_load_rgb_int_matches_transcription_for_one_item():
    raw = _rgb_rows("zh_int.jsonl")[0]
    # transcription of upstream's _int branch with pos_num = 5 - ceil(5 * 0.4) = 3
    random.seed(2333)
    groups = [list(g) for g in raw["positive"]]
    for g in groups:
        random.shuffle(g)
    docs = [g[0] for g in groups]
    i = 1
    while len(docs) < 3:
        for g in groups:
            if len(g) > i:
                docs.append(g[i])
                if len(docs) == 3:
                    break
        i += 1
    docs += raw["negative"][: 5 - len(docs)]
    random.shuffle(docs)
    item = load_rgb(RGB_DIR / "zh_int.jsonl", noise_rate=0.4, passage_num=5, limit=1)[0]
    assert item.contexts == docs


def test_load_rgb_fact_composition():
    rows = {r["id"]: r for r in _rgb_rows("zh_fact.jsonl")}
    items = load_rgb(RGB_DIR / "zh_fact.jsonl", noise_rate=0.4, passage_num=5, correct_rate=0.2)
    assert len(items) == 100
    for item in items:
        raw = rows[item.meta["rgb_id"]]
        sources = item.meta["passage_sources"]
        n_idx = len(raw["positive"])
        n_wrong = min(n_idx, 5 - 2 - 1)
        n_correct = min(n_idx - n_wrong, 1)
        n_neg = min(len(raw["negative"]), 2)
        assert sources.count("positive_wrong") == n_wrong
        assert sources.count("positive") == n_correct
        assert sources.count("negative") == n_neg
        assert len(item.contexts) == n_wrong + n_correct + n_neg
        wrong = [d for d, s in zip(item.contexts, sources) if s == "positive_wrong"]
        correct = [d for d, s in zip(item.contexts, sources) if s == "positive"]
        assert set(wrong) <= set(raw["positive_wrong"]) and set(correct) <= set(raw["positive"])
        # the correct passages come from other indices than the wrong ones
        wrong_idx = {raw["positive_wrong"].index(d) for d in wrong}
        assert all(raw["positive"].index(d) not in wrong_idx for d in correct)
    full = [i for i in items if len(rows[i.meta["rgb_id"]]["positive"]) >= 3 and len(rows[i.meta["rgb_id"]]["negative"]) >= 2]
    assert full and all(len(i.contexts) == 5 for i in full)


def test_load_rgb_fact_matches_transcription_for_one_item():
    raw = _rgb_rows("en_fact.jsonl")[0]
    random.seed(2333)
    indexs = list(range(len(raw["positive"])))
    selected = random.sample(indexs, min(len(indexs), 5 - 2 - 1))
    docs = [raw["positive_wrong"][i] for i in selected]
    remain = [i for i in indexs if i not in selected]
    if remain:
        docs += [raw["positive"][i] for i in random.sample(remain, min(len(remain), 1))]
    docs += raw["negative"][:2]
    random.shuffle(docs)
    item = load_rgb(RGB_DIR / "en_fact.jsonl", noise_rate=0.4, passage_num=5, correct_rate=0.2, limit=1)[0]
    assert item.contexts == docs
    assert item.meta["lang"] == "en" and item.meta["correct_rate"] == 0.2


def test_load_rgb_rejects_impossible_fact_rates():
    path = _data(RGB_DIR / "zh_fact.jsonl")
    with pytest.raises(ValueError, match="correct_rate"):
        load_rgb(path, noise_rate=0.6, passage_num=5, correct_rate=0.6)
    with pytest.raises(ValueError, match="noise_rate"):
        load_rgb(path, noise_rate=1.5)


# ---------------------------------------------------------------------------- CLINC150


def test_load_clinc_counts():
    faqs, queries = load_clinc(_data(CLINC))
    assert len(faqs) == 150
    assert len({f.id for f in faqs}) == 150
    assert all(len(f.similar_questions) == 100 for f in faqs)
    assert len(queries) == 5500
    assert sum(q.faq_id is not None for q in queries) == 4500
    assert sum(q.faq_id is None for q in queries) == 1000
    pin = next(f for f in faqs if f.id == "pin_change")
    assert pin.question == "pin change" and pin.answer == "[pin_change]" and pin.category == "pin_change"
    assert {q.faq_id for q in queries if q.faq_id} == {f.id for f in faqs}

    _, val = load_clinc(CLINC, split="val")
    assert len(val) == 3000 + 100
    _, calib = load_clinc(CLINC, split="calib")  # val + every out-of-scope utterance outside test
    assert len(calib) == 3000 + 200 and sum(q.faq_id is None for q in calib) == 200
    assert [q.question for q in calib[:3100]] == [q.question for q in val]
    assert not {q.question for q in calib} & {q.question for q in queries}


# ---------------------------------------------------------------------------- any labelled intent set


def test_read_labelled_layouts_agree(tmp_path):
    pairs = [("how do I check my balance", "balance"), ("余额怎么查", "balance"), ("freeze my card", "freeze_card"),
             ("卡丢了，帮我冻结", "freeze_card"), ("tell me a joke", "oos")]
    (tmp_path / "a.csv").write_text("utterance,intent\n" + "".join(f'"{t}",{lab}\n' for t, lab in pairs),
                                    encoding="utf-8")
    (tmp_path / "b.tsv").write_text("".join(f"{lab}\t{t}\n" for t, lab in pairs), encoding="utf-8")  # no header
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": t, "label": i, "label_text": lab},
                                                         ensure_ascii=False) + "\n"
                                              for i, (t, lab) in enumerate(pairs)), encoding="utf-8")
    (tmp_path / "e.csv").write_text("sentence,intent_name\n" + "".join(f'"{t}",{lab}\n' for t, lab in pairs),
                                    encoding="utf-8")  # a header naming only the text column
    (tmp_path / "d.json").write_text(json.dumps([[t, lab] for t, lab in pairs], ensure_ascii=False),
                                     encoding="utf-8")
    for name in ("a.csv", "b.tsv", "c.jsonl", "d.json", "e.csv"):
        rows, errors = read_labelled(tmp_path / name)
        assert errors == [] and [(t, lab) for _, t, lab in rows] == pairs, name


def test_read_labelled_decodes_as_ingest_does(tmp_path):
    """Chinese intent sets often come as GBK: decoded like uploads are, and an undecodable file is named."""
    (tmp_path / "gbk.csv").write_bytes("text,intent\n账户余额怎么查,查询余额\n".encode("gbk"))
    rows, errors = read_labelled(tmp_path / "gbk.csv")
    assert errors == [] and rows == [(2, "账户余额怎么查", "查询余额")]
    (tmp_path / "bad.tsv").write_bytes(b"hi\tgreet\n\x81\n")  # a lone GBK lead byte
    with pytest.raises(ValueError, match="bad.tsv: is neither UTF-8 nor GBK/GB18030"):
        read_labelled(tmp_path / "bad.tsv")


def test_read_labelled_names_file_and_row_of_bad_rows(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "hi", "intent": "greet"}\n{"text": "", "intent": "greet"}\n{"words": "x"}\n'
                    '{"text": "bye", "intent": "bye"\n["yo", "greet"]\n', encoding="utf-8")
    rows, errors = read_labelled(path)
    assert [(n, t, lab) for n, t, lab in rows] == [(1, "hi", "greet"), (5, "yo", "greet")]
    assert len(errors) == 3
    assert any(e.startswith("train.jsonl line 2: empty text") for e in errors)
    assert any(e.startswith("train.jsonl line 3: no text key among ['words']") for e in errors)
    assert any(e.startswith("train.jsonl line 4: invalid JSON") for e in errors)
    (tmp_path / "three.csv").write_text("a,b,c\n1,2,3\n", encoding="utf-8")
    with pytest.raises(ValueError, match="three.csv: no header naming a text column"):
        read_labelled(tmp_path / "three.csv")
    (tmp_path / "x.xml").write_text("<a/>", encoding="utf-8")
    with pytest.raises(ValueError, match="x.xml: unsupported file type .xml"):
        read_labelled(tmp_path / "x.xml")


def test_load_intents_builds_faqs_and_queries(tmp_path):
    (tmp_path / "train.csv").write_text(
        "text,label\n怎么查余额,查询余额\n余额在哪看,查询余额\nfreeze my card,3\nlock the card,3\n"
        "freeze my card,3\ntell me a joke,OOS\n", encoding="utf-8")
    (tmp_path / "test.jsonl").write_text(
        '{"question": "看一下余额", "faq_id": "查询余额"}\n{"question": "card stolen, lock it", "faq_id": "3"}\n'
        '{"question": "weather?", "faq_id": null}\n{"question": "sing", "faq_id": "out_of_scope"}\n'
        '{"question": "transfer money", "faq_id": "transfer"}\n{"question": "send cash", "faq_id": "transfer"}\n',
        encoding="utf-8")
    faqs, queries, errors = load_intents(tmp_path / "train.csv", tmp_path / "test.jsonl")
    assert [f.id for f in faqs] == ["查询余额", "3"]  # first-seen order; the OOS label (any case) is no FAQ
    named, numbered = faqs
    assert named.question == "查询余额" and named.similar_questions == ["怎么查余额", "余额在哪看"]
    # a label with no letter or CJK character is no question: the first utterance stands for it
    assert numbered.question == "freeze my card" and numbered.similar_questions == ["lock the card", "freeze my card"]
    assert numbered.answer == "[3]"
    assert [(q.question, q.faq_id) for q in queries] == [
        ("看一下余额", "查询余额"), ("card stolen, lock it", "3"), ("weather?", None), ("sing", None)]
    assert errors == ["test.jsonl line 5: label 'transfer' has no training utterances in train.csv "
                      "(out-of-scope labels: oos, out_of_scope); its 2 utterance(s) are skipped."]
    faqs, _, _ = load_intents(tmp_path / "train.csv", tmp_path / "test.jsonl", oos_labels=["3", "oos"])
    assert [f.id for f in faqs] == ["查询余额"]


def test_read_labelled_rejects_rows_of_the_wrong_width(tmp_path):
    """An unquoted comma in a text is a row error, not a cut text or a made-up label; empty trailing fields pass."""
    (tmp_path / "t.csv").write_text("text,intent\nhello, how are you,greet\nhi,greet\nhey,greet,\nyo\n",
                                    encoding="utf-8")
    rows, errors = read_labelled(tmp_path / "t.csv")
    assert [(n, t, lab) for n, t, lab in rows] == [(3, "hi", "greet"), (4, "hey", "greet")]
    assert errors == ["t.csv row 2: 3 column(s), expected 2 (quote a text that holds a comma).",
                      "t.csv row 5: 1 column(s), expected 2."]
    (tmp_path / "n.csv").write_text("hi,greet\nhello, how are you,greet\nbye,bye\n", encoding="utf-8")  # no header
    rows, errors = read_labelled(tmp_path / "n.csv")
    assert [(t, lab) for _, t, lab in rows] == [("hi", "greet"), ("bye", "bye")]  # no made-up intent "how are you"
    assert errors == ["n.csv row 2: 3 column(s), expected 2 (quote a text that holds a comma)."]


def test_load_intents_reads_a_headerless_test_file_against_the_training_labels(tmp_path):
    """One utterance per label in a headerless test file ties the distinct counts: the column holding training
    labels is the label column. Whole-number labels match however they are written (17, 17.0, "17.0")."""
    (tmp_path / "train.tsv").write_text("balance\twhat's my balance\nbalance\tshow my balance\n"
                                        "freeze_card\tfreeze my card\n", encoding="utf-8")
    (tmp_path / "test.tsv").write_text("balance\thow much money do I have\nfreeze_card\tlock it\n", encoding="utf-8")
    _, queries, errors = load_intents(tmp_path / "train.tsv", tmp_path / "test.tsv")
    assert errors == [] and [(q.question, q.faq_id) for q in queries] == [
        ("how much money do I have", "balance"), ("lock it", "freeze_card")]
    (tmp_path / "train.csv").write_text("text,label\nhi,17.0\nhello,17.0\nbye,4\n", encoding="utf-8")
    (tmp_path / "test.json").write_text('[["yo", 17], ["ciao", 4.0]]', encoding="utf-8")
    faqs, queries, errors = load_intents(tmp_path / "train.csv", tmp_path / "test.json")
    assert [f.id for f in faqs] == ["17", "4"] and errors == []
    assert [(q.question, q.faq_id) for q in queries] == [("yo", "17"), ("ciao", "4")]


def test_load_intents_equals_load_clinc_on_clinc_as_tsv(tmp_path):
    data = json.loads(_data(CLINC).read_text(encoding="utf-8"))
    (tmp_path / "train.tsv").write_text("".join(f"{t}\t{lab}\n" for t, lab in data["train"] + data["oos_train"]),
                                        encoding="utf-8")
    (tmp_path / "test.tsv").write_text("".join(f"{t}\t{lab}\n" for t, lab in data["test"] + data["oos_test"]),
                                       encoding="utf-8")
    faqs, queries, errors = load_intents(tmp_path / "train.tsv", tmp_path / "test.tsv")
    ref_faqs, ref_queries = load_clinc(CLINC)
    assert errors == []
    key = lambda f: (f.id, f.question, f.answer, f.similar_questions)  # noqa: E731
    assert [key(f) for f in faqs] == [key(f) for f in ref_faqs]
    assert queries == ref_queries
