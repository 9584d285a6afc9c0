"""The kit's shared core: errors, data and evaluation: everything the scripts read and measure. (The
cross-encoder is cross_encoder.py; the results store store.py; the flags and the runner grid.py.)

Sections, read top to bottom:
  0. errors and small file helpers
  1. ir_datasets and the published files it does not know (fetched once, md5 checked)
  2. readers for queries, qrels, documents, runs and teacher files (a bad or twice-read line names file and
     line)
  3. training batches per objective family, as [Q, n] groups
  4. test collections and their candidates
  5. evaluation (its tests: significance.py)
"""
from __future__ import annotations

import array
import contextlib
import dataclasses
import errno
import functools
import gzip
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator

import ir_measures
import numpy as np

import losses
import paper_setup
from paper_setup import Collection, TrainingSetup

REPO = Path(__file__).resolve().parent
SHIPPED_IR_DATASETS_HOME = REPO / "data" / "ir_datasets_home"


# ================================================================================================
# 0. Errors and file helpers
# ================================================================================================
class KitError(Exception):
    """A problem with the user's input or files. Scripts print it as one line and exit with 2."""


def extra(name: str, flag: str):
    """The optional feature extras/<name>.py, imported only where `flag` asks for it: a core run never loads it,
    and in a copy of a script without it the flag gets one error line naming the file to add."""
    import importlib
    try:
        return importlib.import_module(f"extras.{name}")
    except ModuleNotFoundError as error:
        if error.name not in ("extras", f"extras.{name}"):
            raise
        raise KitError(f"{flag} needs extras/{name}.py (and extras/__init__.py): copy them from the kit beside "
                       f"this script") from None


class Interrupted(Exception):
    """The work stopped where it resumes from exactly (a checkpoint saved first) because a stop was asked for
    (request_stop: SLURM's signal before a time limit or a preemption, or a lock taken over)."""


class EarlyExit(Exception):
    """Ends a script before its tables, not in error (a plan printed, cells left to other workers): status 0."""


_STOP: list[str] = []  # why a stop was asked for, if it was


def request_stop(reason: str) -> None:
    """Ask the work to stop at its next safe point (a step, a batch); safe from a signal handler or a thread."""
    _STOP.append(reason)


def stop_requested() -> str | None:  # why a stop was asked for, or None
    return _STOP[0] if _STOP else None


def field_default(field: dataclasses.Field):
    """A dataclass field's default value, made fresh where it comes from a factory."""
    return field.default if field.default is not dataclasses.MISSING else field.default_factory()


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
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        raise disk_full(error, path) or error


def disk_full(error: BaseException, path: Path) -> OSError | None:
    """The OSError(ENOSPC) naming `path` that `error` amounts to (a write that failed on a full disk: torch and
    safetensors raise their own kinds, os.write names no file), or None when it is something else."""
    if isinstance(error, OSError):
        full = error.errno == errno.ENOSPC and not error.filename
    else:
        full = isinstance(error, Exception) and shutil.disk_usage(Path(path).parent).free < 1 << 26  # < 64 MB
    return OSError(errno.ENOSPC, "No space left on device", str(path)) if full else None


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


def slug(name: str) -> str:
    """A name fit for a folder or a run tag: a path becomes its file name, other characters become '-'."""
    return re.sub(r"[^A-Za-z0-9.-]+", "-", Path(name).name if Path(name).exists() else name).strip("-")


def md5_of(path: Path) -> str:
    """The md5 of a file, computed once per (path, mtime, size): teacher files can be GBs."""
    stat = Path(path).stat()
    return _md5_cached(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4096)  # every file of a grid's cells and evaluations, checked once per process
def _md5_cached(path: str, mtime_ns: int, size: int) -> str:
    return file_digest(path, "md5")


