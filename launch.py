"""How a grid runs: here, as one of many workers, or, with --plan or --slurm, as extras/scale_out.py says.

Every experiment script hands its cells to `train_and_evaluate` below:
  * by default, grid.train_and_evaluate: this process is one worker on the results folder. Any number of workers
    may share it, on one machine (--gpu 0, --gpu 1, ...) or on many that share a filesystem: each takes the
    cells that are free (workers.CellLock), prints each finished cell's row as it lands with the time left, and the
    one that finishes the last cell writes the tables;
  * --plan (what the grid costs) and --slurm (a SLURM job array, one task per cell): extras/scale_out.py, imported
    only when one of them is given.
The rates below are what a cell costs; the first line of a run and its progress lines read them, and so does
--plan.

Sections, read top to bottom:
  1. rates: what a cell costs, measured or scaled, and what is left of each cell
  2. the entry point of the scripts
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import NamedTuple

import common
import grid
import workers
import paper_setup
from cross_encoder import TrainConfig

SUBMITIT_VERSION = "1.5.4"  # the version requirements.txt pins (README, "Packages")


@dataclasses.dataclass
class LaunchOptions:
    """The flags of every training script that say how its grid runs (their --help lines follow each script's own)."""
    plan: bool = False
    """list the cells (done, running, to do), the GPU-hours and disk they need, what --slurm would submit; run nothing"""
    slurm: bool = False
    """submit the cells to do as a SLURM job array, one task per cell (README, "Many GPUs and SLURM")"""
    partition: str | None = None
    """--slurm: the SLURM partition (default: the cluster's)"""
    time_limit: str = "24:00:00"
    """--slurm: time limit per task; a cell still running then checkpoints and is requeued"""
    gpus: int = 1
    """--slurm: GPUs per task: 1 (a cell trains on one GPU) or 0 (tasks on CPUs)"""
    cpus: int = 8
    """--slurm: CPU cores per task"""
    mem: int = 32
    """--slurm: memory per task, in GB"""
    account: str | None = None
    """--slurm: the SLURM account charged (default: yours)"""
    array_parallelism: int = 8
    """--slurm: at most this many tasks at once (GPUs in use)"""


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
    if config.is_file():
        c = json.loads(config.read_text())
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
    cells = dict((grid.cell_dir(results, c), c) for seeds in configs.values() for c in seeds)
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
        record, age = workers.CellLock.read(folder / "LOCK")
        if done and not rerank:
            state = "done"
        elif record is not None:
            stale = workers.CellLock(folder).stale(record, age)
            who = workers.describe_holder(record)
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


_TASK: dict = {}  # set in a --slurm task (extras/scale_out.GridTask): this process is one worker that does one cell


# ================================================================================================
# 2. The entry point of the scripts
# ================================================================================================
def train_and_evaluate(args, configs: dict[str, list[TrainConfig]], collections, results: Path, device: str,
                       **options):
    """grid.train_and_evaluate as one worker, or what --plan and --slurm ask for instead (they end the script
    with workers.EarlyExit). `options` are grid.train_and_evaluate's."""
    script = Path(sys.argv[0]).name
    mode = "smoke" if getattr(args, "smoke", False) else "demo" if getattr(args, "demo", False) else "paper"
    depth, max_queries, models = options.get("depth", 1000), options.get("max_queries"), options.get("models", ())
    if getattr(args, "plan", False) or getattr(args, "slurm", False):  # they end the script (workers.EarlyExit)
        scale_out = common.extra("scale_out", "--plan" if getattr(args, "plan", False) else "--slurm")
        scale_out.plan_or_submit(args, script, mode, configs, collections, results, device, options)
    queries = {c.name: collection_queries(c, max_queries) for c in collections}
    estimator = Estimator(configs, results, device)
    plans = plan_cells(configs, collections, results, depth, queries, models)
    todo = [p for p in plans if p.state != "done"]
    if todo and not _TASK:  # what the grid costs, said before it starts (a demo on a laptop runs for hours)
        print(f"{len(todo)} of {len(plans)} cell(s) to do, about {workers.format_duration(sum(map(estimator.seconds, todo)))} "
              f"on {describe_device(device)} by the kit's rates, less what other workers take (--plan lists them)")

    def estimate(units: list[workers.Unit]) -> float:  # seconds left of these units, for the progress lines
        left = {u.folder for u in units}
        return sum(estimator.seconds(p) for p in plan_cells(configs, collections, results, depth, queries, models)
                   if p.folder in left or p.label in {u.label for u in units})
    return grid.train_and_evaluate(configs, collections, results, device, max_units=1 if _TASK else None,
                                   estimate=estimate, **options)
