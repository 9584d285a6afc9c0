"""The papers' claims, and the verdicts that the published numbers and your own results give on them.

A claim is one sentence of a paper. Its verdict is one of four words, decided by tests only (significance.py),
by rules fixed here and calibrated by simulation (bench/calibrate_verdicts.py; README, "The claims"):

  supported     every unit the claim names is shown for it, each by its own test at ALPHA (a claim about
                every unit needs every test to pass, so no correction is due: the intersection-union
                principle, Berger 1982), and no cell is shown against it;
  partly        some unit is shown for it after Holm over all the claim's units, and no cell is shown against it;
  contradicted  some cell (or unit) is shown against it after Holm over every such test of the claim;
  inconclusive  nothing else: the line says why (nothing shown, one seed, one query, ...).

A claim compares systems in statements of four kinds, each with its tests (MARGIN: closer counts as equal):
  beats          for: a significant win that is not shown to lie within the margin; against: a significant
                 loss, or a difference shown within the margin (two one-sided tests);
  does not beat  for: shown below +MARGIN (non-superiority); against: shown above +MARGIN;
  no worse than  for: shown above -MARGIN (non-inferiority); against: shown below -MARGIN;
  matches        for: shown within +-MARGIN (two one-sided tests); against: shown outside it.
So on the same data "beats" and "does not beat" are never both supported.

Units and cells. The kit's cells are (backbone, setting), a setting being the in-domain or the out-of-domain
collections, each weighted equally; the unit of a test within a cell is the query. With MIN_BACKBONES or more
backbones in a setting, the statement is tested over the backbones, as the published table is: each backbone's
difference is one value, the setting is the unit (an "across backbones" claim is a claim about the backbones'
effect, and a test in each of 36 cells cannot all pass at the paper's seed noise). Cells are still tested one by
one for the "against" side. A cell's test counts the seeds: one seed variance per backbone, pooled over its runs
in the claim (2+ seeds), or stated (--seed-sd) where a backbone has one seed; with one seed and none stated, cells
are not tested at all, because the seed noise is unknown and the query-level test alone reads it as an effect.

The published table (means of 3 seeds, no per-query values) enters the same code with one value per cell: its
units are the two settings over the 9 backbones.
"""
from __future__ import annotations

import csv
import json
import math
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
    "M3": ("Morand et al. 2026", "LLM-ranking distillation (DistillRankNet, ADR-MSE) is no worse than BCE and "
                                 "beats neither InfoNCE nor MarginMSE"),
    "M4": ("Morand et al. 2026", "a strong objective lets a small backbone match a large one trained with BCE"),
    "X1": ("Xu et al. 2025", "distillation from a larger teacher beats contrastive training of the same student"),
    "X2": ("Xu et al. 2025", "distillation from a same-size teacher does not beat contrastive training"),
}
STRONG = ["infonce", "margin_mse"]     # the relative objectives of claim M1
LLM = ["distill_ranknet", "adr_mse"]   # the LLM-ranking distillation of claim M3
ALPHA = 0.05
MARGIN = 0.01         # nDCG@10: closer than this counts as equal (equivalence, non-inferiority), as RQ3's --margin
MIN_BACKBONES = 3     # backbones in a setting from which a statement is tested with the backbone as the unit
M2_RANGE = (0.5, 2)   # M2's "comparable": the objective's std within a factor of 2 of the backbone's
M2_MIN_RESAMPLES = 20  # distinct backbone resamples M2's bootstrap needs (4 backbones give 31, 3 give 7)
# The seed sd --seed-sd states when a user has one seed; what it is based on, printed with each verdict that uses it.
SEED_SD = 0.02
SEED_SD_SOURCE = ("the authors' 3-seed spreads, e.g. DeBERTa-v3 BCE out of domain sd 0.019, and the shipped demo, "
                  "whose bce cell moved by 0.0124 between two CPUs")
VERDICTS = ("supported", "partly", "contradicted", "inconclusive")