def file_digest(path, algorithm: str) -> str:
    """The hex digest of a file (hashlib's algorithm name), read in blocks of 1 MiB."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ================================================================================================
# 1. ir_datasets and the published files it does not know
# ================================================================================================
def kit_cache() -> Path:
    """The kit's own cache, shared by every results folder: published files, the demo's private ir_datasets
    home. $KIT_CACHE, else $XDG_CACHE_HOME/cross-encoder-kit, else ~/.cache/cross-encoder-kit."""
    if os.environ.get("KIT_CACHE"):
        return Path(os.environ["KIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cross-encoder-kit"


def user_ir_datasets_home() -> Path:
    """The user's own ir_datasets home, where ir_datasets downloads the official collections."""
    return Path(os.environ.get("IR_DATASETS_HOME") or Path.home() / ".ir_datasets")


_chosen_home: list[tuple[Path, bool]] = []  # (the ir_datasets home of this process, is it the demo's), once chosen


def choose_ir_datasets_home(demo: bool) -> Path:
    """Where this process reads its collections: the demo (and smoke) from a private ir_datasets home in the
    kit's cache holding data/'s files (the demo's cut-down TREC DL files must not stand in the user's home for
    the official ids); paper mode from the user's home. ir_datasets reads it once, so a process chooses once."""
    home = (kit_cache() / "ir_datasets_demo" if demo else user_ir_datasets_home()).resolve()
    if _chosen_home and _chosen_home[0] != (home, demo):
        raise RuntimeError(f"this process reads collections from {_chosen_home[0][0]} already; it cannot switch to {home}")
    if not _chosen_home:
        _chosen_home.append((home, demo))
        os.environ["IR_DATASETS_HOME"] = str(home)  # before ir_datasets is imported (load_dataset imports it)
    return home


def install_demo_data(home: Path) -> None:
    """Copy the repo's demo files into `home` where missing (never overwriting), so that the demo ids resolve
    offline exactly as they would after ir_datasets downloaded them."""
    for source in SHIPPED_IR_DATASETS_HOME.rglob("*"):
        target = home / source.relative_to(SHIPPED_IR_DATASETS_HOME)
        if source.is_file() and not target.exists():
            atomic_write_bytes(target, source.read_bytes())  # a private temp name: safe with concurrent runs


def load_dataset(dataset_id: str):
    """The ir_datasets dataset, from the home choose_ir_datasets_home() picked; a local collection for a
    "local:<spec>" id (extras/local_collection.py); an unknown id is a KitError."""
    if dataset_id.startswith("local:"):
        local = extra("local_collection", "a local collection (a JSON spec in --collections)")
        return local.LocalCollection(Path(dataset_id[len("local:"):]))
    if not _chosen_home:
        raise RuntimeError("call common.choose_ir_datasets_home(demo=...) before loading a collection")
    home, demo = _chosen_home[0]
    if demo:
        install_demo_data(home)
    import ir_datasets  # imported late: it reads IR_DATASETS_HOME when imported
    import logging
    # ir_datasets logs each step and failed download: the progress bars and the kit's errors say what matters.
    logging.disable(logging.WARNING)
    try:
        return ir_datasets.load(dataset_id)
    except KeyError:
        raise KitError(f"unknown ir_datasets id {dataset_id!r}; see https://ir-datasets.com for valid ids") from None


def external_path(name: str) -> Path:
    """Where a published file lives once fetched: in the kit's cache, not in the user's ir_datasets home."""
    return kit_cache() / "published" / name


def fetch_external(name: str) -> Path:
    """Path of a published file, downloading it once into the kit's cache and checking its md5.
    A file that fails the check is deleted, never kept."""
    spec = paper_setup.EXTERNAL_FILES[name]
    path = external_path(spec.name)
    recorded = path.with_name(spec.name + ".md5")
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
    actual = md5_of(path)
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
    if name in paper_setup.EXTERNAL_FILES:
        return fetch_external(name)
    path = Path(name)
    return path if path.is_absolute() else REPO / path


