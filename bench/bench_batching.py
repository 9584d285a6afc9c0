"""Re-ranking and training batches: tokenized on the fly or from stored ids, by pair count or token budget, padded or not.

Real (query, passage) pairs from the demo collections' BM25 candidates, one model, one process. The
re-ranking variants score the same pairs and alternate round by round (the order flips every round):
- on the fly: `score_pairs` as before stored tokens: batches of --batch-size pairs sorted by characters,
  tokenized batch by batch;
- stored ids: the same batches padded from ids tokenized beforehand (what `rerank` does with
  results/tokens): the scores must come out bit-identical;
- token budget: pairs sorted by token length, up to --token-budget tokens per batch counting padding;
- unpadded: the same budget in real tokens, each batch packed into one row (extras/unpadded.py).
Per variant: pairs/s per round and the median, tokens the model computed per real token (padding), and the
largest score difference to the on-the-fly scores. Tokenizing all pairs once, the stored ids' one-off cost,
is timed on its own. Training (--train-steps > 0): the training step (bce, clip, fused AdamW) on the same
batches, padded and unpadded, alternating.

    python bench/bench_batching.py --backbone minilm-l6 --max-length 192 --pairs 512 --rounds 3
    python bench/bench_batching.py --backbone tiny-bert --pairs 4000 --rounds 3 --threads 1
"""
import argparse
import time

from _util import add_threads_argument, demo_pairs, machine_line, median, print_table, set_threads
from extras import token_batches  # noqa: E402
import cross_encoder  # noqa: E402
from extras import unpadded  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--query-max-length", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64, help="pairs per batch (on the fly, stored ids)")
    parser.add_argument("--token-budget", type=int, default=0, help="tokens per batch; 0: batch size x max length")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--gpu", type=int, default=-1)
    parser.add_argument("--train-steps", type=int, default=0, help="timed training steps per round and path (0: skip)")
    parser.add_argument("--train-batch", type=int, default=16, help="pairs per training step")
    add_threads_argument(parser)
    args = parser.parse_args()
    set_threads(args.threads)

    import numpy as np
    import torch
    device = cross_encoder.choose_device(args.gpu)
    model, tokenizer = cross_encoder.load_backbone(cross_encoder.get_backbone(args.backbone), seed=0, device=device)
    pair_tokenizer = cross_encoder.make_pair_tokenizer(model, tokenizer, args.max_length, args.query_max_length)
    budget = args.token_budget or args.batch_size * pair_tokenizer.max_length
    pairs = demo_pairs(args.pairs)
    queries, passages = [q for q, _ in pairs], [p for _, p in pairs]
    on_gpu = device.startswith("cuda")

    def sync():
        if on_gpu:
            torch.cuda.synchronize(device)

    start = time.perf_counter()
    tokens = token_batches.encode_pairs(pair_tokenizer, queries, passages)
    tokenizing = time.perf_counter() - start
    lengths = tokens.lengths
    print(f"machine: {machine_line()}")
    print(f"model: {args.backbone}, attention {model.config._attn_implementation}, {args.precision} on {device}; "
          f"{len(pairs)} pairs, max length {pair_tokenizer.max_length}, {lengths.mean():.0f} real tokens per pair "
          f"(min {lengths.min()}, max {lengths.max()}); batch {args.batch_size} pairs, token budget {budget}")
    print(f"tokenizing every pair once (encode_pairs): {tokenizing:.2f} s, {len(pairs) / tokenizing:,.0f} pairs/s\n")

    def char_batches():
        chars = np.fromiter((len(q) + len(p) for q, p in pairs), dtype=np.int64, count=len(pairs))
        order = np.argsort(-chars, kind="stable")
        return [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]

    def computed(batches, padded):  # tokens the model runs per real token
        return sum(len(b) * lengths[b].max() if padded else lengths[b].sum() for b in batches) / lengths.sum()

    common = dict(batch_size=args.batch_size, device=device, precision=args.precision)
    variants = {
        "on the fly (pair count)": (lambda: cross_encoder.score_pairs(model, pair_tokenizer, queries, passages, **common),
                                    computed(char_batches(), True)),
        "stored ids (pair count)": (lambda: cross_encoder.score_pairs(model, pair_tokenizer, queries, passages,
                                                                      tokens=tokens, **common),
                                    computed(char_batches(), True)),
        "stored ids, token budget, padded": (
            lambda: cross_encoder.score_pairs(model, pair_tokenizer, queries, passages, tokens=tokens,
                                              token_budget=budget, **common),
            computed(token_batches.token_budget_batches(lengths, budget, True), True)),
    }
    if unpadded.unsupported_reason(model) is None:
        variants["stored ids, token budget, unpadded"] = (
            lambda: cross_encoder.score_pairs(model, pair_tokenizer, queries, passages, tokens=tokens,
                                              token_budget=budget, unpad=True, **common), 1.0)
    else:
        print(f"unpadded: not for this model ({unpadded.unsupported_reason(model)})")
    scores, times = {}, {name: [] for name in variants}
    for name, (run, _) in variants.items():  # warm-up, and the scores compared
        scores[name] = run()
    names = list(variants)
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            sync()
            start = time.perf_counter()
            variants[name][0]()
            sync()
            times[name].append(time.perf_counter() - start)
    reference = scores[names[0]]
    rows = []
    for name in names:
        per_round = ", ".join(f"{len(pairs) / t:,.1f}" for t in times[name])
        rows.append([name, per_round, f"{len(pairs) / median(times[name]):,.1f}",
                     f"{median(times[names[0]]) / median(times[name]):.2f}x", f"{variants[name][1]:.3f}",
                     f"{float(np.max(np.abs(scores[name] - reference))):.1e}"])
    print_table(["re-ranking", "pairs/s per round", "median pairs/s", "vs on the fly", "tokens run / real",
                 "max |diff|"], rows)

    if args.train_steps:
        print()
        train(args, model, pair_tokenizer, pairs, device, sync, np, torch)


