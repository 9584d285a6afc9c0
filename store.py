"""The results store: one folder per trained cell, keyed by its full training configuration; a lock per folder, so
that any number of workers share the store; and evaluations, cached beside their cell.

A finished cell is reused by every script and an interrupted one resumes from its checkpoint. A cell's state
lives in its folder (its checkpoint, its evaluations), so a result never depends on which worker computed it.
The store reads only what it wrote: model weights through transformers, checkpoints with torch.load's
weights_only (cross_encoder._read_checkpoint), everything else as JSON or text.

Sections, read top to bottom:
  1. the layout and its version
  2. cells: keys and folders
  3. locks: one worker at a time on a folder, on one machine or many
  4. a cell's marks: its configuration when it starts, DONE when it is trained
  5. evaluations, cached beside their cell
"""
from __future__ import annotations

import dataclasses
import errno
import gzip
import hashlib
import json
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import common
import cross_encoder
import losses
import paper_setup
from common import EvalData, KitError
from cross_encoder import TrainConfig


# ================================================================================================
# 1. The layout and its version
# ================================================================================================
RESULTS_FORMAT = 3  # bump when a results folder's cells or layout would no longer be reproduced
# What each bump changed, so that a refused folder says why.
FORMAT_CHANGES = {2: "training batches follow seeded epochs and bf16 models score with an fp32 head",
                  3: "the demo's InfoNCE negatives and teacher lists come from a dense first stage, and cells are keyed "
                     "by the content of their training files"}

# results/FORMAT                                    layout version (RESULTS_FORMAT)
# results/cells/<backbone>__<objective>__seed<k>__<config hash>/
#     config.json  train_log.jsonl  checkpoint.pt  model/  DONE (where and how long it trained)
#     LOCK (while a worker works on the cell: see "Locks" below)
#     eval/<collection>__<evaluation hash>/run.trec.gz  per_query.json  timing.json  metrics.json (written last)
# results/first-stage/<collection>__<hash>/...     the candidates' own effectiveness
# results/tokens/<key>.npz                          --token-cache: token ids of candidates (extras/token_batches.py)
# A cell counts as finished only once its DONE (or metrics.json) exists; both are written atomically
# after everything else, so an interrupted cell is resumed, never read as finished.
def cannot_write(folder: Path) -> str | None:
    """Why `folder` (made if missing) cannot be written to, or None: checked before any work is done there."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        return error.strerror
    return None


def tokens_folder(results: Path, token_cache: bool) -> Path | None:
    """Where --token-cache keeps the candidates' token ids (extras/token_batches.py); None without it."""
    return Path(results) / "tokens" if token_cache else None


def open_results(results: Path) -> Path:
    """The results folder, made if missing; one of another layout version, or one that cannot be written,
    is refused before any work."""
    results = Path(results)
    marker = results / "FORMAT"
    why = cannot_write(results)
    if why:
        raise KitError(f"--results {results}: cannot write there ({why}); pass a folder you can write to")
    if marker.exists():
        found = marker.read_text().strip()
        if found != str(RESULTS_FORMAT):
            raise KitError(f"{results} was written by an incompatible version of the kit (format {found}, this "
                           f"version writes {RESULTS_FORMAT}: {FORMAT_CHANGES[RESULTS_FORMAT]}); pass another "
                           f"--results folder")
    else:
        common.atomic_write_text(marker, f"{RESULTS_FORMAT}\n")
    return results