class Verdict(NamedTuple):
    claim: str     # a key of CLAIMS
    scale: str     # where the evidence comes from, with its seeds, collections and queries
    finding: str   # what the tests showed, in one sentence
    verdict: str   # one of VERDICTS
    evidence: list = []  # the tests behind it: one record per test (unit, difference, p-values)
    source: str = "kit"  # "kit" (results of a run) or "published" (the paper's table): only the kit's are saved

    def line(self) -> str:
        return f"{self.claim} [{self.scale}] {self.verdict}: {self.finding}"


def seed_noise_of(seed_sd: float | None) -> significance.SeedNoise | None:
    """--seed-sd as the tests take it, its source said: the kit's documented value or the user's own."""
    if seed_sd is None:
        return None
    source = f"--seed-sd {seed_sd:g}: " + (SEED_SD_SOURCE if seed_sd == SEED_SD else "the user's value")
    return significance.stated_seed_noise(seed_sd, source)


# ================================================================================================
# 1. The tests of a statement, and how its units combine
# ================================================================================================
def _win(d, m):
    return d.pvalue() if not d.testable or d.mean > 0 else 1.0


def _loss(d, m):
    return d.pvalue() if not d.testable or d.mean < 0 else 1.0


# Each kind of test: what a small p shows, and its p-value from a significance.Difference at margin m.
TESTS = {
    "win": ("a win (two-sided paired t-test)", _win),
    "loss": ("a loss (two-sided paired t-test)", _loss),
    "equal": ("within the margin (two one-sided tests)", lambda d, m: d.equivalence_pvalue(m)),
    "no_better": ("below +margin (non-superiority)", lambda d, m: d.less_pvalue(m)),
    "no_worse": ("above -margin (non-inferiority)", lambda d, m: d.greater_pvalue(-m)),
    "better_beyond": ("above +margin (one-sided)", lambda d, m: d.greater_pvalue(m)),
    "worse_beyond": ("below -margin (one-sided)", lambda d, m: d.less_pvalue(-m)),
}
# Each statement: the test that shows a unit for it, the test that vetoes that (a win shown within the margin is
# "equal", not a win), and the tests that show a cell against it.
STATEMENTS = {
    "beats": ("win", "equal", ("loss", "equal")),
    "does not beat": ("no_better", None, ("better_beyond",)),
    "no worse than": ("no_worse", None, ("worse_beyond",)),
    "matches": ("equal", None, ("better_beyond", "worse_beyond")),
}


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


def as_arrays(cells: dict) -> dict:
    """{cell: {system: [[seeds x queries] array per collection]}} from the scripts' {cell: {system: [[{qid: value}
    per seed] per collection]}}; within a cell every system covers the same queries of each collection (else a
    one-line error), and every value is a number."""
    out = {}
    for cell, systems in cells.items():
        order: dict = {}
        out[cell] = {}
        for system, collections in systems.items():
            arrays = []
            for i, per_seed in enumerate(collections):
                seeds = significance.seed_runs(per_seed, f"{system} in {cell}")
                qids = order.setdefault(i, sorted(seeds[0]))
                if set(seeds[0]) != set(qids):
                    raise common.KitError(f"{cell}: {system} covers other queries than the other systems on "
                                          f"collection {i + 1} of the setting; rerun its evaluation")
                arrays.append(np.array([[s[q] for q in qids] for s in seeds]))
            out[cell][system] = arrays
    return out


def _record(unit, level, system, reference, statement, role, test, d, margin) -> dict:
    low, high = d.interval()
    return {"unit": unit, "level": level, "system": system, "reference": reference, "statement": statement,
            "role": role, "test": test, "diff": d.mean, "ci95": [low, high], "n": d.n, "seeds": list(d.seeds),
            "p": TESTS[test][1](d, margin), "p_holm": math.nan}


def _backbone(cell: str) -> str:
    return cell.split(" / ")[0]


def backbone_seed_noise(runs: list, seed_sd: float | None) -> significance.SeedNoise | None:
    """One backbone's seed variance, pooled over its runs (each its per-seed means) with 2+ seeds; with one seed
    --seed-sd if stated, else None (unknown). RQ3's pairs take theirs from here too."""
    return significance.pooled_seed_noise(runs) or seed_noise_of(seed_sd)


