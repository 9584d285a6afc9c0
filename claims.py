"""The papers' claims, and the verdicts that the published numbers and your own results give on them.

A claim is one sentence of a paper. Its verdict is computed twice where it can be:
  (a) from the paper's published table alone (data/paper/morand2026-ndcg10.tsv): means of 3 seeds, no
      per-query values, so no test is possible: the verdict counts cells;
  (b) from the kit's results with the kit's tests: paired t-tests over queries, Holm-corrected, as the
      script that checks the claim computed them.
Every verdict names its scale: "published table", "demo", "smoke", "paper" (the paper's whole grid) or
"paper subset" (the paper's setting on part of its grid). The rules that turn counts into a verdict are
fixed here, before any result: a claim is "supported" when every cell agrees and no test contradicts it,
"partly" when most cells agree and no test contradicts it, "not supported" otherwise (each rule below).
"""
from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np

import common
import paper_setup

CLAIMS = {
    "M1": ("Morand et al. 2026", "InfoNCE and MarginMSE beat pointwise BCE across backbones and settings"),
    "M2": ("Morand et al. 2026", "objective choice yields gains comparable to scaling the backbone"),
    "M3": ("Morand et al. 2026", "LLM-ranking distillation (DistillRankNet, ADR-MSE) is competitive but not better "
                                 "everywhere"),
    "M4": ("Morand et al. 2026", "a strong objective lets a small backbone match a large one trained with BCE"),
    "X1": ("Xu et al. 2025", "distillation from a larger teacher beats contrastive training of the same student"),
    "X2": ("Xu et al. 2025", "distillation from a same-size teacher does not beat contrastive training"),
}
STRONG = ["infonce", "margin_mse"]     # the relative objectives of claim M1
LLM = ["distill_ranknet", "adr_mse"]   # the LLM-ranking distillation of claim M3


class Verdict(NamedTuple):
    claim: str     # a key of CLAIMS
    scale: str     # "published table", "demo", "smoke", "paper", "paper subset"
    finding: str   # what was counted, in one sentence
    verdict: str   # "supported", "partly", "not supported", or "cannot tell"

    def line(self) -> str:
        return f"{self.claim} [{self.scale}] {self.verdict}: {self.finding}"


def _rule(agree: int, total: int, contradicted: int = 0) -> str:
    """supported: every cell agrees and no test contradicts; partly: most cells agree, no test contradicts."""
    if total == 0:
        return "cannot tell"
    if agree == total and not contradicted:
        return "supported"
    return "partly" if 2 * agree > total and not contradicted else "not supported"


# ================================================================================================
# (a) The published table
# ================================================================================================
def published() -> dict[tuple[str, str], dict[str, float]]:
    """{(kit backbone, objective): {published column: nDCG@10}} from the shipped table."""
    path = common.REPO / paper_setup.PUBLISHED_RESULTS
    with open(path, encoding="utf-8") as handle:
        rows = csv.DictReader((line for line in handle if not line.startswith("#")), delimiter="\t")
        return {(paper_setup.PUBLISHED_BACKBONES[r["backbone"]], paper_setup.PUBLISHED_LOSSES[r["loss"]]):
                {c: float(r[c]) for c in paper_setup.PUBLISHED_COLUMNS} for r in rows}


def published_in_kit_columns(table=None) -> dict[tuple[str, str], dict[str, float]]:
    """The published means under the kit's column names ("dl19", "avg BEIR", ...), and the two group means
    the kit's tables show: in domain (MSM, DL19, DL20) and out of domain (the 19 collections of BEIR, LoTTE
    and Robust04, each weighted equally: 13 x BEIR13 + 5 x Lotte-S + R04, over 19)."""
    out = {}
    for key, row in (table or published()).items():
        cells = {paper_setup.PUBLISHED_COLUMNS[c]: v for c, v in row.items()}
        cells["avg in-domain"] = float(np.mean([row["MSM"], row["DL19"], row["DL20"]]))
        cells["avg out-of-domain"] = (13 * row["BEIR13"] + 5 * row["Lotte-S"] + row["R04"]) / 19
        out[key] = cells
    return out


