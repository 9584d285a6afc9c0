"""The papers' claims, and the verdicts that the published numbers and your own results give on them.

A claim is one sentence of a paper. Its verdict is one of four words, decided by significant tests only
(significance.py), by rules fixed here before any result was seen (README, "The claims"):

  supported     the tests show the claim in every cell it names, and contradict it in none;
  partly        they show it in some of its cells, contradict it in none, and leave the others open;
  contradicted  they show the opposite in a cell it names (a significant difference the wrong way, or, for
                "beats", an equivalence within the margin);
  inconclusive  nothing else: the line says why (nothing significant, one seed, one query, ...).

A cell is "shown" only by a test after Holm-Bonferroni over the claim's own family (all the comparisons the
claim makes in one run, per kind of test), at ALPHA. "No better" / "matches" / "competitive" need their own
one-sided tests against MARGIN (non-superiority, equivalence, non-inferiority): no difference found is not
evidence of no difference. A claim naming two objectives (M1: InfoNCE and MarginMSE) combines their verdicts:
contradicted if one is, supported if both are, partly if one at least is supported or partly.

Where the evidence comes from:
  (a) the kit's results: the cells are (backbone, setting), a setting being the in-domain or the out-of-domain
      collections, each weighted equally; the unit of a test is the query, and with 2 or more seeds the test
      also counts each system's seed-to-seed spread (significance.difference);
  (b) the paper's published table (means of 3 seeds, no per-query values): the cells are the two settings, and
      the unit of a test is the backbone (9 of them), so what it can support is the effect over the backbones,
      not in each one; M4's unit is the published column.
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
import significance

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
ALPHA = 0.05
MARGIN = 0.01         # nDCG@10: closer than this counts as equal (equivalence, non-inferiority), as RQ3's --margin
M2_RANGE = (0.5, 2)   # M2's "comparable": the objective's std within a factor of 2 of the backbone's
VERDICTS = ("supported", "partly", "contradicted", "inconclusive")


class Verdict(NamedTuple):
    claim: str     # a key of CLAIMS
    scale: str     # where the evidence comes from, with its seeds, collections and queries
    finding: str   # what the tests showed, in one sentence
    verdict: str   # one of VERDICTS
    evidence: list = []  # the tests behind it: one record per comparison (cell, difference, Holm p-values)

    def line(self) -> str:
        return f"{self.claim} [{self.scale}] {self.verdict}: {self.finding}"


# ================================================================================================
# 1. The tests of a claim, and how its cells combine
# ================================================================================================
def settings(runs: dict, groups: dict[str, list[str]]) -> dict:
    """{"<backbone> / <setting>": {system: [its seeds' per-query values on each collection of the setting]}}
    from runs {(backbone, system): {collection: [{qid: value} per seed]}} and groups {setting: [collections]}.
    A system enters a cell only with every collection of the setting."""
    cells: dict = defaultdict(dict)
    for (backbone, system), by_collection in runs.items():
        for setting, names in groups.items():
            if names and all(by_collection.get(n) for n in names):
                cells[f"{backbone} / {setting}"][system] = [by_collection[n] for n in names]
    return dict(cells)


def runs_of(per_query: dict, systems: dict, collections: list, measure: str = "nDCG@10") -> dict:
    """{(backbone, system): {collection: [{qid: value} per seed]}} from a script's per_query {key: {collection:
    [{measure: {qid: value}} per seed]}} and `systems` {(backbone, system): key}; each collection gives its own form
    of the measure (TREC DL's RR(rel=2)@10 for RR@10)."""
    import tables  # the tables' rule for a collection's form of a measure; imported here, tables imports grid
    out = {}
    for (backbone, system), key in systems.items():
        for c in collections:
            own = tables.measure_of(c, measure)
            seeds = [pq[own] for pq in per_query.get(key, {}).get(c.name, []) if own in pq]
            if seeds:
                out.setdefault((backbone, system), {})[c.name] = seeds
    return out


def family(cells: dict, pairs: list[tuple[str, str]], margin: float = MARGIN) -> list[dict]:
    """One record per (cell, system, baseline) of `pairs` present in the cell: the difference, its 95% interval,
    seeds and per-seed differences, and each kind of p-value raw and Holm-corrected over the whole family."""
    records, found = [], []
    for cell, systems in cells.items():
        for system, baseline in pairs:
            if system in systems and baseline in systems:
                d = significance.difference(list(zip(systems[system], systems[baseline])))
                found.append(d)
                low, high = d.interval()
                records.append({"cell": cell, "system": system, "baseline": baseline, "diff": d.mean,
                                "ci95": [low, high], "queries": d.n, "seeds": list(d.seeds),
                                "seed_diffs": list(d.seed_diffs)})
    for kind, p_of in (("p", lambda d: d.pvalue()), ("p_equivalent", lambda d: d.equivalence_pvalue(margin)),
                       ("p_no_better", lambda d: d.below_pvalue(margin)), ("p_no_worse", lambda d: d.above_pvalue(margin))):
        raw = [p_of(d) for d in found]
        for record, p, p_holm in zip(records, raw, significance.holm(raw)):
            record[kind], record[f"{kind}_holm"] = p, p_holm
    return records


def _shown(record: dict, kind: str) -> bool:
    return record[f"{kind}_holm"] < ALPHA  # nan (untestable) is never shown


def win(r: dict) -> bool:
    return _shown(r, "p") and r["diff"] > 0


def loss(r: dict) -> bool:
    return _shown(r, "p") and r["diff"] < 0


def everywhere(states: list[str]) -> str:
    """A claim about every cell, from each cell's state: "for", "against" or "open"."""
    if not states:
        return "inconclusive"
    if "against" in states:
        return "contradicted"
    return "supported" if all(s == "for" for s in states) else "partly" if "for" in states else "inconclusive"


def somewhere(states: list[str]) -> str:
    """A claim that some cell holds: one cell "for" supports it, every cell "against" contradicts it."""
    if "for" in states:
        return "supported"
    return "contradicted" if states and all(s == "against" for s in states) else "inconclusive"


def weakest(verdicts: list[str]) -> str:
    """Parts of one claim together: contradicted if one is, supported if all are, partly if one is at least."""
    if not verdicts or all(v == "inconclusive" for v in verdicts):
        return "inconclusive"
    if "contradicted" in verdicts:
        return "contradicted"
    return "supported" if all(v == "supported" for v in verdicts) else "partly"


def _seed_note(records: list[dict]) -> str:
    """What the seeds say: unknown with one seed, else the range of the per-seed differences."""
    if not records:
        return ""
    if min(min(r["seeds"]) for r in records) < 2:
        return "1 seed on a side: seed noise unknown, tests over queries only"
    diffs = [d for r in records if len(r["seed_diffs"]) >= 2 for d in r["seed_diffs"]]
    return f"per-seed differences {min(diffs):+.4f} to {max(diffs):+.4f}" if diffs else "seeds counted in the tests"


def _summary(name: str, records: list[dict], states: list[str], verdict: str) -> str:
    """'infonce vs bce: for in 1 of 2 cells, open in 1 (Δ -0.0032 to +0.0120, smallest Holm p 0.01)'."""
    if not records:
        return f"{name}: not tested"
    counts = ", ".join(f"{word} in {states.count(state)}" for state, word in
                       (("for", "shown"), ("against", "shown otherwise"), ("open", "open")) if states.count(state))
    diffs = [r["diff"] for r in records]
    p = min((r["p_holm"] for r in records if r["p_holm"] == r["p_holm"]), default=float("nan"))
    untestable = sum(r["p"] != r["p"] for r in records)
    text = (f"{name}: {counts} of {len(states)} cells (Δ {min(diffs):+.4f} to {max(diffs):+.4f}, smallest Holm p "
            f"{p:.2g}{f', {untestable} untestable (under 2 queries)' if untestable else ''})")
    if verdict == "inconclusive" and not any(_shown(r, k) for r in records for k in ("p", "p_equivalent", "p_no_better",
                                                                                     "p_no_worse")):
        spread = [max(r["seed_diffs"]) - min(r["seed_diffs"]) for r in records if len(r["seed_diffs"]) >= 2]
        text += "; nothing significant after Holm" + ("; differences within seed noise (the per-seed differences "
                                                      "spread wider than the mean difference)"
                                                      if spread and max(map(abs, diffs)) <= max(spread) else "")
    return text


# ================================================================================================
# 2. Each claim's rule
# ================================================================================================
def beats(claim: str, cells: dict, systems: list[str], baseline: str, where: str, named: list[str] = (), note: str | None = None) -> Verdict:
    """M1 and X1, "<systems> beat <baseline>" in every cell: a cell is for with a significant win, against with a
    significant loss or an equivalence within MARGIN that is not a win. `named`: systems the claim names that
    must all be present."""
    records = family(cells, [(s, baseline) for s in systems])
    parts, verdicts = [], []
    for system in systems:
        mine = [r for r in records if r["system"] == system]
        states = ["for" if win(r) else "against" if loss(r) or _shown(r, "p_equivalent") else "open" for r in mine]
        verdicts.append(everywhere(states))
        parts.append(_summary(f"{system} vs {baseline}", mine, states, verdicts[-1]))
    missing = [s for s in named if s not in systems or not any(r["system"] == s for r in records)]
    if missing:
        parts.append(f"the claim names {' and '.join(named)}: {', '.join(missing)} not run")
        verdicts.append("inconclusive")
    finding = "; ".join(p for p in [*parts, note if note is not None else _seed_note(records)] if p)
    return Verdict(claim, where, finding or f"needs {baseline} and another system", weakest(verdicts), records)


def no_better(claim: str, cells: dict, systems: list[str], baseline: str, where: str, note: str | None = None) -> Verdict:
    """X2, "<systems> do not beat <baseline>" in every cell: for when shown no better than the baseline by more
    than MARGIN (non-superiority, which a significant loss also shows); against with a significant win not shown
    to be within the margin."""
    records = family(cells, [(s, baseline) for s in systems])
    parts, verdicts = [], []
    for system in systems:
        mine = [r for r in records if r["system"] == system]
        states = ["for" if _shown(r, "p_no_better") else "against" if win(r) else "open" for r in mine]
        verdicts.append(everywhere(states))
        parts.append(_summary(f"{system} vs {baseline}", mine, states, verdicts[-1]))
    finding = "; ".join(p for p in [*parts, note if note is not None else _seed_note(records)] if p)
    return Verdict(claim, where, finding or f"needs {baseline} and another system", weakest(verdicts), records)


def competitive_not_better(cells: dict, where: str, llm=LLM, strong=STRONG, baseline: str = "bce", note: str | None = None) -> Verdict:
    """M3, two parts for each LLM objective. Competitive, in every cell: for when shown no worse than bce by more
    than MARGIN (non-inferiority), against with a significant loss not shown within it. Not better everywhere,
    in some cell: for when the LLM objective is significantly below, or shown no better than, infonce or
    margin_mse there; against where it significantly beats both."""
    present = [o for o in llm if any(o in systems for systems in cells.values())]
    records = family(cells, [(o, other) for o in present for other in [baseline, *strong]])
    parts, verdicts = [], []
    for objective in present:
        mine = [r for r in records if r["system"] == objective]
        versus_bce = [r for r in mine if r["baseline"] == baseline]
        states = ["for" if _shown(r, "p_no_worse") else "against" if loss(r) else "open" for r in versus_bce]
        competitive = everywhere(states)
        parts.append(_summary(f"{objective} no worse than {baseline}", versus_bce, states, competitive))
        better = []
        for cell in dict.fromkeys(r["cell"] for r in mine if r["baseline"] in strong):
            against = [r for r in mine if r["cell"] == cell and r["baseline"] in strong]
            shown_not = any(loss(r) or _shown(r, "p_no_better") for r in against)
            better.append("for" if shown_not else "against" if len(against) == len(strong) and all(map(win, against))
                          else "open")
        not_everywhere = somewhere(better) if len(better) else "inconclusive"
        parts.append(f"{objective} shown not better than infonce or margin_mse in {better.count('for')} of "
                     f"{len(better)} cells, better than both in {better.count('against')}"
                     + ("" if better else " (infonce and margin_mse not run)"))
        verdicts.append(weakest([competitive, not_everywhere]))
    missing = [o for o in llm if o not in present]
    if missing:
        parts.append(f"the claim names {' and '.join(llm)}: {', '.join(missing)} not run")
        verdicts.append("inconclusive")
    finding = "; ".join(p for p in [*parts, note if note is not None else _seed_note(records)] if p)
    return Verdict("M3", where, finding, weakest(verdicts), records)


def small_matches_large(pairs: list[dict], groups: list[str], where: str) -> Verdict:
    """M4 from RQ3's pair records {"small" ("<backbone> + <objective>"), "large", "column", "verdict"}, whose tests
    are Holm-corrected over the pairs already. The claim is that it can happen: supported when some (smaller,
    larger) backbone pair has an objective of the smaller one shown to match (equivalence) or beat the larger one
    with bce in every group; contradicted when every pair has each objective shown worse in some group."""
    by_pair: dict = {}
    for t in pairs:
        if t["column"] in groups:
            by_pair.setdefault((t["small"].split(" + ")[0], t["large"]), {}).setdefault(t["small"], []).append(t)
    states = []
    for by_objective in by_pair.values():
        if any(all(t["verdict"] in ("matches", "better") for t in ts) for ts in by_objective.values()):
            states.append("for")
        elif all(any(t["verdict"] == "worse" for t in ts) for ts in by_objective.values()):
            states.append("against")
        else:
            states.append("open")
    finding = (f"some objective of the smaller backbone shown to match (equivalence within the margin) or beat the "
               f"larger one with bce in every group in {states.count('for')} of {len(states)} pairs; shown worse "
               f"with each objective in {states.count('against')}; open in {states.count('open')}")
    return Verdict("M4", where, finding, somewhere(states), pairs)


def factor_verdict(mean: dict, backbones: list[str], objectives: list[str], columns: list[str], where: str,
                   resamples: int = 1000) -> Verdict:
    """M2: the objective's and the backbone's standard deviations (factor_shares) within a factor of 2 of each
    other. The ratio's 95% bootstrap interval, over backbones and columns resampled with replacement, decides:
    supported inside the range, contradicted outside it, inconclusive when it spans a bound."""
    shares = factor_shares(mean, backbones, objectives, columns)
    o, b = shares["objective"]["std"], shares["backbone"]["std"]
    if o is None or b is None:
        return Verdict("M2", where, "needs at least 2 backbones x 2 objectives on one collection", "inconclusive")
    if o == 0 and b == 0:
        return Verdict("M2", where, "neither the objective nor the backbone moves the cell means: nothing to compare",
                       "inconclusive")
    ratio = o / b if b > 0 else float("inf")
    # The bootstrap runs on the objectives present in every (backbone, column), vectorised over resamples.
    full = [obj for obj in objectives if all((bb, obj, c) in mean for bb in backbones for c in columns)]
    cube = np.array([[[mean[bb, obj, c] for c in columns] for obj in full] for bb in backbones])  # [B, O, C]
    rng = np.random.default_rng(0)  # fixed: the same results give the same interval
    ratios = []
    if len(full) >= 2:
        for _ in range(resamples):
            rows = rng.integers(len(backbones), size=len(backbones))
            if len(set(rows.tolist())) < 2:
                continue
            so, sb = _stds(cube[rows][:, :, rng.integers(len(columns), size=len(columns))])
            ratios.append(so / sb if sb > 0 else float("inf"))
    low, high = (float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))) if ratios else (ratio, ratio)
    lo, hi = M2_RANGE
    inside = lambda x: lo * (1 - 1e-9) <= x <= hi * (1 + 1e-9)  # 0.5 from an exact 2x2 must not round below
    verdict = ("supported" if inside(low) and inside(high) else
               "contradicted" if high < lo * (1 - 1e-9) or low > hi * (1 + 1e-9) else "inconclusive")
    finding = (f"std of nDCG@10 due to the objective {o:.4f}, due to the backbone {b:.4f}: ratio {ratio:.2f}, 95% "
               f"bootstrap interval [{low:.2f}, {high:.2f}] over {len(backbones)} backbones x {shares['collections']} "
               f"columns (comparable: {lo} to {hi}; shares {shares['objective']['share']:.0%} and "
               f"{shares['backbone']['share']:.0%})")
    return Verdict("M2", where, finding, verdict, [{"ratio": ratio, "ci95": [low, high], "shares": shares}])


