"""A miniature of every external file the paper's setting reads, in its published format, for
tests/test_paper_path.py: a handful of documents and queries each, real formats, no network.

- ir_datasets' files, placed where ir_datasets keeps its downloads (an existing file there is used as is):
  MS MARCO passages (collection.tsv, train queries and qrels, the triples-small id file, TREC DL 2019/2020 and dev
  queries and qrels), a BEIR zip (arguana), LoTTE's extracted archive (writing), the 13 NanoBEIR parquet sets, and
  TREC disks 4&5 SGML documents with the Robust04 topics and qrels;
- the kit's published files (Hofstätter's teacher TSV, the RankZephyr and ColBERTv2 runs), served over HTTP on
  localhost so that the kit downloads and md5-checks them as it would the real ones;
- a tiny random masked-LM model standing for SPLADE-v3-DistilBERT.
"""
import gzip
import hashlib
import io
import json
import random
import zipfile
from pathlib import Path

TOPICS = ["aspirin lowers the risk of stroke", "solar panels convert light into power", "whales migrate to warm water",
          "coffee raises blood pressure", "volcanoes release sulfur gas", "bees pollinate almond trees",
          "glaciers retreat in warm summers", "vaccines train the immune system", "rust forms on wet iron",
          "owls hunt at night", "salt melts road ice", "tea contains caffeine"]


def passages(n_per_topic: int = 6) -> dict[str, str]:
    """Passage id -> text: for each topic, passages that mention it and others about the weather."""
    rng, out = random.Random(0), {}
    for t, topic in enumerate(TOPICS):
        for k in range(n_per_topic):
            words = topic.split()
            text = " ".join(rng.sample(words, len(words))) if k < 2 else f"the weather on day {k} was {rng.choice(['dry', 'wet'])}"
            out[str(1000 + 10 * t + k)] = f"{text} and some more words about {topic.split()[0]} number {k}"
    return out