# ================================================================================================
# 2. Cells: keys and folders
# ================================================================================================
def cell_key(cfg: TrainConfig) -> str:
    """The hash of everything that determines the trained model, and of the store's layout version (options
    that are off by default count only when on: cross_encoder.OFF_BY_DEFAULT)."""
    fields = cfg.record()
    used = cfg.teacher_file()
    # A local teacher file is keyed by its content and name, not its folder: a rebuilt teacher must
    # not reuse old cells, while a results store that moved (or another spelling of --results)
    # must still find its own.
    if used and used not in paper_setup.EXTERNAL_FILES and common.resolve_file(used).is_file():
        fields["teacher_md5"] = common.md5_of(common.resolve_file(used))
        for name in ("teacher_scores", "teacher_pairs", "teacher_lists"):
            if fields[name] == used:
                fields[name] = Path(used).name
    # The training files the objective reads are keyed by content too (the demo's first-stage runs).
    setup = paper_setup.TRAINING_SETUPS[cfg.training]
    reads = {"pairs": [] if setup.triples else [setup.pair_negatives], "groups": [setup.candidates],
             "teacher-groups": [setup.candidates]}.get(losses.DATA.get(cfg.objective), [])
    local = [f for f in reads if f not in paper_setup.EXTERNAL_FILES and common.resolve_file(f).is_file()]
    if local:
        fields["data_md5"] = {Path(f).name: common.md5_of(common.resolve_file(f)) for f in local}
    # A backbone given as a local folder is keyed by its files' content: a model replaced at the same path
    # must not reuse the cells of the old one.
    if Path(cfg.backbone).is_dir():
        fields["backbone"] = [Path(cfg.backbone).name, folder_fingerprint(Path(cfg.backbone))]
    if not fields["validate_every"]:  # absent when 0, so that cells made before it existed keep their keys
        del fields["validate_every"]
    text = json.dumps({"format": RESULTS_FORMAT, **fields}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def folder_fingerprint(folder: Path) -> dict[str, str]:
    """{file: md5} of a model folder: what keys the results of a model given as a folder."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return {str(p.relative_to(folder)): common.md5_of(p) for p in files}


def cell_dir(results: Path, cfg: TrainConfig) -> Path:
    return Path(results) / "cells" / f"{common.slug(cfg.backbone)}__{cfg.objective}__seed{cfg.seed}__{cell_key(cfg)}"


# ================================================================================================
# 3. Locks: one worker at a time on a folder
# ================================================================================================
# Locks. One process at a time works on a cell (trains it, re-ranks with it), whichever machine it runs on: the
# results folder may sit on a shared filesystem (NFS, Lustre), where flock is unreliable. So a lock is a file:
#   <cell>/LOCK   {"host", "machine", "pid", "started", "command"}, made atomically by link(2) from a file of the
#                 worker's own (the way open(2)'s manual gives for NFS: link, then trust the link count), and
#                 touched every HEARTBEAT_S seconds by a thread of its holder (its mtime is the heartbeat).
# A lock is stale, and taken over, when its holder is a process of this machine that has ended (a killed worker:
# at once), or when its heartbeat is older than STALE_AFTER_S (a worker on another machine that died, or lost its
# node). Taking over goes through a second lock, LOCK.break, made the same way, so that two workers never both
# take over one lock. A holder whose lock was taken over (it had not beaten for STALE_AFTER_S: a suspended
# process, a frozen filesystem) stops at its next step. Training state lives in the cell's checkpoint, not in the
# worker, so a cell's result does not depend on which worker trained it or how often it changed hands.
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0
POLL_S = 5.0  # how often a worker waiting for a cell looks again


def _machine() -> str:
    """This machine, more exactly than its host name: the kernel's boot id and this process's pid namespace (two
    containers, or two boots, of one host name do not share process ids)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        boot, namespace = "", 0
    return f"{socket.gethostname()}/{boot}/{namespace}"


def _process_started(pid: int) -> str | None:
    """When process `pid` started (Linux: clock ticks since boot), to tell a reused pid from the holder; None if
    it does not exist."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "?"


class CellLock:
    """The lock of one folder of the results store (see above). `acquire()` takes it or says it is busy; the
    holder's heartbeat runs until `release()`."""

    def __init__(self, folder: Path, log=print):
        self.path, self.log = Path(folder) / "LOCK", log
        self.me = {"host": socket.gethostname(), "machine": _machine(), "pid": os.getpid(),
                   "started": _process_started(os.getpid()), "token": uuid.uuid4().hex,
                   "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]}
        self._beat = None

    def _link(self, target: Path) -> bool:
        """Make `target` hold this worker's record, atomically: False if it exists."""
        own = target.with_name(f".{target.name}.{self.me['token']}")
        own.write_text(json.dumps(self.me))
        try:
            os.link(own, target)
            return True
        except OSError as error:
            if error.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):  # no hard links here: O_EXCL
                try:
                    handle = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                os.write(handle, json.dumps(self.me).encode())
                os.close(handle)
                return True
            return os.stat(own).st_nlink == 2  # NFS: the reply may be lost although the link was made
        finally:
            own.unlink(missing_ok=True)

    @staticmethod
    def read(path: Path) -> tuple[dict | None, float]:
        """(the record of a lock file, seconds since its last heartbeat); (None, 0) when there is none."""
        try:
            record = json.loads(path.read_text() or "{}")
            return record, time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None, 0.0
        except (OSError, ValueError):  # written by O_EXCL and not yet filled in: young, so not stale
            return {}, 0.0

    def stale(self, record: dict, age: float) -> str | None:
        """Why a lock `age` seconds past its heartbeat is stale, or None while its holder may be alive."""
        if record.get("machine") == self.me["machine"] and record.get("pid"):
            started = _process_started(record["pid"])
            reused = record.get("started") not in (None, "?") and started not in ("?", record["started"])
            if started is None or reused:  # ended, or its pid now names another process
                return f"its process {record['pid']} has ended"
        if age > STALE_AFTER_S:
            return f"no heartbeat for {age:.0f} s"
        return None

    def try_acquire(self) -> bool:
        """Take the lock if it is free or stale; False while a live worker holds it."""
        if self._link(self.path):
            return self._start()
        record, age = self.read(self.path)
        if record is None:  # released in between
            return self._link(self.path) and self._start()
        reason = self.stale(record, age)
        if reason is None:
            return False
        breaker = self.path.with_name("LOCK.break")
        if not self._link(breaker):
            if self.read(breaker)[1] > STALE_AFTER_S:  # a worker died while taking over: clear its break lock
                breaker.unlink(missing_ok=True)
            return False
        try:
            again, age = self.read(self.path)
            if again == record and self.stale(again, age):  # still the stale lock seen above, and still stale
                self.path.unlink(missing_ok=True)
                self.log(f"note: took over {self.path} from {record.get('host')}:{record.get('pid')} ({reason})")
        finally:
            breaker.unlink(missing_ok=True)
        return self._link(self.path) and self._start()

    def acquire(self, wait: bool = False, done=lambda: False) -> bool:
        """Take the lock: True once held; False when it is busy and `wait` is False, or when `done()` became true
        (another worker finished the work) while waiting."""
        said = False
        while not done():
            if self.try_acquire():
                return True
            if not wait:
                return False
            if not said:
                record, _ = self.read(self.path)
                self.log(f"waiting for {self.path.parent.name}: {describe_holder(record)} is working on it")
                said = True
            time.sleep(POLL_S)
        return False

    def _start(self) -> bool:
        stop = threading.Event()

        def beat():
            while not stop.wait(HEARTBEAT_S):
                record, _ = self.read(self.path)
                if (record or {}).get("token") != self.me["token"]:
                    common.request_stop(f"the lock {self.path} was taken over by {describe_holder(record)}: this "
                                        f"worker had not beaten for {STALE_AFTER_S:.0f} s (suspended?)")
                    return
                try:
                    os.utime(self.path)
                except OSError:
                    pass  # a filesystem that hiccups: the next beat tries again

        self._beat = (stop, threading.Thread(target=beat, daemon=True, name=f"heartbeat {self.path.parent.name}"))
        self._beat[1].start()
        return True

    def release(self) -> None:
        if self._beat:
            self._beat[0].set()
            self._beat[1].join()
            self._beat = None
        record, _ = self.read(self.path)
        if record and record.get("token") == self.me["token"]:  # never remove a lock that was taken over
            self.path.unlink(missing_ok=True)


def describe_holder(record: dict | None) -> str:
    if not record:
        return "another worker"
    return f"{record.get('host', '?')}:{record.get('pid', '?')}"


# ================================================================================================
# 4. A cell's marks: its configuration when it starts, DONE when its model is saved
# ================================================================================================
def start_cell(folder: Path, cfg: TrainConfig) -> None:
    """Record the configuration of a cell about to train (its lock held)."""
    common.atomic_write_json(folder / "config.json", dataclasses.asdict(cfg))


def finish_cell(folder: Path, device: str, seconds: float, keep_checkpoint: bool = False) -> None:
    """Mark a trained cell DONE, with where and how long it trained and the checksums of its configuration and
    model files; written after its model, so a cell is never read as finished before it is. Unless
    `keep_checkpoint`, its last checkpoint goes (the optimizer's state doubles the model's size)."""
    files = [folder / "config.json", *sorted(p for p in (folder / "model").rglob("*") if p.is_file())]
    common.atomic_write_json(folder / "DONE", {"seconds": round(seconds, 1),
                                               "device": cross_encoder.device_name(device),
                                               "worker": f"{socket.gethostname()}:{os.getpid()}",
                                               "files": {str(p.relative_to(folder)): common.md5_of(p) for p in files}})
    if not keep_checkpoint:
        (folder / "checkpoint.pt").unlink(missing_ok=True)


def trained(folder: Path, log=print) -> bool:
    """Whether a cell is trained and its model is as it was written (the checksums in DONE; cells of kits that
    recorded none are taken as they are, and a cell kept without its model/, as shipped cells are, is trained:
    re-ranking with it says what is missing). A damaged model is set aside with its DONE, so the cell trains
    again (from its checkpoint when one was kept). Called with the cell's lock held, or before any worker runs."""
    done = folder / "DONE"
    try:
        recorded = json.loads(done.read_text()).get("files", {})
    except FileNotFoundError:
        return False
    except (OSError, ValueError, AttributeError) as error:
        recorded, why = None, f"{done} cannot be read ({type(error).__name__})"
    if recorded is not None:
        why = _changed(folder, {n: md5 for n, md5 in recorded.items()
                                if not n.startswith("model/") or (folder / "model").is_dir()})
        if why is None:
            return True
        why += " recorded when the cell finished"
    shelf = folder / "damaged"
    if (folder / "model").is_dir():
        set_aside(folder / "model", why, log, shelf, also=done)
    else:
        set_aside(done, why, log, shelf)
    return False


def _changed(folder: Path, recorded: dict[str, str]) -> str | None:
    """The first file of `recorded` ({name: md5}) that is missing or no longer has its md5, said as a reason."""
    for name, md5 in recorded.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing: it does not match the checksum"
        if common.md5_of(path) != md5:
            return f"{path} no longer matches the checksum"
    return None


# ================================================================================================
# 5. Evaluations, cached beside their cell
# ================================================================================================
CHECKSUMS = "checksums.json"  # an evaluation's files, as written: {file name: md5}


def damage(folder: Path) -> str | None:
    """Why a finished evaluation (`folder`, its metrics.json present) cannot be trusted, or None: a file that no
    longer matches what was recorded when it was written (the metrics and per-query values by md5, the run, which
    may be large and which no table reads, by size), a file that cannot be read, or (in folders of kits that
    recorded no checksums) an aggregate that is not the mean of its per-query values or a run that is not one."""
    path = folder / CHECKSUMS
    try:
        recorded = json.loads(path.read_text()) if path.exists() else {}
        sizes = recorded.pop("sizes", {})
        why = _changed(folder, {n: md5 for n, md5 in recorded.items() if n != "run.trec.gz"})
        for name, size in sizes.items():
            if (folder / name).stat().st_size != size:
                why = why or f"{folder / name} no longer matches the size"
        if why:
            return why + " recorded when it was written"
        path = folder / "metrics.json"
        metrics = json.loads(path.read_text())
        path = folder / "per_query.json"
        per_query = json.loads(path.read_text())
        path = folder / "run.trec.gz"
        if not recorded and path.exists():  # its first line, at least, reads as a run line
            with gzip.open(path, "rt") as run:
                if len(run.readline().split()) != 6:
                    return f"{path} does not hold a run"
        for measure, value in metrics.items():
            values = list(per_query[measure].values())
            if not values or abs(sum(values) / len(values) - value) > 1e-9:
                return f"{folder / 'metrics.json'}: {measure} {value} is not the mean of per_query.json's values"
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError) as error:
        return f"{path} cannot be read ({type(error).__name__})"
    return None


