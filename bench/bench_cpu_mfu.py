"""How close the kit's re-ranking and training come to this CPU's own fp32 matrix-product speed.

A CPU has no published "peak" that torch reaches, so the reference is measured: fp32 matrix products
timed with torch's own kernels, (a) large and square, (b) the shape of MiniLM's feed-forward layer on one
re-ranking batch. Then, on the same threads and the same model (the kit's backbone, fp32):
- forward on full-length random tokens (no tokenizer, no padding): the model's best case;
- `cross_encoder.score_pairs` on real demo pairs (tokenizer, length-sorted batches, padding);
- a training step (forward, bce loss, backward, clip, fused AdamW) on pre-tokenized real pairs.

Model FLOPs per pair count the real (non-padding) tokens: per layer and token 2 x (4 d^2 + 2 d d_ff) for
the projections plus 4 s d for attention over s tokens; training counts 3x the forward. "of matmul" is
GFLOP/s divided by the large square product's GFLOP/s. If the model runs near that, no re-implementation
of the loop (sentence-transformers' or the kit's) can run much faster in fp32 on this CPU.

    python bench/bench_cpu_mfu.py                        # minilm-l6, length 192, 3 rounds
    python bench/bench_cpu_mfu.py --threads 1
"""
import argparse
import functools

from _util import add_threads_argument, set_threads, demo_pairs, machine_line, median, print_table, timed
import cross_encoder  # noqa: E402
from _util import forward_flops as model_forward_flops


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=64, help="re-ranking batch (pairs)")
    parser.add_argument("--train-batch", type=int, default=16, help="pairs per training step (the demo's)")
    parser.add_argument("--pairs", type=int, default=256, help="real pairs scored per round")
    parser.add_argument("--train-steps", type=int, default=4, help="timed training steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    add_threads_argument(parser)
    args = parser.parse_args()
    if args.train_batch % 2:
        parser.error("--train-batch: the bce step pairs a positive with a negative; pass an even number")

    import numpy as np
    import torch
    import losses

    set_threads(args.threads)
    model, tokenizer = cross_encoder.load_backbone(cross_encoder.get_backbone(args.backbone), seed=0)
    config = model.config
    d, d_ff = config.hidden_size, config.intermediate_size
    forward_flops = functools.partial(model_forward_flops, config)
    print(machine_line())
    print(f"model: {args.backbone} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"attention {config._attn_implementation}), fp32, max length {args.max_length}")

    def median_of_rounds(fn) -> float:  # median seconds over the rounds, after one untimed call
        fn()
        return median([timed(fn)[0] for _ in range(args.rounds)])

    rows = []

    def matmul(m, k, n, repeat):
        a, b = torch.randn(m, k), torch.randn(k, n)
        seconds = median_of_rounds(lambda: [a @ b for _ in range(repeat)])
        return 2.0 * m * k * n * repeat / seconds / 1e9

    square = matmul(2048, 2048, 2048, 4)
    tokens = args.batch_size * args.max_length
    shaped = matmul(tokens, d, d_ff, 8)
    rows.append(["matmul fp32 2048 x 2048 x 2048", "", f"{square:.0f}", "100%", "the reference"])
    rows.append([f"matmul fp32 {tokens} x {d} x {d_ff} (feed-forward shape)", "", f"{shaped:.0f}",
                 f"{100 * shaped / square:.0f}%", ""])

    def row(what, pairs_per_s, gflops, note=""):
        rows.append([what, f"{pairs_per_s:.1f}", f"{gflops:.0f}", f"{100 * gflops / square:.0f}%", note])

    model.eval()
    ids = torch.randint(1000, len(tokenizer), (args.batch_size, args.max_length))

    def full_forward():
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    seconds = median_of_rounds(full_forward)
    row("forward, full-length random tokens", args.batch_size / seconds,
        forward_flops([args.max_length] * args.batch_size) / seconds / 1e9)

    pairs = demo_pairs(args.pairs)
    queries, passages = [q for q, _ in pairs], [p for _, p in pairs]
    pair_tokenizer = cross_encoder.make_pair_tokenizer(model, tokenizer, args.max_length, 64)
    real = pair_tokenizer(queries, passages)["attention_mask"].sum(1).tolist()
    seconds = median_of_rounds(lambda: cross_encoder.score_pairs(model, pair_tokenizer, queries, passages,
                                                                 batch_size=args.batch_size, device="cpu", precision="fp32"))
    row("re-rank: kit score_pairs (real pairs)", len(pairs) / seconds, forward_flops(real) / seconds / 1e9,
        f"mean {np.mean(real):.0f} real tokens/pair")

    bce = losses.LOSSES["bce"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, eps=1e-8, fused=True)
    batches = [pair_tokenizer(queries[i:i + args.train_batch], passages[i:i + args.train_batch])
               for i in range(0, args.train_steps * args.train_batch, args.train_batch)]
    targets = torch.tensor([[1.0, 0.0]] * (args.train_batch // 2))
    model.train()

    def train_steps():
        for inputs in batches:
            loss = bce(model(**inputs).logits.float().view(targets.shape), targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            float(loss.detach())
    seconds = median_of_rounds(train_steps)
    flops = 3 * sum(forward_flops(b["attention_mask"].sum(1).tolist()) for b in batches)
    row("train: step (bce, clip, fused AdamW)", args.train_steps * args.train_batch / seconds, flops / seconds / 1e9,
        f"{args.train_batch} pairs per step")

    print()
    print_table(["what", "pairs/s", "GFLOP/s", "of matmul", "note"], rows)


if __name__ == "__main__":
    main()
