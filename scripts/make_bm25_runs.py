"""Rebuild the shipped BM25 top-100 runs of the offline demo query sets.

Command (from the repository root; offline, about 10 seconds on one CPU core):

    python scripts/make_bm25_runs.py [--ir-datasets-home DIR] [--out-dir data/runs/bm25]

It copies the raw files of data/ir_datasets_home/ into DIR (default: .ir_datasets_home/ in the repo
root, git-ignored) where they are missing, never overwriting, points IR_DATASETS_HOME at DIR, loads
each collection with ir_datasets and writes one gzip-compressed TREC run
(`qid Q0 docid rank score bm25`, top 100 per query, score with 6 decimals) per query set:

    data/runs/bm25/scifact-train.run.gz   beir/scifact/train
    data/runs/bm25/scifact-test.run.gz    beir/scifact/test
    data/runs/bm25/nfcorpus-test.run.gz   beir/nfcorpus/test
    data/runs/bm25/vaswani.run.gz         vaswani
    data/runs/bm25/cranfield.run.gz       cranfield

It prints, per collection, the numbers of queries and documents, the seconds taken, and nDCG@10 and
R@100 against the qrels (ir_measures). Cranfield's relevance codes are inverted (1 = complete
answer ... 4 = minimum interest, -1 = no interest), so they are remapped to gain = 5 - code, -1 -> 0.

BM25 in numpy/scipy.sparse with Anserini's defaults k1=0.9, b=0.4, Lucene's idf
log(1 + (N - df + 0.5) / (df + 0.5)) and Lucene's term weight idf * tf / (tf + k1 * (1 - b + b * dl / avgdl))
(no (k1 + 1) factor, as in Lucene >= 8; a repeated query term counts once per occurrence).
Analyzer: lowercase, drop a possessive 's, split on non-alphanumeric characters, drop Lucene's
33-word English stop set, Porter stemmer (Martin Porter's reference C version, as in Lucene's
PorterStemFilter; written out below, no dependency; it gives the same stems as NLTK's
PorterStemmer(mode=MARTIN_EXTENSIONS) on all 45,643 words of these collections). It approximates Anserini's default analyzer; it
is not token-for-token identical (Lucene's StandardTokenizer keeps e.g. "3.5" as one token, and Lucene
stores document lengths lossily). A document is indexed as title + " " + text, or as text alone when
the text already starts with the title (Cranfield's does, so its title would otherwise count twice).
Ranking: score descending, then doc id ascending (string order); a query matching fewer than 100
documents is filled up with score-0 documents in doc id order (15 NFCorpus test queries, e.g. "Yale",
match none), so every query has exactly 100 lines. Runs are written atomically and gzip'ed with
mtime=0, so a rerun gives identical bytes.
"""
import argparse, gzip, os, re, shutil, sys, time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
QUERY_SETS = [("beir/scifact/train", "scifact-train"), ("beir/scifact/test", "scifact-test"),
              ("beir/nfcorpus/test", "nfcorpus-test"), ("vaswani", "vaswani"), ("cranfield", "cranfield")]
K1, B, DEPTH = 0.9, 0.4, 100
STOPWORDS = frozenset("a an and are as at be but by for if in into is it no not of on or such that the "
                      "their then there these they this to was will with".split())  # Lucene's English set

# ---- Porter stemmer (M. F. Porter, 1980; the reference C version with its two departures) ----
def _cons(w, i):
    if w[i] in "aeiou":
        return False
    return w[i] != "y" or i == 0 or not _cons(w, i - 1)

def _m(s):  # number of vowel-consonant sequences in s
    return "".join("c" if _cons(s, i) else "v" for i in range(len(s))).count("vc")

def _has_vowel(s):
    return any(not _cons(s, i) for i in range(len(s)))

def _cvc(s):  # consonant-vowel-consonant ending, last consonant not w, x or y
    i = len(s) - 1
    return i >= 2 and _cons(s, i) and not _cons(s, i - 1) and _cons(s, i - 2) and s[i] not in "wxy"