def set_aside(path: Path, why: str, log=print, shelf: Path | None = None, also: Path | None = None) -> Path | None:
    """Move a damaged file or folder (and `also`) out of the store's way into `shelf` (by default the `damaged/`
    folder beside its parent: <cell>/damaged/ for an evaluation), kept, never deleted and never read again, so
    that it is computed again; says so in one note. None when another worker moved it first."""
    shelf = shelf or path.parent.parent / "damaged"
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    shelf.mkdir(parents=True, exist_ok=True)
    moved = None
    for item in (path, also):
        if item is not None:
            try:
                os.replace(item, shelf / f"{item.parent.name}-{item.name}.{stamp}")
                moved = moved or shelf / f"{item.parent.name}-{item.name}.{stamp}"
            except FileNotFoundError:  # another worker set it aside first
                pass
    if moved:
        log(f"note: {why}; moved it aside to {moved} and computing it again")
    return moved


def finished(folder: Path, log=print) -> bool:
    """Whether an evaluation folder holds a finished evaluation that can be trusted; a damaged one is set aside."""
    if not (folder / "metrics.json").exists():
        return False
    why = damage(folder)
    if why:
        set_aside(folder, why, log)
    return why is None


def load_metrics(folder: Path):
    """(aggregate, per_query) of a finished evaluation, checked (`damage`); a damaged one is a KitError."""
    why = damage(folder)
    if why:
        raise KitError(f"{why}; rerun the command: it sets the evaluation aside and computes it again")
    return _read_metrics(folder)


