"""Where cross_encoder.score_pairs spends its time (tokenization vs model vs the rest), and what a proposed
PairTokenizer patch (below, `ProposedPairTokenizer`) would save, measured against the kit's own.

    python bench/profile_score_pairs.py --backbone tiny-bert --pairs 2000 --rounds 5
    python bench/profile_score_pairs.py --backbone minilm-l6 --pairs 512 --rounds 3

Part 1 wraps the kit's PairTokenizer.__call__ and the model's forward with timers and runs
cross_encoder.score_pairs once per round: tokenization / model / rest (sorting, slicing, tensor to numpy).
Part 2 alternates the stock and the proposed tokenizer: first tokenization alone over the same batches
(the length-sorted batches score_pairs makes), then cross_encoder.score_pairs end to end with each, checking
that both give identical input ids and scores.
"""
import argparse
import time

import numpy as np

from _util import add_threads_argument, set_threads, demo_pairs, machine_line, median, print_table
import cross_encoder  # noqa: E402


class ProposedPairTokenizer(cross_encoder.PairTokenizer):
    """The patch proposed for cross_encoder.PairTokenizer (see bench/README.md), as a subclass so that it can be
    measured without touching common.py.

    1. Passages are cut at a space before tokenization. A fast tokenizer encodes the whole text and only
       then truncates, so a 10,000-character abstract costs as much as 50 passages of budget length. The
       cut keeps `chars_per_token` characters per token of the pair budget (8; English WordPiece averages
       4.6 and at most 6.5 on the demo passages), and a row whose cut passage does not fill the budget is
       tokenized again from the full passage, so the ids are exactly those of the uncut passage.
    2. Each distinct query of a call is cut once (score_pairs batches repeat a query up to 64 times)."""

    chars_per_token = 8

    def cut_queries(self, queries):
        unique = list(dict.fromkeys(queries))
        cut = dict(zip(unique, super().cut_queries(unique)))
        return [cut[q] for q in queries]

    @staticmethod
    def _cut_at_space(text: str, limit: int) -> str:
        if len(text) <= limit:
            return text
        space = text.rfind(" ", 0, limit)
        return text[:space].rstrip() if space > 0 else text

    def __call__(self, queries, passages):
        limit = self.chars_per_token * self.max_length
        cut = [self._cut_at_space(p, limit) for p in passages]
        queries = self.cut_queries(queries)

        def encode(texts):
            return self.tokenizer(queries, texts, truncation="only_second", max_length=self.max_length,
                                  padding=True, return_tensors="pt", return_token_type_ids=self.use_token_types)
        encoded = encode(cut)
        if any(c is not p for c, p in zip(cut, passages)):
            filled = encoded["attention_mask"].sum(1) >= self.max_length
            redo = [i for i, (c, p) in enumerate(zip(cut, passages)) if c is not p and not filled[i]]
            if redo:  # a cut passage ran short of the budget: tokenize its full text (exact ids)
                for i in redo:
                    cut[i] = passages[i]
                encoded = encode(cut)
        return dict(encoded)