def _stds(cube: np.ndarray) -> tuple[float, float]:
    """factor_shares' objective and backbone standard deviations, for a full [backbone, objective, column] array."""
    n_b, n_o, _ = cube.shape
    grand, by_b, by_o = cube.mean(axis=(0, 1)), cube.mean(axis=1), cube.mean(axis=0)  # [C], [B, C], [O, C]
    ms_b = n_o * ((by_b - grand) ** 2).sum(axis=0) / (n_b - 1)
    ms_o = n_b * ((by_o - grand) ** 2).sum(axis=0) / (n_o - 1)
    ms_e = ((cube - by_b[:, None] - by_o[None] + grand) ** 2).sum(axis=(0, 1)) / ((n_b - 1) * (n_o - 1))
    return (float(np.sqrt(np.maximum(0, (ms_o - ms_e) / n_b).mean())),
            float(np.sqrt(np.maximum(0, (ms_b - ms_e) / n_o).mean())))


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


# ================================================================================================
# 3. The published table
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
    """What the published means say of each claim, by the same rules; the unit of a test is the backbone (M4:
    the column), the cells are the two settings."""
    table = table or published()
    kit = published_in_kit_columns(table)
    backbones = list(dict.fromkeys(b for b, _ in table))
    objectives = list(paper_setup.PUBLISHED_LOSSES.values())
    where = f"published table: {len(backbones)} backbones, means of 3 seeds; the unit of a test is the backbone"
    cells = {setting: {o: [{b: kit[b, o][f"avg {setting}"] for b in backbones}] for o in objectives}
             for setting in ("in-domain", "out-of-domain")}
    note = "each value a mean of 3 seeds: the seeds' noise is part of the backbones' spread"
    found = [beats("M1", cells, STRONG, "bce", where, named=STRONG, note=note)]
    columns = list(paper_setup.PUBLISHED_COLUMNS)
    found.append(factor_verdict({(b, o, c): row[c] for (b, o), row in table.items() for c in columns}, backbones,
                                objectives, columns, f"published table: {len(backbones)} backbones x {len(columns)} "
                                                     f"columns, means of 3 seeds"))
    found.append(competitive_not_better(cells, where, note=note))
    found.append(small_matches_large(published_pairs(table), ["six columns"],
                                     "published table: the unit of a test is the column (6)"))
    for key in ("X1", "X2"):
        found.append(Verdict(key, "published table", "Morand et al.'s table has no distillation from a teacher the "
                             "kit trains; Xu et al.'s numbers are not shipped", "inconclusive"))
    return found