def _read_metrics(folder: Path):  # an evaluation `finished` or `damage` has just checked
    metrics = json.loads((folder / "metrics.json").read_text())
    return metrics, json.loads((folder / "per_query.json").read_text())


def _save_metrics(folder: Path, run, data: EvalData, tag: str):
    aggregate, per_query = common.evaluate(run, data.qrels, list(data.collection.measures))
    common.write_run(folder / "run.trec.gz", run, tag)
    common.atomic_write_json(folder / "per_query.json", per_query)
    metrics = json.dumps(aggregate, indent=1, sort_keys=True) + "\n"
    sums = {name: common.md5_of(folder / name) for name in ("run.trec.gz", "per_query.json")}
    sums["metrics.json"] = hashlib.md5(metrics.encode()).hexdigest()
    sums["sizes"] = {"run.trec.gz": (folder / "run.trec.gz").stat().st_size}
    common.atomic_write_json(folder / CHECKSUMS, sums)
    common.atomic_write_text(folder / "metrics.json", metrics)  # last: its presence marks the folder finished
    return aggregate, per_query


def evaluate_first_stage(data: EvalData, results: Path):
    """The candidates' own effectiveness, as the row every re-ranker must beat."""
    key = hashlib.sha1(json.dumps([data.collection.dataset_id, data.candidates_name,
                                   data.collection.measures]).encode()).hexdigest()[:10]
    folder = Path(results) / "first-stage" / f"{data.collection.name}__{key}"
    if finished(folder):
        return _read_metrics(folder)
    run = {qid: {d: -float(rank) for rank, d in enumerate(docs)} for qid, docs in data.candidates.items()}
    return _save_metrics(folder, run, data, "first-stage")