# ================================================================================================
# 2. Readers: queries, qrels, documents, runs and teacher files
# ================================================================================================
@contextlib.contextmanager
def reading(dataset, what: str):
    """Turn ir_datasets' failures while reading (or first downloading) part of a collection into one line:
    a failed download, files that must be placed by hand (licensed collections), a malformed file."""
    try:
        yield
    except OSError as error:  # requests' ConnectionError is one; so is a licensed collection's missing folder
        raise KitError(f"{dataset.dataset_id()}: its {what} could not be read or downloaded ({type(error).__name__}: "
                       f"{str(error).splitlines()[0][:160]}); check the network, or see "
                       f"https://ir-datasets.com for where to place the files by hand") from None
    except RuntimeError as error:  # ir_datasets' word for source files that are not all in place
        raise KitError(f"{dataset.dataset_id()}: its {what} could not be read ({str(error).splitlines()[0][:240]})"
                       ) from None
    except ValueError as error:
        raise KitError(f"{dataset.dataset_id()}: its {what} could not be parsed ({error}); check the files in "
                       f"{_chosen_home[0][0] if _chosen_home else user_ir_datasets_home()}") from None


def load_queries(dataset) -> dict[str, str]:
    """{query id: text}, the text as ir_datasets' default_text() gives it (a TREC topic's title: Robust04's
    queries have no `.text` field)."""
    queries, same, name = {}, 0, dataset.dataset_id()
    with reading(dataset, "queries"):
        for number, q in enumerate(dataset.queries_iter(), 1):
            text = (q.default_text() if hasattr(q, "default_text") else q.text).strip()
            same += once(queries, q.query_id, text, lambda _: (
                f"{name}: query {q.query_id!r} appears twice in its queries (entries "
                f"{_entry(dataset.queries_iter(), q.query_id)} and {number}), with two texts; keep one"))
    repeats_note(f"{name}'s queries", same, "query line(s)")
    return queries


def load_qrels(dataset, relevance: tuple = ()) -> dict[str, dict[str, int]]:
    remap, qrels, same, name = dict(relevance), {}, 0, dataset.dataset_id()
    with reading(dataset, "qrels (relevance grades must be whole numbers)"):
        for number, j in enumerate(dataset.qrels_iter(), 1):
            grade = remap.get(j.relevance, j.relevance)
            same += once(qrels.setdefault(j.query_id, {}), j.doc_id, grade, lambda old: (
                f"{name}: document {j.doc_id!r} is judged twice for query {j.query_id!r} in its qrels (entries "
                f"{_entry(dataset.qrels_iter(), j.query_id, j.doc_id)} and {number}), as {old} and {grade}; keep one"))
    repeats_note(f"{name}'s qrels", same, "judgement(s)")
    return qrels


def once(table: dict, key, value, conflict) -> int:
    """Put `value` at `key` of `table`: 0 when new, 1 when it repeats the value there exactly; a different value
    there is a KitError, `conflict(old value)`: an input must not be read two ways."""
    if key not in table:
        table[key] = value
        return 0
    if table[key] != value:
        raise KitError(conflict(table[key]))
    return 1


def published(path) -> bool:
    """Whether `path` is one of the papers' published files (md5-pinned, fetched into the kit's cache): their
    content is the paper's data as it is, read as the kit always read it (a repeated line: the later one kept)."""
    return Path(path).resolve().parent == (kit_cache() / "published").resolve()


def _entry(items, query_id: str, doc_id: str | None = None) -> int:
    """The number of the first of ir_datasets' `items` (queries or qrels) with these ids."""
    return next(n for n, item in enumerate(items, 1)
                if item.query_id == query_id and (doc_id is None or item.doc_id == doc_id))


class DocumentLookup:
    """Document texts by id through ir_datasets' docs_store(): nothing is loaded into memory up front
    (MS MARCO has 8.8M passages). A document's text is doc_text()'s."""

    def __init__(self, dataset, source: str = "the run"):
        self.dataset, self.source, self._store = dataset, source, None  # source: the file that names the ids

    def __getstate__(self):  # DataLoader workers reopen the store themselves
        return {"dataset": self.dataset, "source": self.source, "_store": None}

    def get_many(self, doc_ids) -> dict[str, str]:
        with reading(self.dataset, "documents"):
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
            raise KitError(f"{self.source}: {len(missing)} of its document ids are not in "
                           f"{self.dataset.dataset_id()}, e.g. {sorted(missing)[0]!r}; check that the file belongs "
                           f"to this collection")
        return {doc_id: doc_text(doc) for doc_id, doc in docs.items()}


