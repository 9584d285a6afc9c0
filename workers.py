"""How any number of workers share one results folder: a lock per cell, and the worker's loop.

A grid's cells can be worked on by many processes at once (README, "Many GPUs and SLURM"): several GPUs of one
machine, machines that share a filesystem, or the tasks of a SLURM job array. Each process runs the same loop
(`work`) over the same units of work: it takes the ones no live worker holds, one at a time under the unit's lock,
and prints each unit's row as it lands with the time left. Nothing else is shared: a cell's state lives in its
folder (its checkpoint, its evaluations), so a result never depends on which worker computed it.

Sections, read top to bottom:
  1. the lock of a folder (CellLock)
  2. the worker's loop (Unit, work) and its progress lines
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, NamedTuple

import common


# ================================================================================================
# 1. Locks
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
            if started is None or (record.get("started") not in (None, "?") and started not in ("?", record["started"])):
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
# 2. The worker's loop
# ================================================================================================
class EarlyExit(Exception):
    """Ends a script before its tables, and not in error: a plan printed, a grid submitted to SLURM, or cells left
    to other workers (whichever finishes the last cell writes the tables). main_guard prints it; exit status 0."""


class Unit(NamedTuple):
    """One piece of a grid's work: a cell (train it if needed, then every evaluation it lacks) or a model trained
    elsewhere (its evaluations). One worker at a time works on it, under the lock of its folder."""
    label: str
    folder: Path
    backbone: str
    complete: Callable[[], bool]  # nothing left to do
    run: Callable[[], None]       # called with the lock held
    row: Callable[[], str]        # its results, once complete, for the progress line


def work(units: list[Unit], log=print, max_units: int | None = None, estimate=None) -> None:
    """The worker's loop, the same in every process started on a results folder: work on each unit that is neither
    complete nor locked by a live worker, in order, and print its row as it lands with the time left. Returns once
    every unit is complete; raises EarlyExit when the rest is in other workers' hands (or `max_units` were done
    here: a --slurm task does one). `estimate(units) -> seconds` (launch.py's rates) gives the time left, scaled by
    how long the units done here took against their estimates; without it, the mean time of the units done here."""
    done_here: list[float] = []
    expected: list[float] = []  # what `estimate` said of each unit done here, before it ran
    while True:
        worked = False
        for unit in units:
            if max_units is not None and len(done_here) >= max_units:
                break
            if unit.complete():
                continue
            unit.folder.mkdir(parents=True, exist_ok=True)
            lock = CellLock(unit.folder, log)
            if not lock.acquire(done=unit.complete):
                continue  # a live worker has it: take the next one
            ran = False
            try:
                started = time.time()
                if not unit.complete():  # finished by another worker between the look and the lock
                    expected.append(estimate([unit]) if estimate else 0.0)
                    unit.run()
                    done_here.append(time.time() - started)
                    ran = worked = True
            finally:
                lock.release()
            if ran:
                going_on = max_units is None or len(done_here) < max_units
                log(_landed(unit, units, done_here, expected, estimate, going_on))
        left = [u for u in units if not u.complete()]
        if not left:
            return
        if max_units is not None and len(done_here) >= max_units:
            raise EarlyExit(f"note: this worker stops after {max_units} cell(s); {len(left)} left to the other "
                            f"tasks (the one that finishes the last writes the tables)")
        if not worked:
            holders = sorted({describe_holder(CellLock.read(u.folder / "LOCK")[0]) for u in left})
            raise EarlyExit(f"note: {len(left)} cell(s) left, all in the hands of other workers ({', '.join(holders)}); "
                            f"the worker that finishes the last one writes the tables, and rerunning this command "
                            f"then prints them (it only reads)")


def _landed(unit: Unit, units: list[Unit], done_here: list[float], expected: list[float], estimate,
            going_on: bool) -> str:
    """'[k/n] <cell>: <its row> (<time here>); <m> left, about <t> at <w> worker(s)': the workers are those holding
    a cell now, and this one if it goes on."""
    left = [u for u in units if not u.complete()]
    busy = {(CellLock.read(u.folder / "LOCK")[0] or {}).get("token") for u in left} - {None}
    workers = max(1, len(busy) + going_on)
    if estimate is not None and sum(expected) > 0:
        seconds = estimate(left) * sum(done_here) / sum(expected) / workers
    else:
        seconds = sum(done_here) / len(done_here) * len(left) / workers
    rest = (f"{len(left)} left, about {format_duration(seconds)} at {workers} worker(s)" if left
            else "the grid is complete")
    return (f"[{len(units) - len(left)}/{len(units)}] {unit.label}: {unit.row()} ({format_duration(done_here[-1])} "
            f"here); {rest}")


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return "<1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 72 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