def published_verdicts(table=None) -> list[Verdict]:
    """What the published means alone say of each claim (cells = backbone x published column)."""
    table = table or published()
    backbones = list(dict.fromkeys(b for b, _ in table))
    columns = list(paper_setup.PUBLISHED_COLUMNS)
    cells = [(b, c) for b in backbones for c in columns]
    mean = {(b, o): table[b, o] for b, o in table}
    found = []
    # M1: each strong objective above BCE in every cell
    above = {o: sum(mean[b, o][c] > mean[b, "bce"][c] for b, c in cells) for o in STRONG}
    found.append(Verdict("M1", "published table", "; ".join(f"{o} above bce in {k} of {len(cells)} cells"
                                                           for o, k in above.items()),
                         min((_rule(k, len(cells)) for k in above.values()), key=_order)))
    # M2: variance components of the objective and of the backbone (as RQ5 computes them), per column
    shares = factor_shares({(b, o, c): row[c] for (b, o), row in mean.items() for c in columns},
                                           backbones, list(paper_setup.PUBLISHED_LOSSES.values()), columns)
    found.append(_m2(shares, "published table"))
    # M3: an LLM objective above both InfoNCE and MarginMSE everywhere would be "better everywhere"; above BCE
    # in most cells is "competitive"
    parts, verdicts = [], []
    for llm in LLM:
        better = sum(mean[b, llm][c] > max(mean[b, o][c] for o in STRONG) for b, c in cells)
        over_bce = sum(mean[b, llm][c] > mean[b, "bce"][c] for b, c in cells)
        parts.append(f"{llm} above both infonce and margin_mse in {better} of {len(cells)} cells, above bce in "
                     f"{over_bce}")
        verdicts.append("supported" if better < len(cells) and 2 * over_bce > len(cells) else "not supported")
    found.append(Verdict("M3", "published table", "; ".join(parts), min(verdicts, key=_order)))
    # M4: a smaller backbone with its best strong objective within 0.01 of (or above) a larger one with BCE,
    # on the mean over the six columns
    size = paper_setup.PUBLISHED_SIZES
    pairs = [(s, l) for s in backbones for l in backbones if size[s] < size[l]]
    avg = {key: float(np.mean(list(row.values()))) for key, row in mean.items()}
    matched = [(s, l) for s, l in pairs
               if max(avg[s, o] for o in paper_setup.PUBLISHED_LOSSES.values() if o != "bce") >= avg[l, "bce"] - 0.01]
    found.append(Verdict("M4", "published table", f"the smaller backbone with its best objective other than bce "
                         f"is within 0.01 of, or above, the larger one with bce in {len(matched)} of {len(pairs)} "
                         f"(smaller, larger) pairs (mean over the six columns)",
                         "supported" if 2 * len(matched) >= len(pairs) else "not supported"))
    for key in ("X1", "X2"):
        found.append(Verdict(key, "published table", "Morand et al.'s table has no distillation from a teacher the "
                             "kit trains; Xu et al.'s numbers are not shipped", "cannot tell"))
    return found