def doc_text(doc) -> str:
    """A document's text as ir_datasets' default_text() gives it, stripped: title and body for BEIR's,
    NFCorpus's and TREC parsed documents (Robust04's have no `.text` field), the text for MS MARCO and LoTTE
    passages. A body that begins with its title (Cranfield's do) does not get the title twice."""
    title = getattr(doc, "title", "") or ""
    text = doc.default_text() if hasattr(doc, "default_text") else doc.text
    if title and text.startswith(f"{title} {title}"):
        text = text[len(title) + 1:]
    return text.strip()


def _fields(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(line number, line, whitespace-separated fields) of each non-blank line of a text file."""
    with open_text(path) as handle:
        try:
            for number, line in enumerate(handle, 1):
                parts = line.split()
                if parts:
                    yield number, line, parts
        except UnicodeDecodeError:
            raise KitError(not_utf8(path)) from None


def not_utf8(path: Path) -> str:
    """The error line for a file that is not UTF-8 text: where its first byte that is not lies (read in blocks:
    the file may be gigabytes)."""
    import codecs
    decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
    with (gzip.open(path) if Path(path).suffix == ".gz" else open(path, "rb")) as raw:
        while block := raw.read(1 << 20):
            pending = decoder.getstate()[0]  # the start of a character cut by the last block
            try:
                decoder.decode(block)
            except UnicodeDecodeError as error:
                bad = (pending + block)[error.start:error.start + 1]
                return (f"{path}: not UTF-8 text (byte {offset - len(pending) + error.start}: {bad!r}); convert it "
                        f"to UTF-8, e.g. iconv -f latin1 -t utf-8")
            offset += len(block)
    return f"{path}: not UTF-8 text; convert it to UTF-8"


def first_line_of(path: Path, *fields: tuple[int, str]) -> int:
    """The number of the first line of `path` whose fields at these positions hold these values (an error
    message names both lines of a duplicate; the first is looked up only then)."""
    return next(number for number, _, parts in _fields(path)
                if all(len(parts) > i and parts[i] == value for i, value in fields))


def repeats_note(path, count: int, what: str) -> None:  # exact repeats: read once, said once
    if count:
        print(f"note: {path}: {count} {what} repeat(s) an earlier one exactly; each is counted once", file=sys.stderr)


def finite(text: str) -> float:
    """A score read from a file: a finite number that fits the 32-bit floats the kit trains with, or a
    ValueError that says what was found."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"score {text!r} is not a finite number")
    if abs(value) > np.finfo(np.float32).max:
        raise ValueError(f"score {text!r} is beyond the range of a 32-bit float")
    return value


def _numbered_run(path: Path) -> Iterator[tuple[int, str, str, float]]:
    """Stream (line number, qid, docid, score) from a TREC run file `qid Q0 docid rank score tag` (.gz allowed)."""
    for number, line, parts in _fields(path):
        try:
            if len(parts) != 6:
                raise ValueError(f"expected 6 fields (qid Q0 docid rank score tag), found {len(parts)}")
            yield number, parts[0], parts[2], finite(parts[4])
        except ValueError as error:
            raise KitError(f"{path}, line {number}: malformed run line ({error}): {line.strip()[:80]!r}") from None


def trec_order(items) -> list[tuple[str, float]]:
    """(docid, score) pairs in trec_eval's order: score descending, ties by docid descending."""
    return sorted(items, key=lambda item: (item[1], item[0]), reverse=True)


def iter_ranked(path: Path, depth: int | None = None) -> Iterator[tuple[str, list[tuple[str, float]]]]:
    """Stream (qid, top-`depth` ranking) one query at a time from a run grouped by query (as TREC runs
    are): memory for one query, whatever the file's size."""
    seen, current, docs, same, strict = set(), None, {}, 0, not published(path)
    for number, qid, docid, score in _numbered_run(path):
        if qid != current:
            if current is not None:
                yield current, trec_order(docs.items())[:depth]
            if qid in seen:
                raise KitError(f"{path}: the lines of query {qid!r} are not contiguous; group the run by query "
                               f"first (e.g. sort -s -k1,1 {path})")
            seen.add(qid)
            current, docs = qid, {}
        if strict:
            same += once(docs, docid, score, lambda old: _ranked_twice(path, qid, docid, old, score, number))
        docs[docid] = score
    if current is not None:
        yield current, trec_order(docs.items())[:depth]
    repeats_note(path, same, "line(s)")


def _ranked_twice(path: Path, qid: str, docid: str, old: float, score: float, number: int) -> str:
    return (f"{path}, lines {first_line_of(path, (0, qid), (2, docid))} and {number}: document {docid!r} is ranked "
            f"twice for query {qid!r}, with scores {old!r} and {score!r}; keep one of the two lines")


def read_run(path: Path, depth: int | None = None) -> dict[str, list[tuple[str, float]]]:
    """A TREC run as {qid: [(docid, score), ...]} in trec_eval's order (the rank column is ignored,
    as trec_eval ignores it), keeping the top `depth` per query."""
    run: dict[str, dict[str, float]] = {}
    same = 0
    strict = not published(path)
    for number, qid, docid, score in _numbered_run(path):
        docs = run.setdefault(qid, {})
        if strict:
            same += once(docs, docid, score, lambda old: _ranked_twice(path, qid, docid, old, score, number))
        docs[docid] = score
    repeats_note(path, same, "line(s)")
    return {qid: trec_order(docs.items())[:depth] for qid, docs in run.items()}


def read_qrels_file(path: Path) -> dict[str, dict[str, int]]:
    """TREC qrels `qid iteration docid relevance` as {qid: {docid: relevance}}."""
    qrels: dict[str, dict[str, int]] = {}
    duplicates = 0
    for number, line, parts in _fields(path):
        if len(parts) != 4 or not parts[3].lstrip("-").isdigit():
            raise KitError(f"{path}, line {number}: malformed qrels line (expected 'qid iteration docid "
                           f"relevance' with an integer relevance): {line.strip()[:80]!r}")
        duplicates += once(qrels.setdefault(parts[0], {}), parts[2], int(parts[3]), lambda old: (
            f"{path}, lines {first_line_of(path, (0, parts[0]), (2, parts[2]))} and {number}: document "
            f"{parts[2]!r} is judged twice for query {parts[0]!r}, as {old} and {parts[3]}; keep one of the two lines"))
    repeats_note(path, duplicates, "judgement(s)")
    return qrels


def iter_teacher_pairs(path: Path) -> Iterator[tuple[str, str, str, float, float]]:
    """Stream (qid, pos_id, neg_id, pos_score, neg_score) from Hofstätter's teacher file, whose lines
    are `pos_score<TAB>neg_score<TAB>qid<TAB>pos_pid<TAB>neg_pid`."""
    for number, line, parts in _fields(path):
        try:
            if len(parts) != 5:
                raise ValueError(f"expected 5 fields, found {len(parts)}")
            yield parts[2], parts[3], parts[4], finite(parts[0]), finite(parts[1])
        except ValueError as error:
            raise KitError(f"{path}, line {number}: malformed teacher line ({error}; expected "
                           f"'pos_score neg_score qid pos_pid neg_pid'): {line.strip()[:80]!r}") from None


def write_teacher_pairs(path: Path, rows: Iterable[tuple[float, float, str, str, str]], seed: int = 0) -> int:
    """Write (pos_score, neg_score, qid, pos_id, neg_id) rows in Hofstätter's format, scores in full, in a
    seeded shuffled order: a run that reads only the first lines (paper mode reads steps x batch of them)
    then sees every query, not the first ones. Returns the number of lines."""
    lines = [f"{float(p)!r}\t{float(n)!r}\t{qid}\t{pos}\t{neg}\n" for p, n, qid, pos, neg in rows]
    atomic_write_text(path, "".join(lines[i] for i in np.random.default_rng(seed).permutation(len(lines))))
    return len(lines)


def write_run(path: Path, run: dict[str, dict[str, float]], tag: str) -> None:
    """Write {qid: {docid: score}} as a TREC run in trec_eval's order. Scores are written in full (the
    shortest text that reads back as the same float): rounding them would create ties the model did not
    make, and the file would no longer evaluate to the metrics computed from the scores."""
    lines, tag = [], re.sub(r"\s+", "_", tag)  # a run line has 6 fields: no white space in the tag
    for qid in sorted(run):
        ranked = trec_order(run[qid].items())
        lines += [f"{qid} Q0 {docid} {rank} {float(score)!r} {tag}\n" for rank, (docid, score) in enumerate(ranked, 1)]
    data = "".join(lines).encode()
    atomic_write_bytes(path, gzip.compress(data, mtime=0) if str(path).endswith(".gz") else data)


# ================================================================================================
# 3. Training batches: every objective sees a [Q, n] group of candidates per step
# ================================================================================================
@dataclasses.dataclass
class Batch:
    queries: list[str]       # Q query texts
    docs: list[list[str]]    # Q lists of n passage texts
    targets: "torch.Tensor"  # [Q, n] labels or teacher scores, higher = better


class TrainingData:
    """The batches of a training run, as the paper's epochs: each epoch visits every training unit (a triple, or
    a query) once, in a seeded permutation; step k takes the next `batch_queries` units, and its negatives are
    drawn from (seed, k): a resumed run sees exactly the batches an uninterrupted one would."""

    def __init__(self, kind: str, queries: dict[str, str], documents: DocumentLookup, batch_queries: int,
                 seed: int, examples=None, positives=None, candidates=None, teacher=None, group_size: int = 2):
        self.kind, self.queries, self.documents = kind, queries, documents
        self.batch_queries, self.seed, self.group_size = batch_queries, seed, group_size
        self.examples, self.positives, self.candidates, self.teacher = examples, positives, candidates, teacher
        self.qids = sorted(positives) if kind == "groups" else sorted(candidates or {}) if kind == "lists" else None
        self._epoch, self._order = None, None

    def __len__(self) -> int:  # distinct training units (triples or queries)
        return len(self.examples) if self.kind == "pairs" else len(self.qids)

    def units(self, step: int) -> list[int]:
        """Indices of the training units of step `step`: positions step*B .. step*B+B-1 of the epoch sequence."""
        chosen = []
        for position in range(step * self.batch_queries, (step + 1) * self.batch_queries):
            epoch, offset = divmod(position, len(self))
            if epoch != self._epoch:  # one permutation per epoch, kept while the steps stay in it
                self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self))
            chosen.append(int(self._order[offset]))
        return chosen

    def batch(self, step: int) -> Batch:
        import torch
        rng = np.random.default_rng([self.seed, step])
        rows: list[tuple[str, list[str], list[float]]] = []
        for index in self.units(step):
            if self.kind == "pairs":
                qid, pos, neg, pos_target, neg_target = self.examples[index]
                rows.append((qid, [pos, neg], [pos_target, neg_target]))
                continue
            qid = self.qids[index]
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
    kind = losses.DATA.get(objective)
    if kind is None:
        raise KitError(f"unknown objective {objective!r}; valid: {', '.join(losses.DATA)}")
    dataset = load_dataset(setup.queries)
    source = {"teacher-pairs": setup.teacher_pairs, "lists": setup.teacher_lists, "teacher-groups": teacher_scores,
              "pairs": setup.triples or setup.pair_negatives, "groups": setup.candidates}[kind]
    queries, documents = load_queries(dataset), DocumentLookup(dataset, source=str(source))
    common = dict(queries=queries, documents=documents, batch_queries=batch_queries, seed=seed)
    if kind == "teacher-pairs" or (kind == "pairs" and setup.triples):
        triples = load_dataset(setup.triples) if kind == "pairs" else None
        if kind == "pairs":  # the official triples, labels (1, 0)
            rows = ((p.query_id, p.doc_id_a, p.doc_id_b, 1.0, 0.0) for p in triples.docpairs_iter())
        else:
            rows = iter_teacher_pairs(resolve_file(setup.teacher_pairs))
        with reading(triples or dataset, "training triples"):
            examples = PairTable(example for _, example in zip(range(max_examples or sys.maxsize), rows))
        if len(examples) < batch_queries:
            raise KitError(f"only {len(examples)} training pairs found, fewer than one batch of {batch_queries}")
        return TrainingData("pairs", examples=examples, **common)
    qrels = load_qrels(dataset)
    positives = {qid: sorted(d for d, rel in docs.items() if rel > 0) for qid, docs in qrels.items()}
    if kind == "lists":
        lists = read_run(resolve_file(setup.teacher_lists))
        if setup.list_candidates:  # keep, in the teacher's order, the documents of another first stage's top
            kept_docs = {qid: {d for d, _ in ranked} for qid, ranked in
                         iter_ranked(resolve_file(setup.list_candidates), group_size) if qid in lists}
            lists = {qid: [(d, s) for d, s in ranked if d in kept_docs.get(qid, ())] for qid, ranked in lists.items()}
        lists = {qid: ranked[:group_size] for qid, ranked in lists.items()}
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
    first_stage = setup.candidates if kind in ("groups", "teacher-groups") else setup.pair_negatives
    kept_positives, negatives = {}, {}
    # Streamed and stored compactly: the paper's ColBERTv2 run has ~500 lines for each of ~500k queries.
    for qid, ranked in iter_ranked(resolve_file(first_stage), setup.candidate_depth):
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
    """Training triples (qid, pos_id, neg_id, pos_target, neg_target) in flat typed arrays: the paper's 6.4M
    triples take ~200 MB, not ~2 GB of tuples, shared by forked DataLoader workers. A numeric id (MS MARCO's) is
    stored as its value, any other as -(1 + its index in a side list)."""

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
# 4. Test collections and their candidates
# ================================================================================================
@dataclasses.dataclass
class EvalData:
    collection: Collection
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    documents: DocumentLookup
    candidates: dict[str, list[str]]
    candidates_name: str


