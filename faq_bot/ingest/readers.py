"""Readers: check an upload's kind, read FAQ tables (csv/xlsx/json/jsonl) and documents (md/html/txt/pdf/docx)."""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import logging
import re
import time
import unicodedata
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import PreformattedString

from faq_bot.config import IngestConfig
from faq_bot.ingest.errors import IngestError, display_name
from faq_bot.schema import Faq

__all__ = ["Block", "DOC_KINDS", "FAQ_KINDS", "faq_id_for", "file_size_error", "read_document", "read_faqs",
           "sniff_kind", "upload_size_error"]

logger = logging.getLogger(__name__)

FAQ_KINDS = frozenset({"csv", "xlsx", "json", "jsonl"})
DOC_KINDS = frozenset({"md", "html", "txt", "pdf", "docx"})

_MB = 1024 * 1024
_EXTENSIONS = {
    ".csv": "csv", ".xlsx": "xlsx", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".md": "md", ".markdown": "md", ".html": "html", ".htm": "html", ".txt": "txt",
    ".pdf": "pdf", ".docx": "docx",
}
_LEGACY_EXTENSIONS = {".doc": ".docx", ".xls": ".xlsx"}
_CONTENT_NAMES = {
    "text": "text", "pdf": "PDF", "docx": "a Word document (docx)", "xlsx": "an Excel workbook (xlsx)",
    "zip": "a zip archive without Word or Excel parts", "bad_zip": "a damaged zip archive",
    "legacy": "an old binary Office file (.doc/.xls)", "binary": "binary data",
}


@dataclass(frozen=True, slots=True)
class Block:
    """A unit of document structure: a heading (with its level) or a run of body text.

    Levels: 1 = outermost section; a docx `Title` is 0, above `Heading 1`. Text blocks have level 0.
    """

    kind: Literal["heading", "text"]
    text: str
    level: int = 0


@dataclass
class _Para:
    """Paragraph lines that may hold numbered headings (一、 / （二） / 1.1 ...), resolved by `_resolve_blocks`."""

    lines: list[str]
    unwrap: bool = False  # join hard-wrapped lines (PDF, markdown soft breaks) instead of keeping line breaks


@dataclass
class _Record:
    """One FAQ row or object before validation: canonical field -> raw value."""

    where: dict[str, int]
    values: dict[str, Any]
    term: str  # "column" or "key", for messages
    names: dict[str, str] = field(default_factory=dict)  # canonical field -> name as written in the file


# --- kind and size checks -------------------------------------------------------------------------------------------


def upload_size_error(files: Sequence[tuple[str, int]], cfg: IngestConfig | None = None) -> str | None:
    """Why one upload of several files is refused as a whole, or None when it fits.

    Args:
        files: (name, size in bytes) of each file, in upload order.

    Each file must fit `ingest.max_file_mb` (files over it are named; the others are still added) and all of
    them together `ingest.max_upload_mb` (checked here: the message names the file at which the total passes
    the limit, and nothing of the upload is added).
    """
    cfg = cfg or IngestConfig()
    total = 0
    for name, size in files:
        if size > cfg.max_file_mb * _MB:
            continue  # refused on its own, with its own message
        total += size
        if total > cfg.max_upload_mb * _MB:
            return (f"The upload is over the {cfg.max_upload_mb:g} MB limit for all files together "
                    f"(`ingest.max_upload_mb`) at {display_name(name)}; nothing was added. "
                    "Send fewer files at a time.")
    return None


def file_size_error(name: str, size: int, cfg: IngestConfig | None = None) -> str | None:
    """The refusal of one file over `ingest.max_file_mb`, naming it, or None."""
    cfg = cfg or IngestConfig()
    if size <= cfg.max_file_mb * _MB:
        return None
    return (f"{display_name(name)}: is {size / _MB:.3g} MB, over the {cfg.max_file_mb:g} MB limit "
            "(`ingest.max_file_mb`); split it into smaller files.")


