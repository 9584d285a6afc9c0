"""First-stage runs made by the kit: the candidates a cross-encoder re-ranks, for any collection.

  splade  naver/splade-v3-distilbert, the paper's first stage: each document and query becomes a sparse
          vector over the vocabulary, max over its tokens of log(1 + relu(MLM logits)) (Formal et al., SPLADE);
          documents are encoded with transformers (on the GPU when given), and retrieval is the exact sparse
          matrix product of the queries' vectors with the documents' (scipy), top-k per query. Exact, no
          index to build: README "First stage" gives the measured speed and why no search engine is used.
  bm25    BM25 through bm25s (k1 0.9, b 0.4, Lucene's idf, as Anserini), English stopwords and the Snowball
          English stemmer (PyStemmer).

nanobeir_validator: the paper's checkpoint selection, mean nDCG@10 of re-ranking these runs on NanoBEIR.

A run is cached in the kit's cache by what determines it (method, model, collection, depth, lengths), with an
md5 checked at every read; the encoded documents of SPLADE are cached per document collection, so that the
queries of TREC DL 19, 20 and MS MARCO dev share one encoding of MS MARCO's passages.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

import common
import cross_encoder
import paper_setup
from common import KitError

SPLADE = "naver/splade-v3-distilbert"
SPLADE_LENGTHS = {"documents": 256, "queries": 64}  # tokens; the model card's setting for documents
BM25_PARAMETERS = {"k1": 0.9, "b": 0.4}


def cached_run(collection, method: str, depth: int, device: str = "cpu", model: str | None = None,
               batch_size: int = 64, log=print) -> Path:
    """The path of `collection`'s first-stage run (top `depth`), made once and checked (md5) at every read.
    `model`: the SPLADE checkpoint (default: SPLADE, the paper's)."""
    model = model or SPLADE
    dataset = common.load_dataset(collection.dataset_id)
    key = {"method": method, "dataset": collection.dataset_id, "depth": depth,
           **({"model": model, "lengths": SPLADE_LENGTHS} if method == "splade" else BM25_PARAMETERS)}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    path = common.kit_cache() / "first-stage" / method / f"{common.slug(collection.dataset_id)}__{digest}.run.gz"
    recorded = path.with_name(path.name + ".md5")
    if path.exists() and recorded.exists():
        if common.md5_of(path) == recorded.read_text().strip():
            return path
        log(f"note: {path} does not match its recorded md5; it is made again")
    queries = common.load_queries(dataset)
    if method == "bm25":
        run = bm25_run(dataset, queries, depth)
    elif method == "splade":
        run = splade_run(dataset, queries, depth, device, model, batch_size, log)
    else:
        raise KitError(f"--retriever {method}: expected splade or bm25")
    common.write_run(path, run, method)
    common.atomic_write_text(recorded, common.md5_of(path) + "\n")
    return path


def label(method: str, depth: int) -> str:
    """How tables name the candidates' own row."""
    return {"splade": f"SPLADE-v3-DistilBERT top-{depth}", "bm25": f"BM25 top-{depth}"}[method]


# ================================================================================================
# BM25
# ================================================================================================
def bm25_run(dataset, queries: dict[str, str], depth: int) -> dict[str, dict[str, float]]:
    import bm25s
    import Stemmer
    stemmer = Stemmer.Stemmer("english")
    with common.reading(dataset, "documents"):
        ids, texts = zip(*((d.doc_id, common.doc_text(d)) for d in dataset.docs_iter()))
    index = bm25s.BM25(method="lucene", **BM25_PARAMETERS)
    index.index(bm25s.tokenize(list(texts), stopwords="en", stemmer=stemmer, show_progress=False),
                show_progress=False)
    qids = sorted(queries)
    tokens = bm25s.tokenize([queries[q] for q in qids], stopwords="en", stemmer=stemmer, show_progress=False)
    found, scores = index.retrieve(tokens, k=min(depth, len(ids)), show_progress=False)
    return {qid: {ids[d]: float(s) for d, s in zip(found[row], scores[row])} for row, qid in enumerate(qids)}


# ================================================================================================
# SPLADE
# ================================================================================================
def splade_vectors(model, tokenizer, texts: list[str], max_length: int, device: str, batch_size: int):
    """A CSR matrix, one row per text: max over its tokens of log(1 + relu(MLM logits)), zeros left out."""
    import scipy.sparse
    import torch
    rows, order = [], np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths pad little
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            chosen = order[start:start + batch_size]
            inputs = tokenizer([texts[i] for i in chosen], truncation=True, max_length=max_length, padding=True,
                               return_tensors="pt").to(device)
            weights = torch.log1p(torch.relu(model(**inputs).logits.float()))
            weights = (weights * inputs["attention_mask"].unsqueeze(-1)).amax(dim=1)
            rows.append(scipy.sparse.csr_matrix(weights.cpu().numpy()))
    matrix = scipy.sparse.vstack(rows).tocsr() if rows else scipy.sparse.csr_matrix((0, model.config.vocab_size))
    return matrix[np.argsort(order)]  # back in the texts' order


def top_k(query_vectors, doc_vectors, depth: int) -> list[list[tuple[int, float]]]:
    """Exact retrieval: each query's `depth` documents of highest dot product, chunk of queries by chunk."""
    found = []
    transposed = doc_vectors.T.tocsr()
    chunk = max(1, min(256, 50_000_000 // max(1, doc_vectors.shape[0])))  # a chunk's scores: at most 50M floats
    for start in range(0, query_vectors.shape[0], chunk):
        scores = (query_vectors[start:start + chunk] @ transposed).toarray()
        for row in scores:
            k = min(depth, len(row))
            best = np.argpartition(-row, k - 1)[:k]
            found.append([(int(i), float(row[i])) for i in best])
    return found


def documents_name(dataset) -> str:
    """The name of a dataset's documents, shared by its query sets (msmarco-passage for TREC DL and MS MARCO dev)."""
    try:
        return dataset.docs_namespace() or dataset.dataset_id()
    except TypeError:  # some ir_datasets classes define it without self (Cranfield's)
        return dataset.dataset_id()


def splade_run(dataset, queries: dict[str, str], depth: int, device: str, model_id: str, batch_size: int,
               log=print) -> dict[str, dict[str, float]]:
    import scipy.sparse
    import transformers
    transformers.logging.set_verbosity_error()
    try:
        model = transformers.AutoModelForMaskedLM.from_pretrained(model_id).to(device).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_id)
    except OSError as error:
        raise KitError(f"could not load the first stage {model_id!r}: {str(error).splitlines()[0]}") from None
    namespace = documents_name(dataset)
    key = hashlib.sha1(json.dumps([model_id, SPLADE_LENGTHS["documents"], namespace]).encode()).hexdigest()[:10]
    index = common.kit_cache() / "first-stage" / "splade" / f"{common.slug(namespace)}__{key}.npz"
    if index.exists():
        stored = np.load(index, allow_pickle=False)
        ids, doc_vectors = list(stored["ids"]), scipy.sparse.csr_matrix(
            (stored["data"], stored["indices"], stored["indptr"]), shape=tuple(stored["shape"]))
    else:
        with common.reading(dataset, "documents"):
            ids, texts = zip(*((d.doc_id, common.doc_text(d)) for d in dataset.docs_iter()))
        log(f"SPLADE: encoding {len(ids)} documents of {namespace} on {device}")
        doc_vectors = splade_vectors(model, tokenizer, list(texts), SPLADE_LENGTHS["documents"], device, batch_size)
        index.parent.mkdir(parents=True, exist_ok=True)
        with open(index.with_suffix(".tmp"), "wb") as handle:  # np.savez adds .npz to a name: write a handle
            np.savez(handle, ids=np.array(ids), data=doc_vectors.data, indices=doc_vectors.indices,
                     indptr=doc_vectors.indptr, shape=np.array(doc_vectors.shape))
        index.with_suffix(".tmp").replace(index)
    qids = sorted(queries)
    query_vectors = splade_vectors(model, tokenizer, [queries[q] for q in qids], SPLADE_LENGTHS["queries"], device,
                                   batch_size)
    return {qid: {ids[d]: s for d, s in hits} for qid, hits in zip(qids, top_k(query_vectors, doc_vectors, depth))}


def nanobeir_validator(cfg: cross_encoder.TrainConfig, device: str, method: str, batch_size: int, log=print,
                       tokens_folder: Path | None = None, token_budget: int = 0):
    """validate(model, pair_tokenizer): the mean nDCG@10 of re-ranking the top-100 of the kit's first stage on
    the 13 NanoBEIR sets, as the paper selects its checkpoints. The sets are loaded once, here, and tokenized
    once into `tokens_folder` (--token-cache) when given; the cell's own --unpadded applies."""
    depth = paper_setup.RECIPES["paper"]["validation_depth"]
    sets = [common.load_eval_data(c, depth=depth, run=cached_run(c, method, depth, device, log=log))
            for c in paper_setup.NANOBEIR]

    def validate(model, pair_tokenizer) -> float:
        values = []
        for data in sets:
            run = cross_encoder.rerank(model, pair_tokenizer, data.queries, data.candidates, data.documents,
                                       batch_size=batch_size, device=device, precision=cfg.precision,
                                       tokens_folder=tokens_folder, token_budget=token_budget, unpad=cfg.unpadded)
            values.append(common.evaluate(run, data.qrels, ["nDCG@10"])[0]["nDCG@10"])
        return float(np.mean(values))
    return validate
