"""Shared helpers of the benchmark scripts (not part of the kit, not part of the test suite)."""
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import common  # noqa: E402
import cross_encoder  # noqa: E402
import paper_setup  # noqa: E402

common.choose_ir_datasets_home(demo=True)  # the benchmarks read the demo's collections


def add_threads_argument(parser) -> None:
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default, one per core)")


def set_threads(n: int) -> None:
    import torch
    if n:
        torch.set_num_threads(n)


def machine_line() -> str:
    import torch
    load = os.getloadavg()
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
            f"(1/5/15 min)")


def demo_pairs(n: int, collections=("scifact", "nfcorpus"), depth: int = 100, seed: int = 0,
               queries_only: bool = False):
    """`n` (query text, doc text) pairs drawn at random (fixed seed) from the BM25 top-`depth` of the demo
    collections, an equal share from each; repeats pairs when the candidates run out."""
    rng = random.Random(seed)
    by_name = {c.name: c for c in paper_setup.DEMO_COLLECTIONS}
    per = [n // len(collections) + (i < n % len(collections)) for i in range(len(collections))]
    pairs = []
    for name, k in zip(collections, per):
        data = common.load_eval_data(by_name[name], depth=depth)
        ids = [(qid, docid) for qid, docs in data.candidates.items() for docid in docs]
        chosen = [ids[i % len(ids)] for i in rng.sample(range(len(ids)), min(k, len(ids)))]
        while len(chosen) < k:  # repeat when asked for more pairs than there are candidates
            chosen.append(ids[rng.randrange(len(ids))])
        texts = data.documents.get_many({d for _, d in chosen})
        pairs += [(data.queries[q], texts[d]) for q, d in chosen]
    rng.shuffle(pairs)
    return pairs


def save_shared_model(backbone: str = "minilm-l6", seed: int = 0) -> tuple[str, object]:
    """Load the kit's backbone once (random head under `seed`), save it to a temporary folder and return
    (folder, TemporaryDirectory): both systems then load the very same weights from there."""
    model, tokenizer = cross_encoder.load_backbone(cross_encoder.get_backbone(backbone), seed=seed)
    holder = tempfile.TemporaryDirectory(prefix="bench-model-")
    model.save_pretrained(holder.name)
    tokenizer.save_pretrained(holder.name)
    return holder.name, holder


def load_kit_model(folder: str):
    import transformers
    transformers.logging.set_verbosity_error()
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return model, tokenizer


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def forward_flops(config, lengths) -> float:
    """Model FLOPs of one forward pass over pairs of the given real (non-padding) lengths. BERT-like: per layer
    and token 2 x (4 d^2 + 2 d d_ff) for the projections, plus 4 d per attended (query, key) pair. ModernBERT:
    a gated MLP (2 x (4 d^2 + 3 d d_ff)), and its sliding-window layers attend only within |i - j| <= w."""
    import numpy as np
    d, d_ff = config.hidden_size, config.intermediate_size
    lengths = np.asarray(lengths, dtype=np.float64)
    if getattr(config, "model_type", "") != "modernbert":
        return float(config.num_hidden_layers * (2 * (4 * d * d + 2 * d * d_ff) * lengths.sum()
                                                 + 4 * d * (lengths ** 2).sum()))
    total = 0.0
    for kind in config.layer_types:
        total += 2 * (4 * d * d + 3 * d * d_ff) * lengths.sum()
        if kind == "sliding_attention":
            m = np.minimum(config.sliding_window, lengths - 1)  # pairs (i, j) with |i - j| <= w
            attended = lengths + 2 * (m * lengths - m * (m + 1) / 2)
        else:
            attended = lengths ** 2
        total += 4 * d * attended.sum()
    return float(total)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def median(values):
    return statistics.median(values)


def print_table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