def build(home: Path, served: Path) -> dict:
    """Write the ir_datasets files under `home` and the published files under `served`; return their md5s."""
    docs = passages()
    ids = list(docs)
    train = {str(100 + t): topic for t, topic in enumerate(TOPICS)}
    positives = {q: [str(1000 + 10 * t), str(1001 + 10 * t)] for t, q in enumerate(train)}
    mm = home / "msmarco-passage"
    _write(mm / "collection.tsv", "".join(f"{d}\t{t}\n" for d, t in docs.items()))
    # without this marker ir_datasets "migrates" a hand-placed collection.tsv by deleting it
    _write(mm / "irds_version.txt", "v2")
    _write(mm / "train" / "queries.tsv", "".join(f"{q}\t{t}\n" for q, t in train.items()))
    _write(mm / "train" / "qrels", "".join(f"{q} 0 {d} 1\n" for q, ds in positives.items() for d in ds))
    rng = random.Random(1)
    triples = [(q, rng.choice(positives[q]), rng.choice([d for d in ids if d not in positives[q]]))
               for q in train for _ in range(30)]
    _write(mm / "train" / "small.triples.qidpid.tsv", "".join(f"{q}\t{p}\t{n}\n" for q, p, n in triples))
    test = {"2001": "aspirin stroke risk", "2002": "whales warm water", "2003": "bees almond"}
    test_qrels = "".join(f"{q} 0 {d} {g}\n" for q, t in zip(test, (0, 2, 5)) for d, g in
                         ((str(1000 + 10 * t), 3), (str(1001 + 10 * t), 2), (str(1003 + 10 * t), 0)))
    for year in ("2019", "2020"):
        _write(mm / f"trec-dl-{year}" / "qrels", test_qrels)
    _write(mm / "trec-dl-2019" / "queries.tsv", "".join(f"{q}\t{t}\n" for q, t in test.items()))
    _write(mm / "trec-dl-2020" / "queries.tsv.gz", gzip.compress("".join(f"{q}\t{t}\n" for q, t in test.items()).encode(), mtime=0))
    _write(mm / "dev" / "small" / "queries.tsv", "".join(f"{q}\t{t}\n" for q, t in test.items()))
    _write(mm / "dev" / "small" / "qrels", "".join(f"{q}\t0\t{1000 + 10 * t}\t1\n" for q, t in zip(test, (0, 2, 5))))
    # BEIR: a zip as BEIR publishes it
    corpus = "".join(json.dumps({"_id": f"a{d}", "title": "", "text": t}) + "\n" for d, t in docs.items())
    queries = "".join(json.dumps({"_id": f"b{q}", "text": t}) + "\n" for q, t in test.items())
    qrels = "query-id\tcorpus-id\tscore\n" + "".join(f"b{q}\ta{1000 + 10 * t}\t1\n" for q, t in zip(test, (0, 2, 5)))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("arguana/corpus.jsonl", corpus)
        archive.writestr("arguana/queries.jsonl", queries)
        archive.writestr("arguana/qrels/test.tsv", qrels)
    _write(home / "beir" / "arguana" / "source.zip", buffer.getvalue())
    # LoTTE: its extracted archive
    lotte = home / "lotte" / "lotte_extracted" / "lotte" / "writing" / "test"
    _write(lotte / "collection.tsv", "".join(f"{k}\t{t}\n" for k, t in enumerate(docs.values())))
    _write(lotte / "questions.search.tsv", "".join(f"{k}\t{t}\n" for k, t in enumerate(test.values())))
    _write(lotte / "qas.search.jsonl", "".join(json.dumps({"qid": k, "query": t, "answer_pids": [6 * s, 6 * s + 1]})
                                              + "\n" for k, (t, s) in enumerate(zip(test.values(), (0, 2, 5)))))
    # NanoBEIR: three parquet files per set
    import pyarrow
    import pyarrow.parquet
    for name in ("arguana", "climate-fever", "dbpedia-entity", "fever", "fiqa", "hotpotqa", "msmarco", "nfcorpus", "nq",
                 "quora", "scidocs", "scifact", "webis-touche2020"):
        folder = home / "nano-beir" / name
        folder.mkdir(parents=True, exist_ok=True)
        small = {d: t for d, t in docs.items() if int(d) < 1060}  # topics 0-5: validation re-ranks few pairs
        pyarrow.parquet.write_table(pyarrow.table({"_id": [f"n{d}" for d in small], "text": list(small.values())}),
                                    folder / "corpus.parquet")
        pyarrow.parquet.write_table(pyarrow.table({"_id": [f"m{q}" for q in test], "text": list(test.values())}),
                                    folder / "queries.parquet")
        pyarrow.parquet.write_table(pyarrow.table({"query-id": [f"m{q}" for q in test],
                                                   "corpus-id": [f"n{1000 + 10 * t}" for t in (0, 2, 5)]}),
                                    folder / "qrels.parquet")
    # TREC disks 4&5: SGML documents, and Robust04's topics and qrels
    sgml = "".join(f"<DOC>\n<DOCNO> LA0101{k:02d}-0001 </DOCNO>\n<HEADLINE>\n<P>{t.split(' and ')[0]}</P>\n</HEADLINE>\n"
                   f"<TEXT>\n<P>{t}</P>\n</TEXT>\n</DOC>\n" for k, t in enumerate(docs.values()))
    _write(home / "disks45" / "corpus" / "NEWS_data" / "LATIMES" / "LA010189", sgml)
    for k in range(2294):  # ir_datasets counts the real corpus's 2,295 source files; the others stay empty here
        _write(home / "disks45" / "corpus" / "NEWS_data" / "LATIMES" / f"LA{k:06d}", "")
    topics = "".join(f"<top>\n<num> Number: {301 + k}\n<title> {t}\n<desc> Description:\nabout {t}\n<narr> Narrative:\n"
                     f"documents about {t}\n</top>\n" for k, t in enumerate(test.values()))
    _write(home / "disks45" / "04.testset.gz", gzip.compress(topics.encode(), mtime=0))
    _write(home / "disks45" / "qrels.robust2004.txt", "".join(f"{301 + k} 0 LA0101{6 * s:02d}-0001 1\n"
                                                                 for k, s in enumerate((0, 2, 5))))
    # The kit's published files, served over HTTP
    colbert = "".join(f"{q} Q0 {d} {r} {100 - r} colbert\n" for q in train for r, d in enumerate(
        positives[q] + [d for d in random.Random(int(q)).sample(ids, 40) if d not in positives[q]], 1))
    rankzephyr = "".join(f"{q} Q0 {d} {r} {101 - r} rank\n" for q in list(train)[:10] for r, d in enumerate(
        positives[q] + [d for d in random.Random(int(q)).sample(ids, 40) if d not in positives[q]][::-1], 1))
    hofstaetter = "".join(f"{12.5 - k % 3}\t{-1.5 + k % 5}\t{q}\t{p}\t{n}\n" for k, (q, p, n) in enumerate(triples))
    files = {"bert_cat_ensemble_msmarcopassage_train_scores_ids.tsv": hofstaetter,
             "__rankzephyr-colbert-10000-sampled-100__msmarco-passage-train-judged.run": rankzephyr,
             "__colbert__msmarco-passage-train-judged.run": colbert}
    for name, text in files.items():
        _write(served / name, text)
    return {name: hashlib.md5(text.encode()).hexdigest() for name, text in files.items()}


def tiny_masked_lm(folder: Path) -> Path:
    """A 2-layer random BERT masked-LM with the demo's tokenizer, standing for SPLADE-v3-DistilBERT."""
    import torch
    import transformers
    import cross_encoder
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64)
    transformers.BertForMaskedLM(config).save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(cross_encoder.minilm_path()).save_pretrained(folder)
    return folder


def _write(path: Path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
