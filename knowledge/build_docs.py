"""Build the binary sample documents of the shipped knowledge base, and check the whole knowledge base.

    python knowledge/build_docs.py            # writes docs/售后服务条款.docx and docs/privacy_and_security.pdf
    python knowledge/build_docs.py --check    # only verifies the FAQ files, the documents and the eval set

The content is original and fictional (a made-up store, 优选商城 / YouXuan Mall). The DOCX is written with
python-docx; the PDF with the small hand-written PDF writer below (standard Type1 Helvetica, WinAnsi
encoding, one text object per line), so no PDF library is needed. Both outputs are byte-for-byte
reproducible: fixed timestamps, no random ids.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
import zipfile
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOCS = HERE / "docs"
FAQ_ZH = HERE / "faq" / "faq_zh.csv"
FAQ_EN = HERE / "faq" / "faq_en.jsonl"
EVAL = HERE / "eval" / "sample_eval.jsonl"
DOCX_PATH = DOCS / "售后服务条款.docx"
PDF_PATH = DOCS / "privacy_and_security.pdf"
FIXED_TIME = datetime(2024, 3, 1, 9, 0, 0, tzinfo=timezone.utc)

# ---------------------------------------------------------------------------- DOCX content
# (style, text): "h1" -> Heading 1, "h2" -> Heading 2, "p" -> Normal paragraph.

AFTER_SALES_TERMS: list[tuple[str, str]] = [
    ("h1", "优选商城售后服务条款"),
    ("p", "版本：2024年版。本条款自2024年3月1日起生效，适用于在优选商城（YouXuan Mall）下单的用户。"
          "退货、退款、换货的基本流程请参见常见问题，本条款说明维修、价格保护、送装、延保等服务的具体标准。"),
    ("h2", "第一章 总则"),
    ("p", "1.1 本条款适用于优选商城自营商品。第三方商家销售的商品，以商家在商品页公示的售后政策为准，但不得低于本条款规定的标准。"),
    ("p", "1.2 本条款与商城公布的退货政策、常见问题解答共同构成优选商城的售后服务规则；如有不一致，以对用户更有利的规定为准。"),
    ("p", "1.3 用户申请售后服务时，应提供订单号以及必要的凭证，例如商品照片、故障视频或授权服务网点出具的检测报告。"),
    ("h2", "第二章 维修服务"),
    ("p", "2.1 送修方式：保修期内的商品可在订单页选择“申请售后-维修”寄修，也可以前往全国320家授权服务网点送修，网点地址可在APP“服务网点”页面查询。"),
    ("p", "2.2 维修时限：寄修商品自维修中心签收之日起7个工作日内完成维修并寄回，寄回运费由商城承担。超过15个工作日仍未修复的，用户可选择更换同型号新品。"),
    ("p", "2.3 多次维修：保修期内同一性能故障经两次维修后仍无法正常使用的，用户可免费更换同型号新品或办理退货。"),
    ("p", "2.4 备用机：手机和笔记本电脑在保修期内送修、且商品实付金额在2000元以上的，维修期间可申请一台备用机，备用机须在维修完成后7天内归还。"),
    ("p", "2.5 保修期外维修：收取检测费50元，确认维修的，检测费可抵扣维修费；维修中更换的配件享受90天保修。"),
    ("h2", "第三章 价格保护"),
    ("p", "3.1 价保期限：自营商品自签收之日起10天内，如同一商品在商城的售价下降，用户可在订单页点击“价格保护”申请退还差价。"),
    ("p", "3.2 返还方式：价格保护审核通过后1个工作日内，差额以商城余额形式返还；每个订单中的每件商品限申请1次价格保护。"),
    ("p", "3.3 不适用情形：秒杀、限时抢购、拼团等活动价格；因使用优惠券或积分抵扣产生的价格差异；赠品、换购商品的价格变化；第三方商家商品。"),
    ("h2", "第四章 送装服务"),
    ("p", "4.1 免费安装范围：空调、洗衣机、冰箱以及55英寸及以上电视等大家电提供免费安装。用户签收后在APP预约，安装人员在预约成功后48小时内上门。"),
    ("p", "4.2 空调安装：标准安装包含3米铜管，超出部分按每米60元收取；室外机安装在3层以上外墙、需要高空作业的，加收高空作业费100元。"),
    ("p", "4.3 收费规范：安装人员上门时须出示工牌，所有收费项目以APP公示的价格为准。用户付款后可索取收费凭证，发现乱收费的可拨打客服热线400-820-6688投诉，核实后全额退还多收费用。"),
    ("h2", "第五章 延保服务"),
    ("p", "5.1 购买方式：购买数码家电类商品时可一同加购延保服务。延保1年的费用为商品实付金额的5%，延保2年的费用为商品实付金额的8%。"),
    ("p", "5.2 生效时间：延保服务自原厂保修期届满的次日起生效。延保期内的非人为性能故障可免费维修，维修次数不限，累计维修费用以商品购买价格为上限。"),
    ("p", "5.3 退订：延保服务购买后30天内且未使用的，可申请全额退款；主商品整单退货的，延保服务一并退款。"),
    ("h2", "第六章 责任免除"),
    ("p", "6.1 以下情形不属于免费保修范围：人为损坏、进水受潮、私自拆机或经非授权网点维修、超出说明书规定的使用条件造成的故障。"),
    ("p", "6.2 电池、耳机线、遥控器、滤芯等易耗配件的保修期为6个月，自签收之日起计算。"),
    ("p", "6.3 因地震、洪水、疫情管控等不可抗力造成的配送延误或商品损坏，双方本着公平原则协商处理。"),
    ("h2", "第七章 争议处理"),
    ("p", "7.1 复核：用户对售后处理结果有异议的，可在结果通知后7天内在售后详情页申请复核，商城将在3个工作日内给出复核结论。"),
    ("p", "7.2 外部途径：协商不成的，用户可以向当地消费者协会投诉或拨打12315热线，也可以向商城运营方所在地（上海市嘉定区）人民法院提起诉讼。"),
]

# ---------------------------------------------------------------------------- PDF content
# (kind, text): "title", "h" (section heading), "p" (paragraph), "li" (bullet item). ASCII only.

PRIVACY_NOTICE: list[tuple[str, str]] = [
    ("title", "YouXuan Mall Privacy and Account Security Notice"),
    ("p", "Effective date: 1 June 2024. This notice explains what personal information YouXuan Mall collects, how we use "
          "and protect it, and what you can do to keep your account safe. YouXuan Mall is a fictional store used as "
          "sample content; the mall is operated by YouXuan E-commerce (Shanghai) Co., Ltd."),
    ("h", "1. Information We Collect"),
    ("p", "We only collect information that is needed to provide our services:"),
    ("li", "Account information: your mobile number, password (stored only as a salted hash), nickname and profile picture."),
    ("li", "Order information: recipient names, delivery addresses, contact numbers, items purchased and invoice details."),
    ("li", "Payment information: we receive only the payment result and a transaction reference from Alipay, WeChat Pay, "
           "UnionPay or your bank. Full card numbers are never sent to or stored by YouXuan Mall."),
    ("li", "Device and log information: device model, operating system version, app version, IP address and crash reports."),
    ("li", "Location: only when you allow it, and only to suggest a delivery address or the nearest pickup station."),
    ("h", "2. How We Use Your Information"),
    ("p", "We use personal information to process and deliver orders, provide customer service and after-sales support, "
          "prevent fraud and protect account security, and improve our app. Personalised recommendations are on by default; "
          "you can switch them off at any time in Me > Settings > Privacy > Personalised Recommendations, after which "
          "product lists are sorted by popularity instead. To stop marketing text messages, reply TD to any of them."),
    ("h", "3. Sharing With Third Parties"),
    ("p", "We do not sell personal information. We share it only when necessary:"),
    ("li", "Couriers receive the recipient name, delivery address and a contact number, and nothing else."),
    ("li", "Payment providers receive the order number and amount needed to complete a payment or refund."),
    ("li", "Third-party sellers on YouXuan Mall receive the delivery details of orders for their own products."),
    ("p", "Privacy waybills: your real phone number is hidden on shipping labels. Couriers reach you through a virtual "
          "number that stays valid for 30 days after delivery and is then disconnected."),
    ("h", "4. Storage and Retention"),
    ("p", "Personal information is stored on servers located in mainland China, in our Shanghai and Chengdu data centres, "
          "and is not transferred abroad. We keep information only as long as needed: order and transaction records are kept "
          "for 3 years after the transaction is completed, as required by e-commerce law; browsing and search history is kept "
          "for 6 months; recordings of customer service calls are kept for 1 year. When an account deletion takes effect, the "
          "remaining personal information is deleted or anonymised within 30 days, except records that the law requires us to keep."),
    ("h", "5. Security Measures"),
    ("p", "All traffic between the app and our servers is encrypted with TLS 1.3, and personal information at rest is encrypted "
          "with AES-256. Employee access to personal data is granted on a need-to-know basis, requires a second approval "
          "and is logged. An independent auditor reviews our security controls once a year. If a data breach occurs, we will "
          "notify affected users by app message and SMS within 72 hours of confirming it, and report it to the regulator."),
    ("h", "6. Protecting Your Account"),
    ("li", "Turn on two-step verification in Me > Settings > Security Center. Each new device then needs a one-time code "
           "sent to your bound mobile number."),
    ("li", "An account can stay signed in on at most 5 devices at the same time; signing in on a sixth device signs out "
           "the device that has been inactive the longest."),
    ("li", "We send a login alert whenever your account signs in from a new device or a new city."),
    ("li", "The payment password is a separate 6-digit code; after 3 wrong entries, balance payment is locked for 3 hours."),
    ("li", "YouXuan Mall staff will never ask for your password, payment password or SMS verification code, and will never "
           "ask you to transfer money to a 'safe account'. Report suspicious calls to our hotline 400-820-6688."),
    ("h", "7. Your Rights"),
    ("p", "You can view and correct most of your information in the app. You can also ask for a copy of your personal "
          "information, ask us to delete it, or withdraw a consent you gave earlier. Copies of personal data are provided "
          "as a downloadable file within 15 working days of a verified request. Withdrawing consent does not affect "
          "processing that happened before."),
    ("h", "8. Children"),
    ("p", "Our services are intended for adults. Users under 14 years old may use YouXuan Mall only with the consent "
          "and supervision of a parent or guardian. If we learn that we collected information from a child under 14 "
          "without such consent, we will delete it promptly."),
    ("h", "9. Changes to This Notice"),
    ("p", "We review this notice at least once a year. Before a material change takes effect, we will tell you by app "
          "message at least 7 days in advance; continued use after that date means you accept the updated notice."),
    ("h", "10. Contact Us"),
    ("p", "Questions, requests and complaints about personal information can be sent to our Data Protection Officer at "
          "privacy@youxuan.example. We reply within 15 working days."),
]

# ---------------------------------------------------------------------------- DOCX writer


def _set_east_asian_font(style, name: str) -> None:
    from docx.oxml.ns import qn

    rpr = style.element.get_or_add_rPr()
    rfonts = rpr.find(qn("w:rFonts"))
    if rfonts is None:
        rfonts = rpr.makeelement(qn("w:rFonts"), {})
        rpr.append(rfonts)
    rfonts.set(qn("w:eastAsia"), name)


def _normalize_zip(data: bytes) -> bytes:
    """Rewrite a zip with fixed member timestamps so the file is reproducible."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            fixed = zipfile.ZipInfo(info.filename, date_time=(2024, 3, 1, 0, 0, 0))
            fixed.compress_type = zipfile.ZIP_DEFLATED
            fixed.external_attr = 0o644 << 16
            dst.writestr(fixed, src.read(info.filename))
    return out.getvalue()