def seed_noises(cells: dict, runs: list[tuple[str, str]], seed_sd: float | None) -> dict:
    """{backbone: SeedNoise or None} for the (cell, system) `runs` of a claim: per backbone, since backbones
    differ in how much their seeds move (a noisier backbone must not borrow the others' calm)."""
    by_backbone = defaultdict(list)
    for cell, system in runs:
        by_backbone[_backbone(cell)].append(significance.seed_means(cells[cell][system]))
    return {b: backbone_seed_noise(means, seed_sd) for b, means in by_backbone.items()}


def decide(claim: str, cells: dict, comparisons: list[tuple[str, str, str]], where: str, *, named: list[str] = (),
           alpha: float = ALPHA, margin: float = MARGIN, seed_sd: float | None = None, scope: str = "",
           arrays: bool = False) -> Verdict:
    """The verdict of a claim made of `comparisons` (system, reference, statement) on `cells` {"<backbone> /
    <setting>": {system: per collection, per seed, {qid: value}}} (or arrays, see `as_arrays`, with arrays=True).
    `named`: systems the claim names, each of which must be present."""
    cells = cells if arrays else as_arrays(cells)
    present = [(s, r, st) for s, r, st in comparisons if any(s in c and r in c for c in cells.values())]
    runs = {(cell, x) for cell in cells for s, r, _ in present for x in (s, r) if s in cells[cell] and r in cells[cell]}
    noises = seed_noises(cells, sorted(runs), seed_sd)
    records = []
    for system, reference, statement in present:
        for_test, veto, against = STATEMENTS[statement]
        by_setting = defaultdict(list)
        for cell, systems in cells.items():
            if system not in systems or reference not in systems:
                continue
            d = significance.difference_of_arrays(list(zip(systems[system], systems[reference])),
                                                  noises[_backbone(cell)]).require_seed_noise()
            by_setting[cell.split(" / ")[-1]].append((cell, d))
        for setting, found in by_setting.items():
            across = len(found) >= MIN_BACKBONES
            tests = [(cell, "cell", d) for cell, d in found]
            if across:
                over = significance.over_units([d.mean for _, d in found], "backbones as the unit")
                seeds = tuple(min(d.seeds[side] for _, d in found) for side in (0, 1))
                tests.append((f"{setting}, over {len(found)} backbones", "backbones", over._replace(seeds=seeds)))
            for unit, level, d in tests:
                if level == ("backbones" if across else "cell"):
                    records.append(_record(unit, level, system, reference, statement, "for", for_test, d, margin))
                    if veto:
                        records.append(_record(unit, level, system, reference, statement, "veto", veto, d, margin))
                records += [_record(unit, level, system, reference, statement, "against", t, d, margin)
                            for t in against]
    # "against" and "partly" are "some unit" statements: Holm over all of the claim's tests of each kind.
    against = [r for r in records if r["role"] == "against"]
    for r, p in zip(against, significance.holm([r["p"] for r in against])):
        r["p_holm"] = p
    units = _mark_units(records, alpha)
    for r, adjusted in zip(units, significance.holm([1.0 if r["vetoed"] else r["p"] for r in units])):
        r["p_holm"] = adjusted
    parts, verdicts = [], []
    for system, reference, statement in present:
        mine = [r for r in records if (r["system"], r["reference"], r["statement"]) == (system, reference, statement)]
        verdicts.append(_verdict(mine, alpha))
        parts.append(_finding(mine, verdicts[-1], alpha))
    missing = [s for s in named if not any(s == c[0] for c in present)]
    if missing or not present:
        parts.append(f"the claim names {' and '.join(named or [c[0] for c in comparisons])}: "
                     f"{', '.join(missing or [c[0] for c in comparisons])} not run beside "
                     f"{' and '.join(sorted({c[1] for c in comparisons}))}")
        verdicts.append("inconclusive")
    used = sorted({r["unit"] for r in records if r["level"] == "cell"})
    backbones = list(dict.fromkeys(_backbone(u) for u in used))
    settings_used = list(dict.fromkeys(u.split(" / ")[-1] for u in used))
    if used:
        parts.append(f"cells: {len(backbones)} backbone{'s' if len(backbones) != 1 else ''} "
                     f"({', '.join(backbones) if len(backbones) <= 4 else f'{backbones[0]} ... {backbones[-1]}'}) x "
                     f"{' and '.join(settings_used)}")
    parts.append(_seed_note(records, {b: noises[b] for b in backbones}))
    if scope:
        parts.append(scope)
    elif len(backbones) == 1:
        parts.append(f"scope: one backbone ({backbones[0]}), so it speaks for that backbone, not across backbones")
    return Verdict(claim, where, "; ".join(p for p in parts if p), weakest(verdicts), records)


