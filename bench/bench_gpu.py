"""GPU throughput and model FLOPs utilisation (MFU) of the kit's re-ranking and training, base-size models, bf16.

Random-initialised base-size cross-encoders (speed does not depend on the weights): BERT-base (110M) and a
ModernBERT of Ettin-150M's shape (22 layers, width 768, gated MLP 1152, a global layer every third and
128-token local windows elsewhere; 150M parameters), both with the demo tokenizer (bert-base-uncased's
vocabulary; Ettin's own tokenizer is not offline, so its pairs here have BERT's token counts). They score
and train on real (query, passage) pairs from the demo collections' BM25 candidates at each max length.
For every model and length it prints:
- re-ranking with `cross_encoder.score_pairs`: tokenized on the fly in-process (the kit before stored
  tokens), and by --workers worker processes; from stored ids (what `rerank` does with results/tokens), by
  pair count, then by token budget padded, then unpadded (extras/unpadded.py); with --compile, the stored-ids
  variants again with the encoder compiled. With sentence-transformers installed, `CrossEncoder.predict` on
  the same pairs (BERT only). Pairs/s, MFU, and the largest score difference to the on-the-fly scores;
- the tokenizer alone (CPU, one process);
- training: the body of `cross_encoder.train`'s loop (pinned batches, bf16 autocast, fp32 loss, backward,
  clipping, fused AdamW, loss read back every 10 steps) on pre-tokenized batches, padded and unpadded
  (and compiled, with --compile);
- the forward and the training step on full-length batches of random tokens: what the GPU gives the model
  when nothing else (tokenizer, padding, short pairs) is in the way.
A variant that fails prints its error as its row, and the others still run.

MFU = model FLOPs / time / peak. Model FLOPs count the real (non-padding) tokens (_util.forward_flops;
training is 3x the forward). Padding is work the GPU does but the model does not need, so it lowers MFU.
Peak: the GPU's dense bf16 figure (H100/H200 SXM 989 TFLOP/s; pass --peak-tflops for others).

    python bench/bench_gpu.py --gpu 0 --compile             # both models, lengths 256 and 512
    python bench/bench_gpu.py --gpu 0 --models bert-base --lengths 256 --pairs 2048 --no-st
    python bench/bench_gpu.py --gpu -1 --layers 1 --pairs 64 --lengths 64 --rounds 1 --train-steps 2 --peak-tflops 1

--json PATH also writes the rows as JSON, rewritten after every row, so that a run killed part-way keeps the
rows it measured (scripts/gpu_run.py reads it).
"""
import argparse
import contextlib
import functools
import json
import os
import tempfile
import time
import traceback

from _util import demo_pairs, median, print_table
from extras import compiled, token_batches  # noqa: E402
import cross_encoder  # noqa: E402
from extras import unpadded  # noqa: E402
from _util import forward_flops as model_forward_flops

# bf16 on the GPU. A dry run on a CPU without native bf16 (no AVX512-BF16 or AMX) takes fp32: there bf16
# matrix products are emulated, about 70x slower than fp32, and the check of the script would take minutes.
PRECISION = "bf16"
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0, "A10": 125.0}
COLUMNS = ["model", "what", "max length", "batch", "pairs/s", "TFLOP/s", "MFU", "note"]


def _number(text) -> float | None:
    """A printed figure ("2,158", "9.6%") as a number; None for an empty cell."""
    try:
        return float(str(text).replace(",", "").rstrip("%"))
    except ValueError:
        return None


class Rows(list):
    """The table's rows; with a path, each append also rewrites the JSON file (atomically), so a run that is
    killed keeps every row measured so far. Numbers are kept as printed and, parsed, as pairs_per_s / tflops /
    mfu_percent (None where a row has none)."""

    def __init__(self, path: str | None, meta: dict):
        super().__init__()
        self.path, self.meta = path, meta

    def append(self, row) -> None:
        super().append(row)
        self.save()

    def save(self, finished: bool = False, **extra) -> None:
        if not self.path:
            return
        records = [{**dict(zip(COLUMNS, row)), "pairs_per_s": _number(row[4]), "tflops": _number(row[5]),
                    "mfu_percent": _number(row[6])} for row in self]
        self.meta.update(extra)
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump({**self.meta, "finished": finished, "columns": COLUMNS, "rows": records}, f, indent=1)
        os.replace(tmp, self.path)


