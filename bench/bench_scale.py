"""How cross_encoder.rerank's time and memory grow with the number of candidate pairs.

For each size N (default 1k, 4k, 16k, 64k pairs) a fresh Python process loads the backbone, builds a
candidate set of N (query, document id) pairs from the demo collections' BM25 top-100 (SciFact and
NFCorpus test, 62,300 candidates; beyond that queries repeat under new ids), and runs cross_encoder.rerank on
it, printing seconds, pairs/s, the time spent in document look-ups, and the peak resident memory
(resource.getrusage ru_maxrss) before and after re-ranking. A fresh process per size keeps each peak
its own (ru_maxrss only ever grows within a process).

Documents are never all loaded: cross_encoder.rerank looks them up through DocumentLookup (ir_datasets'
docs_store) one chunk of `queries_per_chunk` queries at a time (default 256), so memory grows with the
chunk (queries_per_chunk x depth pairs and their texts), not with the collection or the candidate count.

    python bench/bench_scale.py                          # tiny-bert, 1k 4k 16k 64k
    python bench/bench_scale.py --sizes 1000,4000        # shorter
    python bench/bench_scale.py --backbone minilm-l6 --sizes 1000,4000
"""
import argparse
import json
import subprocess
import sys
import time

from _util import add_threads_argument, set_threads, machine_line, peak_rss_mb, print_table
import common  # noqa: E402
import cross_encoder  # noqa: E402
import paper_setup  # noqa: E402

COLLECTIONS = ("scifact", "nfcorpus")


class PrefixedLookup:
    """Several collections' DocumentLookups behind one: doc ids are 'collection/doc_id'. It only forwards
    get_many calls (and times them); nothing is loaded up front."""

    def __init__(self, lookups):
        self.lookups, self.seconds, self.calls = lookups, 0.0, 0

    def get_many(self, doc_ids):
        start = time.perf_counter()
        wanted = {}
        for key in doc_ids:
            name, doc_id = key.split("/", 1)
            wanted.setdefault(name, set()).add(doc_id)
        texts = {f"{name}/{d}": text for name, ids in wanted.items()
                 for d, text in self.lookups[name].get_many(ids).items()}
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return texts


def candidate_set(size: int):
    """(queries, candidates, lookup) with exactly `size` pairs: whole queries of the BM25 top-100 (the last
    one cut short), collections interleaved query by query, repeating queries under new ids if needed."""
    by_name = {c.name: c for c in paper_setup.DEMO_COLLECTIONS}
    data = {name: common.load_eval_data(by_name[name], depth=100) for name in COLLECTIONS}
    lists = {name: list(d.candidates.items()) for name, d in data.items()}
    ordered = [(name, *lists[name][i]) for i in range(max(map(len, lists.values())))
               for name in COLLECTIONS if i < len(lists[name])]
    queries, candidates, total, repeat = {}, {}, 0, 0
    while total < size:
        for name, qid, docs in ordered:
            if total >= size:
                break
            key = f"{name}/{qid}" + (f"#{repeat}" if repeat else "")
            docs = [f"{name}/{d}" for d in docs[:size - total]]
            queries[key], candidates[key] = data[name].queries[qid], docs
            total += len(docs)
        repeat += 1
    return queries, candidates, PrefixedLookup({n: d.documents for n, d in data.items()}), repeat - 1


def one(size: int, args) -> dict:
    import torch
    model, tokenizer = cross_encoder.load_backbone(cross_encoder.get_backbone(args.backbone), seed=0)
    pair_tokenizer = cross_encoder.make_pair_tokenizer(model, tokenizer, args.max_length, args.query_max_length)
    queries, candidates, lookup, repeats = candidate_set(size)
    cross_encoder.score_pairs(model, pair_tokenizer, ["warm up"] * 8, ["a passage"] * 8)
    rss_before = peak_rss_mb()
    start = time.perf_counter()
    run = cross_encoder.rerank(model, pair_tokenizer, queries, candidates, lookup, batch_size=args.batch_size,
                               precision=args.precision, queries_per_chunk=args.queries_per_chunk)
    seconds = time.perf_counter() - start
    assert sum(map(len, run.values())) == size
    return {"size": size, "queries": len(queries), "repeats": repeats, "seconds": seconds,
            "lookup_seconds": lookup.seconds, "lookup_calls": lookup.calls, "rss_before_mb": rss_before,
            "rss_peak_mb": peak_rss_mb(), "threads": torch.get_num_threads()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,4000,16000,64000", help="comma-separated pair counts")
    parser.add_argument("--backbone", default="tiny-bert")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--query-max-length", type=int, default=64)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--queries-per-chunk", type=int, default=256)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # internal: one size, JSON out
    add_threads_argument(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    if args.one is not None:
        print("RESULT " + json.dumps(one(args.one, args)), flush=True)
        return

    print(f"machine: {machine_line()}")
    print(f"model: {args.backbone}, batch {args.batch_size}, max length {args.max_length}, query budget "
          f"{args.query_max_length}, {args.precision}, queries_per_chunk {args.queries_per_chunk}; candidates: "
          f"{' + '.join(COLLECTIONS)} BM25 top-100; one fresh process per size")
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        argv = [sys.executable, __file__, "--one", str(size), "--backbone", args.backbone, "--batch-size",
                str(args.batch_size), "--max-length", str(args.max_length), "--query-max-length",
                str(args.query_max_length), "--precision", args.precision, "--queries-per-chunk",
                str(args.queries_per_chunk), "--threads", str(args.threads)]
        done = subprocess.run(argv, capture_output=True, text=True)
        line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
        if done.returncode or line is None:
            sys.exit(f"size {size} failed:\n{done.stderr[-3000:]}")
        r = json.loads(line[7:])
        rows.append([f"{size:,}", r["queries"], r["repeats"], f"{r['seconds']:.1f}", f"{size / r['seconds']:.1f}",
                     f"{r['lookup_seconds']:.2f} ({r['lookup_calls']})", f"{r['rss_before_mb']:.0f}",
                     f"{r['rss_peak_mb']:.0f}", f"{r['rss_peak_mb'] - r['rss_before_mb']:+.0f}"])
        print(f"  {size:,} pairs: {r['seconds']:.1f} s", file=sys.stderr, flush=True)
    print_table(["pairs", "queries", "repeats", "seconds", "pairs/s", "doc look-up s (calls)",
                 "RSS before MB", "peak RSS MB", "growth MB"], rows)


if __name__ == "__main__":
    main()
