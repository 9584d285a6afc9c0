"""Where the kit's training step spends its time, and what fused AdamW on the CPU would save.

cross_encoder.train builds AdamW with fused=device.startswith("cuda"), so on the CPU it runs the foreach
implementation; torch >= 2.4 also has a fused CPU AdamW (sentence-transformers' trainer uses it by default:
optim="adamw_torch_fused"). This script times the parts of the kit's step (PairTokenizer.batch, forward,
bce loss + backward, clip_grad_norm_, optimizer step + zero_grad) on the demo bce batches, alternating two
copies of the same model that differ only in the AdamW implementation (foreach vs fused), and checks
that they stay numerically together.

    python bench/profile_train_step.py --backbone minilm-l6 --steps 6 --rounds 3
    python bench/profile_train_step.py --backbone tiny-bert --steps 20 --rounds 5
"""
import argparse
import copy
import time

from _util import add_threads_argument, set_threads, machine_line, median, print_table
import common  # noqa: E402
import cross_encoder  # noqa: E402
import paper_setup  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--steps", type=int, default=6, help="steps per round and implementation")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-queries", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--query-max-length", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-5)
    add_threads_argument(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    import torch
    import losses

    data = common.build_training_data("bce", paper_setup.DEMO_TRAINING, args.batch_queries, 2, seed=0, log=lambda *_: None)
    batches = [data.batch(k) for k in range(args.steps * args.rounds + 1)]
    model, tokenizer = cross_encoder.load_backbone(cross_encoder.get_backbone(args.backbone), seed=0)
    pair_tokenizer = cross_encoder.make_pair_tokenizer(model, tokenizer, args.max_length, args.query_max_length)
    bce = losses.LOSSES["bce"]
    systems = {}
    for name, fused in (("foreach (kit now)", False), ("fused (proposed)", True)):
        m = copy.deepcopy(model)
        m.train()
        opt = torch.optim.AdamW([{"params": [p for p in m.parameters() if p.ndim >= 2], "weight_decay": 0.0},
                                 {"params": [p for p in m.parameters() if p.ndim < 2], "weight_decay": 0.0}],
                                lr=args.learning_rate, eps=1e-8, fused=fused)
        systems[name] = (m, opt)
    print(f"machine: {machine_line()}")
    print(f"model: {args.backbone} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters), "
          f"{2 * args.batch_queries} pairs per step, max length {args.max_length}, fp32, AdamW lr {args.learning_rate}")

    def step(m, opt, batch, parts):
        t0 = time.perf_counter()
        inputs, targets = pair_tokenizer.batch(batch)
        t1 = time.perf_counter()
        logits = m(**inputs).logits
        t2 = time.perf_counter()
        loss = bce(logits.float().view(targets.shape), targets)
        loss.backward()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        t4 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = float(loss.detach())
        t5 = time.perf_counter()
        for key, seconds in zip(("tokenize", "forward", "loss+backward", "clip", "optimizer"),
                                (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            parts[key].append(seconds)
        return value

    for m, opt in systems.values():  # one warm-up step each (same batch)
        step(m, opt, batches[-1], {k: [] for k in ("tokenize", "forward", "loss+backward", "clip", "optimizer")})
    parts = {name: {k: [] for k in ("tokenize", "forward", "loss+backward", "clip", "optimizer")} for name in systems}
    losses_seen = {name: [] for name in systems}
    for round_ in range(args.rounds):
        names = list(systems) if round_ % 2 == 0 else list(reversed(systems))
        for k in range(round_ * args.steps, (round_ + 1) * args.steps):
            for name in names:  # alternate step by step: load hits both alike
                torch.manual_seed(k)  # same dropout masks for both copies
                losses_seen[name].append(step(*systems[name], batches[k], parts[name]))
    rows = []
    for name, p in systems.items():
        med = {k: median(v) * 1000 for k, v in parts[name].items()}
        rows.append([name, *(f"{med[k]:.0f}" for k in med), f"{sum(med.values()):.0f}"])
    print_table(["AdamW", "tokenize ms", "forward ms", "loss+backward ms", "clip ms", "optimizer ms",
                 "step ms (sum of medians)"], rows)
    (a, pa), (b, pb) = parts.items()
    print(f"optimizer step: fused / foreach time {median(pb['optimizer']) / median(pa['optimizer']):.2f}; share of "
          f"the step with foreach {median(pa['optimizer']) / sum(median(v) for v in pa.values()):.1%}")
    drift = max(abs(x - y) for x, y in zip(*losses_seen.values()))
    print(f"largest loss difference between the two copies over {len(losses_seen[a])} steps: {drift:.1e}")


if __name__ == "__main__":
    main()
