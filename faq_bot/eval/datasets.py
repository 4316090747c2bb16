"""Evaluation datasets: our eval JSONL, RGB (noise robustness / rejection / integration / counterfactual), CLINC150,
and any labelled intent set (utterance + intent files) as an FAQ benchmark."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import random
import re
from pathlib import Path
from typing import Any, Callable, Collection, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from faq_bot.schema import Faq

__all__ = [
    "EvalItem",
    "FaqQuery",
    "RgbKind",
    "load_clinc",
    "load_eval_jsonl",
    "load_faq_queries",
    "load_intents",
    "read_labelled",
    "load_rgb",
    "rgb_kind",
    "rgb_lang",
    "select_rgb_passages",
    "to_answer_parts",
]

logger = logging.getLogger(__name__)

RgbKind = Literal["plain", "int", "fact"]
RGB_SEED = 2333  # upstream evalue.py resets random.seed(2333) before every item
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvalItem(_Model):
    """One evaluation question with what a correct answer must contain."""

    id: str = Field(min_length=1)
    question: str = Field(min_length=1)
    answer_parts: list[list[str]] = Field(
        default_factory=list,
        description="Every part must be contained in the output; within a part any one alternative counts.",
    )
    refuse: bool = Field(False, description="True when the knowledge (or the given contexts) cannot answer.")
    history: list[tuple[str, str]] = Field(default_factory=list, description="(role, content) pairs, oldest first.")
    contexts: list[str] | None = Field(None, description="Passages to use instead of retrieval.")
    faq_id: str | None = Field(None, description="Expected FAQ id; None for out-of-scope or non-FAQ items.")
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("answer_parts")
    @classmethod
    def _check_parts(cls, parts: list[list[str]]) -> list[list[str]]:
        for i, part in enumerate(parts):
            if not part or any(not s.strip() for s in part):
                raise ValueError(f"`answer_parts[{i}]` must be a non-empty list of non-empty strings, got {part!r}.")
        return parts

    @field_validator("history")
    @classmethod
    def _check_history(cls, history: list[tuple[str, str]]) -> list[tuple[str, str]]:
        for i, (role, _) in enumerate(history):
            if role not in ("user", "assistant"):
                raise ValueError(f"`history[{i}]` role must be 'user' or 'assistant', got {role!r}.")
        return history

    @property
    def answers(self) -> list[str]:
        """All accepted answer strings, flattened in order (for display and as generation references)."""
        return [s for part in self.answer_parts for s in part]


class FaqQuery(_Model):
    """A query for FAQ matching with its expected FAQ id (None = out of scope)."""

    question: str = Field(min_length=1)
    faq_id: str | None = None


class _EvalLine(_Model):
    """One line of the DESIGN.md eval JSONL format."""

    id: str | int
    question: str
    answers: list[str] = Field(default_factory=list, description="Any one contained in the output counts.")
    refuse: bool = False
    history: list[tuple[str, str]] = Field(default_factory=list)
    contexts: list[str] | None = None
    faq_id: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("answers")
    @classmethod
    def _check_answers(cls, answers: list[str]) -> list[str]:
        if any(not a.strip() for a in answers):
            raise ValueError(f"`answers` must not contain empty strings, got {answers!r}.")
        return answers

    @model_validator(mode="after")
    def _check_expectation(self) -> "_EvalLine":
        if not self.refuse and not self.answers and self.faq_id is None:
            raise ValueError("an item with `refuse` false needs `answers` or `faq_id`.")
        return self

    def to_item(self) -> EvalItem:
        return EvalItem(
            id=str(self.id),
            question=self.question,
            answer_parts=[list(self.answers)] if self.answers else [],
            refuse=self.refuse,
            history=self.history,
            contexts=self.contexts,
            faq_id=self.faq_id,
            meta=self.meta,
        )


def _short_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"`{loc}`: {msg}" if loc else msg)
    return "; ".join(parts)


def _read_jsonl(path: Path, parse: Callable[[dict[str, Any], int], Any]) -> tuple[list[tuple[int, Any]], list[str]]:
    """Parse each non-blank line; collect `name line N: why` for bad ones and keep going."""
    rows: list[tuple[int, Any]] = []
    errors: list[str] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path.name} line {lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                errors.append(f"{where}: invalid JSON ({exc.msg} at column {exc.colno}).")
                continue
            if not isinstance(obj, dict):
                errors.append(f"{where}: expected a JSON object, got {type(obj).__name__}.")
                continue
            try:
                rows.append((lineno, parse(obj, lineno)))
            except ValidationError as exc:
                errors.append(f"{where}: {_short_error(exc)}")
            except ValueError as exc:  # a check across lines, e.g. duplicate ids
                errors.append(f"{where}: {exc}")
    if errors:
        logger.warning("%s: %d malformed line(s) skipped", path.name, len(errors))
    return rows, errors


def load_eval_jsonl(path: str | Path) -> tuple[list[EvalItem], list[str]]:
    """Load an eval set in the DESIGN.md JSONL format (`answers`: any one counts, so one answer part).

    Returns:
        (items, errors): malformed lines (bad JSON, wrong types, unknown keys, duplicate ids) become
        messages like ``sample_eval.jsonl line 12: ...`` and are skipped; the rest still loads.
    """
    path = Path(path)
    seen: dict[str, int] = {}

    def parse(obj: dict[str, Any], lineno: int) -> EvalItem:
        item = _EvalLine.model_validate(obj).to_item()
        if item.id in seen:
            raise ValueError(f"duplicate `id` {item.id!r} (first on line {seen[item.id]}).")
        seen[item.id] = lineno
        return item

    rows, errors = _read_jsonl(path, parse)
    return [item for _, item in rows], errors


class _FaqQueryLine(_Model):
    question: str = Field(min_length=1)
    faq_id: str | None  # required key; null marks an out-of-scope query


def load_faq_queries(path: str | Path) -> tuple[list[FaqQuery], list[str]]:
    """Load FAQ-matching queries from JSONL lines ``{"question": ..., "faq_id": ... | null}``.

    Returns:
        (queries, errors) with line-numbered messages for malformed lines.
    """
    rows, errors = _read_jsonl(Path(path), lambda obj, _: FaqQuery(**_FaqQueryLine.model_validate(obj).model_dump()))
    return [q for _, q in rows], errors


# ---------------------------------------------------------------------------- RGB


def to_answer_parts(answer: str | list[str | list[str]]) -> list[list[str]]:
    """RGB `answer` -> answer parts: a str is one part; list elements: str -> one part, list -> alternatives."""
    if isinstance(answer, str):
        return [[answer]]
    parts: list[list[str]] = []
    for element in answer:
        if isinstance(element, str):
            parts.append([element])
        elif isinstance(element, list) and all(isinstance(s, str) for s in element):
            parts.append(list(element))
        else:
            raise ValueError(f"`answer` elements must be str or list[str], got {element!r}.")
    return parts


def rgb_kind(path: str | Path, instance: dict[str, Any] | None = None) -> RgbKind:
    """Dataset kind as upstream decides it: `_int` / `_fact` in the name, else plain; keys when the name is silent."""
    name = Path(path).name
    if "_int" in name:
        return "int"
    if "_fact" in name:
        return "fact"
    if instance is not None:
        if "positive_wrong" in instance:
            return "fact"
        positive = instance.get("positive") or []
        if positive and all(isinstance(group, list) for group in positive):
            return "int"
    return "plain"


def rgb_lang(path: str | Path, instance: dict[str, Any] | None = None) -> Literal["zh", "en"]:
    """Language from the file name (`zh_*` / `en_*`), else from the question's script."""
    name = Path(path).name.lower()
    head = re.split(r"[_.\-]", name, maxsplit=1)[0]
    if head in ("zh", "en"):
        return head  # type: ignore[return-value]
    if "zh" in name:  # upstream: `'zh' in dataset`
        return "zh"
    if "en" in name:
        return "en"
    if instance is not None and _CJK.search(str(instance.get("query", ""))):
        return "zh"
    return "en"