def sorted_batches(queries, passages, batch_size):
    """The batches cross_encoder.score_pairs makes (same length sort)."""
    lengths = np.fromiter((len(q) + len(p) for q, p in zip(queries, passages)), dtype=np.int64, count=len(queries))
    order = np.argsort(-lengths, kind="stable")
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny-bert")
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--query-max-length", type=int, default=64)
    add_threads_argument(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    import torch

    pairs = demo_pairs(args.pairs)
    queries, passages = [q for q, _ in pairs], [p for _, p in pairs]
    model, tokenizer = cross_encoder.load_backbone(cross_encoder.get_backbone(args.backbone), seed=0)
    stock = cross_encoder.make_pair_tokenizer(model, tokenizer, args.max_length, args.query_max_length)
    proposed = ProposedPairTokenizer(stock.tokenizer, stock.max_length, stock.query_max_length, stock.use_token_types)
    print(f"machine: {machine_line()}")
    print(f"model: {args.backbone}, {len(pairs)} pairs (scifact + nfcorpus BM25 top-100), batch {args.batch_size}, "
          f"max length {args.max_length}, query budget {args.query_max_length}, fp32; passages "
          f"{np.mean([len(p) for p in passages]):.0f} characters on average, {max(len(p) for p in passages)} at most")

    # ------------------------------------------------------------------ part 1: where the time goes
    spent = {"tokenize": 0.0, "model": 0.0}

    class TimedTokenizer(cross_encoder.PairTokenizer):
        def __call__(self, q, p):
            start = time.perf_counter()
            try:
                return super().__call__(q, p)
            finally:
                spent["tokenize"] += time.perf_counter() - start

    timed_tokenizer = TimedTokenizer(stock.tokenizer, stock.max_length, stock.query_max_length, stock.use_token_types)
    forward = model.forward

    def timed_forward(*a, **k):
        start = time.perf_counter()
        try:
            return forward(*a, **k)
        finally:
            spent["model"] += time.perf_counter() - start

    rows, shares = [], []
    cross_encoder.score_pairs(model, stock, queries[:128], passages[:128], batch_size=args.batch_size)  # warm-up
    for round_ in range(args.rounds):
        spent.update(tokenize=0.0, model=0.0)
        model.forward = timed_forward
        start = time.perf_counter()
        cross_encoder.score_pairs(model, timed_tokenizer, queries, passages, batch_size=args.batch_size)
        total = time.perf_counter() - start
        model.forward = forward
        rest = total - spent["tokenize"] - spent["model"]
        shares.append(spent["tokenize"] / total)
        rows.append([round_ + 1, f"{total:.2f}", f"{spent['tokenize']:.2f} ({spent['tokenize'] / total:.0%})",
                     f"{spent['model']:.2f} ({spent['model'] / total:.0%})", f"{rest:.3f} ({rest / total:.1%})",
                     f"{len(pairs) / total:.1f}"])
    print("\nPart 1: cross_encoder.score_pairs, stock PairTokenizer")
    print_table(["round", "total s", "tokenization s", "model s", "rest s", "pairs/s"], rows)
    print(f"median tokenization share {median(shares):.0%}")

    # ------------------------------------------------------------------ part 2: stock vs proposed
    batches = sorted_batches(queries, passages, args.batch_size)
    same = all(all(torch.equal(a[k], b[k]) for k in a) for a, b in
               ((stock([queries[i] for i in c], [passages[i] for i in c]),
                 proposed([queries[i] for i in c], [passages[i] for i in c])) for c in batches))
    print(f"\nPart 2: identical input ids from both tokenizers on all {len(batches)} batches: {same}")

    def tokenize_all(pt):
        for c in batches:
            pt([queries[i] for i in c], [passages[i] for i in c])

    results = {"tokenize stock": [], "tokenize proposed": [], "score_pairs stock": [], "score_pairs proposed": []}
    scores = {}
    for round_ in range(args.rounds):
        order = [("stock", stock), ("proposed", proposed)]
        if round_ % 2:
            order.reverse()
        for name, pt in order:
            start = time.perf_counter()
            tokenize_all(pt)
            results[f"tokenize {name}"].append(len(pairs) / (time.perf_counter() - start))
        for name, pt in order:
            start = time.perf_counter()
            scores[name] = cross_encoder.score_pairs(model, pt, queries, passages, batch_size=args.batch_size)
            results[f"score_pairs {name}"].append(len(pairs) / (time.perf_counter() - start))
    diff = float(np.max(np.abs(scores["stock"] - scores["proposed"])))
    print_table(["what", "median pairs/s", "per round"],
                [[k, f"{median(v):.1f}", " ".join(f"{x:.0f}" for x in v)] for k, v in results.items()])
    for what in ("tokenize", "score_pairs"):
        ratios = [p / s for p, s in zip(results[f"{what} proposed"], results[f"{what} stock"])]
        print(f"{what}: proposed / stock {median(results[f'{what} proposed']) / median(results[f'{what} stock']):.2f}x "
              f"(ratio of medians), per-round ratios {', '.join(f'{r:.2f}' for r in ratios)}")
    print(f"max |stock - proposed| score: {diff:.1e}")


if __name__ == "__main__":
    main()