_STEP2 = [("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"), ("izer", "ize"),
          ("bli", "ble"), ("alli", "al"), ("entli", "ent"), ("eli", "e"), ("ousli", "ous"),
          ("ization", "ize"), ("ation", "ate"), ("ator", "ate"), ("alism", "al"), ("iveness", "ive"),
          ("fulness", "ful"), ("ousness", "ous"), ("aliti", "al"), ("iviti", "ive"), ("biliti", "ble"),
          ("logi", "log")]
_STEP3 = [("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"), ("ful", ""), ("ness", "")]
_STEP4 = [(s, "") for s in "al ance ence er ic able ible ant ement ment ent ion ou ism ate iti ous ive ize".split()]

def _first_rule(w, rules, min_m):  # the first matching suffix decides, whether or not it applies
    for suffix, repl in rules:
        if w.endswith(suffix):
            stem = w[:-len(suffix)]
            if suffix == "ion" and not stem.endswith(("s", "t")):
                return w
            return stem + repl if _m(stem) > min_m else w
    return w

def porter_stem(w):
    if len(w) <= 2:
        return w
    if w.endswith("sses") or w.endswith("ies"):  # step 1a
        w = w[:-2]
    elif w.endswith("s") and not w.endswith("ss"):
        w = w[:-1]
    if w.endswith("eed"):  # step 1b
        if _m(w[:-3]) > 0:
            w = w[:-1]
    else:
        for suffix in ("ed", "ing"):
            if w.endswith(suffix) and _has_vowel(w[:-len(suffix)]):
                w = w[:-len(suffix)]
                if w.endswith(("at", "bl", "iz")):
                    w += "e"
                elif len(w) >= 2 and w[-1] == w[-2] and _cons(w, len(w) - 1):
                    if w[-1] not in "lsz":
                        w = w[:-1]
                elif _m(w) == 1 and _cvc(w):
                    w += "e"
                break
    if w.endswith("y") and _has_vowel(w[:-1]):  # step 1c
        w = w[:-1] + "i"
    w = _first_rule(w, _STEP2, 0)
    w = _first_rule(w, _STEP3, 0)
    w = _first_rule(w, _STEP4, 1)
    if w.endswith("e"):  # step 5
        m = _m(w[:-1])
        if m > 1 or (m == 1 and not _cvc(w[:-1])):
            w = w[:-1]
    if w.endswith("ll") and _m(w) > 1:  # also after dropping an -e, as in the C version
        w = w[:-1]
    return w

# ---- analyzer, index, retrieval ----
_TOKEN, _POSSESSIVE, _STEMS = re.compile(r"[^\W_]+"), re.compile(r"['\u2019]s\b"), {}

def analyze(text):
    tokens = _TOKEN.findall(_POSSESSIVE.sub("", text.lower()))
    for t in tokens:
        if t not in _STEMS:
            _STEMS[t] = porter_stem(t)
    return [_STEMS[t] for t in tokens if t not in STOPWORDS]

def doc_text(doc):
    title, text = getattr(doc, "title", "") or "", doc.text or ""
    if title and not " ".join(text.split()).startswith(" ".join(title.split())):
        return title + " " + text
    return text

def bm25_index(docs):
    """docs: list of (doc_id, text) sorted by doc_id -> (vocabulary, docs x terms BM25 weight matrix)."""
    vocab, rows, cols = {}, [], []
    for row, (_, text) in enumerate(docs):
        ids = [vocab.setdefault(t, len(vocab)) for t in analyze(text)]
        rows.extend([row] * len(ids)); cols.extend(ids)
    tf = sp.coo_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(docs), len(vocab))).tocsr()  # sums repeats
    n_docs, dl = len(docs), np.asarray(tf.sum(axis=1)).ravel()
    df = np.bincount(tf.indices, minlength=len(vocab))
    idf = np.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))
    norm = K1 * (1.0 - B + B * dl / dl.mean())
    row_of = np.repeat(np.arange(n_docs), np.diff(tf.indptr))
    weights = tf.copy()
    weights.data = idf[tf.indices] * tf.data / (tf.data + norm[row_of])
    return vocab, weights