def select_rgb_passages(
    instance: dict[str, Any],
    kind: RgbKind,
    *,
    noise_rate: float,
    passage_num: int,
    correct_rate: float = 0.0,
) -> tuple[list[str], list[str]]:
    """Re-implementation of upstream RGB `evalue.py` `processdata` (commit 65ec39e), random calls in order.

    Uses a private `random.Random(2333)` per item, which yields the same stream as upstream's
    `random.seed(2333)` without touching the global generator. The input is not mutated.

    Returns:
        (docs, sources): the passages in their final order and, aligned, where each came from:
        "positive", "negative" or "positive_wrong".
    """
    if passage_num == 0:  # upstream skips processdata: no docs, no random calls
        return [], []
    rng = random.Random(RGB_SEED)
    neg_num = math.ceil(passage_num * noise_rate)
    pos_num = passage_num - neg_num
    negatives: list[str] = instance["negative"]
    tagged: list[tuple[str, str]]

    if kind == "int":
        groups = [list(g) for g in instance["positive"]]  # upstream shuffles in place; we copy
        for group in groups:
            rng.shuffle(group)
        tagged = [("positive", g[0]) for g in groups]
        if len(tagged) < pos_num:
            maxnum = max(len(g) for g in groups)
            for i in range(1, maxnum):
                for group in groups:
                    if len(group) > i:
                        tagged.append(("positive", group[i]))
                        if len(tagged) == pos_num:
                            break
                if len(tagged) == pos_num:
                    break
        neg_num = passage_num - len(tagged)
        if neg_num > 0:
            tagged += [("negative", d) for d in negatives[:neg_num]]
    elif kind == "fact":
        correct_num = math.ceil(passage_num * correct_rate)
        pos_num = passage_num - neg_num - correct_num
        indexes = list(range(len(instance["positive"])))
        selected = rng.sample(indexes, min(len(indexes), pos_num))
        tagged = [("positive_wrong", instance["positive_wrong"][i]) for i in selected]
        remain = [i for i in indexes if i not in selected]
        if correct_num > 0 and len(remain) > 0:
            tagged += [("positive", instance["positive"][i]) for i in rng.sample(remain, min(len(remain), correct_num))]
        if neg_num > 0:
            tagged += [("negative", d) for d in negatives[:neg_num]]
    else:
        positives: list[str] = instance["positive"]
        if noise_rate == 1:
            neg_num, pos_num = passage_num, 0
        elif neg_num > len(negatives):
            neg_num = len(negatives)
            pos_num = passage_num - neg_num
        elif pos_num > len(positives):
            pos_num = len(positives)
            neg_num = passage_num - pos_num
        tagged = [("positive", d) for d in positives[:pos_num]] + [("negative", d) for d in negatives[:neg_num]]

    # shuffle draws depend only on the length, so shuffling (source, doc) pairs gives upstream's order
    rng.shuffle(tagged)
    return [d for _, d in tagged], [s for s, _ in tagged]