def make_model(name: str, vocab: int, pad_id: int, layers: int | None):
    import transformers
    if name == "bert-base":
        config = transformers.BertConfig(vocab_size=vocab, num_labels=1, max_position_embeddings=512,
                                         num_hidden_layers=layers or 12, pad_token_id=pad_id)
        return transformers.BertForSequenceClassification(config)
    if name == "ettin-150m":  # jhu-clsp/ettin-encoder-150m's shape (ModernBERT-base)
        config = transformers.ModernBertConfig(vocab_size=50368, hidden_size=768, intermediate_size=1152,
                                               num_hidden_layers=layers or 22, num_attention_heads=12,
                                               global_attn_every_n_layers=3, local_attention=128,
                                               max_position_embeddings=8192, num_labels=1, pad_token_id=pad_id)
        return transformers.ModernBertForSequenceClassification(config)
    raise SystemExit(f"--models: unknown model {name!r}; valid: bert-base, ettin-150m")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", type=int, default=0)
    parser.add_argument("--models", nargs="+", default=["bert-base", "ettin-150m"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--pairs", type=int, default=4096, help="real pairs scored per round")
    parser.add_argument("--batch-size", type=int, default=128, help="re-ranking batch (pairs)")
    parser.add_argument("--token-budget", type=int, default=0, help="tokens per re-ranking batch by token budget "
                        "(0: batch size x max length, the padded batch's worst case)")
    parser.add_argument("--train-batch", type=int, default=32, help="pairs per training step (paper: base 32)")
    parser.add_argument("--train-steps", type=int, default=30, help="timed training steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokenizer", default="", help="tokenizer folder (default: the demo backbone's)")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="dense bf16 peak; 0: from the GPU's name")
    parser.add_argument("--no-st", action="store_true", help="skip sentence-transformers")
    parser.add_argument("--compile", action="store_true", help="also time the variants with the encoder compiled")
    parser.add_argument("--layers", type=int, default=0, help="fewer layers: a quick check of the script itself")
    parser.add_argument("--workers", type=int, default=8, help="also time score_pairs tokenizing in this many "
                        "worker processes (0: skip)")
    parser.add_argument("--json", default="", help="also write the rows to this JSON file, after every row")
    args = parser.parse_args()

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    device = cross_encoder.choose_device(args.gpu)
    cross_encoder.setup_speed(device)
    on_gpu = device.startswith("cuda")
    global PRECISION
    PRECISION = "bf16" if on_gpu else cross_encoder.resolve_precision("auto", device)
    name = torch.cuda.get_device_name(device) if on_gpu else "CPU (--gpu -1: a check of this script, not a benchmark)"
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), 0.0)
    if not peak:
        raise SystemExit(f"--peak-tflops: no known bf16 peak for {name!r}; pass it")
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.tokenizer or cross_encoder.minilm_path())
    pairs = demo_pairs(args.pairs)
    print(f"device: {name}, peak bf16 {peak:.0f} TFLOP/s; torch {torch.__version__}, transformers "
          f"{transformers.__version__}; {'bf16 autocast' if PRECISION == 'bf16' else 'fp32'}; {len(pairs)} real pairs (scifact + nfcorpus BM25 top-100)")
    rows = Rows(args.json or None, {"device": name, "peak_bf16_tflops": peak, "torch": torch.__version__,
                                    "transformers": transformers.__version__, "pairs": len(pairs),
                                    "options": vars(args)})
    for model_name in args.models:
        torch.manual_seed(0)
        model = make_model(model_name, len(tokenizer), tokenizer.pad_token_id, args.layers).to(device)
        cross_encoder.score_head_in_fp32(model)
        print(f"{model_name}: {model.config.num_hidden_layers} layers, "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, attention "
              f"{model.config._attn_implementation}")
        bench_model(args, model_name, model, tokenizer, pairs, device, peak, rows)
        del model
        if on_gpu:
            torch.cuda.empty_cache()
    print()
    print_table(COLUMNS, rows)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if on_gpu else None
    if on_gpu:
        print(f"\npeak GPU memory {memory:.1f} GiB")
    rows.save(finished=True, peak_gpu_memory_gib=memory)


