"""A test collection of your own (`--collections my-collection.json`), read from plain files and described by a small
JSON spec: it answers the few calls the kit makes of an ir_datasets dataset (common.load_dataset gives it for a
"local:<spec>" id), so it is checked, re-ranked and tabulated like any other collection.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, NamedTuple

import common


class LocalQuery(NamedTuple):
    query_id: str
    text: str


class LocalQrel(NamedTuple):
    query_id: str
    doc_id: str
    relevance: int


class LocalDoc(NamedTuple):
    doc_id: str
    title: str
    text: str

    def default_text(self) -> str:
        return f"{self.title} {self.text}".strip()


class LocalCollection:
    """A test collection of your own, described by a small JSON spec whose paths are relative to it:

        {"name": "my-collection", "queries": "queries.tsv", "qrels": "qrels.txt", "documents": "corpus.jsonl",
         "run": "bm25.run", "group": "out-of-domain", "measures": ["nDCG@10", "RR@10", "R@100"]}

    queries: TSV `qid<TAB>text` or JSONL {"_id", "text"}; qrels: TREC `qid 0 docid grade`; documents: JSONL
    {"_id", "title", "text"} (BEIR's corpus.jsonl) or TSV `docid<TAB>text`; run: a TREC run of the candidates.
    Everything is read and checked when the collection is opened (a bad line names file and line); it then
    answers the few calls the kit makes of an ir_datasets dataset."""

    def __init__(self, spec: Path):
        self.spec = Path(spec)
        self.fields = read_collection_spec(self.spec)
        files = {k: self.spec.parent / self.fields[k] for k in ("queries", "qrels", "documents")}
        queries = _unique(files["queries"], ("_id", "text"), "query")
        self.queries = [LocalQuery(q, t) for q, t in queries.values()]
        self.qrels = [LocalQrel(q, d, g) for q, docs in common.read_qrels_file(files["qrels"]).items() for d, g in docs.items()]
        documents = _unique(files["documents"], ("_id", "text", "title"), "document")
        self.docs = {d: LocalDoc(d, title, text) for d, text, title in documents.values()}

    def dataset_id(self) -> str:
        return f"local:{self.spec}"

    def queries_iter(self):
        return iter(self.queries)

    def qrels_iter(self):
        return iter(self.qrels)

    def docs_iter(self):
        return iter(self.docs.values())

    def docs_store(self):
        return self

    def get_many(self, doc_ids):
        return {d: self.docs[d] for d in doc_ids if d in self.docs}

    def has_scoreddocs(self) -> bool:
        return False


def read_collection_spec(spec: Path) -> dict:
    """The JSON spec of a local collection, with its required fields and files checked."""
    try:
        fields = json.loads(common.open_text(spec).read())
    except UnicodeDecodeError:
        raise common.KitError(common.not_utf8(spec)) from None
    except json.JSONDecodeError as error:
        raise common.KitError(f"{spec}: not a JSON collection spec ({error}); see extras/local_collection.py") from None
    missing = [k for k in ("name", "queries", "qrels", "documents", "run") if k not in fields]
    if missing:
        raise common.KitError(f"{spec}: the collection spec has no {', '.join(missing)}; see extras/local_collection.py")
    for key in ("name", "queries", "qrels", "documents", "run"):
        if not isinstance(fields[key], str) or not fields[key].strip():
            raise common.KitError(f"{spec}: its {key!r} must be a text (a file name, relative to the spec), not "
                                  f"{fields[key]!r}")
    for key in ("queries", "qrels", "documents", "run"):
        if not (spec.parent / fields[key]).is_file():
            raise common.KitError(f"{spec}: its {key} file {spec.parent / fields[key]} does not exist")
    return fields


def _unique(path: Path, keys: tuple, what: str) -> dict[str, tuple]:
    """{id: row} of a queries or documents file: an id twice with two texts is a KitError naming both lines (the
    first looked up only then); an exact repeat is counted once, with a note."""
    rows, same = {}, 0
    for number, row in _records(path, keys):
        same += common.once(rows, row[0], row, lambda _: (
            f"{path}, lines {next(n for n, r in _records(path, keys) if r[0] == row[0])} and {number}: {what} "
            f"{row[0]!r} appears twice with two texts; keep one of the two lines"))
    common.repeats_note(path, same, "line(s)")
    return rows


def _records(path: Path, keys: tuple) -> Iterator[tuple[int, tuple]]:
    """(line number, row) of a JSONL file (the fields `keys`, "" where absent; "_id" also read as "doc_id" /
    "query_id") or of a TSV file (its columns in that order)."""
    with common.open_text(path) as handle:
        lines = enumerate(handle, 1)
        while True:
            try:
                number, line = next(lines)
            except StopIteration:
                return
            except UnicodeDecodeError:
                raise common.KitError(common.not_utf8(path)) from None
            if not line.strip():
                continue
            try:
                if path.name.endswith((".jsonl", ".jsonl.gz")):
                    record = json.loads(line)
                    record.setdefault("_id", record.get("doc_id", record.get("query_id")))
                    row = tuple(str(record.get(k) or "") for k in keys)
                else:
                    row = tuple(line.rstrip("\n").split("\t")) + ("",) * len(keys)
                    row = row[:len(keys)]
                if not row[0] or not row[1].strip():
                    raise ValueError("expected an id and a text")
                yield number, row
            except (ValueError, AttributeError) as error:
                raise common.KitError(f"{path}, line {number}: malformed line ({error}): {line.strip()[:80]!r}") from None