def build_docx(path: Path = DOCX_PATH) -> None:
    import docx

    doc = docx.Document()
    for style_name in ("Normal", "Heading 1", "Heading 2"):
        _set_east_asian_font(doc.styles[style_name], "宋体" if style_name == "Normal" else "黑体")
    for kind, text in AFTER_SALES_TERMS:
        if kind == "h1":
            doc.add_heading(text, level=1)
        elif kind == "h2":
            doc.add_heading(text, level=2)
        else:
            doc.add_paragraph(text)
    props = doc.core_properties
    props.title = "优选商城售后服务条款"
    props.author = "优选商城"
    props.last_modified_by = "优选商城"
    props.created = FIXED_TIME
    props.modified = FIXED_TIME
    props.revision = 1
    buf = io.BytesIO()
    doc.save(buf)
    path.write_bytes(_normalize_zip(buf.getvalue()))


# ---------------------------------------------------------------------------- PDF writer

PAGE_W, PAGE_H = 595, 842  # A4 in points
MARGIN_X, MARGIN_TOP, MARGIN_BOTTOM = 64, 72, 72
STYLES = {  # kind: (font resource, size, leading, space before)
    "title": ("F2", 16, 22, 0),
    "h": ("F2", 12, 16, 12),
    "p": ("F1", 10, 14, 6),
    "li": ("F1", 10, 14, 3),
}
BASE_FONTS = {"F1": "Helvetica", "F2": "Helvetica-Bold"}


