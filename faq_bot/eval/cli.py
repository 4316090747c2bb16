"""`python -m faq_bot eval faq|retrieval|rgb|generator|e2e`: build components once, run a mode, write the report.

Wired into the main CLI with `add_eval_parser(subparsers)` and `run_eval(cfg, args)`; also runnable alone as
`python -m faq_bot.eval.cli MODE ...`. Progress bars and notes go to stderr; the LAST stdout line is a one-line
JSON summary. Each run writes `<eval.runs_dir>/<timestamp>-<mode>/` and is recorded in SQLite (`eval_runs`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from faq_bot.config import ROOT, AppConfig, load_config

logger = logging.getLogger(__name__)

__all__ = ["add_eval_parser", "execute", "main", "parse_ids", "run_eval"]

MODES = ("faq", "retrieval", "rgb", "generator", "e2e")
DEFAULT_RGB = "rgb/zh_refine.dev.jsonl"  # under eval.data_dir


# ---------------------------------------------------------------------------- parser


def _common(p: argparse.ArgumentParser) -> None:
    # same options as the main CLI's, on each mode so they can follow the mode name
    p.add_argument("--config", default=None, help="YAML config (default: configs/default.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set store.path=/tmp/x.db (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--limit", type=int, default=None, help="score at most N items")
    p.add_argument("--runs-dir", default=None, help="where run folders go (default: eval.runs_dir)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


def _models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", action="append", default=[], metavar="NAME",
                   help="LoRA adapter to score next to the base model (repeatable; 'all' = every registered one)")
    p.add_argument("--include-base", dest="include_base", action="store_true", default=True,
                   help="score the base model too (default)")
    p.add_argument("--no-base", dest="include_base", action="store_false", help="score only the adapters")


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Add `eval` with one sub-command per mode to the main CLI's subparsers; returns the `eval` parser."""
    ev = subparsers.add_parser("eval", help="evaluate: faq | retrieval | rgb | generator | e2e",
                               description="Evaluate a stage or the whole chain; writes a run folder with "
                                           "report.json, report.html, questions.csv (and badcases.jsonl).")
    sub = ev.add_subparsers(dest="eval_mode", required=True, metavar="MODE")

    p = sub.add_parser("faq", help="FAQ matching: top-1 accuracy, out-of-scope P/R, threshold sweep, calibration")
    p.add_argument("--kb", default=None, help="FAQ file (csv/xlsx/json/jsonl) read by the ingest readers")
    p.add_argument("--queries", default=None, help='JSONL of {"question": ..., "faq_id": ... | null}; with '
                                                   "--intents, a labelled-utterance file like it")
    p.add_argument("--intents", default=None,
                   help="any labelled intent set's training utterances (jsonl/json/csv/tsv of text + intent: "
                        "intents as FAQs, utterances as paraphrases); score it with --queries")
    p.add_argument("--oos-label", action="append", default=None, metavar="LABEL",
                   help="with --intents: label of out-of-scope utterances (repeatable; default: oos, out_of_scope)")
    p.add_argument("--clinc", default=None, help="CLINC150 data_full.json (intents as FAQs, train utterances as paraphrases)")
    p.add_argument("--split", choices=("test", "val", "calib"), default="test",
                   help="CLINC150 split to score (calib: val + every out-of-scope utterance outside test, to calibrate)")
    p.add_argument("--data", default=None, help="eval JSONL scored against the FAQs in the configured store "
                                                "(used without --kb / --intents / --clinc; default: the sample set)")
    p.add_argument("--calibrate", action="store_true", help="write the chosen thresholds into --write-config")
    p.add_argument("--objective", choices=("max_accuracy", "balanced", "in_scope_precision"), default="max_accuracy",
                   help="balanced: max mean of in-scope accuracy and out-of-scope recall (robust to their mix)")
    p.add_argument("--target", type=float, default=0.97, help="in-scope precision target (objective in_scope_precision)")
    p.add_argument("--suggest-target", type=float, default=0.9,
                   help="top-3 precision that the suggestion threshold must reach")
    p.add_argument("--write-config", default=str(ROOT / "configs" / "default.yaml"),
                   help="config file whose faq thresholds --calibrate updates (default: configs/default.yaml)")
    _common(p)

    p = sub.add_parser("retrieval", help="hit@1/3/5/10 and MRR per retrieval mode")
    p.add_argument("--data", default=None, help="eval JSONL (gold = chunks of meta.source) or an RGB file "
                                                "(temporary index of all passages; gold = positives)")
    p.add_argument("--modes", default=None, help="comma list of dense,sparse,hybrid,hybrid+rerank "
                                                 "(default dense,sparse,hybrid; + hybrid+rerank with --rerank)")
    p.add_argument("--rerank", action="store_true", help="add hybrid+rerank")
    p.add_argument("--ids", default=None, help="RGB files: keep ids with id %% N == K, written modN=K (e.g. mod3=1)")
    _common(p)

    p = sub.add_parser("rgb", help="RGB noise robustness (accuracy per noise rate) and rejection (noise 1.0)")
    p.add_argument("--data", default=None, help=f"RGB JSONL (default: eval.data_dir/{DEFAULT_RGB})")
    p.add_argument("--noise-rate", dest="noise_rates", action="append", type=float, default=[],
                   help="noise rate 0-1 (repeatable); none given: the full list 0,0.2,0.4,0.6,0.8,1.0")
    p.add_argument("--sweep", action="store_true", help="add the full noise list 0,0.2,0.4,0.6,0.8,1.0")
    p.add_argument("--passages", type=int, default=5, help="passages per question (upstream passage_num)")
    p.add_argument("--ids", default=None, help="keep items with id %% N == K, written modN=K (e.g. mod3=1)")
    _models(p)
    _common(p)

    p = sub.add_parser("generator", help="the generator on given contexts (eval JSONL items with `contexts`)")
    p.add_argument("--data", default=None, help="eval JSONL whose items have `contexts`")
    _models(p)
    _common(p)

    for name, aliases in (("e2e", ["end_to_end"]),):
        p = sub.add_parser(name, aliases=aliases, help="what a customer gets, through the whole pipeline")
        p.add_argument("--data", default=None, help="eval JSONL (default: eval.sample_set)")
        _models(p)
        _common(p)
    return ev