def _mark_units(records: list[dict], alpha: float) -> list[dict]:
    """The for-records, each marked once: "vetoed" (its veto test shown: a win within the margin) and "shown"
    (its own test at alpha, not vetoed)."""
    vetoes = {(v["unit"], v["system"], v["reference"], v["statement"]): v["p"] < alpha
              for v in records if v["role"] == "veto"}
    units = [r for r in records if r["role"] == "for"]
    for r in units:
        r["vetoed"] = vetoes.get((r["unit"], r["system"], r["reference"], r["statement"]), False)
        r["shown"] = bool(r["p"] < alpha and not r["vetoed"])
    return units


def _verdict(records: list[dict], alpha: float) -> str:
    units = [r for r in records if r["role"] == "for"]
    if any(r["p_holm"] < alpha for r in records if r["role"] == "against"):
        return "contradicted"
    if units and all(r["shown"] for r in units):
        return "supported"  # every unit at alpha: the intersection-union test of "in every unit"
    return "partly" if any(r["p_holm"] < alpha for r in units) else "inconclusive"  # Holm over the claim


def _finding(records: list[dict], verdict: str, alpha: float) -> str:
    """'infonce beats bce: shown in 2 of 2 settings, each over its backbones (...)', quoting the test that decided."""
    first = records[0]
    name = f"{first['system']} {first['statement']} {first['reference']}"
    units = [r for r in records if r["role"] == "for"]
    levels = {r["level"] for r in units}
    word = "settings, each over its backbones" if levels == {"backbones"} else \
        "cells" if levels == {"cell"} else "units (settings over 3+ backbones, else cells)"
    if len(units) == 1:
        word = word.replace("settings, each", "setting").replace("cells", "cell").replace("units", "unit")
    diffs = [r["diff"] for r in units]
    span = f"Δ {min(diffs):+.4f}" + (f" to {max(diffs):+.4f}" if len(diffs) > 1 else "")
    test = TESTS[units[0]["test"]][0]
    against = [r for r in records if r["role"] == "against"]
    shown_against = [r for r in against if r["p_holm"] < alpha]
    tested = [1.0 if r["vetoed"] else r["p"] for r in units if r["p"] == r["p"]]
    if verdict == "contradicted":
        worst = min(shown_against, key=lambda r: r["p_holm"])
        return (f"{name}: shown against in {len(shown_against)} of {len(against)} tests ({worst['unit']}: "
                f"{TESTS[worst['test']][0]}, Δ {worst['diff']:+.4f}, Holm p {worst['p_holm']:.2g}; {span})")
    if not tested:
        why = "one value per cell" if all(r["n"] < 2 for r in units) else "one seed, seed noise unknown"
        return f"{name}: {len(units)} {word} untestable ({why}; {span})"
    if verdict == "supported":
        return (f"{name}: shown in all {len(units)} {word} ({span}; {test}, each at α = {alpha}, largest p "
                f"{max(tested):.2g}); none shown against")
    adjusted = [r["p_holm"] for r in units if r["p_holm"] == r["p_holm"]]
    shown = sum(p < alpha for p in adjusted)
    text = (f"{name}: shown in {shown} of {len(units)} {word} after Holm over the claim ({span}; {test}, smallest "
            f"Holm p {min(adjusted):.2g}); none shown against")
    vetoed = [r["unit"] for r in units if r["vetoed"] and r["p"] < alpha]
    return text + (f"; a win within the margin is no win ({', '.join(vetoed)})" if vetoed else "")