def top_k(scores, k=DEPTH):
    """Indices of the k best docs: score desc, then index (= doc id order) asc. When fewer than k docs
    match, score-0 docs fill the list in doc id order, so every query gets k candidates."""
    k = min(k, len(scores))
    kth = np.partition(scores, len(scores) - k)[len(scores) - k]
    cand = np.flatnonzero(scores >= kth)  # every doc tied with the k-th too
    return cand[np.lexsort((cand, -scores[cand]))][:k]

def retrieve(vocab, weights, queries, batch=256):
    """queries: list of (query_id, text) -> {query_id: [(doc_index, score), ...]}, {query_id: n matching docs}."""
    run, hits = {}, {}
    for start in range(0, len(queries), batch):
        part = queries[start:start + batch]
        rows, cols = [], []
        for col, (_, text) in enumerate(part):
            ids = [vocab[t] for t in analyze(text) if t in vocab]
            rows.extend(ids); cols.extend([col] * len(ids))
        q = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(vocab), len(part)))
        scores = (weights @ q).toarray()
        for col, (qid, _) in enumerate(part):
            run[qid] = [(i, scores[i, col]) for i in top_k(scores[:, col])]
            hits[qid] = int(np.count_nonzero(scores[:, col]))
    return run, hits

def write_run_gz(path, run, doc_ids):
    lines = [f"{qid} Q0 {doc_ids[i]} {rank} {score:.6f} bm25\n"
             for qid, ranking in run.items() for rank, (i, score) in enumerate(ranking, 1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(gzip.compress("".join(lines).encode("utf-8"), compresslevel=9, mtime=0))
    os.replace(tmp, path)

def cranfield_gain(code):  # file codes: 1 = complete answer ... 4 = minimum interest, -1 = no interest
    return {1: 4, 2: 3, 3: 2, 4: 1, -1: 0}[code]

def seed_home(home):
    """Copy data/ir_datasets_home/* into home where missing (never overwrite)."""
    src = REPO / "data" / "ir_datasets_home"
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        dst = home / f.relative_to(src)
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst)

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ir-datasets-home", type=Path, default=REPO / ".ir_datasets_home")
    ap.add_argument("--out-dir", type=Path, default=REPO / "data" / "runs" / "bm25")
    args = ap.parse_args()
    home = args.ir_datasets_home.resolve()
    seed_home(home)
    os.environ["IR_DATASETS_HOME"] = str(home)
    import ir_datasets, ir_measures  # imported after IR_DATASETS_HOME is set
    from ir_measures import nDCG, R

    print(f"{'query set':20} {'queries':>7} {'docs':>6} {'seconds':>7} {'nDCG@10':>7} {'R@100':>6}")
    t_all = time.time()
    for ds_id, name in QUERY_SETS:
        t0 = time.time()
        ds = ir_datasets.load(ds_id)
        docs = sorted((d.doc_id, doc_text(d)) for d in ds.docs_iter())
        queries = [(q.query_id, q.text) for q in ds.queries_iter()]
        assert len({d for d, _ in docs}) == len(docs) and len({q for q, _ in queries}) == len(queries), "duplicate ids"
        vocab, weights = bm25_index(docs)
        run, hits = retrieve(vocab, weights, queries)
        write_run_gz(args.out_dir / f"{name}.run.gz", run, [d for d, _ in docs])
        gain = cranfield_gain if ds_id == "cranfield" else int
        qrels = [ir_measures.Qrel(q.query_id, q.doc_id, gain(q.relevance)) for q in ds.qrels_iter()]
        scored = [ir_measures.ScoredDoc(qid, docs[i][0], s) for qid, r in run.items() for i, s in r]
        res = ir_measures.calc_aggregate([nDCG @ 10, R @ 100], qrels, scored)
        short, none = sum(h < DEPTH for h in hits.values()), sum(h == 0 for h in hits.values())
        print(f"{ds_id:20} {len(queries):7d} {len(docs):6d} {time.time() - t0:7.1f} {res[nDCG @ 10]:7.4f} "
              f"{res[R @ 100]:6.4f}" + (f"  ({short} queries match < {DEPTH} docs, {none} none)" if short else ""))
        sys.stdout.flush()
    print(f"total {time.time() - t_all:.1f} s; runs in {args.out_dir}")

if __name__ == "__main__":
    main()