def factor_shares(mean: dict, backbones: list[str], objectives: list[str], columns: list[str]) -> dict:
    """How much of the variation of the cell means m[backbone, objective] (one matrix per column) the
    objective and the backbone explain. Per column, on the backbones and objectives present in full, a
    two-way ANOVA without replication gives the mean squares MS_o, MS_b, MS_e; the variance components
    (MS_o - MS_e) / B and (MS_b - MS_e) / O (at least 0) and MS_e estimate the variance among objective
    effects, among backbone effects and of the residual, whatever the number of levels. Returns, per factor,
    the components averaged over columns (std = their square root, share = part of the three) and the mean
    absolute gap between two levels of the factor with the other fixed."""
    components, gaps = defaultdict(list), defaultdict(list)
    for c in columns:
        present = [o for o in objectives if all((b, o, c) in mean for b in backbones)]
        rows = [b for b in backbones if all((b, o, c) in mean for o in present)]
        for b in backbones:  # gaps between two objectives of one backbone, two backbones of one objective
            values = [mean[b, o, c] for o in objectives if (b, o, c) in mean]
            gaps["objective"] += [abs(x - y) for i, x in enumerate(values) for y in values[i + 1:]]
        for o in objectives:
            values = [mean[b, o, c] for b in backbones if (b, o, c) in mean]
            gaps["backbone"] += [abs(x - y) for i, x in enumerate(values) for y in values[i + 1:]]
        if len(present) < 2 or len(rows) < 2:
            continue
        m = np.array([[mean[b, o, c] for o in present] for b in rows])
        n_b, n_o = m.shape
        grand, by_b, by_o = m.mean(), m.mean(axis=1, keepdims=True), m.mean(axis=0, keepdims=True)
        ms_b = n_o * ((by_b - grand) ** 2).sum() / (n_b - 1)
        ms_o = n_b * ((by_o - grand) ** 2).sum() / (n_o - 1)
        ms_e = ((m - by_b - by_o + grand) ** 2).sum() / ((n_b - 1) * (n_o - 1))
        components["objective"].append(max(0.0, (ms_o - ms_e) / n_b))
        components["backbone"].append(max(0.0, (ms_b - ms_e) / n_o))
        components["residual"].append(ms_e)
    total = sum(np.mean(components[f]) for f in components) if components else 0.0
    out = {"collections": len(components["objective"])}
    for factor in ("objective", "backbone", "residual"):
        value = float(np.mean(components[factor])) if components[factor] else None
        out[factor] = {"component": value, "std": float(np.sqrt(value)) if value is not None else None,
                       "share": value / total if value is not None and total > 0 else None,
                       "gap": float(np.mean(gaps[factor])) if gaps[factor] else None}
    return out


def _order(verdict: str) -> int:
    """The weakest of several verdicts decides: not supported < partly < supported."""
    return ["not supported", "cannot tell", "partly", "supported"].index(verdict)


def _m2(shares: dict, where: str) -> Verdict:
    """Comparable = the objective's and the backbone's standard deviations within a factor of 2 of each other."""
    o, b = shares["objective"]["std"], shares["backbone"]["std"]
    if o is None or b is None:
        return Verdict("M2", where, "needs at least 2 backbones x 2 objectives on one collection", "cannot tell")
    ratio = o / b if b > 0 else float("inf")
    finding = (f"std of nDCG@10 due to the objective {o:.4f}, due to the backbone {b:.4f} (ratio {ratio:.2f}; "
               f"shares {shares['objective']['share']:.0%} and {shares['backbone']['share']:.0%}, over "
               f"{shares['collections']} columns)")
    return Verdict("M2", where, finding, "supported" if 0.5 <= ratio <= 2 else "not supported")


# ================================================================================================
# (b) The kit's results, with its tests
# ================================================================================================
def beats_baseline(claim: str, tests: list[dict], objectives: list[str], baseline: str, where: str) -> Verdict:
    """M1, X1, X2 from per-cell tests {"system", "column", "diff" (system - baseline), "significant"}: how many
    cells each objective is above the baseline, significantly above, significantly below."""
    parts, verdicts = [], []
    for objective in objectives:
        mine = [t for t in tests if t["system"] == objective]
        above = sum(t["diff"] > 0 for t in mine)
        wins = sum(t["significant"] and t["diff"] > 0 for t in mine)
        losses = sum(t["significant"] and t["diff"] < 0 for t in mine)
        parts.append(f"{objective} above {baseline} in {above} of {len(mine)} cells, {wins} significant after Holm"
                     + (f", significantly below in {losses}" if losses else ""))
        if claim == "X2":  # "does not beat": no significant win
            verdicts.append("cannot tell" if not mine else "supported" if not wins else "not supported")
        else:
            verdicts.append(_rule(above, len(mine), losses))
    finding = "; ".join(parts) or f"needs {baseline} and another objective tested against it"
    return Verdict(claim, where, finding, min(verdicts, key=_order) if verdicts else "cannot tell")


def tests_from_records(records: list[dict], baseline: str, columns: list[str]) -> list[dict]:
    """Per-cell tests {"system", "column", "diff", "significant"} from a results table's records (the
    tested cells of `columns`), for beats_baseline."""
    base = {r["column"]: r["mean"] for r in records if r["system"] == baseline}
    return [{"system": r["system"], "column": r["column"], "diff": r["mean"] - base[r["column"]],
             "significant": bool(r["significant"])}
            for r in records if r["significant"] is not None and r["column"] in columns and r["column"] in base]


