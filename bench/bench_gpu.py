"""GPU throughput and model FLOPs utilisation (MFU) of the kit's re-ranking and training, base-size model, bf16.

A random-initialised BERT-base cross-encoder (110M parameters; speed does not depend on the weights) with
the demo tokenizer (bert-base-uncased's vocabulary) scores and trains on real (query, passage) pairs from
the demo collections' BM25 candidates at each max length. For every length it prints:
- re-ranking: `cross_encoder.score_pairs` (length-sorted batches, tokenization overlapped with the GPU; tokenized
  in-process, then by --workers worker processes) and, with
  sentence-transformers installed, `CrossEncoder.predict` on the same pairs, batch and autocast; pairs/s,
  the kit/ST ratio and the largest score difference;
- training: the body of `cross_encoder.train`'s loop (pinned batches, non-blocking copies, bf16 autocast, fp32
  loss, backward, clipping, fused AdamW, loss read back every 10 steps) on pre-tokenized batches, as the
  DataLoader workers hand them over; pairs/s;
- the same forward / training step on full-length batches of random tokens: what the GPU gives the model
  when nothing else (tokenizer, padding, short pairs) is in the way.

MFU = model FLOPs / time / peak. Model FLOPs count the real (non-padding) tokens: per layer and token,
2 x (4 d^2 + 2 d d_ff) for the projections and 4 s d for attention over a pair of s tokens; training is 3x
the forward. Padding is work the GPU does but the model does not need, so it lowers MFU. Peak: the GPU's
dense bf16 figure (H100/H200 SXM 989 TFLOP/s; pass --peak-tflops for others).

    python bench/bench_gpu.py --gpu 0                       # lengths 256 and 512
    python bench/bench_gpu.py --gpu 0 --lengths 256 --pairs 2048 --no-st
"""
import argparse
import contextlib
import functools
import tempfile
import time

from _util import demo_pairs, median, print_table
import cross_encoder  # noqa: E402
from _util import forward_flops as model_forward_flops

PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0, "A10": 125.0}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", type=int, default=0)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--pairs", type=int, default=8192, help="real pairs scored per round")
    parser.add_argument("--batch-size", type=int, default=128, help="re-ranking batch (pairs)")
    parser.add_argument("--train-batch", type=int, default=32, help="pairs per training step (paper: base 32)")
    parser.add_argument("--train-steps", type=int, default=40, help="timed training steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokenizer", default="", help="tokenizer folder (default: the demo backbone's)")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="dense bf16 peak; 0: from the GPU's name")
    parser.add_argument("--no-st", action="store_true", help="skip sentence-transformers")
    parser.add_argument("--layers", type=int, default=12, help="fewer layers: a quick check of the script itself")
    parser.add_argument("--workers", type=int, default=8, help="also time score_pairs tokenizing in this many "
                        "worker processes (0: skip)")
    args = parser.parse_args()

    import numpy as np
    import torch
    import transformers
    import losses

    transformers.logging.set_verbosity_error()
    device = cross_encoder.choose_device(args.gpu)
    cross_encoder.setup_speed(device)
    on_gpu = device.startswith("cuda")
    kind = device.split(":")[0]
    name = torch.cuda.get_device_name(device) if on_gpu else "CPU (--gpu -1: a check of this script, not a benchmark)"
    pin = (lambda t: t.pin_memory()) if on_gpu else (lambda t: t)
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), 0.0)
    if not peak:
        raise SystemExit(f"--peak-tflops: no known bf16 peak for {name!r}; pass it")
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.tokenizer or cross_encoder.minilm_path())
    config = transformers.BertConfig(vocab_size=len(tokenizer), num_labels=1, max_position_embeddings=512,
                                     num_hidden_layers=args.layers)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).to(device)
    holder = tempfile.TemporaryDirectory(prefix="bench-gpu-")
    model.save_pretrained(holder.name)
    tokenizer.save_pretrained(holder.name)
    # Each length trains the model; put the saved weights back first so that the kit scores with the
    # weights ST loads from holder.name (otherwise every length after the first compares different models).
    initial_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    layers = config.num_hidden_layers
    forward_flops = functools.partial(model_forward_flops, config)

    def cuda_time(fn) -> float:
        if on_gpu:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if on_gpu:
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    pairs = demo_pairs(args.pairs)
    queries, passages = [q for q, _ in pairs], [p for _, p in pairs]
    print(f"device: {name}, peak bf16 {peak:.0f} TFLOP/s; torch {torch.__version__}, transformers "
          f"{transformers.__version__}; model: BERT-base ({layers} layers) random init ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M "
          f"parameters, attention {model.config._attn_implementation}), bf16 autocast; {len(pairs)} real pairs "
          f"(scifact + nfcorpus BM25 top-100)")
    rows = []

    def row(stage, length, batch, seconds, items, flops, note=""):
        tflops = flops / seconds / 1e12
        rows.append([stage, length, batch, f"{items / seconds:,.0f}", f"{tflops:.0f}", f"{100 * tflops / peak:.1f}%", note])

    for length in args.lengths:
        model.load_state_dict(initial_weights)
        pair_tokenizer = cross_encoder.make_pair_tokenizer(model, tokenizer, length, 64)
        real = []  # non-padding tokens of every pair
        for i in range(0, len(pairs), 512):
            real += pair_tokenizer(queries[i:i + 512], passages[i:i + 512])["attention_mask"].sum(1).tolist()
        useful = forward_flops(real)

        # Re-ranking: the kit, ST, and the GPU alone on full-length random tokens.
        def kit():
            return cross_encoder.score_pairs(model, pair_tokenizer, queries, passages, batch_size=args.batch_size,
                                             device=device, precision="bf16")
        kit()  # warm-up: cuBLAS handles, SDPA kernels
        times = [cuda_time(kit) for _ in range(args.rounds)]
        kit_scores = kit()
        row("re-rank: kit score_pairs", length, args.batch_size, median(times), len(pairs), useful,
            f"mean {np.mean(real):.0f} real tokens/pair")
        if args.workers:
            def kit_workers():
                return cross_encoder.score_pairs(model, pair_tokenizer, queries, passages, batch_size=args.batch_size,
                                                 device=device, precision="bf16", workers=args.workers)
            kit_workers()
            worker_times = [cuda_time(kit_workers) for _ in range(args.rounds)]
            diff = float(np.max(np.abs(kit_workers() - kit_scores)))
            row(f"re-rank: kit score_pairs, {args.workers} tokenizer workers", length, args.batch_size,
                median(worker_times), len(pairs), useful, f"{median(times) / median(worker_times):.2f}x in-process, "
                f"max |diff| {diff:.1e}")
        tokenizing = cuda_time(lambda: [pair_tokenizer(queries[i:i + args.batch_size], passages[i:i + args.batch_size])
                                        for i in range(0, len(pairs), args.batch_size)])  # unsorted batches
        rows.append(["  tokenizer alone (CPU)", length, args.batch_size, f"{len(pairs) / tokenizing:,.0f}", "", "", ""])
        if not args.no_st:
            try:
                from sentence_transformers import CrossEncoder
            except ImportError:
                print("sentence-transformers not installed: skipping it")
            else:
                st = CrossEncoder(holder.name, num_labels=1, max_length=length, device=device,
                                  activation_fn=torch.nn.Identity())

                def st_predict():
                    with torch.autocast(kind, dtype=torch.bfloat16):
                        return st.predict(pairs, batch_size=args.batch_size, show_progress_bar=False,
                                          convert_to_numpy=True)
                st_predict()
                st_times = [cuda_time(st_predict) for _ in range(args.rounds)]
                diff = float(np.max(np.abs(np.asarray(st_predict(), np.float64) - kit_scores)))
                row("re-rank: ST CrossEncoder.predict", length, args.batch_size, median(st_times), len(pairs), useful,
                    f"kit/ST {median(st_times) / median(times):.2f}x, max |diff| {diff:.1e}")
                del st
        ids = torch.randint(1000, len(tokenizer), (args.batch_size, length), device=device)
        model.eval()

        def full_forward(n=20):
            with torch.inference_mode(), torch.autocast(kind, dtype=torch.bfloat16):
                for _ in range(n):
                    model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
        full_forward(3)
        seconds = median([cuda_time(full_forward) for _ in range(args.rounds)])
        row("re-rank: forward, full-length random", length, args.batch_size, seconds, 20 * args.batch_size,
            20 * forward_flops([length] * args.batch_size))

        # Training: cross_encoder.train's loop body on pre-tokenized, pinned batches.
        bce = losses.LOSSES["bce"]
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, eps=1e-8, fused=True)
        n_batches = (args.train_steps + 5) * args.rounds
        batches = []
        for k in range(n_batches):
            lo = (k * args.train_batch) % (len(pairs) - args.train_batch)
            inputs = pair_tokenizer(queries[lo:lo + args.train_batch], passages[lo:lo + args.train_batch])
            batches.append(({k: pin(v) for k, v in inputs.items()},
                            pin(torch.randint(0, 2, (args.train_batch // 2, 2)).float())))

        def train_steps(chosen):
            model.train()
            unread = []
            for step, (inputs, targets) in enumerate(chosen, 1):
                inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
                targets = targets.to(device, non_blocking=True)
                with torch.autocast(kind, dtype=torch.bfloat16):
                    logits = model(**inputs).logits
                loss = bce(logits.float().view(targets.shape), targets)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                unread.append(loss.detach())
                if step % 10 == 0:
                    float(torch.stack(unread).sum())
                    unread = []
        per_round = args.train_steps + 5
        train_steps(batches[:5])
        times, flops = [], []
        for r in range(args.rounds):
            chosen = batches[r * per_round + 5:(r + 1) * per_round]
            times.append(cuda_time(lambda: train_steps(chosen)))
            flops.append(3 * sum(forward_flops(b["attention_mask"].sum(1).tolist()) for b, _ in chosen))
        r = int(np.argsort(times)[len(times) // 2])
        padded = np.mean([b["input_ids"].numel() for b, _ in batches]) / args.train_batch
        row("train: kit loop body", length, args.train_batch, times[r], args.train_steps * args.train_batch, flops[r],
            f"batches padded to {padded:.0f} tokens/pair")
        full = [({"input_ids": pin(ids[:args.train_batch].cpu()),
                  "attention_mask": pin(torch.ones(args.train_batch, length, dtype=torch.long))},
                 batches[0][1]) for _ in range(args.train_steps)]
        train_steps(full[:5])
        seconds = median([cuda_time(lambda: train_steps(full)) for _ in range(args.rounds)])
        row("train: step, full-length random", length, args.train_batch, seconds, args.train_steps * args.train_batch,
            3 * args.train_steps * forward_flops([length] * args.train_batch))
        del optimizer
        torch.cuda.empty_cache()

    print()
    print_table(["what", "max length", "batch", "pairs/s", "TFLOP/s", "MFU", "note"], rows)
    if on_gpu:
        print(f"\npeak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
