"""Evaluation reports on disk: run folder, report.json, self-contained report.html (base64 PNG plots),
per-question CSV, badcases.jsonl, the SQLite run record, and the in-place FAQ threshold edit of a config file."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)

__all__ = [
    "QUESTIONS_CSV",
    "new_run_dir",
    "record_run",
    "render_html",
    "render_plots",
    "update_faq_thresholds",
    "write_report",
]

QUESTIONS_CSV = "questions.csv"
_MAX_HTML_ROWS = 300


# ---------------------------------------------------------------------------- run folder and files


def new_run_dir(runs_dir: str | Path, mode: str) -> Path:
    """A fresh ``<runs_dir>/<YYYYmmdd-HHMMSS>-<mode>/`` (suffixed -2, -3 ... when that second is taken)."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{mode}"
    for n in range(1, 1000):
        path = runs_dir / (stem if n == 1 else f"{stem}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run folder under {runs_dir}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, set):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


def _csv_cell(value: Any) -> Any:
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else value


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    with path.open("w", encoding="utf-8-sig", newline="") as f:  # BOM: Excel opens Chinese text correctly
        w = csv.DictWriter(f, fieldnames=cols or ["empty"])
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_cell(r.get(k)) for k in cols})


def write_report(report: dict[str, Any], run_dir: str | Path) -> dict[str, Path]:
    """Write report.json (everything but per-question rows), questions.csv (one row per question and model),
    badcases.jsonl (when the mode produces model outputs) and report.html into `run_dir`.

    Returns:
        {"json": ..., "html": ..., "csv": ..., "badcases": ...} paths that were written.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    report.setdefault("run_id", run_dir.name)
    report.setdefault("run_dir", str(run_dir))
    report.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
    rows = report.get("rows") or []
    paths: dict[str, Path] = {}

    paths["csv"] = run_dir / QUESTIONS_CSV
    _write_csv(paths["csv"], rows)
    if "badcases" in report:
        paths["badcases"] = run_dir / "badcases.jsonl"
        with paths["badcases"].open("w", encoding="utf-8") as f:
            for case in report["badcases"]:
                f.write(json.dumps(_jsonable(case), ensure_ascii=False) + "\n")
    body = {k: v for k, v in report.items() if k not in ("rows", "badcases")}
    body["files"] = {k: p.name for k, p in paths.items()} | {"json": "report.json", "html": "report.html"}
    body["n_rows"] = len(rows)
    body["n_badcases"] = len(report.get("badcases") or [])
    paths["json"] = run_dir / "report.json"
    paths["json"].write_text(json.dumps(_jsonable(body), ensure_ascii=False, indent=1), encoding="utf-8")
    plots = render_plots(report)
    for name, png in plots.items():  # also as files, for the admin UI gallery
        (run_dir / f"{name}.png").write_bytes(png)
    paths["html"] = run_dir / "report.html"
    paths["html"].write_text(render_html(report, plots), encoding="utf-8")
    return paths


def record_run(store, report: dict[str, Any], run_dir: str | Path) -> None:
    """Add the run to SQLite (`eval_runs`): id = folder name, kind = mode, the summary, the folder path."""
    summary = _jsonable(report.get("summary") or {}) | {"errors": len(report.get("errors") or [])}
    store.add_eval_run(Path(run_dir).name, report.get("mode", ""), summary, str(run_dir))


# ---------------------------------------------------------------------------- plots


def render_plots(report: dict[str, Any]) -> dict[str, bytes]:
    """PNG plots for what the report holds: RGB accuracy vs noise, FAQ threshold sweep, retrieval hit@k,
    latency histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: dict[str, bytes] = {}

    def save(fig, name: str) -> None:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        plots[name] = buf.getvalue()

    curves = report.get("rgb_curves") or {}
    if curves:
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for name, curve in curves.items():
            pts = sorted((float(nr), p["value"]) for nr, p in curve.items() if p["value"] is not None and float(nr) < 1)
            if pts:
                line, = ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=f"{name} accuracy")
                color = line.get_color()
            else:
                color = None
            rej = curve.get("1.0") or curve.get("1")
            if rej and rej["value"] is not None:
                ax.scatter([1.0], [rej["value"]], marker="s", s=60, color=color, label=f"{name} rejection @1.0")
        ax.set_xlabel("noise rate")
        ax.set_ylabel("accuracy (rejection rate at 1.0)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("RGB: accuracy vs noise rate")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "rgb_noise")

    sweep = report.get("sweep") or []
    if sweep:
        fig, ax = plt.subplots(figsize=(6.4, 4))
        xs = [r["threshold"] for r in sweep]
        for key, label in (("in_scope_accuracy", "in-scope accuracy"), ("in_scope_precision", "in-scope precision"),
                           ("oos_recall", "OOS recall"), ("accuracy", "overall accuracy"),
                           ("top3_precision", "top-3 precision (suggest)")):
            if key in sweep[0]:
                ax.plot(xs, [r[key] for r in sweep], label=label)
        cal = report.get("calibration") or {}
        for key, style, label in (("answer_threshold", "-", "chosen answer"), ("suggest_threshold", "--", "chosen suggest")):
            if key in cal:
                ax.axvline(cal[key], color="k", linestyle=style, linewidth=1, label=f"{label} {cal[key]:.2f}")
        cur = report.get("current") or {}
        if "answer_threshold" in cur:
            ax.axvline(cur["answer_threshold"], color="grey", linestyle=":", linewidth=1,
                       label=f"configured answer {cur['answer_threshold']:.2f}")
        ax.set_xlabel("threshold")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("FAQ threshold sweep")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, "threshold_sweep")

    table = report.get("table") or []
    if report.get("mode") == "retrieval" and table:
        ks = [k for k in table[0] if k.startswith("hit@")]
        fig, ax = plt.subplots(figsize=(6.4, 4))
        width = 0.8 / max(1, len(table))
        for i, row in enumerate(table):
            ax.bar([j + i * width for j in range(len(ks))], [row[k] for k in ks], width=width, label=row["mode"])
        ax.set_xticks([j + width * (len(table) - 1) / 2 for j in range(len(ks))], ks)
        ax.set_ylim(0, 1.02)
        ax.set_title("Retrieval hit@k per mode")
        ax.legend(fontsize=8)
        save(fig, "retrieval_hits")

    lat = {k: [float(v) for v in vals if v is not None] for k, vals in (report.get("latency_ms") or {}).items()}
    lat = {k: v for k, v in lat.items() if v}
    if lat:
        fig, ax = plt.subplots(figsize=(6.4, 4))
        hi = max(max(v) for v in lat.values())
        lo = min(min(v) for v in lat.values())
        use_log = lo > 0 and hi / lo > 50
        import numpy as np

        bins = np.geomspace(lo, hi, 40) if use_log else 40
        for name, vals in lat.items():
            ax.hist(vals, bins=bins, alpha=0.5, label=name)
        if use_log:
            ax.set_xscale("log")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("questions")
        ax.set_title("Latency")
        ax.legend(fontsize=8)
        save(fig, "latency")
    return plots


