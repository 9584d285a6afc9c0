"""The demo's measured results, shipped with the kit as data (data/demo-results/), and how to use them.

A reviewer without a GPU cannot retrain the demo in minutes, but can re-score it: every demo cell the README
reports ships as the results store keeps it, without its model weights (88 MB a cell):

  cells/<cell>/config.json, DONE (device, seconds), training.json, train_log.jsonl
  cells/<cell>/eval/<collection>__<key>/metrics.json, per_query.json, run.trec.gz (the re-ranked run), timing.json
  first-stage/<collection>__<key>/...   the candidates' own scores
  MANIFEST.json                         each file's sha256 and size; the kit's commit, and per cell its device,
                                        precision and data variant

The results store reuses a cell whose DONE and metrics.json exist (store.py), so a results folder holding these
files rebuilds every table, figure and verdict without training: `install` copies them there, after checking
each checksum. `python scripts/ship_results.py` writes the folder from a results store.

Commands:
  python scripts/ship_results.py --results results --cells 'minilm-l6__*'   # (re)write data/demo-results
  python exp_rq1_objectives.py --demo --from-shipped ...                    # rebuild the README's tables
  python exp_rq5_summary.py --results data/demo-results                    # read in place (its tables go elsewhere)
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import common

SHIPPED = common.REPO / "data" / "demo-results"
LIMIT_BYTES = 30 * 1024 * 1024  # the whole folder stays small enough to live in git
CELL_FILES = ["config.json", "DONE", "training.json", "train_log.jsonl"]
EVAL_FILES = ["metrics.json", "per_query.json", "run.trec.gz", "timing.json"]


def sha256_of(path: Path) -> str:
    return common.file_digest(path, "sha256")


def kit_commit() -> str:
    """The commit of the kit that wrote the folder, with "+changes" when the work tree differs from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=common.REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=common.REPO,
                               capture_output=True, text=True).stdout.strip()
        return commit + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def export(results: Path, cells: list[Path], destination: Path = SHIPPED) -> dict:
    """Copy finished cells (and the first-stage folders beside them) from a results store into `destination`
    and write its MANIFEST.json. Files already there stay unless a cell is shipped again."""
    results, destination = Path(results), Path(destination)
    copied = []
    for cell in cells:
        if not (cell / "DONE").exists():
            raise common.KitError(f"{cell}: the cell is not finished (no DONE); finish it before shipping it")
        target = destination / "cells" / cell.name
        shutil.rmtree(target, ignore_errors=True)
        for name in CELL_FILES:
            if (cell / name).exists():
                copied.append(_copy(cell / name, target / name))
        for evaluation in sorted((cell / "eval").glob("*/")):
            if (evaluation / "metrics.json").exists():
                for name in EVAL_FILES:
                    if (evaluation / name).exists():
                        copied.append(_copy(evaluation / name, target / "eval" / evaluation.name / name))
    for folder in sorted((results / "first-stage").glob("*/")):
        for file in sorted(folder.iterdir()):
            copied.append(_copy(file, destination / "first-stage" / folder.name / file.name))
    if (results / "FORMAT").exists():
        _copy(results / "FORMAT", destination / "FORMAT")
    return write_manifest(destination, shipped_now={cell.name for cell in cells})


def _copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def write_manifest(destination: Path, shipped_now: set[str] = frozenset()) -> dict:
    """MANIFEST.json: each file's sha256 and size, and per cell its device, precision, data and the kit's commit
    when it was shipped (a cell shipped earlier keeps the commit it was shipped with)."""
    files = sorted(p for p in destination.rglob("*") if p.is_file() and p.name != "MANIFEST.json")
    before = json.loads((destination / "MANIFEST.json").read_text()) if (destination / "MANIFEST.json").exists() else {}
    cells = {}
    for config in sorted(destination.glob("cells/*/config.json")):
        name = config.parent.name
        cfg, done = json.loads(config.read_text()), json.loads((config.parent / "DONE").read_text())
        earlier = before.get("cells", {}).get(name, {}).get("kit", before.get("kit"))
        cells[name] = {"device": done.get("device"), "precision": cfg.get("precision"),
                       "training": cfg.get("training"), "seconds": done.get("seconds"),
                       "kit": kit_commit() if name in shipped_now or not earlier else earlier}
    manifest = {"kit": kit_commit(), "cells": cells,
                "files": {str(p.relative_to(destination)): {"sha256": sha256_of(p), "bytes": p.stat().st_size}
                          for p in files}}
    size = sum(f["bytes"] for f in manifest["files"].values())
    if size > LIMIT_BYTES:
        raise common.KitError(f"{destination}: {size / 2**20:.1f} MB, over the {LIMIT_BYTES / 2**20:.0f} MB a shipped "
                              f"folder may hold; ship fewer cells")
    common.atomic_write_json(destination / "MANIFEST.json", manifest)
    return manifest