def train(args, model, pair_tokenizer, pairs, device, sync, np, torch):
    """The training step, padded vs unpadded, on the same pre-tokenized batches (pairs as (q, d+, d-) halves)."""
    import common
    import losses
    bce = losses.LOSSES["bce"]
    half = args.train_batch // 2
    batches = []
    for k in range(args.train_steps + 2):
        chosen = [pairs[(k * args.train_batch + i) % len(pairs)] for i in range(args.train_batch)]
        batch = common.Batch(queries=[q for q, _ in chosen[:half]],
                             docs=[[chosen[i][1], chosen[half + i][1]] for i in range(half)],
                             targets=torch.tensor([[1.0, 0.0]] * half))
        batches.append((pair_tokenizer.batch(batch), unpadded.packed_batch(pair_tokenizer, batch)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-12, fused=True)  # tiny lr: the weights stay ~fixed
    model.train()

    def steps(path, chosen):
        for padded, packed in chosen:
            inputs, targets = padded if path == "padded" else packed
            with cross_encoder.autocast(device, args.precision):
                logits = unpadded.forward_logits(model, inputs, device)
            loss = bce(logits.float().view(targets.shape), targets.to(device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync()

    paths = ["padded", "unpadded"] if unpadded.unsupported_reason(model) is None else ["padded"]
    times = {p: [] for p in paths}
    for path in paths:
        steps(path, batches[:2])  # warm-up
    for r in range(args.rounds):
        for path in (paths if r % 2 == 0 else paths[::-1]):
            start = time.perf_counter()
            steps(path, batches[2:])
            times[path].append(time.perf_counter() - start)
    n = args.train_steps * args.train_batch
    real = np.mean([b[0][0]["attention_mask"].sum().item() for b in batches])
    padded_tokens = np.mean([b[0][0]["input_ids"].numel() for b in batches])
    rows = [[f"train step, {path}", ", ".join(f"{n / t:,.1f}" for t in times[path]), f"{n / median(times[path]):,.1f}",
             f"{median(times['padded']) / median(times[path]):.2f}x",
             f"{(padded_tokens if path == 'padded' else real) / real:.3f}"] for path in paths]
    print_table([f"training ({args.train_batch} pairs/step)", "pairs/s per round", "median pairs/s", "vs padded",
                 "tokens run / real"], rows)


if __name__ == "__main__":
    main()