def eval_folder(home: Path, data: EvalData, max_length: int, query_max_length: int, precision: str,
                unpadded: bool = False, compile: bool = False) -> Path:
    """Where the evaluation of the model of `home` on `data` is stored (finished once its metrics.json exists).
    `unpadded` and `compile` change scores by rounding: they are keyed, when on (cross_encoder.OFF_BY_DEFAULT)."""
    keyed = [data.collection.dataset_id, data.collection.relevance, data.candidates_name,
             data.collection.measures, max_length, query_max_length, precision]
    keyed += [{name: True} for name, on in (("unpadded", unpadded), ("compile", compile)) if on]
    key = hashlib.sha1(json.dumps(keyed).encode()).hexdigest()[:10]
    return home / "eval" / f"{data.collection.name}__{key}"


def evaluate(model_dir: Path, home: Path, data: EvalData, device: str, lengths: TrainConfig, tag: str, results: Path,
             batch_size: int = 64, progress: bool = True, workers: int = 0, token_budget: int = 0,
             token_cache: bool = False):
    """(aggregate, per_query) of the model in `model_dir` re-ranking `data` at the lengths, precision and arithmetic
    of `lengths` (a cell's configuration), stored in `home`/eval/ and reused; how long it took is kept beside
    (timing.json), for the plans of later runs. `batch_size`, `workers` and `token_budget` change how the pairs
    are batched (another batch shape may round the last bits of a score differently, README "Cheaper cells"), so
    they are not in the key; `unpadded` and `compile`, which change the cell's arithmetic in training too, are.
    With `token_cache`, the candidates' token ids are shared by every model through `results`/tokens."""
    folder = eval_folder(home, data, lengths.max_length, lengths.query_max_length, lengths.precision,
                         lengths.unpadded, lengths.compile)
    if finished(folder):
        return _read_metrics(folder)
    if not (model_dir / "config.json").is_file():  # a shipped cell holds its evaluations, not its model
        made = sorted(p.parent.name.split("__")[0] for p in home.glob("eval/*/metrics.json"))
        raise KitError(f"{home.name} has no model to re-rank {data.collection.name} with (only the evaluations on "
                       f"{', '.join(made) or 'no collection'}); pass --collections {' '.join(made) or '...'}, or "
                       f"another --results to train the cell")
    started = time.time()
    model, pair_tokenizer = cross_encoder.load_trained(model_dir, lengths.max_length, lengths.query_max_length, device)
    if lengths.compile:
        common.extra("compiled", "--compile").compile_model(model)
    run = cross_encoder.rerank(model, pair_tokenizer, data.queries, data.candidates, data.documents,
                               batch_size=batch_size, device=device, precision=lengths.precision, progress=progress,
                               workers=workers, tokens_folder=tokens_folder(results, token_cache),
                               token_budget=token_budget, unpad=lengths.unpadded)
    pairs = sum(len(docs) for docs in run.values())
    common.atomic_write_json(folder / "timing.json", {"pairs": pairs, "seconds": round(time.time() - started, 2),
                                                      "device": cross_encoder.device_name(device)})
    return _save_metrics(folder, run, data, tag)


def evaluate_cell(cfg: TrainConfig, results: Path, data: EvalData, device: str, **speed):
    """(aggregate, per_query) of a trained cell re-ranking `data`; reused when already computed. `speed`: see
    `evaluate`."""
    folder = cell_dir(results, cfg)
    tag = f"{common.slug(cfg.backbone)}-{cfg.objective}-s{cfg.seed}"
    return evaluate(folder / "model", folder, data, device, cfg, tag, results, **speed)
