"""One prepared GPU run: install, build the dense demo teachers, run the RQ1 demo (more seeds while time is
left) and bench/bench_gpu.py, within one deadline, writing everything to $OUT as it finishes.

Made for a fresh machine with one GPU and a checkout of this repository, given one command of at most 10
minutes (bench/README.md, "The prepared GPU run"). The steps, in the order of their value:

  nvidia-smi          the GPU as the driver sees it                      -> nvidia-smi.txt
  install             requirements.txt, torch as its CUDA build first (README, "Packages")
  teachers            scripts/make_demo_teachers.py --gpu 0: the ensemble's dense top-50 lists and the other
                      teacher files it rewrites                            -> teachers.tar.gz
  rq1-seed12          exp_rq1_objectives.py --demo --demo-negatives dense --gpu 0
  rq1-seeds12-13      the same with --seeds 12 13 (reuses the seed-12 cells)
  rq1-seeds12-13-14   the same with --seeds 12 13 14                      -> results.tar.gz (every finished cell)
  bench-bert-base     bench/bench_gpu.py at 256 tokens: padded, token budget, unpadded; re-ranking and training
  bench-ettin-150m    the same for the Ettin-150M-sized ModernBERT         -> bench.json

Time. The deadline is the start plus --budget (540 s: 9 minutes, leaving a minute of the 10 for the machine).
A step whose estimate (measured figures, table ESTIMATES) does not fit in the time left is skipped with a log
line, and the steps after it still get their chance; a step that runs past the deadline is killed (its
process group: SIGTERM, then SIGKILL) and what it left is still packed.

Outputs. Everything lands in $OUT (./gpu-out when unset) while the run goes on, so a run cut off at any moment
still returns what it made. Outputs copied back from a remote machine should be few, flat and small, so
$OUT holds 7 files, each under 16 MiB, and no folders:
  run.log          one line per event (UTC time, seconds since the start, step, what happened, exit codes),
                   then a SUMMARY line per step; a resumed run starts with the previous runs' lines
  console.txt      the steps' own output, each under a banner
  nvidia-smi.txt   nvidia-smi and its one-line query
  manifest.json    what each step did, the teacher files' sha256, the cells packed: what a later run reads
  teachers.tar.gz  the four teacher files, once built
  results.tar.gz   the results store without model weights: every finished cell (DONE and its 4 evaluations:
                   metrics, per-query values, runs; a teacher member's scores), the tables, verdicts and
                   first-stage metrics; repacked whenever a cell finishes (over --max-results-mb, 15 MiB, the
                   TREC runs are left out first). A cell that was cut off goes in with its checkpoint only while
                   the checkpoints fit --checkpoint-cap-mb (8 MiB: minilm-l6's checkpoint, ~270 MB with
                   AdamW's moments, never does; tiny-bert's of the dry run do)
  bench.json       bench_gpu.py's rows (pairs/s, TFLOP/s, MFU) per model, rewritten after every row

Resuming. A second run goes on from what the first returned:
    python3 scripts/gpu_run.py --resume-from DIR        # DIR: the first run's files (its $OUT)
Teacher files whose sha256 matches the manifest are put back instead of rebuilt; the finished cells are put
back into the results folder (store.py reuses a cell whose DONE and eval/*/metrics.json exist; the cell keys
hold the teacher files' md5, which is why the teacher files are restored byte for byte); steps that ended
"ok" are skipped ("skipped: already done"), and a step that was cut off runs again, reusing its finished cells.

Dry run, on the CPU (the same sequence at smoke size, in about a minute and a half on 2 cores; nothing is
installed, the pins of requirements.txt are only compared with what is installed):
    python3 scripts/gpu_run.py --smoke --out /tmp/gpu-dry

Only the standard library is imported (and paper_setup.py, which imports nothing else): the script runs
before anything is installed.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import paper_setup  # noqa: E402  (names of the teacher files and of the demo's test collections)

BUDGET_S = 540
# Seconds each step needs, on the GPU from measured figures (README.md, "How long it takes": teachers 139 s
# on an H100, then RQ1's three other cells and six evaluations about 3.5 min, a demo cell trains in ~22 s and
# re-ranks its ~47k pairs in ~20 s, so a seed of 6 cells ~4.5 min; bench_gpu.py at one length, from its
# per-variant rates in bench/README.md), and on this 2-core CPU for --smoke (each measured at 10-13 s).
ESTIMATES = {
    "nvidia-smi": (5, 5),
    "install": (180, 5),
    "teachers": (160, 20),
    "rq1-seed12": (220, 20),
    "rq1-seeds12-13": (270, 20),
    "rq1-seeds12-13-14": (270, 20),
    "bench-bert-base": (100, 20),
    "bench-ettin-150m": (100, 20),
}
STEPS = list(ESTIMATES)
RQ1_SEEDS = {"rq1-seed12": [], "rq1-seeds12-13": ["12", "13"], "rq1-seeds12-13-14": ["12", "13", "14"]}
BENCH_MODELS = {"bench-bert-base": "bert-base", "bench-ettin-150m": "ettin-150m"}
TEACHER_FILES = [Path(paper_setup.DEMO_TRAINING.teacher_pairs).name,
                 Path(paper_setup.DEMO_TRAINING.teacher_lists).name,
                 Path(paper_setup.DEMO_BM25_TRAINING.teacher_lists).name,
                 "scifact-train.ensemble-scores.run.gz"]  # make_demo_teachers.py's fourth file
N_COLLECTIONS = len(paper_setup.DEMO_COLLECTIONS)  # a cell is finished once re-ranked on each of them
# Inside a cell, what is neither needed to reuse it nor small: the weights, the optimizer's checkpoint (packed
# only for a cell cut off, under the cap), and a worker's lock. The teacher members' scores (scores/, ~1 MB
# each) are kept: without its weights, a restored member can still give make_demo_teachers.py its scores.
CELL_SKIPPED = {"model", "checkpoint.pt", "LOCK"}


class Stopped(Exception):
    """The runner itself got SIGTERM or SIGINT: stop the step in progress, pack what exists, write the summary."""


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_pins(path: Path) -> dict[str, str]:
    """requirements.txt's `name==version` lines as {name: version}."""
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)", line)
        if match:
            pins[match.group(1)] = match.group(2)
    return pins