def load_eval_data(collection: Collection, run_dir: str | None = None, depth: int = 1000,
                   max_queries: int | None = None, run: Path | None = None) -> EvalData:
    """Queries, qrels, documents and the top-`depth` candidates of a test collection. Candidates come from
    `run` (a first stage the kit ran) or `run_dir/<collection>.run[.gz]` when given, else the run shipped with
    the demo, else the dataset's own scoreddocs. `max_queries` keeps the first judged queries only (smoke)."""
    dataset = load_dataset(collection.dataset_id)
    queries, qrels = load_queries(dataset), load_qrels(dataset, collection.relevance)
    path = Path(run) if run else None
    if path is None and run_dir:
        options = [Path(run_dir) / f"{collection.name}.run{ext}" for ext in ("", ".gz", ".trec", ".trec.gz")]
        path = next((p for p in options if p.exists()), None)
        if path is None:
            raise KitError(f"no candidates for {collection.name}: expected {options[0]} (or .gz) in --run-dir; "
                           f"see the README section 'Candidates'")
    elif path is None and collection.run:
        path = REPO / collection.run
    if path is not None:
        ranked, name, source = read_run(path, depth), f"{path.name}@{depth}", str(path)
        if not ranked:
            raise KitError(f"{path}: the run is empty; write the candidates of {collection.name} into it")
    elif dataset.has_scoreddocs():
        scored: dict[str, dict[str, float]] = {}
        with reading(dataset, "scoreddocs"):
            for sd in dataset.scoreddocs_iter():
                scored.setdefault(sd.query_id, {})[sd.doc_id] = sd.score
        ranked = {q: trec_order(d.items())[:depth] for q, d in scored.items()}
        name = source = f"{collection.dataset_id}/scoreddocs@{depth}"
    else:
        raise KitError(f"no candidates for {collection.name} ({collection.dataset_id} has no scoreddocs): pass "
                       f"--run-dir with {collection.name}.run; see the README section 'Candidates'")
    if max_queries:
        qrels = {qid: qrels[qid] for qid in sorted(qrels)[:max_queries]}
        name += f"/first-{max_queries}-queries"
    candidates = {qid: [d for d, _ in docs] for qid, docs in ranked.items() if qid in qrels}
    unknown = sorted(q for q in candidates if not queries.get(q))
    if unknown:  # they would be re-ranked without a query: every model scores 0 there, the first stage does not
        blank = [q for q in unknown if q in queries]
        raise KitError(f"{source}: {len(unknown)} of its judged queries have no text in the queries of "
                       f"{collection.dataset_id} (e.g. {unknown[0]!r}{', blank' if blank else ', absent'}); add "
                       f"their texts to the queries file, or remove them from the run and the qrels")
    if not candidates:
        raise KitError(f"{source}: none of its query ids is a judged query of {collection.dataset_id} (e.g. run "
                       f"{next(iter(ranked), None)!r} vs qrels {next(iter(qrels), None)!r}); is it the run of another "
                       f"collection?")
    # The evaluation caches are keyed by the candidates' content, not only their file name.
    name += "#" + hashlib.sha1(json.dumps(candidates, sort_keys=True).encode()).hexdigest()[:8]
    return EvalData(collection, queries, qrels, DocumentLookup(dataset, source=source), candidates, name)


