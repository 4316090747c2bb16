"""Readers: kind sniffing, FAQ tables, documents, and the limits that keep hostile uploads out."""

from __future__ import annotations

import io
import json
import re
import time
import zipfile

import docx
import openpyxl
import pytest
from docx.enum.style import WD_STYLE_TYPE
from pypdf import PdfWriter

from faq_bot.config import IngestConfig
from faq_bot.ingest import DOC_KINDS, FAQ_KINDS, Block, IngestError, read_document, read_faqs, sniff_kind

CFG = IngestConfig()


# --- helpers: real files built in memory ------------------------------------------------------------------------------


def make_pdf(pages: list[list[str]]) -> bytes:
    """A minimal valid PDF written by hand: each string is one Helvetica text line, each list one page."""
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, lines in enumerate(pages):
        ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
        ops += [f"({line.replace('(', '[').replace(')', ']')}) Tj T*" for line in lines]
        stream = "\n".join([*ops, "ET"]).encode("latin-1")
        objs.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                    f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode())
        objs.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def make_xlsx(rows: list[list[object]]) -> bytes:
    wb = openpyxl.Workbook()
    for row in rows:
        wb.active.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def make_docx(build) -> bytes:
    document = docx.Document()
    build(document)
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(IngestError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def headings(blocks: list[Block]) -> list[tuple[str, int]]:
    return [(b.text, b.level) for b in blocks if b.kind == "heading"]


def texts(blocks: list[Block]) -> list[str]:
    return [b.text for b in blocks if b.kind == "text"]


# --- FAQ tables ------------------------------------------------------------------------------------------------------


def test_read_faqs_csv_all_columns():
    data = (
        "question,answer,similar_questions,category,id,enabled\n"
        "How do I return an item?,Within 7 days.,Can I send it back? || Return policy?,returns,r1,yes\n"
        '"Shipping, how long?","Two days,\nusually.",,shipping,r2,0\n'
    ).encode()
    faqs = read_faqs(data, "faq.csv", CFG)
    assert [f.id for f in faqs] == ["r1", "r2"]
    assert faqs[0].similar_questions == ["Can I send it back?", "Return policy?"]
    assert faqs[0].category == "returns" and faqs[0].enabled is True and faqs[0].source == "faq.csv"
    assert faqs[1].question == "Shipping, how long?"
    assert faqs[1].answer == "Two days,\nusually."
    assert faqs[1].similar_questions == [] and faqs[1].enabled is False


def test_read_faqs_csv_gbk_with_chinese_headers():
    data = "标准问题,答案,相似问法,分类,编号\n退货运费谁承担？,卖家承担。,运费谁出||退货要钱吗,售后,12\n".encode("gbk")
    (faq,) = read_faqs(data, "常见问题.csv", CFG)
    assert faq.question == "退货运费谁承担？"
    assert faq.answer == "卖家承担。"
    assert faq.similar_questions == ["运费谁出", "退货要钱吗"]
    assert faq.category == "售后" and faq.id == "12"


def test_read_faqs_csv_tab_separated_utf8_bom():
    data = "\ufeff问题\t答案\n怎么退货\t在订单页申请\n".encode("utf-8")
    (faq,) = read_faqs(data, "faq.csv", CFG)
    assert (faq.question, faq.answer) == ("怎么退货", "在订单页申请")


def test_read_faqs_xlsx_chinese_headers():
    data = make_xlsx([
        ["问题", "答案", "相似问题", "分类", "编号", "启用"],
        ["怎么开发票", "在订单详情页申请。", "发票怎么开||能开发票吗\n开票流程", "发票", 12, "否"],
        ["支持货到付款吗", "支持。", None, None, None, None],
    ])
    faqs = read_faqs(data, "faq.xlsx", CFG)
    assert faqs[0].id == "12"  # Excel numbers come back as text, 12 not 12.0
    assert faqs[0].similar_questions == ["发票怎么开", "能开发票吗", "开票流程"]
    assert faqs[0].enabled is False and faqs[0].category == "发票"
    assert faqs[1].enabled is True and re.fullmatch(r"faq-[0-9a-f]{10}", faqs[1].id)


def test_read_faqs_xlsx_error_names_spreadsheet_row():
    data = make_xlsx([["问题", "答案"], ["q1", "a1"], [None, None], ["q3", "  "]])
    msg = error_of(read_faqs, data, "faq.xlsx", CFG)
    assert msg.startswith("faq.xlsx row 4: column `答案` is empty")


def test_read_faqs_json_list_and_wrapped():
    items = [{"question": "How to pay?", "answer": "By card.", "similar_questions": ["Payment?", "How to pay?"]},
             {"问题": "怎么退货", "答案": "七天无理由。", "相似问题": "退货流程||怎么退", "id": 7, "enabled": False}]
    faqs = read_faqs(json.dumps(items, ensure_ascii=False).encode(), "faq.json", CFG)
    assert faqs[0].similar_questions == ["Payment?"]  # the standard question is not repeated
    assert faqs[1].id == "7" and faqs[1].similar_questions == ["退货流程", "怎么退"] and faqs[1].enabled is False
    wrapped = read_faqs(json.dumps({"faqs": items}).encode(), "faq.json", CFG)
    assert [f.model_dump() for f in wrapped] == [f.model_dump() for f in faqs]


def test_read_faqs_json_errors_name_item_and_key():
    msg = error_of(read_faqs, json.dumps([{"question": "q", "answer": "a"}, {"question": "q2"}]).encode(), "f.json")
    assert msg.startswith("f.json item 2: no `answer` key") and "`question`" in msg
    msg = error_of(read_faqs, b'{"items": []}', "f.json")
    assert msg.startswith("f.json: must hold a list of FAQ objects")
    msg = error_of(read_faqs, b'[{"question": "q", "answer": ', "f.json")
    assert msg.startswith("f.json line 1: is not valid JSON")


def test_read_faqs_jsonl_and_bad_line():
    good = b'{"question": "q1", "answer": "a1"}\n\n{"question": "q2", "answer": "a2", "category": "c"}\n'
    assert [f.question for f in read_faqs(good, "faq.jsonl", CFG)] == ["q1", "q2"]
    bad = good + b'{"question": "q3", "answer": "a3"\n'
    msg = error_of(read_faqs, bad, "faq.jsonl", CFG)
    assert msg.startswith("faq.jsonl line 4: is not valid JSON") and "one JSON object" in msg


def test_read_faqs_missing_answer_column_names_file_and_columns():
    msg = error_of(read_faqs, "问题,回复,分类\n怎么退货,七天内,售后\n".encode(), "uploads/tmp123/faq.csv", CFG)
    assert msg.startswith("faq.csv row 1: no `answer` column")
    assert "`问题`, `回复`, `分类`" in msg and "答案" in msg
    assert "tmp123" not in msg


def test_read_faqs_empty_answer_names_row():
    data = b"question,answer\nq1,a1\nq2,\nq3,a3\n"
    with pytest.raises(IngestError) as info:
        read_faqs(data, "faq.csv", CFG)
    assert str(info.value) == "faq.csv row 3: column `answer` is empty; fill it in or delete the row."
    assert info.value.row == 3 and info.value.field == "answer"


def test_read_faqs_duplicate_ids_name_both_rows():
    data = b"id,question,answer\n1,q1,a1\n2,q2,a2\n1,q3,a3\n"
    msg = error_of(read_faqs, data, "faq.csv", CFG)
    assert msg.startswith("faq.csv row 4: id `1` is also used by row 2")


def test_read_faqs_derived_ids_are_stable_and_catch_repeats():
    (a,) = read_faqs(b"question,answer\nHow do I  return?,x\n", "a.csv", CFG)
    (b,) = read_faqs(b"question,answer\nhow do i return,y\n", "b.csv", CFG)
    assert a.id == b.id and re.fullmatch(r"faq-[0-9a-f]{10}", a.id)
    msg = error_of(read_faqs, b"question,answer\nHow do I return?,x\nhow do I return?,y\n", "a.csv", CFG)
    assert msg.startswith("a.csv row 3: question") and "repeats row 2" in msg


def test_read_faqs_bad_enabled_value():
    msg = error_of(read_faqs, b"question,answer,enabled\nq,a,maybe\n", "faq.csv", CFG)
    assert msg.startswith("faq.csv row 2: column `enabled` must be yes/no")


def test_read_faqs_huge_cell_refused_fast():
    data = b"question,answer\nq1,a1\nq2," + b"x" * (10 * 1024 * 1024) + b"\n"
    start = time.monotonic()
    msg = error_of(read_faqs, data, "big.csv", CFG)
    assert time.monotonic() - start < 2
    assert msg.startswith("big.csv row 3: a cell is longer than 100,000 characters")
    # Under the csv module's own limit, our check still names the column.
    data = b"question,answer\nq1," + b"y" * 100_001 + b"\n"
    assert error_of(read_faqs, data, "big.csv", CFG).startswith("big.csv row 2: column `answer` has 100,001 characters")


def test_read_faqs_wide_csv_refused_fast():
    data = (",".join(f"c{i}" for i in range(100_000)) + "\n" + ",".join("v" for _ in range(100_000)) + "\n").encode()
    start = time.monotonic()
    msg = error_of(read_faqs, data, "wide.csv", CFG)
    assert time.monotonic() - start < 2
    assert msg.startswith("wide.csv row 1: has 100,000 columns, over the limit of 64")


def test_read_faqs_json_long_value_refused():
    data = json.dumps([{"question": "q", "answer": "a" * 100_001}]).encode()
    assert error_of(read_faqs, data, "f.json", CFG).startswith("f.json item 1: key `answer` has 100,001 characters")


def test_read_faqs_refuses_a_document():
    assert "not an FAQ table" in error_of(read_faqs, b"# Title\n\ntext\n", "notes.md", CFG)


# --- kind sniffing and limits ----------------------------------------------------------------------------------------


def test_sniff_kind_accepts_matching_content():
    assert sniff_kind(b"a,b\n", "x.CSV") == "csv"
    assert sniff_kind(make_pdf([["hi"]]), "x.pdf") == "pdf"
    assert sniff_kind(make_xlsx([["a"]]), "x.xlsx") == "xlsx"
    assert sniff_kind(make_docx(lambda d: d.add_paragraph("hi")), "x.docx") == "docx"
    assert FAQ_KINDS == {"csv", "xlsx", "json", "jsonl"} and DOC_KINDS == {"md", "html", "txt", "pdf", "docx"}


def test_sniff_kind_lying_extension():
    assert error_of(sniff_kind, b"just some text\n", "report.pdf") == (
        "report.pdf: extension says pdf but content is text; rename the file to its real type or export it again.")
    assert "extension says docx but content is text" in error_of(sniff_kind, b"not a zip", "a.docx")
    assert "extension says docx but content is an Excel workbook" in error_of(sniff_kind, make_xlsx([["a"]]), "a.docx")
    assert "extension says csv but content is PDF" in error_of(sniff_kind, make_pdf([["x"]]), "a.csv")
    assert "extension says txt but content is binary data" in error_of(sniff_kind, b"\x00\x01\x02", "a.txt")


def test_sniff_kind_unknown_extension_lists_supported():
    msg = error_of(sniff_kind, b"data", "archive.rar")
    assert msg.startswith("archive.rar: has an unsupported extension `.rar`; supported: csv, docx, htm, html")
    assert "save it as .docx" in error_of(sniff_kind, b"\xd0\xcf\x11\xe0", "old.doc")


def test_sniff_kind_empty_and_oversized():
    assert error_of(sniff_kind, b"", "empty.txt") == "empty.txt: is empty (0 bytes); upload a file with content."
    small = IngestConfig(max_file_mb=0.001)
    msg = error_of(read_document, b"x" * 2000, "big.txt", small)
    assert msg.startswith("big.txt: is 0.0 MB, over the 0.001 MB limit (`ingest.max_file_mb`)")
    big = b"a" * (21 * 1024 * 1024)
    assert "over the 20 MB limit" in error_of(sniff_kind, big, "huge.txt", CFG)


def _with_entry(archive: bytes, name: str, size: int) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        with dst.open(name, "w") as f:
            for _ in range(size // (1 << 20)):
                f.write(b"\0" * (1 << 20))
    return out.getvalue()


def test_zip_bomb_guard_docx():
    bomb = _with_entry(make_docx(lambda d: d.add_paragraph("hi")), "word/media/bomb.bin", 6 * 1024 * 1024)
    assert len(bomb) < 100_000  # highly compressible: small upload, big when unpacked
    cfg = IngestConfig(max_zip_uncompressed_mb=5)
    msg = error_of(read_document, bomb, "bomb.docx", cfg)
    assert re.match(r"bomb\.docx: unpacks to 6\.\d MB, over the 5 MB limit \(`ingest\.max_zip_uncompressed_mb`\)", msg)
    assert read_document(bomb, "bomb.docx", CFG) == [Block("text", "hi")]  # same file under the default limit


def test_zip_entry_count_guard_xlsx():
    data = make_xlsx([["question", "answer"], ["q", "a"]])
    msg = error_of(read_faqs, data, "faq.xlsx", IngestConfig(max_zip_entries=3))
    assert msg.startswith("faq.xlsx: holds") and "(`ingest.max_zip_entries`)" in msg


# --- documents -------------------------------------------------------------------------------------------------------


def test_read_document_gbk_txt_with_numbered_headings():
    text = ("退货政策说明\n\n一、总则\n本制度适用于全体会员。\n（一）适用范围\n适用于中国大陆地区订单。\n"
            "1.1 退货条件\n商品完好，七天内可退。\n1.5公斤以内免运费\n二、运费\n第三条 本条规定运费由卖家承担。\n")
    blocks = read_document(text.encode("gbk"), "政策.txt", CFG)
    assert headings(blocks) == [("一、总则", 1), ("（一）适用范围", 2), ("1.1 退货条件", 3), ("二、运费", 1)]
    assert texts(blocks)[0] == "退货政策说明"
    assert "商品完好，七天内可退。\n1.5公斤以内免运费" in texts(blocks)  # "1.5公斤" is a quantity, not a heading
    assert "第三条 本条规定运费由卖家承担。" in texts(blocks)  # a sentence, not a heading


def test_read_document_numbered_list_is_not_headings():
    blocks = read_document("一、操作步骤\n1. 登录账号\n2. 打开订单\n3. 申请退货\n".encode(), "steps.txt", CFG)
    assert headings(blocks) == [("一、操作步骤", 1)]
    assert texts(blocks) == ["1. 登录账号", "2. 打开订单", "3. 申请退货"]


def test_read_document_undecodable_text():
    msg = error_of(read_document, b"abc \x80\xff\x80 def", "x.txt", CFG)
    assert msg.startswith("x.txt: is neither UTF-8 nor GBK/GB18030 text")


def test_read_document_markdown_levels():
    md = ("# 售后政策\n\n一、总则\n本制度适用于全体会员。\n\n## 退货\n\n七天无理由退货。\n\n- 商品完好\n- 附件齐全\n\n"
          "| 项目 | 时限 |\n|---|---|\n| 退货 | 7天 |\n\n```\nkeep  code\n```\n\n### Refunds\n\nWithin 3 days.\n")
    blocks = read_document(md.encode(), "policy.md", CFG)
    assert headings(blocks) == [("售后政策", 1), ("一、总则", 2), ("退货", 2), ("Refunds", 3)]
    assert texts(blocks) == ["本制度适用于全体会员。", "七天无理由退货。", "- 商品完好", "- 附件齐全", "项目 | 时限",
                             "退货 | 7天", "keep  code", "Within 3 days."]


def test_read_document_html_levels_and_dropped_parts():
    html = """<html><head><title>T</title><style>.x{}</style></head><body>
      <nav>首页 | 帮助</nav><script>alert(1)</script>
      <h1>帮助中心</h1><p>欢迎<b>使用</b>。<br>第二行</p>
      <div><h3>退货</h3><ul><li>七天内</li><li>商品完好</li></ul></div>
      <table><tr><th>项目</th><th>时限</th></tr><tr><td>退货</td><td>7 天</td></tr></table>
      <h2>运费</h2><pre>code  kept</pre></body></html>"""
    blocks = read_document(html.encode(), "help.html", CFG)
    assert headings(blocks) == [("帮助中心", 1), ("退货", 3), ("运费", 2)]
    assert texts(blocks) == ["欢迎使用。\n第二行", "- 七天内", "- 商品完好", "项目 | 时限", "退货 | 7 天", "code  kept"]
    assert not any("alert" in b.text or "首页" in b.text for b in blocks)


def test_read_document_docx_levels_and_tables():
    def build(d):
        d.add_paragraph("员工手册", style="Title")
        d.add_heading("第一章 总则", level=1)
        d.add_paragraph("本手册适用于全体员工。")
        d.add_heading("考勤", level=2)
        d.add_paragraph("一、打卡\n每天打卡两次。")
        table = d.add_table(rows=2, cols=2)
        table.cell(0, 0).text, table.cell(0, 1).text = "类型", "天数"
        table.cell(1, 0).text, table.cell(1, 1).text = "年假", "5"
        d.styles.add_style("标题 2", WD_STYLE_TYPE.PARAGRAPH)
        d.add_paragraph("请假", style="标题 2")
        d.add_paragraph("提前申请。")

    blocks = read_document(make_docx(build), "手册.docx", CFG)
    assert headings(blocks) == [("员工手册", 0), ("第一章 总则", 1), ("考勤", 2), ("一、打卡", 3), ("请假", 2)]
    assert texts(blocks) == ["本手册适用于全体员工。", "每天打卡两次。", "类型 | 天数", "年假 | 5", "提前申请。"]


def test_read_document_pdf_text_and_headings():
    data = make_pdf([
        ["1. Returns", "Items can be returned within 7 days.", "The buyer pays", "the return shipping.", "1"],
        ["2. Shipping", "Orders ship in 2 days.", "2"],
    ])
    blocks = read_document(data, "policy.pdf", CFG)
    assert headings(blocks) == [("1. Returns", 1), ("2. Shipping", 1)]
    # Hard-wrapped lines are rejoined; page-number lines are dropped.
    assert texts(blocks) == ["Items can be returned within 7 days.\nThe buyer pays the return shipping.",
                             "Orders ship in 2 days."]


def test_read_document_pdf_limits():
    data = make_pdf([["page one text"], ["page two text"], ["page three text"]])
    msg = error_of(read_document, data, "long.pdf", IngestConfig(max_pdf_pages=2))
    assert msg == "long.pdf: has 3 pages, over the limit of 2 (`ingest.max_pdf_pages`); split it into smaller files."
    msg = error_of(read_document, data, "slow.pdf", IngestConfig(pdf_timeout_s=1e-9))
    assert msg.startswith("slow.pdf page 1: text extraction took over 1e-09 s (`ingest.pdf_timeout_s`)")


def test_read_document_corrupt_pdf():
    msg = error_of(read_document, b"%PDF-1.4\n" + bytes(range(256)) * 20, "broken.pdf", CFG)
    assert msg.startswith("broken.pdf: is a damaged PDF")


def test_read_document_encrypted_pdf():
    writer = PdfWriter()
    writer.add_blank_page(200, 200)
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="RC4-128")
    buf = io.BytesIO()
    writer.write(buf)
    msg = error_of(read_document, buf.getvalue(), "locked.pdf", CFG)
    assert msg.startswith("locked.pdf: is encrypted (password-protected)")


def test_read_document_without_text():
    assert error_of(read_document, make_pdf([[]]), "scan.pdf", CFG) == (
        "scan.pdf: has no text to index (scanned pages need OCR first).")
    assert "has no text" in error_of(read_document, b"# Only a heading\n", "h.md", CFG)


def test_read_document_refuses_faq_table():
    assert "holds FAQs, not a document" in error_of(read_document, b"question,answer\nq,a\n", "faq.csv", CFG)