def published_pairs(table: dict) -> list[dict]:
    """RQ3's pair records from the published table: each smaller backbone with infonce and with margin_mse
    against each larger one with bce, over the six columns as units, Holm over all of them."""
    size = paper_setup.PUBLISHED_SIZES
    backbones = sorted({b for b, _ in table}, key=lambda b: size[b])
    pairs = [(s, o, l) for i, s in enumerate(backbones) for o in STRONG for l in backbones[i + 1:] if size[s] < size[l]]
    found = [significance.difference([([table[s, o]], [table[l, "bce"]])]) for s, o, l in pairs]
    differ = significance.holm([d.pvalue() for d in found])
    equal = significance.holm([d.equivalence_pvalue(MARGIN) for d in found])
    return [{"small": f"{s} + {o}", "large": f"{l} + bce", "column": "six columns", "delta": d.mean,
             "pvalue_holm": p, "pvalue_equivalence_holm": q,
             "verdict": "matches" if q < ALPHA else ("better" if d.mean > 0 else "worse") if p < ALPHA
             else "inconclusive"} for (s, o, l), d, p, q in zip(pairs, found, differ, equal)]


# ================================================================================================
# 4. Scales, and where the verdicts go
# ================================================================================================
def scale_of(mode: str, backbones: list[str], objectives: list[str], collections: list, seeds: list[int],
             queries: int | None = None) -> str:
    """"paper" for the paper's whole grid, "paper subset" for part of it, else the mode; then its seeds,
    collections and queries, e.g. "demo: 1 seed, 4 collections, 941 queries"."""
    name = mode
    if mode == "paper":
        whole = (set(backbones) >= set(paper_setup.PAPER_BACKBONES)
                 and set(objectives) >= set(paper_setup.PUBLISHED_LOSSES.values())
                 and {c.name for c in collections} >= {c.name for c in paper_setup.PAPER_COLLECTIONS}
                 and set(seeds) >= set(paper_setup.PAPER_SEEDS))
        name = "paper" if whole else "paper subset"
    size = f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}, {len(collections)} collection" \
           f"{'s' if len(collections) != 1 else ''}"
    return f"{name}: {size}" + (f", {queries:,} queries" if queries is not None else "")