# ================================================================================================
# 5. Evaluation (the tests on its per-query values: significance.py)
# ================================================================================================
def evaluate(run, qrels, measures):
    """Score ``run`` ({qid: {docid: score}}) against ``qrels`` ({qid: {docid: relevance}}): ``(aggregate,
    per_query)``, {measure: mean} and {measure: {qid: value}}, keyed by the measure strings as given.

    The query set is the qrels' query set, nothing else: run queries without judgements are ignored;
    judged queries missing from the run, or with an empty ranking, score 0 (trec_eval -c); judged queries
    with no relevant document are kept and score 0, as ir_measures does, so ``aggregate`` equals
    ``ir_measures.calc_aggregate`` on the same inputs. Ties in score are broken as trec_eval does (by docid,
    descending) for every measure, whichever provider ir_measures picks."""
    if not qrels:
        raise ValueError("qrels is empty: there is no query to average over")
    # Several strings may name the same measure ("RR@10" vs "RR(cutoff=10)"); compute each once.
    names_of = defaultdict(list)
    for name in dict.fromkeys(measures):
        names_of[ir_measures.parse_measure(name)].append(name)
    # pytrec_eval insists on str ids, float scores and int grades (np.int64 is a TypeError).
    qrels = {str(q): {str(d): int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    # One tie order for every measure: ir_measures computes nDCG and R through pytrec_eval (ties by docid
    # descending, as trec_eval) but RR through its own code (docid ascending). Each provider gets the rank
    # in trec_eval's order as a distinct score instead, so none of them meets a tie.
    run = {str(q): {str(d): float(len(ranking) - rank) for rank, (d, _) in
                    enumerate(trec_order((str(d), float(s)) for d, s in ranking.items()))}
           for q, ranking in run.items() if str(q) in qrels and ranking}
    # Every judged query starts at 0: "missing counts 0" holds whatever provider ir_measures picks.
    per_query = {name: dict.fromkeys(qrels, 0.0) for name in dict.fromkeys(measures)}
    for metric in ir_measures.iter_calc(list(names_of), qrels, run):
        for name in names_of[metric.measure]:
            per_query[name][metric.query_id] = float(metric.value)
    aggregate = {name: float(np.mean(list(values.values()))) for name, values in per_query.items()}
    return aggregate, per_query