def parse_ids(spec: str | None) -> Callable[[int], bool] | None:
    """`mod3=1` -> keep ids with id % 3 == 1; None -> keep all.

    Raises:
        ValueError: for any other form.
    """
    if not spec:
        return None
    m = re.fullmatch(r"\s*mod(\d+)\s*=\s*(\d+)\s*", spec)
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"`--ids` must look like mod3=1 (id % 3 == 1), got {spec!r}.")
    n, k = int(m.group(1)), int(m.group(2))
    return lambda i: i % n == k


# ---------------------------------------------------------------------------- running


def run_eval(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Run the mode named by `args.eval_mode`; print the one-line JSON summary last. Returns the exit code."""
    try:
        report = execute(cfg, args, bar=not getattr(args, "no_progress", False))
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"eval {args.eval_mode}: {e}", file=sys.stderr)
        print(json.dumps({"mode": args.eval_mode, "ok": False, "error": str(e)}, ensure_ascii=False))
        return 2
    for err in report.get("errors") or []:
        print(f"warning: {err}", file=sys.stderr)
    line = {"mode": report["mode"], "ok": True, "run_dir": report.get("run_dir"),
            "errors": len(report.get("errors") or []), **(report.get("summary") or {})}
    if report.get("config_written"):
        line["config_written"] = report["config_written"]
    print(f"report: {Path(report['run_dir']) / 'report.html'}", file=sys.stderr)
    print(json.dumps(line, ensure_ascii=False, default=str))
    return 0


def execute(
    cfg: AppConfig,
    args: argparse.Namespace,
    *,
    pipeline=None,
    progress: Callable[[int, int, str], None] | None = None,
    bar: bool = True,
) -> dict[str, Any]:
    """Build what the mode needs (or reuse `pipeline`'s knowledge base and generator), run it, write the files,
    record the run. The admin UI calls this too (with its pipeline and a progress callback).

    Returns:
        The report dict, with ``run_dir`` and ``files`` set.
    """
    from faq_bot.eval.report import new_run_dir, record_run, write_report

    mode = "e2e" if args.eval_mode == "end_to_end" else args.eval_mode
    if getattr(args, "limit", None) is not None and args.limit < 0:
        raise ValueError(f"`--limit` must be >= 0, got {args.limit}.")
    runs_dir = Path(args.runs_dir) if getattr(args, "runs_dir", None) else Path(cfg.eval.runs_dir)
    run_dir = new_run_dir(runs_dir, mode)
    t0 = time.perf_counter()
    runner = {"faq": _faq, "retrieval": _retrieval, "rgb": _rgb, "generator": _generator, "e2e": _e2e}[mode]
    try:
        report = runner(cfg, args, run_dir, pipeline=pipeline, progress=progress, bar=bar)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)  # no half-written run folder for a run that failed
        raise
    finally:
        # the temporary store (faq --kb/--clinc, retrieval on RGB) is rebuilt on demand; keep run folders small
        shutil.rmtree(run_dir / "store", ignore_errors=True)
    report["wall_s"] = round(time.perf_counter() - t0, 2)
    report.setdefault("summary", {})["wall_s"] = report["wall_s"]
    report["run_dir"] = str(run_dir)
    report["config"] = cfg.dump()
    paths = write_report(report, run_dir)
    report["files"] = {k: str(v) for k, v in paths.items()}
    try:
        from faq_bot.store import Store

        record_run(pipeline.kb.store if pipeline is not None else Store(cfg.store.path), report, run_dir)
    except Exception as e:  # the files are written; a locked or read-only store must not lose the run
        report.setdefault("errors", []).append(f"run not recorded in SQLite: {type(e).__name__}: {e}")
        logger.warning("eval run not recorded in SQLite: %s", e)
    return report


def _path(value: str | None, default: Path, what: str) -> Path:
    path = Path(value) if value else default
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _eval_items(cfg: AppConfig, args) -> tuple[list, list[str], Path]:
    from faq_bot.eval.datasets import load_eval_jsonl

    path = _path(getattr(args, "data", None), Path(cfg.eval.sample_set), "eval set")
    items, errors = load_eval_jsonl(path)
    if args.limit is not None:
        items = items[: args.limit]
    return items, errors, path


def _is_rgb_file(path: Path) -> bool:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    continue
                return isinstance(obj, dict) and "positive" in obj and "query" in obj
    return False


def _scratch_cfg(cfg: AppConfig, run_dir: Path) -> AppConfig:
    """The config with a temporary store and index under the run folder."""
    tmp = cfg.model_copy(deep=True)
    tmp.store.path = run_dir / "store" / "eval.db"
    tmp.store.index_dir = run_dir / "store" / "index"
    return tmp


def _knowledge(cfg: AppConfig, pipeline, bar: bool):
    """The configured knowledge base (the pipeline's when given); the shipped sample is ingested into an empty store."""
    from faq_bot.knowledge import KnowledgeBase

    kb = pipeline.kb if pipeline is not None else KnowledgeBase(cfg)
    if kb.store.count("documents") == 0:
        sample = [ROOT / "knowledge" / "faq", ROOT / "knowledge" / "docs"]
        print(f"store {cfg.store.path} is empty: ingesting the shipped sample knowledge base", file=sys.stderr)
        for r in kb.ingest_paths(sample):
            if r.status == "error":
                print(f"  {r.line()}", file=sys.stderr)
    kb.sync()
    return kb


def _doc_encoder(cfg: AppConfig, errors: list[str]):
    from faq_bot.models import load_encoder

    try:
        return load_encoder(cfg.embed.doc_model, threads=cfg.embed.threads, field="embed.doc_model")
    except Exception as e:  # the other metrics still run; the report says why similarity is missing
        errors.append(f"embedding similarity skipped: {type(e).__name__}: {e}")
        return None


def _judge(cfg: AppConfig):
    from faq_bot.eval.runner import Judge

    return Judge(cfg.eval.judge) if cfg.eval.judge is not None else None


def _generator_and_models(cfg: AppConfig, args, pipeline) -> tuple[Any, list[str | None]]:
    if pipeline is not None:
        gen = pipeline.generator
    else:
        from faq_bot.generate import load_generator

        gen = load_generator(cfg.generate)
    if not gen.ready:
        gen.warm_up()
    if not gen.ready:
        raise RuntimeError(f"the generator could not be loaded: {getattr(gen, 'error', None) or 'unknown error'}")
    available = [a if isinstance(a, str) else a.get("name") for a in gen.adapters()]
    wanted = list(dict.fromkeys(args.adapter))
    if "all" in wanted:
        wanted = [w for w in wanted if w != "all"] + [a for a in available if a not in wanted]
    missing = [a for a in wanted if a not in available]
    if missing:
        raise ValueError(f"`--adapter` {', '.join(missing)} not found under {cfg.generate.adapters_dir}; "
                         f"available: {', '.join(available) or 'none'}.")
    models: list[str | None] = ([None] if args.include_base else []) + wanted
    if not models:
        raise ValueError("nothing to score: `--no-base` needs at least one `--adapter`.")
    return gen, models


def _refusals(cfg: AppConfig) -> tuple[str, str]:
    return (cfg.generate.refusal_zh, cfg.generate.refusal_en)


# ---------------------------------------------------------------------------- modes


def _faq(cfg, args, run_dir, *, pipeline, progress, bar):
    from faq_bot.eval.datasets import OOS_LABELS, FaqQuery, load_clinc, load_faq_queries, load_intents
    from faq_bot.eval.report import update_faq_thresholds
    from faq_bot.eval.runner import run_faq

    errors: list[str] = []
    if sum(bool(x) for x in (args.kb, args.clinc, args.intents)) > 1:
        raise ValueError("give one of `--kb FILE --queries FILE`, `--intents FILE --queries FILE` or `--clinc FILE`.")
    if args.oos_label and not args.intents:
        raise ValueError("`--oos-label` applies to `--intents` only.")
    if args.kb or args.clinc or args.intents:
        if args.clinc:
            faqs, queries = load_clinc(_path(args.clinc, Path(), "CLINC150 file"), split=args.split)
            source, data = Path(args.clinc).name, {"clinc": str(args.clinc), "split": args.split}
        elif args.intents:
            if not args.queries:
                raise ValueError("`--intents FILE` needs `--queries FILE` (labelled utterances to score).")
            oos = tuple(args.oos_label or OOS_LABELS)
            faqs, queries, errors = load_intents(_path(args.intents, Path(), "intents file"),
                                                 _path(args.queries, Path(), "queries file"), oos_labels=oos)
            source = Path(args.intents).name
            data = {"intents": str(args.intents), "queries": str(args.queries), "oos_labels": list(oos)}
        else:
            if not args.queries:
                raise ValueError("`--kb FILE` needs `--queries FILE` (JSONL of question / faq_id).")
            from faq_bot.ingest import IngestError, read_faqs

            kb_path = _path(args.kb, Path(), "FAQ file")
            try:
                faqs = read_faqs(kb_path.read_bytes(), kb_path.name, cfg.ingest)
            except IngestError as e:
                raise ValueError(str(e)) from None
            queries, errors = load_faq_queries(_path(args.queries, Path(), "queries file"))
            source, data = kb_path.name, {"kb": str(args.kb), "queries": str(args.queries)}
        kb = _faq_kb(_scratch_cfg(cfg, run_dir), faqs, source, bar=bar, progress=progress)
    else:
        items, errors, path = _eval_items(cfg, args)
        kb = _knowledge(cfg, pipeline, bar)
        # FAQ view of the eval set: single-turn questions; faq_id null (documents, refusals) = out of scope
        queries = [FaqQuery(question=it.question, faq_id=it.faq_id) for it in items if not it.history]
        data = {"eval_set": str(path), "store": str(cfg.store.path)}
    if args.limit is not None:
        queries = queries[: args.limit]
    if not queries:
        raise ValueError("no queries to score" + (f" ({len(errors)} malformed line(s))" if errors else "") + ".")
    report = run_faq(kb, queries, cfg.faq, objective=args.objective, target=args.target,
                     suggest_target=args.suggest_target, bar=bar, progress=progress)
    report["errors"] = errors + report["errors"]
    report["data"].update(data)
    if args.calibrate:
        cal = report["calibration"]
        path = update_faq_thresholds(args.write_config, cal["answer_threshold"], cal["suggest_threshold"])
        report["config_written"] = str(path)
        print(f"calibrated ({cal['objective']}"
              + (f", target {cal['target']}, met: {cal['target_met']}" if cal["target"] is not None else "")
              + f"): faq.answer_threshold={cal['answer_threshold']}, faq.suggest_threshold={cal['suggest_threshold']}"
              f" written to {path}", file=sys.stderr)
    return report


def _faq_kb(cfg: AppConfig, faqs, source: str, *, bar: bool, progress):
    """A temporary knowledge base holding `faqs`, embedded with `embed.faq_model`."""
    import numpy as np

    from faq_bot.eval.runner import Progress
    from faq_bot.knowledge import KnowledgeBase, doc_id_for
    from faq_bot.schema import Doc

    kb = KnowledgeBase(cfg)
    enc = kb.faq_encoder
    questions = [q for f in faqs for q in f.all_questions()]
    batch = max(cfg.embed.batch_size, 64)
    prog = Progress(len(questions), "embed FAQ questions", bar=bar, callback=progress)
    parts = []
    try:
        for i in range(0, len(questions), batch):
            parts.append(enc.encode_queries(questions[i:i + batch], batch))  # query side, as KnowledgeBase
            prog.update(len(questions[i:i + batch]))
    finally:
        prog.close()
    vecs = np.concatenate(parts) if parts else np.zeros((0, enc.dim), np.float32)
    sha = hashlib.sha256("\n".join(questions).encode("utf-8")).hexdigest()
    doc = Doc(id=doc_id_for(source), source=source, sha256=sha, type="faq", created=time.time())
    kb.store.replace_document(doc, faqs=faqs, faq_vectors={enc.name: vecs})
    kb.sync()
    return kb


def _retrieval(cfg, args, run_dir, *, pipeline, progress, bar):
    from faq_bot.eval.runner import RETRIEVAL_MODES, build_rgb_passage_kb, retrieval_queries_from_eval, run_retrieval

    modes = [m.strip() for m in args.modes.split(",") if m.strip()] if args.modes else ["dense", "sparse", "hybrid"]
    if args.rerank and "hybrid+rerank" not in modes:
        modes.append("hybrid+rerank")
    bad = [m for m in modes if m not in RETRIEVAL_MODES]
    if bad:
        raise ValueError(f"`--modes` must be among {','.join(RETRIEVAL_MODES)}, got {','.join(bad)}.")
    path = _path(args.data, Path(cfg.eval.sample_set), "retrieval data")
    errors: list[str] = []
    if _is_rgb_file(path):
        from faq_bot.knowledge import KnowledgeBase

        scratch = _scratch_cfg(cfg, run_dir)
        kb = KnowledgeBase(scratch)
        queries, errors = build_rgb_passage_kb(kb, path, limit=args.limit, ids=parse_ids(args.ids), bar=bar,
                                               progress=progress)
        data = {"rgb": str(path), "passages": kb.store.count("chunks"), "ids": args.ids}
        rcfg = scratch
    else:
        from faq_bot.eval.datasets import load_eval_jsonl

        items, errors = load_eval_jsonl(path)
        kb = _knowledge(cfg, pipeline, bar)
        queries, notes = retrieval_queries_from_eval(items, kb.store)
        errors += notes
        if args.limit is not None:
            queries = queries[: args.limit]
        data = {"eval_set": str(path), "store": str(cfg.store.path), "chunks": kb.store.count("chunks")}
        rcfg = cfg
    if not queries:
        raise ValueError(f"no scorable retrieval queries in {path} (need `meta.source` items or RGB positives).")
    reranker, floor = None, None
    if "hybrid+rerank" in modes:
        from faq_bot.rerank import DEFAULT_MIN_SCORE, build_reranker

        floor = rcfg.rerank.min_score if rcfg.rerank.min_score is not None else DEFAULT_MIN_SCORE[rcfg.rerank.backend]
        # keep every candidate: ranking metrics need the full reordered list
        keep_all = rcfg.rerank.model_copy(update={"min_score": -1e30})
        generator = pipeline.generator if pipeline is not None and rcfg.rerank.backend == "llm" else None
        if rcfg.rerank.backend == "llm" and generator is None:
            from faq_bot.generate import load_generator

            generator = load_generator(cfg.generate)
        reranker = build_reranker(keep_all, doc_model=rcfg.embed.doc_model, generator=generator, kb=kb)
        reranker.warm_up()
        if reranker.error:
            errors.append(f"reranker failed to load ({reranker.error}); hybrid+rerank = hybrid order")
    report = run_retrieval(kb, rcfg.retrieve, queries, modes=modes, reranker=reranker, rerank_floor=floor,
                           bar=bar, progress=progress)
    report["errors"] = errors + report["errors"]
    report["data"].update(data)
    return report


def _rgb(cfg, args, run_dir, *, pipeline, progress, bar):
    from faq_bot.eval.runner import DEFAULT_NOISE_RATES, load_rgb_sweep, run_rgb

    path = _path(args.data, Path(cfg.eval.data_dir) / DEFAULT_RGB, "RGB file")
    rates = list(args.noise_rates)
    if args.sweep or not rates:
        rates += [r for r in DEFAULT_NOISE_RATES if r not in rates]
    bad = [r for r in rates if not 0.0 <= r <= 1.0]
    if bad:
        raise ValueError(f"`--noise-rate` must be in [0, 1], got {bad}.")
    if args.passages < 0:
        raise ValueError(f"`--passages` must be >= 0, got {args.passages}.")
    items_by_noise, errors = load_rgb_sweep(path, sorted(set(rates)), passage_num=args.passages, limit=args.limit,
                                            ids=parse_ids(args.ids), workdir=run_dir / "data")
    if not any(items_by_noise.values()):
        raise ValueError(f"no RGB items selected from {path} (check --ids / --limit).")
    gen, models = _generator_and_models(cfg, args, pipeline)
    report = run_rgb(gen, items_by_noise, models=models, refusal_texts=_refusals(cfg), bar=bar, progress=progress)
    report["errors"] = errors + report["errors"]
    report["data"].update({"rgb": str(path), "passages": args.passages, "ids": args.ids, "models": [m or "base" for m in models]})
    return report


def _generator(cfg, args, run_dir, *, pipeline, progress, bar):
    from faq_bot.eval.runner import run_generator

    items, errors, path = _eval_items(cfg, args)
    if not any(it.contexts is not None for it in items):
        raise ValueError(f"{path}: no item has `contexts`; generator mode needs given passages "
                         "(use `eval e2e` for retrieval, or `eval rgb` for RGB files).")
    gen, models = _generator_and_models(cfg, args, pipeline)
    report = run_generator(gen, items, models=models, encoder=_doc_encoder(cfg, errors), judge=_judge(cfg),
                           refusal_texts=_refusals(cfg), bar=bar, progress=progress)
    report["errors"] = errors + report["errors"]
    report["data"].update({"eval_set": str(path), "models": [m or "base" for m in models]})
    return report


def _e2e(cfg, args, run_dir, *, pipeline, progress, bar):
    from faq_bot.eval.runner import run_e2e

    items, errors, path = _eval_items(cfg, args)
    if pipeline is None:
        from faq_bot.pipeline import Pipeline

        # None must mean the base model: the configured default adapter would otherwise answer as "base"
        base_cfg = cfg.model_copy(deep=True)
        base_cfg.generate.adapter = None
        kb = _knowledge(base_cfg, None, bar)
        pipeline = Pipeline(base_cfg, kb=kb)
        pipeline.warm_up(generator=True, background=False)
    else:
        _knowledge(cfg, pipeline, bar)
    _, models = _generator_and_models(cfg, args, pipeline)
    report = run_e2e(pipeline, items, models=models, encoder=_doc_encoder(cfg, errors), judge=_judge(cfg), bar=bar,
                     progress=progress)
    report["errors"] = errors + report["errors"]
    report["data"].update({"eval_set": str(path), "store": str(cfg.store.path), "models": [m or "base" for m in models]})
    return report


# ---------------------------------------------------------------------------- standalone


def main(argv: list[str] | None = None) -> int:
    """`python -m faq_bot.eval.cli MODE ...` (same options as `python -m faq_bot eval MODE ...`)."""
    parser = argparse.ArgumentParser(prog="python -m faq_bot.eval.cli")
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_eval_parser(sub)
    args = parser.parse_args(["eval", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    overrides = {}
    for item in args.overrides:
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip()] = v
    try:
        cfg = load_config(args.config, overrides)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    return run_eval(cfg, args)


if __name__ == "__main__":
    raise SystemExit(main())