def verify(shipped: Path = SHIPPED) -> dict:
    """The manifest, once every file it lists is present with its checksum (KitError naming the first that is not)."""
    path = Path(shipped) / "MANIFEST.json"
    if not path.exists():
        raise common.KitError(f"{path}: no such file; the shipped results are missing (git checkout data/demo-results)")
    manifest = json.loads(path.read_text())
    for name, entry in manifest["files"].items():
        file = Path(shipped) / name
        if not file.exists() or sha256_of(file) != entry["sha256"]:
            raise common.KitError(f"{file}: {'missing' if not file.exists() else 'its sha256 differs from MANIFEST.json'}"
                                  f"; restore the shipped folder (git checkout data/demo-results) or export it again")
    return manifest


def install(results: Path, shipped: Path = SHIPPED) -> list[str]:
    """Copy the shipped cells and first-stage folders into a results folder (checked first), leaving every cell the
    folder already has as it is. Returns the names of the cells copied."""
    manifest = verify(shipped)
    own = {p.name for p in (Path(results) / "cells").glob("*/") if (p / "DONE").exists()}  # never overwritten
    copied = set()
    for name in manifest["files"]:
        parts = Path(name).parts
        if parts[0] == "FORMAT" or (parts[0] == "cells" and parts[1] in own):
            continue
        _copy(Path(shipped) / name, Path(results) / name)
        if parts[0] == "cells":
            copied.add(parts[1])
    return sorted(copied)


def shipped_cells(shipped: Path = SHIPPED) -> set[str]:
    """Names of the cells the shipped folder holds (empty when it is absent)."""
    path = Path(shipped) / "MANIFEST.json"
    return set(json.loads(path.read_text())["cells"]) if path.exists() else set()


def twin_report(cell: Path, shipped: Path = SHIPPED, measure: str = "nDCG@10") -> list[dict]:
    """A cell trained here against its shipped twin (the cell of the same key): per collection, the difference of
    the measure (here - shipped), a paired t-test over queries, and whether the difference lies within the spread
    that the shipped seeds of the same recipe show (unknown with one shipped seed)."""
    import significance  # the kit's tests; imported here so that shipping needs none of it
    twin = Path(shipped) / "cells" / cell.name
    if not (twin / "config.json").exists():
        raise common.KitError(f"{cell.name}: no shipped twin in {shipped}; shipped: {', '.join(sorted(shipped_cells(shipped)))}")
    config = json.loads((twin / "config.json").read_text())
    siblings = [c for c in Path(shipped).glob("cells/*/config.json")  # the same recipe with another seed
                if {k: v for k, v in json.loads(c.read_text()).items() if k != "seed"} ==
                {k: v for k, v in config.items() if k != "seed"}]
    rows = []
    for evaluation in sorted((twin / "eval").glob("*/")):
        mine = cell / "eval" / evaluation.name / "per_query.json"
        if not mine.exists():
            continue
        here = json.loads(mine.read_text())[measure]
        there = json.loads((evaluation / "per_query.json").read_text())[measure]
        d = significance.difference([(here, there)])
        means = [json.loads((c.parent / "eval" / evaluation.name / "metrics.json").read_text())[measure]
                 for c in siblings if (c.parent / "eval" / evaluation.name / "metrics.json").exists()]
        spread = max(means) - min(means) if len(means) >= 2 else None
        rows.append({"collection": evaluation.name.split("__")[0], "here": float(sum(here.values()) / len(here)),
                     "shipped": float(sum(there.values()) / len(there)), "diff": d.mean, "pvalue": d.pvalue(),
                     "shipped_seeds": len(means), "seed_spread": spread,
                     "within_spread": None if spread is None else abs(d.mean) <= spread,
                     "identical": here == there})
    return rows
