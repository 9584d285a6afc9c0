"""Training throughput: the kit's training step vs sentence-transformers' CrossEncoderTrainer + BinaryCrossEntropyLoss.

Both start from the very same weights (the kit's minilm-l6 backbone with its seed-0 random head, saved once)
and train on the very same batches in the same order: the demo 'bce' data (SciFact train, 1 positive + 1
BM25 negative per query, [Q, 2] groups), flattened to 16 labelled pairs (8 queries x 2) per step, max length
192 (query budget 64), fp32, AdamW (eps 1e-8, no weight decay), lr 3e-5, linear schedule, grad-norm clip 1.

What is timed, per window of N optimizer steps, alternating kit / ST W times in one process:
- kit: the body of cross_encoder.train's loop on pre-fetched text batches (Batch objects: document texts already
  looked up, as the ST dataset holds its texts): PairTokenizer.batch -> autocast -> model(**inputs).logits
  .float() -> losses.LOSSES["bce"] -> backward -> clip_grad_norm_ -> AdamW step -> scheduler step ->
  zero_grad, plus the per-step loss read-back, for N steps after one untimed warm-up step.
- ST: CrossEncoderTrainer.train() with max_steps = N + 1 on a datasets.Dataset of the window's pairs
  (sequential batches, so the same 16 pairs form each step); the clock runs from the end of the first
  step to the end of the last (a TrainerCallback), so the one-off setup of each train() call (optimizer,
  dataloader, callbacks) and the warm-up step are excluded, and the per-step collation, tokenization
  (inside the loss), forward, backward, clip, optimizer and scheduler steps and Trainer bookkeeping are in.

    python bench/bench_train.py                        # 5 windows x 20 steps of 16 pairs
    python bench/bench_train.py --windows 3 --steps 10
"""
import argparse
import contextlib
import tempfile
import time

