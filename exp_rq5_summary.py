"""RQ5 — What holds across the whole grid? A summary of every stored result (no training).

Morand et al. (2026) conclude that the choice of objective matters about as much as scaling the
backbone, and that the relative objectives (InfoNCE, MarginMSE) beat pointwise BCE everywhere.
This script reads every finished cell that the other scripts left in the results folder and
summarises, per (mode, precision) — demo and paper cells, or bf16 and fp32 ones, are never mixed:
  * the mean rank of each objective over the (backbone x collection) cells (rank 1 = best mean);
  * wins / ties / losses against bce: two-sided paired t-test over queries, the seeds' spread added at 2+ seeds,
    Holm–Bonferroni within each (backbone, collection) over the objectives tested against bce;
  * how much of the variation of the cell means the objective explains, and how much the backbone: a
    two-way decomposition per collection (variance components, which do not grow with the number of
    objectives or backbones compared), and the mean gap between two objectives / two backbones;
  * whether the mean ranks differ: Friedman's test with one block per backbone (an objective's mean over the
    backbone's collections: its collections re-rank with the same models), then Nemenyi's critical difference;
  * per objective, the statement "significantly better than bce in k of N backbone x collection cells": the
    wins above, "everywhere" only when k = N (a mean above bce's without a test is no win).
Cells are labelled by objective; a cell trained with non-default settings that change the model
(its own teacher file, other steps or learning rate, ...) gets them appended, e.g.
"kl[minilm-l6__infonce__seed12]" or "bce[steps=100]", so different recipes are never averaged. A KD-vs-CL
teacher trained under a seed outside the grid's (exp_kd_vs_cl.py's same-size teachers, seed 112) is labelled
"infonce[kd-vs-cl teacher,seed=112]": its config differs from the grid cell's in the seed alone, and it would
otherwise count as one more seed of that cell.
Tables go to results/tables/rq5_<mode>_<precision>/, mode = the config's "training" (paper or demo)
refined by its lengths: smoke cells say training="demo" too, but are summarised apart as "smoke". Cells of
another data variant keep it in the mode: "demo-bm25" (the demo's BM25 data, its default for now), "paper-rz50".

Commands:
  python exp_rq5_summary.py                                   # every group in results/
  python exp_rq5_summary.py --results /tmp/r --mode demo-bm25 --precision bf16

Expected time: seconds on a CPU (it reads JSON files; no model is loaded, no GPU is used).
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import scipy.stats

import claims
import common
import grid
import losses
import paper_setup
import significance
import store
import tables

# The teacher file each objective family reads; the others do not change the model.
TEACHER_FIELD = {"teacher-pairs": "teacher_pairs", "lists": "teacher_lists", "teacher-groups": "teacher_scores"}
# Fields that follow from the others (make_config derives them) or that name the cell already.
DERIVED = {"backbone", "objective", "seed", "precision", "training", "warmup_steps", "steps",
           "teacher_pairs", "teacher_lists", "teacher_scores"}


@dataclasses.dataclass
class Args:
    results: str = "results"
    """results folder written by the experiment scripts (read only, except results/tables/rq5_*)"""
    mode: str | None = None
    """summarise only cells of this mode (paper, demo, smoke; demo-bm25, smoke-bm25 for the demo's BM25 data); default: each found"""
    precision: str | None = None
    """summarise only cells trained at this precision (bf16 or fp32); default: one summary per precision"""
    measure: str = "nDCG@10"
    """measure that is ranked, tested and averaged"""
    baseline: str = "bce"
    """objective every other one is tested against"""
    alpha: float = 0.05
    """significance level after Holm–Bonferroni correction"""
    tables: str | None = None
    """folder of RQ5's tables (default: <results>/tables; for shipped results, data/demo-results, results/tables)"""
    seed_sd: float | None = None
    """with one seed: the seed sd the verdicts' tests assume (the kit documents 0.02); unset, one seed is untested"""
    paper: bool = False
    """print what the paper's published table alone says of each claim (offline, no results needed) and stop"""


def infer_mode(cfg: dict) -> str:
    """The recipe a cell was made with: smoke and demo cells share training="demo", not their lengths. A variant of
    the recipe's data (the demo's BM25 data, "demo-bm25"; the paper's earlier lists, "paper-rz50") stays in the
    name, so that cells trained on other data are never summarised together: "smoke-bm25", "paper-rz50"."""
    training = cfg.get("training", "unknown")
    base, _, variant = training.partition("-")
    for mode, recipe in paper_setup.RECIPES.items():
        if (recipe["training"], recipe["max_length"], recipe["query_max_length"]) == \
                (base, cfg.get("max_length"), cfg.get("query_max_length")):
            return f"{mode}-{variant}" if variant else mode
    return f"{training}-custom"


def _short(value) -> str:
    """A teacher file by its folder under results/teachers/ (the teacher cell minus its hash), else its name."""
    path = Path(str(value))
    if path.parent.parent.name == "teachers":
        return path.parent.name.rsplit("__", 1)[0]
    return path.name if path.name else str(value)


def kd_vs_cl_teachers(results: Path, configs: list[dict]) -> set[str]:
    """The cells (by folder name) that exp_kd_vs_cl.py trained as teachers: it writes each teacher's files
    under results/teachers/<teacher's cell folder>/, and its students' configs name those files."""
    found = {folder.name for folder in (results / "teachers").glob("*/")}
    for cfg in configs:
        for field in TEACHER_FIELD.values():
            path = Path(str(cfg.get(field) or ""))
            if path.parent.parent.name == "teachers":
                found.add(path.parent.name)
    return found


def system_label(cfg: dict, mode: str, teacher: bool = False) -> str:
    """The objective, plus every setting that makes this cell's model differ from the mode's recipe.
    `teacher`: the cell is a KD-vs-CL teacher (kd_vs_cl_teachers). One trained under a seed outside the grid's
    (paper_setup.PAPER_SEEDS), as each same-size teacher is (seed 112), is a model no RQ script trains, though
    its config differs from the grid cell's in the seed alone: labelled apart, it is never averaged as one more
    seed of that cell. A teacher under a grid seed and the grid's recipe is the grid's own cell (one folder)."""
    family = losses.DATA.get(cfg["objective"])
    extra = [_short(cfg[TEACHER_FIELD[family]])] if family in TEACHER_FIELD and cfg.get(TEACHER_FIELD[family]) else []
    try:
        recipe = mode.split("-")[0]  # the data variant is in "training", which is not compared
        default = dataclasses.asdict(grid.make_config(recipe, cfg["backbone"], cfg["objective"], cfg["seed"],
                                                      cfg["precision"], steps=cfg["steps"]))
        if cfg["steps"] != paper_setup.RECIPES[recipe]["steps"]:
            extra.append(f"steps={cfg['steps']}")
    except (KeyError, common.KitError):  # a custom recipe: no defaults to compare with
        default = cfg
    extra += [f"{k}={v}" for k, v in sorted(cfg.items()) if k not in DERIVED and default.get(k) != v]
    if teacher and cfg["seed"] not in paper_setup.PAPER_SEEDS:
        extra += ["kd-vs-cl teacher", f"seed={cfg['seed']}"]
    return cfg["objective"] + (f"[{','.join(extra)}]" if extra else "")


@functools.lru_cache(maxsize=None)
def _first_query(path: Path):
    """(qid, documents) of the first query of a stored run (sorted by qid): equal ones = same candidates."""
    qid, docs = None, set()
    if path.exists():
        with gzip.open(path, "rt") as handle:
            for parts in map(str.split, handle):
                if parts and qid is not None and parts[0] != qid:
                    break
                if parts:
                    qid = parts[0]
                    docs.add(parts[2])
    return (qid, frozenset(docs)) if qid is not None else None


def scan(results: Path, measure: str):
    """Every finished, evaluated cell: {(mode, precision): {(backbone, label, column): {seed: (value, per_query)}}},
    the fingerprint of each column's candidates, and the number of unfinished cells."""
    groups: dict = defaultdict(dict)
    fingerprints: dict = {}
    unfinished = 0
    finished = {}
    for folder in sorted((results / "cells").glob("*/")):
        if not (folder / "config.json").exists() or not (folder / "DONE").exists():
            unfinished += 1
            continue
        finished[folder] = json.loads((folder / "config.json").read_text())
    teachers = kd_vs_cl_teachers(results, list(finished.values()))
    for folder, cfg in finished.items():
        mode = infer_mode(cfg)
        label = system_label(cfg, mode, teacher=folder.name in teachers)
        for evaluation in sorted((folder / "eval").glob("*/")):
            if not (evaluation / "metrics.json").exists():
                continue
            why = store.damage(evaluation)
            if why:  # read only: left where it is; the scripts set it aside and compute it again
                print(f"note: {why}; skipped (rerun the script that made it to compute it again)")
                continue
            metrics = json.loads((evaluation / "metrics.json").read_text())
            if measure not in metrics:
                continue
            per_query = json.loads((evaluation / "per_query.json").read_text())[measure]
            column = evaluation.name  # <collection>__<evaluation hash>: same hash = same candidates and lengths
            fingerprints.setdefault(column, evaluation / "run.trec.gz")
            seeds = groups[mode, cfg["precision"]].setdefault((cfg["backbone"], label, column), {})
            seeds.setdefault(cfg["seed"], (metrics[measure], per_query))  # a duplicate recipe: keep the first
    return groups, fingerprints, unfinished


def summarise(cells: dict, first_stage: dict, args: Args, tag: str):
    """The four RQ5 tables and the statements of one (mode, precision) group."""
    slug = common.slug(tag.replace(", ", "-"))
    mean = {key: float(np.mean([v for v, _ in seeds.values()])) for key, seeds in cells.items()}
    backbones = sorted({b for b, _, _ in cells})
    labels = sorted({s for _, s, _ in cells}, key=lambda s: (s != args.baseline, s))
    names = {c: c.split("__")[0] for _, _, c in cells}
    clash = {n for n in names.values() if list(names.values()).count(n) > 1}
    order: dict = {}
    for i, c in enumerate([*paper_setup.DEMO_COLLECTIONS, *paper_setup.PAPER_COLLECTIONS]):
        order.setdefault(c.name, i)
    columns = {c: (n if n not in clash else f"{n}#{c.split('__')[-1][:4]}")
               for c, n in sorted(names.items(), key=lambda item: (order.get(item[1], len(order)), item))}
    units = [(b, c) for b in backbones for c in columns]  # one backbone x collection cell

    # Mean rank, and wins / ties / losses against the baseline: tested, Holm within each cell ---------------
    ranks, outcomes = defaultdict(list), defaultdict(list)
    for b, c in units:
        present = [s for s in labels if (b, s, c) in mean]
        if len(present) >= 2:
            for s, r in zip(present, scipy.stats.rankdata([-mean[b, s, c] for s in present], method="average")):
                ranks[s].append(float(r))
        if (b, args.baseline, c) not in mean:
            continue
        base = [pq for _, pq in cells[b, args.baseline, c].values()]
        others = [s for s in present if s != args.baseline]
        tests = [significance.difference([([pq for _, pq in cells[b, s, c].values()], base)]) for s in others]
        for s, t, p in zip(others, tests, significance.holm([t.pvalue() for t in tests])):
            outcomes[s].append("win" if p < args.alpha and t.mean > 0 else "loss" if p < args.alpha else "tie")
    rows, records, statements = [], [], []
    for s in sorted(labels, key=lambda s: (np.mean(ranks[s]) if ranks[s] else np.inf, s)):
        values = [mean[b, s, c] for b, c in units if (b, s, c) in mean]
        wtl = [outcomes[s].count(o) for o in ("win", "tie", "loss")]
        # A mean above the baseline's is not a finding: only a significant win counts, and "everywhere" needs
        # one in every compared cell (an untested cell, p nan, reads as a tie and so is not a win).
        k, n = wtl[0], len(outcomes[s])
        everywhere = "yes" if n and k == n else "no" if n else "–"
        rows.append([s, len(values), f"{np.mean(ranks[s]):.2f}" if ranks[s] else "–", f"{np.mean(values):.4f}",
                     "/".join(map(str, wtl)) if n else "–", f"{k}/{n}" if n else "–", everywhere])
        records.append({"system": s, "cells": len(values), "mean_rank": float(np.mean(ranks[s])) if ranks[s] else None,
                        "mean": float(np.mean(values)), "wins": wtl[0], "ties": wtl[1], "losses": wtl[2],
                        "significant_wins": k, "compared": n, "everywhere": everywhere == "yes"})
        if n:
            statements.append(f"{s} significantly better than {args.baseline} in {k} of {n} backbone x "
                              f"collection cells{' (every one)' if k == n else ''}, significantly worse in "
                              f"{wtl[2]} (Holm within each cell over the objectives tested against "
                              f"{args.baseline}, alpha={args.alpha})")
    head = ["objective", "cells", "mean rank", f"mean {args.measure}", f"W/T/L vs {args.baseline}",
            f"sig. better than {args.baseline}", "everywhere"]
    note = (f"Rank 1 = best mean {args.measure} within a backbone x collection cell (ties averaged). W/T/L: two-sided "
            f"paired t-test over queries, the seeds' spread added at 2+ seeds, Holm-Bonferroni within each backbone x "
            f"collection, alpha={args.alpha}; sig. better = the wins of the cells compared, everywhere = a win "
            f"in every one of them")
    objectives = tables.make_table(f"RQ5: objectives over {len(backbones)} backbones x {len(columns)} collections "
                                   f"({tag})", head, rows, note, records=records, label=f"tab:rq5-objectives-{slug}")

    # How much of the variation the objective explains, and how much the backbone ------------------
    shares = claims.factor_shares(mean, backbones, labels, list(columns))
    rows, records = [], []
    for factor in ("objective", "backbone", "residual"):
        part = shares[factor]
        rows.append([factor, *(f"{part[k]:.4f}" if part[k] is not None else "–" for k in ("std", "gap")),
                     f"{part['share']:.0%}" if part["share"] is not None else "–"])
        records.append({"factor": factor, **part, "collections": shares["collections"]})
    note = (f"Per collection, the seed-averaged {args.measure} of the backbones x objectives present in full is split "
            f"by a two-way analysis of variance without replication into a component due to the objective, one due "
            f"to the backbone and a residual (interaction and noise); each component is (MS_factor - MS_residual) / "
            f"(levels of the other factor), at least 0, so it does not grow with the number of levels compared. std "
            f"= the component's square root, share = its part of the three; both averaged over the "
            f"{shares['collections']} collection(s) with a full grid of at least 2 x 2. gap = mean |difference| "
            f"between two objectives of one backbone (or two backbones of one objective), over every collection.")
    decomposition = tables.make_table(f"RQ5: how much of {args.measure} the objective and the backbone explain "
                                      f"({tag})", ["factor", "std", "gap", "share"], rows, note, records=records,
                                      label=f"tab:rq5-factors-{slug}")
    if shares["objective"]["share"] is not None:
        statements.append(f"the objective explains {shares['objective']['share']:.0%} of the variance of the cell "
                          f"means, the backbone {shares['backbone']['share']:.0%} (two-way decomposition, mean over "
                          f"{shares['collections']} collections)")

    # Per collection: the mean over backbones, with the candidates' own effectiveness --------------
    rows, records = [], []
    for s in labels:
        row = [s]
        for c in columns:
            values = [mean[b, s, c] for b in backbones if (b, s, c) in mean]
            row.append(f"{np.mean(values):.4f}" if values else "–")
            records += [{"system": s, "column": columns[c], "mean": float(np.mean(values)), "backbones": len(values)}] \
                if values else []
        rows.append(row)
    rows.append(["first stage", *(f"{first_stage[c]:.4f}" if c in first_stage else "–" for c in columns)])
    per_collection = tables.make_table(f"RQ5: {args.measure} per collection, mean over backbones ({tag})",
                                       ["objective", *columns.values()], rows, "First stage = the re-ranked candidates",
                                       records=records, label=f"tab:rq5-collections-{slug}")
    # Are the mean ranks different? Friedman with one block per backbone, then Nemenyi ------------------
    blocks = backbone_blocks(mean)
    left_out = [s for s in labels if blocks and s not in blocks[0]]
    ranks = rank_table(blocks, args.alpha, f"RQ5: do the objectives' mean ranks differ? ({tag})", slug,
                       left_out)
    if ranks is None:
        statements.append(f"the objectives' mean ranks are not tested: Friedman's test needs one block per "
                          f"backbone, with 3 or more objectives in common on 2 or more backbones (here: "
                          f"{len(blocks)} backbone(s), {len(blocks[0]) if blocks else 0} objective(s) in "
                          f"common); the collections of one backbone re-rank with its models, so they are not "
                          f"blocks")

    # The claims: M1 on the (backbone, setting) cells, M2 from the decomposition ---------------------
    runs = {}
    for (b, s, c), seeds in cells.items():
        runs.setdefault((b, s), {})[c] = [pq for _, pq in (seeds[k] for k in sorted(seeds))]
    # A collection's setting as the mode's scripts read it: SciFact is in domain for the demo (its training data),
    # out of domain (BEIR) for the paper; the mode's own list is read last, so it decides.
    lists = [paper_setup.DEMO_COLLECTIONS, paper_setup.PAPER_COLLECTIONS]
    group = {c.name: c.group for c in [*lists[not tag.startswith("paper")], *lists[tag.startswith("paper")]]}
    settings = {g: [c for c in columns if (group.get(names[c], "out-of-domain") == "in-domain") == (g == "in-domain")]
                for g in ("in-domain", "out-of-domain")}
    counts = sorted({len(by_seed) for by_seed in cells.values()})  # seeds per (backbone, objective, collection)
    seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    queries = sum(len(next(pq for key, by_seed in cells.items() if key[2] == c for _, pq in by_seed.values()))
                  for c in columns)
    where = (f"{tag}, every cell in the store: {seeds} seed{'s' if seeds != '1' else ''}, {len(columns)} "
             f"collection{'s' if len(columns) != 1 else ''}, {queries:,} queries")
    verdicts = [claims.factor_verdict(mean, backbones, labels, list(columns), where)]
    if args.baseline == "bce":
        verdicts.insert(0, claims.beats("M1", claims.settings(runs, {g: n for g, n in settings.items() if n}),
                                        [o for o in claims.STRONG if o in labels], "bce", where, named=claims.STRONG,
                                        alpha=args.alpha, seed_sd=args.seed_sd))
    made = {"rq5_objectives": objectives, "rq5_factors": decomposition, "rq5_collections": per_collection}
    if ranks:
        made["rq5_ranks"] = ranks
    if tag.startswith("paper"):  # the kit's means beside the paper's: how close they are
        kit: dict = {}
        for (b, s, c), value in mean.items():
            kit.setdefault((b, s), {})[names[c]] = value
        for row in kit.values():  # the paper's BEIR and LoTTE columns are means over their collections
            for group, column in (("BEIR", "avg BEIR"), ("LoTTE", "avg LoTTE")):
                members = [c.name for c in paper_setup.PAPER_COLLECTIONS if c.group == group]
                if all(m in row for m in members):
                    row[column] = float(np.mean([row[m] for m in members]))
        reproduction = common.extra("reproduction", "RQ5 on paper cells (the reproduction report)")
        made["rq5_reproduction"] = reproduction.table(reproduction.report(kit, claims.published_in_kit_columns()),
                                                      f"RQ5: the kit against the paper ({tag})")
    return made, statements, verdicts


def backbone_blocks(mean: dict) -> list[dict]:
    """Friedman's blocks from {(backbone, objective, column): mean}: one per backbone, each objective's mean
    over the columns where that backbone has every objective of the blocks. The columns of one backbone are
    not blocks of their own: they re-rank with the same models, so they are not independent, and the backbone
    is the unit the claims generalise over. Where some objectives were not run on every backbone (KD-vs-CL
    students on two backbones of a grid), the rarest are left out while that keeps more backbones: the most
    backbones with 3 or more objectives, then the most objectives."""
    backbones = list(dict.fromkeys(b for b, _, _ in mean))
    columns = list(dict.fromkeys(c for _, _, c in mean))
    present = defaultdict(set)
    for b, s, _ in mean:
        present[s].add(b)
    rarest_first = sorted(present, key=lambda s: (len(present[s]), s))
    best, key = [], (False, 0, 0)
    for i in range(len(rarest_first)):
        kept = rarest_first[i:]
        blocks = []
        for b in backbones:
            full = [c for c in columns if all((b, s, c) in mean for s in kept)]
            if full:
                blocks.append({s: float(np.mean([mean[b, s, c] for c in full])) for s in sorted(kept)})
        if (len(kept) >= 3, len(blocks), len(kept)) > key:
            best, key = blocks, (len(kept) >= 3, len(blocks), len(kept))
    return best


def rank_table(blocks: list[dict], alpha: float, title: str, slug: str, left_out: list[str] = ()) \
        -> tables.Table | None:
    """Friedman's test of the objectives' mean ranks over the blocks (backbone_blocks: one per backbone), and
    the pairs Nemenyi's test separates; None where it cannot run (fewer than 3 objectives or 2 backbones): the
    collections of a single backbone are not taken as blocks instead."""
    try:
        ranks = significance.friedman_nemenyi(blocks, alpha)
    except ValueError:
        return None
    differ = {(a, b): gap for a, b, gap in ranks.differ}
    rows = [[o, f"{r:.2f}", ", ".join(b for (a, b) in differ if a == o) or "–"]
            for o, r in sorted(ranks.mean_rank.items(), key=lambda item: item[1])]
    note = (f"Friedman chi2 = {ranks.statistic:.2f}, p = {ranks.pvalue:.2g} over {ranks.blocks} backbones, one "
            f"block each: an objective's mean over the columns where the backbone has every objective (its "
            f"columns re-rank with the same models, so they are not blocks of their own); Nemenyi critical "
            f"difference {ranks.critical_difference:.2f} at alpha={alpha} (pairs further apart in mean rank "
            f"differ; none when Friedman does not reject)."
            + (f" Left out, not on enough backbones: {', '.join(left_out)}." if left_out else ""))
    records = [{"objective": o, "mean_rank": r} for o, r in ranks.mean_rank.items()] + \
              [{"better": a, "worse": b, "rank_gap": gap} for a, b, gap in ranks.differ] + \
              [{"friedman_chi2": ranks.statistic, "pvalue": ranks.pvalue, "blocks": ranks.blocks,
                "critical_difference": ranks.critical_difference}]
    return tables.make_table(title, ["objective", "mean rank", "ranks significantly better than"], rows, note,
                             records=records, label=f"tab:rq5-ranks-{slug}", align="lrl")


def verdict_table(verdicts: list[claims.Verdict], title: str = "RQ5: the papers' claims") -> tables.Table:
    rows = [[v.claim, claims.CLAIMS[v.claim][0], v.scale, v.verdict, v.finding] for v in verdicts]
    note = ("; ".join(f"{key}: {text}" for key, (_, text) in claims.CLAIMS.items() if key in {v.claim for v in verdicts})
            + ". Published table: tests over the backbones' means (the paper gives no per-query values); other "
            "scales: the kit's results and tests. Rules: README, \"The claims\".")
    return tables.make_table(title, ["claim", "paper", "scale", "verdict", "finding"], rows, note,
                             records=[v._asdict() for v in verdicts], align="lllll")


def main() -> None:
    args = grid.parse_args(Args)
    if args.paper:  # the published table alone: offline, nothing read from a results folder
        table = claims.published()
        blocks = backbone_blocks({(b, o, c): row[c] for (b, o), row in table.items()
                                  for c in paper_setup.PUBLISHED_COLUMNS})
        ranks = rank_table(blocks, args.alpha, "RQ5: the objectives' mean ranks in the published table", "published")
        print(ranks.console + "\n\n" + ranks.latex)
        verdicts = claims.published_verdicts(table, args.alpha)
        claims.print_verdicts(verdicts)
        print("\n" + verdict_table(verdicts, "RQ5: what the published table says of each claim").console)
        return

    # 1. Scan the results folder ------------------------------------------------------------
    results = Path(args.results)
    shipped_folder = (results / "MANIFEST.json").exists()  # shipped results are read in place, never written
    if shipped_folder:
        common.extra("shipped", f"--results {results} (shipped results)").verify(results)
    out_root = Path(args.tables) if args.tables else Path("results") / "tables" if shipped_folder else results / "tables"
    if (results / "FORMAT").exists() and not shipped_folder:
        store.open_results(results)  # refuses a folder of another layout version
    groups, fingerprints, unfinished = scan(results, args.measure)
    if not groups:
        raise common.KitError(f"no finished cell evaluated with {args.measure} in {results / 'cells'} (a cell "
                              f"counts once its DONE and eval/*/metrics.json exist); run an experiment script first")
    found = sorted(groups)
    chosen = [g for g in found if (args.mode is None or g[0] == args.mode)
              and (args.precision is None or g[1] == args.precision)]
    if not chosen:
        raise common.KitError(f"no cells of mode {args.mode or 'any'} at precision {args.precision or 'any'}; "
                              f"found (mode, precision): {found}")
    print(f"RQ5: {sum(len(groups[g]) for g in found)} evaluated (backbone, objective, collection) entries in "
          f"{results}, groups {found}" + (f"; {unfinished} unfinished cell(s) skipped" if unfinished else ""))

    # 2. The first stage of each column: the stored first-stage run with the same candidates ------------
    first_stage = {}
    for folder in sorted((results / "first-stage").glob("*/")):
        why = store.damage(folder) if (folder / "metrics.json").exists() else "unfinished"
        if why and why != "unfinished":
            print(f"note: {why}; skipped (rerun the script that made it to compute it again)")
        metrics = json.loads((folder / "metrics.json").read_text()) if not why else {}
        mark = _first_query(folder / "run.trec.gz") if args.measure in metrics else None
        for column, run in fingerprints.items():
            if mark and column.split("__")[0] == folder.name.split("__")[0] and mark == _first_query(run):
                first_stage[column] = metrics[args.measure]

    # 3. One summary per (mode, precision) ----------------------------------------------------------
    verdicts = claims.published_verdicts(alpha=args.alpha) + claims.gather(results)
    for mode, precision in chosen:
        cells = groups[mode, precision]
        tag = f"{mode}, {precision}"
        made, statements, own = summarise(cells, first_stage, args, tag)
        verdicts += own
        out = out_root / f"rq5_{common.slug(mode)}_{precision}"
        header = (f"Design choices against {args.baseline} ({tag}, {args.measure}, tested per backbone x "
                  f"collection):")
        with tables.written_whole(out) as writing:  # Ctrl-C leaves the earlier tables, never half of them
            for name, table in made.items():
                tables.write_table(table, writing, name)
                print("\n" + table.console + "\n\n" + table.latex)
            common.atomic_write_text(writing / "rq5_statements.txt", "\n".join([header, *statements]) + "\n")
        print("\n".join([header, *("  " + s for s in statements)]) if statements
              else f"(no cell has the baseline {args.baseline}: no statements)")
        print(f"tables written to {out}")

    # 4. Every claim's verdicts: the published table's, those the scripts saved, and the store's -----
    claims.print_verdicts(verdicts)
    table = verdict_table(sorted(verdicts, key=lambda v: v.claim))
    with tables.written_whole(out_root / "rq5_verdicts") as writing:
        tables.write_table(table, writing, "rq5_verdicts")
    print(f"\nverdicts written to {out_root / 'rq5_verdicts'}")


if __name__ == "__main__":
    grid.main_guard(main)