def _width_fn():
    """Return width(text, font, size) in points, from matplotlib's copy of the Adobe core font metrics."""
    try:
        import matplotlib
        from matplotlib._afm import AFM

        metrics = {}
        for res, name in BASE_FONTS.items():
            with open(Path(matplotlib.get_data_path()) / "fonts" / "pdfcorefonts" / f"{name}.afm", "rb") as f:
                metrics[res] = AFM(f)
        return lambda text, res, size: sum(metrics[res].get_width_char(ord(c)) for c in text) * size / 1000
    except Exception:  # metrics unavailable: a safe over-estimate of the average glyph width
        return lambda text, res, size: len(text) * size * (0.6 if res == "F2" else 0.56)


def _wrap(text: str, res: str, size: float, max_w: float, width) -> list[str]:
    lines, cur = [], ""
    for word in text.split():
        trial = f"{cur} {word}" if cur else word
        if cur and width(trial, res, size) > max_w:
            lines.append(cur)
            cur = word
        else:
            cur = trial
    if cur:
        lines.append(cur)
    return lines


def _pdf_str(text: str) -> str:
    text.encode("ascii")  # the content is ASCII by design; fail loudly otherwise
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def _layout(blocks: list[tuple[str, str]]) -> list[list[tuple[str, float, float, float, str]]]:
    """Blocks -> pages of (font, size, x, y, text) lines."""
    width = _width_fn()
    pages: list[list[tuple[str, float, float, float, str]]] = [[]]
    y = PAGE_H - MARGIN_TOP
    full_w = PAGE_W - 2 * MARGIN_X
    for kind, text in blocks:
        res, size, leading, before = STYLES[kind]
        indent = 14 if kind == "li" else 0
        lines = _wrap(text, res, size, full_w - indent, width)
        needed = before + leading * (len(lines) + (2 if kind == "h" else 0))  # keep a heading with 2 body lines
        if pages[-1] and y - needed < MARGIN_BOTTOM:
            pages.append([])
            y = PAGE_H - MARGIN_TOP
        elif pages[-1]:
            y -= before
        for i, line in enumerate(lines):
            if y - leading < MARGIN_BOTTOM:
                pages.append([])
                y = PAGE_H - MARGIN_TOP
            y -= leading
            if kind == "li" and i == 0:
                pages[-1].append((res, size, MARGIN_X + 2, y, "-"))
            pages[-1].append((res, size, MARGIN_X + indent, y, line))
    return pages


