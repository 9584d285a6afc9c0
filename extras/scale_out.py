"""--plan and --slurm: what a grid would cost, and a grid submitted as a SLURM job array (one task per cell).

Both end the script (common.EarlyExit); grid.train_and_evaluate calls `plan_or_submit` only when one of the two
flags is given, so a run without them never loads this file (nor submitit).
  * --plan: lists the cells (done, running, to do), the GPU-hours and the disk the rest needs, from the rates in
    RATES below (or the rates measured in the results folder itself), and what --slurm would submit; runs nothing;
  * --slurm: submits one task per cell still to do as a SLURM job array through submitit. Each task runs the
    same script as one worker that does one cell (GridTask). SLURM's signal before the time limit (submitit's,
    SIGUSR2 by default) and SIGTERM (preemption) make the task checkpoint its cell at the next step and submitit
    requeue it; the requeued task resumes from that checkpoint. The task that finishes the last cell writes the
    tables.

Sections, read top to bottom:
  1. rates: what a cell costs, measured or scaled, and what is left of each cell
  2. the plan
  3. SLURM: its options, the job array and its tasks
  4. the entry point
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import sys
from pathlib import Path
from typing import NamedTuple

import common
import grid
import paper_setup
import store
from common import KitError
from cross_encoder import TrainConfig

SUBMITIT_VERSION = "1.5.4"  # the version requirements.txt pins (README, "Packages")




# ================================================================================================
# 1. Rates: what a cell costs, and what is left of each cell
# ================================================================================================
class Measured(NamedTuple):
    train: float   # training pairs per second (a step of 32 triples is 64 pairs)
    rerank: float  # re-ranked (query, passage) pairs per second
    source: str


# The kit's measured rates, keyed by (device kind, backbone, maximum length); GPU figures are bf16, CPU ones fp32.
# A plan uses, in this order: the rates measured in its own results folder (each cell's train_log.jsonl and
# eval/*/timing.json), a measurement below for the backbone, or the nearest one below scaled (`rates`).
RATES = {
    ("cuda", "bert-base", 512): Measured(585, 1_400, "BERT-base on one H100, bf16, real SciFact/NFCorpus pairs "
                                                     "(bench/README.md, 'GPU: BERT-base in bf16')"),
    ("cuda", "bert-base", 256): Measured(697, 2_158, "BERT-base on one H100, bf16, real SciFact/NFCorpus pairs "
                                                     "(bench/README.md, 'GPU: BERT-base in bf16')"),
    ("cuda", "minilm-l6", 192): Measured(600, 2_400, "demo cells on one H100, bf16: 35-39 steps/s of 16 pairs, "
                                                     "2,000-2,900 pairs/s re-ranking (README, 'How long it takes')"),
    ("cpu", "minilm-l6", 192): Measured(8.5, 37.5, "demo cells on an idle 2-core CPU, fp32: 8-9 pairs/s training, "
                                                   "37-38 re-ranking (README, 'How long it takes'; bench/README.md)"),
}
MEASURED_CORES = 2               # the CPU rates above are a 2-core machine's
CORE_SCALING = math.log2(1.75)   # 2 threads gave 1.7-1.8x one thread on it (bench/README.md): x1.75 per doubling
CPU_BF16_TRAINING = 1.7          # CPUs with AVX512-BF16 train about 1.7x faster in bf16 (README, 'How long it takes')
GPU_STEPS_PER_S = 39 * 6         # a 6-layer MiniLM step was launch-bound at 35-39 steps/s on the H100: a step of
#                                  an L-layer backbone is taken to last at least L / (39 x 6) s, whatever its batch

# Parameters a token goes through (the encoder's layers, not its embedding tables), and layers, per backbone: from
# each checkpoint's configuration (layers x (4 hidden^2 + 2 or 3 x hidden x intermediate)); the cost of a pair
# scales with the first. Total parameters (for the disk) are the paper's (paper_setup.PUBLISHED_SIZES).
COMPUTE = {"bert-base": (85e6, 12), "electra-base": (85e6, 12), "roberta-base": (85e6, 12),
           "deberta-v3-base": (86e6, 12), "minilm-l12": (21.3e6, 12), "ettin-17m": (3.9e6, 7),
           "ettin-32m": (12.5e6, 10), "ettin-68m": (42.4e6, 19), "ettin-150m": (110e6, 22),
           **{f"minilm-l{k}": (1.77e6 * k, k) for k in range(2, 7)},
           **{name: (16_384, 2) for name in paper_setup.TINY_BACKBONES}}
TOTAL = {**paper_setup.PUBLISHED_SIZES, **{f"minilm-l{k}": 11.9e6 + 1.77e6 * k for k in range(2, 7)},
         **{name: 1.0e6 for name in paper_setup.TINY_BACKBONES}}
BYTES_PER_PARAMETER = {"model": 4, "checkpoint": 12}  # fp32 weights; the checkpoint adds AdamW's two moments
BYTES_PER_RERANKED_PAIR = 16  # a gzipped run line with the score in full (a smoke run's run.trec.gz), per_query aside


def compute_of(backbone: str) -> tuple[float, int, bool]:
    """(compute parameters, layers, known): from COMPUTE, a local folder's config.json, or BERT-base's (unknown)."""
    if backbone in COMPUTE:
        return (*COMPUTE[backbone], True)
    config = Path(backbone) / "config.json"
    try:
        c = json.loads(config.read_text()) if config.is_file() else {}
    except (OSError, ValueError):  # cut short: sized as BERT-base here; the run's preflight says what is wrong
        c = {}
    if {"num_hidden_layers", "hidden_size", "intermediate_size"} <= set(c):
        h, layers = c["hidden_size"], c["num_hidden_layers"]
        return layers * (4 * h * h + 2 * h * c["intermediate_size"]), layers, True
    return (*COMPUTE["bert-base"], False)


class Rate(NamedTuple):
    train: float
    rerank: float
    source: str    # how the rates were had: measured, or scaled from `ref`
    ref: str = ""  # the measurement they come from (a source of RATES, or the results folder)


def kind_of(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu"


def store_rates(results: Path) -> dict[tuple, Rate]:
    """Rates measured in the results folder: per (device kind, backbone, precision, max length), the median pairs/s
    of the finished cells' training log lines (the first of each left out: it holds the start) and of their
    re-rankings (timing.json)."""
    found: dict[tuple, tuple[list, list, int]] = {}
    for done in Path(results).glob("cells/*/DONE"):
        try:
            where = json.loads(done.read_text()).get("device")
            cfg = json.loads((done.parent / "config.json").read_text())
        except (OSError, ValueError):
            continue
        if not where:
            continue  # a cell of an earlier version of the kit: where it trained is unknown
        key = (kind_of(where), cfg["backbone"], cfg["precision"], cfg["max_length"])
        train, rerank, cells = found.setdefault(key, ([], [], 0))
        log = done.parent / "train_log.jsonl"
        lines = [json.loads(l) for l in log.read_text().splitlines()] if log.exists() else []
        train += [l["pairs_per_s"] for l in lines[1:] if l.get("pairs_per_s")]
        for timing in done.parent.glob("eval/*/timing.json"):
            t = json.loads(timing.read_text())
            if t.get("seconds") and kind_of(t.get("device", "")) == key[0]:
                rerank.append(t["pairs"] / t["seconds"])
        found[key] = (train, rerank, cells + 1)
    return {key: Rate(statistics.median(train) if train else 0, statistics.median(rerank) if rerank else 0,
                      f"measured in {results}: {cells} finished cell(s)")
            for key, (train, rerank, cells) in found.items() if train or rerank}


def rates(backbone: str, device: str, precision: str, max_length: int, cores: int | None = None,
          measured: dict | None = None) -> Rate:
    """Training and re-ranking pairs/s of `backbone` on `device` at `precision` and `max_length`, and where they
    come from: the results folder's own measurement (`measured`, from store_rates), else RATES for this backbone,
    else the nearest backbone of RATES scaled by compute parameters and length, and by cores on a CPU."""
    kind = kind_of(device)
    own = (measured or {}).get((kind, backbone, precision, max_length))
    table = {key: value for key, value in RATES.items() if key[0] == kind}
    lengths = sorted({key[2] for key in table}, key=lambda length: abs(math.log(length / max_length)))
    compute, layers, known = compute_of(backbone)
    candidates = [key for key in table if key[2] == lengths[0]]
    ref = next((key for key in candidates if key[1] == backbone), None) or \
        min(candidates, key=lambda key: abs(math.log(COMPUTE[key[1]][0] / compute)))
    scale = COMPUTE[ref[1]][0] / compute * ref[2] / max_length
    base = table[ref]
    train, rerank = base.train * scale, base.rerank * scale
    notes = []
    if scale != 1:
        notes.append(f"x{scale:.2f} for compute parameters {COMPUTE[ref[1]][0] / 1e6:.1f}M / {compute / 1e6:.1f}M"
                     + ("" if known else " (size unknown: BERT-base's assumed)")
                     + (f" and length {ref[2]} / {max_length}" if ref[2] != max_length else ""))
    if kind == "cuda":
        ceiling = max(v.rerank for k, v in table.items() if k[2] == lengths[0])
        if rerank > ceiling:
            rerank = ceiling
            notes.append(f"re-ranking capped at {ceiling:,.0f}, the tokenizer's pace (bench/README.md)")
        notes.append(f"a step lasts at least {step_floor(backbone, device) * 1000:.0f} ms (launch-bound)") \
            if train * step_floor(backbone, device) > 32 else None
        if precision == "fp32":
            notes.append("fp32: no GPU measurement, bf16's rates used (an underestimate of the time)")
    else:
        cores = cores or os.cpu_count() or MEASURED_CORES
        if cores != MEASURED_CORES:
            factor = (cores / MEASURED_CORES) ** CORE_SCALING
            train, rerank = train * factor, rerank * factor
            notes.append(f"x{factor:.2f} for {cores} cores instead of {MEASURED_CORES}")
        if precision == "bf16":
            train *= CPU_BF16_TRAINING
            notes.append(f"training x{CPU_BF16_TRAINING} in bf16")
    source = "measured" if not notes else "estimate: " + "; ".join(notes)
    if own and own.train and own.rerank:  # the folder's own measurement wins for what it measured
        return own._replace(ref=own.source, source="measured here")
    if own:
        what = "training" if own.train else "re-ranking"
        return Rate(own.train or train, own.rerank or rerank, f"{what} measured here, the other {source}", base.source)
    return Rate(train, rerank, source, base.source)


def step_floor(backbone: str, device: str) -> float:
    """The least time a training step takes: on a GPU, launch-bound steps (GPU_STEPS_PER_S); on a CPU, none."""
    return compute_of(backbone)[1] / GPU_STEPS_PER_S if kind_of(device) == "cuda" else 0.0


# What is left of each cell, read by the first line of a run, its progress lines and --plan.
@dataclasses.dataclass
class CellPlan:
    """One unit of the grid as it stands in the store, and what is left of it."""
    label: str
    backbone: str
    folder: Path
    state: str            # done, running, to do, ...
    train_pairs: float    # left to train
    steps_left: int
    rerank_pairs: float   # left to re-rank
    seconds: float = 0.0  # estimated time left on its device


def collection_queries(collection: paper_setup.Collection, max_queries: int | None) -> int | None:
    """How many test queries a collection has: ir_datasets' count (no download), else its run's query ids."""
    count = None
    if not collection.dataset_id.startswith("local:"):
        try:
            import ir_datasets
            count = ir_datasets.load(collection.dataset_id).queries_count()
        except Exception:  # an id without metadata: count the run's queries below
            count = None
    if count is None and collection.run:
        path = common.resolve_file(collection.run)
        opener = gzip.open if path.suffix == ".gz" else open
        if path.is_file():
            with opener(path, "rt") as handle:
                count = len({line.split()[0] for line in handle if line.strip()})
    return min(count, max_queries) if count is not None and max_queries else count


def plan_cells(configs: dict[str, list[TrainConfig]], collections, results: Path, depth: int,
               queries: dict[str, int | None], models=()) -> list[CellPlan]:
    """Each cell (and model trained elsewhere) with its state and the work left (`queries`: per collection, from
    collection_queries). A cell counts as evaluated on a collection when it holds a finished evaluation of that name."""
    pairs = {name: (n or 0) * depth for name, n in queries.items()}
    cells = dict((store.cell_dir(results, c), c) for seeds in configs.values() for c in seeds)
    plans = []
    for folder, cfg in cells.items():
        done = (folder / "DONE").exists()
        evaluated = {p.parent.name.split("__")[0] for p in folder.glob("eval/*/metrics.json")}
        rerank = sum(pairs[c.name] for c in collections if c.name not in evaluated)
        log = folder / "train_log.jsonl"
        trained = 0 if done or not log.exists() else max(
            (json.loads(l)["step"] for l in log.read_text().splitlines() if l.strip()), default=0)
        steps_left = 0 if done else cfg.steps - trained
        per_step = cfg.batch_queries * cfg.group_size * cfg.grad_accumulation
        record, age = store.CellLock.read(folder / "LOCK")
        if done and not rerank:
            state = "done"
        elif record is not None:
            stale = store.CellLock(folder).stale(record, age)
            who = store.describe_holder(record)
            state = f"stale lock of {who}" if stale else f"running ({who}" + (f", step {trained}" if not done else "") + ")"
        elif done:
            state = "trained, to re-rank"
        else:
            state = f"to do (from step {trained})" if trained else "to do"
        plans.append(CellPlan(f"{cfg.backbone} {cfg.objective} seed {cfg.seed}", cfg.backbone, folder, state,
                              steps_left * per_step, steps_left, rerank))
    for name in models:
        home = Path(results) / "models"
        evaluated = {p.parent.name.split("__")[0] for p in home.glob(f"{common.slug(name)}__*/eval/*/metrics.json")}
        rerank = sum(pairs[c.name] for c in collections if c.name not in evaluated)
        plans.append(CellPlan(f"model {name}", name, home, "done" if not rerank else "to re-rank", 0, 0, rerank))
    return plans


class Estimator:
    """Seconds left of each unit on `device`, from `rates` (refreshed from the store when asked)."""

    def __init__(self, configs, results: Path, device: str, cores: int | None = None):
        self.results, self.device, self.cores = Path(results), device, cores
        cfg = next(c for seeds in configs.values() for c in seeds)
        self.precision, self.max_length = cfg.precision, cfg.max_length
        self.measured = store_rates(results)

    def rate(self, backbone: str) -> Rate:
        return rates(backbone, self.device, self.precision, self.max_length, self.cores, self.measured)

    def seconds(self, plan: CellPlan) -> float:
        rate = self.rate(plan.backbone)
        train = max(plan.train_pairs / rate.train, plan.steps_left * step_floor(plan.backbone, self.device))
        return train + plan.rerank_pairs / rate.rerank


def describe_device(device: str, cores: int | None = None) -> str:
    if kind_of(device) == "cuda":
        return f"a GPU ({device}; rates measured on an H100)"
    return f"a CPU ({cores or os.cpu_count()} cores)"


# ================================================================================================
# 2. The plan
# ================================================================================================
def plan_text(script: str, mode: str, configs, collections, results: Path, device: str, depth: int,
              max_queries: int | None, args, models=()) -> str:
    """The plan: every cell with its state and estimated time left, the rates per backbone and where they come from,
    the work per cell, the total time and disk, and what --slurm would submit."""
    slurm = slurm_settings(args)
    queries = {c.name: collection_queries(c, max_queries) for c in collections}
    plans = plan_cells(configs, collections, results, depth, queries, models)
    estimator = Estimator(configs, results, device)
    cfgs = {store.cell_dir(results, c): c for seeds in configs.values() for c in seeds}
    for p in plans:
        p.seconds = estimator.seconds(p)
    unit = "GPU" if kind_of(device) == "cuda" else "CPU"
    cfg = next(iter(cfgs.values()))
    backbones = list(dict.fromkeys(c.backbone for c in cfgs.values()))
    counts = {s: sum(p.state.split(" (")[0] == s for p in plans) for s in ("done", "running")}
    todo = [p for p in plans if p.state != "done" and not p.state.startswith("running")]
    lines = [f"Plan of {script} ({mode}): {len(cfgs)} cells of {len(backbones)} backbone(s), "
             f"{len({c.objective for c in cfgs.values()})} objective(s) and {len({c.seed for c in cfgs.values()})} "
             f"seed(s){f', and {len(models)} model(s)' if models else ''}, {cfg.precision} on "
             f"{describe_device(device)}; results in {results}. Nothing was run.",
             "", f"Cells: {counts['done']} done, {counts['running']} running, {len(todo)} to do"]
    width = max(len(p.label) for p in plans)
    for p in plans:
        left = f"~{grid.format_duration(p.seconds)} {unit}" if p.state != "done" else ""
        lines.append(f"  {p.label:<{width}}  {p.state:<28} {left}")
    lines += ["", f"Rates on {describe_device(device)}, {cfg.precision}, max length {cfg.max_length} (pairs/s):"]
    refs: list[str] = []
    for b in backbones:
        rate = estimator.rate(b)
        refs += [rate.ref] if rate.ref not in refs else []
        lines.append(f"  {b:<16} train {rate.train:>9,.1f}  re-rank {rate.rerank:>9,.1f}  "
                     f"[{refs.index(rate.ref) + 1}] {rate.source}")
    lines += [f"  [{k}] {ref}" for k, ref in enumerate(refs, 1)]
    steps = sorted({c.steps for c in cfgs.values()})
    shapes: dict[int, set] = {}
    for c in cfgs.values():
        shapes.setdefault(c.batch_queries * c.group_size * c.grad_accumulation, set()).add(c.objective)
    shapes_text = "; ".join(f"{n} ({', '.join(sorted(o))})" for n, o in sorted(shapes.items()))
    total_pairs = sum((n or 0) * depth for n in queries.values())
    unknown = [name for name, n in queries.items() if n is None]
    lines += ["", f"Work per cell: {'/'.join(f'{s:,}' for s in steps)} training steps of {shapes_text} pairs; "
                  f"re-ranking {len(collections)} collection(s), "
                  f"top {depth} of {sum(n or 0 for n in queries.values()):,} queries = {total_pairs:,} pairs"
                  + (f" (query counts unknown for {', '.join(unknown)})" if unknown else "") + "."]
    train_s = sum(max(p.train_pairs / estimator.rate(p.backbone).train,
                      p.steps_left * step_floor(p.backbone, device)) for p in todo)
    total_s = sum(p.seconds for p in todo)
    longest = max((p.seconds for p in todo), default=0)
    lines.append(f"Left to do: {total_s / 3600:,.1f} {unit}-hours ({train_s / 3600:,.1f} training, "
                 f"{(total_s - train_s) / 3600:,.1f} re-ranking): " + ", ".join(
                     f"about {grid.format_duration(max(total_s / n, longest))} with {n} worker(s)"
                     for n in sorted({1, 4, slurm.array_parallelism})) +
                 f" (a cell is not split: the longest takes {grid.format_duration(longest)}).")
    now = sum(f.stat().st_size for p in plans if p.folder.is_dir() for f in p.folder.rglob("*") if f.is_file())
    model = sum(TOTAL.get(p.backbone, TOTAL["bert-base"]) * BYTES_PER_PARAMETER["model"] for p in todo if p.steps_left)
    checkpoints = sorted((TOTAL.get(p.backbone, TOTAL["bert-base"]) * BYTES_PER_PARAMETER["checkpoint"]
                          for p in todo if p.steps_left), reverse=True)
    if getattr(args, "keep_checkpoint", False):
        checkpoint, kept = sum(checkpoints), "last checkpoints, kept"
    else:  # a finished cell drops its checkpoint: only the cells training at once hold one
        at_once = min(len(checkpoints), slurm.array_parallelism)
        checkpoint, kept = sum(checkpoints[:at_once]), f"checkpoints of the {at_once} cells training at once"
    runs = sum(p.rerank_pairs for p in todo) * BYTES_PER_RERANKED_PAIR
    size = grid.format_size
    lines.append(f"Disk: {size(model + checkpoint + runs)} more (models {size(model)}, {kept} {size(checkpoint)}, "
                 f"runs {size(runs)}); these cells hold {size(now)} now.")
    tasks_device = "cuda:0" if slurm.gpus else "cpu"
    tasks = Estimator(configs, results, tasks_device, cores=slurm.cpus)
    lines += ["", slurm_text(args, len(todo), max((tasks.seconds(p) for p in todo), default=0), results)]
    if kind_of(tasks_device) != kind_of(device):
        lines.append(f"(--slurm runs on {'GPUs' if slurm.gpus else 'CPUs'}: plan with "
                     f"{'--gpu 0' if slurm.gpus else '--gpu -1'} to see the cells its tasks would train.)")
    lines.append("Estimates: from the rates above, which say where each comes from; the results folder's own "
                 "measurements replace them as cells finish.")
    return "\n".join(lines)


# ================================================================================================
# 3. SLURM
# ================================================================================================
@dataclasses.dataclass
class SlurmSettings:
    """What each task of a --slurm job array asks SLURM for (--slurm-options KEY=VALUE; sbatch's names)."""
    partition: str | None = None  # the cluster's default
    time_limit: str = "24:00:00"  # per task; a cell still running then checkpoints and is requeued
    gpus: int = 1                 # per task: 1 (a cell trains on one GPU) or 0 (tasks on CPUs)
    cpus: int = 8
    mem: int = 32                 # GB
    account: str | None = None    # yours by default
    array_parallelism: int = 8    # tasks at once (GPUs in use)


RULES = {"gpus": (lambda v: v in (0, 1), "1 GPU per task (a cell trains on one GPU; README, 'Many GPUs and SLURM'), or 0"),
         "cpus": (lambda v: v >= 1, "CPU cores per task, at least 1"),
         "mem": (lambda v: v >= 1, "memory per task in GB, at least 1"),
         "array_parallelism": (lambda v: v >= 1, "a number of tasks at once, at least 1"),
         "time_limit": (lambda v: slurm_minutes(v) is not None, "a SLURM time: minutes, HH:MM:SS or D-HH:MM:SS")}


def slurm_minutes(text: str) -> float | None:
    """A SLURM time limit in minutes ('90', '4:00:00', '1-12:00:00', '2-0', ...); None if not one."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(text).strip())
    if not match:
        return None
    days, first, second, third = (int(g) if g is not None else None for g in match.groups())
    if days is not None:  # D-H, D-H:M, D-H:M:S
        return days * 1440 + first * 60 + (second or 0) + (third or 0) / 60
    if third is not None:  # H:M:S
        return first * 60 + second + third / 60
    return first + (second or 0) / 60  # M or M:S


def slurm_settings(args) -> SlurmSettings:
    """--slurm-options read into SlurmSettings; one KitError line for a key or a value it cannot honour."""
    settings, fields = SlurmSettings(), {f.name: f for f in dataclasses.fields(SlurmSettings)}
    for option in getattr(args, "slurm_options", []):
        key, equals, text = option.partition("=")
        name = key.strip().replace("-", "_")
        if not equals or name not in fields:
            raise KitError(f"--slurm-options {option}: expected KEY=VALUE with a key of "
                           f"{', '.join(n.replace('_', '-') for n in fields)}")
        kind = int if fields[name].type == "int" else str
        try:
            value = kind(text)
        except ValueError:
            raise KitError(f"--slurm-options {option}: {key} takes a whole number") from None
        if name in RULES and not RULES[name][0](value):
            raise KitError(f"--slurm-options {option}: expected {RULES[name][1]}")
        setattr(settings, name, value)
    return settings


def slurm_text(args, tasks: int, longest_s: float, results: Path) -> str:
    """What --slurm would submit (or did), in sbatch's terms."""
    args = slurm_settings(args)
    if not tasks:
        return "--slurm would submit nothing: every cell is done or running."
    limit = slurm_minutes(args.time_limit) * 60
    flags = [f"--array=0-{tasks - 1}%{min(tasks, args.array_parallelism)}", f"--time={args.time_limit}",
             f"--gpus-per-node={args.gpus}" if args.gpus else "(no GPU)", f"--cpus-per-task={args.cpus}",
             f"--mem={args.mem}GB", f"--partition={args.partition}" if args.partition else "(the default partition)",
             f"--account={args.account}" if args.account else "(the default account)",
             "--signal=USR2@90 (submitit's; SIGTERM too)"]
    requeues = max(0, math.ceil(longest_s / max(limit * 0.8, 1)) - 1)
    return (f"--slurm would submit one job array of {tasks} task(s), one per cell to do: {' '.join(flags)}; logs in "
            f"{Path(results) / 'slurm'}. " + (f"The longest cell runs past the time limit about {requeues} time(s): each "
                                               f"time it checkpoints and is requeued." if requeues else
                                               "The longest cell fits in the time limit."))


class GridTask:
    """What each task of a --slurm job array runs: the experiment script itself, in this process, as a worker
    that does one cell. submitit pickles it and calls it with the task's index; SLURM's signal before the time
    limit and SIGTERM (preemption) ask the work to stop (common.request_stop): the cell's checkpoint is saved at
    its next step, and submitit's own handler then calls `checkpoint` and requeues the task, which resumes it."""

    def __init__(self, script: str, argv: list[str], repo: str):
        self.script, self.argv, self.repo = script, argv, repo
        self.signum = None

    def __call__(self, index: int) -> str:
        import importlib.util
        import submitit
        sys.path.insert(0, self.repo)
        requeue = signal.getsignal(getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG))  # submitit's handler

        def stop(signum, frame):
            self.signum = signum
            common.request_stop(f"{signal.Signals(signum).name}: a time limit or a preemption")
        for name in {submitit.JobEnvironment.USR_SIG, "USR1", "USR2", "TERM"}:
            signal.signal(getattr(signal, "SIG" + name), stop)
        grid._TASK.update(index=index)
        sys.argv = [self.script, *self.argv]
        spec = importlib.util.spec_from_file_location(Path(self.script).stem, self.script)
        module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # as an import: its `if __name__ == "__main__"` does not run
        try:
            module.main()
        except common.EarlyExit as early:
            print(early, flush=True)
        except KitError as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            sys.exit(2)
        except common.Interrupted as stopped:
            print(f"note: {stopped}; the task is requeued", flush=True)
            if self.signum is None or not callable(requeue):
                raise
            requeue(self.signum, None)  # submitit: checkpoint() below, requeue, and exit
            raise
        return "done"

    def checkpoint(self, index: int):
        """Called by submitit before requeueing: the same task again (the cell's state is in its checkpoint)."""
        import submitit
        return submitit.helpers.DelayedSubmission(GridTask(self.script, self.argv, self.repo), index)


