"""Command line: python -m faq_bot ingest | list | delete | ask | serve | reindex | eval | train."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .config import AppConfig, load_config
from .eval.cli import add_eval_parser, run_eval

logger = logging.getLogger("faq_bot")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML config (default: configs/default.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set faq.answer_threshold=0.85 (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m faq_bot", description="FAQ Bot: customer service from your own knowledge.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ingest", help="add FAQ files and documents (files or folders)")
    p.add_argument("paths", nargs="+")
    p.add_argument("--if-stale", action="store_true", help="do nothing when every file is already ingested unchanged")
    _common(p)
    p = sub.add_parser("list", help="list documents and FAQ files")
    p.add_argument("--faqs", action="store_true", help="list FAQ entries instead")
    _common(p)
    p = sub.add_parser("delete", help="delete a document (and its chunks / FAQs) by id")
    p.add_argument("doc_id")
    _common(p)
    p = sub.add_parser("reindex", help="rebuild every index from SQLite")
    _common(p)
    p = sub.add_parser("ask", help="answer one question")
    p.add_argument("question")
    p.add_argument("--json", action="store_true", help="print the answer and its trace as JSON")
    p.add_argument("--adapter", default=None, help="LoRA adapter name (default: config)")
    p.add_argument("--history", default=None, help='JSON list of [role, content] pairs')
    _common(p)
    p = sub.add_parser("serve", help="run the app (UI + API)")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    _common(p)
    add_eval_parser(sub)
    from training.cli import add_train_parser  # train: data | sft | kto | merge | list (no torch import here)

    add_train_parser(sub)
    return parser


def _load(args) -> AppConfig:
    overrides = {}
    for item in args.overrides:
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip()] = v
    try:
        return load_config(args.config, overrides)
    except ValueError as e:
        raise SystemExit(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose or args.cmd == "serve" else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = _load(args)
    if args.verbose or args.cmd == "serve":
        logger.info("Resolved config:\n%s", json.dumps(cfg.dump(), ensure_ascii=False, indent=1, default=str))
    return globals()[f"_cmd_{args.cmd}"](cfg, args)


_cmd_eval = run_eval


def _cmd_ingest(cfg: AppConfig, args) -> int:
    from .knowledge import KnowledgeBase

    kb = KnowledgeBase(cfg)
    if args.if_stale and not kb.is_stale(args.paths):
        kb.sync()
        print(f"Knowledge base is up to date ({kb.stats()['faqs']} FAQs, {kb.stats()['chunks']} chunks).")
        return 0
    results = kb.ingest_paths(args.paths)
    for r in results:
        print(r.line())
    kb.sync()
    s = kb.stats()
    print(f"Store: {s['documents']} files, {s['faqs']} FAQs, {s['chunks']} chunks.")
    return 1 if any(r.status == "error" for r in results) else 0


def _cmd_list(cfg: AppConfig, args) -> int:
    from .store import Store

    store = Store(cfg.store.path)
    if args.faqs:
        for f in store.faqs():
            print(f"{f.id}\t{'on ' if f.enabled else 'off'}\t{f.category}\t{f.question}\t(+{len(f.similar_questions)} similar)")
        return 0
    for d in store.list_documents():
        print(f"{d.id}\t{d.type}\t{d.n_chunks}\t{d.source}")
    return 0


def _cmd_delete(cfg: AppConfig, args) -> int:
    from .knowledge import KnowledgeBase

    kb = KnowledgeBase(cfg)
    if not kb.delete_document(args.doc_id):
        print(f"No document with id {args.doc_id!r}; see `python -m faq_bot list`.", file=sys.stderr)
        return 1
    print(f"Deleted {args.doc_id}.")
    return 0


def _cmd_reindex(cfg: AppConfig, args) -> int:
    from .knowledge import KnowledgeBase

    kb = KnowledgeBase(cfg)
    kb.reindex()
    print(json.dumps(kb.check_consistency()))
    return 0


def _cmd_ask(cfg: AppConfig, args) -> int:
    from .pipeline import Pipeline
    from .schema import Query

    pipe = Pipeline(cfg)
    pipe.warm_up(generator=False)
    history = [tuple(x) for x in json.loads(args.history)] if args.history else []
    ans = pipe.answer(Query(text=args.question, history=history), adapter=args.adapter)
    if args.json:
        print(ans.model_dump_json(indent=1))
        return 0
    print(ans.text)
    if ans.faq:
        print(f"\n[FAQ {ans.faq.faq.id} · score {ans.faq.score:.3f} · matched: {ans.faq.matched_question}]")
    for c in ans.citations:
        print(f"[{c.index}] {c.source} › {' > '.join(c.heading_path)}")
    if ans.suggestions:
        print("Did you mean: " + " | ".join(m.faq.question for m in ans.suggestions))
    print(f"({ans.kind}, {ans.trace.total_ms:.0f} ms)")
    return 0


def _cmd_serve(cfg: AppConfig, args) -> int:
    from .api import serve

    serve(cfg, host=args.host, port=args.port)
    return 0


def _cmd_train(cfg: AppConfig, args) -> int:
    from training.cli import run_train

    return run_train(cfg, args)