def build_pdf(path: Path = PDF_PATH, blocks: list[tuple[str, str]] = PRIVACY_NOTICE,
              title: str = "YouXuan Mall Privacy and Account Security Notice") -> None:
    pages = _layout(blocks)
    n = len(pages)
    # object numbers: 1 catalog, 2 pages, 3 F1, 4 F2, 5 info, then (page, content) pairs
    objects: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        4: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>",
        5: f"<< /Title {_pdf_str(title)} /Author (YouXuan Mall) /Producer (knowledge/build_docs.py) "
           f"/CreationDate (D:20240601000000Z) >>".encode("ascii"),
    }
    kids = []
    for i, lines in enumerate(pages):
        page_no, content_no = 6 + 2 * i, 7 + 2 * i
        kids.append(f"{page_no} 0 R")
        ops = [f"BT /{res} {size} Tf 1 0 0 1 {x:.2f} {y:.2f} Tm {_pdf_str(t)} Tj ET" for res, size, x, y, t in lines]
        footer = f"Page {i + 1} of {n}"
        ops.append(f"BT /F1 8 Tf 1 0 0 1 {PAGE_W - MARGIN_X - 40:.2f} 40.00 Tm {_pdf_str(footer)} Tj ET")
        stream = "\n".join(ops).encode("ascii")
        objects[content_no] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
        objects[page_no] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {PAGE_W} {PAGE_H}] "
            f"/Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> /Contents {content_no} 0 R >>"
        ).encode("ascii")
    objects[2] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {n} >>".encode("ascii")

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for num in sorted(objects):
        offsets[num] = len(out)
        out += b"%d 0 obj\n" % num + objects[num] + b"\nendobj\n"
    xref = len(out)
    size = max(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for num in range(1, size):
        out += b"%010d 00000 n \n" % offsets[num]
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 5 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, xref)
    path.write_bytes(bytes(out))


