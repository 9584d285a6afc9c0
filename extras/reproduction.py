"""How close the kit's numbers are to the paper's: a reproduction report (Breuer et al., SIGIR 2020, "How to
Measure the Reproducibility of System-oriented IR Experiments").

The published table gives means, not per-query values, so the report compares effects, not runs. For each
backbone and each objective against BCE, over the columns both have (e.g. dl19, "avg BEIR"):

  Effect Ratio (ER)  = mean kit delta / mean paper delta, delta = objective - bce. 1: the same gain; 0: none;
                       below 0: the other way. Pooled (a ratio of means, as Breuer et al. define it over topics):
                       per (backbone, objective) over its columns, per objective over backbones and columns, per
                       backbone over objectives and columns. Per cell only where the paper's delta is at least
                       MIN_DELTA in size: a ratio to a delta near 0 swings without meaning (25 of the table's 270
                       deltas are below 0.01).
  Delta RI           = RI paper - RI kit, RI = (mean objective - mean bce) / mean bce: Breuer et al.'s
                       original minus reproduced, each RI of the mean scores over the cells pooled as for ER
                       (not a mean of per-column ratios). 0: the same relative gain; above 0: a smaller one
                       in the kit.
  sign agreement     = cells whose kit delta has the paper delta's sign, of the cells compared.
  Kendall's tau      = per backbone, between the paper's and the kit's order of the objectives (by their mean over
                       the shared columns, bce included). 1: the same order.
  RMSE               = over every (backbone, objective, column) cell, the root mean square of kit - paper: how far
                       the scores themselves are, where ER and tau look at the effects and their order.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.stats

import paper_setup
import tables

MIN_DELTA = 0.01  # nDCG@10: the smallest paper delta a per-cell Effect Ratio is shown for


def _pooled(cells: list[tuple[float, float, float, float]]) -> dict:
    """ER, Delta RI and sign agreement of cells (kit delta, paper delta, kit bce, paper bce)."""
    kit = float(np.mean([k for k, _, _, _ in cells]))
    paper = float(np.mean([p for _, p, _, _ in cells]))
    # mean delta = mean objective - mean bce over the cells, so mean delta / mean bce is Breuer et al.'s RI
    # of the mean scores (bce counted once per cell, as the objective is).
    kit_base = float(np.mean([kb for _, _, kb, _ in cells]))
    paper_base = float(np.mean([pb for _, _, _, pb in cells]))
    delta_ri = paper / paper_base - kit / kit_base if kit_base and paper_base else math.nan
    agree = sum(np.sign(k) == np.sign(p) for k, p, _, _ in cells)
    return {"kit_delta": kit, "paper_delta": paper, "effect_ratio": kit / paper if paper else math.nan,
            "delta_ri": delta_ri, "kit_ri": kit / kit_base if kit_base else math.nan,
            "paper_ri": paper / paper_base if paper_base else math.nan, "sign_agree": int(agree),
            "cells": len(cells)}


def report(kit: dict, paper: dict, baseline: str = "bce") -> dict:
    """kit, paper: {(backbone, objective): {column: nDCG@10}} (kit: means over seeds). Returns the records of the
    report: "rows" (per backbone x objective, then pooled per objective and per backbone), "per_cell", "tau" and
    "rmse"."""
    published = set(paper_setup.PUBLISHED_COLUMNS.values())  # not the group means: they repeat these columns
    shared = {key: [c for c in kit[key] if c in paper.get(key, {}) and c in published] for key in kit if key in paper}
    cells, per_cell = {}, []
    for (backbone, objective), columns in shared.items():
        if objective == baseline or (backbone, baseline) not in shared:
            continue
        for c in columns:
            if c not in kit[backbone, baseline] or c not in paper[backbone, baseline]:
                continue
            k_base, p_base = kit[backbone, baseline][c], paper[backbone, baseline][c]
            k, p = kit[backbone, objective][c] - k_base, paper[backbone, objective][c] - p_base
            cells[backbone, objective, c] = (k, p, k_base, p_base)
            per_cell.append({"backbone": backbone, "objective": objective, "column": c, "kit_delta": k,
                             "paper_delta": p, "effect_ratio": k / p if abs(p) >= MIN_DELTA else None})
    rows = []
    for level, key_of in (("cell", lambda b, o: (b, o)), ("objective", lambda b, o: ("all", o)),
                          ("backbone", lambda b, o: (b, "all"))):
        groups: dict = {}
        for (b, o, _), values in cells.items():
            groups.setdefault(key_of(b, o), []).append(values)
        if level != "cell" and len(groups) == len(rows):
            continue  # one backbone (or objective): its pooled rows repeat the ones above
        rows += [{"pooled_over": level, "backbone": b, "objective": o, **_pooled(v)} for (b, o), v in groups.items()]
    tau = {}
    for backbone in dict.fromkeys(b for b, _ in shared):
        objectives = [o for b, o in shared if b == backbone and shared[b, o]]
        if len(objectives) >= 2:
            mine = [float(np.mean([kit[backbone, o][c] for c in shared[backbone, o]])) for o in objectives]
            theirs = [float(np.mean([paper[backbone, o][c] for c in shared[backbone, o]])) for o in objectives]
            value = scipy.stats.kendalltau(mine, theirs).statistic
            tau[backbone] = {"tau": float(value), "objectives": len(objectives)}
    errors = [kit[key][c] - paper[key][c] for key, columns in shared.items() for c in columns]
    rmse = float(np.sqrt(np.mean(np.square(errors)))) if errors else math.nan
    return {"rows": rows, "per_cell": per_cell, "tau": tau, "rmse": rmse, "rmse_cells": len(errors)}


def table(found: dict, title: str) -> tables.Table:
    """The report as a kit table (console, LaTeX, CSV, JSON): one row per backbone x objective, then the pooled ones."""
    def number(x, fmt):
        return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)
    rows = [[r["backbone"], r["objective"], number(r["kit_delta"], "+.4f"), number(r["paper_delta"], "+.4f"),
             number(r["effect_ratio"], ".2f"), number(r["delta_ri"], "+.3f"), f"{r['sign_agree']}/{r['cells']}"]
            for r in found["rows"]]
    taus = "; ".join(f"{b} {t['tau']:+.2f} ({t['objectives']} objectives)" for b, t in found["tau"].items())
    shown = sum(c["effect_ratio"] is not None for c in found["per_cell"])
    note = (f"Δ = objective - bce, mean over the columns both report; ER = kit Δ / paper Δ (pooled: a ratio of mean "
            f"Δs; per cell only where |paper Δ| >= {MIN_DELTA}: {shown} of {len(found['per_cell'])} cells, in the "
            f"JSON); ΔRI = paper RI - kit RI, RI = (mean objective - mean bce) / mean bce over the same "
            f"columns (Breuer et al.; above 0: a smaller relative gain in the kit); sign = cells with the "
            f"paper's sign. "
            f"Kendall's tau of the objectives' order, per backbone: {taus or '–'}. RMSE of kit - paper over "
            f"{found['rmse_cells']} cells: {number(found['rmse'], '.4f')}.")
    records = [dict(r, kind="pooled") for r in found["rows"]] + [dict(c, kind="cell") for c in found["per_cell"]] + \
              [{"kind": "tau", "backbone": b, **t} for b, t in found["tau"].items()] + \
              [{"kind": "rmse", "rmse": found["rmse"], "cells": found["rmse_cells"]}]
    return tables.make_table(title, ["backbone", "objective", "kit Δ", "paper Δ", "ER", "ΔRI", "sign"], rows, note,
                             records=records, align="llrrrrr")