def count_queries(per_query: dict) -> int:
    """Queries tested, over the collections of one system's {collection: [{qid: value} per seed]} (or of
    {measure: {qid: value}} per seed, as the scripts hold them)."""
    def queries(first: dict) -> int:
        value = next(iter(first.values()), None)
        return len(value) if isinstance(value, dict) else len(first)
    return sum(queries(seeds[0]) for seeds in per_query.values() if seeds)


def save(results: Path, name: str, verdicts: list[Verdict]) -> Path:
    """results/verdicts/<name>.json, which exp_rq5_summary.py gathers."""
    path = Path(results) / "verdicts" / f"{name}.json"
    common.atomic_write_json(path, [v._asdict() for v in verdicts])
    return path


def gather(results: Path) -> list[Verdict]:
    """Every verdict the scripts saved in the results folder (those of an earlier kit, without evidence, skipped)."""
    found = []
    for path in sorted((Path(results) / "verdicts").glob("*.json")):
        found += [Verdict(**record) for record in json.loads(path.read_text()) if "evidence" in record]
    return found


def print_verdicts(verdicts: list[Verdict]) -> None:
    """Each claim once, then its verdicts, one line each."""
    for claim in dict.fromkeys(v.claim for v in verdicts):
        source, text = CLAIMS[claim]
        print(f"\n{claim} ({source}): {text}")
        for v in verdicts:
            if v.claim == claim:
                print(f"  [{v.scale}] {v.verdict}: {v.finding}")