def sniff_kind(data: bytes, name: str, cfg: IngestConfig | None = None) -> str:
    """Return the reader kind of an upload, after checking that its extension and content agree.

    Args:
        data: The file's bytes.
        name: The file name as uploaded (only the extension and the last path component are used).
        cfg: Size and zip limits; defaults to `IngestConfig()`.

    Returns:
        One of csv, xlsx, json, jsonl, md, html, txt, pdf, docx.

    Raises:
        IngestError: unknown extension, empty or oversized file, content of another type, zip bomb.
    """
    cfg = cfg or IngestConfig()
    source = display_name(name)
    ext = PurePosixPath(source.lower()).suffix
    kind = _EXTENSIONS.get(ext)
    if kind is None:
        supported = ", ".join(sorted({e.lstrip(".") for e in _EXTENSIONS}))
        if ext in _LEGACY_EXTENSIONS:
            raise IngestError(source, f"is an old binary Office file ({ext}); open it and save it as "
                                      f"{_LEGACY_EXTENSIONS[ext]}, then upload again.")
        raise IngestError(source, f"has an unsupported extension `{ext or '(none)'}`; supported: {supported}.")
    if not data:
        raise IngestError(source, "is empty (0 bytes); upload a file with content.")
    if len(data) > cfg.max_file_mb * _MB:
        raise IngestError(source, f"is {len(data) / _MB:.1f} MB, over the {cfg.max_file_mb:g} MB limit "
                                  "(`ingest.max_file_mb`); split it into smaller files.")
    content = _content_kind(data)
    expected = kind if kind in ("pdf", "docx", "xlsx") else "text"
    if content != expected:
        raise IngestError(source, f"extension says {kind} but content is {_CONTENT_NAMES[content]}; "
                                  "rename the file to its real type or export it again.")
    if kind in ("docx", "xlsx"):
        _check_zip(data, source, cfg)
    return kind


def _content_kind(data: bytes) -> str:
    head = data[:8]
    if data[:1024].lstrip().startswith(b"%PDF-"):
        return "pdf"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                names = set(zf.namelist())
        except (zipfile.BadZipFile, OSError, ValueError):
            return "bad_zip"
        if "word/document.xml" in names:
            return "docx"
        if "xl/workbook.xml" in names:
            return "xlsx"
        return "zip"
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        return "legacy"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "text"
    if b"\x00" in data[:8192]:
        return "binary"
    return "text"


def _check_zip(data: bytes, source: str, cfg: IngestConfig) -> None:
    """Zip-bomb guard, run before any parser inflates the archive.

    Declared sizes are trustworthy here: Python's zipfile never inflates an entry past its declared
    `file_size` (it stops and reports a bad CRC), and both openpyxl and python-docx read through it.
    """
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
    if len(infos) > cfg.max_zip_entries:
        raise IngestError(source, f"holds {len(infos):,} zip entries, over the limit of {cfg.max_zip_entries:,} "
                                  "(`ingest.max_zip_entries`); save it again without embedded objects.")
    total = sum(info.file_size for info in infos)
    if total > cfg.max_zip_uncompressed_mb * _MB:
        raise IngestError(source, f"unpacks to {total / _MB:,.1f} MB, over the {cfg.max_zip_uncompressed_mb:g} MB "
                                  "limit (`ingest.max_zip_uncompressed_mb`), which guards against zip bombs; "
                                  "remove large embedded media or split the file.")