def bench_model(args, model_name, model, tokenizer, pairs, device, peak, rows):
    import numpy as np
    import torch
    import losses

    on_gpu = device.startswith("cuda")
    kind = device.split(":")[0]
    pin = (lambda t: t.pin_memory()) if on_gpu else (lambda t: t)
    queries, passages = [q for q, _ in pairs], [p for _, p in pairs]
    holder = tempfile.TemporaryDirectory(prefix="bench-gpu-")
    model.save_pretrained(holder.name)
    tokenizer.save_pretrained(holder.name)
    # Each length trains the model (and compiling wraps it): put the saved weights back before each length, so
    # that every variant and ST score with the weights saved in holder.name.
    initial_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    forward_flops = functools.partial(model_forward_flops, model.config)
    packable = unpadded.unsupported_reason(model) is None

    def cuda_time(fn) -> float:
        if on_gpu:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if on_gpu:
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    def row(stage, length, batch, seconds, items, flops, note=""):
        tflops = flops / seconds / 1e12
        rows.append([model_name, stage, length, batch, f"{items / seconds:,.0f}", f"{tflops:.0f}",
                     f"{100 * tflops / peak:.1f}%", note])

    def guarded(stage, length, fn):
        try:
            fn()
        except Exception as error:  # one variant failing must not lose the others' figures
            traceback.print_exc()
            rows.append([model_name, stage, length, "", "", "", "", f"failed: {type(error).__name__}: "
                         f"{str(error).splitlines()[0][:120] if str(error) else ''}"])

    prepared = {}  # length -> (pair tokenizer, tokens, seconds to tokenize), and the on-the-fly scores
    references = {}

    def measure(length, compiled):
        model.load_state_dict(initial_weights)
        if length not in prepared:
            pair_tokenizer = cross_encoder.make_pair_tokenizer(model, tokenizer, length, 64)
            start = time.perf_counter()
            tokens = token_batches.encode_pairs(pair_tokenizer, queries, passages)
            prepared[length] = pair_tokenizer, tokens, time.perf_counter() - start
        pair_tokenizer, tokens, encode_seconds = prepared[length]
        real = tokens.lengths
        useful = forward_flops(real)
        budget = args.token_budget or args.batch_size * pair_tokenizer.max_length
        reference = references.setdefault(length, {})
        prefix = "compiled, " if compiled else ""

        def score(**options):
            return cross_encoder.score_pairs(model, pair_tokenizer, queries, passages, batch_size=args.batch_size,
                                             device=device, precision=PRECISION, **options)

        def timed_scoring(stage, options, note=""):
            first = cuda_time(lambda: score(**options))  # warm-up: cuBLAS handles, SDPA kernels, the compiler
            seconds = median([cuda_time(lambda: score(**options)) for _ in range(args.rounds)])
            scores = score(**options)
            if not reference:
                reference["scores"], reference["seconds"] = scores, seconds
            diff = float(np.max(np.abs(scores - reference["scores"])))
            notes = [f"{reference['seconds'] / seconds:.2f}x on the fly", f"max |diff| {diff:.1e}", note,
                     f"first call {first:.0f} s" if compiled else ""]
            row(stage, length, args.batch_size if "token_budget" not in options else f"{budget} tok", seconds,
                len(pairs), useful, "; ".join(n for n in notes if n))

        # Training: cross_encoder.train's loop body on pre-tokenized, pinned batches
        bce = losses.LOSSES["bce"]
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, eps=1e-8, fused=True)
        n_batches = (args.train_steps + 5) * args.rounds
        half = args.train_batch // 2
        padded_batches, packed_batches, batch_real = [], [], []
        for k in range(n_batches):
            lo = (k * args.train_batch) % (len(pairs) - args.train_batch)
            targets = pin(torch.randint(0, 2, (half, 2)).float())
            chosen = np.arange(lo, lo + args.train_batch)
            padded_batches.append(({k: pin(v) for k, v in token_batches.pad(pair_tokenizer, tokens, chosen).items()}, targets))
            packed_batches.append((unpadded.pack(tokens, chosen).to("cpu", pin=on_gpu), targets))
            batch_real.append(real[chosen])

        def train_steps(chosen):
            model.train()
            unread = []
            for step, (inputs, targets) in enumerate(chosen, 1):
                targets = targets.to(device, non_blocking=True)
                with torch.autocast(kind, dtype=torch.bfloat16, enabled=PRECISION == "bf16"):
                    logits = unpadded.forward_logits(model, inputs, device)
                loss = bce(logits.float().view(targets.shape), targets)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                unread.append(loss.detach())
                if step % 10 == 0:
                    float(torch.stack(unread).sum())
                    unread = []

        def timed_training(stage, batches, note=""):
            per_round = args.train_steps + 5
            first = cuda_time(lambda: train_steps(batches[:5]))
            times, flops = [], []
            for r in range(args.rounds):
                chosen = batches[r * per_round + 5:(r + 1) * per_round]
                times.append(cuda_time(lambda: train_steps(chosen)))
                flops.append(3 * sum(forward_flops(batch_real[k]) for k in range(r * per_round + 5, (r + 1) * per_round)))
            r = int(np.argsort(times)[len(times) // 2])
            notes = [note, f"first 5 steps {first:.0f} s" if compiled else ""]
            row(stage, length, args.train_batch, times[r], args.train_steps * args.train_batch, flops[r],
                "; ".join(n for n in notes if n))

        # Re-ranking
        padded_runs = sum(len(b) * real[b].max() for b in token_batches.token_budget_batches(real, budget, True))
        chars = np.array([len(q) + len(p) for q, p in pairs])
        by_chars = np.argsort(-chars, kind="stable")  # score_pairs' batches by pair count
        by_count = sum(len(c) * real[c].max() for c in (by_chars[i:i + args.batch_size]
                                                        for i in range(0, len(pairs), args.batch_size)))
        if not compiled:
            guarded("re-rank: on the fly", length, lambda: timed_scoring(
                "re-rank: on the fly", {}, f"mean {real.mean():.0f} real tokens/pair"))
            if args.workers:
                guarded(f"re-rank: on the fly, {args.workers} workers", length, lambda: timed_scoring(
                    f"re-rank: on the fly, {args.workers} workers", {"workers": args.workers}))
            guarded("re-rank: stored ids, pair count", length, lambda: timed_scoring(
                "re-rank: stored ids, pair count", {"tokens": tokens}, f"{by_count / real.sum():.2f} tokens run/real"))
        guarded(f"re-rank: {prefix}stored ids, token budget", length, lambda: timed_scoring(
            f"re-rank: {prefix}stored ids, token budget", {"tokens": tokens, "token_budget": budget},
            f"{padded_runs / real.sum():.2f} tokens run/real"))
        if packable:
            guarded(f"re-rank: {prefix}stored ids, unpadded", length, lambda: timed_scoring(
                f"re-rank: {prefix}stored ids, unpadded", {"tokens": tokens, "token_budget": budget, "unpad": True}))
        if not compiled:
            rows.append([model_name, "  tokenizer alone (CPU, encode_pairs)", length, "",
                         f"{len(pairs) / encode_seconds:,.0f}", "", "", "the stored ids' one-off cost"])
            if not args.no_st and model_name == "bert-base":
                guarded("re-rank: ST CrossEncoder.predict", length,
                        lambda: st_row(args, holder.name, length, pairs, device, kind, cuda_time, reference, row, useful))
            ids = torch.randint(1000, len(tokenizer), (args.batch_size, length), device=device)

            def full_forward(n=20):
                model.eval()
                with torch.inference_mode(), torch.autocast(kind, dtype=torch.bfloat16, enabled=PRECISION == "bf16"):
                    for _ in range(n):
                        model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
            full_forward(3)
            seconds = median([cuda_time(full_forward) for _ in range(args.rounds)])
            row("re-rank: forward, full-length random", length, args.batch_size, seconds, 20 * args.batch_size,
                20 * forward_flops([length] * args.batch_size))

        # Training
        padded = np.mean([b["input_ids"].numel() for b, _ in padded_batches]) / args.train_batch
        guarded(f"train: {prefix}kit loop body, padded", length, lambda: timed_training(
            f"train: {prefix}kit loop body, padded", padded_batches, f"batches padded to {padded:.0f} tokens/pair"))
        if packable:
            guarded(f"train: {prefix}kit loop body, unpadded", length, lambda: timed_training(
                f"train: {prefix}kit loop body, unpadded", packed_batches, f"{np.mean(real):.0f} real tokens/pair"))
        if not compiled:
            full = [({"input_ids": pin(ids[:args.train_batch].cpu()),
                      "attention_mask": pin(torch.ones(args.train_batch, length, dtype=torch.long))},
                     padded_batches[0][1]) for _ in range(args.train_steps)]
            train_steps(full[:5])
            seconds = median([cuda_time(lambda: train_steps(full)) for _ in range(args.rounds)])
            row("train: step, full-length random", length, args.train_batch, seconds,
                args.train_steps * args.train_batch, 3 * args.train_steps * forward_flops([length] * args.train_batch))
        del optimizer
        if on_gpu:
            torch.cuda.empty_cache()

    for length in args.lengths:
        measure(length, compiled=False)
    if args.compile:  # compiled once for dynamic shapes, then every length (the first calls include compiling)
        compiled.compile_model(model)
        for length in args.lengths:
            measure(length, compiled=True)
        model.base_model._compiled_call_impl = None


def st_row(args, folder, length, pairs, device, kind, cuda_time, reference, row, useful):
    import numpy as np
    import torch
    try:
        from sentence_transformers import CrossEncoder
    except ImportError:
        print("sentence-transformers not installed: skipping it")
        return
    st = CrossEncoder(folder, num_labels=1, max_length=length, device=device, activation_fn=torch.nn.Identity())

    def st_predict():
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=PRECISION == "bf16"):
            return st.predict(pairs, batch_size=args.batch_size, show_progress_bar=False, convert_to_numpy=True)
    st_predict()
    seconds = median([cuda_time(st_predict) for _ in range(args.rounds)])
    diff = float(np.max(np.abs(np.asarray(st_predict(), np.float64) - reference["scores"])))
    row("re-rank: ST CrossEncoder.predict", length, args.batch_size, seconds, len(pairs), useful,
        f"kit on the fly / ST {seconds / reference['seconds']:.2f}x, max |diff| {diff:.1e}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