# ---------------------------------------------------------------------------- checks

FAQ_HEADER = ["id", "question", "answer", "similar_questions", "category"]
ZH_CATEGORIES = {"退货", "退款", "物流配送", "支付", "发票", "账户", "会员", "售后", "优惠券", "订单"}


class _HtmlText(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.headings: list[str] = []
        self._tag = ""

    def handle_starttag(self, tag, attrs):
        self._tag = tag
        self.parts.append(" ")

    def handle_endtag(self, tag):
        self.parts.append(" ")

    def handle_data(self, data):
        self.parts.append(data)
        if self._tag in ("h1", "h2", "h3") and data.strip():
            self.headings.append(data.strip())


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def _norm_q(text: str) -> str:
    return re.sub(r"[\s\W_]+", "", text.lower())


def document_texts() -> dict[str, str]:
    """File name -> plain text (whitespace squashed) of each document, read the way a reader would."""
    import docx
    import pypdf

    texts = {}
    for p in sorted(DOCS.iterdir()):
        if p.suffix == ".md":
            texts[p.name] = p.read_text(encoding="utf-8")
        elif p.suffix == ".html":
            parser = _HtmlText()
            parser.feed(p.read_text(encoding="utf-8"))
            texts[p.name] = "".join(parser.parts)
        elif p.suffix == ".docx":
            texts[p.name] = "\n".join(par.text for par in docx.Document(str(p)).paragraphs)
        elif p.suffix == ".pdf":
            texts[p.name] = "\n".join(page.extract_text() for page in pypdf.PdfReader(str(p)).pages)
    return {k: _squash(v) for k, v in texts.items()}


def _size(text: str) -> str:
    cjk = len(re.findall(r"[\u4e00-\u9fff]", text))
    words = len(re.findall(r"[A-Za-z]+", text))
    return f"{cjk} CJK chars + {words} English words"


def check() -> list[str]:
    errors: list[str] = []
    err = errors.append

    # FAQ zh
    with FAQ_ZH.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    if header != FAQ_HEADER:
        err(f"faq_zh.csv header {header}")
    faqs: dict[str, dict] = {}
    for row in rows:
        if len(row) != 5:
            err(f"faq_zh.csv row with {len(row)} fields: {row[:1]}")
            continue
        rec = dict(zip(FAQ_HEADER, row))
        sims = rec["similar_questions"].split("||")
        if not re.fullmatch(r"faq-\d{3}", rec["id"]) or rec["id"] in faqs:
            err(f"bad/duplicate id {rec['id']}")
        if len(sims) < 3 or any(not s.strip() for s in sims):
            err(f"{rec['id']}: needs >= 3 similar questions")
        if rec["category"] not in ZH_CATEGORIES:
            err(f"{rec['id']}: category {rec['category']}")
        faqs[rec["id"]] = {**rec, "similar_questions": sims}
    if len(faqs) < 64:
        err(f"only {len(faqs)} zh FAQs")
    missing = ZH_CATEGORIES - {r["category"] for r in faqs.values()}
    if missing:
        err(f"zh categories without entries: {missing}")
    returns = [r for r in faqs.values() if r["question"] == "怎么申请退货？"]
    if not returns or not {"如何退货", "我想退货怎么操作"} <= set(returns[0]["similar_questions"]):
        err("the returns FAQ `怎么申请退货？` with 如何退货 / 我想退货怎么操作 is missing")

    # FAQ en
    n_en = 0
    for lineno, line in enumerate(FAQ_EN.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        obj = json.loads(line)
        if set(obj) != {"id", "question", "answer", "similar_questions", "category"}:
            err(f"faq_en.jsonl line {lineno}: keys {sorted(obj)}")
        if not re.fullmatch(r"faq-en-\d{3}", obj["id"]) or obj["id"] in faqs:
            err(f"faq_en.jsonl line {lineno}: bad/duplicate id {obj['id']}")
        if len(obj["similar_questions"]) < 3:
            err(f"{obj['id']}: needs >= 3 similar questions")
        faqs[obj["id"]] = obj
        n_en += 1
    if n_en < 20:
        err(f"only {n_en} en FAQs")

    # documents
    import docx
    import pypdf

    d = docx.Document(str(DOCX_PATH))
    styles = [p.style.name for p in d.paragraphs]
    if styles.count("Heading 1") < 1 or styles.count("Heading 2") < 3:
        err(f"docx headings: {styles.count('Heading 1')} H1, {styles.count('Heading 2')} H2")
    reader = pypdf.PdfReader(str(PDF_PATH))
    if len(reader.pages) < 2:
        err(f"pdf has {len(reader.pages)} page(s)")
    for i, page in enumerate(reader.pages):
        if len(page.extract_text().split()) < 50:
            err(f"pdf page {i + 1} extracts almost no text")
    texts = document_texts()
    pdf_text = texts[PDF_PATH.name]
    for kind, text in PRIVACY_NOTICE:
        if _squash(text) not in pdf_text:
            err(f"pdf text not extracted verbatim: {text[:50]!r}")
    expected_docs = {"会员积分规则.md", "shipping_policy.html", DOCX_PATH.name, PDF_PATH.name, "商品问答社区规范.md"}
    if set(texts) != expected_docs:
        err(f"documents: {sorted(texts)}")

    # eval
    counts = {"faq": 0, "doc": 0, "refuse": 0, "multi_turn": 0}
    faq_questions = {}
    for fid, rec in faqs.items():
        for q in [rec["question"], *rec["similar_questions"]]:
            faq_questions[_norm_q(q)] = fid
    try:
        sys.path.insert(0, str(HERE.parent))
        from faq_bot.eval.datasets import load_eval_jsonl

        _, load_errors = load_eval_jsonl(EVAL)
        errors.extend(f"load_eval_jsonl: {e}" for e in load_errors)
    except ImportError as exc:
        print(f"(skipping load_eval_jsonl: {exc})")
    ids = set()
    for lineno, line in enumerate(EVAL.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        obj = json.loads(line)
        where = f"eval {obj.get('id', lineno)}"
        if obj["id"] in ids:
            err(f"{where}: duplicate id")
        ids.add(obj["id"])
        if obj.get("history"):
            counts["multi_turn"] += 1
        if _norm_q(obj["question"]) in faq_questions:
            err(f"{where}: question copies an FAQ question of {faq_questions[_norm_q(obj['question'])]}")
        if obj["refuse"]:
            counts["refuse"] += 1
            if obj["answers"] or obj["faq_id"] is not None:
                err(f"{where}: a refusal must have no answers and faq_id null")
            continue
        if not obj["answers"]:
            err(f"{where}: no answers")
        if obj["faq_id"] is not None:
            counts["faq"] += 1
            if obj["faq_id"] not in faqs:
                err(f"{where}: unknown faq_id {obj['faq_id']}")
                continue
            source_text = faqs[obj["faq_id"]]["answer"]
        else:
            counts["doc"] += 1
            source = obj.get("source") or obj.get("meta", {}).get("source")
            if source not in texts:
                err(f"{where}: unknown source {source}")
                continue
            source_text = texts[source]
        for ans in obj["answers"]:
            if ans not in source_text:
                err(f"{where}: answer {ans!r} not found verbatim in {obj['faq_id'] or source}")

    print(f"FAQ: {len(faqs) - n_en} zh, {n_en} en")
    print("documents: " + "; ".join(f"{k}: {_size(v)}" for k, v in texts.items()))
    print(f"PDF pages: {len(reader.pages)}")
    print(f"eval: {len(ids)} items; with faq_id {counts['faq']}, document-only {counts['doc']}, "
          f"refuse {counts['refuse']}, multi-turn (any type) {counts['multi_turn']}")
    return errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only verify the knowledge base, write nothing")
    args = ap.parse_args()
    if not args.check:
        build_docx()
        build_pdf()
        print(f"wrote {DOCX_PATH.relative_to(HERE.parent)} and {PDF_PATH.relative_to(HERE.parent)}")
    errors = check()
    for e in errors:
        print("ERROR:", e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