def _seed_note(records: list[dict], noises: dict) -> str:
    """Where the seed term of the cells' tests comes from."""
    if not records:
        return ""
    if all(r["n"] < 2 for r in records if r["level"] == "cell"):
        return "one value per cell: only the settings over the backbones are tested"
    known = {b: n for b, n in noises.items() if n is not None}
    if known:
        stated = [n for n in known.values() if math.isinf(n.df)]
        pooled = [n for n in known.values() if not math.isinf(n.df)]
        text = []
        if pooled:
            sds = [n.variance ** 0.5 for n in pooled]
            text.append(f"seed noise pooled per backbone over its runs: sd {min(sds):.4f}" +
                        (f" to {max(sds):.4f}" if len(sds) > 1 else "") +
                        f" ({', '.join(sorted({f'{n.df:g}' for n in pooled}))} df)")
        if stated:
            text.append(f"{'one seed, ' if pooled else ''}{stated[0].source}")
        unknown = [b for b, n in noises.items() if n is None]
        return "; ".join(text) + (f"; one seed on {', '.join(unknown)}: its cells untested" if unknown else "")
    if any(r["level"] == "backbones" for r in records):
        return "one seed: cells untested (seed noise unknown), settings tested over the backbones"
    return "one seed: the seed noise is unknown, so no cell is tested (state one with --seed-sd)"


def weakest(verdicts: list[str]) -> str:
    """Parts of one claim together: contradicted if one is, supported if all are, partly if one is at least."""
    if not verdicts or all(v == "inconclusive" for v in verdicts):
        return "inconclusive"
    if "contradicted" in verdicts:
        return "contradicted"
    return "supported" if all(v == "supported" for v in verdicts) else "partly"


def somewhere(states: list[str]) -> str:
    """A claim that some unit holds: one unit "for" supports it, every unit "against" contradicts it."""
    if "for" in states:
        return "supported"
    return "contradicted" if states and all(s == "against" for s in states) else "inconclusive"


# ================================================================================================
# 2. Each claim's rule
# ================================================================================================
def beats(claim: str, cells: dict, systems: list[str], baseline: str, where: str, named: list[str] = (),
          **options) -> Verdict:
    """M1 and X1, "<systems> beat <baseline>" in every unit."""
    return decide(claim, cells, [(s, baseline, "beats") for s in systems], where, named=named, **options)


def no_better(claim: str, cells: dict, systems: list[str], baseline: str, where: str, **options) -> Verdict:
    """X2, "<systems> do not beat <baseline>" in every unit."""
    return decide(claim, cells, [(s, baseline, "does not beat") for s in systems], where, **options)


