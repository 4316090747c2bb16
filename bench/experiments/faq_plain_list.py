"""README's plain question/answer list figure: the sample FAQ with every similar question removed (what a company
that uploads only questions and answers has), scored on the sample eval set's single-turn questions, with and
without answer examples (`faq.answer_examples`).

    .venv/bin/python bench/experiments/faq_plain_list.py

Writes the stripped FAQ and the queries to a temporary folder, runs `python -m faq_bot eval faq --kb ... --queries
...` once per setting (~10 s each on 2 cores) and prints a markdown table (thresholds: the configured ones).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _sample import ROOT, sample_faqs, sample_queries


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="faq-plain-") as tmp:
        kb, queries = Path(tmp) / "plain_faq.jsonl", Path(tmp) / "queries.jsonl"
        plain = [{k: v for k, v in f.items() if k != "similar_questions"} for f in sample_faqs()]
        kb.write_text("".join(json.dumps(f, ensure_ascii=False) + "\n" for f in plain), encoding="utf-8")
        queries.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in sample_queries()),
                           encoding="utf-8")
        for on in (False, True):
            cmd = [sys.executable, "-m", "faq_bot", "eval", "faq", "--no-progress", "--kb", str(kb), "--queries",
                   str(queries), "--set", f"faq.answer_examples={str(on).lower()}"]
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
            s = json.loads(out.stdout.strip().splitlines()[-1])
            m = json.loads((Path(s["run_dir"]) / "report.json").read_text(encoding="utf-8"))["matcher"]
            rows.append((on, s, m))
    print("| answer examples | top-1 (68 paraphrases) | in-scope acc / OOS recall at the configured thresholds | "
          "head |")
    print("|---|---|---|---|")
    for on, s, m in rows:
        head = (f"kept (held-out {m.get('heldout_source')}: {m.get('untrained_top1'):.3f} → "
                f"{m.get('trained_top1'):.3f})" if m.get("head_used") else f"none ({m.get('reason', '')})")
        print(f"| {'on' if on else 'off'} | {100 * s['top1_accuracy']:.1f}% | "
              f"{100 * s['current_in_scope_accuracy']:.1f}% / {100 * s['current_oos_recall']:.1f}% | {head} |")


if __name__ == "__main__":
    main()