from _util import add_threads_argument, set_threads, load_kit_model, machine_line, median, print_table, save_shared_model
import common  # noqa: E402
import cross_encoder  # noqa: E402
import paper_setup  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=5, help="kit/ST alternations")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per window")
    parser.add_argument("--batch-queries", type=int, default=8, help="queries per step; 2 pairs each")
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--query-max-length", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-5)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--kit-fused", action="store_true",
                        help="give the kit fused AdamW (the proposed patch; cross_encoder.train uses foreach on the CPU)")
    add_threads_argument(parser)
    args = parser.parse_args()
    set_threads(args.threads)

    import datasets
    import pyarrow
    import torch
    import transformers
    from sentence_transformers.cross_encoder import (CrossEncoder, CrossEncoderTrainer,
                                                     CrossEncoderTrainingArguments)
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    import losses

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    pairs_per_step = 2 * args.batch_queries
    data = common.build_training_data("bce", paper_setup.DEMO_TRAINING, args.batch_queries, 2, seed=0, log=lambda *_: None)
    steps_per_window = args.steps + 1  # + 1 untimed warm-up step
    batches = [data.batch(k) for k in range(args.windows * steps_per_window)]  # text, looked up once

    folder, _holder = save_shared_model(args.backbone, seed=0)
    kit_model, tokenizer = load_kit_model(folder)
    pair_tokenizer = cross_encoder.make_pair_tokenizer(kit_model, tokenizer, args.max_length, args.query_max_length)
    st = CrossEncoder(folder, num_labels=1, max_length=args.max_length, device="cpu")
    bce = losses.LOSSES["bce"]
    st_loss = BinaryCrossEntropyLoss(st)

    print(f"machine: {machine_line()}")
    print(f"model: {args.backbone}; {pairs_per_step} pairs per step ({args.batch_queries} queries x [pos, neg]), "
          f"max length {args.max_length}, query budget {args.query_max_length}, {args.precision}, "
          f"lr {args.learning_rate}, {args.windows} windows x {args.steps} timed steps")

    def flat(batch):
        queries = [q for q, docs in zip(batch.queries, batch.docs) for _ in docs]
        docs = [d for docs in batch.docs for d in docs]
        return queries, docs, batch.targets.view(-1).tolist()

    # Same computation? One batch, dropout off, kit loss vs ST loss on identical weights.
    kit_model.eval(), st.eval()
    with torch.no_grad():
        inputs, targets = pair_tokenizer.batch(batches[0])
        kit_value = float(bce(kit_model(**inputs).logits.float().view(targets.shape), targets))
        q, d, labels = flat(batches[0])
        st_value = float(st_loss([q, d], torch.tensor(labels)))
    print(f"same first-batch loss (eval mode): kit {kit_value:.6f}, ST {st_value:.6f}, |diff| "
          f"{abs(kit_value - st_value):.1e}")
    tokens = [len(t) for t in tokenizer([q for b in batches for q in b.queries], add_special_tokens=False)["input_ids"]]
    print(f"queries: {max(tokens)} tokens at most (budget {args.query_max_length}: both systems cut pairs alike)")

    # ---------------------------------------------------------------- the kit: cross_encoder.train's loop body
    no_decay = [p for p in kit_model.parameters() if p.ndim < 2]
    decay = [p for p in kit_model.parameters() if p.ndim >= 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.0}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.learning_rate, eps=1e-8, fused=args.kit_fused)
    total = args.windows * steps_per_window
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cross_encoder.linear_warmup_decay(0, total))

    def kit_window(window: int) -> float:
        kit_model.train()
        start = None
        for k in range(window * steps_per_window, (window + 1) * steps_per_window):
            inputs, targets = pair_tokenizer.batch(batches[k])
            with cross_encoder.autocast("cpu", args.precision):
                logits = kit_model(**inputs).logits
            loss = bce(logits.float().view(targets.shape), targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(kit_model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            float(loss.detach())
            if start is None:  # the first step of a window warms up, untimed
                start = time.perf_counter()
        return time.perf_counter() - start

    # ---------------------------------------------------------------- ST: CrossEncoderTrainer.train()
    class Clock(transformers.TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_end(self, _args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    def sequential(dataset, batch_size, drop_last, **_):  # the same pairs form each step, in order
        return torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(dataset), batch_size, drop_last)

    out = tempfile.TemporaryDirectory(prefix="bench-st-")
    training_args = CrossEncoderTrainingArguments(
        output_dir=out.name, per_device_train_batch_size=pairs_per_step, learning_rate=args.learning_rate,
        max_steps=steps_per_window, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, adam_epsilon=1e-8,
        max_grad_norm=1.0, bf16=args.precision == "bf16", use_cpu=True, save_strategy="no", eval_strategy="no",
        logging_strategy="no", report_to="none", disable_tqdm=True, seed=0, dataloader_num_workers=0,
        batch_sampler=sequential)

    def st_window(window: int) -> float:
        rows = {"query": [], "document": [], "label": []}
        for k in range(window * steps_per_window, (window + 1) * steps_per_window):
            q, d, labels = flat(batches[k])
            rows["query"] += q
            rows["document"] += d
            rows["label"] += labels
        clock = Clock()
        # An explicit fingerprint skips datasets' pickling-based hashing of the table (it fails with some
        # pyarrow/dill combinations, and it is one-off setup in any case).
        dataset = datasets.Dataset(pyarrow.table(rows), fingerprint=f"bench-train-window-{window}")
        trainer = CrossEncoderTrainer(model=st, args=training_args, train_dataset=dataset,
                                      loss=st_loss, callbacks=[clock])
        trainer.train()
        if len(clock.ends) != steps_per_window:
            raise RuntimeError(f"ST ran {len(clock.ends)} steps, expected {steps_per_window}")
        return clock.ends[-1] - clock.ends[0]

    print(f"AdamW: kit {'fused (--kit-fused)' if args.kit_fused else 'foreach (as cross_encoder.train on the CPU)'}, "
          f"ST {getattr(training_args.optim, 'value', training_args.optim)} (its default)")
    rows, speeds = [], {"kit": [], "ST": []}
    for window in range(args.windows):
        order = [("kit", kit_window), ("ST", st_window)]
        if window % 2:
            order.reverse()
        for name, fn in order:
            seconds = fn(window)
            speed = args.steps * pairs_per_step / seconds
            speeds[name].append(speed)
            rows.append([window + 1, name, args.steps, f"{seconds:.2f}", f"{speed:.2f}"])
    print_table(["window", "system", "steps", "seconds", "pairs/s"], rows)
    print()
    print_table(["system", "median pairs/s", "min", "max"],
                [[n, f"{median(v):.2f}", f"{min(v):.2f}", f"{max(v):.2f}"] for n, v in speeds.items()])
    ratios = [k / s for k, s in zip(speeds["kit"], speeds["ST"])]
    print(f"\nkit / ST: {median(speeds['kit']) / median(speeds['ST']):.2f}x (ratio of medians); per-window ratios "
          f"{', '.join(f'{r:.2f}' for r in ratios)}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
