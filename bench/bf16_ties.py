"""How many scores a bf16 classification head ties, and how much the order of those ties moves nDCG@10.

A trained cell's model re-ranks one demo collection's BM25 candidates under bf16 autocast twice: with the
head in bf16 (what the kit did before cross_encoder.score_head_in_fp32) and with the head in fp32 (what it
does now). For each it prints the number of distinct scores per query, the scores that share their value
with another candidate of the same query, the queries with a tie in their top 11, and nDCG@10: for the
bf16 head as trec_eval breaks its ties (by document id) and its range over random tie orders.

    python bench/bf16_ties.py --model results/cells/<cell>/model --collection scifact --depth 50
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import common  # noqa: E402
import cross_encoder  # noqa: E402
import paper_setup  # noqa: E402


def scores_with_bf16_head(model, pair_tokenizer, queries, passages, batch_size):
    """The whole forward, head included, under bf16 autocast; logits cast to fp32 afterwards."""
    order = np.argsort([-(len(q) + len(p)) for q, p in zip(queries, passages)], kind="stable")
    out = np.empty(len(queries), dtype=np.float32)
    model.eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            inputs = pair_tokenizer([queries[i] for i in chosen], [passages[i] for i in chosen])
            out[chosen] = model(**inputs).logits.float().view(-1).numpy()
    return out


def describe(name, run, data, rng, orders):
    counts = [Counter(ranking.values()) for ranking in run.values()]
    distinct, pairs = sum(map(len, counts)), sum(map(len, run.values()))
    tied = sum(n for count in counts for n in count.values() if n > 1)
    top_ties = sum(len(set(sorted(r.values(), reverse=True)[:11])) < min(11, len(r)) for r in run.values())
    ndcg = common.evaluate(run, data.qrels, ["nDCG@10"])[0]["nDCG@10"]
    shuffled = [common.evaluate(_break_ties_at_random(run, rng), data.qrels, ["nDCG@10"])[0]["nDCG@10"]
                for _ in range(orders)]
    print(f"{name}: {distinct} distinct scores of {pairs}; {tied} scores share their value with another of the "
          f"query; {top_ties} of {len(run)} queries have a tie in their top 11; nDCG@10 {ndcg:.4f} as trec_eval "
          f"orders ties (random tie orders: {min(shuffled):.4f} to {max(shuffled):.4f})")


def _break_ties_at_random(run, rng):
    """Ranks that keep the score order and order equal scores at random, as distinct scores."""
    out = {}
    for qid, ranking in run.items():
        docs = list(ranking)
        keys = rng.random(len(docs))
        ranked = sorted(range(len(docs)), key=lambda i: (-ranking[docs[i]], keys[i]))
        out[qid] = {docs[i]: float(len(docs) - rank) for rank, i in enumerate(ranked)}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a trained cell's model/ folder")
    parser.add_argument("--collection", default="scifact", help="a demo collection")
    parser.add_argument("--depth", type=int, default=50, help="BM25 candidates re-ranked per query")
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--orders", type=int, default=200, help="random tie orders tried")
    args = parser.parse_args()
    common.choose_ir_datasets_home(demo=True)
    collection = next(c for c in paper_setup.DEMO_COLLECTIONS if c.name == args.collection)
    data = common.load_eval_data(collection, depth=args.depth)
    pairs = [(q, d) for q in sorted(data.candidates) for d in data.candidates[q]]
    texts = data.documents.get_many({d for _, d in pairs})
    queries, passages = [data.queries[q] for q, _ in pairs], [texts[d] for _, d in pairs]
    rng = np.random.default_rng(0)
    model, pair_tokenizer = cross_encoder.load_trained(Path(args.model), args.max_length, 64)
    fp32_head = cross_encoder.score_pairs(model, pair_tokenizer, queries, passages, batch_size=args.batch_size,
                                          precision="bf16")
    import transformers
    plain = transformers.AutoModelForSequenceClassification.from_pretrained(args.model)  # the head left in bf16
    bf16_head = scores_with_bf16_head(plain, pair_tokenizer, queries, passages, args.batch_size)
    for name, scores in (("head in bf16", bf16_head), ("head in fp32", fp32_head)):
        run = {}
        for (q, d), s in zip(pairs, scores.tolist()):
            run.setdefault(q, {})[d] = s
        describe(name, run, data, rng, args.orders)


if __name__ == "__main__":
    main()