def competitive_not_better(cells: dict, where: str, llm=LLM, strong=STRONG, baseline: str = "bce",
                           **options) -> Verdict:
    """M3, for each LLM objective: no worse than bce, and beats neither infonce nor margin_mse, in every unit."""
    comparisons = [(o, baseline, "no worse than") for o in llm] + \
                  [(o, other, "does not beat") for o in llm for other in strong]
    return decide("M3", cells, comparisons, where, named=llm, **options)


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
               f"than -margin with each objective in {states.count('against')}; open in {states.count('open')}")
    if any(t["verdict"] == "inconclusive (one seed)" for t in pairs):
        finding += "; one seed: the seed noise is unknown, so no pair is tested (state one with --seed-sd)"
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
    ratio = o / b if b > 0 else math.inf
    # The bootstrap runs on the objectives present in every (backbone, column), vectorised over resamples.
    full = [obj for obj in objectives if all((bb, obj, c) in mean for bb in backbones for c in columns)]
    cube = np.array([[[mean[bb, obj, c] for c in columns] for obj in full] for bb in backbones])  # [B, O, C]
    # Resamples of the backbones with 2 distinct ones at least: C(2B - 1, B) - B of them (2 backbones give 1).
    distinct = math.comb(2 * len(backbones) - 1, len(backbones)) - len(backbones)
    lo, hi = M2_RANGE
    if len(full) < 2 or distinct < M2_MIN_RESAMPLES:
        return Verdict("M2", where, f"std of nDCG@10 due to the objective {o:.4f}, due to the backbone {b:.4f}: ratio "
                       f"{_ratio(ratio)}; no interval: {len(backbones)} backbones give {distinct} distinct bootstrap "
                       f"resamples (at least {M2_MIN_RESAMPLES} needed, so 4 backbones)", "inconclusive",
                       [{"ratio": ratio, "ci95": [math.nan, math.nan], "shares": shares}])
    rng = np.random.default_rng(0)  # fixed: the same results give the same interval
    ratios = []
    for _ in range(resamples):
        rows = rng.integers(len(backbones), size=len(backbones))
        if len(set(rows.tolist())) < 2:
            continue
        so, sb = _stds(cube[rows][:, :, rng.integers(len(columns), size=len(columns))])
        ratios.append(so / sb if sb > 0 else math.inf)
    # Order statistics, not interpolation: a resample with no backbone effect gives an infinite ratio.
    low, high = (float(np.quantile(ratios, q, method="inverted_cdf")) for q in (0.025, 0.975))
    inside = lambda x: lo * (1 - 1e-9) <= x <= hi * (1 + 1e-9)  # 0.5 from an exact 2x2 must not round below
    verdict = ("supported" if inside(low) and inside(high) else
               "contradicted" if high < lo * (1 - 1e-9) or low > hi * (1 + 1e-9) else "inconclusive")
    finding = (f"std of nDCG@10 due to the objective {o:.4f}, due to the backbone {b:.4f}: ratio {_ratio(ratio)}, 95% "
               f"bootstrap interval [{_ratio(low)}, {_ratio(high)}] over {len(backbones)} backbones x "
               f"{shares['collections']} columns (comparable: {lo} to {hi}; shares {shares['objective']['share']:.0%} "
               f"and {shares['backbone']['share']:.0%})")
    return Verdict("M2", where, finding, verdict, [{"ratio": ratio, "ci95": [low, high], "shares": shares}])


def _ratio(x: float) -> str:
    return "∞" if math.isinf(x) else f"{x:.2f}"


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


def published_verdicts(table=None, alpha: float = ALPHA) -> list[Verdict]:
    """What the published means say of each claim, by the same rules: one value per (backbone, setting) cell, so
    the units are the two settings with the backbone as the unit of each test (M4: the column)."""
    table = table or published()
    kit = published_in_kit_columns(table)
    backbones = list(dict.fromkeys(b for b, _ in table))
    objectives = list(paper_setup.PUBLISHED_LOSSES.values())
    where = f"published table: {len(backbones)} backbones, means of 3 seeds; the unit of a test is the backbone"
    cells = {f"{b} / {setting}": {o: [[{"mean": kit[b, o][f"avg {setting}"]}]] for o in objectives}
             for b in backbones for setting in ("in-domain", "out-of-domain")}
    scope = "each value a mean of 3 seeds: the seeds' noise is part of the backbones' spread"
    found = [beats("M1", cells, STRONG, "bce", where, named=STRONG, alpha=alpha, scope=scope)]
    columns = list(paper_setup.PUBLISHED_COLUMNS)
    found.append(factor_verdict({(b, o, c): row[c] for (b, o), row in table.items() for c in columns}, backbones,
                                objectives, columns, f"published table: {len(backbones)} backbones x {len(columns)} "
                                                     f"columns, means of 3 seeds"))
    found.append(competitive_not_better(cells, where, alpha=alpha, scope=scope))
    found.append(small_matches_large(published_pairs(table, alpha), ["six columns"],
                                     "published table: the unit of a test is the column (6)"))
    for key in ("X1", "X2"):
        found.append(Verdict(key, "published table", "Morand et al.'s table has no distillation from a teacher the "
                             "kit trains; Xu et al.'s numbers are not shipped", "inconclusive"))
    return [v._replace(source="published") for v in found]