def decode_text(data: bytes, source: str) -> str:
    """Text from UTF-8 (with or without BOM), UTF-16 with BOM, or GB18030 (a superset of GBK); newlines -> \\n."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encodings = ("utf-16",)
    else:
        encodings = ("utf-8-sig", "gb18030")
    for encoding in encodings:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError as e:
            error = e
            continue
        if encoding == "gb18030":
            logger.info("%s: not UTF-8, decoded as GB18030/GBK", source)
        return text.replace("\r\n", "\n").replace("\r", "\n")
    raise IngestError(source, f"is neither UTF-8 nor GBK/GB18030 text (undecodable byte at offset {error.start}); "
                              "save it as UTF-8 and upload again.")


def _guarded(source: str, what: str, fn: Callable[[], Any]) -> Any:
    """Run a third-party parser; anything but our own error becomes an IngestError naming the file."""
    try:
        return fn()
    except IngestError:
        raise
    except RecursionError:
        raise IngestError(source, f"is nested too deeply to read as {what}; simplify its structure.") from None
    except Exception as e:  # parsers raise many types on damaged input; the cause stays chained
        raise IngestError(source, f"could not be read as {what} ({type(e).__name__}: {e}); "
                                  f"check that it opens in its usual program and export it again.") from e


# --- FAQs ------------------------------------------------------------------------------------------------------------

_FAQ_FIELDS = ("question", "answer", "similar_questions", "category", "id", "enabled")
_ALIASES = {
    "question": ("question", "standard question", "问题", "标准问题", "标准问", "问句"),
    "answer": ("answer", "答案", "回答", "标准答案", "答复"),
    "similar_questions": ("similar_questions", "similar", "paraphrases", "相似问题", "相似问法", "相似问",
                          "扩展问题", "扩展问", "相似问句"),
    "category": ("category", "分类", "类别", "类目"),
    "id": ("id", "faq_id", "编号"),
    "enabled": ("enabled", "启用", "是否启用"),
}
_TRUE = {"true", "1", "yes", "y", "on", "是", "启用", "开启"}
_FALSE = {"false", "0", "no", "n", "off", "否", "停用", "禁用", "关闭"}


def _norm_key(name: Any) -> str:
    return re.sub(r"[\s_\-]+", "", unicodedata.normalize("NFKC", str(name)).strip().casefold())


_ALIAS_TO_FIELD = {_norm_key(alias): f for f, aliases in _ALIASES.items() for alias in aliases}


def read_faqs(data: bytes, name: str, cfg: IngestConfig | None = None) -> list[Faq]:
    """Read FAQs from a csv, xlsx, json or jsonl upload.

    Columns (or keys): `question` and `answer` required; `similar_questions` (a list, or one string
    separated by `||` or line breaks), `category`, `id`, `enabled` optional. Chinese headers such as
    问题/标准问题, 答案, 相似问题/相似问法, 分类, 编号 are accepted. A missing `id` is derived from the question.

    Raises:
        IngestError: naming the file, the row/line/item and the column, and how to fix it.
    """
    cfg = cfg or IngestConfig()
    source = display_name(name)
    kind = sniff_kind(data, name, cfg)
    if kind not in FAQ_KINDS:
        raise IngestError(source, f"is a {kind} document, not an FAQ table; upload FAQs as csv, xlsx, json or "
                                  "jsonl, or add this file as a document.")
    if kind == "xlsx":
        records = _guarded(source, "an Excel workbook", lambda: _xlsx_records(data, source, cfg))
    else:
        text = decode_text(data, source)
        if kind == "csv":
            records = _table_records(_csv_rows(text, source, cfg), source, cfg)
        elif kind == "json":
            records = _json_records(text, source, cfg)
        else:
            records = _jsonl_records(text, source, cfg)
    faqs = _build_faqs(records, source, cfg)
    logger.info("%s: read %d FAQs", source, len(faqs))
    return faqs


def _raise_csv_field_limit(limit: int) -> None:
    # The limit is process-wide; only ever raise it, so other csv users keep at least their limit.
    # Cells beyond it make the C parser stop at once with csv.Error, which we turn into our message.
    if csv.field_size_limit() < limit:
        csv.field_size_limit(limit)


def _csv_delimiter(text: str) -> str:
    first = text.lstrip("\n").split("\n", 1)[0]
    counts = {d: first.count(d) for d in (",", "\t", ";")}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else ","


def _csv_rows(text: str, source: str, cfg: IngestConfig) -> Iterator[tuple[int, list[str]]]:
    _raise_csv_field_limit(cfg.max_cell_chars + 1)
    reader = csv.reader(io.StringIO(text), delimiter=_csv_delimiter(text))
    row = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            if "field larger than field limit" in str(e):
                raise IngestError(source, f"a cell is longer than {cfg.max_cell_chars:,} characters "
                                          "(`ingest.max_cell_chars`); shorten it or split the answer.",
                                  row=row + 1) from None
            raise IngestError(source, f"is not valid CSV ({e}); check the quotes around cells.",
                              line=reader.line_num) from None
        row += 1
        yield row, cells


def _xlsx_records(data: bytes, source: str, cfg: IngestConfig) -> list[_Record]:
    import openpyxl

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # openpyxl warns about styles and extensions it does not read
        wb = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        if len(wb.worksheets) > 1:
            logger.warning("%s: reading only the first sheet %r of %d", source, wb.worksheets[0].title,
                           len(wb.worksheets))
        rows = enumerate(wb.worksheets[0].iter_rows(values_only=True), start=1)
        return _table_records(((n, list(cells)) for n, cells in rows), source, cfg)
    finally:
        wb.close()


def _cell_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _table_records(rows: Iterable[tuple[int, list[Any]]], source: str, cfg: IngestConfig) -> list[_Record]:
    """Rows (spreadsheet numbering, header = first non-empty row) -> records keyed by canonical field."""
    header: dict[int, str] | None = None
    raw_header: list[str] = []
    records = []
    for n, cells in rows:
        while cells and _cell_empty(cells[-1]):
            cells.pop()
        if len(cells) > cfg.max_columns:
            raise IngestError(source, f"has {len(cells):,} columns, over the limit of {cfg.max_columns} "
                                      f"(`ingest.max_columns`); keep only the columns {', '.join(_FAQ_FIELDS)}.",
                              row=n)
        for i, cell in enumerate(cells):
            if isinstance(cell, str) and len(cell) > cfg.max_cell_chars:
                column = raw_header[i] if i < len(raw_header) else f"#{i + 1}"
                raise IngestError(source, f"column `{column}` has {len(cell):,} characters, over the limit of "
                                          f"{cfg.max_cell_chars:,} (`ingest.max_cell_chars`); shorten it.",
                                  row=n, field=column)
        if all(_cell_empty(c) for c in cells):
            continue
        if header is None:
            raw_header = ["" if c is None else str(c).strip() for c in cells]
            header = _map_names(raw_header, source, "column", {"row": n})
            continue
        values = {f: cells[i] if i < len(cells) else None for i, f in header.items()}
        names = {f: raw_header[i] for i, f in header.items()}
        records.append(_Record(where={"row": n}, values=values, term="column", names=names))
    if header is None:
        raise IngestError(source, "has no header row; put `question` and `answer` (or 问题 and 答案) in row 1.")
    return records


def _map_names(names: list[str], source: str, term: str, where: dict[str, int]) -> dict[int, str]:
    """Column/key names -> {position: canonical field}; the required ones must be there, once."""
    mapped: dict[int, str] = {}
    seen: dict[str, str] = {}
    for i, raw in enumerate(names):
        f = _ALIAS_TO_FIELD.get(_norm_key(raw))
        if f is None:
            if raw:
                logger.debug("%s: ignoring %s %r", source, term, raw)
            continue
        if f in seen:
            raise IngestError(source, f"{term}s `{seen[f]}` and `{raw}` both mean `{f}`; keep one of them.",
                              field=f, **where)
        seen[f] = raw
        mapped[i] = f
    found = ", ".join(f"`{n}`" for n in names if n) or "none"
    for required, zh in (("question", "问题"), ("answer", "答案")):
        if required not in seen:
            raise IngestError(source, f"no `{required}` {term} (also accepted: {zh}); {term}s found: {found}. "
                                      f"Name the {required} {term} `{required}` or `{zh}`.", field=required, **where)
    return mapped


def _json_records(text: str, source: str, cfg: IngestConfig) -> list[_Record]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise IngestError(source, f"is not valid JSON: {e.msg} at column {e.colno}.", line=e.lineno) from None
    if isinstance(obj, dict) and isinstance(obj.get("faqs"), list):
        items = obj["faqs"]
    elif isinstance(obj, list):
        items = obj
    else:
        got = "an object without a `faqs` list" if isinstance(obj, dict) else type(obj).__name__
        raise IngestError(source, f'must hold a list of FAQ objects or {{"faqs": [...]}}, got {got}.')
    return [_object_record(it, source, cfg, {"item": i}) for i, it in enumerate(items, start=1)]


def _jsonl_records(text: str, source: str, cfg: IngestConfig) -> list[_Record]:
    records = []
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise IngestError(source, f"is not valid JSON: {e.msg} at column {e.colno}; each line must be one "
                                      "JSON object.", line=n) from None
        records.append(_object_record(obj, source, cfg, {"line": n}))
    return records


def _object_record(obj: Any, source: str, cfg: IngestConfig, where: dict[str, int]) -> _Record:
    if not isinstance(obj, dict):
        raise IngestError(source, f"must be an object with `question` and `answer`, got {type(obj).__name__}.",
                          **where)
    if len(obj) > cfg.max_columns:
        raise IngestError(source, f"has {len(obj):,} keys, over the limit of {cfg.max_columns} "
                                  "(`ingest.max_columns`).", **where)
    keys = [str(k) for k in obj]
    mapped = _map_names(keys, source, "key", where)
    values = {f: obj[keys[i]] for i, f in mapped.items()}
    return _Record(where=where, values=values, term="key", names={f: keys[i] for i, f in mapped.items()})


def _scalar_text(value: Any, rec: _Record, f: str, source: str, cfg: IngestConfig) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))  # Excel stores 12 as 12.0
    elif isinstance(value, (str, int, float)):
        text = str(value)
    elif hasattr(value, "isoformat"):
        text = value.isoformat()
    else:
        raise IngestError(source, f"{rec.term} `{rec.names.get(f, f)}` must be text, got {type(value).__name__}.",
                          field=f, **rec.where)
    if len(text) > cfg.max_cell_chars:
        raise IngestError(source, f"{rec.term} `{rec.names.get(f, f)}` has {len(text):,} characters, over the limit "
                                  f"of {cfg.max_cell_chars:,} (`ingest.max_cell_chars`); shorten it.",
                          field=f, **rec.where)
    return text.strip()


def _similar(value: Any, rec: _Record, question: str, source: str, cfg: IngestConfig) -> list[str]:
    if isinstance(value, list):
        parts = [_scalar_text(v, rec, "similar_questions", source, cfg) for v in value]
    else:
        parts = re.split(r"\|\||\n", _scalar_text(value, rec, "similar_questions", source, cfg))
    out: list[str] = []
    for p in (p.strip() for p in parts):
        if p and p != question and p not in out:
            out.append(p)
    return out


def _enabled(value: Any, rec: _Record, source: str, cfg: IngestConfig) -> bool:
    if isinstance(value, bool):
        return value
    text = _scalar_text(value, rec, "enabled", source, cfg).casefold()
    if not text or text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise IngestError(source, f"{rec.term} `{rec.names.get('enabled', 'enabled')}` must be yes/no (true/false, 1/0, "
                              f"是/否), got {text!r}.", field="enabled", **rec.where)


def _normalize_question(question: str) -> str:
    text = unicodedata.normalize("NFKC", question).casefold()
    return re.sub(r"\s+", " ", text).strip().rstrip("?.。 ")


def faq_id_for(question: str) -> str:
    """Stable id for an FAQ without one: `faq-` + 10 hex digits of the SHA-1 of the normalized question."""
    return "faq-" + hashlib.sha1(_normalize_question(question).encode("utf-8")).hexdigest()[:10]


def _where_text(where: dict[str, int]) -> str:
    return " ".join(f"{k} {v}" for k, v in where.items())


def _build_faqs(records: list[_Record], source: str, cfg: IngestConfig) -> list[Faq]:
    faqs: list[Faq] = []
    seen: dict[str, tuple[_Record, bool]] = {}
    for rec in records:
        texts = {}
        for f in ("question", "answer"):
            texts[f] = _scalar_text(rec.values.get(f), rec, f, source, cfg)
            if not texts[f]:
                raise IngestError(source, f"{rec.term} `{rec.names.get(f, f)}` is empty; fill it in or delete the "
                                          f"{'row' if rec.term == 'column' else 'entry'}.", field=f, **rec.where)
        question = texts["question"]
        given_id = _scalar_text(rec.values.get("id"), rec, "id", source, cfg)
        faq_id = given_id or faq_id_for(question)
        if faq_id in seen:
            first, first_given = seen[faq_id]
            if given_id and first_given:
                problem = f"id `{faq_id}` is also used by {_where_text(first.where)}; ids must be unique in a file."
            else:
                problem = (f"question {question!r} repeats {_where_text(first.where)} (both get id `{faq_id}`); "
                           "merge the two or give each its own `id`.")
            raise IngestError(source, problem, field="id", **rec.where)
        seen[faq_id] = (rec, bool(given_id))
        faqs.append(Faq(
            id=faq_id,
            question=question,
            answer=texts["answer"],
            similar_questions=_similar(rec.values.get("similar_questions"), rec, question, source, cfg),
            category=_scalar_text(rec.values.get("category"), rec, "category", source, cfg),
            enabled=_enabled(rec.values.get("enabled"), rec, source, cfg),
            source=source,
        ))
    if not faqs:
        raise IngestError(source, "has no FAQ rows; add rows with a question and an answer under the header.")
    return faqs


# --- documents -------------------------------------------------------------------------------------------------------


def read_document(data: bytes, name: str, cfg: IngestConfig | None = None) -> list[Block]:
    """Read an md, html, txt, pdf or docx upload into heading and text blocks, in reading order.

    Numbered lines such as `一、总则`, `（二）适用范围`, `第三条 退货`, `1.1 退货条件` become headings too
    (see `_numbered_rank`), nested below the explicit heading they appear under.

    Raises:
        IngestError: wrong kind, damaged, encrypted or oversized file, or no text in it.
    """
    cfg = cfg or IngestConfig()
    source = display_name(name)
    kind = sniff_kind(data, name, cfg)
    if kind not in DOC_KINDS:
        raise IngestError(source, f"is a {kind} file, which holds FAQs, not a document; add it as FAQs "
                                  "(documents are md, html, txt, pdf, docx).")
    reader, what = _DOC_READERS[kind]
    items = _guarded(source, what, lambda: reader(data, source, cfg))
    blocks = _resolve_blocks(items)
    if not any(b.kind == "text" for b in blocks):
        hint = " (scanned pages need OCR first)" if kind == "pdf" else ""
        raise IngestError(source, f"has no text to index{hint}.")
    logger.info("%s: read %d blocks", source, len(blocks))
    return blocks


def _read_txt(data: bytes, source: str, cfg: IngestConfig) -> list[Block | _Para]:
    return [_Para(p.split("\n")) for p in re.split(r"\n\s*\n", decode_text(data, source)) if p.strip()]


def _read_md(data: bytes, source: str, cfg: IngestConfig) -> list[Block | _Para]:
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(decode_text(data, source))
    items: list[Block | _Para] = []
    markers: list[str] = []  # one per open list item; "" once its first paragraph has used it
    row: list[str] | None = None
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open":
            items.append(Block("heading", " ".join(_md_inline_lines(tokens[i + 1])), int(tok.tag[1:])))
        elif tok.type == "list_item_open":
            markers.append(f"{tok.info}{tok.markup} " if tok.info else "- ")
        elif tok.type == "list_item_close":
            markers.pop()
        elif tok.type == "paragraph_open":
            lines = _md_inline_lines(tokens[i + 1])
            if markers:
                items.append(Block("text", markers[-1] + _join_lines(lines, unwrap=True)))
                markers[-1] = "  " if markers[-1] else ""
            else:
                items.append(_Para(lines, unwrap=True))
        elif tok.type in ("fence", "code_block") and tok.content.strip():
            items.append(Block("text", tok.content.rstrip("\n")))
        elif tok.type == "html_block":
            text = _html_text_of(tok.content)
            if text:
                items.append(Block("text", text))
        elif tok.type == "tr_open":
            row = []
        elif tok.type == "inline" and row is not None:
            row.append(" ".join(_md_inline_lines(tok)))
        elif tok.type == "tr_close" and row is not None:
            if any(row):
                items.append(Block("text", " | ".join(row)))
            row = None
    return items


def _md_inline_lines(inline: Any) -> list[str]:
    """Plain text of a markdown inline token, split at soft and hard line breaks."""
    lines, parts = [], []
    for child in inline.children or []:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            lines.append("".join(parts).strip())
            parts = []
    lines.append("".join(parts).strip())
    return [line for line in lines if line]


def _html_text_of(markup: str) -> str:
    return re.sub(r"\s+", " ", BeautifulSoup(markup, "lxml").get_text(" ")).strip()


_HTML_DROP = ("script", "style", "nav", "noscript", "template", "svg", "iframe", "head", "object", "canvas")
_HTML_INLINE = frozenset(
    "a abbr b bdi bdo cite code data del dfn em font i ins kbd label mark q s samp small span strong sub sup "
    "time u var wbr img".split()
)


def _read_html(data: bytes, source: str, cfg: IngestConfig) -> list[Block | _Para]:
    soup = BeautifulSoup(decode_text(data, source), "lxml")
    for tag in soup.find_all(list(_HTML_DROP)):
        tag.decompose()
    walker = _HtmlWalker()
    walker.walk(soup.body or soup)
    walker.flush()
    return walker.items


class _HtmlWalker:
    """Walks the DOM in reading order: headings, paragraph-like runs of inline text, list items, table rows."""

    def __init__(self) -> None:
        self.items: list[Block | _Para] = []
        self._buf: list[str] = []
        self._marker: str | None = None  # "- " inside a list item until its first text is emitted

    def flush(self) -> None:
        lines = [line.strip() for line in "".join(self._buf).split("\n")]
        self._buf = []
        lines = [line for line in lines if line]
        if not lines:
            return
        if self._marker is not None:
            self.items.append(Block("text", self._marker + "\n".join(lines)))
            self._marker = "  "
        else:
            self.items.append(_Para(lines))

    def walk(self, node: Any) -> None:
        for child in node.children:
            if isinstance(child, NavigableString):
                if not isinstance(child, PreformattedString):  # comments, doctype, CDATA
                    self._buf.append(re.sub(r"\s+", " ", str(child)))
            elif not isinstance(child, Tag):
                continue
            elif child.name == "br":
                self._buf.append("\n")
            elif child.name in _HTML_INLINE:
                self.walk(child)
            elif re.fullmatch(r"h[1-6]", child.name):
                self.flush()
                text = re.sub(r"\s+", " ", child.get_text("")).strip()
                if text:
                    self.items.append(Block("heading", text, int(child.name[1])))
            elif child.name == "pre":
                self.flush()
                text = child.get_text("").strip("\n")
                if text.strip():
                    self.items.append(Block("text", text))
            elif child.name == "table":
                self.flush()
                self._table(child)
            elif child.name == "li":
                self.flush()
                outer, self._marker = self._marker, "- "
                self.walk(child)
                self.flush()
                self._marker = outer
            else:
                self.flush()
                self.walk(child)
                self.flush()

    def _table(self, table: Any) -> None:
        for tr in table.find_all("tr"):
            if tr.find_parent("table") is not table:
                continue  # rows of nested tables are read with their outer cell
            cells = [re.sub(r"\s+", " ", td.get_text(" ")).strip() for td in tr.find_all(["td", "th"], recursive=False)]
            if any(cells):
                self.items.append(Block("text", " | ".join(cells)))


def _read_docx(data: bytes, source: str, cfg: IngestConfig) -> list[Block | _Para]:
    import docx
    from docx.table import Table

    items: list[Block | _Para] = []
    for part in docx.Document(io.BytesIO(data)).iter_inner_content():
        if isinstance(part, Table):
            for row in part.rows:
                cells: list[str] = []
                for cell in row.cells:
                    text = re.sub(r"\s+", " ", cell.text).strip()
                    if not cells or text != cells[-1]:  # a merged cell repeats in every column it spans
                        cells.append(text)
                if any(cells):
                    items.append(Block("text", " | ".join(cells)))
            continue
        text = part.text.strip()
        if not text:
            continue
        level = _docx_heading_level(part)
        if level is None:
            items.append(_Para(text.split("\n")))
        else:
            items.append(Block("heading", re.sub(r"\s+", " ", text), level))
    return items


def _docx_heading_level(paragraph: Any) -> int | None:
    """`Heading N` / `标题 N` -> N, `Title` / `标题` -> 0, an explicit outline level -> that level + 1."""
    name = (paragraph.style.name if paragraph.style is not None else "") or ""
    m = re.fullmatch(r"(?:heading|标题)\s*([1-9])", name.strip(), flags=re.IGNORECASE)
    if m:
        return int(m.group(1))
    if name.strip().casefold() in ("title", "标题"):
        return 0
    outline = paragraph._p.xpath("./w:pPr/w:outlineLvl/@w:val")
    if outline and str(outline[0]).isdigit() and int(outline[0]) < 9:  # 9 means body text
        return int(outline[0]) + 1
    return None


_PAGE_NUMBER = re.compile(
    r"[-–—]?\s*\d{1,4}\s*[-–—]?|第\s*\d+\s*页(?:\s*[/，,]?\s*共\s*\d+\s*页)?|page\s+\d+(?:\s+of\s+\d+)?|\d+\s*/\s*\d+",
    flags=re.IGNORECASE,
)


def _read_pdf(data: bytes, source: str, cfg: IngestConfig) -> list[Block | _Para]:
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        encrypted = reader.is_encrypted
    except Exception as e:  # pypdf raises several types on damaged files
        raise IngestError(source, f"is a damaged PDF ({type(e).__name__}: {e}); export it again.") from e
    if encrypted:
        try:
            opened = bool(reader.decrypt(""))  # owner-password-only PDFs open with an empty user password
        except Exception as e:  # e.g. AES without a crypto package: still locked for us
            logger.info("%s: empty-password decryption failed: %s", source, e)
            opened = False
        if not opened:
            raise IngestError(source, "is encrypted (password-protected); remove the password (print or export it "
                                      "to a new PDF) and upload again.")
    try:
        n_pages = len(reader.pages)
    except Exception as e:
        raise IngestError(source, f"is a damaged PDF: its page tree cannot be read ({type(e).__name__}: {e}).") from e
    if n_pages == 0:
        raise IngestError(source, "has no pages; it may be damaged, export it again.")
    if n_pages > cfg.max_pdf_pages:
        raise IngestError(source, f"has {n_pages:,} pages, over the limit of {cfg.max_pdf_pages:,} "
                                  "(`ingest.max_pdf_pages`); split it into smaller files.")
    items: list[Block | _Para] = []
    start = time.monotonic()
    for number, page in enumerate(reader.pages, start=1):
        try:
            text = page.extract_text() or ""
        except Exception as e:
            raise IngestError(source, f"text extraction failed ({type(e).__name__}: {e}); export the PDF again.",
                              page=number) from e
        for para in re.split(r"\n\s*\n", text):
            lines = [line.strip() for line in para.split("\n")]
            lines = [line for line in lines if line and not _PAGE_NUMBER.fullmatch(line)]
            if lines:
                items.append(_Para(lines, unwrap=True))
        # A time limit between pages bounds the whole extraction; a single pathological page can still overrun it.
        elapsed = time.monotonic() - start
        if elapsed > cfg.pdf_timeout_s and number < n_pages:
            raise IngestError(source, f"text extraction took over {cfg.pdf_timeout_s:g} s (`ingest.pdf_timeout_s`) "
                                      f"and stopped after page {number} of {n_pages}; split the PDF or print it to a "
                                      "simpler PDF.", page=number)
    return items


_DOC_READERS: dict[str, tuple[Callable[[bytes, str, IngestConfig], list[Block | _Para]], str]] = {
    "md": (_read_md, "Markdown"),
    "html": (_read_html, "HTML"),
    "txt": (_read_txt, "text"),
    "pdf": (_read_pdf, "PDF"),
    "docx": (_read_docx, "a Word document"),
}


# --- numbered headings in plain text ---------------------------------------------------------------------------------

_CN_DIGITS = "一二三四五六七八九十百千零〇两"
# (rank, pattern): rank orders numbering styles from outermost to innermost; the level a heading gets is
# its depth among the numbered headings open above it, so 一、 > （一） > 1. > （1） nest however deep a document starts.
_NUMBERED = [
    (0, re.compile(rf"第[{_CN_DIGITS}\d]+(?:部分|编|篇)")),
    (1, re.compile(rf"第[{_CN_DIGITS}\d]+章")),
    (2, re.compile(rf"第[{_CN_DIGITS}\d]+节")),
    (3, re.compile(rf"[{_CN_DIGITS}]+\s*[、.．]")),
    (4, re.compile(rf"[（(]\s*[{_CN_DIGITS}]+\s*[）)]")),
    (5, re.compile(rf"第[{_CN_DIGITS}\d]+条")),
    (8, re.compile(r"\d{1,3}(?:[.．]\d{1,3}){2,3}[.．]?(?=\s)")),
    (7, re.compile(r"\d{1,3}[.．]\d{1,3}[.．]?(?=\s)")),  # "1.1 退货" but not "1.5公斤"
    (6, re.compile(r"\d{1,3}\s*[、.．](?![\d.．])")),
    (9, re.compile(r"[（(]\d{1,3}[）)]")),
    (10, re.compile(r"[①-⑳]")),
]
_TITLE_OPTIONAL = {0, 1, 2, 5}  # "第三条" alone on a line is a heading; "一、" alone is not
_MAX_HEADING_CHARS = 40
_NOT_IN_HEADING = re.compile(r"[。！？；!?;，]")
_SENTENCE_END = tuple("。！？；!?.;:：…")
_CLOSERS = "”’\"'）)」』】"


def _numbered_rank(line: str) -> int | None:
    """Rank of a short numbered heading line (see `_NUMBERED`), or None for body text."""
    if len(line) >= _MAX_HEADING_CHARS:
        return None
    for rank, pattern in _NUMBERED:
        m = pattern.match(line)
        if not m:
            continue
        title = line[m.end():].strip()
        if not title and rank not in _TITLE_OPTIONAL:
            return None
        if _NOT_IN_HEADING.search(title) or title.endswith("."):
            return None
        return rank
    return None


def _is_cjk(ch: str) -> bool:
    return "\u2e80" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or "\uff00" <= ch <= "\uffef"


def _join_lines(lines: list[str], unwrap: bool) -> str:
    """Join paragraph lines; with `unwrap`, hard-wrapped lines are rejoined unless a sentence ended there."""
    if not unwrap:
        return "\n".join(lines)
    parts = [lines[0]] if lines else []
    for prev, line in zip(lines, lines[1:]):
        if prev.rstrip(_CLOSERS).endswith(_SENTENCE_END):
            parts.append("\n")
        elif not (_is_cjk(prev[-1]) or _is_cjk(line[0])):
            parts.append(" ")
        parts.append(line)
    return "".join(parts)


def _resolve_blocks(items: list[Block | _Para]) -> list[Block]:
    """Turn reader output into blocks: numbered lines become headings nested under the last explicit heading."""
    out: list[Block] = []
    detected: list[int] = []
    open_ranks: list[int] = []
    base = 0
    for item in items:
        if isinstance(item, Block):
            if item.kind == "heading":
                base, open_ranks = item.level, []
            out.append(item)
            continue
        buf: list[str] = []
        for raw in [*item.lines, ""]:
            line = re.sub(r"\s+", " ", raw).strip()
            rank = _numbered_rank(line) if line else None
            if line and rank is None:
                buf.append(line)
                continue
            if buf:
                out.append(Block("text", _join_lines(buf, item.unwrap)))
                buf = []
            if rank is not None:
                while open_ranks and open_ranks[-1] >= rank:
                    open_ranks.pop()
                open_ranks.append(rank)
                detected.append(len(out))
                out.append(Block("heading", line, base + len(open_ranks)))
    # A numbered line with nothing under it (next comes a sibling, a parent or the end) is a list item, not a heading.
    for i in detected:
        nxt = out[i + 1] if i + 1 < len(out) else None
        if nxt is None or (nxt.kind == "heading" and nxt.level <= out[i].level):
            out[i] = Block("text", out[i].text)
    return out