# ---------------------------------------------------------------------------- HTML


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "✓" if value else "✗"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(_jsonable(value), ensure_ascii=False)[:300]
    return str(value)


def _table(rows: Sequence[dict], cols: Sequence[str] | None = None, limit: int | None = None) -> str:
    if not rows:
        return "<p><i>none</i></p>"
    if cols is None:
        cols = []
        for r in rows:
            cols += [k for k in r if k not in cols]
    shown = rows[:limit] if limit else rows
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))[:600]}</td>" for c in cols) + "</tr>" for r in shown)
    more = f"<p><i>{len(rows) - len(shown)} more rows in {QUESTIONS_CSV} / report.json</i></p>" if len(rows) > len(shown) else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _kv(d: dict) -> str:
    return _table([{"metric": k, "value": v} for k, v in d.items()], ["metric", "value"])


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top;text-align:left;max-width:420px;word-break:break-word}
th{background:#f3f3f3}.err{color:#a00}img{max-width:100%;border:1px solid #eee;margin:6px 0}
"""


def render_html(report: dict[str, Any], plots: dict[str, bytes] | None = None) -> str:
    """One self-contained page: summary, per-model metrics, comparison, plots, errors, per-question sample."""
    plots = render_plots(report) if plots is None else plots
    mode = report.get("mode", "")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>FAQ Bot eval · {html.escape(mode)}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>FAQ Bot evaluation · {html.escape(mode)}</h1>",
             f"<p>run <code>{html.escape(str(report.get('run_id', '')))}</code> · {html.escape(str(report.get('created', '')))}"
             f" · data <code>{html.escape(_fmt(report.get('data')))}</code></p>"]
    parts += ["<h2>Summary</h2>", _kv(report.get("summary") or {})]

    if report.get("calibration"):
        cal = dict(report["calibration"])
        metrics = cal.pop("metrics", {})
        parts += ["<h2>Calibration</h2>", _kv(cal), "<h3>At the chosen thresholds</h3>", _kv(metrics)]
    if report.get("current"):
        parts += ["<h2>At the configured thresholds</h2>", _kv(report["current"])]
    if report.get("table"):
        parts += ["<h2>Retrieval</h2>", _table(report["table"])]

    models = report.get("models") or {}
    if models:
        flat = []
        for name, m in models.items():
            row = {"model": name}
            for k, v in m.items():
                if k == "refusal":
                    row.update({f"refusal_{x}": m[k][x] for x in ("tp", "fp", "fn", "tn")})
                elif k == "latency_ms":
                    row.update({f"latency_{x}_ms": y for x, y in v.items()})
                elif not isinstance(v, (dict, list)):
                    row[k] = v
            flat.append(row)
        parts += ["<h2>Models</h2>", _table(flat)]
        for name, m in models.items():
            if m.get("stage_latency_ms"):
                parts += [f"<h3>{html.escape(name)}: latency per stage (ms)</h3>",
                          _table([{"stage": s, **v} for s, v in m["stage_latency_ms"].items()])]
            if m.get("curve"):
                parts += [f"<h3>{html.escape(name)}: RGB per noise rate</h3>",
                          _table([{"noise_rate": nr, **p} for nr, p in m["curve"].items()])]

    for name, comp in (report.get("comparison") or {}).items():
        parts.append(f"<h2>Base vs {html.escape(name)} ({comp['n']} paired items)</h2>")
        parts.append(_table([{"metric": k, **v} for k, v in comp["deltas"].items()],
                            ["metric", "base", "tuned", "delta", "lo", "hi", "n"]))
        if comp.get("by_group"):
            parts += ["<h3>Accuracy delta by noise rate</h3>",
                      _table([{"group": g, **v} for g, v in comp["by_group"].items()])]
        parts.append(f"<p>fixed {len(comp['fixed'])} · broke {len(comp['broke'])}</p>")
        changed = [r for r in comp["table"] if r["status"] in ("fixed", "broke")]
        parts.append(_table(changed, ["key", "status", "question", "expected", "base_output", "tuned_output"],
                            limit=_MAX_HTML_ROWS))

    titles = {"rgb_noise": "Accuracy vs noise rate", "threshold_sweep": "Threshold sweep",
              "retrieval_hits": "Retrieval hit@k", "latency": "Latency histogram"}
    if plots:
        parts.append("<h2>Plots</h2>")
        for name, png in plots.items():
            b64 = base64.b64encode(png).decode("ascii")
            parts.append(f"<h3>{html.escape(titles.get(name, name))}</h3>"
                         f"<img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>")
    if report.get("memory"):
        parts += ["<h2>Memory</h2>", _kv(report["memory"])]
    errors = report.get("errors") or []
    parts.append(f"<h2>Errors ({len(errors)})</h2>")
    parts.append("<ul>" + "".join(f"<li class='err'>{html.escape(str(e))}</li>" for e in errors[:500]) + "</ul>"
                 if errors else "<p>none</p>")
    rows = report.get("rows") or []
    if rows:
        cols = [c for c in rows[0] if c not in ("contexts", "raw", "labels", "stages_ms")]
        parts += [f"<h2>Per question (first {min(len(rows), _MAX_HTML_ROWS)} of {len(rows)})</h2>",
                  _table(rows, cols, limit=_MAX_HTML_ROWS)]
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------- config edit


_SECTION = re.compile(r"^faq\s*:\s*(#.*)?$")
_TOP_LEVEL = re.compile(r"^[^\s#]")


def _format_threshold(value: float) -> str:
    return repr(round(float(value), 4))


def update_faq_thresholds(path: str | Path, answer_threshold: float, suggest_threshold: float) -> Path:
    """Set `faq.answer_threshold` and `faq.suggest_threshold` in a YAML config, in place, by a line edit.

    Only those two lines change (values replaced, indentation and trailing comments kept, the comment column
    kept where the new value fits); a missing key is added at the top of the `faq:` section, a missing section
    at the end of the file. The result is validated with `load_config` before it replaces the file (atomic).

    Raises:
        ValueError: suggest above answer, a `faq:` section written in flow style, or a result that fails validation.
    """
    from faq_bot.config import load_config

    if suggest_threshold > answer_threshold:
        raise ValueError(f"`faq.suggest_threshold` ({suggest_threshold}) must be <= `faq.answer_threshold` "
                         f"({answer_threshold}).")
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    lines = text.splitlines(keepends=True)
    values = {"answer_threshold": _format_threshold(answer_threshold),
              "suggest_threshold": _format_threshold(suggest_threshold)}

    start = next((i for i, ln in enumerate(lines) if _SECTION.match(ln.rstrip("\r\n"))), None)
    if start is None:
        if any(re.match(r"^faq\s*:", ln) for ln in lines):
            raise ValueError(f"{path}: the `faq:` section is in flow style; write it as a block to calibrate it.")
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines += ["\n", "faq:\n"] + [f"  {k}: {v}\n" for k, v in values.items()]
    else:
        end = next((i for i in range(start + 1, len(lines)) if _TOP_LEVEL.match(lines[i])), len(lines))
        indent = "  "
        for i in range(start + 1, end):
            m = re.match(r"^(\s+)\S", lines[i])
            if m and not lines[i].lstrip().startswith("#"):
                indent = m.group(1)
                break
        missing = dict(values)
        for i in range(start + 1, end):
            m = re.match(r"^(\s+)(answer_threshold|suggest_threshold)([ \t]*:[ \t]*)([^#\r\n]*?)([ \t]*)(#[^\r\n]*)?(\r?\n)?$", lines[i])
            if not m or m.group(1) != indent:
                continue
            ind, key, sep, _old, gap, comment, nl = m.groups()
            head = f"{ind}{key}{sep}{missing.pop(key, values[key])}"
            if comment:
                col = len(ind) + len(key) + len(sep) + len(_old) + len(gap)
                head = head.ljust(col) if len(head) < col else head + " "
                head += comment
            lines[i] = head + (nl or "")
        insert = [f"{indent}{k}: {v}\n" for k, v in missing.items()]
        lines[start + 1:start + 1] = insert
    new_text = "".join(lines)

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(new_text, encoding="utf-8")
    try:
        cfg = load_config(tmp, environ={})
    except ValueError as e:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"{path}: the calibrated config would not validate: {e}") from None
    if (cfg.faq.answer_threshold, cfg.faq.suggest_threshold) != (float(values["answer_threshold"]),
                                                                  float(values["suggest_threshold"])):
        tmp.unlink(missing_ok=True)
        raise ValueError(f"{path}: the edit did not take (duplicate `faq` keys?); file left unchanged.")
    os.replace(tmp, path)
    logger.info("Wrote faq.answer_threshold=%s, faq.suggest_threshold=%s to %s", values["answer_threshold"],
                values["suggest_threshold"], path)
    return path
