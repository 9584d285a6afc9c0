"""torch.compile or not: the kit's model forward (re-ranking) and training step, eager vs compiled.

A best case for the compiler: fixed shapes (every batch padded to max length, so nothing recompiles),
real token ids from the demo collections' BM25 pairs, the same weights for both. Eager and compiled
alternate in one process, medians and the ratio are printed, with the compile time (first calls) and
the largest absolute difference between the two models' logits.

    python bench/bench_compile.py                          # minilm-l6, fp32, 5 rounds
    python bench/bench_compile.py --precision bf16 --gpu 0 # on a GPU
"""
import argparse
import time

from _util import add_threads_argument, demo_pairs, machine_line, median, print_table, set_threads
import cross_encoder  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--score-batch", type=int, default=64, help="pairs per re-ranking forward")
    parser.add_argument("--train-batch", type=int, default=16, help="pairs per training step")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gpu", type=int, default=-1)
    add_threads_argument(parser)
    args = parser.parse_args()
    set_threads(args.threads)

    import torch
    device = cross_encoder.choose_device(args.gpu)
    model, tokenizer = cross_encoder.load_backbone(cross_encoder.get_backbone(args.backbone), seed=0, device=device)
    pair_tokenizer = cross_encoder.make_pair_tokenizer(model, tokenizer, args.max_length, 64)
    pairs = demo_pairs(max(args.score_batch, args.train_batch))
    inputs = pair_tokenizer([q for q, _ in pairs], [p for _, p in pairs])
    if inputs["input_ids"].shape[1] < args.max_length:  # pad to the full length: one shape, no recompiles
        extra = args.max_length - inputs["input_ids"].shape[1]
        inputs = {k: torch.nn.functional.pad(v, (0, extra), value=tokenizer.pad_token_id if k == "input_ids" else 0)
                  for k, v in inputs.items()}
    inputs = {k: v.to(device) for k, v in inputs.items()}
    score_inputs = {k: v[:args.score_batch] for k, v in inputs.items()}
    train_inputs = {k: v[:args.train_batch] for k, v in inputs.items()}
    print(f"machine: {machine_line()}")
    print(f"model: {args.backbone}, attention {model.config._attn_implementation}, {args.precision} on {device}, "
          f"length {args.max_length}, re-ranking batch {args.score_batch}, training batch {args.train_batch}")

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def score(m):
        m.eval()
        with torch.inference_mode(), cross_encoder.autocast(device, args.precision):
            out = m(**score_inputs).logits.float()
        sync()
        return out

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-12, fused=True)  # tiny lr: weights stay ~fixed

    def train_step(m):
        m.train()
        with cross_encoder.autocast(device, args.precision):
            loss = m(**train_inputs).logits.float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()

    compiled = torch.compile(model)
    started = time.perf_counter()
    compiled_scores = score(compiled)
    compile_score_s = time.perf_counter() - started
    started = time.perf_counter()
    train_step(compiled)
    train_step(compiled)
    compile_train_s = time.perf_counter() - started
    max_diff = (compiled_scores - score(model)).abs().max().item()

    timings = {name: [] for name in ("score eager", "score compiled", "train eager", "train compiled")}
    for round_ in range(args.rounds):
        order = [("eager", model), ("compiled", compiled)]
        for name, m in order if round_ % 2 == 0 else order[::-1]:
            started = time.perf_counter()
            score(m)
            timings[f"score {name}"].append(args.score_batch / (time.perf_counter() - started))
            started = time.perf_counter()
            train_step(m)
            timings[f"train {name}"].append(args.train_batch / (time.perf_counter() - started))

    rows = []
    for task, first_s in (("re-ranking", compile_score_s), ("training", compile_train_s)):
        key = "score" if task == "re-ranking" else "train"
        eager, fast = median(timings[f"{key} eager"]), median(timings[f"{key} compiled"])
        rows.append([task, f"{eager:.1f}", f"{fast:.1f}", f"{fast / eager:.2f}x", f"{first_s:.0f}"])
    print_table(["", "eager pairs/s", "compiled pairs/s", "compiled / eager", "first calls s"], rows)
    print(f"max |logit difference| compiled vs eager: {max_diff:.2e}")


if __name__ == "__main__":
    main()