def load_rgb(
    path: str | Path,
    *,
    noise_rate: float,
    passage_num: int = 5,
    correct_rate: float = 0.0,
    limit: int | None = None,
    ids: Callable[[int], bool] | None = None,
) -> list[EvalItem]:
    """Load an RGB file (plain/refine, `_int` or `_fact`) with upstream's passage selection.

    Args:
        noise_rate: share of negative passages (0-1); 1 makes every item a refusal item.
        passage_num: passages per item; 0 gives no contexts.
        correct_rate: `_fact` sets only: share of correct passages among the counterfactual ones.
        limit: keep at most this many items (after `ids`).
        ids: keep only items whose integer RGB id passes this predicate.

    Raises:
        ValueError: parameters out of range or a line that is not an RGB item.
    """
    path = Path(path)
    if not 0.0 <= noise_rate <= 1.0:
        raise ValueError(f"`noise_rate` must be in [0, 1], got {noise_rate}.")
    if passage_num < 0:
        raise ValueError(f"`passage_num` must be >= 0, got {passage_num}.")
    if not 0.0 <= correct_rate <= 1.0:
        raise ValueError(f"`correct_rate` must be in [0, 1], got {correct_rate}.")
    if limit is not None and limit < 0:
        raise ValueError(f"`limit` must be >= 0 or None, got {limit}.")

    items: list[EvalItem] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if limit is not None and len(items) >= limit:
                break
            if not line.strip():
                continue
            try:
                instance = json.loads(line)
                rgb_id = int(instance["id"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path.name} line {lineno}: not an RGB item ({exc}).") from exc
            if ids is not None and not ids(rgb_id):
                continue
            kind = rgb_kind(path, instance)
            if kind == "fact" and passage_num > 0:
                pos_num = passage_num - math.ceil(passage_num * noise_rate) - math.ceil(passage_num * correct_rate)
                if pos_num < 0:  # upstream's random.sample raises on every item
                    raise ValueError(
                        f"`noise_rate` + `correct_rate` leave no room: ceil({passage_num}*{noise_rate}) + "
                        f"ceil({passage_num}*{correct_rate}) > `passage_num` {passage_num}; lower one of them."
                    )
            lang = rgb_lang(path, instance)
            docs, sources = select_rgb_passages(
                instance, kind, noise_rate=noise_rate, passage_num=passage_num, correct_rate=correct_rate
            )
            meta: dict[str, Any] = {
                "dataset": "rgb",
                "rgb_file": path.name,
                "rgb_id": rgb_id,
                "rgb_kind": kind,
                "lang": lang,
                "noise_rate": noise_rate,
                "passage_num": passage_num,
                "passage_sources": sources,
            }
            if kind == "fact":
                meta["correct_rate"] = correct_rate
                meta["fakeanswer"] = instance.get("fakeanswer")
            try:
                items.append(
                    EvalItem(
                        id=f"{path.name.split('.')[0]}-{rgb_id}",
                        question=instance["query"],
                        answer_parts=to_answer_parts(instance["answer"]),
                        refuse=noise_rate == 1,
                        contexts=docs,
                        meta=meta,
                    )
                )
            except (KeyError, ValueError) as exc:
                raise ValueError(f"{path.name} line {lineno}: not an RGB item ({exc}).") from exc
    return items


# ---------------------------------------------------------------------------- CLINC150


def load_clinc(path: str | Path, *,
               split: Literal["test", "val", "calib"] = "test") -> tuple[list[Faq], list[FaqQuery]]:
    """CLINC150 as an FAQ benchmark: one FAQ per intent (train utterances as paraphrases) and labelled queries.

    `calib` is the calibration split: the val utterances with every out-of-scope utterance outside test
    (`oos_val` + `oos_train`, 200; the FAQ never uses `oos_train`). A threshold chosen on val's 100 out-of-scope
    utterances sits at the edge of one of them and moves by a few points of test recall from run to run.

    Returns:
        (faqs, queries): 150 FAQs in first-seen train order; queries are the split's utterances (faq_id = intent)
        followed by its out-of-scope utterances (faq_id None).
    """
    if split not in ("test", "val", "calib"):
        raise ValueError(f"`split` must be 'test', 'val' or 'calib', got {split!r}.")
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    in_split, oos = ("val", ["oos_val", "oos_train"]) if split == "calib" else (split, [f"oos_{split}"])
    missing = [k for k in ("train", in_split, *oos) if k not in data]
    if missing:
        raise ValueError(f"{Path(path).name}: missing key(s) {missing}; expected CLINC150 data_full.json.")

    utterances: dict[str, list[str]] = {}
    for text, intent in data["train"]:
        utterances.setdefault(intent, []).append(text)
    faqs = [
        Faq(
            id=intent,
            question=intent.replace("_", " "),
            answer=f"[{intent}]",
            similar_questions=texts,
            category=intent,
            source=Path(path).name,
        )
        for intent, texts in utterances.items()
    ]
    queries: list[FaqQuery] = []
    for text, intent in data[in_split]:
        if intent not in utterances:
            raise ValueError(f"{Path(path).name}: `{in_split}` intent {intent!r} has no train utterances.")
        queries.append(FaqQuery(question=text, faq_id=intent))
    queries += [FaqQuery(question=text, faq_id=None) for key in oos for text, _ in data[key]]
    return faqs, queries


# ---------------------------------------------------------------------------- any labelled intent set

OOS_LABELS = ("oos", "out_of_scope")
_TEXT_KEYS = ("text", "utterance", "sentence", "query", "question", "文本", "句子", "问题")
_LABEL_KEYS = ("intent", "label_text", "label", "category", "faq_id", "意图", "标签", "类别")
_WORDY = re.compile(r"[^\W\d_]")  # a letter or CJK character: an intent name that can stand as a question
_WHOLE = re.compile(r"^(-?\d+)\.0+$")


def _pick(keys: Sequence[str], names: Sequence[str]) -> str | None:
    low = {str(n).strip().lower(): n for n in names}
    return next((low[k] for k in keys if k in low), None)


def _label(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = _WHOLE.sub(r"\1", str(value).strip())  # "17.0" (pandas' float labels) is 17, as JSON 17.0 is
    return text or None


def _unquote(field: str) -> str:
    return field[1:-1].replace('""', '"') if len(field) >= 2 and field[0] == field[-1] == '"' else field


def _unit(path: Path) -> str:
    """What `read_labelled` numbers in `path`'s layout."""
    suffix = path.suffix.lower()
    return "line" if suffix == ".jsonl" else "item" if suffix == ".json" else "row"


def read_labelled(path: str | Path, known_labels: Collection[str] | None = None
                  ) -> tuple[list[tuple[int, str, str | None]], list[str]]:
    """(row, text, label) of a labelled-utterance file, in file order, and row-numbered errors for bad rows.

    Layouts: JSONL of objects or `[text, label]` pairs; JSON of a list of either; CSV / TSV (`.tsv`, `.txt`: tab)
    with a header naming a text column (text, utterance, sentence, query, question, 文本, 句子, 问题) and a label
    column (intent, label_text, label, category, faq_id, 意图, 标签, 类别: the first present wins; with two columns,
    naming one is enough), or two columns without a header, the label being the column with fewer distinct values
    (`text,label` and `label\ttext` both work; with `known_labels`, e.g. a test file read against its training
    labels, the column holding more of them). Every row has the first row's number of columns (empty trailing
    fields aside): a text with an unquoted comma is an error, not a cut text. A null or empty label is kept as None
    (out of scope, for queries); an empty text is an error.
    Text is decoded as ingest decodes uploads (`decode_text`: UTF-8, UTF-16 with BOM, GBK/GB18030).
    Raises ValueError naming the file when it cannot be decoded or no text / label column can be found."""
    from faq_bot.ingest import decode_text

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv", ".tsv", ".txt"):
        raise ValueError(f"{path.name}: unsupported file type {suffix or '(none)'}; "
                         "use .jsonl, .json, .csv, .tsv or .txt (tab-separated).")
    text = decode_text(path.read_bytes(), path.name)  # UTF-8 (BOM or not), UTF-16 with BOM, GBK/GB18030
    raw: list[tuple[int, Any, Any]] = []
    errors: list[str] = []
    unit = _unit(path)
    if suffix in (".jsonl", ".json"):
        if suffix == ".json":
            data = json.loads(text)
            if not isinstance(data, list):
                raise ValueError(f"{path.name}: expected a JSON list of objects or [text, label] pairs, "
                                 f"got {type(data).__name__}.")
            entries = [(i, x) for i, x in enumerate(data, start=1)]
        else:
            entries = []
            for lineno, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    entries.append((lineno, json.loads(line)))
                except json.JSONDecodeError as exc:
                    errors.append(f"{path.name} line {lineno}: invalid JSON ({exc.msg} at column {exc.colno}).")
        for n, obj in entries:
            if isinstance(obj, list) and len(obj) == 2:
                raw.append((n, obj[0], obj[1]))
            elif isinstance(obj, dict):
                tk, lk = _pick(_TEXT_KEYS, list(obj)), _pick(_LABEL_KEYS, list(obj))
                if tk is None or lk is None:
                    errors.append(f"{path.name} {unit} {n}: no {'text' if tk is None else 'label'} key among "
                                  f"{sorted(obj)} (expected one of "
                                  f"{', '.join(_TEXT_KEYS if tk is None else _LABEL_KEYS)}).")
                    continue
                raw.append((n, obj[tk], obj[lk]))
            else:
                errors.append(f"{path.name} {unit} {n}: expected an object or a [text, label] pair, got "
                              f"{type(obj).__name__}.")
    else:
        if suffix == ".csv":
            rows = list(csv.reader(io.StringIO(text)))
        else:  # tab files: quotes are text ('the "best" card'), unless a field is wholly quoted
            rows = [[_unquote(c) for c in line.split("\t")] for line in text.splitlines()]
        rows = [(i, r) for i, r in enumerate(rows, start=1) if any(c.strip() for c in r)]
        if not rows:
            return [], [f"{path.name}: no rows."]
        head = rows[0][1]
        tcol, lcol = _pick(_TEXT_KEYS, head), _pick(_LABEL_KEYS, head)
        if tcol is not None and lcol is not None:
            ti, li = head.index(tcol), head.index(lcol)
            rows = rows[1:]
        elif (tcol is not None or lcol is not None) and len(head) == 2:  # a header naming one of two columns
            ti = head.index(tcol) if tcol is not None else 1 - head.index(lcol)
            li = 1 - ti
            rows = rows[1:]
        elif len(head) == 2:
            cols = [[r[j].strip() for _, r in rows if len(r) == 2] for j in (0, 1)]
            known = [sum(_label(v) in known_labels for v in c) for c in cols] if known_labels else [0, 0]
            if known[0] != known[1]:
                ti, li = (1, 0) if known[0] > known[1] else (0, 1)
            else:
                ti, li = (1, 0) if len(set(cols[0])) < len(set(cols[1])) else (0, 1)
        else:
            raise ValueError(f"{path.name}: no header naming a text column ({', '.join(_TEXT_KEYS)}) and a label "
                             f"column ({', '.join(_LABEL_KEYS)}), and not two columns: first row {head!r}.")
        width = len(head)
        for i, r in rows:
            if len(r) > width and not any(c.strip() for c in r[width:]):
                r = r[:width]
            if len(r) != width:
                errors.append(f"{path.name} row {i}: {len(r)} column(s), expected {width}"
                              + (" (quote a text that holds a comma)." if len(r) > width and suffix == ".csv"
                                 else "."))
                continue
            raw.append((i, r[ti], r[li]))
    out: list[tuple[int, str, str | None]] = []
    for n, t, lab in raw:
        t = str(t).strip() if t is not None else ""
        if not t:
            errors.append(f"{path.name} {unit} {n}: empty text.")
            continue
        out.append((n, t, _label(lab)))
    if errors:
        logger.warning("%s: %d malformed row(s) skipped", path.name, len(errors))
    return out, errors


def load_intents(train: str | Path, queries: str | Path, *,
                 oos_labels: Sequence[str] = OOS_LABELS) -> tuple[list[Faq], list[FaqQuery], list[str]]:
    """A labelled intent set as an FAQ benchmark, as `load_clinc` does for CLINC150: one FAQ per intent of
    `train` (first-seen order; its utterances as similar questions; the intent name, `_` read as a space, as its
    question when it has a letter or CJK character, else the first utterance; answer `[intent]`; utterances kept
    as given, repeats included, so a CLINC150 file gives what `load_clinc` gives) and the
    labelled utterances of `queries` (`read_labelled` layouts). Labels in `oos_labels` (any case) or empty mark
    out-of-scope utterances: left out of the FAQs, faq_id None among the queries.

    Returns:
        (faqs, queries, errors): errors name the file and row of skipped rows, including query labels that have
        no training utterances.
    """
    oos = {x.strip().lower() for x in oos_labels}
    rows, errors = read_labelled(train)
    utterances: dict[str, list[str]] = {}
    for n, text, lab in rows:
        if lab is None or lab.lower() in oos:
            continue
        utterances.setdefault(lab, []).append(text)
    if not utterances:
        raise ValueError(f"{Path(train).name}: no labelled utterances outside the out-of-scope labels "
                         f"({', '.join(sorted(oos))}).")
    faqs = []
    for lab, texts in utterances.items():
        named = bool(_WORDY.search(lab))
        faqs.append(Faq(id=lab, question=lab.replace("_", " ").strip() if named else texts[0], answer=f"[{lab}]",
                        similar_questions=texts if named else texts[1:], category=lab, source=Path(train).name))
    qrows, qerrors = read_labelled(queries, known_labels={*utterances, *oos_labels})
    errors += qerrors
    out: list[FaqQuery] = []
    unknown: dict[str, list[int]] = {}
    for n, text, lab in qrows:
        if lab is None or lab.lower() in oos:
            out.append(FaqQuery(question=text, faq_id=None))
        elif lab in utterances:
            out.append(FaqQuery(question=text, faq_id=lab))
        else:
            unknown.setdefault(lab, []).append(n)
    for lab, at in unknown.items():
        errors.append(f"{Path(queries).name} {_unit(Path(queries))} {at[0]}: label {lab!r} has no training "
                      f"utterances in {Path(train).name} (out-of-scope labels: {', '.join(sorted(oos))}); its "
                      f"{len(at)} utterance(s) are skipped.")
    return faqs, out, errors
