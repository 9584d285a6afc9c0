"""Build the demo's dense first stage: all-MiniLM-L6-v2 (a bi-encoder) retrieves each SciFact training query's
top 100 by cosine similarity.

The paper draws InfoNCE's negatives and the LLM teacher's lists from a strong dense first stage (ColBERTv2),
and only the triples of BCE, hinge and MarginMSE from BM25. The demo does the same with the dense model it
already ships: all-MiniLM-L6-v2, trained as a bi-encoder (mean of the token embeddings, normalised; its
sentence-transformers configuration: max 256 tokens), embeds the training collection and the training
queries, and each query's top 100 documents by cosine similarity become `data/runs/dense/scifact-train.run.gz`.
Exact search (a matrix product over 5,183 documents), no index.

Command (from the repository root; offline, a few minutes on a 2-core CPU):

    python scripts/make_dense_runs.py [--out data/runs/dense/scifact-train.run.gz] [--gpu 0]

Output: a gzip-compressed TREC run (`qid Q0 docid rank score dense`, 100 lines per query, scores in full,
ties broken by doc id as trec_eval does). It prints nDCG@10 and R@100 against the training qrels.
Deterministic on the CPU: a rerun gives identical bytes.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `import common`

import numpy as np  # noqa: E402

import common  # noqa: E402
import cross_encoder  # noqa: E402
import grid  # noqa: E402
import paper_setup  # noqa: E402

DEPTH = 100       # documents kept per query, as the demo's BM25 runs
MAX_LENGTH = 256  # all-MiniLM-L6-v2's max_seq_length in its sentence-transformers configuration


@dataclasses.dataclass
class Args:
    out: str = "data/runs/dense/scifact-train.run.gz"
    """the run to write (repo-relative or absolute)"""
    gpu: int = -1
    """CUDA device index; -1 runs on the CPU"""
    batch_size: int = 64
    """texts per encoding batch"""


def embed(model, tokenizer, texts: list[str], device: str, batch_size: int) -> np.ndarray:
    """Mean of the last layer's token embeddings over the real tokens, L2-normalised: how all-MiniLM-L6-v2 was
    trained to embed. Texts are sorted by length so that a batch pads little; the rows come back in order."""
    import torch
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            chosen = order[start:start + batch_size]
            inputs = tokenizer([texts[i] for i in chosen], truncation=True, max_length=MAX_LENGTH, padding=True,
                               return_tensors="pt").to(device)
            tokens = model(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            out[chosen] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
    return out


def main() -> None:
    import transformers
    args = grid.parse_args(Args)
    started = time.time()
    device = cross_encoder.choose_device(args.gpu)
    common.choose_ir_datasets_home(demo=True)
    dataset = common.load_dataset(paper_setup.DEMO_TRAINING.queries)
    queries, qrels = common.load_queries(dataset), common.load_qrels(dataset)
    with common.reading(dataset, "documents"):
        docs = sorted((d.doc_id, common.doc_text(d)) for d in dataset.docs_iter())
    transformers.logging.set_verbosity_error()
    path = cross_encoder.minilm_path()
    model = transformers.AutoModel.from_pretrained(path).to(device).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    qids = sorted(queries)
    print(f"embedding {len(docs)} documents and {len(qids)} queries of {paper_setup.DEMO_TRAINING.queries} with "
          f"all-MiniLM-L6-v2 on {device}")
    doc_vectors = embed(model, tokenizer, [text for _, text in docs], device, args.batch_size)
    query_vectors = embed(model, tokenizer, [queries[q] for q in qids], device, args.batch_size)
    similarity = query_vectors @ doc_vectors.T  # cosine: both sides are normalised
    run = {}
    for row, qid in enumerate(similarity):
        top = np.argpartition(-qid, DEPTH)[:DEPTH + 1]  # one spare, then trec_eval's order decides the cut
        run[qids[row]] = dict(common.trec_order((docs[i][0], float(qid[i])) for i in top)[:DEPTH])
    out = common.resolve_file(args.out)
    common.write_run(out, run, "dense")
    measured = common.evaluate(run, {q: qrels[q] for q in qids if q in qrels}, ["nDCG@10", "R@100"])[0]
    print(f"{out}: {len(run)} queries x {DEPTH}; nDCG@10 {measured['nDCG@10']:.4f}, R@100 {measured['R@100']:.4f} "
          f"(training qrels); {time.time() - started:.0f} s")


if __name__ == "__main__":
    grid.main_guard(main)
