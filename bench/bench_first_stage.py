"""How fast the kit's own first stage is (extras/first_stage.py), to size the paper's collections.

1. SPLADE encoding: a DistilBERT-sized masked LM (6 layers, 768 wide, BERT's 30,522-word vocabulary; random
   weights, the same arithmetic as naver/splade-v3-distilbert) encodes real SciFact abstracts at the kit's
   256 tokens; documents per second.
2. Exact sparse retrieval (first_stage.top_k): synthetic vectors with SPLADE's sparsity (about 200 terms per
   document, 40 per query, Zipf-distributed over the vocabulary, as learned sparse vectors are) for
   --documents documents; seconds per query, and the same scaled to MS MARCO's 8.8M passages (the cost of a
   query grows with the number of documents: one dot product per document sharing a term).
3. BM25 (bm25s): index and retrieve the demo collections; documents per second.

    python bench/bench_first_stage.py [--documents 1000000] [--encode 256]
"""
from __future__ import annotations

import argparse
import time

import _util  # noqa: F401  (puts the kit on the path, chooses the demo's ir_datasets home)
import numpy as np

import common
from extras import first_stage
import cross_encoder

MS_MARCO_PASSAGES = 8_841_823


def encoding_rate(n: int, batch_size: int, device: str) -> float:
    import torch
    import transformers
    config = transformers.DistilBertConfig()  # the defaults are DistilBERT-base's shape
    model = transformers.AutoModelForMaskedLM.from_config(config).to(device).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(cross_encoder.minilm_path()))  # BERT's vocabulary
    dataset = common.load_dataset("beir/scifact")
    texts = [common.doc_text(d) for _, d in zip(range(n), dataset.docs_iter())]
    first_stage.splade_vectors(model, tokenizer, texts[:batch_size], 256, device, batch_size)  # warm-up
    torch.manual_seed(0)
    started = time.perf_counter()
    vectors = first_stage.splade_vectors(model, tokenizer, texts, 256, device, batch_size)
    seconds = time.perf_counter() - started
    print(f"  {len(texts)} SciFact abstracts in {seconds:.1f} s: {len(texts) / seconds:.1f} documents/s "
          f"({vectors.nnz / len(texts):.0f} non-zero weights per document with random weights)")
    return len(texts) / seconds


def retrieval_rate(documents: int, queries: int, depth: int, rng) -> float:
    import scipy.sparse
    vocabulary = 30_522
    popularity = 1.0 / np.arange(1, vocabulary + 1) ** 0.9
    popularity /= popularity.sum()

    def vectors(n, terms):
        cols = rng.choice(vocabulary, size=(n, terms), p=popularity)
        matrix = scipy.sparse.csr_matrix((rng.gamma(2.0, 0.5, size=n * terms).astype(np.float32),
                                          cols.ravel(), np.arange(0, n * terms + 1, terms)), shape=(n, vocabulary))
        matrix.sum_duplicates()  # a term drawn twice becomes one weight
        return matrix
    started = time.perf_counter()
    doc_vectors = vectors(documents, 200)
    query_vectors = vectors(queries, 40)
    made = time.perf_counter() - started
    started = time.perf_counter()
    found = first_stage.top_k(query_vectors, doc_vectors, depth)
    seconds = time.perf_counter() - started
    per_query = seconds / queries
    print(f"  {documents:,} documents ({doc_vectors.nnz / documents:.0f} terms each, made in {made:.0f} s), "
          f"{queries} queries ({query_vectors.nnz / queries:.0f} terms each), top {depth}: {seconds:.1f} s, "
          f"{per_query * 1000:.0f} ms per query; {len(found)} lists")
    scaled = per_query * MS_MARCO_PASSAGES / documents
    print(f"  scaled to MS MARCO's {MS_MARCO_PASSAGES:,} passages: about {scaled:.1f} s per query, "
          f"{scaled * 6980 / 3600:.1f} h for the 6,980 dev queries, {scaled * 97 / 60:.1f} min for TREC DL 19+20's 97")
    return per_query


def bm25_rate() -> None:
    for name, dataset_id in (("scifact", "beir/scifact/test"), ("nfcorpus", "beir/nfcorpus/test")):
        dataset = common.load_dataset(dataset_id)
        queries = common.load_queries(dataset)
        started = time.perf_counter()
        first_stage.bm25_run(dataset, queries, 100)
        seconds = time.perf_counter() - started
        print(f"  {name}: {dataset.docs_count():,} documents and {len(queries)} queries in {seconds:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=1_000_000, help="synthetic documents for retrieval")
    parser.add_argument("--queries", type=int, default=200, help="synthetic queries for retrieval")
    parser.add_argument("--encode", type=int, default=256, help="SciFact abstracts to encode")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--gpu", type=int, default=-1, help="CUDA device for encoding; -1: the CPU")
    _util.add_threads_argument(parser)
    args = parser.parse_args()
    _util.set_threads(args.threads)
    device = f"cuda:{args.gpu}" if args.gpu >= 0 else "cpu"
    print(_util.machine_line())
    print(f"1. SPLADE encoding (DistilBERT-sized masked LM, 256 tokens, batch {args.batch_size}, fp32, {device})")
    rate = encoding_rate(args.encode, args.batch_size, device)
    print(f"  MS MARCO's passages at this rate: {MS_MARCO_PASSAGES / rate / 3600:.1f} h")
    print("2. Exact sparse retrieval (scipy, one core)")
    retrieval_rate(args.documents, args.queries, 1000, np.random.default_rng(0))
    print("3. BM25 (bm25s, Snowball stemmer)")
    bm25_rate()


if __name__ == "__main__":
    main()