def published_pairs(table: dict, alpha: float = ALPHA) -> list[dict]:
    """RQ3's pair records from the published table: each smaller backbone with infonce and with margin_mse
    against each larger one with bce, over the six columns as units, Holm over all of them."""
    size = paper_setup.PUBLISHED_SIZES
    backbones = sorted({b for b, _ in table}, key=lambda b: (size[b], b))  # by name within a size: a fixed order
    pairs = [(s, o, l) for i, s in enumerate(backbones) for o in STRONG for l in backbones[i + 1:] if size[s] < size[l]]
    found = [significance.difference([([table[s, o]], [table[l, "bce"]])]) for s, o, l in pairs]
    differ = significance.holm([d.pvalue() for d in found])
    equal = significance.holm([d.equivalence_pvalue(MARGIN) for d in found])
    return [{"small": f"{s} + {o}", "large": f"{l} + bce", "column": "six columns", "delta": d.mean,
             "pvalue_holm": p, "pvalue_equivalence_holm": q,
             "verdict": "matches" if q < alpha else ("better" if d.mean > 0 else "worse") if p < alpha
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
    """results/verdicts/<name>.json, which exp_rq5_summary.py gathers, and beside it <name>_tests.{txt,tex,csv,json}:
    every test behind the verdicts, one row each. Only the kit's own verdicts: the published ones are recomputed."""
    import tables  # the kit's table writer; imported here, tables imports grid
    mine = [v for v in verdicts if v.source == "kit"]
    path = Path(results) / "verdicts" / f"{name}.json"
    common.atomic_write_json(path, [v._asdict() for v in mine])
    rows = [[v.claim, r["unit"], f"{r['system']} {r['statement']} {r['reference']}", r["role"], TESTS[r["test"]][0],
             f"{r['diff']:+.4f}", "[" + ", ".join("–" if x != x else f"{x:+.4f}" for x in r["ci95"]) + "]",
             "–" if r["p"] != r["p"] else f"{r['p']:.2g}", "–" if r["p_holm"] != r["p_holm"] else f"{r['p_holm']:.2g}"]
            for v in mine for r in v.evidence if "role" in r]
    if rows:
        note = ("The tests that decide each verdict. role: 'for' tests are read one by one at alpha for "
                "'supported' (a claim about every unit) and by their Holm p over the claim for 'partly'; 'veto' "
                "undoes a 'for' (a win within the margin); 'against' tests are Holm-corrected over the claim. A unit "
                "named 'over N backbones' is a t-test with the backbone as the unit.")
        table = tables.make_table(f"The tests behind the verdicts ({name})", ["claim", "unit", "statement", "role",
                                  "test", "Δ", "95% CI", "p", "Holm p"], rows, note,
                                  records=[dict(r, claim=v.claim) for v in mine for r in v.evidence if "role" in r],
                                  align="lllllrrrr")
        tables.write_table(table, path.parent, f"{name}_tests")
    return path


def gather(results: Path) -> list[Verdict]:
    """Every verdict the scripts saved in the results folder (those of an earlier kit, without evidence, skipped)."""
    found = []
    for path in sorted((Path(results) / "verdicts").glob("*.json")):
        if path.stem.endswith("_tests"):
            continue
        found += [Verdict(**record) for record in json.loads(path.read_text()) if "evidence" in record
                  and record.get("source", "kit") == "kit" and not record["scale"].startswith("published table")]
    return found


def print_verdicts(verdicts: list[Verdict]) -> None:
    """Each claim once, then its verdicts, one line each."""
    for claim in dict.fromkeys(v.claim for v in verdicts):
        source, text = CLAIMS[claim]
        print(f"\n{claim} ({source}): {text}")
        for v in verdicts:
            if v.claim == claim:
                print(f"  [{v.scale}] {v.verdict}: {v.finding}")
