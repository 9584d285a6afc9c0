"""Re-ranking throughput: the kit's cross_encoder.score_pairs vs sentence_transformers.CrossEncoder.predict.

Both load the very same weights (the kit's minilm-l6 backbone with its seed-0 random head, saved once to a
temporary folder), score the same (query, passage) pairs from the demo collections' BM25 candidates with
the same batch size, max length and precision, and alternate several times in one process so that the
load of a shared machine hits both alike. Prints pairs/s per round, medians, the ratio, and the largest
absolute difference between the two systems' raw logits.

    python bench/bench_rerank.py                      # 2000 pairs, batch 64, length 192, fp32, 5 rounds
    python bench/bench_rerank.py --rounds 3 --chunk 250  # alternate every 250 pairs (loaded machines)
    python bench/bench_rerank.py --precision bf16 --rounds 3
"""
import argparse
import contextlib

from _util import (add_threads_argument, demo_pairs, load_kit_model, machine_line, median, print_table,
                   save_shared_model, set_threads, timed)
import cross_encoder  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--query-max-length", type=int, default=64)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--rounds", type=int, default=5, help="kit/ST alternations")
    parser.add_argument("--chunk", type=int, default=0,
                        help="alternate kit/ST every CHUNK pairs within a round (0: once per round, on all pairs)")
    parser.add_argument("--backbone", default="minilm-l6")
    add_threads_argument(parser)
    args = parser.parse_args()
    set_threads(args.threads)

    import numpy as np
    import torch
    from sentence_transformers import CrossEncoder

    pairs = demo_pairs(args.pairs)
    queries, passages = [q for q, _ in pairs], [p for _, p in pairs]
    folder, _holder = save_shared_model(args.backbone, seed=0)

    model, tokenizer = load_kit_model(folder)
    pair_tokenizer = cross_encoder.make_pair_tokenizer(model, tokenizer, args.max_length, args.query_max_length)
    st = CrossEncoder(folder, num_labels=1, max_length=args.max_length, activation_fn=torch.nn.Identity(),
                      device="cpu")
    st_model = st[0].model if hasattr(st[0], "model") else st[0].auto_model
    print(f"machine: {machine_line()}")
    print(f"model: {args.backbone} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters), attention "
          f"kit {model.config._attn_implementation} / ST {st_model.config._attn_implementation}; "
          f"{len(pairs)} pairs (scifact + nfcorpus BM25 top-100), batch {args.batch_size}, max length "
          f"{args.max_length}, query budget {args.query_max_length}, {args.precision}")

    # The kit cuts the query to its own budget; ST truncates the pair 'longest_first'. They tokenize alike
    # when every query fits its budget and is no longer than half the pair budget: check it.
    q_lengths = [len(ids) for ids in tokenizer(queries, add_special_tokens=False)["input_ids"]]
    fits = sum(n <= min(args.query_max_length, (args.max_length - 3) // 2) for n in q_lengths)
    print(f"queries: {max(q_lengths)} tokens at most; {fits}/{len(pairs)} pairs tokenize the same in both systems")

    def kit(lo, hi):
        return cross_encoder.score_pairs(model, pair_tokenizer, queries[lo:hi], passages[lo:hi], batch_size=args.batch_size,
                                         device="cpu", precision=args.precision)

    def sentence_transformers(lo, hi):
        cast = (torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())
        with cast:
            return st.predict(pairs[lo:hi], batch_size=args.batch_size, show_progress_bar=False, convert_to_numpy=True)

    # Warm-up (one-off allocations, lazy imports) on a few batches, not timed.
    cross_encoder.score_pairs(model, pair_tokenizer, queries[:128], passages[:128], batch_size=args.batch_size)
    st.predict(pairs[:128], batch_size=args.batch_size, show_progress_bar=False)

    # Each round scores all pairs with both systems. With --chunk C, a round walks the pairs C at a time and
    # runs kit and ST back to back on each chunk (who goes first alternates), so that load from other
    # processes on a shared machine hits both within seconds of each other; each system still sorts its
    # chunk by length, as it would any input.
    size = args.chunk or len(pairs)
    chunks = [(s, min(s + size, len(pairs))) for s in range(0, len(pairs), size)]
    rows, speeds, chunk_ratios = [], {"kit": [], "ST": []}, []
    kit_scores, st_scores = np.empty(len(pairs), np.float32), np.empty(len(pairs), np.float32)
    for round_ in range(args.rounds):
        seconds = {"kit": 0.0, "ST": 0.0}
        for c, (lo, hi) in enumerate(chunks):
            spent = {}
            order = [("kit", kit), ("ST", sentence_transformers)]
            if (round_ + c) % 2:
                order.reverse()
            for name, fn in order:
                spent[name], scores = timed(lambda: fn(lo, hi))
                (kit_scores if name == "kit" else st_scores)[lo:hi] = scores
                seconds[name] += spent[name]
            chunk_ratios.append(spent["ST"] / spent["kit"])
        for name in ("kit", "ST"):
            speeds[name].append(len(pairs) / seconds[name])
            rows.append([round_ + 1, name, f"{seconds[name]:.2f}", f"{len(pairs) / seconds[name]:.1f}"])
    print_table(["round", "system", "seconds", "pairs/s"], rows)
    diff = float(np.max(np.abs(kit_scores.astype(np.float64) - st_scores.astype(np.float64))))
    kit_med, st_med = median(speeds["kit"]), median(speeds["ST"])
    print()
    print_table(["system", "median pairs/s", "min", "max"],
                [[n, f"{median(v):.1f}", f"{min(v):.1f}", f"{max(v):.1f}"] for n, v in speeds.items()])
    ratios = [k / s for k, s in zip(speeds["kit"], speeds["ST"])]
    print(f"\nkit / ST: {kit_med / st_med:.2f}x (ratio of medians); per-round ratios "
          f"{', '.join(f'{r:.2f}' for r in ratios)}")
    if len(chunks) > 1:
        print(f"per-chunk time ratios ST/kit ({len(chunk_ratios)} chunks of {size}): median "
              f"{median(chunk_ratios):.2f}, min {min(chunk_ratios):.2f}, max {max(chunk_ratios):.2f}")
    print(f"max |kit - ST| over {len(pairs)} scores: {diff:.2e} ({args.precision})")


if __name__ == "__main__":
    main()