def task_argv(args) -> list[str]:
    """The command line of a task: the flags given, less --slurm and its options, on the task's GPU (or CPUs).
    An explicit --precision is passed on; 'auto' is resolved by each task on its node (README: on a partition
    with GPUs of several kinds, pass --precision so that every task trains the same cells)."""
    argv = []
    for field in dataclasses.fields(args):
        name = field.name
        if name not in args.given or name in ("slurm", "plan", "gpu", "slurm_options"):
            continue
        value, flag = getattr(args, name), "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv + ["--gpu", "0" if slurm_settings(args).gpus else "-1"]


def submit(args, script: str, tasks: int, results: Path) -> list:
    """Submit `tasks` GridTasks as one job array; KIT_SUBMITIT_CLUSTER=local runs them on this machine through
    submitit's local executor instead (what the tests do)."""
    try:
        import submitit
    except ImportError:
        raise KitError(f"--slurm submits through submitit, which is not installed: pip install "
                       f"submitit=={SUBMITIT_VERSION}") from None
    cluster = os.environ.get("KIT_SUBMITIT_CLUSTER", "slurm")
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if cluster == "slurm" and missing:
        raise KitError(f"--slurm: {missing[0]} is not on this machine's PATH; run the command on the cluster's login "
                       f"node (--plan shows what would be submitted)")
    settings = slurm_settings(args)
    executor = submitit.AutoExecutor(folder=Path(results).resolve() / "slurm", cluster=cluster,
                                     slurm_max_num_timeout=100)
    setup = [f"export PYTHONPATH={shlex.quote(str(common.REPO))}:$PYTHONPATH"]
    executor.update_parameters(name=f"kit-{Path(script).stem}", timeout_min=math.ceil(slurm_minutes(settings.time_limit)),
                               gpus_per_node=settings.gpus, cpus_per_task=settings.cpus, mem_gb=settings.mem,
                               slurm_partition=settings.partition, slurm_account=settings.account,
                               slurm_array_parallelism=settings.array_parallelism, slurm_setup=setup, local_setup=setup)
    task = GridTask(str(Path(script).resolve()), task_argv(args), str(common.REPO))
    return executor.map_array(task, list(range(tasks)))