def installed_version(name: str) -> str | None:
    """The version of an installed distribution in this interpreter, or None."""
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def safe_extract(archive: Path, dest: Path) -> list[str]:
    """Extract the regular files of a tar archive under dest, refusing absolute names and '..', and leaving a
    file that already exists as it is (a results folder's own files win over a returned copy). Returns the
    names written."""
    written = []
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or member.name.startswith("/") or ".." in parts:
                continue
            target = dest.joinpath(*parts)
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink)
            written.append(member.name)
    return written


class Runner:
    def __init__(self, args):
        self.args = args
        self.smoke = args.smoke
        self.mode = "smoke" if args.smoke else "gpu"
        self.started = time.monotonic()
        self.deadline = self.started + args.budget
        # What a step must leave before the deadline: the stop of a killed step, then the last packing.
        self.grace = 2 if self.smoke else 5
        self.reserve = self.grace + (2 if self.smoke else 10)
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="gpu-run-"))  # scratch: bench JSONs, the filtered requirements
        if args.results:
            self.results = Path(args.results).resolve()
        else:  # the dry run must not touch the repository's own results/ (or data/teachers/)
            self.results = self.work / "results" if self.smoke else REPO / "results"
        self.teacher_dir = self.results / "smoke-teachers" if self.smoke else REPO / "data" / "teachers"
        self.estimates = {name: float(pair[1 if self.smoke else 0]) for name, pair in ESTIMATES.items()}
        for item in args.estimate:
            name, _, seconds = item.partition("=")
            if name not in self.estimates:
                raise SystemExit(f"--estimate {item}: unknown step {name!r}; steps: {', '.join(STEPS)}")
            self.estimates[name] = float(seconds)
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_MININTERVAL="10")  # progress bars: few lines
        self.lock = threading.RLock()
        self.log_file = open(self.out / "run.log", "a")
        self.console = open(self.out / "console.txt", "ab")
        self.outcomes: dict[str, str] = {}
        self.manifest = {"format": 1, "mode": self.mode, "runs": [], "steps": {}, "teachers": {}, "results": {},
                         "bench": {}}
        self.bench: dict = {"models": {}}
        self.results_fingerprint = None
        self.done_before: dict[str, str] = {}  # step -> why it counts as done (from the run resumed)

    # -- log, manifest ------------------------------------------------------------------------------
    def log(self, step: str, message: str) -> None:
        with self.lock:
            line = f"{utc_now()} {time.monotonic() - self.started:7.1f}s  {step:<18} {message}"
            print(line, flush=True)
            self.log_file.write(line + "\n")
            self.log_file.flush()

    def write_json(self, name: str, data) -> None:
        """Atomically, so that a run cut off mid-write still returns the previous version."""
        with self.lock:
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, self.out / name)

    def save_manifest(self) -> None:
        self.write_json("manifest.json", self.manifest)

    def left(self) -> float:
        """Seconds a step may still use."""
        return self.deadline - self.reserve - time.monotonic()

    # -- running a command --------------------------------------------------------------------------
    def command(self, step: str, argv: list[str], until: float, capture: bool = False, env: dict | None = None):
        """Run argv from the repository root, its output appended to console.txt (or returned, with capture),
        killed at `until`; `env` adds variables. Returns (exit code, None when killed; captured output)."""
        with self.lock:
            self.console.write(f"\n===== {step}: {' '.join(argv)} ({utc_now()}) =====\n".encode())
            self.console.flush()
        self.log(step, f"run: {' '.join(argv)}")
        try:
            process = subprocess.Popen(argv, cwd=REPO, env={**self.env, **(env or {})}, start_new_session=True,
                                       stdout=subprocess.PIPE if capture else self.console,
                                       stderr=subprocess.STDOUT)
        except OSError as error:  # not installed (nvidia-smi on a CPU machine), not executable
            self.log(step, f"cannot start {argv[0]}: {error.strerror}")
            return 127, ""
        try:
            output, _ = process.communicate(timeout=max(0.0, until - time.monotonic()))
            return process.returncode, (output or b"").decode(errors="replace")
        except subprocess.TimeoutExpired:
            self.stop(process)
            self.log(step, f"killed at the deadline (pid {process.pid} and its children)")
            return None, ""
        except BaseException:
            self.stop(process)
            raise

    def stop(self, process: subprocess.Popen) -> None:
        """SIGTERM to the step's own process group (started with it), SIGKILL after the grace period."""
        for sig, wait in ((signal.SIGTERM, self.grace), (signal.SIGKILL, 5)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    # -- the steps ----------------------------------------------------------------------------------
    def run_step(self, name: str, body, needs: str | None = None) -> None:
        """Skip `name` when a resumed run did it, when --skip names it, when the step it needs did not end ok,
        or when its estimate does not fit before the deadline; else run body(until) -> outcome."""
        if name in self.done_before:
            return self.finish(name, f"skipped: already done ({self.done_before[name]})")
        if name in self.args.skip:
            return self.finish(name, "skipped: --skip")
        if needs and not self.ok(needs):
            return self.finish(name, f"skipped: needs {needs}, which did not end ok")
        left, needed = self.left(), self.estimates[name]
        if needed > left:
            return self.finish(name, f"skipped: deadline (needs ~{needed:.0f} s, {max(left, 0):.0f} s left)")
        self.log(name, f"start (needs ~{needed:.0f} s, {left:.0f} s left)")
        begun = time.monotonic()
        self.manifest["steps"][name] = {"status": "running", "started": utc_now(), "run": len(self.manifest["runs"])}
        self.save_manifest()
        try:
            outcome = body(self.deadline - self.reserve)
        except Stopped:
            self.manifest["steps"][name].update(status="killed: the runner was stopped")
            self.finish(name, "killed: the runner was stopped")
            raise
        finally:
            self.sync()  # partial outputs too: a killed step's finished cells, a bench's rows so far
        self.manifest["steps"][name].update(status=outcome, seconds=round(time.monotonic() - begun, 1))
        self.finish(name, outcome)

    def finish(self, name: str, outcome: str) -> None:
        self.outcomes[name] = outcome
        self.log(name, outcome)
        self.save_manifest()

    def ok(self, name: str) -> bool:
        return self.outcomes.get(name, "") == "ok" or name in self.done_before

    @staticmethod
    def outcome_of(code: int | None) -> str:
        return "ok" if code == 0 else "killed: past the deadline" if code is None else f"failed (exit {code})"

    def nvidia_smi(self, until: float) -> str:
        code, full = self.command("nvidia-smi", ["nvidia-smi"], until, capture=True)
        _, query = self.command("nvidia-smi", ["nvidia-smi", "--format=csv", "--query-gpu=name,driver_version,"
                                "memory.total,clocks.max.sm,power.limit,temperature.gpu"], until, capture=True)
        text = full + "\n" + query if code == 0 else "nvidia-smi: not found or failed\n"
        (self.out / "nvidia-smi.txt").write_text(text)
        if code != 0 and self.smoke:
            return "ok (no nvidia-smi: a dry run on the CPU)"
        return self.outcome_of(code)

    def install(self, until: float) -> str:
        pins = read_pins(REPO / "requirements.txt")
        if self.smoke:  # install nothing: compare the pins with what is installed (no network, no time)
            differ = [f"{name} {installed_version(name) or 'missing'} (pinned {version})"
                      for name, version in pins.items() if (installed_version(name) or "").split("+")[0] != version]
            self.log("install", f"dry run: {len(pins)} pins checked, nothing installed"
                     + (f"; differing: {', '.join(differ)}" if differ else "; all as pinned"))
            return "ok"
        pip = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--retries", "2",
               "--timeout", "30"] + (["--no-index", "--find-links", self.args.wheels] if self.args.wheels else [])
        torch_pin = pins.pop("torch")
        found = self.torch_info(until)
        self.log("install", f"torch before: {found or 'not importable'}")
        if found and found["cuda"] and found["version"].split("+")[0] == torch_pin:
            self.log("install", f"torch {found['version']} is already the CUDA build of the pin")
        elif found and found["cuda"] and self.args.keep_torch:
            self.log("install", f"--keep-torch: keeping torch {found['version']} (pinned {torch_pin}); "
                     f"timings are then not of the pinned version")
        else:  # README, "Packages": the CUDA build of the pinned version first
            index = [] if self.args.wheels or not self.args.torch_index_url else ["--index-url", self.args.torch_index_url]
            # A CPU build of the same version satisfies torch==pin for pip: only a forced reinstall swaps it.
            force = ["--force-reinstall"] if found else []
            code, _ = self.command("install", pip + force + [f"torch=={torch_pin}"] + index, until)
            if code != 0:
                return self.outcome_of(code)
        # Then the rest, with torch's line left out: pip must not replace the CUDA build by another wheel.
        if self.args.only_missing:  # a machine's own versions stay; only what is not installed at all comes
            kept = {name: installed_version(name) for name in pins if installed_version(name)}
            self.log("install", "--only-missing: keeping " + ", ".join(f"{n} {v}" for n, v in kept.items()))
            pins = {name: version for name, version in pins.items() if name not in kept}
        if pins:
            rest = self.work / "requirements-without-torch.txt"
            rest.write_text("".join(f"{name}=={version}\n" for name, version in pins.items()))
            code, _ = self.command("install", pip + ["-r", str(rest)], until)
            if code != 0:
                return self.outcome_of(code)
        found = self.torch_info(until)
        self.log("install", f"torch after: {found or 'not importable'}")
        if not found or not found["cuda"] or not found["gpus"]:
            return "failed (torch sees no CUDA GPU)"
        return "ok"

    def torch_info(self, until: float) -> dict | None:
        code, output = self.command("install", [sys.executable, "-c", "import json, torch; print(json.dumps("
                                    "{'version': torch.__version__, 'cuda': torch.version.cuda, "
                                    "'gpus': torch.cuda.device_count()}))"], until, capture=True)
        try:
            return json.loads(output.strip().splitlines()[-1]) if code == 0 else None
        except (ValueError, IndexError):
            return None

    def teachers(self, until: float) -> str:
        argv = [sys.executable, "scripts/make_demo_teachers.py", "--results", str(self.results),
                "--out-dir", str(self.teacher_dir)]
        argv += ["--smoke"] if self.smoke else ["--gpu", str(self.args.gpu)]
        started = time.time()
        code, _ = self.command("teachers", argv, until)
        outcome = self.outcome_of(code)
        if code == 0:
            stale = [n for n in TEACHER_FILES if not (self.teacher_dir / n).is_file()
                     or (self.teacher_dir / n).stat().st_mtime < started - 1]
            if stale:
                return f"failed (exit 0 but not rewritten: {', '.join(stale)})"
            self.pack_teachers()
        return outcome

    def pack_teachers(self) -> None:
        files = {name: sha256_of(self.teacher_dir / name) for name in TEACHER_FILES}
        tmp = self.out / ".teachers.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            for name in TEACHER_FILES:
                tar.add(self.teacher_dir / name, arcname=name)
        os.replace(tmp, self.out / "teachers.tar.gz")
        self.manifest["teachers"] = {"files": files, "sha256_of_archive": sha256_of(self.out / "teachers.tar.gz")}
        self.log("teachers", "packed teachers.tar.gz: " + ", ".join(f"{n} {h[:12]}" for n, h in files.items()))

    def rq1(self, name: str, until: float) -> str:
        argv = [sys.executable, "exp_rq1_objectives.py", "--demo-negatives", "dense", "--results", str(self.results)]
        if self.smoke:  # the smoke teachers live in the results folder, not data/teachers: name them
            argv += ["--smoke", "--teacher-pairs", str(self.teacher_dir / TEACHER_FILES[0]),
                     "--teacher-lists", str(self.teacher_dir / TEACHER_FILES[1])]
        else:
            argv += ["--demo", "--gpu", str(self.args.gpu)]
        if RQ1_SEEDS[name]:
            argv += ["--seeds", *RQ1_SEEDS[name]]
        code, _ = self.command(name, argv, until)
        return self.outcome_of(code)

    def bench_path(self, model: str) -> Path:
        return self.work / f"bench-{model}.json"

    def bench_step(self, name: str, until: float) -> str:
        model = BENCH_MODELS[name]
        argv = [sys.executable, "bench/bench_gpu.py", "--models", model, "--json", str(self.bench_path(model))]
        if self.smoke:  # one layer, a few pairs and steps: a check that the sequence runs, not a benchmark
            argv += ["--gpu", "-1", "--layers", "1", "--pairs", "32", "--lengths", "64", "--rounds", "1",
                     "--train-steps", "2", "--batch-size", "16", "--train-batch", "8", "--peak-tflops", "1",
                     "--workers", "0", "--no-st"]
        else:  # the length; the default 4,096 pairs, 3 rounds, 30 training steps, 8 tokenizing workers
            argv += ["--gpu", str(self.args.gpu), "--lengths", "256"]
        code, _ = self.command(name, argv, until, env={"OMP_NUM_THREADS": "1"} if self.smoke else None)
        self.sync()
        if code == 0 and not self.bench["models"].get(model, {}).get("finished"):
            return "failed (exit 0 but no finished rows in its JSON)"
        return self.outcome_of(code)

    # -- packing (called by the watcher thread and after every step) ---------------------------------
    def sync(self) -> None:
        with self.lock:
            self.pack_results()
            changed = False
            for model in BENCH_MODELS.values():
                path = self.bench_path(model)
                try:
                    data = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                if self.bench["models"].get(model) != data:
                    self.bench["models"][model], changed = data, True
            if changed:
                self.write_json("bench.json", self.bench)
                self.manifest["bench"] = {m: {"finished": d.get("finished"), "rows": len(d.get("rows", []))}
                                          for m, d in self.bench["models"].items()}
                self.save_manifest()

    def result_files(self):
        """(path, name in the archive, kind) of what results.tar.gz holds, and the names of the finished and
        the cut-off cells; kind is "run" (a TREC run), "checkpoint", "scores" (a teacher member's) or ""."""
        found, complete, partial = [], [], []
        if (self.results / "FORMAT").is_file():
            found.append((self.results / "FORMAT", "FORMAT", ""))
        for folder in ("tables", "verdicts", "first-stage"):
            for path in sorted((self.results / folder).rglob("*")):
                if path.is_file() and not path.name.startswith(".") and not path.name.endswith(".tmp"):
                    found.append((path, str(path.relative_to(self.results)), ""))
        for cell in sorted((self.results / "cells").glob("*")):
            evaluations = [e for e in sorted((cell / "eval").glob("*")) if (e / "metrics.json").is_file()]
            if (cell / "DONE").is_file() and len(evaluations) >= N_COLLECTIONS:
                complete.append(cell.name)
                for path in sorted(cell.rglob("*")):
                    inside = path.relative_to(cell).parts
                    if (not path.is_file() or inside[0] in CELL_SKIPPED or path.name.startswith(".")
                            or path.name.endswith(".tmp") or any(x.endswith(".parts") for x in inside)
                            or (inside[0] == "eval" and (len(inside) < 3 or
                                                         not (cell / "eval" / inside[1] / "metrics.json").is_file()))):
                        continue
                    kind = "run" if path.name == "run.trec.gz" else "scores" if inside[0] == "scores" else ""
                    found.append((path, f"cells/{cell.name}/{'/'.join(inside)}", kind))
            elif (cell / "checkpoint.pt").is_file() and not (cell / "DONE").exists():
                # Cut off while training: its checkpoint resumes it (cross_encoder.train), if it fits.
                partial.append(cell.name)
                for item, kind in (("config.json", ""), ("train_log.jsonl", ""), ("checkpoint.pt", "checkpoint")):
                    if (cell / item).is_file():
                        found.append((cell / item, f"cells/{cell.name}/{item}", kind))
        return found, complete, partial

    def pack_results(self) -> None:
        try:
            files, complete, partial = self.result_files()
            fingerprint = [(name, path.stat().st_size, path.stat().st_mtime_ns) for path, name, _ in files]
        except FileNotFoundError:  # a file renamed away while a step writes: pack at the next tick
            return
        if not files or fingerprint == self.results_fingerprint:
            return
        cap = self.args.max_results_mb * 2**20
        checkpoints = sum(p.stat().st_size for p, _, kind in files if kind == "checkpoint")
        if checkpoints > self.args.checkpoint_cap_mb * 2**20:
            files = [f for f in files if f[2] != "checkpoint"]
            self.log("pack", f"checkpoints of {len(partial)} cut-off cell(s), {checkpoints / 2**20:.0f} MiB, are "
                     f"over --checkpoint-cap-mb {self.args.checkpoint_cap_mb}: not packed (those cells restart)")
        tmp = self.out / ".results.tar.gz.tmp"
        # Smaller archives until one fits the cap: the TREC runs go first (nothing reads them back), then
        # checkpoints, then the members' scores (needed only to rebuild teacher files that did not come back).
        for drop in ((), ("run",), ("run", "checkpoint"), ("run", "checkpoint", "scores")):
            kept = [f for f in files if f[2] not in drop]
            try:
                with tarfile.open(tmp, "w:gz") as tar:
                    for path, name, _ in kept:
                        tar.add(path, arcname=name, recursive=False)
            except FileNotFoundError:
                tmp.unlink(missing_ok=True)
                return
            if tmp.stat().st_size <= cap:
                break
            self.log("pack", f"results.tar.gz is {tmp.stat().st_size / 2**20:.1f} MiB with {drop or 'everything'}"
                     f": over --max-results-mb {self.args.max_results_mb}, dropping more")
        os.replace(tmp, self.out / "results.tar.gz")
        self.results_fingerprint = fingerprint
        packed_partial = sorted({n.split("/")[1] for _, n, k in kept if k == "checkpoint"})
        before = self.manifest["results"]
        self.manifest["results"] = {"complete_cells": complete, "partial_cells": packed_partial,
                                    "runs_included": any(k == "run" for _, _, k in kept),
                                    "scores_included": any(k == "scores" for _, _, k in kept),
                                    "bytes": (self.out / "results.tar.gz").stat().st_size}
        self.save_manifest()
        if (before.get("complete_cells"), before.get("partial_cells")) != (complete, packed_partial):
            self.log("pack", f"results.tar.gz: {len(complete)} finished cell(s), {len(packed_partial)} cut off "
                     f"with their checkpoint, {self.manifest['results']['bytes'] / 2**20:.1f} MiB")

    def watch(self, stop: threading.Event) -> None:
        """Pack while a step runs, so each cell lands in $OUT as it finishes."""
        interval = 1 if self.smoke else 10
        while not stop.wait(interval):
            try:
                self.sync()
            except Exception as error:  # packing must never end the run; the next tick tries again
                self.log("pack", f"packing failed this time: {type(error).__name__}: {error}")

    # -- resuming -----------------------------------------------------------------------------------
    def resume(self, folder: Path) -> None:
        """Take in a previous run's $OUT: its log, teacher files (checked against their sha256), finished
        cells, bench rows, and which steps it finished."""
        try:
            previous = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError) as error:
            self.log("resume", f"{folder}: no readable manifest.json ({error}); starting from scratch")
            return
        if previous.get("mode") != self.mode:
            self.log("resume", f"{folder} is a {previous.get('mode')} run and this one is {self.mode}: ignored")
            return
        self.manifest["runs"] = previous.get("runs", [])
        self.manifest["steps"] = previous.get("steps", {})
        finished = {name: info for name, info in self.manifest["steps"].items() if info.get("status") == "ok"}

        teachers = previous.get("teachers", {}).get("files", {})
        if "teachers" in finished:
            scratch = self.work / "previous-teachers"
            try:
                safe_extract(folder / "teachers.tar.gz", scratch)
                bad = [n for n in TEACHER_FILES if not (scratch / n).is_file() or sha256_of(scratch / n) != teachers.get(n)]
            except (OSError, tarfile.TarError) as error:
                bad = [f"teachers.tar.gz ({error})"]
            if bad:
                self.log("resume", f"teacher files do not match their sha256 ({', '.join(bad)}): rebuilt")
                del finished["teachers"]
            else:
                self.teacher_dir.mkdir(parents=True, exist_ok=True)
                for name in TEACHER_FILES:
                    shutil.copy2(scratch / name, self.teacher_dir / name)
                if folder != self.out:  # resuming into the very folder it returned: the archive is there
                    shutil.copy2(folder / "teachers.tar.gz", self.out / "teachers.tar.gz")
                self.manifest["teachers"] = previous["teachers"]
                self.log("resume", f"teacher files restored into {self.teacher_dir} (sha256 checked)")

        restored = []
        if (folder / "results.tar.gz").is_file():
            self.results.mkdir(parents=True, exist_ok=True)
            written = safe_extract(folder / "results.tar.gz", self.results)
            restored = sorted({n.split("/")[1] for n in written if n.startswith("cells/")})
            self.log("resume", f"{len(written)} file(s) of {len(restored)} cell(s) restored into {self.results}")
        expected = set(previous.get("results", {}).get("complete_cells", []))
        missing = expected - {c.name for c in (self.results / "cells").glob("*") if (c / "DONE").is_file()}
        for name in RQ1_SEEDS:
            if name in finished and (missing or "teachers" not in finished):
                # Its cells are keyed by the teacher files' md5: without both, it must run again.
                self.log("resume", f"{name}: ended ok before, but its cells or teacher files are not all back")
                del finished[name]

        try:
            self.bench = json.loads((folder / "bench.json").read_text())
            self.write_json("bench.json", self.bench)
        except (OSError, ValueError):
            pass
        for name, model in BENCH_MODELS.items():
            if name in finished and not self.bench["models"].get(model, {}).get("finished"):
                del finished[name]

        # A fresh machine installs again; nvidia-smi is cheap and describes this machine.
        for name in ("nvidia-smi", "install"):
            finished.pop(name, None)
        self.done_before = {name: f"run {info.get('run', '?')}, ok in {info.get('seconds', '?')} s"
                            for name, info in finished.items()}
        self.log("resume", f"from {folder}: done before: {', '.join(self.done_before) or 'nothing'}")

    # -- the whole run ------------------------------------------------------------------------------
    def main(self) -> int:
        previous_log = Path(self.args.resume_from) / "run.log" if self.args.resume_from else None
        if previous_log and previous_log.is_file() and previous_log.resolve() != (self.out / "run.log").resolve():
            self.log_file.write(previous_log.read_text())  # the log stays whole across runs
        self.log("start", f"gpu_run.py ({self.mode}), budget {self.args.budget:.0f} s, deadline "
                 f"{(datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=self.args.budget)).strftime('%H:%M:%SZ')}; "
                 f"out {self.out}; results {self.results}; teachers {self.teacher_dir}")
        if self.args.resume_from:
            self.resume(Path(self.args.resume_from).resolve())
        self.manifest["runs"].append({"started": utc_now(), "budget_s": self.args.budget,
                                      "resumed_from": self.args.resume_from, "argv": sys.argv[1:]})
        self.save_manifest()

        def stopped(signum, frame):
            raise Stopped(signal.Signals(signum).name)
        signal.signal(signal.SIGTERM, stopped)
        signal.signal(signal.SIGINT, stopped)
        stop = threading.Event()
        watcher = threading.Thread(target=self.watch, args=(stop,), daemon=True)
        watcher.start()
        try:
            self.run_step("nvidia-smi", self.nvidia_smi)
            self.run_step("install", self.install)
            self.run_step("teachers", self.teachers)
            for name in RQ1_SEEDS:
                self.run_step(name, lambda until, name=name: self.rq1(name, until), needs="teachers")
            for name in BENCH_MODELS:
                self.run_step(name, lambda until, name=name: self.bench_step(name, until))
        except Stopped as why:
            self.log("stop", f"{why}: the step in progress was stopped; packing what exists")
        finally:
            stop.set()
            watcher.join(timeout=15)
            self.sync()
            for name in STEPS:
                self.log("SUMMARY", f"{name}: {self.outcomes.get(name, 'not reached')}")
            self.manifest["runs"][-1]["ended"] = utc_now()
            self.manifest["runs"][-1]["outcomes"] = self.outcomes
            self.save_manifest()
            self.log("end", f"{time.monotonic() - self.started:.0f} s in all")
            self.log_file.close()
            self.console.close()
            if self.work in self.results.parents:  # the dry run's own results: kept for a look
                print(f"the dry run's results folder is kept: {self.results}")
            else:
                shutil.rmtree(self.work, ignore_errors=True)
        return 1 if any(o.startswith("failed") for o in self.outcomes.values()) else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=
                                     "Steps: " + ", ".join(STEPS) + ". Details: the docstring of this file, and "
                                     "bench/README.md, \"The prepared GPU run\".")
    parser.add_argument("--smoke", action="store_true", help="dry run on the CPU at smoke size (installs nothing)")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu-out",
                        help="where every output goes (default: $OUT, else ./gpu-out)")
    parser.add_argument("--resume-from", default="", help="a previous run's outputs (its $OUT): go on from them")
    parser.add_argument("--budget", type=float, default=float(os.environ.get("GPU_RUN_BUDGET_S", BUDGET_S)),
                        help=f"seconds from the start to the deadline (default {BUDGET_S}, or $GPU_RUN_BUDGET_S)")
    parser.add_argument("--estimate", action="append", default=[], metavar="STEP=SECONDS",
                        help="replace a step's estimate (repeatable), e.g. rq1-seeds12-13=120")
    parser.add_argument("--skip", nargs="+", default=[], choices=STEPS, metavar="STEP", help="steps not to run")
    parser.add_argument("--results", default="", help="results folder (default: results/; with --smoke a "
                        "temporary folder, so the repository's own results/ and data/teachers/ stay untouched)")
    parser.add_argument("--gpu", type=int, default=0, help="CUDA device index")
    parser.add_argument("--wheels", default="", help="install from this folder of wheels only (pip --no-index "
                        "--find-links), for a machine without a package index")
    parser.add_argument("--torch-index-url", default="https://download.pytorch.org/whl/cu130",
                        help="where the CUDA build of torch comes from ('' for pip's own index)")
    parser.add_argument("--keep-torch", action="store_true", help="keep an installed CUDA torch of another version")
    parser.add_argument("--only-missing", action="store_true", help="install only the requirements not installed "
                        "at any version (a machine image's own versions stay; with --wheels, fewer wheels to carry)")
    parser.add_argument("--max-results-mb", type=float, default=15, help="cap of results.tar.gz (each output "
                        "stays under 16 MiB); over it, the TREC runs, then checkpoints, are left out")
    parser.add_argument("--checkpoint-cap-mb", type=float, default=8,
                        help="checkpoints of cut-off cells are packed only while their total fits this")
    args = parser.parse_args()
    return Runner(args).main()


if __name__ == "__main__":
    sys.exit(main())