def scale_of(mode: str, backbones: list[str], objectives: list[str], collections: list, seeds: list[int]) -> str:
    """"paper" for the paper's whole grid, "paper subset" for part of it, else the mode."""
    if mode != "paper":
        return mode
    whole = (set(backbones) >= set(paper_setup.PAPER_BACKBONES) and set(objectives) >= set(paper_setup.PUBLISHED_LOSSES.values())
             and {c.name for c in collections} >= {c.name for c in paper_setup.PAPER_COLLECTIONS}
             and set(seeds) >= set(paper_setup.PAPER_SEEDS))
    return "paper" if whole else "paper subset"


def factor_verdict(shares: dict, where: str) -> Verdict:
    """M2 from RQ5's variance decomposition of the kit's cells."""
    return _m2(shares, where)


def llm_verdict(tests: list[dict], where: str) -> Verdict:
    """M3 from RQ4's tests {"llm", "other", "outcome" (win / tie / loss), ...}: not significantly better than
    both infonce and margin_mse in every cell, and significantly below bce in at most half of the cells."""
    parts, verdicts = [], []
    for llm in dict.fromkeys(t["llm"] for t in tests):
        mine = [t for t in tests if t["llm"] == llm]
        cells = {(t["backbone"], t["collection"]) for t in mine}
        better = [c for c in cells if all(any(t["outcome"] == "win" for t in mine if (t["backbone"], t["collection"])
                                              == c and t["other"] == o) for o in STRONG)]
        below_bce = sum(t["outcome"] == "loss" for t in mine if t["other"] == "bce")
        parts.append(f"{llm} significantly better than both infonce and margin_mse in {len(better)} of {len(cells)} "
                     f"cells, significantly below bce in {below_bce}")
        verdicts.append("supported" if len(better) < len(cells) and 2 * below_bce <= len(cells) else "not supported")
    return Verdict("M3", where, "; ".join(parts), min(verdicts, key=_order) if verdicts else "cannot tell")


def small_matches_large(tests: list[dict], groups: list[str], where: str) -> Verdict:
    """M4 from RQ3's pair records {"small", "large", "column", "verdict"}: the (smaller, larger) backbone pairs
    where some objective of the smaller one matches or beats the larger one with BCE in every group."""
    pairs: dict = {}
    for t in tests:
        if t["column"] in groups:
            small, large = t["small"].split(" + ")[0], t["large"]
            pairs.setdefault((small, large), {}).setdefault(t["small"], []).append(t["verdict"])
    matched = [p for p, by_objective in pairs.items()
               if any(all(v in ("matches", "better") for v in verdicts) for verdicts in by_objective.values())]
    return Verdict("M4", where, f"some objective of the smaller backbone matches (equivalence within the margin) or "
                   f"beats the larger one with bce in every group in {len(matched)} of {len(pairs)} pairs",
                   "cannot tell" if not pairs else "supported" if 2 * len(matched) >= len(pairs) else "not supported")


def save(results: Path, name: str, verdicts: list[Verdict]) -> Path:
    """results/verdicts/<name>.json, which exp_rq5_summary.py gathers."""
    path = Path(results) / "verdicts" / f"{name}.json"
    common.atomic_write_json(path, [v._asdict() for v in verdicts])
    return path


def gather(results: Path) -> list[Verdict]:
    """Every verdict the scripts saved in the results folder."""
    found = []
    for path in sorted((Path(results) / "verdicts").glob("*.json")):
        found += [Verdict(**record) for record in json.loads(path.read_text())]
    return found


def print_verdicts(verdicts: list[Verdict]) -> None:
    """Each claim once, then its verdicts, one line each."""
    for claim in dict.fromkeys(v.claim for v in verdicts):
        source, text = CLAIMS[claim]
        print(f"\n{claim} ({source}): {text}")
        for v in verdicts:
            if v.claim == claim:
                print(f"  [{v.scale}] {v.verdict}: {v.finding}")