# ================================================================================================
# 4. The entry point
# ================================================================================================
def plan_or_submit(args, configs, collections, results: Path, device: str, options: dict):
    """What --plan or --slurm asks for instead of running the grid here; ends the script with common.EarlyExit.
    `options` are grid.train_and_evaluate's."""
    script = Path(sys.argv[0]).name
    mode = "smoke" if getattr(args, "smoke", False) else "demo" if getattr(args, "demo", False) else "paper"
    depth, max_queries, models = options.get("depth", 1000), options.get("max_queries"), options.get("models", ())
    if getattr(args, "plan", False):  # no grid.preflight: a plan downloads nothing
        print(plan_text(script, mode, configs, collections, results, device, depth, max_queries, args, models))
        raise common.EarlyExit("note: --plan ran nothing")
    # Checked here, before the tasks start (and the published files fetched once, on the login node), but for
    # the teacher files that the tasks themselves make (exp_kd_vs_cl.py's, under the results folder).
    made_here = Path(results).resolve()
    grid.preflight({k: [c for c in cfgs if not (c.teacher_file() and made_here in
                                                 common.resolve_file(c.teacher_file()).resolve().parents)]
                    for k, cfgs in configs.items()}, collections, options.get("run_dir"), results,
                   options.get("keep_checkpoint", False))
    queries = {c.name: collection_queries(c, max_queries) for c in collections}
    plans = plan_cells(configs, collections, results, depth, queries, models)
    todo = [p for p in plans if p.state != "done" and not p.state.startswith("running")]
    if not todo:
        raise common.EarlyExit("note: nothing to submit: every cell is done or running (rerun without --slurm to "
                                "print the tables)")
    estimator = Estimator(configs, results, device, cores=slurm_settings(args).cpus)
    longest = max(estimator.seconds(p) for p in todo)
    jobs = submit(args, sys.argv[0], len(todo), results)
    print(slurm_text(args, len(todo), longest, results).replace("would submit", "submitted"))
    raise common.EarlyExit(f"note: submitted job array {jobs[0].job_id.split('_')[0]} "
                            f"({', '.join(j.job_id for j in jobs[:3])}{' ...' if len(jobs) > 3 else ''}); the task "
                            f"that finishes the last cell writes the tables, and rerunning this command without "
                            f"--slurm then prints them")
